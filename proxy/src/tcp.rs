//! L4 forwarding: connect the client to its upstream, then copy bytes both
//! ways with half-close, an idle timeout and byte counters. Also owns the
//! socket options both legs get (TCP_NODELAY, keepalive).
//!
//! Memory: an idle connection holds no copy buffer. A direction takes a
//! buffer when its socket turns readable, drains what is there and gives the
//! buffer back, so thousands of idle connections cost little.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
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
    // Boxed: the connect state (resolution, timer) is freed once connected
    // instead of sizing every long-lived connection's task.
    let mut upstream = match Box::pin(route.upstream.connect()).await {
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
///
/// One hand-polled loop over both directions, rather than a future per
/// direction, keeps a connection's task small (a few hundred bytes).
async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    idle_timeout: Duration,
    metrics: &ListenerMetrics,
) -> io::Result<CloseResult> {
    let mut to_upstream = Direction::new(&metrics.to_upstream_bytes);
    let mut to_client = Direction::new(&metrics.to_client_bytes);
    let mut last_activity = Instant::now();
    let idle = tokio::time::sleep(idle_timeout);
    let mut idle = pin!(idle);
    poll_fn(|cx| {
        let other_done = to_client.is_done();
        let upward = to_upstream.poll_copy(cx, client, upstream, other_done, &mut last_activity)?;
        let other_done = to_upstream.is_done();
        let downward = to_client.poll_copy(cx, upstream, client, other_done, &mut last_activity)?;
        if upward.is_ready() && downward.is_ready() {
            return Poll::Ready(Ok(CloseResult::Ok));
        }
        // The timer is re-armed from the last activity only when it fires,
        // not on every read.
        while idle.as_mut().poll(cx).is_ready() {
            let deadline = last_activity + idle_timeout;
            if Instant::now() >= deadline {
                return Poll::Ready(Ok(CloseResult::IdleTimeout));
            }
            idle.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await
}

/// Where one direction of a relay stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Copying,
    ShuttingDown,
    Done,
}

/// One direction of a relay: reads from one socket, writes to the other.
struct Direction<'a> {
    /// Held only while a burst is being copied: an idle connection holds no
    /// copy buffer.
    buffer: Option<BytesMut>,
    /// Bytes of `buffer` already written.
    written: usize,
    stage: Stage,
    bytes: &'a Counter,
}

impl<'a> Direction<'a> {
    fn new(bytes: &'a Counter) -> Self {
        Self {
            buffer: None,
            written: 0,
            stage: Stage::Copying,
            bytes,
        }
    }

    fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// Copies until `reader` ends, then shuts `writer` down, unless the other
    /// direction is already done (the sockets close next, which sends the FIN
    /// anyway).
    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut TcpStream,
        writer: &mut TcpStream,
        other_done: bool,
        last_activity: &mut Instant,
    ) -> Poll<io::Result<()>> {
        loop {
            match self.stage {
                Stage::Done => return Poll::Ready(Ok(())),
                Stage::ShuttingDown => {
                    ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                    self.stage = Stage::Done;
                }
                Stage::Copying => {
                    if let Some(buffer) = &mut self.buffer {
                        while self.written < buffer.len() {
                            let wrote = ready!(
                                Pin::new(&mut *writer).poll_write(cx, &buffer[self.written..])
                            )?;
                            if wrote == 0 {
                                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                            }
                            self.written += wrote;
                        }
                        // A short read means the socket was drained (tokio
                        // cleared its readiness): give the buffer back until
                        // more arrives. A full one means more is likely queued.
                        let drained = buffer.len() < COPY_BUFFER_BYTES;
                        buffer.clear();
                        self.written = 0;
                        if drained {
                            self.buffer = None;
                        }
                    }
                    if self.buffer.is_none() {
                        ready!(reader.poll_read_ready(cx))?;
                    }
                    let buffer = self
                        .buffer
                        .get_or_insert_with(|| BytesMut::with_capacity(COPY_BUFFER_BYTES));
                    let read =
                        match tokio_util::io::poll_read_buf(Pin::new(&mut *reader), cx, buffer) {
                            Poll::Ready(read) => read?,
                            Poll::Pending => {
                                // Readiness was spurious: wait without the buffer.
                                self.buffer = None;
                                return Poll::Pending;
                            }
                        };
                    if read == 0 {
                        self.buffer = None;
                        self.stage = if other_done {
                            Stage::Done
                        } else {
                            Stage::ShuttingDown
                        };
                    } else {
                        self.bytes.inc_by(read as u64);
                        *last_activity = Instant::now();
                    }
                }
            }
        }
    }
}
