//! The YAML document as written: serde types that keep each value's line,
//! converted into the [`crate::model`] types while collecting every problem.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::error::Problem;
use crate::model::{self, Config};
use crate::validate::SourceMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Document {
    #[serde(default)]
    admin: AdminDocument,
    #[serde(default)]
    log: LogDocument,
    #[serde(default)]
    tracing: TracingDocument,
    #[serde(default)]
    drain: DrainDocument,
    #[serde(default)]
    listeners: Vec<ListenerDocument>,
    #[serde(default)]
    upstreams: BTreeMap<String, UpstreamDocument>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminDocument {
    listen: Option<Spanned<String>>,
    #[serde(default)]
    shutdown_endpoint: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogDocument {
    #[serde(default)]
    level: model::LogLevel,
    #[serde(default)]
    format: model::LogFormat,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TracingDocument {
    otlp_endpoint: Option<Spanned<String>>,
    service_name: Option<Spanned<String>>,
    sample_ratio: Option<Spanned<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainDocument {
    min_delay: Option<Spanned<String>>,
    grace_period: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerDocument {
    name: Option<Spanned<String>>,
    listen: Spanned<String>,
    protocol: Spanned<model::Protocol>,
    upstream: Option<Spanned<String>>,
    max_connections: Option<Spanned<usize>>,
    idle_timeout: Option<Spanned<String>>,
    #[serde(default)]
    keep_accepting_while_draining: bool,
    #[serde(default)]
    unsafe_plaintext: bool,
    tls: Option<ListenerTlsDocument>,
    proxy_protocol: Option<Spanned<ProxyProtocolDocument>>,
    http: Option<Spanned<HttpDocument>>,
    redis: Option<Spanned<RedisDocument>>,
    postgres: Option<Spanned<PostgresDocument>>,
    mysql: Option<Spanned<MysqlDocument>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresDocument {
    pool_mode: Option<Spanned<model::PoolMode>>,
    auth: Option<Spanned<model::DatabaseAuth>>,
    pool_size: Option<Spanned<u32>>,
    min_idle: Option<Spanned<u32>>,
    queue_timeout: Option<Spanned<String>>,
    server_lifetime: Option<Spanned<String>>,
    server_idle_timeout: Option<Spanned<String>>,
    query_timeout: Option<Spanned<String>>,
    idle_in_transaction_timeout: Option<Spanned<String>>,
    max_prepared_statements: Option<Spanned<usize>>,
    server_user: Option<Spanned<String>>,
    server_password: Option<Spanned<String>>,
    server_sslmode: Option<Spanned<model::ServerSslMode>>,
    users: Option<Spanned<BTreeMap<String, Spanned<PostgresUserDocument>>>>,
    users_file: Option<Spanned<String>>,
    #[serde(default)]
    trace_query_text: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MysqlDocument {
    pool_mode: Option<Spanned<model::PoolMode>>,
    auth: Option<Spanned<model::DatabaseAuth>>,
    pool_size: Option<Spanned<u32>>,
    min_idle: Option<Spanned<u32>>,
    queue_timeout: Option<Spanned<String>>,
    server_lifetime: Option<Spanned<String>>,
    server_idle_timeout: Option<Spanned<String>>,
    query_timeout: Option<Spanned<String>>,
    server_user: Option<Spanned<String>>,
    server_password: Option<Spanned<String>>,
    max_prepared_statements: Option<Spanned<usize>>,
    users: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    users_file: Option<Spanned<String>>,
    replayed_variables: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    trace_query_text: bool,
}

/// The keys both database sections take, as each document has them.
struct PoolKeys<'a> {
    pool_mode: Option<&'a Spanned<model::PoolMode>>,
    auth: Option<&'a Spanned<model::DatabaseAuth>>,
    pool_size: Option<&'a Spanned<u32>>,
    min_idle: Option<&'a Spanned<u32>>,
    queue_timeout: Option<&'a Spanned<String>>,
    server_lifetime: Option<&'a Spanned<String>>,
    server_idle_timeout: Option<&'a Spanned<String>>,
    query_timeout: Option<&'a Spanned<String>>,
    server_user: Option<&'a Spanned<String>>,
    server_password: Option<&'a Spanned<String>>,
    max_prepared_statements: Option<&'a Spanned<usize>>,
}

impl PoolKeys<'_> {
    fn convert(&self, path: &str, converter: &mut Converter) -> model::PoolSettings {
        let defaults = model::PoolSettings::default();
        model::PoolSettings {
            pool_mode: converter.value(
                &format!("{path}.pool_mode"),
                self.pool_mode,
                defaults.pool_mode,
            ),
            auth: converter.value(&format!("{path}.auth"), self.auth, defaults.auth),
            pool_size: converter.value(
                &format!("{path}.pool_size"),
                self.pool_size,
                defaults.pool_size,
            ),
            min_idle: converter.value(
                &format!("{path}.min_idle"),
                self.min_idle,
                defaults.min_idle,
            ),
            queue_timeout: converter.duration(
                &format!("{path}.queue_timeout"),
                self.queue_timeout,
                defaults.queue_timeout,
            ),
            server_lifetime: converter.duration(
                &format!("{path}.server_lifetime"),
                self.server_lifetime,
                defaults.server_lifetime,
            ),
            server_idle_timeout: converter.duration(
                &format!("{path}.server_idle_timeout"),
                self.server_idle_timeout,
                defaults.server_idle_timeout,
            ),
            query_timeout: self.query_timeout.map(|value| {
                converter.duration(
                    &format!("{path}.query_timeout"),
                    Some(value),
                    Duration::ZERO,
                )
            }),
            server_user: converter.optional_text(&format!("{path}.server_user"), self.server_user),
            server_password: converter
                .optional_text(&format!("{path}.server_password"), self.server_password),
            max_prepared_statements: converter.value(
                &format!("{path}.max_prepared_statements"),
                self.max_prepared_statements,
                defaults.max_prepared_statements,
            ),
        }
    }
}

/// A Postgres user: a password or verifier, or that with settings of its own.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PostgresUserDocument {
    Secret(String),
    Settings(PostgresUserSettingsDocument),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresUserSettingsDocument {
    password: String,
    query_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxyProtocolDocument {
    accept: Option<Spanned<model::ProxyProtocolVersion>>,
    trusted: Spanned<Vec<Spanned<String>>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisDocument {
    shared_connections: Option<Spanned<usize>>,
    command_timeout: Option<Spanned<String>>,
    max_pinned: Option<Spanned<u32>>,
    password: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    upstream_username: Option<Spanned<String>>,
    upstream_password: Option<Spanned<String>>,
    cache: Option<Spanned<RedisCacheDocument>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisCacheDocument {
    max_memory: Spanned<SizeDocument>,
    max_entries: Option<Spanned<usize>>,
    max_ttl: Option<Spanned<String>>,
    max_entry_bytes: Option<Spanned<SizeDocument>>,
    keys: Spanned<Vec<Spanned<String>>>,
    commands: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A size in bytes: a plain number, or text with a unit (`64MiB`, `512 KiB`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeDocument {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpDocument {
    #[serde(default)]
    routes: Vec<Spanned<RouteDocument>>,
    request_timeout: Option<Spanned<String>>,
    per_try_timeout: Option<Spanned<String>>,
    header_read_timeout: Option<Spanned<String>>,
    max_header_bytes: Option<Spanned<usize>>,
    max_headers: Option<Spanned<usize>>,
    retry_statuses: Option<Spanned<Vec<u16>>>,
    #[serde(default)]
    retry_non_idempotent: bool,
    retry_buffer_bytes: Option<Spanned<usize>>,
    upstream_time_header: Option<Spanned<String>>,
    peer_identity_header: Option<Spanned<String>>,
    #[serde(default)]
    access_log: AccessLogDocument,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessLogDocument {
    enabled: Option<bool>,
    headers: Option<Vec<String>>,
    redact_headers: Option<Vec<String>>,
    redact_query: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteDocument {
    name: Option<Spanned<String>>,
    #[serde(rename = "match", default)]
    matches: MatchDocument,
    upstream: Option<Spanned<String>>,
    direct_response: Option<Spanned<DirectResponseDocument>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchDocument {
    host: Option<String>,
    path_prefix: Option<String>,
    #[serde(default)]
    method: Vec<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectResponseDocument {
    status: Spanned<u16>,
    #[serde(default)]
    body: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerTlsDocument {
    cert: Spanned<String>,
    key: Spanned<String>,
    client_ca: Option<Spanned<String>>,
    client_auth: Option<Spanned<model::ClientAuth>>,
    min_version: Option<Spanned<String>>,
    #[serde(default)]
    alpn: Vec<String>,
    allow: Option<Spanned<AllowDocument>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamTlsDocument {
    ca: Spanned<String>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    min_version: Option<Spanned<String>>,
    allow: Option<Spanned<AllowDocument>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowDocument {
    #[serde(default)]
    uris: Vec<String>,
    #[serde(default)]
    dns: Vec<String>,
    #[serde(default)]
    cns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamDocument {
    endpoints: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    balance: model::Balance,
    connect_timeout: Option<Spanned<String>>,
    tls: Option<UpstreamTlsDocument>,
    warm_pool: Option<Spanned<WarmPoolDocument>>,
    #[serde(default)]
    limits: LimitsDocument,
    #[serde(default)]
    retry: RetryDocument,
    #[serde(default)]
    breaker: BreakerDocument,
    health_check: Option<Spanned<HealthCheckDocument>>,
    #[serde(default)]
    http_version: model::HttpVersion,
    sentinel: Option<Spanned<SentinelDocument>>,
    proxy_protocol: Option<Spanned<model::ProxyProtocolSend>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SentinelDocument {
    master_name: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmPoolDocument {
    size: Option<Spanned<usize>>,
    max_age: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsDocument {
    max_connections: Option<Spanned<usize>>,
    max_pending: Option<Spanned<usize>>,
    queue_timeout: Option<Spanned<String>>,
    max_requests: Option<Spanned<usize>>,
    max_retries: Option<Spanned<usize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryDocument {
    attempts: Option<Spanned<u32>>,
    backoff: Option<Spanned<String>>,
    max_backoff: Option<Spanned<String>>,
    deadline: Option<Spanned<String>>,
    budget_percent: Option<Spanned<u32>>,
    budget_min_per_second: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerDocument {
    consecutive_failures: Option<Spanned<u32>>,
    open_for: Option<Spanned<String>>,
    max_open_for: Option<Spanned<String>>,
    max_ejected_percent: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthCheckDocument {
    probe: Spanned<model::Probe>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    healthy_threshold: Option<Spanned<u32>>,
    unhealthy_threshold: Option<Spanned<u32>>,
    user: Option<Spanned<String>>,
}

/// Collects conversion problems and the line of each key path.
#[derive(Default)]
struct Converter {
    lines: HashMap<String, u64>,
    problems: Vec<Problem>,
}

impl Converter {
    /// Records where `path` was written and returns the value.
    fn note<'a, T>(&mut self, path: &str, spanned: &'a Spanned<T>) -> &'a T {
        self.lines
            .insert(path.to_owned(), spanned.referenced.line());
        &spanned.value
    }

    fn problem(&mut self, path: &str, message: String) {
        let line = self.lines.get(path).copied();
        self.problems.push(Problem::new(path, line, message));
    }

    fn duration(
        &mut self,
        path: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        let text = self.note(path, value);
        self.parse_duration(path, "", text).unwrap_or(default)
    }

    /// `text` as a duration, or a problem at `path` (its message starting
    /// with `prefix`, naming a key inside a value that has no line of its own).
    fn parse_duration(&mut self, path: &str, prefix: &str, text: &str) -> Option<Duration> {
        humantime::parse_duration(text.trim())
            .map_err(|error| {
                self.problem(
                    path,
                    format!(
                        "{prefix}{text:?} is not a duration such as 250ms, 10s or 1h ({error})"
                    ),
                );
            })
            .ok()
    }

    /// A plain value (a number) or its default, noting its line.
    fn value<T: Copy>(&mut self, path: &str, value: Option<&Spanned<T>>, default: T) -> T {
        value.map_or(default, |value| *self.note(path, value))
    }

    /// Text that counts as absent when empty (so `${VAR:-}` leaves it unset).
    fn optional_text(&mut self, path: &str, value: Option<&Spanned<String>>) -> Option<String> {
        let text = self.note(path, value?);
        (!text.is_empty()).then(|| text.clone())
    }

    /// A size in bytes, from a number or text with a unit.
    fn size(&mut self, path: &str, value: &Spanned<SizeDocument>, default: u64) -> u64 {
        match self.note(path, value) {
            SizeDocument::Bytes(bytes) => *bytes,
            SizeDocument::Text(text) => parse_size(text).unwrap_or_else(|| {
                self.problem(
                    path,
                    format!("{text:?} is not a size such as 67108864, 512KiB, 64MiB or 1GiB"),
                );
                default
            }),
        }
    }

    fn path(&mut self, path: &str, value: &Spanned<String>) -> std::path::PathBuf {
        std::path::PathBuf::from(self.note(path, value).trim())
    }

    fn tls_version(&mut self, path: &str, value: Option<&Spanned<String>>) -> model::TlsVersion {
        let Some(value) = value else {
            return model::TlsVersion::default();
        };
        match self.note(path, value).trim() {
            "1.2" => model::TlsVersion::Tls12,
            "1.3" => model::TlsVersion::Tls13,
            other => {
                let message = format!("{other:?} is not a TLS version: use \"1.2\" or \"1.3\"");
                self.problem(path, message);
                model::TlsVersion::default()
            }
        }
    }

    fn allow(
        &mut self,
        path: &str,
        value: Option<&Spanned<AllowDocument>>,
    ) -> model::IdentityAllowList {
        let Some(value) = value else {
            return model::IdentityAllowList::default();
        };
        let allow = self.note(path, value);
        model::IdentityAllowList {
            uris: allow.uris.clone(),
            dns: allow.dns.clone(),
            cns: allow.cns.clone(),
        }
    }

    fn socket_address(&mut self, path: &str, value: &Spanned<String>) -> Option<SocketAddr> {
        let text = self.note(path, value);
        let parsed = text.trim().parse().ok();
        if parsed.is_none() {
            self.problem(
                path,
                format!("{text:?} is not an IP:PORT address (IPv6 as [ADDR]:PORT; names are not allowed here)"),
            );
        }
        parsed
    }
}

impl Document {
    /// Converts to the model. Values that do not convert are reported and
    /// replaced by a placeholder so that validation can still run on the rest.
    pub(crate) fn into_config(self) -> (Config, SourceMap, Vec<Problem>) {
        let mut converter = Converter::default();
        let admin = model::Admin {
            listen: match &self.admin.listen {
                None => Some(model::DEFAULT_ADMIN_LISTEN),
                Some(listen) if listen.value.trim() == "off" => {
                    converter.note("admin.listen", listen);
                    None
                }
                Some(listen) => converter.socket_address("admin.listen", listen),
            },
            shutdown_endpoint: self.admin.shutdown_endpoint,
        };
        let drain = model::Drain {
            min_delay: converter.duration(
                "drain.min_delay",
                self.drain.min_delay.as_ref(),
                model::DEFAULT_DRAIN_MIN_DELAY,
            ),
            grace_period: converter.duration(
                "drain.grace_period",
                self.drain.grace_period.as_ref(),
                model::DEFAULT_DRAIN_GRACE_PERIOD,
            ),
        };
        let listeners = self
            .listeners
            .iter()
            .enumerate()
            .map(|(index, listener)| {
                listener.convert(&format!("listeners[{index}]"), &mut converter)
            })
            .collect();
        let upstreams = self
            .upstreams
            .iter()
            .map(|(name, upstream)| upstream.convert(name, &mut converter))
            .collect();
        let tracing_defaults = model::Tracing::default();
        let tracing = model::Tracing {
            // Empty means off, so `${OTEL_COLLECTOR:-}` works.
            otlp_endpoint: self
                .tracing
                .otlp_endpoint
                .as_ref()
                .map(|endpoint| {
                    converter
                        .note("tracing.otlp_endpoint", endpoint)
                        .trim()
                        .trim_end_matches('/')
                        .to_owned()
                })
                .filter(|endpoint| !endpoint.is_empty()),
            service_name: self.tracing.service_name.as_ref().map_or(
                tracing_defaults.service_name,
                |name| {
                    converter
                        .note("tracing.service_name", name)
                        .trim()
                        .to_owned()
                },
            ),
            sample_ratio: converter.value(
                "tracing.sample_ratio",
                self.tracing.sample_ratio.as_ref(),
                tracing_defaults.sample_ratio,
            ),
        };
        let config = Config {
            admin,
            tracing,
            log: model::Log {
                level: self.log.level,
                format: self.log.format,
            },
            drain,
            listeners,
            upstreams,
        };
        let reported = converter
            .problems
            .iter()
            .map(|problem| problem.path.clone())
            .collect();
        (
            config,
            SourceMap::new(converter.lines, reported),
            converter.problems,
        )
    }
}

impl ListenerDocument {
    fn convert(&self, path: &str, converter: &mut Converter) -> model::Listener {
        let protocol = *converter.note(&format!("{path}.protocol"), &self.protocol);
        let upstream = self.upstream.as_ref().map(|upstream| {
            converter
                .note(&format!("{path}.upstream"), upstream)
                .clone()
        });
        let name = match (&self.name, &upstream) {
            (Some(name), _) => converter.note(&format!("{path}.name"), name).clone(),
            (None, Some(upstream)) => upstream.clone(),
            (None, None) => format!(
                "listener{}",
                path.trim_start_matches("listeners[").trim_end_matches(']')
            ),
        };
        let kind = match protocol {
            model::Protocol::Tcp => model::ListenerKind::Tcp,
            model::Protocol::Postgres => model::ListenerKind::Postgres(match &self.postgres {
                Some(postgres) => {
                    let section = format!("{path}.postgres");
                    converter
                        .note(&section, postgres)
                        .convert(&section, converter)
                }
                None => model::PostgresListener::default(),
            }),
            model::Protocol::Mysql => model::ListenerKind::Mysql(match &self.mysql {
                Some(mysql) => {
                    let section = format!("{path}.mysql");
                    converter.note(&section, mysql).convert(&section, converter)
                }
                None => model::MysqlListener::default(),
            }),
            model::Protocol::Http => model::ListenerKind::Http(match &self.http {
                Some(http) => {
                    let section = format!("{path}.http");
                    converter.note(&section, http).convert(&section, converter)
                }
                None => model::HttpListener::default(),
            }),
            model::Protocol::Redis => model::ListenerKind::Redis(match &self.redis {
                Some(redis) => {
                    let section = format!("{path}.redis");
                    converter.note(&section, redis).convert(&section, converter)
                }
                None => model::RedisListener::default(),
            }),
        };
        if let Some(http) = &self.http
            && protocol != model::Protocol::Http
        {
            let section = format!("{path}.http");
            converter.note(&section, http);
            converter.problem(
                &section,
                "only a listener with `protocol: http` takes an `http` section".into(),
            );
        }
        if let Some(redis) = &self.redis
            && protocol != model::Protocol::Redis
        {
            let section = format!("{path}.redis");
            converter.note(&section, redis);
            converter.problem(
                &section,
                "only a listener with `protocol: redis` takes a `redis` section".into(),
            );
        }
        if let Some(postgres) = &self.postgres
            && protocol != model::Protocol::Postgres
        {
            let section = format!("{path}.postgres");
            converter.note(&section, postgres);
            converter.problem(
                &section,
                "only a listener with `protocol: postgres` takes a `postgres` section".into(),
            );
        }
        if let Some(mysql) = &self.mysql
            && protocol != model::Protocol::Mysql
        {
            let section = format!("{path}.mysql");
            converter.note(&section, mysql);
            converter.problem(
                &section,
                "only a listener with `protocol: mysql` takes a `mysql` section".into(),
            );
        }
        let listen = converter
            .socket_address(&format!("{path}.listen"), &self.listen)
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let max_connections = match &self.max_connections {
            Some(value) => *converter.note(&format!("{path}.max_connections"), value),
            None => model::DEFAULT_MAX_CONNECTIONS,
        };
        model::Listener {
            name,
            listen,
            kind,
            upstream,
            max_connections,
            idle_timeout: converter.duration(
                &format!("{path}.idle_timeout"),
                self.idle_timeout.as_ref(),
                model::DEFAULT_IDLE_TIMEOUT,
            ),
            keep_accepting_while_draining: self.keep_accepting_while_draining,
            unsafe_plaintext: self.unsafe_plaintext,
            proxy_protocol: self.proxy_protocol.as_ref().map(|document| {
                let path = format!("{path}.proxy_protocol");
                converter.note(&path, document);
                document.value.convert(&path, converter)
            }),
            tls: self.tls.as_ref().map(|tls| {
                let mut tls = tls.convert(&format!("{path}.tls"), converter);
                if tls.alpn.is_empty() {
                    tls.alpn = match protocol {
                        model::Protocol::Http => vec!["h2".to_owned(), "http/1.1".to_owned()],
                        // Postgres 17's direct TLS (`sslnegotiation=direct`)
                        // must negotiate this; older clients send no ALPN.
                        model::Protocol::Postgres => vec!["postgresql".to_owned()],
                        _ => Vec::new(),
                    };
                }
                tls
            }),
        }
    }
}

impl ProxyProtocolDocument {
    fn convert(&self, path: &str, converter: &mut Converter) -> model::ProxyProtocol {
        converter.note(&format!("{path}.trusted"), &self.trusted);
        let mut trusted = Vec::new();
        for (index, block) in self.trusted.value.iter().enumerate() {
            let block_path = format!("{path}.trusted[{index}]");
            let text = converter.note(&block_path, block).trim().to_owned();
            match model::IpNetwork::parse(&text) {
                Ok(network) => trusted.push(network),
                Err(message) => converter.problem(&block_path, message),
            }
        }
        if self.trusted.value.is_empty() {
            converter.problem(
                &format!("{path}.trusted"),
                "list the addresses (or blocks, 10.0.0.0/8) of the load balancers that send the header".to_owned(),
            );
        }
        model::ProxyProtocol {
            accept: converter.value(
                &format!("{path}.accept"),
                self.accept.as_ref(),
                model::ProxyProtocolVersion::Any,
            ),
            trusted,
            timeout: converter.duration(
                &format!("{path}.timeout"),
                self.timeout.as_ref(),
                model::DEFAULT_PROXY_PROTOCOL_TIMEOUT,
            ),
        }
    }
}

impl RedisDocument {
    fn convert(&self, path: &str, converter: &mut Converter) -> model::RedisListener {
        model::RedisListener {
            shared_connections: converter.value(
                &format!("{path}.shared_connections"),
                self.shared_connections.as_ref(),
                model::DEFAULT_SHARED_CONNECTIONS,
            ),
            command_timeout: converter.duration(
                &format!("{path}.command_timeout"),
                self.command_timeout.as_ref(),
                model::DEFAULT_COMMAND_TIMEOUT,
            ),
            max_pinned: converter.value(
                &format!("{path}.max_pinned"),
                self.max_pinned.as_ref(),
                model::DEFAULT_MAX_PINNED,
            ),
            password: converter.optional_text(&format!("{path}.password"), self.password.as_ref()),
            username: converter.optional_text(&format!("{path}.username"), self.username.as_ref()),
            upstream_username: converter.optional_text(
                &format!("{path}.upstream_username"),
                self.upstream_username.as_ref(),
            ),
            upstream_password: converter.optional_text(
                &format!("{path}.upstream_password"),
                self.upstream_password.as_ref(),
            ),
            cache: self.cache.as_ref().map(|cache| {
                let section = format!("{path}.cache");
                converter.note(&section, cache).convert(&section, converter)
            }),
        }
    }
}

impl PostgresDocument {
    fn convert(&self, path: &str, converter: &mut Converter) -> model::PostgresListener {
        let defaults = model::PostgresListener::default();
        let pool = PoolKeys {
            pool_mode: self.pool_mode.as_ref(),
            auth: self.auth.as_ref(),
            pool_size: self.pool_size.as_ref(),
            min_idle: self.min_idle.as_ref(),
            queue_timeout: self.queue_timeout.as_ref(),
            server_lifetime: self.server_lifetime.as_ref(),
            server_idle_timeout: self.server_idle_timeout.as_ref(),
            query_timeout: self.query_timeout.as_ref(),
            server_user: self.server_user.as_ref(),
            server_password: self.server_password.as_ref(),
            max_prepared_statements: self.max_prepared_statements.as_ref(),
        };
        model::PostgresListener {
            pool: pool.convert(path, converter),
            idle_in_transaction_timeout: self.idle_in_transaction_timeout.as_ref().map(|value| {
                converter.duration(
                    &format!("{path}.idle_in_transaction_timeout"),
                    Some(value),
                    Duration::ZERO,
                )
            }),
            server_sslmode: converter.value(
                &format!("{path}.server_sslmode"),
                self.server_sslmode.as_ref(),
                defaults.server_sslmode,
            ),
            users: self.users(path, converter),
            users_file: self
                .users_file
                .as_ref()
                .map(|file| converter.path(&format!("{path}.users_file"), file)),
            trace_query_text: self.trace_query_text,
        }
    }

    /// The users of `users:`, with their own settings.
    fn users(
        &self,
        path: &str,
        converter: &mut Converter,
    ) -> BTreeMap<String, model::PostgresUser> {
        let mut users = BTreeMap::new();
        if let Some(listed) = &self.users {
            converter.note(&format!("{path}.users"), listed);
            for (name, user) in &listed.value {
                let user_path = format!("{path}.users.{name}");
                let user = match converter.note(&user_path, user) {
                    PostgresUserDocument::Secret(secret) => model::PostgresUser {
                        secret: secret.clone(),
                        query_timeout: None,
                    },
                    PostgresUserDocument::Settings(settings) => model::PostgresUser {
                        secret: settings.password.clone(),
                        query_timeout: settings.query_timeout.as_deref().and_then(|text| {
                            converter.parse_duration(&user_path, "query_timeout: ", text)
                        }),
                    },
                };
                users.insert(name.clone(), user);
            }
        }
        users
    }
}

impl MysqlDocument {
    fn convert(&self, path: &str, converter: &mut Converter) -> model::MysqlListener {
        let pool = PoolKeys {
            pool_mode: self.pool_mode.as_ref(),
            auth: self.auth.as_ref(),
            pool_size: self.pool_size.as_ref(),
            min_idle: self.min_idle.as_ref(),
            queue_timeout: self.queue_timeout.as_ref(),
            server_lifetime: self.server_lifetime.as_ref(),
            server_idle_timeout: self.server_idle_timeout.as_ref(),
            query_timeout: self.query_timeout.as_ref(),
            server_user: self.server_user.as_ref(),
            server_password: self.server_password.as_ref(),
            max_prepared_statements: self.max_prepared_statements.as_ref(),
        };
        let mut users = BTreeMap::new();
        if let Some(listed) = &self.users {
            converter.note(&format!("{path}.users"), listed);
            for (name, password) in &listed.value {
                let password = converter.note(&format!("{path}.users.{name}"), password);
                users.insert(name.clone(), password.clone());
            }
        }
        model::MysqlListener {
            pool: pool.convert(path, converter),
            users,
            users_file: self
                .users_file
                .as_ref()
                .map(|file| converter.path(&format!("{path}.users_file"), file)),
            replayed_variables: match &self.replayed_variables {
                Some(list) => {
                    converter.note(&format!("{path}.replayed_variables"), list);
                    list.value
                        .iter()
                        .enumerate()
                        .map(|(index, name)| {
                            converter
                                .note(&format!("{path}.replayed_variables[{index}]"), name)
                                .trim()
                                .to_ascii_lowercase()
                        })
                        .collect()
                }
                None => model::MysqlListener::default().replayed_variables,
            },
            trace_query_text: self.trace_query_text,
        }
    }
}

impl RedisCacheDocument {
    fn convert(&self, path: &str, converter: &mut Converter) -> model::RedisCache {
        let texts = |converter: &mut Converter, key: &str, list: &Spanned<Vec<Spanned<String>>>| {
            converter.note(&format!("{path}.{key}"), list);
            list.value
                .iter()
                .enumerate()
                .map(|(index, text)| {
                    converter
                        .note(&format!("{path}.{key}[{index}]"), text)
                        .trim()
                        .to_owned()
                })
                .collect::<Vec<_>>()
        };
        let keys = texts(converter, "keys", &self.keys);
        let commands = match &self.commands {
            Some(commands) => texts(converter, "commands", commands)
                .into_iter()
                .map(|command| command.to_ascii_uppercase())
                .collect(),
            None => model::CACHEABLE_COMMANDS
                .iter()
                .map(|command| (*command).to_owned())
                .collect(),
        };
        model::RedisCache {
            max_memory: converter.size(&format!("{path}.max_memory"), &self.max_memory, 0),
            max_entries: converter.value(
                &format!("{path}.max_entries"),
                self.max_entries.as_ref(),
                model::DEFAULT_CACHE_MAX_ENTRIES,
            ),
            max_ttl: converter.duration(
                &format!("{path}.max_ttl"),
                self.max_ttl.as_ref(),
                model::DEFAULT_CACHE_MAX_TTL,
            ),
            max_entry_bytes: self.max_entry_bytes.as_ref().map_or(
                model::DEFAULT_CACHE_MAX_ENTRY_BYTES,
                |size| {
                    converter.size(
                        &format!("{path}.max_entry_bytes"),
                        size,
                        model::DEFAULT_CACHE_MAX_ENTRY_BYTES,
                    )
                },
            ),
            keys,
            commands,
        }
    }
}

/// `67108864`, `64MiB`, `64 MiB`, `512k`, `1GB`: binary units (KiB, MiB,
/// GiB; K, M, G and KB, MB, GB mean the same, as in Redis' own config),
/// `B` or nothing for bytes. `None` for anything else or an overflow.
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

impl HttpDocument {
    fn convert(&self, path: &str, converter: &mut Converter) -> model::HttpListener {
        let defaults = model::HttpListener::default();
        let routes = self
            .routes
            .iter()
            .enumerate()
            .map(|(index, route)| {
                let route_path = format!("{path}.routes[{index}]");
                converter
                    .note(&route_path, route)
                    .convert(&route_path, converter)
            })
            .collect();
        let header = |converter: &mut Converter, key: &str, value: &Option<Spanned<String>>| {
            value.as_ref().map(|value| {
                converter
                    .note(&format!("{path}.{key}"), value)
                    .trim()
                    .to_ascii_lowercase()
            })
        };
        let access_log = &self.access_log;
        let lowercase = |names: &[String]| {
            names
                .iter()
                .map(|name| name.trim().to_ascii_lowercase())
                .collect()
        };
        model::HttpListener {
            routes,
            request_timeout: converter.duration(
                &format!("{path}.request_timeout"),
                self.request_timeout.as_ref(),
                defaults.request_timeout,
            ),
            per_try_timeout: self.per_try_timeout.as_ref().map(|value| {
                converter.duration(
                    &format!("{path}.per_try_timeout"),
                    Some(value),
                    defaults.request_timeout,
                )
            }),
            header_read_timeout: converter.duration(
                &format!("{path}.header_read_timeout"),
                self.header_read_timeout.as_ref(),
                defaults.header_read_timeout,
            ),
            max_header_bytes: converter.value(
                &format!("{path}.max_header_bytes"),
                self.max_header_bytes.as_ref(),
                defaults.max_header_bytes,
            ),
            max_headers: converter.value(
                &format!("{path}.max_headers"),
                self.max_headers.as_ref(),
                defaults.max_headers,
            ),
            retry_statuses: match &self.retry_statuses {
                Some(statuses) => converter
                    .note(&format!("{path}.retry_statuses"), statuses)
                    .clone(),
                None => defaults.retry_statuses,
            },
            retry_non_idempotent: self.retry_non_idempotent,
            retry_buffer_bytes: converter.value(
                &format!("{path}.retry_buffer_bytes"),
                self.retry_buffer_bytes.as_ref(),
                defaults.retry_buffer_bytes,
            ),
            upstream_time_header: header(
                converter,
                "upstream_time_header",
                &self.upstream_time_header,
            ),
            peer_identity_header: header(
                converter,
                "peer_identity_header",
                &self.peer_identity_header,
            ),
            access_log: model::AccessLog {
                enabled: access_log.enabled.unwrap_or(defaults.access_log.enabled),
                headers: access_log.headers.as_deref().map(lowercase),
                redact_headers: access_log
                    .redact_headers
                    .as_deref()
                    .map_or(defaults.access_log.redact_headers, lowercase),
                redact_query: access_log
                    .redact_query
                    .as_deref()
                    .map_or(defaults.access_log.redact_query, |names| {
                        names.iter().map(|name| name.trim().to_owned()).collect()
                    }),
            },
        }
    }
}

impl RouteDocument {
    fn convert(&self, path: &str, converter: &mut Converter) -> model::Route {
        let action = match (&self.upstream, &self.direct_response) {
            (Some(upstream), None) => model::RouteAction::Upstream(
                converter
                    .note(&format!("{path}.upstream"), upstream)
                    .trim()
                    .to_owned(),
            ),
            (None, Some(direct)) => {
                let direct = converter.note(&format!("{path}.direct_response"), direct);
                model::RouteAction::Direct {
                    status: *converter
                        .note(&format!("{path}.direct_response.status"), &direct.status),
                    body: direct.body.clone(),
                }
            }
            _ => {
                converter.problem(
                    path,
                    "a route needs exactly one of `upstream` and `direct_response`".into(),
                );
                // A placeholder keeps the later routes at their indexes.
                model::RouteAction::Direct {
                    status: 200,
                    body: String::new(),
                }
            }
        };
        let name = match (&self.name, &action) {
            (Some(name), _) => converter
                .note(&format!("{path}.name"), name)
                .trim()
                .to_owned(),
            (None, model::RouteAction::Upstream(upstream)) => upstream.clone(),
            (None, model::RouteAction::Direct { .. }) => "direct".to_owned(),
        };
        let matches = &self.matches;
        model::Route {
            name,
            matches: model::RouteMatch {
                host: matches
                    .host
                    .as_ref()
                    .map(|host| host.trim().to_ascii_lowercase()),
                path_prefix: matches.path_prefix.clone(),
                methods: matches
                    .method
                    .iter()
                    .map(|method| method.trim().to_ascii_uppercase())
                    .collect(),
                headers: matches
                    .headers
                    .iter()
                    .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.clone()))
                    .collect(),
            },
            action,
        }
    }
}

impl ListenerTlsDocument {
    fn convert(&self, path: &str, converter: &mut Converter) -> model::ListenerTls {
        model::ListenerTls {
            cert: converter.path(&format!("{path}.cert"), &self.cert),
            key: converter.path(&format!("{path}.key"), &self.key),
            client_ca: self
                .client_ca
                .as_ref()
                .map(|client_ca| converter.path(&format!("{path}.client_ca"), client_ca)),
            client_auth: self
                .client_auth
                .as_ref()
                .map(|client_auth| *converter.note(&format!("{path}.client_auth"), client_auth))
                .unwrap_or_default(),
            min_version: converter
                .tls_version(&format!("{path}.min_version"), self.min_version.as_ref()),
            alpn: self.alpn.clone(),
            allow: converter.allow(&format!("{path}.allow"), self.allow.as_ref()),
        }
    }
}

impl UpstreamTlsDocument {
    fn convert(&self, path: &str, converter: &mut Converter) -> model::UpstreamTls {
        model::UpstreamTls {
            ca: converter.path(&format!("{path}.ca"), &self.ca),
            cert: self
                .cert
                .as_ref()
                .map(|cert| converter.path(&format!("{path}.cert"), cert)),
            key: self
                .key
                .as_ref()
                .map(|key| converter.path(&format!("{path}.key"), key)),
            server_name: self.server_name.as_ref().map(|name| {
                converter
                    .note(&format!("{path}.server_name"), name)
                    .trim()
                    .to_owned()
            }),
            min_version: converter
                .tls_version(&format!("{path}.min_version"), self.min_version.as_ref()),
            allow: converter.allow(&format!("{path}.allow"), self.allow.as_ref()),
            alpn: Vec::new(),
        }
    }
}

impl UpstreamDocument {
    fn convert(&self, name: &str, converter: &mut Converter) -> model::Upstream {
        let path = format!("upstreams.{name}");
        converter.note(&format!("{path}.endpoints"), &self.endpoints);
        let endpoints = self
            .endpoints
            .value
            .iter()
            .enumerate()
            .filter_map(|(index, endpoint)| {
                let endpoint_path = format!("{path}.endpoints[{index}]");
                let text = converter.note(&endpoint_path, endpoint);
                text.trim()
                    .parse()
                    .map_err(|error| converter.problem(&endpoint_path, format!("{error}")))
                    .ok()
            })
            .collect();
        model::Upstream {
            name: name.to_owned(),
            endpoints,
            balance: self.balance,
            connect_timeout: converter.duration(
                &format!("{path}.connect_timeout"),
                self.connect_timeout.as_ref(),
                model::DEFAULT_CONNECT_TIMEOUT,
            ),
            tls: self.tls.as_ref().map(|tls| {
                let mut tls = tls.convert(&format!("{path}.tls"), converter);
                if self.http_version == model::HttpVersion::Http2 {
                    tls.alpn = vec!["h2".to_owned()];
                }
                tls
            }),
            warm_pool: self.warm_pool.as_ref().map(|warm_pool| {
                let section = format!("{path}.warm_pool");
                converter
                    .note(&section, warm_pool)
                    .convert(&section, converter)
            }),
            limits: self.limits.convert(&format!("{path}.limits"), converter),
            retry: self.retry.convert(&format!("{path}.retry"), converter),
            breaker: self.breaker.convert(&format!("{path}.breaker"), converter),
            health_check: self.health_check.as_ref().map(|health_check| {
                let section = format!("{path}.health_check");
                converter
                    .note(&section, health_check)
                    .convert(&section, converter)
            }),
            http_version: self.http_version,
            sentinel: self.sentinel.as_ref().map(|sentinel| {
                let section = format!("{path}.sentinel");
                let sentinel = converter.note(&section, sentinel);
                model::Sentinel {
                    master_name: converter
                        .note(&format!("{section}.master_name"), &sentinel.master_name)
                        .trim()
                        .to_owned(),
                }
            }),
            proxy_protocol: self
                .proxy_protocol
                .as_ref()
                .map(|version| *converter.note(&format!("{path}.proxy_protocol"), version)),
        }
    }
}

impl WarmPoolDocument {
    fn convert(&self, path: &str, converter: &mut Converter) -> model::WarmPool {
        model::WarmPool {
            size: converter.value(
                &format!("{path}.size"),
                self.size.as_ref(),
                model::DEFAULT_WARM_POOL_SIZE,
            ),
            max_age: converter.duration(
                &format!("{path}.max_age"),
                self.max_age.as_ref(),
                model::DEFAULT_WARM_POOL_MAX_AGE,
            ),
        }
    }
}

impl LimitsDocument {
    fn convert(&self, path: &str, converter: &mut Converter) -> model::Limits {
        model::Limits {
            max_connections: converter.value(
                &format!("{path}.max_connections"),
                self.max_connections.as_ref(),
                model::DEFAULT_UPSTREAM_MAX_CONNECTIONS,
            ),
            max_pending: converter.value(
                &format!("{path}.max_pending"),
                self.max_pending.as_ref(),
                model::DEFAULT_MAX_PENDING,
            ),
            queue_timeout: converter.duration(
                &format!("{path}.queue_timeout"),
                self.queue_timeout.as_ref(),
                model::DEFAULT_QUEUE_TIMEOUT,
            ),
            max_requests: converter.value(
                &format!("{path}.max_requests"),
                self.max_requests.as_ref(),
                model::DEFAULT_MAX_REQUESTS,
            ),
            max_retries: converter.value(
                &format!("{path}.max_retries"),
                self.max_retries.as_ref(),
                model::DEFAULT_MAX_RETRIES,
            ),
        }
    }
}

impl RetryDocument {
    fn convert(&self, path: &str, converter: &mut Converter) -> model::Retry {
        model::Retry {
            attempts: converter.value(
                &format!("{path}.attempts"),
                self.attempts.as_ref(),
                model::DEFAULT_RETRY_ATTEMPTS,
            ),
            backoff: converter.duration(
                &format!("{path}.backoff"),
                self.backoff.as_ref(),
                model::DEFAULT_RETRY_BACKOFF,
            ),
            max_backoff: converter.duration(
                &format!("{path}.max_backoff"),
                self.max_backoff.as_ref(),
                model::DEFAULT_RETRY_MAX_BACKOFF,
            ),
            deadline: converter.duration(
                &format!("{path}.deadline"),
                self.deadline.as_ref(),
                model::DEFAULT_RETRY_DEADLINE,
            ),
            budget_percent: converter.value(
                &format!("{path}.budget_percent"),
                self.budget_percent.as_ref(),
                model::DEFAULT_RETRY_BUDGET_PERCENT,
            ),
            budget_min_per_second: converter.value(
                &format!("{path}.budget_min_per_second"),
                self.budget_min_per_second.as_ref(),
                model::DEFAULT_RETRY_BUDGET_MIN_PER_SECOND,
            ),
        }
    }
}

impl BreakerDocument {
    fn convert(&self, path: &str, converter: &mut Converter) -> model::Breaker {
        model::Breaker {
            consecutive_failures: converter.value(
                &format!("{path}.consecutive_failures"),
                self.consecutive_failures.as_ref(),
                model::DEFAULT_BREAKER_CONSECUTIVE_FAILURES,
            ),
            open_for: converter.duration(
                &format!("{path}.open_for"),
                self.open_for.as_ref(),
                model::DEFAULT_BREAKER_OPEN_FOR,
            ),
            max_open_for: converter.duration(
                &format!("{path}.max_open_for"),
                self.max_open_for.as_ref(),
                model::DEFAULT_BREAKER_MAX_OPEN_FOR,
            ),
            max_ejected_percent: converter.value(
                &format!("{path}.max_ejected_percent"),
                self.max_ejected_percent.as_ref(),
                model::DEFAULT_BREAKER_MAX_EJECTED_PERCENT,
            ),
        }
    }
}

impl HealthCheckDocument {
    fn convert(&self, path: &str, converter: &mut Converter) -> model::HealthCheck {
        model::HealthCheck {
            probe: *converter.note(&format!("{path}.probe"), &self.probe),
            user: self
                .user
                .as_ref()
                .map(|user| converter.note(&format!("{path}.user"), user).clone()),
            interval: converter.duration(
                &format!("{path}.interval"),
                self.interval.as_ref(),
                model::DEFAULT_HEALTH_INTERVAL,
            ),
            timeout: converter.duration(
                &format!("{path}.timeout"),
                self.timeout.as_ref(),
                model::DEFAULT_HEALTH_TIMEOUT,
            ),
            healthy_threshold: converter.value(
                &format!("{path}.healthy_threshold"),
                self.healthy_threshold.as_ref(),
                model::DEFAULT_HEALTHY_THRESHOLD,
            ),
            unhealthy_threshold: converter.value(
                &format!("{path}.unhealthy_threshold"),
                self.unhealthy_threshold.as_ref(),
                model::DEFAULT_UNHEALTHY_THRESHOLD,
            ),
        }
    }
}
