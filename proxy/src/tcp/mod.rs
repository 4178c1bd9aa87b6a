//! L4 forwarding: terminate TLS when the listener has it, connect the client
//! to its upstream, then relay bytes both ways with half-close, an idle
//! timeout and byte counters. Also owns the socket options both legs get
//! (TCP_NODELAY, keepalive).
//!
//! # Layout
//! - `relay`: the two-direction copy loop; an idle connection holds no buffer.
//! - `stream`: the plain and TLS streams the relay runs over.

mod relay;
pub(crate) mod stream;

use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

use crate::listener::ConnectionContext;
use crate::reload::SharedServerConfig;
use crate::telemetry::log_limit::limited;
use crate::telemetry::metrics::{CloseResult, ListenerMetrics};
use crate::telemetry::traces::{self, ConnectionSpan};
use crate::upstream::Upstream;
use opentelemetry_sdk::trace::Tracer;
use stream::{ClientStream, UpstreamStream};

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

/// Whether `error` says this process or host ran out of something (file
/// descriptors, socket buffers, memory, local ports): our fault, never the
/// peer's, so it must not count against an upstream endpoint.
pub(crate) fn out_of_local_resources(error: &std::io::Error) -> bool {
    use nix::errno::Errno;
    error.raw_os_error().is_some_and(|code| {
        [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOBUFS,
            Errno::ENOMEM,
            Errno::EADDRNOTAVAIL,
        ]
        .contains(&Errno::from_raw(code))
    })
}

/// What a listener's connections share.
pub(crate) struct TcpRoute {
    pub(crate) listener: String,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) idle_timeout: Duration,
    pub(crate) metrics: ListenerMetrics,
    /// Present on a TLS listener; swapped on reload, read at every handshake.
    pub(crate) tls: Option<SharedServerConfig>,
    /// Present when spans are exported: one per connection.
    pub(crate) tracer: Option<Tracer>,
}

/// Serves one accepted client connection to its end (TLS, when the
/// listener has it, is already done): the upstream, then the relay.
pub(crate) async fn serve(
    mut client: ClientStream,
    context: ConnectionContext,
    route: Arc<TcpRoute>,
) {
    let ConnectionContext {
        client_address,
        accepted: started,
        accepted_at: started_at,
        ..
    } = context;
    // Boxed: the connect state (resolution, timer, TLS) is freed once
    // connected instead of sizing every long-lived connection's task.
    let mut upstream = match Box::pin(route.upstream.connect()).await {
        Ok(connection) => connection,
        Err(error) => {
            if error.out_of_local_resources() {
                route.metrics.refused_local_resources.inc();
                limited!(
                    route.metrics.log_limit,
                    "local_resources",
                    warn!(listener = %route.listener, client = %client_address, %error, "closing client connection: attache is out of local resources (file descriptors?); the upstream is not blamed")
                );
            } else {
                limited!(
                    route.metrics.log_limit,
                    "upstream_unavailable",
                    warn!(listener = %route.listener, client = %client_address, %error, "closing client connection: upstream unavailable")
                );
            }
            route.metrics.closed(CloseResult::UpstreamUnavailable);
            record_span(
                &route,
                &client,
                client_address,
                started_at,
                Closed {
                    endpoint: None,
                    result: CloseResult::UpstreamUnavailable,
                    error: Some(error.to_string()),
                    to_upstream: 0,
                    to_client: 0,
                },
            );
            return;
        }
    };
    let (timeout, metrics) = (route.idle_timeout, &route.metrics);
    let relayed = match (&mut client, upstream.stream()) {
        (ClientStream::Plain(client), UpstreamStream::Plain(server)) => {
            relay::relay(client, server, timeout, metrics).await
        }
        // With TLS on either leg, through the enums: their reads also send
        // what rustls queued while reading (tickets, alerts).
        (client, server) => relay::relay(client, server, timeout, metrics).await,
    };
    let result = match &relayed.result {
        Ok(result) => *result,
        Err(_) => CloseResult::Error,
    };
    route.metrics.closed(result);
    record_span(
        &route,
        &client,
        client_address,
        started_at,
        Closed {
            endpoint: Some(upstream.endpoint().to_string()),
            result,
            error: relayed.result.as_ref().err().map(ToString::to_string),
            to_upstream: relayed.to_upstream,
            to_client: relayed.to_client,
        },
    );
    tracing::debug!(
        listener = %route.listener,
        client = %client_address,
        peer = client.peer_identity().map(tracing::field::display),
        upstream = route.upstream.name(),
        endpoint = %upstream.endpoint(),
        result = result.label(),
        error = relayed.result.err().map(tracing::field::display),
        duration_ms = started.elapsed().as_millis() as u64,
        "connection closed"
    );
}

/// How a connection ended, for its span.
struct Closed {
    endpoint: Option<String>,
    result: CloseResult,
    error: Option<String>,
    to_upstream: u64,
    to_client: u64,
}

/// Records the connection's span when spans are exported.
fn record_span(
    route: &TcpRoute,
    client: &ClientStream,
    client_address: std::net::SocketAddr,
    started: std::time::SystemTime,
    closed: Closed,
) {
    let Some(tracer) = &route.tracer else { return };
    traces::record_connection(
        tracer,
        ConnectionSpan {
            listener: &route.listener,
            upstream: route.upstream.name(),
            client: client_address,
            peer_identity: client.peer_identity().map(|identity| identity.to_string()),
            endpoint: closed.endpoint,
            result: closed.result.label(),
            error: closed.error,
            to_upstream: closed.to_upstream,
            to_client: closed.to_client,
            started,
        },
    );
}
