//! The upstream side of the HTTP proxy: one pooled hyper client per
//! endpoint (keep-alive HTTP/1.1 or multiplexed HTTP/2, over the upstream
//! room's connector, so TLS origination and connect metrics are shared
//! with L4), and [`Endpoints`], the innermost tower service: it picks an
//! endpoint for each try (balancer, breaker, health), bounds the try by the
//! per-try timeout, and feeds the outcome back for outlier detection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use attache_config::HttpVersion;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tower::{BoxError, Layer as _, ServiceExt as _};

use super::body::RequestBody;
use super::held::{self, HeldConnection, IdleConnections};
use crate::net::UpstreamStream;
use crate::resilience::per_try_timeout::{PerTryTimeout, PerTryTimeoutLayer};
use crate::telemetry::traces::{self, RequestContext};
use crate::upstream::connector::ConnectError;
use crate::upstream::{EndpointState, Upstream};
use opentelemetry_sdk::trace::Tracer;

/// Idle keep-alive connections are closed after this (below the 60 s or
/// more most servers keep them, so attache closes first and never sends a
/// request on a connection the server is closing).
pub(super) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle keep-alive connections kept per endpoint.
pub(super) const POOL_MAX_IDLE_PER_ENDPOINT: usize = 256;

/// Every endpoint was ejected or unhealthy; no try was made.
#[derive(Debug, thiserror::Error)]
#[error("every endpoint is ejected by its circuit breaker or unhealthy")]
pub(crate) struct NoEndpoint;

/// The try failed because reading the client's request body failed: it was
/// malformed (an invalid chunk) or the client aborted the upload. Never
/// held against the endpoint.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed")]
pub(crate) struct ClientBodyFailed(#[source] pub(crate) BoxError);

/// Endpoints a request has been tried on, shared by its tries (it travels
/// in the request's extensions, which each replayed copy clones).
#[derive(Debug, Clone, Default)]
pub(crate) struct Tried(Arc<Mutex<Vec<usize>>>);

impl Tried {
    fn last(&self) -> Option<usize> {
        self.0.lock().ok()?.last().copied()
    }

    /// Tries made so far.
    pub(crate) fn count(&self) -> usize {
        self.0.lock().map_or(0, |tried| tried.len())
    }

    fn push(&self, index: usize) {
        if let Ok(mut tried) = self.0.lock() {
            tried.push(index);
        }
    }
}

/// Which endpoint answered; put in the response's extensions.
#[derive(Debug, Clone)]
pub(crate) struct ServedBy {
    pub(crate) endpoint: Arc<str>,
    /// Time from sending the request to its response headers.
    pub(crate) took: Duration,
}

type PooledClient = Client<EndpointConnector, RequestBody>;

/// One endpoint's connections, replaced whole when its name resolves to
/// other addresses: hyper-util's pool (HTTP/2 upstreams, upgrades) and
/// the idle HTTP/1 connections no request holds.
pub(crate) struct EndpointClient {
    pooled: PooledClient,
    pub(super) idle: IdleConnections,
}

/// The innermost service: one try on one endpoint.
#[derive(Clone)]
pub(crate) struct Endpoints {
    upstream: Arc<Upstream>,
    /// Replaced when the endpoint's name resolves to other addresses.
    clients: Arc<[ArcSwap<EndpointClient>]>,
    names: Arc<[Arc<str>]>,
    /// Bounds each try (`http.per_try_timeout`), below the breaker.
    per_try: PerTryTimeoutLayer,
    version: HttpVersion,
    tracer: Option<Tracer>,
    /// Stops re-resolving and reaping once every copy is dropped.
    _resolving: Arc<DropGuard>,
}

impl Endpoints {
    /// A client per endpoint of `upstream`, and for each endpoint named by a
    /// hostname a task that re-resolves it (inside the runtime).
    pub(crate) fn new(
        upstream: Arc<Upstream>,
        version: HttpVersion,
        tracer: Option<Tracer>,
    ) -> Self {
        let clients: Arc<[ArcSwap<EndpointClient>]> = (0..upstream.endpoint_count())
            .map(|index| ArcSwap::from_pointee(client(upstream.endpoint(index).clone(), version)))
            .collect();
        let resolving = CancellationToken::new();
        for index in 0..upstream.endpoint_count() {
            let endpoint = upstream.endpoint(index).clone();
            if endpoint.address.host.parse::<std::net::IpAddr>().is_err() {
                let follow = follow_resolution(endpoint, version, clients.clone(), index);
                tokio::spawn(resolving.clone().run_until_cancelled_owned(follow));
            }
        }
        tokio::spawn(
            resolving
                .clone()
                .run_until_cancelled_owned(reap_idle(clients.clone())),
        );
        let names = (0..upstream.endpoint_count())
            .map(|index| Arc::from(upstream.endpoint(index).address.to_string()))
            .collect();
        Self {
            upstream,
            clients,
            names,
            per_try: PerTryTimeoutLayer::new(None),
            version,
            tracer,
            _resolving: Arc::new(resolving.drop_guard()),
        }
    }

    /// The same endpoints with each try bounded by `timeout`.
    pub(crate) fn with_per_try_timeout(&self, timeout: Option<Duration>) -> Self {
        Self {
            per_try: PerTryTimeoutLayer::new(timeout),
            ..self.clone()
        }
    }
}

impl tower::Service<Request<RequestBody>> for Endpoints {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.try_once(request).await })
    }
}

impl Endpoints {
    async fn try_once(
        &self,
        mut request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        let tried = request
            .extensions()
            .get::<Tried>()
            .cloned()
            .unwrap_or_default();
        let (index, permit) = self.upstream.choose(tried.last()).ok_or(NoEndpoint)?;
        let span = match (
            &self.tracer,
            request.extensions().get::<RequestContext>().cloned(),
        ) {
            (Some(tracer), Some(RequestContext(parent))) => Some(traces::start_client_span(
                tracer,
                &parent,
                &mut request,
                &self.upstream.endpoint(index).address,
                tried.count(),
            )),
            _ => None,
        };
        tried.push(index);
        let body = request.body().progress();
        let state = self.upstream.endpoint(index);
        state
            .active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _in_flight = InFlight(state);
        let started = Instant::now();
        // One try under the per-try timeout: a plain HTTP/1 request on the
        // connection its slot holds (or an idle or new one), an HTTP/2
        // upstream's or an upgrade on the endpoint's pooled client.
        let client = self.clients[index].load_full();
        let held = match self.version {
            HttpVersion::Http1 if !request.headers().contains_key(http::header::UPGRADE) => {
                request.extensions().get::<Arc<HeldConnection>>().cloned()
            }
            _ => None,
        };
        let result = match held {
            Some(held) => {
                let send =
                    tower::service_fn(|request| held::send(state, client.clone(), &held, request));
                self.per_try.layer(send).oneshot(request).await
            }
            None => self.per_try.layer(&client.pooled).oneshot(request).await,
        };
        let took = started.elapsed();
        if let Some(span) = &span {
            let outcome = match &result {
                Ok(response) => Ok(response.status()),
                Err(error) if error.is::<PerTryTimeout>() => Err("timeout"),
                Err(_) => Err("upstream_error"),
            };
            traces::end_client_span(span, outcome);
        }
        // Failures the client caused are neither a success nor a failure of
        // the endpoint: the permit goes back unsettled (a half-open probe
        // lets the next request probe).
        let result = match (result, &body) {
            (Err(error), Some(body)) if body.client_failed() => {
                drop(permit);
                return Err(ClientBodyFailed(error).into());
            }
            (Err(error), Some(body)) if error.is::<PerTryTimeout>() && !body.ended() => {
                // The body was still arriving: a slow client, not a slow endpoint.
                drop(permit);
                return Err(error);
            }
            (Err(error), _)
                if super::proxy::connect_error(&error).is_some_and(ConnectError::is_local) =>
            {
                // attache ran out of file descriptors or buffers, not the endpoint.
                drop(permit);
                return Err(error);
            }
            (result, _) => result,
        };
        // Outlier detection: errors and 5xx count against the endpoint.
        let succeeded = result
            .as_ref()
            .is_ok_and(|response| !response.status().is_server_error());
        self.upstream.settle(index, permit, succeeded, took);
        let mut response = result?;
        response.extensions_mut().insert(ServedBy {
            endpoint: self.names[index].clone(),
            took,
        });
        Ok(response)
    }
}

/// Closes idle HTTP/1 connections no client has taken for the idle timeout.
async fn reap_idle(clients: Arc<[ArcSwap<EndpointClient>]>) {
    let mut every = tokio::time::interval(POOL_IDLE_TIMEOUT / 2);
    loop {
        every.tick().await;
        for client in clients.iter() {
            client.load().idle.reap(POOL_IDLE_TIMEOUT);
        }
    }
}

/// The connections of one endpoint.
fn client(endpoint: Arc<EndpointState>, version: HttpVersion) -> EndpointClient {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_ENDPOINT)
        // The Host header is the client's; never rewritten.
        .set_host(false)
        .http2_only(version == HttpVersion::Http2);
    EndpointClient {
        pooled: builder.build(EndpointConnector { endpoint }),
        idle: IdleConnections::default(),
    }
}

/// How often an endpoint's hostname is resolved again.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// Re-resolves a named endpoint every [`RESOLVE_INTERVAL`]. New connections
/// always resolve afresh, but busy keep-alive connections never close on
/// their own: when the name points elsewhere (pods replaced behind a
/// headless Service), a new client takes the endpoint's next requests and
/// the old connections close once their requests end.
async fn follow_resolution(
    endpoint: Arc<EndpointState>,
    version: HttpVersion,
    clients: Arc<[ArcSwap<EndpointClient>]>,
    index: usize,
) {
    let target = (endpoint.address.host.clone(), endpoint.address.port);
    let mut known = resolve(&target).await;
    loop {
        tokio::time::sleep(RESOLVE_INTERVAL).await;
        let Some(now) = resolve(&target).await else {
            continue;
        };
        if addresses_moved(known.as_deref(), &now) {
            tracing::info!(endpoint = %endpoint.address, addresses = ?now, "endpoint resolves to other addresses; new requests use new connections");
            clients[index].store(Arc::new(client(endpoint.clone(), version)));
        }
        known = Some(now);
    }
}

/// The addresses `target` resolves to, sorted; `None` when resolution fails.
async fn resolve(target: &(String, u16)) -> Option<Vec<std::net::SocketAddr>> {
    let mut addresses: Vec<_> = tokio::net::lookup_host((target.0.as_str(), target.1))
        .await
        .ok()?
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    Some(addresses)
}

/// Whether the name's address set changed since the last resolution: a
/// dropped address may still hold pooled connections, and an added one
/// would only get the rare new connection a busy pool makes.
fn addresses_moved(known: Option<&[std::net::SocketAddr]>, now: &[std::net::SocketAddr]) -> bool {
    known.is_some_and(|known| known != now)
}

/// Counts a request in flight on an endpoint (for least-connections and peak EWMA).
struct InFlight<'a>(&'a EndpointState);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Connects to one endpoint through the upstream room (TLS origination and
/// connect metrics included), whatever URI the request carries.
#[derive(Clone)]
pub(crate) struct EndpointConnector {
    endpoint: Arc<EndpointState>,
}

impl tower::Service<http::Uri> for EndpointConnector {
    type Response = HttpIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let endpoint = self.endpoint.clone();
        Box::pin(async move {
            let connected = endpoint.establish(Some(&endpoint.metrics), None).await?;
            let h2 = connected.stream.negotiated_h2();
            Ok(HttpIo {
                io: TokioIo::new(connected.stream),
                h2,
            })
        })
    }
}

/// An upstream connection as hyper's client sees it.
pub(crate) struct HttpIo {
    io: TokioIo<UpstreamStream>,
    h2: bool,
}

impl Connection for HttpIo {
    fn connected(&self) -> Connected {
        if self.h2 {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl hyper::rt::Read for HttpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for HttpIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_changed_address_set_replaces_the_pool() {
        let a: std::net::SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: std::net::SocketAddr = "10.0.0.2:80".parse().unwrap();
        assert!(!addresses_moved(None, &[a]));
        assert!(!addresses_moved(Some(&[a, b]), &[a, b]));
        assert!(addresses_moved(Some(&[a, b]), &[a]));
        assert!(addresses_moved(Some(&[a]), &[b]));
        assert!(addresses_moved(Some(&[a]), &[a, b]));
    }
}
