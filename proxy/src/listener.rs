//! Listening sockets and the pipeline every protocol shares: bind, accept,
//! enforce `max_connections`, follow the drain phase, read the PROXY
//! protocol header, terminate TLS when the listener has it (handshake
//! timeout, metrics, failure logs), then hand the connection and its
//! [`ConnectionContext`] to the protocol handler, in a task of its own. No
//! protocol terminates TLS itself. A connection's failure never stops the
//! listener. A config reload swaps a listener's [`Settings`] (new
//! connections get them) or retires it, through its [`ListenerControl`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::lifecycle::{Lifecycle, Phase};
use crate::net;
use crate::net::ClientStream;
use crate::proxy_header;
use crate::reload::SharedServerConfig;
use crate::telemetry::log_limit::limited;
use crate::telemetry::metrics::ListenerMetrics;
use crate::tls;

/// Pending connections the kernel queues before `accept`.
const ACCEPT_BACKLOG: i32 = 1024;
/// Back-off bounds after an accept error (for example out of file descriptors).
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A bound listener, ready to serve.
pub(crate) struct Listener {
    socket: TcpListener,
    local_address: SocketAddr,
    settings: Arc<ArcSwap<Settings>>,
    /// Set once: a config reload removed this listener.
    retired: watch::Receiver<bool>,
    /// Tells this listener's connections to finish (drain or removal).
    closing: watch::Sender<bool>,
}

/// What a listener does with the connections it accepts. A config reload
/// swaps it; a connection keeps the settings it was accepted with.
pub(crate) struct Settings {
    name: String,
    max_connections: usize,
    /// `max_connections` permits; a reload brings a new set, so for a while
    /// connections under the old and the new settings may add up past it.
    permits: Arc<Semaphore>,
    keep_accepting_while_draining: bool,
    proxy_protocol: Option<Arc<attache_config::ProxyProtocol>>,
    /// Present on a TLS listener; swapped on certificate reload, read at
    /// every handshake.
    tls: Option<SharedServerConfig>,
    handler: Arc<dyn Protocol>,
}

impl Settings {
    pub(crate) fn new(
        config: &attache_config::Listener,
        tls: Option<SharedServerConfig>,
        handler: Arc<dyn Protocol>,
    ) -> Self {
        Self {
            name: config.name.clone(),
            max_connections: config.max_connections,
            permits: Arc::new(Semaphore::new(config.max_connections)),
            keep_accepting_while_draining: config.keep_accepting_while_draining,
            proxy_protocol: config.proxy_protocol.clone().map(Arc::new),
            tls,
            handler,
        }
    }
}

/// The runtime's hold on a serving listener: new settings, or retirement.
pub(crate) struct ListenerControl {
    /// The address as configured (port 0 stays 0): a reloaded listener
    /// with the same one keeps this socket.
    pub(crate) configured: SocketAddr,
    pub(crate) local_address: SocketAddr,
    settings: Arc<ArcSwap<Settings>>,
    retire: watch::Sender<bool>,
}

impl ListenerControl {
    /// New connections get `settings`; open ones keep theirs.
    pub(crate) fn update(&self, settings: Settings) {
        self.settings.store(Arc::new(settings));
    }

    /// Stops accepting; open connections are told to finish, as in a drain.
    pub(crate) fn retire(&self) {
        self.retire.send_replace(true);
    }

    pub(crate) fn name(&self) -> String {
        self.settings.load().name.clone()
    }
}

/// A protocol a listener hands its connections to (`tcp`, `http`, `redis`;
/// `postgres` and `mysql` next). The listener owns everything before the
/// protocol: accepting, limits, the drain, TLS.
pub(crate) trait Protocol: Send + Sync + 'static {
    /// The listener's name, for logs.
    fn listener_name(&self) -> &str;
    /// The listener's metric handles.
    fn metrics(&self) -> &ListenerMetrics;
    /// Serves one connection, TLS already terminated, to its end.
    fn serve(
        self: Arc<Self>,
        client: ClientStream,
        context: ConnectionContext,
    ) -> BoxFuture<'static, ()>;
    /// The handler as `Any`, so a connection can find the newest handler of
    /// its own kind after a reload ([`ConnectionContext::newest`]).
    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
    /// Whether the protocol starts TLS inside itself (Postgres'
    /// `SSLRequest`): the listener then does no TLS up front and hands the
    /// protocol its [`TlsAcceptor`] in the context instead.
    fn starts_tls_in_band(&self) -> bool {
        false
    }
}

/// A listener's TLS termination, for a protocol that starts TLS in-band:
/// the same handshake, timeout, metrics, failure logs and peer identity
/// checks as TLS up front.
pub(crate) struct TlsAcceptor {
    /// Settings with `tls`.
    settings: Arc<Settings>,
}

impl TlsAcceptor {
    /// The TLS session on `stream`, or `None` when the handshake failed
    /// (counted and logged; the connection is done).
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        client_address: SocketAddr,
    ) -> Option<ClientStream> {
        let handler = &self.settings.handler;
        tls::terminate(
            self.settings.tls.as_ref(),
            stream,
            client_address,
            handler.listener_name(),
            handler.metrics(),
        )
        .await
    }
}

/// Implements [`Protocol`] for a handler whose `listener` and `metrics`
/// fields hold the listener's name and metric handles, with
/// `$serve(client, context, Arc<handler>)` serving a connection; with
/// `in_band_tls`, for a protocol that starts TLS inside itself.
macro_rules! protocol {
    ($handler:ty, $serve:path, in_band_tls) => {
        crate::listener::protocol!($handler, $serve, true);
    };
    ($handler:ty, $serve:path) => {
        crate::listener::protocol!($handler, $serve, false);
    };
    ($handler:ty, $serve:path, $in_band:literal) => {
        impl crate::listener::Protocol for $handler {
            fn listener_name(&self) -> &str {
                &self.listener
            }

            fn metrics(&self) -> &crate::telemetry::metrics::ListenerMetrics {
                &self.metrics
            }

            fn serve(
                self: std::sync::Arc<Self>,
                client: crate::net::ClientStream,
                context: crate::listener::ConnectionContext,
            ) -> futures_util::future::BoxFuture<'static, ()> {
                Box::pin($serve(client, context, self))
            }

            fn as_any(
                self: std::sync::Arc<Self>,
            ) -> std::sync::Arc<dyn std::any::Any + Send + Sync> {
                self
            }

            fn starts_tls_in_band(&self) -> bool {
                $in_band
            }
        }
    };
}
pub(crate) use protocol;

/// What a protocol handler knows about an accepted connection besides its
/// stream (whose TLS session, when there is one, holds the verified peer
/// identity).
pub(crate) struct ConnectionContext {
    /// The client's address.
    pub(crate) client_address: SocketAddr,
    /// The address the client connected to (the PROXY header's destination
    /// when present, else the listener's).
    pub(crate) destination: SocketAddr,
    /// When the connection was accepted, before any TLS handshake.
    pub(crate) accepted: tokio::time::Instant,
    pub(crate) accepted_at: std::time::SystemTime,
    /// Turns `true` when the connection should finish: the drain closed the
    /// listeners, or a reload removed this one. Protocols that can end a
    /// connection gracefully (HTTP) watch it.
    pub(crate) closing: watch::Receiver<bool>,
    /// The listener's settings as a reload leaves them.
    listener: Arc<ArcSwap<Settings>>,
    /// The listener's TLS, when it has TLS and the protocol starts it
    /// in-band ([`Protocol::starts_tls_in_band`]).
    pub(crate) tls: Option<TlsAcceptor>,
}

impl ConnectionContext {
    /// The listener's newest handler when it is still a `Handler` (a
    /// reload may have changed the protocol): protocols that serve many
    /// requests on one connection (HTTP) take each request's routes,
    /// upstreams and timeouts from it, so a reload reaches keep-alive
    /// clients too.
    pub(crate) fn newest<Handler: Protocol>(&self) -> Option<Arc<Handler>> {
        self.listener
            .load()
            .handler
            .clone()
            .as_any()
            .downcast::<Handler>()
            .ok()
    }
}

/// The listen address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("listener {name:?} cannot listen on {address}: {source}")]
pub(crate) struct BindError {
    name: String,
    address: SocketAddr,
    source: io::Error,
}

impl Listener {
    /// Binds `config.listen`. IPv6 sockets are IPv6-only, so `[::1]:N` and
    /// `127.0.0.1:N` can be two listeners.
    ///
    /// # Errors
    /// [`BindError`] when the address is taken or not available.
    pub(crate) fn bind(
        config: &attache_config::Listener,
        settings: Settings,
    ) -> Result<(Self, ListenerControl), BindError> {
        let bind_error = |source| BindError {
            name: config.name.clone(),
            address: config.listen,
            source,
        };
        let socket = bind_socket(config.listen).map_err(bind_error)?;
        let socket = TcpListener::from_std(socket.into()).map_err(bind_error)?;
        let local_address = socket.local_addr().map_err(bind_error)?;
        let settings = Arc::new(ArcSwap::from_pointee(settings));
        let (retire, retired) = watch::channel(false);
        let control = ListenerControl {
            configured: config.listen,
            local_address,
            settings: settings.clone(),
            retire,
        };
        let listener = Self {
            socket,
            local_address,
            settings,
            retired,
            closing: watch::Sender::new(false),
        };
        Ok((listener, control))
    }

    /// Accepts until the drain phase closes the listener or a reload
    /// removes it.
    pub(crate) async fn serve(mut self, lifecycle: Arc<Lifecycle>) {
        let mut phase = lifecycle.watch_phase();
        let mut backoff = ACCEPT_BACKOFF_FIRST;
        loop {
            let accepted = tokio::select! {
                accepted = self.socket.accept() => accepted,
                changed = phase.changed() => {
                    let closing = changed.is_err() || *phase.borrow_and_update() == Phase::Closing;
                    if closing {
                        self.closing.send_replace(true);
                        if !self.settings.load().keep_accepting_while_draining {
                            break;
                        }
                    }
                    continue;
                }
                _ = self.retired.changed() => {
                    self.closing.send_replace(true);
                    tracing::info!(listener = %self.settings.load().name, address = %self.local_address, "listener removed by a config reload; its connections finish");
                    break;
                }
            };
            let settings = self.settings.load_full();
            let name = &settings.name;
            let metrics = settings.handler.metrics();
            let (stream, peer) = match accepted {
                Ok(accepted) => {
                    backoff = ACCEPT_BACKOFF_FIRST;
                    accepted
                }
                Err(error) => {
                    let reason = if net::out_of_local_resources(&error) {
                        metrics.refused_local_resources.inc();
                        "local_resources"
                    } else {
                        "accept"
                    };
                    limited!(
                        metrics.log_limit,
                        reason,
                        warn!(listener = %name, %error, "accept failed; backing off for {backoff:?}")
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            if lifecycle.phase() == Phase::Closing && !peer.ip().is_loopback() {
                // Only a listener told to keep accepting gets here while closing.
                metrics.refused_draining.inc();
                tracing::debug!(listener = %name, client = %peer, "refused: draining, non-loopback client");
                continue;
            }
            let Ok(permit) = settings.permits.clone().try_acquire_owned() else {
                metrics.refused_max_connections.inc();
                tracing::debug!(listener = %name, client = %peer, max_connections = settings.max_connections, "refused: max_connections reached");
                continue;
            };
            self.spawn_connection(stream, peer, permit, settings, &lifecycle);
        }
        let (name, address) = (self.settings.load().name.clone(), self.local_address);
        // Closed before it is said to be: a client that reads the line and
        // connects is refused.
        drop(self);
        tracing::info!(listener = %name, %address, "listener closed");
    }

    fn spawn_connection(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        permit: tokio::sync::OwnedSemaphorePermit,
        settings: Arc<Settings>,
        lifecycle: &Arc<Lifecycle>,
    ) {
        let tracked = lifecycle.track_connection();
        let metrics = settings.handler.metrics();
        metrics.opened.inc();
        metrics.active.inc();
        let accepted = tokio::time::Instant::now();
        let accepted_at = std::time::SystemTime::now();
        let closing = self.closing.subscribe();
        let listener = self.settings.clone();
        // A listener bound to one address is that address on every
        // connection; only a wildcard one has to ask each socket
        // (`getsockname`, a system call per connection).
        let bound = Some(self.local_address).filter(|address| !address.ip().is_unspecified());
        tokio::spawn(async move {
            let handler = &settings.handler;
            let metrics = handler.metrics();
            let name = handler.listener_name();
            let local = bound.unwrap_or_else(|| stream.local_addr().unwrap_or(peer));
            let addresses = match &settings.proxy_protocol {
                None => Some((peer, local)),
                Some(proxy_protocol) => {
                    // Boxed, like the handshake below: their state is not
                    // part of every connection's task for its whole life.
                    match Box::pin(proxy_header::read(
                        &mut stream,
                        (peer, local),
                        proxy_protocol,
                    ))
                    .await
                    {
                        Ok(addresses) => Some(addresses),
                        Err(refused) => {
                            metrics.refused_proxy_protocol.inc();
                            limited!(
                                metrics.log_limit,
                                "proxy_protocol",
                                warn!(listener = %name, peer = %peer, error = %refused, "connection refused: PROXY protocol")
                            );
                            None
                        }
                    }
                }
            };
            let in_band = handler.starts_tls_in_band();
            let up_front = settings.tls.as_ref().filter(|_| !in_band);
            if let Some((client_address, destination)) = addresses
                && let Some(client) = Box::pin(tls::terminate(
                    up_front,
                    stream,
                    client_address,
                    name,
                    metrics,
                ))
                .await
            {
                let tls = (in_band && settings.tls.is_some()).then(|| TlsAcceptor {
                    settings: settings.clone(),
                });
                let context = ConnectionContext {
                    client_address,
                    destination,
                    accepted,
                    accepted_at,
                    closing,
                    listener,
                    tls,
                };
                handler.clone().serve(client, context).await;
            }
            metrics.active.dec();
            drop((permit, tracked));
        });
    }
}

fn bind_socket(address: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    // Accepted sockets inherit TCP_NODELAY and keepalive from here.
    net::tune(socket2::SockRef::from(&socket));
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(ACCEPT_BACKLOG)?;
    Ok(socket)
}
