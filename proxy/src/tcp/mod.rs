//! L4 forwarding: connect the client to its upstream, then relay bytes both
//! ways with half-close, an idle timeout and byte counters.
//!
//! # Layout
//! - `relay`: the two-direction copy loop; an idle connection holds no buffer.

mod relay;

use std::sync::Arc;
use std::time::Duration;

use crate::listener::ConnectionContext;
use crate::net::{ClientStream, UpstreamStream};
use crate::telemetry::log_limit::limited;
use crate::telemetry::metrics::{CloseResult, ListenerMetrics};
use crate::telemetry::traces::{self, ConnectionSpan};
use crate::upstream::{ClientOrigin, Upstream};
use opentelemetry_sdk::trace::Tracer;

/// What a listener's connections share.
pub(crate) struct TcpRoute {
    pub(crate) listener: String,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) idle_timeout: Duration,
    pub(crate) metrics: ListenerMetrics,
    /// Present when spans are exported: one per connection.
    pub(crate) tracer: Option<Tracer>,
}

/// Serves one accepted client connection to its end (TLS, when the
/// listener has it, is already done): the upstream, then the relay.
pub(crate) async fn serve(client: ClientStream, context: ConnectionContext, route: Arc<TcpRoute>) {
    forward(client, context, &route, &[]).await;
}

/// Connects `client` to the route's upstream, sends `preface` (what a
/// protocol front read before knowing where to forward, such as Postgres'
/// startup message) and relays both ways until the connection ends.
pub(crate) async fn forward(
    mut client: ClientStream,
    context: ConnectionContext,
    route: &TcpRoute,
    preface: &[u8],
) {
    let ConnectionContext {
        client_address,
        destination,
        accepted: started,
        accepted_at: started_at,
        ..
    } = context;
    // Boxed: the connect state (resolution, timer, TLS) is freed once
    // connected instead of sizing every long-lived connection's task.
    let identity = client.peer_name();
    let origin = ClientOrigin {
        source: client_address,
        destination,
        identity: identity.as_deref(),
    };
    let mut upstream = match Box::pin(route.upstream.connect_for(&origin)).await {
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
                route,
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
    if !preface.is_empty() {
        use tokio::io::AsyncWriteExt as _;
        if upstream.stream().write_all(preface).await.is_err() {
            route.metrics.closed(CloseResult::Error);
            return;
        }
        route.metrics.to_upstream_bytes.inc_by(preface.len() as u64);
    }
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
        route,
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

crate::listener::protocol!(TcpRoute, serve);
