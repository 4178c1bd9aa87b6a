//! Distributed tracing: an OpenTelemetry tracer exporting spans over
//! OTLP/HTTP (protobuf), W3C `traceparent` extraction and injection, and
//! the span shapes attache emits (HTTP server and client spans per the
//! OpenTelemetry semantic conventions, one span per TCP connection).
//!
//! The SDK's batch processor runs on its own thread without a Tokio
//! runtime; the exporter's HTTP client therefore hands each request to the
//! runtime through a captured handle (the SDK's own hyper client panics
//! there, silently dropping every span). `https://` endpoints are verified
//! against the CA file of `OTEL_EXPORTER_OTLP_CERTIFICATE` (or its
//! `_TRACES_` form), else the system's roots, with an optional client
//! certificate (`..._CLIENT_CERTIFICATE`, `..._CLIENT_KEY`); headers such as
//! an API key come from `OTEL_EXPORTER_OTLP_HEADERS`, read by the exporter.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Tracer};

/// A collector slower than this loses the batch (it is retried by nothing).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The tracer, when export is on; owns the provider so it can flush at exit.
pub(crate) struct Traces {
    provider: Option<SdkTracerProvider>,
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the OTLP span exporter: {0}")]
pub(crate) struct TracingError(String);

impl Traces {
    /// Starts export when the config or the standard `OTEL_*` environment
    /// asks for it (inside the Tokio runtime).
    ///
    /// # Errors
    /// When the exporter cannot be built (an invalid endpoint).
    pub(crate) fn start(config: &attache_config::Tracing) -> Result<Self, TracingError> {
        let env = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
        };
        let disabled =
            env("OTEL_SDK_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true"));
        let from_env = env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
            || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
        if disabled || (config.otlp_endpoint.is_none() && !from_env) {
            return Ok(Self { provider: None });
        }
        let endpoint = config
            .otlp_endpoint
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .unwrap_or_default();
        let tls = collector_tls(&env, endpoint.starts_with("https://"))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = RuntimeClient {
            handle: tokio::runtime::Handle::current(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        };
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(client)
            .with_timeout(EXPORT_TIMEOUT);
        if let Some(base) = &config.otlp_endpoint {
            builder = builder.with_endpoint(format!("{base}/v1/traces"));
        }
        let exporter = builder
            .build()
            .map_err(|error| TracingError(error.to_string()))?;
        let service_name = env("OTEL_SERVICE_NAME").unwrap_or_else(|| config.service_name.clone());
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service_name)
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        tracing::info!(
            endpoint = config
                .otlp_endpoint
                .as_deref()
                .unwrap_or("(from OTEL_* environment)"),
            "exporting spans over OTLP/HTTP"
        );
        Ok(Self {
            provider: Some(provider),
        })
    }

    /// The tracer, when export is on.
    pub(crate) fn tracer(&self) -> Option<Tracer> {
        self.provider
            .as_ref()
            .map(|provider| provider.tracer("attache"))
    }

    /// Exports what is still buffered; called once at exit.
    pub(crate) fn shutdown(&self) {
        if let Some(provider) = &self.provider
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "flushing spans at exit failed");
        }
    }
}

/// The caller's trace context from `traceparent` / `tracestate` (an empty
/// context when there is none or it is malformed: a new trace starts).
pub(crate) fn extract(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes `context` as `traceparent` / `tracestate` into `headers`.
pub(crate) fn inject(context: &Context, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(context, &mut HeaderInjector(headers));
}

/// TLS to an `https://` collector: roots from the CA file the `OTEL_*`
/// variables name, else the system's; a client certificate when both its
/// files are named. The `_TRACES_` form of each variable wins. For an
/// `http://` collector nothing is loaded: the configuration is never used.
fn collector_tls(
    env: &dyn Fn(&str) -> Option<String>,
    https: bool,
) -> Result<rustls::ClientConfig, TracingError> {
    let variable = |suffix: &str| {
        env(&format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}"))
            .or_else(|| env(&format!("OTEL_EXPORTER_OTLP_{suffix}")))
            .filter(|_| https)
    };
    let failed = |error: &dyn fmt::Display| TracingError(error.to_string());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = variable("CERTIFICATE") {
        for certificate in
            attache_certs::pem::load_certificates(Path::new(&path)).map_err(|e| failed(&e))?
        {
            roots.add(certificate).map_err(|e| failed(&e))?;
        }
    } else if https {
        let system = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(system.certs);
        if roots.is_empty() {
            return Err(TracingError(format!(
                "no system CA certificates to verify the collector with ({:?}); \
                 set OTEL_EXPORTER_OTLP_CERTIFICATE to a CA file",
                system.errors
            )));
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(attache_certs::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(&e))?
        .with_root_certificates(roots);
    match (variable("CLIENT_CERTIFICATE"), variable("CLIENT_KEY")) {
        (Some(certificate), Some(key)) => {
            let chain = attache_certs::pem::load_certificates(Path::new(&certificate))
                .map_err(|e| failed(&e))?;
            let key =
                attache_certs::pem::load_private_key(Path::new(&key)).map_err(|e| failed(&e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| failed(&e))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The exporter's HTTP client: each request runs on attache's runtime.
struct RuntimeClient {
    handle: tokio::runtime::Handle,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl fmt::Debug for RuntimeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RuntimeClient")
    }
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let sent = self.handle.spawn(async move {
            let (parts, body) = request.into_parts();
            let request = http::Request::from_parts(parts, Full::new(body));
            let exchange = async {
                let response = client.request(request).await?;
                let (parts, body) = response.into_parts();
                let body = body.collect().await?.to_bytes();
                Ok::<_, HttpError>(http::Response::from_parts(parts, body))
            };
            match tokio::time::timeout(EXPORT_TIMEOUT, exchange).await {
                Ok(result) => result,
                Err(_) => Err(HttpError::from("the collector did not answer in time")),
            }
        });
        sent.await?
    }
}

/// One proxied TCP connection, recorded as a span when it has closed.
pub(crate) struct ConnectionSpan<'a> {
    pub(crate) listener: &'a str,
    pub(crate) upstream: &'a str,
    pub(crate) client: std::net::SocketAddr,
    pub(crate) peer_identity: Option<String>,
    pub(crate) endpoint: Option<String>,
    pub(crate) result: &'static str,
    pub(crate) error: Option<String>,
    pub(crate) to_upstream: u64,
    pub(crate) to_client: u64,
    pub(crate) started: std::time::SystemTime,
}

/// Records `connection` as a server span of its own trace, from its
/// accept to now (made at the end, so an open connection carries no span).
pub(crate) fn record_connection(tracer: &Tracer, connection: ConnectionSpan<'_>) {
    use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
    let mut attributes = vec![
        KeyValue::new("network.transport", "tcp"),
        KeyValue::new("client.address", connection.client.ip().to_string()),
        KeyValue::new("client.port", i64::from(connection.client.port())),
        KeyValue::new("attache.listener", connection.listener.to_owned()),
        KeyValue::new("attache.upstream", connection.upstream.to_owned()),
        KeyValue::new("attache.result", connection.result),
        KeyValue::new(
            "attache.bytes_to_upstream",
            saturating_i64(connection.to_upstream),
        ),
        KeyValue::new(
            "attache.bytes_to_client",
            saturating_i64(connection.to_client),
        ),
    ];
    if let Some(identity) = connection.peer_identity {
        attributes.push(KeyValue::new("attache.peer.identity", identity));
    }
    if let Some(endpoint) = connection.endpoint {
        attributes.push(KeyValue::new("attache.upstream.endpoint", endpoint));
    }
    let mut span = tracer
        .span_builder(format!("tcp {}", connection.listener))
        .with_kind(SpanKind::Server)
        .with_start_time(connection.started)
        .with_attributes(attributes)
        .start_with_context(tracer, &Context::new());
    if let Some(error) = connection.error {
        span.set_status(Status::error(error));
    }
    span.end();
}

pub(crate) fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The trace context a request carries between the proxy's layers (in the
/// request's extensions): the server span's.
#[derive(Clone)]
pub(crate) struct RequestContext(pub(crate) Context);

/// The trace id (hex) of the span in `context`, when it is sampled (its
/// spans are exported, so an exemplar pointing at it leads somewhere).
pub(crate) fn sampled_trace_id(context: &Context) -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    let span = context.span();
    let span_context = span.span_context();
    (span_context.is_valid() && span_context.is_sampled())
        .then(|| span_context.trace_id().to_string())
}

/// Starts the server span of an HTTP request, a child of the caller's
/// context when it sent one; returns the context holding it.
pub(crate) fn start_server_span(
    tracer: &Tracer,
    request: &http::request::Parts,
    client: std::net::SocketAddr,
    tls: bool,
    route: &str,
) -> Context {
    use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _};
    let parent = extract(&request.headers);
    let mut attributes = vec![
        KeyValue::new("http.request.method", request.method.as_str().to_owned()),
        KeyValue::new("url.path", request.uri.path().to_owned()),
        KeyValue::new("url.scheme", if tls { "https" } else { "http" }),
        KeyValue::new(
            "network.protocol.version",
            protocol_version(request.version),
        ),
        KeyValue::new("client.address", client.ip().to_string()),
        KeyValue::new("client.port", i64::from(client.port())),
        KeyValue::new("attache.route", route.to_owned()),
    ];
    if let Some(agent) = request
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|agent| agent.to_str().ok())
    {
        attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
    }
    let span = tracer
        .span_builder(request.method.as_str().to_owned())
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    parent.with_span(span)
}

/// Ends a server span with the status sent; 5xx marks it failed.
pub(crate) fn end_server_span(context: &Context, status: http::StatusCode, error: Option<&str>) {
    use opentelemetry::trace::{Status, TraceContextExt as _};
    let span = context.span();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    if let Some(error) = error {
        span.set_attribute(KeyValue::new("error.type", error.to_owned()));
    }
    if status.is_server_error() {
        span.set_status(Status::error(error.unwrap_or("").to_owned()));
    }
    span.end();
}

/// Starts the client span of one try (`resend_count` tries came before it)
/// and writes its context into the request's `traceparent`.
pub(crate) fn start_client_span<B>(
    tracer: &Tracer,
    parent: &Context,
    request: &mut http::Request<B>,
    endpoint: &attache_config::Endpoint,
    resend_count: usize,
) -> Context {
    use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _};
    let mut attributes = vec![
        KeyValue::new("http.request.method", request.method().as_str().to_owned()),
        KeyValue::new("server.address", endpoint.host.clone()),
        KeyValue::new("server.port", i64::from(endpoint.port)),
        KeyValue::new(
            "url.full",
            format!(
                "{}://{endpoint}{}",
                request.uri().scheme_str().unwrap_or("http"),
                request.uri().path()
            ),
        ),
    ];
    if resend_count > 0 {
        attributes.push(KeyValue::new(
            "http.request.resend_count",
            saturating_i64(resend_count as u64),
        ));
    }
    let span = tracer
        .span_builder(request.method().as_str().to_owned())
        .with_kind(SpanKind::Client)
        .with_attributes(attributes)
        .start_with_context(tracer, parent);
    let context = parent.with_span(span);
    inject(&context, request.headers_mut());
    context
}

/// Ends a try's span: the status received, or the failure's type. A 5xx
/// marks it failed (for a client span every 4xx and 5xx would, per the
/// conventions, but a 4xx is the app's answer, passed on as is).
pub(crate) fn end_client_span(context: &Context, outcome: Result<http::StatusCode, &str>) {
    use opentelemetry::trace::{Status, TraceContextExt as _};
    let span = context.span();
    match outcome {
        Ok(status) => {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            if status.is_server_error() {
                span.set_attribute(KeyValue::new("error.type", status.as_str().to_owned()));
                span.set_status(Status::error(""));
            }
        }
        Err(error) => {
            span.set_attribute(KeyValue::new("error.type", error.to_owned()));
            span.set_status(Status::error(error.to_owned()));
        }
    }
    span.end();
}

fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Starts the span of one Redis command forwarded on a shared connection:
/// `db.system` = `redis`, the command's name as `db.operation.name`, the
/// database index as `db.namespace`; never its arguments.
pub(crate) fn start_redis_span(
    tracer: &Tracer,
    listener: &str,
    command: &[u8],
    database: u32,
    cache_hit: Option<bool>,
) -> opentelemetry_sdk::trace::Span {
    use opentelemetry::trace::{SpanKind, Tracer as _};
    let name = String::from_utf8_lossy(command).to_ascii_uppercase();
    let mut attributes = vec![
        KeyValue::new("db.system", "redis"),
        KeyValue::new("db.operation.name", name.clone()),
        KeyValue::new("db.namespace", database.to_string()),
        KeyValue::new("attache.listener", listener.to_owned()),
    ];
    if let Some(hit) = cache_hit {
        attributes.push(KeyValue::new("cache.hit", hit));
    }
    tracer
        .span_builder(name)
        .with_kind(SpanKind::Client)
        .with_attributes(attributes)
        .start_with_context(tracer, &Context::new())
}

/// What a database statement's span says of it (Postgres, MySQL).
pub(crate) struct DatabaseStatement<'a> {
    /// `postgresql`, `mariadb` or `mysql`.
    pub(crate) system: &'static str,
    /// The statement's kind (the command tag's or the text's first word);
    /// none when unknown.
    pub(crate) operation: Option<&'a str>,
    /// The error the server answered with (a SQLSTATE, a MySQL error code).
    pub(crate) error: Option<&'a str>,
    /// Its text with literals replaced (only with `trace_query_text`).
    pub(crate) text: Option<&'a str>,
}

/// One database statement as it ran on the server, from `started` to
/// now: `db.system.name`, the database or schema as `db.namespace`, the
/// operation as `db.operation.name`, the error as
/// `db.response.status_code`; the SQL text (`db.query.text`) only when
/// given, with its literals already replaced.
pub(crate) fn record_database_span(
    tracer: &Tracer,
    listener: &str,
    database: &str,
    started: std::time::SystemTime,
    statement: DatabaseStatement<'_>,
) {
    let DatabaseStatement {
        system,
        operation,
        error: sqlstate,
        text,
    } = statement;
    use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
    let name = match operation {
        Some(operation) => format!("{operation} {database}"),
        None => database.to_owned(),
    };
    let mut attributes = vec![
        KeyValue::new("db.system.name", system),
        KeyValue::new("db.namespace", database.to_owned()),
        KeyValue::new("attache.listener", listener.to_owned()),
    ];
    if let Some(operation) = operation {
        attributes.push(KeyValue::new("db.operation.name", operation.to_owned()));
    }
    if let Some(sqlstate) = sqlstate {
        attributes.push(KeyValue::new(
            "db.response.status_code",
            sqlstate.to_owned(),
        ));
    }
    if let Some(text) = text.filter(|text| !text.is_empty()) {
        attributes.push(KeyValue::new("db.query.text", text.to_owned()));
    }
    let mut span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Client)
        .with_start_time(started)
        .with_attributes(attributes)
        .start_with_context(tracer, &Context::new());
    if let Some(sqlstate) = sqlstate {
        span.set_status(Status::error(sqlstate.to_owned()));
    }
    span.end();
}

/// Ends a Redis command's span; `error` names the failure, if any.
pub(crate) fn end_redis_span(
    mut span: opentelemetry_sdk::trace::Span,
    error: Option<&'static str>,
) {
    use opentelemetry::trace::{Span as _, Status};
    if let Some(error) = error {
        span.set_attribute(KeyValue::new("error.type", error));
        span.set_status(Status::error(error));
    }
    span.end();
}
