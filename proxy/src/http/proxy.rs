//! One HTTP listener's request handling: route, rewrite headers, forward
//! through the upstream's tower stack (or answer directly), classify
//! failures into one status and label, and account for the request when
//! its response body ends (metrics and the access log).

use std::sync::Arc;
use std::time::Duration;

use attache_config::RouteAction;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Incoming};
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceExt as _};

use super::ClientConnection;
use super::body::{BodyProgress, Ending, OnFinish, RequestBody, ResponseBody};
use super::client::{ClientBodyFailed, Endpoints, NoEndpoint, ServedBy, Tried};
use super::headers;
use super::held::HeldConnection;
use super::routing::{self, Matcher};
use crate::activity::Activity;
use crate::resilience::limit::{ConcurrencyLimit, LimitLayer, Refusal};
use crate::resilience::per_try_timeout::PerTryTimeout;
use crate::resilience::retry::{RetryClass, RetryLimits, RetryPolicy};
use crate::telemetry::access_log::{self, AccessLog, Entry, Outcome};
use crate::telemetry::log_limit::limited;
use crate::telemetry::metrics::{ListenerMetrics, Metrics, RouteMetrics, UpstreamRefusal};
use crate::telemetry::traces::{self, RequestContext};
use crate::upstream::Upstream;
use crate::upstream::connector::ConnectError;
use opentelemetry_sdk::trace::Tracer;

type Stack = BoxCloneSyncService<Request<RequestBody>, Response<Incoming>, BoxError>;

/// An upstream as HTTP listeners share it: its endpoints' pooled clients,
/// its request limit and its retry limits.
pub(crate) struct HttpUpstream {
    upstream: Arc<Upstream>,
    endpoints: Endpoints,
    limit: Arc<ConcurrencyLimit>,
    retry: Arc<RetryLimits>,
    tls: bool,
}

impl HttpUpstream {
    pub(crate) fn new(
        upstream: Arc<Upstream>,
        config: &attache_config::Upstream,
        tracer: Option<Tracer>,
    ) -> Self {
        let limits = &config.limits;
        Self {
            endpoints: Endpoints::new(upstream.clone(), config.http_version, tracer),
            limit: Arc::new(ConcurrencyLimit::new(
                limits.max_requests,
                limits.max_pending,
                limits.queue_timeout,
            )),
            retry: Arc::new(upstream.retry_limits()),
            tls: config.tls.is_some(),
            upstream,
        }
    }

    pub(crate) fn name(&self) -> &str {
        self.upstream.name()
    }

    pub(crate) fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// The tower stack for one listener's requests to this upstream, outside
    /// in (docs/http.md, "What happens to a request"): the upstream's
    /// request limit (ready = holding a slot), the request timeout over
    /// everything below, retries, then the balancer, which picks an
    /// endpoint, settles its breaker and runs the try under the per-try
    /// timeout on the endpoint's pooled client.
    fn stack(&self, settings: &attache_config::HttpListener) -> Stack {
        let class = HttpRetry {
            statuses: settings.retry_statuses.clone().into(),
            non_idempotent: settings.retry_non_idempotent,
        };
        let stack = tower::ServiceBuilder::new()
            .layer(LimitLayer::new(self.limit.clone()))
            .timeout(settings.request_timeout)
            .retry(RetryPolicy::new(self.retry.clone(), class))
            .service(
                self.endpoints
                    .with_per_try_timeout(settings.per_try_timeout),
            );
        BoxCloneSyncService::new(stack)
    }
}

/// Server-side limits of a listener's connections.
pub(crate) struct ConnectionLimits {
    /// A connection (or, after an upgrade, its tunnel) that moves no byte
    /// either way for this long is closed: the listener's `idle_timeout`.
    pub(crate) idle_timeout: Duration,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_headers: usize,
}

/// One `http` listener.
pub(crate) struct HttpProxy {
    pub(crate) listener: String,
    pub(crate) metrics: ListenerMetrics,
    pub(crate) limits: ConnectionLimits,
    routes: Vec<Route>,
    fallback: Route,
    retry_buffer_bytes: usize,
    request_timeout: Duration,
    upstream_time_header: Option<HeaderName>,
    peer_identity_header: Option<HeaderName>,
    access_log: AccessLog,
    tracer: Option<Tracer>,
}

struct Route {
    name: Arc<str>,
    matcher: Option<Matcher>,
    target: Target,
    metrics: RouteMetrics,
}

enum Target {
    Upstream {
        upstream: Arc<HttpUpstream>,
        stack: Stack,
    },
    Direct {
        status: StatusCode,
        body: Bytes,
    },
    NotFound,
}

impl HttpProxy {
    /// Builds the listener's routes; `upstreams` holds every upstream its
    /// routes name (the config was validated).
    pub(crate) fn new(
        config: &attache_config::Listener,
        settings: &attache_config::HttpListener,
        upstreams: &[Arc<HttpUpstream>],
        metrics: &Metrics,
        tracer: Option<Tracer>,
    ) -> Self {
        let listener = config.name.as_str();
        let target_for =
            |name: &str| match upstreams.iter().find(|upstream| upstream.name() == name) {
                Some(upstream) => Target::Upstream {
                    upstream: upstream.clone(),
                    stack: upstream.stack(settings),
                },
                None => Target::NotFound,
            };
        let route = |name: &str, matcher: Option<Matcher>, target: Target| {
            let upstream = match &target {
                Target::Upstream { upstream, .. } => upstream.name(),
                Target::Direct { .. } | Target::NotFound => "",
            };
            Route {
                name: Arc::from(name),
                metrics: metrics.route(listener, name, upstream),
                matcher,
                target,
            }
        };
        let routes = settings
            .routes
            .iter()
            .map(|config| {
                let target = match &config.action {
                    RouteAction::Upstream(name) => target_for(name),
                    RouteAction::Direct { status, body } => Target::Direct {
                        status: StatusCode::from_u16(*status).unwrap_or(StatusCode::OK),
                        body: Bytes::from(body.clone()),
                    },
                };
                route(&config.name, Some(Matcher::new(&config.matches)), target)
            })
            .collect();
        let fallback = match &config.upstream {
            Some(name) => route(name, None, target_for(name)),
            None => route("unrouted", None, Target::NotFound),
        };
        Self {
            listener: listener.to_owned(),
            metrics: metrics.listener(listener),
            limits: ConnectionLimits {
                idle_timeout: config.idle_timeout,
                header_read_timeout: settings.header_read_timeout,
                max_header_bytes: settings.max_header_bytes,
                max_headers: settings.max_headers,
            },
            routes,
            fallback,
            retry_buffer_bytes: settings.retry_buffer_bytes,
            request_timeout: settings.request_timeout,
            upstream_time_header: header_name(settings.upstream_time_header.as_deref()),
            peer_identity_header: header_name(settings.peer_identity_header.as_deref()),
            access_log: AccessLog::new(&settings.access_log),
            tracer,
        }
    }

    /// Answers one request; never fails (failures become 4xx/5xx responses).
    pub(crate) async fn handle(
        self: &Arc<Self>,
        connection: &ClientConnection,
        mut request: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let wants_upgrade = request.headers().contains_key(header::UPGRADE);
        let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        let request_id = headers::request_id(&mut parts.headers);
        let bad_authority =
            headers::settle_authority(&parts.uri, parts.version, &mut parts.headers).err();
        let host = if bad_authority.is_some() {
            None
        } else {
            routing::request_host(&parts)
        };
        let route = self
            .routes
            .iter()
            .find(|route| {
                route
                    .matcher
                    .as_ref()
                    .is_none_or(|matcher| matcher.matches(&parts, host.as_deref()))
            })
            .unwrap_or(&self.fallback);
        let span = self.tracer.as_ref().map(|tracer| {
            traces::start_server_span(
                tracer,
                &parts,
                connection.address,
                connection.tls,
                &route.name,
            )
        });
        let mut finish = Finish {
            span,
            error: None,
            proxy: self.clone(),
            metrics: route.metrics.clone(),
            started,
            status: StatusCode::OK,
            received: Arc::default(),
            held: None,
            entry: self.access_log.enabled().then(|| {
                self.access_log.entry(&access_log::Request {
                    listener: &self.listener,
                    route: &route.name,
                    request_id: request_id.as_bytes(),
                    client: connection.address,
                    client_ip: connection.ip.to_str().unwrap_or_default(),
                    peer: connection.identity.as_deref(),
                    method: parts.method.as_str(),
                    authority: headers::authority(&parts.uri, &parts.headers).unwrap_or_default(),
                    uri: &parts.uri,
                    protocol: version_label(parts.version),
                    headers: &parts.headers,
                })
            }),
        };
        if let Some(problem) = bad_authority {
            finish.error("bad_authority", &problem);
            return finish.respond(
                StatusCode::BAD_REQUEST,
                Bytes::from(format!("attache: {problem}\n")),
            );
        }
        if parts.method == Method::CONNECT {
            finish.error("connect_refused", &"CONNECT is not tunnelled");
            return finish.respond(
                StatusCode::METHOD_NOT_ALLOWED,
                Bytes::from_static(b"attache: CONNECT is not supported: attache is a reverse proxy, not a forward proxy\n"),
            );
        }
        match &route.target {
            Target::Direct { status, body } => finish.respond(*status, body.clone()),
            Target::NotFound => finish.respond(
                StatusCode::NOT_FOUND,
                Bytes::from_static(b"attache: no route for this request\n"),
            ),
            Target::Upstream { upstream, stack } => {
                let forwarded = Forwarded {
                    parts,
                    body,
                    host,
                    client_upgrade,
                };
                self.forward(connection, upstream, stack, forwarded, finish)
                    .await
            }
        }
    }

    async fn forward(
        &self,
        connection: &ClientConnection,
        upstream: &HttpUpstream,
        stack: &Stack,
        forwarded: Forwarded,
        mut finish: Finish,
    ) -> Response<ResponseBody> {
        let Forwarded {
            mut parts,
            body,
            host,
            client_upgrade,
        } = forwarded;
        if let Some(entry) = &mut finish.entry {
            entry.upstream = Some(upstream.upstream.shared_name());
        }
        let upgrade = headers::strip_hop_by_hop(&mut parts.headers);
        let authority = headers::host(&parts.uri, &parts.headers);
        headers::add_forwarded(
            &mut parts.headers,
            &connection.ip,
            connection.tls,
            authority.as_deref().or(host.as_deref()),
        );
        if let Some(name) = &self.peer_identity_header {
            parts.headers.remove(name);
            if let Some(value) = connection
                .identity
                .as_deref()
                .and_then(|identity| HeaderValue::from_str(identity).ok())
            {
                parts.headers.insert(name.clone(), value);
            }
        }
        let client_upgrade = match upgrade {
            Some(protocol) => {
                headers::restore_upgrade(&mut parts.headers, protocol);
                client_upgrade
            }
            None => None,
        };
        if let Some(authority) = &authority
            && !parts.headers.contains_key(header::HOST)
            && let Ok(value) = HeaderValue::from_str(authority)
        {
            parts.headers.insert(header::HOST, value);
        }
        let Some(uri) = upstream_uri(&parts.uri, authority.as_deref(), upstream.tls) else {
            return finish.respond(
                StatusCode::BAD_REQUEST,
                Bytes::from_static(b"attache: the request has no valid host\n"),
            );
        };
        parts.uri = uri;
        // An HTTP/1 client's requests come one after another and share
        // the connection's slot; an HTTP/2 client's run side by side, each
        // with a slot of its own.
        let held = if parts.version < http::Version::HTTP_2 {
            connection.held.clone()
        } else {
            Arc::default()
        };
        parts.version = http::Version::HTTP_11;
        let body = match self.request_body(body, finish.received.clone()).await {
            Ok(body) => body,
            Err(error) => {
                finish.error("client_body", &error);
                return finish.respond(
                    StatusCode::BAD_REQUEST,
                    Bytes::from_static(b"attache: the request body could not be read\n"),
                );
            }
        };
        let tried = Tried::default();
        let mut outbound = Request::from_parts(parts, body);
        outbound.extensions_mut().insert(tried.clone());
        outbound.extensions_mut().insert(held.clone());
        finish.held = Some(held);
        if let Some(span) = &finish.span {
            outbound
                .extensions_mut()
                .insert(RequestContext(span.clone()));
        }
        let result = stack.clone().oneshot(outbound).await;
        if let Some(entry) = &mut finish.entry {
            entry.retries = u32::try_from(tried.count().saturating_sub(1)).unwrap_or(u32::MAX);
        }
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                let (status, label, message) = self.classify(upstream, &error);
                finish.error(label, &error);
                tracing::debug!(listener = %self.listener, upstream = upstream.name(), error = %error, kind = label, "request failed");
                return finish.respond(status, Bytes::from(message));
            }
        };
        let served = response.extensions().get::<ServedBy>().cloned();
        if let Some(served) = &served
            && let Some(entry) = &mut finish.entry
        {
            entry.endpoint = Some(served.endpoint.clone());
            entry.upstream_ms = Some(served.took.as_secs_f64() * 1000.0);
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let idle = (connection.activity.clone(), self.limits.idle_timeout);
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade, idle));
        } else {
            headers::strip_hop_by_hop(response.headers_mut());
        }
        if let (Some(name), Some(served)) = (&self.upstream_time_header, &served)
            && let Ok(value) = HeaderValue::from_str(&format!("{:.3}", served.took.as_secs_f64()))
        {
            response.headers_mut().insert(name.clone(), value);
        }
        finish.status = response.status();
        let (parts, body) = response.into_parts();
        Response::from_parts(parts, ResponseBody::upstream(body, Box::new(finish)))
    }

    /// The body held whole when it is small enough to replay (its length is
    /// known and within `retry_buffer_bytes`), else streamed.
    async fn request_body(
        &self,
        body: Incoming,
        received: Arc<BodyProgress>,
    ) -> Result<RequestBody, hyper::Error> {
        if body.is_end_stream() {
            return Ok(RequestBody::buffered(Bytes::new()));
        }
        match body.size_hint().exact() {
            Some(length) if length <= self.retry_buffer_bytes as u64 => {
                let bytes = body.collect().await?.to_bytes();
                received.add(bytes.len() as u64);
                Ok(RequestBody::buffered(bytes))
            }
            _ => Ok(RequestBody::Streaming(body, received)),
        }
    }

    /// The one place a failure gets its status, its label (logs) and its
    /// message (response body); refusals are counted here too.
    fn classify(
        &self,
        upstream: &HttpUpstream,
        error: &BoxError,
    ) -> (StatusCode, &'static str, String) {
        let name = upstream.name();
        let metrics = upstream.upstream.metrics();
        if error.is::<ClientBodyFailed>() {
            return (
                StatusCode::BAD_REQUEST,
                "client_body",
                format!(
                    "attache: the request body could not be read: {}\n",
                    error_chain(error)
                ),
            );
        }
        if error.is::<tower::timeout::error::Elapsed>() {
            return (
                StatusCode::GATEWAY_TIMEOUT,
                "request_timeout",
                format!(
                    "attache: upstream {name:?} did not answer within the request timeout ({:?})\n",
                    self.request_timeout
                ),
            );
        }
        if let Some(PerTryTimeout(limit)) = error.downcast_ref::<PerTryTimeout>() {
            return (
                StatusCode::GATEWAY_TIMEOUT,
                "per_try_timeout",
                format!(
                    "attache: upstream {name:?} did not answer within the per-try timeout ({limit:?}) on any try\n"
                ),
            );
        }
        if let Some(refusal) = error.downcast_ref::<Refusal>() {
            let (reason, label) = match refusal {
                Refusal::Overflow => (UpstreamRefusal::Overflow, "overflow"),
                Refusal::QueueTimeout => (UpstreamRefusal::QueueTimeout, "queue_timeout"),
            };
            metrics.refused(reason);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                label,
                format!("attache: upstream {name:?} is at its request limit: {refusal}\n"),
            );
        }
        if error.is::<NoEndpoint>() {
            metrics.refused(UpstreamRefusal::NoEndpoint);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "no_endpoint",
                format!("attache: upstream {name:?}: {NoEndpoint}; failing fast\n"),
            );
        }
        if connect_error(error).is_some_and(ConnectError::is_local) {
            self.metrics.refused_local_resources.inc();
            limited!(
                self.metrics.log_limit,
                "local_resources",
                warn!(listener = %self.listener, upstream = name, error = %error_chain(error), "request refused: attache is out of local resources (file descriptors?); the upstream is not blamed")
            );
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "local_resources",
                "attache: out of local resources; try again\n".to_owned(),
            );
        }
        if is_connect_failure(error) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "connect_failure",
                format!(
                    "attache: cannot connect to upstream {name:?}: {}\n",
                    error_chain(error)
                ),
            );
        }
        (
            StatusCode::BAD_GATEWAY,
            "upstream_reset",
            format!(
                "attache: upstream {name:?} failed before a complete response: {}\n",
                error_chain(error)
            ),
        )
    }
}

struct Forwarded {
    parts: http::request::Parts,
    body: Incoming,
    host: Option<String>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Accounts for a request once its response body has ended.
struct Finish {
    /// The request's server span, when spans are exported.
    span: Option<opentelemetry::Context>,
    /// The failure's label, when attache answered for a failed upstream.
    error: Option<&'static str>,
    proxy: Arc<HttpProxy>,
    metrics: RouteMetrics,
    started: Instant,
    status: StatusCode,
    received: Arc<BodyProgress>,
    /// The HTTP/1 upstream connection carrying the response, given back
    /// when the response ends.
    held: Option<Arc<HeldConnection>>,
    entry: Option<Entry>,
}

impl Finish {
    fn error(&mut self, label: &'static str, error: &dyn std::fmt::Display) {
        self.error = Some(label);
        if let Some(entry) = &mut self.entry {
            entry.error = Some(format!("{label}: {error}"));
        }
    }

    /// A response attache writes itself.
    fn respond(mut self, status: StatusCode, body: Bytes) -> Response<ResponseBody> {
        self.status = status;
        let mut response = Response::new(ResponseBody::full(body, Box::new(self)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

impl OnFinish for Finish {
    fn finish(self: Box<Self>, sent: u64, ending: Ending) {
        if let Some(held) = &self.held {
            held.release();
        }
        let took = self.started.elapsed();
        let trace_id = self.span.as_ref().and_then(traces::sampled_trace_id);
        self.metrics.answered(self.status, took, trace_id);
        if ending == Ending::UpstreamCut {
            self.metrics.truncated.inc();
        }
        let complete = ending == Ending::Complete;
        if let Some(span) = &self.span {
            let error = self.error.or((!complete).then_some("response_incomplete"));
            traces::end_server_span(span, self.status, error);
        }
        if let Some(mut entry) = self.entry {
            if ending == Ending::UpstreamCut && entry.error.is_none() {
                entry.error = Some("response_truncated: the upstream ended the body early".into());
            }
            let outcome = Outcome {
                status: self.status.as_u16(),
                bytes_received: self.received.received(),
                bytes_sent: sent,
                duration_ms: took.as_secs_f64() * 1000.0,
                complete,
            };
            self.proxy.access_log.write(entry, &outcome);
        }
    }
}

/// When a try may be retried: connect failures whatever the method (nothing
/// reached the upstream), other failures and the configured statuses only
/// for idempotent methods unless told otherwise. Only requests whose body
/// is held whole can be replayed.
#[derive(Clone)]
struct HttpRetry {
    statuses: Arc<[u16]>,
    non_idempotent: bool,
}

impl RetryClass<Request<RequestBody>, Response<Incoming>, BoxError> for HttpRetry {
    fn replay(&self, request: &Request<RequestBody>) -> Option<Request<RequestBody>> {
        let body = request.body().replay()?;
        let mut copy = Request::new(body);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }

    fn should_retry(
        &self,
        request: &Request<RequestBody>,
        result: &Result<Response<Incoming>, BoxError>,
    ) -> bool {
        let replay_allowed = self.non_idempotent || is_idempotent(request.method());
        match result {
            Ok(response) => replay_allowed && self.statuses.contains(&response.status().as_u16()),
            Err(error) if error.is::<NoEndpoint>() || error.is::<ClientBodyFailed>() => false,
            // A refused certificate stays refused, and a process out of
            // file descriptors stays out of them for the next try too.
            Err(error)
                if connect_error(error).is_some_and(|connect| {
                    connect.is_certificate_refusal() || connect.is_local()
                }) =>
            {
                false
            }
            Err(error) => replay_allowed || is_connect_failure(error),
        }
    }
}

/// RFC 9110 §9.2.2.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether the failure happened while connecting (nothing was sent).
fn is_connect_failure(error: &BoxError) -> bool {
    error
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .is_some_and(hyper_util::client::legacy::Error::is_connect)
        || error.is::<ConnectError>()
}

/// The connector's error behind a failed try, when connecting failed.
pub(super) fn connect_error(error: &BoxError) -> Option<&ConnectError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(cause) = source {
        if let Some(connect) = cause.downcast_ref::<ConnectError>() {
            return Some(connect);
        }
        source = cause.source();
    }
    None
}

fn error_chain(error: &BoxError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The absolute URI hyper's client needs (its authority keys the
/// connection pool; the connector ignores it).
fn upstream_uri(original: &Uri, authority: Option<&str>, tls: bool) -> Option<Uri> {
    let path = original
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    Uri::builder()
        .scheme(if tls { "https" } else { "http" })
        .authority(authority.unwrap_or("upstream"))
        .path_and_query(path)
        .build()
        .ok()
}

fn header_name(name: Option<&str>) -> Option<HeaderName> {
    name.and_then(|name| HeaderName::from_bytes(name.as_bytes()).ok())
}

fn version_label(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Relays an upgraded connection (WebSocket) both ways until either side
/// closes, or until no byte has moved for the idle timeout (the client side
/// is still the [`Watched`](crate::activity::Watched) stream, so its
/// activity keeps counting).
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    (activity, idle_timeout): (Arc<Activity>, Duration),
) {
    let (client, upstream) = tokio::join!(client, upstream);
    let (Ok(client), Ok(upstream)) = (client, upstream) else {
        tracing::debug!("upgrade did not complete on both sides");
        return;
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(error) = copied {
                tracing::debug!(%error, "upgraded connection ended with an error");
            }
        }
        () = activity.idle_for(idle_timeout) => {
            tracing::debug!("closing an upgraded connection idle for {idle_timeout:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_methods_are_idempotent() {
        for method in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(is_idempotent(&method), "{method}");
        }
        for method in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&method), "{method}");
        }
    }

    #[test]
    fn upstream_uris_are_absolute_and_keep_path_and_query() {
        let original: Uri = "/search?q=1".parse().unwrap();
        let uri = upstream_uri(&original, Some("api.local:8080"), false).unwrap();
        assert_eq!(uri.to_string(), "http://api.local:8080/search?q=1");
        let uri = upstream_uri(&"/".parse().unwrap(), None, true).unwrap();
        assert_eq!(uri.to_string(), "https://upstream/");
    }
}
