//! L7: the HTTP proxy. A listener with `protocol: http` serves HTTP/1.1
//! and HTTP/2 (h2c prior knowledge, or ALPN over TLS) with hyper; each
//! request is routed (host, path prefix, method, headers) to a direct
//! response or an upstream, and an upstream request runs through a tower
//! stack built once per listener and upstream:
//!
//! ```text
//! Limited (max_requests, max_pending, queue_timeout -> 503)
//!  └ Timeout (request_timeout -> 504)
//!     └ Retry (RetryPolicy: statuses, idempotency, attempts, max_retries, budget, backoff)
//!        └ Endpoints (balancer + breaker/outlier + per-try timeout -> pooled hyper client)
//! ```
//!
//! # Layout
//! - `proxy`: the per-listener state, routing and header rules per request,
//!   the error classifier (one place picks the status and the log label).
//! - `routing`: route matching.
//! - `headers`: hop-by-hop, `X-Forwarded-*`, request ids.
//! - `body`: replayable request bodies and observed response bodies.
//! - `client`: pooled hyper clients per endpoint and the per-try service.
//! - `held`: the idle HTTP/1 upstream connections and the one a request holds.

mod body;
mod client;
mod headers;
mod held;
mod proxy;
mod routing;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

use crate::activity::{Activity, Watched};
use crate::listener::ConnectionContext;
use crate::net::ClientStream;
use crate::telemetry::metrics::CloseResult;
pub(crate) use proxy::{HttpProxy, HttpUpstream};

/// What the handler knows about the connection a request came on.
pub(crate) struct ClientConnection {
    address: SocketAddr,
    /// The address's IP as a header value, made once per connection.
    ip: http::HeaderValue,
    tls: bool,
    /// When the connection last moved a byte (the idle timeout).
    activity: Arc<Activity>,
    /// The verified client certificate's primary name: its first URI SAN
    /// (SPIFFE ID), else its first DNS SAN, else its common name.
    identity: Option<String>,
    /// The upstream connection carrying this HTTP/1 client's response.
    held: Arc<held::HeldConnection>,
}

/// Serves one accepted connection (TLS, when the listener has it, is
/// already done): HTTP/1.1 or HTTP/2 until the client leaves; when the
/// drain closes the listeners or a reload removes this one, keep-alive connections are closed gracefully (HTTP/1:
/// after the request in flight; HTTP/2: GOAWAY).
pub(crate) async fn serve(
    mut stream: ClientStream,
    context: ConnectionContext,
    proxy: Arc<HttpProxy>,
) {
    let metrics = &proxy.metrics;
    let address = context.client_address;
    let mut closing = context.closing.clone();
    // hyper's header timer covers a request once its bytes start (and idle
    // keep-alive connections), not a connection that never sends a byte
    // while the protocol is being detected: that one is bounded here.
    let first_bytes = first_bytes(&mut stream);
    if !matches!(
        tokio::time::timeout(proxy.limits.header_read_timeout, first_bytes).await,
        Ok(Ok(()))
    ) {
        metrics.closed(CloseResult::IdleTimeout);
        tracing::debug!(listener = %proxy.listener, client = %address, "closing: no request within the header read timeout");
        return;
    }
    let identity = stream.peer_name();
    let ip = http::HeaderValue::from_str(&address.ip().to_string())
        .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
    let activity = Activity::new();
    let connection = Arc::new(ClientConnection {
        address,
        ip,
        tls: matches!(stream, ClientStream::Tls(_)),
        activity: activity.clone(),
        identity,
        held: Arc::default(),
    });
    let service = {
        let proxy = proxy.clone();
        hyper::service::service_fn(move |request| {
            // Each request follows the listener's newest config (routes,
            // upstreams, timeouts); this connection's own limits stay.
            let proxy = context
                .newest::<HttpProxy>()
                .unwrap_or_else(|| proxy.clone());
            let connection = connection.clone();
            // Boxed per request: hyper keeps a connection's service future
            // in a box of that future's size for the connection's whole
            // life, and a request's state (about 2.9 KiB) should not stay
            // with every idle keep-alive connection.
            async move { Ok::<_, Infallible>(Box::pin(proxy.handle(&connection, request)).await) }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let limits = &proxy.limits;
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let watched = Watched::new(stream, activity.clone());
    let served = builder.serve_connection_with_upgrades(TokioIo::new(watched), service);
    tokio::pin!(served);
    let mut draining = false;
    let result = loop {
        tokio::select! {
            result = served.as_mut() => break result,
            () = activity.idle_for(limits.idle_timeout) => {
                metrics.closed(CloseResult::IdleTimeout);
                tracing::debug!(listener = %proxy.listener, client = %address, "closing: no byte moved for the idle timeout");
                return;
            }
            changed = closing.changed(), if !draining => {
                if changed.is_err() || *closing.borrow_and_update() {
                    draining = true;
                    served.as_mut().graceful_shutdown();
                }
            }
        }
    };
    match result {
        Ok(()) => metrics.closed(CloseResult::Ok),
        Err(error) => {
            metrics.closed(CloseResult::Error);
            tracing::debug!(listener = %proxy.listener, client = %address, %error, "HTTP connection ended with an error");
        }
    }
}

/// Resolves when the client has sent something (or closed). A peek, not
/// readiness: readiness can be spurious on a fresh socket. Over TLS, any
/// record counts (decrypted bytes may already wait inside rustls).
async fn first_bytes(stream: &mut ClientStream) -> std::io::Result<()> {
    let socket = match stream {
        ClientStream::Plain(socket) => socket,
        ClientStream::Tls(tls) => {
            let (socket, session) = tls.get_mut();
            if session
                .process_new_packets()
                .is_ok_and(|state| state.plaintext_bytes_to_read() > 0)
            {
                return Ok(());
            }
            socket
        }
    };
    socket.peek(&mut [0; 1]).await.map(drop)
}

crate::listener::protocol!(HttpProxy, serve);
