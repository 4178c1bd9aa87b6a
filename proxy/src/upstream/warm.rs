//! The warm pool of one endpoint (bb8): `size` idle connections made before
//! any client asks, TLS already handshaken with origination. At L4 a
//! connection serves one client and is then closed (a byte stream has no
//! point where another client could safely take it over), and bb8 refills
//! the pool in the background. A warm connection is checked before it is
//! handed out: not older than `max_age` (servers close connections that do
//! not authenticate in time), made with the current TLS client
//! configuration (the pool key is address + SNI + client certificate +
//! verification settings), and neither closed nor, with TLS, carrying data.
//! Refills pause while the endpoint is ejected or unhealthy; while it is
//! not, a server that is down sees at most `size` connects per reaper tick
//! (one second at most) from refills.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::connector::ConnectError;
use super::endpoint::EndpointState;
use crate::net::{Liveness, UpstreamStream};

pub(super) type WarmPool = bb8::Pool<WarmConnector>;

/// Refills of one endpoint's pool in flight at once. After a burst of
/// clients empties the pool, refilling it all at once (32 TLS handshakes,
/// say) would compete with the next clients' own connects for the CPU;
/// two at a time keep the pool filling while leaving room for them.
const CONCURRENT_REFILLS: usize = 2;

/// A refill starts this long after the checkout that asked for it. Started
/// at once, it reached the server together with the client's first request,
/// and a single-threaded server (Redis) did the refill's TLS handshake
/// before answering the client: measured, that cost the client more time
/// than the warm connection saved.
const REFILL_DELAY: Duration = Duration::from_millis(25);
pub(super) type WarmCheckout = bb8::PooledConnection<'static, WarmConnector>;

/// Makes and checks one endpoint's warm connections.
pub(super) struct WarmConnector {
    endpoint: Arc<EndpointState>,
    max_age: Duration,
    refills: tokio::sync::Semaphore,
}

/// An idle upstream connection waiting for a client.
pub(crate) struct WarmConnection {
    pub(crate) stream: UpstreamStream,
    made_at: Instant,
    tls_config: Option<Arc<rustls::ClientConfig>>,
}

/// Why a warm connection was not made or not handed out.
#[derive(Debug, thiserror::Error)]
pub(super) enum WarmError {
    #[error("endpoint is ejected or unhealthy; not refilling")]
    NotAdmitted,
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("older than the warm pool's max_age")]
    Expired,
    #[error("made with a TLS configuration that has since been reloaded")]
    StaleTls,
    #[error("closed by the server")]
    Closed,
    #[error("the server sent data over TLS before any client did")]
    UnexpectedData,
    #[error("socket error: {0}")]
    Io(io::Error),
}

impl WarmConnector {
    pub(super) fn pool(
        endpoint: Arc<EndpointState>,
        size: usize,
        max_age: Duration,
        max_connections: usize,
    ) -> WarmPool {
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        let max_size = size.saturating_add(u32::try_from(max_connections).unwrap_or(u32::MAX));
        // The reaper removes expired connections and retries failed refills;
        // a quarter of max_age keeps expiry timely without spinning.
        let reaper_rate = (max_age / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        bb8::Pool::builder()
            .max_size(max_size)
            .min_idle(size)
            .max_lifetime(max_age)
            .reaper_rate(reaper_rate)
            .connection_timeout(endpoint.connect_timeout)
            .retry_connection(false)
            .test_on_check_out(true)
            .queue_strategy(bb8::QueueStrategy::Fifo)
            .error_sink(Box::new(LogRefillErrors {
                upstream: endpoint.upstream.clone(),
                endpoint: endpoint.address.to_string(),
            }))
            .build_unchecked(Self {
                endpoint,
                max_age,
                refills: tokio::sync::Semaphore::new(CONCURRENT_REFILLS),
            })
    }
}

impl bb8::ManageConnection for WarmConnector {
    type Connection = WarmConnection;
    type Error = WarmError;

    async fn connect(&self) -> Result<WarmConnection, WarmError> {
        tokio::time::sleep(REFILL_DELAY).await;
        // Never closed: acquiring cannot fail.
        let refill = self.refills.acquire().await;
        if !self.endpoint.accepts_refills() {
            return Err(WarmError::NotAdmitted);
        }
        let started = Instant::now();
        let mut connected = self
            .endpoint
            .establish(Some(&self.endpoint.metrics), None)
            .await?;
        drop(refill);
        if let UpstreamStream::Tls(tls) = &mut connected.stream {
            take_session_tickets(tls, started.elapsed()).await?;
        }
        Ok(WarmConnection {
            stream: connected.stream,
            made_at: Instant::now(),
            tls_config: connected.tls_config,
        })
    }

    async fn is_valid(&self, connection: &mut WarmConnection) -> Result<(), WarmError> {
        if connection.made_at.elapsed() >= self.max_age {
            return Err(WarmError::Expired);
        }
        let current = self.endpoint.tls.as_ref().map(|config| config.load_full());
        let same_tls = match (&connection.tls_config, &current) {
            (Some(made_with), Some(current)) => Arc::ptr_eq(made_with, current),
            (None, None) => true,
            _ => false,
        };
        if !same_tls {
            return Err(WarmError::StaleTls);
        }
        match connection.stream.liveness().await {
            Liveness::Idle => Ok(()),
            // A server-first protocol (MariaDB's greeting) has spoken on a
            // plain connection: the bytes stay in the socket for the client.
            Liveness::Data if matches!(connection.stream, UpstreamStream::Plain(_)) => Ok(()),
            Liveness::Data => Err(WarmError::UnexpectedData),
            Liveness::Closed => Err(WarmError::Closed),
            Liveness::Failed(error) => Err(WarmError::Io(error)),
        }
    }

    /// Always: a connection that served a client is never handed to another.
    fn has_broken(&self, _: &mut WarmConnection) -> bool {
        true
    }
}

/// TLS 1.3 servers send session tickets just after the handshake. Read now
/// rather than at checkout, they let the next connects resume instead of
/// doing full handshakes: measured, a busy pool that left them unread did
/// full handshakes for half its refills, costing the server a third more
/// CPU per connection. Waits about as long as the handshake took (the
/// tickets are half a round trip behind it), between 1 and 50 ms.
async fn take_session_tickets(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    handshake: Duration,
) -> Result<(), WarmError> {
    use tokio::io::AsyncReadExt;

    let wait = handshake.clamp(Duration::from_millis(1), Duration::from_millis(50));
    let mut byte = [0u8; 1];
    match tokio::time::timeout(wait, tls.read(&mut byte)).await {
        // Tickets (if any) were processed; no application data arrived.
        Err(_elapsed) => Ok(()),
        Ok(Ok(0)) => Err(WarmError::Closed),
        Ok(Ok(_)) => Err(WarmError::UnexpectedData),
        Ok(Err(error)) => Err(WarmError::Io(error)),
    }
}

/// Logs refill failures and discarded connections, one debug line each:
/// breaker transitions and connect-failure metrics carry the signal.
#[derive(Debug, Clone)]
struct LogRefillErrors {
    upstream: Arc<str>,
    endpoint: String,
}

impl bb8::ErrorSink<WarmError> for LogRefillErrors {
    fn sink(&self, error: WarmError) {
        tracing::debug!(upstream = %self.upstream, endpoint = %self.endpoint, %error, "warm pool: connection not made or discarded");
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<WarmError>> {
        Box::new(self.clone())
    }
}
