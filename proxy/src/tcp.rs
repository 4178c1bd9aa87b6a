//! L4 forwarding: connect the client to its upstream, then copy bytes both
//! ways with half-close, an idle timeout and byte counters. Also owns the
//! socket options both legs get (TCP_NODELAY, keepalive).
//!
//! Memory: an idle connection holds no copy buffer. A direction takes a
//! buffer when its socket turns readable, drains what is there and gives the
//! buffer back, so thousands of idle connections cost little.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::ReadHalf;
use tokio::time::Instant;

use crate::telemetry::metrics::{CloseResult, ListenerMetrics};
use crate::upstream::Upstream;

/// Largest chunk read from one side before it is written to the other.
const COPY_BUFFER_BYTES: usize = 64 * 1024;

/// Keepalive probes start after this much silence; dead peers are noticed
/// within about a minute more, long before the idle timeout.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_RETRIES: u32 = 4;

/// Sets TCP_NODELAY and keepalive on an upstream socket, or on a listening
/// socket (Linux copies both to every socket it accepts, sparing five system
/// calls per connection). Failures are logged and otherwise ignored: the
/// connection still works without them.
pub(crate) fn tune(socket: SockRef<'_>) {
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(error) = socket
        .set_tcp_nodelay(true)
        .and_then(|()| socket.set_tcp_keepalive(&keepalive))
    {
        tracing::debug!(%error, "cannot set TCP_NODELAY or keepalive");
    }
}

/// What a listener's connections share.
pub(crate) struct TcpRoute {
    pub(crate) listener: String,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) idle_timeout: Duration,
    pub(crate) metrics: ListenerMetrics,
}

/// Serves one accepted client connection to its end.
pub(crate) async fn serve(
    mut client: TcpStream,
    client_address: std::net::SocketAddr,
    route: Arc<TcpRoute>,
) {
    let started = Instant::now();
    let mut upstream = match route.upstream.connect().await {
        Ok(connection) => connection,
        Err(error) => {
            tracing::warn!(listener = %route.listener, client = %client_address, %error, "closing client connection: upstream unavailable");
            route.metrics.closed(CloseResult::UpstreamUnavailable);
            return;
        }
    };
    let relayed = relay(
        &mut client,
        &mut upstream.stream,
        route.idle_timeout,
        &route.metrics,
    )
    .await;
    let result = match &relayed {
        Ok(result) => *result,
        Err(_) => CloseResult::Error,
    };
    route.metrics.closed(result);
    tracing::debug!(
        listener = %route.listener,
        client = %client_address,
        upstream = route.upstream.name(),
        endpoint = %upstream.endpoint(),
        result = result.label(),
        error = relayed.err().map(tracing::field::display),
        duration_ms = started.elapsed().as_millis() as u64,
        "connection closed"
    );
}

/// Copies both ways until both directions finished, one failed, or neither
/// moved a byte for `idle_timeout`. A direction that reads end-of-stream
/// shuts down the write side of the other socket and the opposite direction
/// carries on: a client that half-closes still receives the whole reply.
async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    idle_timeout: Duration,
    metrics: &ListenerMetrics,
) -> io::Result<CloseResult> {
    let activity = Activity::new();
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    let both = async {
        tokio::try_join!(
            pump(
                client_read,
                upstream_write,
                &metrics.to_upstream_bytes,
                &activity
            ),
            pump(
                upstream_read,
                client_write,
                &metrics.to_client_bytes,
                &activity
            ),
        )
    };
    tokio::select! {
        copied = both => copied.map(|_| CloseResult::Ok),
        () = activity.idle_for(idle_timeout) => Ok(CloseResult::IdleTimeout),
    }
}

/// Copies one direction until end-of-stream, then shuts the writer down
/// (unless the other direction already ended: the sockets close next, which
/// sends the FIN anyway).
async fn pump<W: AsyncWrite + Unpin>(
    mut reader: ReadHalf<'_>,
    mut writer: W,
    bytes: &Counter,
    activity: &Activity,
) -> io::Result<()> {
    loop {
        // Wait without a buffer: an idle connection holds no copy buffer.
        reader.readable().await?;
        let mut buffer = BytesMut::with_capacity(COPY_BUFFER_BYTES);
        loop {
            let read = reader.read_buf(&mut buffer).await?;
            if read == 0 {
                if !activity.end_direction() {
                    writer.shutdown().await?;
                }
                return Ok(());
            }
            writer.write_all(&buffer).await?;
            bytes.inc_by(read as u64);
            activity.touch();
            if read < COPY_BUFFER_BYTES {
                // A short read drained the socket (tokio cleared its
                // readiness): give the buffer back until more arrives.
                break;
            }
            buffer.clear();
        }
    }
}

/// When either direction last moved bytes.
struct Activity {
    origin: Instant,
    last_millis: AtomicU64,
    one_direction_ended: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_millis: AtomicU64::new(0),
            one_direction_ended: AtomicBool::new(false),
        }
    }

    /// Records that a direction reached end-of-stream; true when the other
    /// one had already.
    fn end_direction(&self) -> bool {
        self.one_direction_ended.swap(true, Ordering::AcqRel)
    }

    fn touch(&self) {
        let millis = self.origin.elapsed().as_millis() as u64;
        self.last_millis.store(millis, Ordering::Relaxed);
    }

    /// Resolves once no byte moved for `timeout`. Sleeps at most once per
    /// timeout period instead of resetting a timer on every read.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last =
                self.origin + Duration::from_millis(self.last_millis.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_timer_restarts_from_the_last_activity() {
        let activity = Activity::new();
        let timeout = Duration::from_secs(10);
        tokio::time::advance(Duration::from_secs(8)).await;
        activity.touch();
        let started = Instant::now();
        activity.idle_for(timeout).await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
