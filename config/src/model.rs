//! The validated configuration the runtime consumes. Every default lives
//! here, in the `DEFAULT_*` constants, and `docs/config.md` quotes them.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Where the admin server listens unless told otherwise.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9901);
/// Upstream TCP connect timeout (Envoy's default too).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A proxied connection with no bytes in either direction for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Concurrent client connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Time between SIGTERM and when listeners stop accepting.
pub const DEFAULT_DRAIN_MIN_DELAY: Duration = Duration::ZERO;
/// Longest wait for in-flight connections after SIGTERM; below Kubernetes'
/// default `terminationGracePeriodSeconds` of 30 s so attache exits on its own.
pub const DEFAULT_DRAIN_GRACE_PERIOD: Duration = Duration::from_secs(25);

/// A whole, validated attache configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Config {
    /// The admin HTTP server.
    pub admin: Admin,
    /// Logging.
    pub log: Log,
    /// Trace export (OpenTelemetry).
    pub tracing: Tracing,
    /// What happens on SIGTERM.
    pub drain: Drain,
    /// Where attache accepts connections.
    pub listeners: Vec<Listener>,
    /// Where attache forwards them.
    pub upstreams: Vec<Upstream>,
}

impl Config {
    /// The upstream called `name`.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|upstream| upstream.name == name)
    }

    /// Whether TLS to upstream `name` starts inside the MySQL protocol (the
    /// server's greeting, then an SSLRequest packet): a mysql listener
    /// uses it and it has `tls`.
    pub fn mysql_start_tls(&self, name: &str) -> bool {
        self.upstream(name)
            .is_some_and(|upstream| upstream.tls.is_some())
            && self.listeners.iter().any(|listener| {
                matches!(listener.kind, ListenerKind::Mysql(_))
                    && listener.upstream.as_deref() == Some(name)
            })
    }

    /// How TLS to upstream `name` starts: inside the Postgres protocol
    /// (`SSLRequest` first) when a postgres listener uses it and it has
    /// `tls`, with that listener's `server_sslmode`; `None` for TLS from
    /// the first byte (or none).
    pub fn postgres_start_tls(&self, name: &str) -> Option<ServerSslMode> {
        self.upstream(name)?.tls.as_ref()?;
        self.listeners
            .iter()
            .find_map(|listener| match &listener.kind {
                ListenerKind::Postgres(postgres) if listener.upstream.as_deref() == Some(name) => {
                    Some(postgres.server_sslmode)
                }
                _ => None,
            })
    }
}

/// The admin HTTP server (`/live`, `/ready`, `/startup`, `/metrics`, `/shutdown`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Admin {
    /// Listen address; `None` disables the admin server.
    pub listen: Option<SocketAddr>,
    /// Whether `POST /shutdown` (loopback callers only) is served.
    pub shutdown_endpoint: bool,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            listen: Some(DEFAULT_ADMIN_LISTEN),
            shutdown_endpoint: false,
        }
    }
}

/// Span export over OTLP/HTTP (protobuf). Export is on when `otlp_endpoint`
/// is set here or `OTEL_EXPORTER_OTLP_ENDPOINT` /
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set in the environment (the
/// config wins); `OTEL_SERVICE_NAME` overrides `service_name`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Tracing {
    /// Collector base URL (`http://collector:4318`); spans go to `/v1/traces` under it.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces recorded (0 to 1); a caller's sampling decision
    /// (the `traceparent` flag) is always followed.
    pub sample_ratio: f64,
}

/// Default of [`Tracing::service_name`].
pub const DEFAULT_SERVICE_NAME: &str = "attache";

impl Default for Tracing {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            sample_ratio: 1.0,
        }
    }
}

/// Logging settings; `RUST_LOG`, when set, overrides `level`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Log {
    /// Least severe level that is written.
    pub level: LogLevel,
    /// Output format.
    pub format: LogFormat,
}

/// A log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything, including per-read details.
    Trace,
    /// Per-connection events.
    Debug,
    /// Lifecycle events and failures (the default).
    #[default]
    Info,
    /// Failures only.
    Warn,
    /// Errors only.
    Error,
}

impl LogLevel {
    /// The level's name as `tracing` filters spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, pretty text when it is.
    #[default]
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Pretty,
}

/// Shutdown behaviour on SIGTERM / SIGINT / `POST /shutdown`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Drain {
    /// Listeners keep accepting for this long after the signal (readiness is
    /// already failing), for callers that still route to this pod.
    #[serde(serialize_with = "serialized::duration")]
    pub min_delay: Duration,
    /// The process exits when the last connection closes, or after this long.
    #[serde(serialize_with = "serialized::duration")]
    pub grace_period: Duration,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            min_delay: DEFAULT_DRAIN_MIN_DELAY,
            grace_period: DEFAULT_DRAIN_GRACE_PERIOD,
        }
    }
}

/// One listening socket and what to do with its connections.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listener {
    /// Name used in logs and metric labels.
    pub name: String,
    /// Address to bind; port 0 picks a free port (logged at start).
    pub listen: SocketAddr,
    /// The protocol spoken on accepted connections (declared, never
    /// sniffed), with its settings.
    #[serde(flatten)]
    pub kind: ListenerKind,
    /// Name of the upstream that connections are forwarded to; on an
    /// `http` listener, where requests no route matches go (`None`: 404).
    pub upstream: Option<String>,
    /// Concurrent connections; excess ones are closed at once and counted.
    pub max_connections: usize,
    /// Close a connection with no traffic in either direction for this long.
    #[serde(serialize_with = "serialized::duration")]
    pub idle_timeout: Duration,
    /// While draining, keep accepting connections from loopback peers (the
    /// app in the same pod) instead of closing the listener.
    pub keep_accepting_while_draining: bool,
    /// Allow plaintext on a non-loopback address.
    pub unsafe_plaintext: bool,
    /// TLS termination; `None` for plaintext.
    pub tls: Option<ListenerTls>,
    /// Accept the PROXY protocol header a load balancer sends first.
    pub proxy_protocol: Option<ProxyProtocol>,
}

impl Listener {
    /// The protocol the listener speaks.
    pub fn protocol(&self) -> Protocol {
        self.kind.protocol()
    }
}

/// A listener's protocol and that protocol's own settings (the `http:` or
/// `redis:` section). Postgres and MySQL join here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerKind {
    /// Bytes forwarded as they are.
    Tcp,
    /// HTTP/1.1 and HTTP/2, routed per request.
    Http(HttpListener),
    /// The Redis ambassador (RESP2/RESP3).
    Redis(RedisListener),
    /// The Postgres ambassador: TLS negotiated in-band (`SSLRequest`), then
    /// sessions pooled over server connections (the `postgres:` section).
    Postgres(PostgresListener),
    /// The MySQL/MariaDB ambassador: attache greets and logs in clients,
    /// then pools their sessions over server connections (the `mysql:`
    /// section).
    Mysql(MysqlListener),
}

impl ListenerKind {
    /// The protocol's name as the config spells it.
    pub fn protocol(&self) -> Protocol {
        match self {
            Self::Tcp => Protocol::Tcp,
            Self::Http(_) => Protocol::Http,
            Self::Redis(_) => Protocol::Redis,
            Self::Postgres(_) => Protocol::Postgres,
            Self::Mysql(_) => Protocol::Mysql,
        }
    }

    /// A listener of `protocol` with that protocol's defaults.
    pub fn with_defaults(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Tcp => Self::Tcp,
            Protocol::Http => Self::Http(HttpListener::default()),
            Protocol::Redis => Self::Redis(RedisListener::default()),
            Protocol::Postgres => Self::Postgres(PostgresListener::default()),
            Protocol::Mysql => Self::Mysql(MysqlListener::default()),
        }
    }
}

/// Written as the file has it: `protocol`, then the protocol's section.
impl serde::Serialize for ListenerKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("protocol", self.protocol().as_str())?;
        match self {
            Self::Tcp => {}
            Self::Http(http) => map.serialize_entry("http", http)?,
            Self::Postgres(postgres) => map.serialize_entry("postgres", postgres)?,
            Self::Mysql(mysql) => map.serialize_entry("mysql", mysql)?,
            Self::Redis(redis) => map.serialize_entry("redis", redis)?,
        }
        map.end()
    }
}

/// Longest wait for a request's response headers, retries included (Envoy's route default).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// A client must send a request's whole header block within this (slowloris).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request header block; larger ones get 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most request header fields; more get 431.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Largest request body kept in memory so that the request can be retried
/// (linkerd's 64 KiB); bigger bodies stream and are not retried.
pub const DEFAULT_RETRY_BUFFER_BYTES: usize = 64 * 1024;
/// Statuses retried by default (Envoy's `gateway-error`).
pub const DEFAULT_RETRY_STATUSES: [u16; 3] = [502, 503, 504];
/// Headers whose values the access log never shows.
pub const DEFAULT_REDACTED_HEADERS: [&str; 4] = [
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
];
/// Query parameters whose values the access log never shows.
pub const DEFAULT_REDACTED_QUERY: [&str; 5] =
    ["token", "password", "access_token", "secret", "api_key"];

/// An `http` listener's L7 behaviour.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HttpListener {
    /// Evaluated in order; the first match decides. Unmatched requests go to
    /// the listener's `upstream`.
    pub routes: Vec<Route>,
    /// Limit on waiting for the response headers, retries and backoff included; 504 after it.
    #[serde(serialize_with = "serialized::duration")]
    pub request_timeout: Duration,
    /// Limit on one upstream try; a try that runs out is retried (when the
    /// request may be) on another endpoint. `None`: only `request_timeout`.
    #[serde(serialize_with = "serialized::optional_duration")]
    pub per_try_timeout: Option<Duration>,
    /// The request line and headers must arrive within this.
    #[serde(serialize_with = "serialized::duration")]
    pub header_read_timeout: Duration,
    /// Largest request header block (bytes).
    pub max_header_bytes: usize,
    /// Most request header fields.
    pub max_headers: usize,
    /// When a try is retried: connect failures and resets always (if the
    /// method allows), and responses with these statuses.
    pub retry_statuses: Vec<u16>,
    /// Retry methods that are not idempotent (POST, PATCH) too.
    pub retry_non_idempotent: bool,
    /// Largest request body held for a retry.
    pub retry_buffer_bytes: usize,
    /// Response header carrying the upstream's time to response headers
    /// (seconds, like nginx's `$upstream_response_time`); `None`: not sent.
    pub upstream_time_header: Option<String>,
    /// Request header carrying the verified client certificate's identity
    /// to the app (like Envoy's XFCC); `None`: not sent. Any value a client
    /// sent in it is removed either way.
    pub peer_identity_header: Option<String>,
    /// One JSON line per request.
    pub access_log: AccessLog,
}

impl Default for HttpListener {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            per_try_timeout: None,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            retry_statuses: DEFAULT_RETRY_STATUSES.to_vec(),
            retry_non_idempotent: false,
            retry_buffer_bytes: DEFAULT_RETRY_BUFFER_BYTES,
            upstream_time_header: None,
            peer_identity_header: None,
            access_log: AccessLog::default(),
        }
    }
}

/// The per-request access log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccessLog {
    /// Whether a line is written per request.
    pub enabled: bool,
    /// The request headers (lowercase names) a line carries; `None`: all.
    pub headers: Option<Vec<String>>,
    /// Header names (lowercase) logged as `[redacted]`.
    pub redact_headers: Vec<String>,
    /// Query parameter names whose values are logged as `[redacted]`.
    pub redact_query: Vec<String>,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self {
            enabled: true,
            headers: None,
            redact_headers: DEFAULT_REDACTED_HEADERS.map(str::to_owned).to_vec(),
            redact_query: DEFAULT_REDACTED_QUERY.map(str::to_owned).to_vec(),
        }
    }
}

/// One routing rule: a match and what to do with the requests it matches.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    /// Name used in metric labels and logs.
    pub name: String,
    /// Which requests the route takes.
    pub matches: RouteMatch,
    /// What it does with them.
    pub action: RouteAction,
}

/// Conditions that must all hold; an empty match takes every request.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct RouteMatch {
    /// The request's host (port ignored, case-insensitive); `*.example.com`
    /// matches any subdomain.
    pub host: Option<String>,
    /// The path starts with this.
    pub path_prefix: Option<String>,
    /// The method is one of these (empty: any).
    pub methods: Vec<String>,
    /// Each header (lowercase name) is present with exactly this value.
    pub headers: Vec<(String, String)>,
}

/// What a route does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum RouteAction {
    /// Proxy to the named upstream.
    Upstream(String),
    /// Answer from attache itself (the guide's `/health` location).
    Direct {
        /// Response status.
        status: u16,
        /// Response body (`text/plain`).
        body: String,
    },
}

/// TLS termination on a listener.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListenerTls {
    /// Certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Whether clients must present a certificate.
    pub client_auth: ClientAuth,
    /// Lowest TLS version accepted.
    pub min_version: TlsVersion,
    /// ALPN protocols offered, in preference order; empty for none.
    pub alpn: Vec<String>,
    /// Which verified client identities are let in; empty lets in any
    /// certificate that chains to `client_ca`.
    pub allow: IdentityAllowList,
}

/// Whether a TLS listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// A certificate chaining to `client_ca` is required (the default).
    #[default]
    Required,
    /// A certificate is verified when presented, not required.
    Optional,
    /// No client certificate is asked for.
    None,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, serde::Serialize)]
pub enum TlsVersion {
    /// TLS 1.2 (the default minimum).
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "1.3")]
    Tls13,
}

/// Identities a peer certificate may carry to be accepted: any match in any
/// list lets the peer in. URIs may use `*` for one whole path segment
/// (`spiffe://cluster.local/ns/*/sa/web`) or end in `/*` for any suffix.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct IdentityAllowList {
    /// URI SANs, such as SPIFFE IDs.
    pub uris: Vec<String>,
    /// DNS SANs (exact, case-insensitive).
    pub dns: Vec<String>,
    /// Subject common names (exact).
    pub cns: Vec<String>,
}

impl IdentityAllowList {
    /// Whether no identity is listed (everything that verifies is allowed).
    pub fn is_empty(&self) -> bool {
        self.uris.is_empty() && self.dns.is_empty() && self.cns.is_empty()
    }
}

/// TLS origination to an upstream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpstreamTls {
    /// CA bundle the server's certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate chain for mutual TLS.
    pub cert: Option<PathBuf>,
    /// Client key for mutual TLS.
    pub key: Option<PathBuf>,
    /// Name sent as SNI and checked against the server certificate; the
    /// endpoint's host when absent.
    pub server_name: Option<String>,
    /// Lowest TLS version offered.
    pub min_version: TlsVersion,
    /// Pin the server's identity (SPIFFE ID, DNS SAN or CN) on top of
    /// chain verification; with URIs or CNs listed, the server name is not
    /// required to appear in the certificate (SPIFFE SVIDs carry no DNS name).
    pub allow: IdentityAllowList,
    /// ALPN protocols offered: `h2` when the upstream's `http_version` is
    /// `http2`, none otherwise (not a key of its own).
    pub alpn: Vec<String>,
}

/// A listener's acceptance of the PROXY protocol: the header a load
/// balancer (HAProxy `send-proxy`, nginx `proxy_protocol on`, AWS NLB)
/// sends before the client's bytes, naming the client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProxyProtocol {
    /// Which header versions are accepted.
    pub accept: ProxyProtocolVersion,
    /// Peers allowed to send a header: every connection from them must
    /// start with one, and connections from anyone else are refused.
    pub trusted: Vec<IpNetwork>,
    /// The whole header must arrive within this.
    #[serde(serialize_with = "serialized::duration")]
    pub timeout: Duration,
}

/// Default of [`ProxyProtocol::timeout`].
pub const DEFAULT_PROXY_PROTOCOL_TIMEOUT: Duration = Duration::from_secs(5);

/// PROXY protocol versions a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolVersion {
    /// The text header (`PROXY TCP4 ...`).
    V1,
    /// The binary header.
    V2,
    /// Either.
    Any,
}

/// An address block, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a
/// block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    pub address: std::net::IpAddr,
    pub prefix: u8,
}

impl IpNetwork {
    /// Parses `address[/prefix]`.
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: std::net::IpAddr = address.parse().map_err(|_| {
            format!("{text:?} is not an address or an address block such as 10.0.0.0/8")
        })?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {bits}"))?,
        };
        Ok(Self { address, prefix })
    }

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    #[must_use]
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        match (self.address, ip) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A listener's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Bytes both ways, unchanged (L4).
    Tcp,
    /// HTTP/1.1 and HTTP/2 (h2c prior knowledge, or ALPN over TLS), routed per request.
    Http,
    /// RESP: commands of many clients multiplexed over a few upstream connections.
    Redis,
    /// The Postgres wire protocol: TLS negotiated in-band (`SSLRequest`) or
    /// direct (ALPN `postgresql`), then the session pooled (or, with
    /// `auth: passthrough`, relayed as it is).
    Postgres,
    /// The MySQL/MariaDB client/server protocol: attache greets and logs in
    /// the client, then pools its session (or, with `auth: passthrough`,
    /// relays it as it is).
    Mysql,
}

impl Protocol {
    /// The protocol's name as the config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Redis => "redis",
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
        }
    }
}

/// A `redis` listener's settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RedisListener {
    /// Long-lived upstream connections shared by every client, per database.
    pub shared_connections: usize,
    /// A command without a reply after this gets an error reply (its late
    /// reply is discarded in order).
    #[serde(serialize_with = "serialized::duration")]
    pub command_timeout: Duration,
    /// Connections lent to one client at a time (transactions, blocking
    /// commands, pub/sub); a client waits up to `command_timeout` for one.
    pub max_pinned: u32,
    /// Clients must `AUTH` with this password (and `username`, when set)
    /// before anything else; checked by attache, never sent upstream.
    #[serde(serialize_with = "serialized::secret")]
    pub password: Option<String>,
    /// The user clients name in `AUTH user password`; `default` when absent.
    pub username: Option<String>,
    /// attache's own credentials for Redis, sent on every upstream connection.
    pub upstream_username: Option<String>,
    /// See `upstream_username`.
    #[serde(serialize_with = "serialized::secret")]
    pub upstream_password: Option<String>,
    /// A local cache of read replies, kept correct by Redis' own
    /// invalidation messages; off unless configured.
    pub cache: Option<RedisCache>,
}

/// The `cache:` section of a `redis` listener.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RedisCache {
    /// Upper bound on the bytes the cached replies, their keys and their
    /// bookkeeping take.
    pub max_memory: u64,
    /// Upper bound on cached replies.
    pub max_entries: usize,
    /// A reply is dropped this long after it was stored, even without an
    /// invalidation.
    #[serde(serialize_with = "serialized::duration")]
    pub max_ttl: Duration,
    /// Replies larger than this are passed on, not stored.
    pub max_entry_bytes: u64,
    /// Key prefixes (`user:`) or patterns (`session:*:profile`, with `*`
    /// and `?`) that may be cached; nothing else is.
    pub keys: Vec<String>,
    /// The read commands whose replies are cached, uppercase.
    pub commands: Vec<String>,
}

/// The read commands a cache can serve (each reads one key; `MGET` per key).
pub const CACHEABLE_COMMANDS: [&str; 11] = [
    "EXISTS",
    "GET",
    "HGET",
    "HGETALL",
    "HMGET",
    "LRANGE",
    "MGET",
    "SISMEMBER",
    "SMEMBERS",
    "STRLEN",
    "ZSCORE",
];
/// Default of [`RedisCache::max_entries`].
pub const DEFAULT_CACHE_MAX_ENTRIES: usize = 1_000_000;
/// Default of [`RedisCache::max_ttl`].
pub const DEFAULT_CACHE_MAX_TTL: Duration = Duration::from_secs(60);
/// Default of [`RedisCache::max_entry_bytes`].
pub const DEFAULT_CACHE_MAX_ENTRY_BYTES: u64 = 1024 * 1024;

/// Default of [`RedisListener::max_pinned`].
pub const DEFAULT_MAX_PINNED: u32 = 64;

/// Default of [`RedisListener::shared_connections`].
pub const DEFAULT_SHARED_CONNECTIONS: usize = 2;
/// Default of [`RedisListener::command_timeout`].
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for RedisListener {
    fn default() -> Self {
        Self {
            shared_connections: DEFAULT_SHARED_CONNECTIONS,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            max_pinned: DEFAULT_MAX_PINNED,
            password: None,
            username: None,
            upstream_username: None,
            upstream_password: None,
            cache: None,
        }
    }
}

/// What the database ambassadors (`postgres`, `mysql`) share: how client
/// sessions share server connections, and as whom attache logs in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolSettings {
    /// When a server connection goes back to its pool.
    pub pool_mode: PoolMode,
    /// Who authenticates the client.
    pub auth: DatabaseAuth,
    /// Server connections per (database, user) pool.
    pub pool_size: u32,
    /// Idle server connections each pool keeps ready once it is used.
    pub min_idle: u32,
    /// A client waits this long for a server connection, then gets an error.
    #[serde(serialize_with = "serialized::duration")]
    pub queue_timeout: Duration,
    /// A server connection is closed (when idle) after this long.
    #[serde(serialize_with = "serialized::duration")]
    pub server_lifetime: Duration,
    /// An idle server connection is closed after this long.
    #[serde(serialize_with = "serialized::duration")]
    pub server_idle_timeout: Duration,
    /// A query running longer is cancelled; off when absent.
    #[serde(serialize_with = "serialized::optional_duration")]
    pub query_timeout: Option<Duration>,
    /// The user attache logs into the server as; the client's own when absent.
    pub server_user: Option<String>,
    /// The password for the server login, when the server asks for one.
    #[serde(serialize_with = "serialized::secret")]
    pub server_password: Option<String>,
    /// Prepared statements kept per server connection (least recently used
    /// closed beyond it), in transaction mode.
    pub max_prepared_statements: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            pool_mode: PoolMode::default(),
            auth: DatabaseAuth::default(),
            pool_size: DEFAULT_POOL_SIZE,
            min_idle: 0,
            queue_timeout: DEFAULT_POOL_QUEUE_TIMEOUT,
            server_lifetime: DEFAULT_SERVER_LIFETIME,
            server_idle_timeout: DEFAULT_SERVER_IDLE_TIMEOUT,
            query_timeout: None,
            server_user: None,
            server_password: None,
            max_prepared_statements: DEFAULT_MAX_PREPARED_STATEMENTS,
        }
    }
}

/// A `postgres` listener's settings: how client sessions share server
/// connections.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct PostgresListener {
    /// Pooling and the server login (the keys both database ambassadors take).
    #[serde(flatten)]
    pub pool: PoolSettings,
    /// A client idle inside a transaction this long is closed and its server
    /// connection dropped; off when absent.
    #[serde(serialize_with = "serialized::optional_duration")]
    pub idle_in_transaction_timeout: Option<Duration>,
    /// With upstream `tls`: whether the server must accept TLS (`require`)
    /// or may decline it (`prefer`, then plaintext).
    pub server_sslmode: ServerSslMode,
    /// Users clients log in as (SCRAM-SHA-256); without these and
    /// `users_file`, loopback clients are trusted.
    pub users: std::collections::BTreeMap<String, PostgresUser>,
    /// A file of more users, one `"name" "password or verifier"` per line
    /// (PgBouncer's `auth_file` format), read when the listener starts.
    pub users_file: Option<PathBuf>,
    /// Statement spans carry `db.query.text`, literals replaced by `?`.
    pub trace_query_text: bool,
}

/// A `mysql` listener's settings: how client sessions share server
/// connections.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MysqlListener {
    /// Pooling and the server login (the keys both database ambassadors take).
    #[serde(flatten)]
    pub pool: PoolSettings,
    /// Users clients log in as (`mysql_native_password`), by name: their
    /// passwords. Without any, loopback clients log in as whom they name.
    #[serde(serialize_with = "serialized::redacted_values")]
    pub users: std::collections::BTreeMap<String, String>,
    /// A file of more users, one `"name" "password"` per line (PgBouncer's
    /// `auth_file` format), read when the listener starts.
    pub users_file: Option<PathBuf>,
    /// Session variables a client's `SET` may change without pinning its
    /// session: attache sets them on each connection it lends the client
    /// (`names`: the character set and collation variables `SET NAMES`
    /// changes).
    pub replayed_variables: Vec<String>,
    /// Command spans carry `db.query.text`, literals replaced by `?`.
    pub trace_query_text: bool,
}

/// Default of [`MysqlListener::replayed_variables`].
pub const DEFAULT_REPLAYED_VARIABLES: [&str; 4] = ["names", "time_zone", "sql_mode", "autocommit"];

impl Default for MysqlListener {
    fn default() -> Self {
        Self {
            pool: PoolSettings::default(),
            users: std::collections::BTreeMap::new(),
            users_file: None,
            replayed_variables: DEFAULT_REPLAYED_VARIABLES.map(str::to_owned).to_vec(),
            trace_query_text: false,
        }
    }
}

/// A user clients may log in as.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PostgresUser {
    /// A password, or a SCRAM verifier
    /// (`SCRAM-SHA-256$4096:salt$StoredKey:ServerKey`, as Postgres stores it).
    #[serde(serialize_with = "serialized::redacted")]
    pub secret: String,
    /// Overrides the listener's `query_timeout` for this user's sessions.
    #[serde(serialize_with = "serialized::optional_duration")]
    pub query_timeout: Option<Duration>,
}

/// A SCRAM-SHA-256 verifier as Postgres stores it
/// (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64):
/// what checks a client's proof without knowing its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl ScramVerifier {
    /// Reads a verifier; `None` when `text` is not one.
    pub fn parse(text: &str) -> Option<Self> {
        use base64::Engine as _;
        let decode = |part: &str| base64::engine::general_purpose::STANDARD.decode(part).ok();
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (parameters, keys) = rest.split_once('$')?;
        let (iterations, salt) = parameters.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        let verifier = Self {
            iterations: iterations.parse().ok().filter(|count| *count > 0)?,
            salt: decode(salt)?,
            stored_key: decode(stored_key)?,
            server_key: decode(server_key)?,
        };
        (verifier.stored_key.len() == 32 && verifier.server_key.len() == 32).then_some(verifier)
    }
}

/// Whether a Postgres server must accept attache's `SSLRequest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerSslMode {
    /// TLS or no connection.
    #[default]
    Require,
    /// TLS when the server offers it, else plaintext.
    Prefer,
}

/// When a database server connection returns to its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// When the client disconnects (after `DISCARD ALL` or
    /// `COM_RESET_CONNECTION`).
    Session,
    /// At the end of each transaction (no transaction open on the server),
    /// unless the client's session state pins it.
    #[default]
    Transaction,
}

impl PoolMode {
    /// The mode's name as the config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Transaction => "transaction",
        }
    }
}

/// Who authenticates a database client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseAuth {
    /// The client's startup and authentication go to a server connection of
    /// its own, as they are (session mode only, no pooling).
    Passthrough,
    /// attache answers the client (trust, loopback clients only) and logs
    /// into the server itself.
    #[default]
    Local,
}

/// Default of [`PoolSettings::pool_size`] (PgBouncer's `default_pool_size`).
pub const DEFAULT_POOL_SIZE: u32 = 20;
/// Default of [`PoolSettings::queue_timeout`].
pub const DEFAULT_POOL_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`PoolSettings::server_lifetime`] (PgBouncer's).
pub const DEFAULT_SERVER_LIFETIME: Duration = Duration::from_secs(3600);
/// Default of [`PoolSettings::server_idle_timeout`] (PgBouncer's).
pub const DEFAULT_SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Default of [`PoolSettings::max_prepared_statements`] (PgBouncer's).
pub const DEFAULT_MAX_PREPARED_STATEMENTS: usize = 200;

/// The HTTP version attache speaks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpVersion {
    /// HTTP/1.1 with keep-alive (the default).
    #[default]
    Http1,
    /// HTTP/2: prior knowledge on plaintext, ALPN `h2` with TLS.
    Http2,
}

/// A named group of endpoints that listeners forward to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Upstream {
    /// Name referenced by listeners and used in metric labels.
    pub name: String,
    /// Where the upstream service runs; hostnames resolve at each connect.
    pub endpoints: Vec<Endpoint>,
    /// How an endpoint is picked for each connection.
    pub balance: Balance,
    /// Limit on one TCP connect attempt to one endpoint.
    #[serde(serialize_with = "serialized::duration")]
    pub connect_timeout: Duration,
    /// TLS origination; `None` for plaintext.
    pub tls: Option<UpstreamTls>,
    /// Pre-connected (and pre-handshaken) connections per endpoint; `None`
    /// connects when a client arrives.
    pub warm_pool: Option<WarmPool>,
    /// Upstream connections handed to clients at once, and the queue behind them.
    pub limits: Limits,
    /// Connect retries and the budget that bounds them.
    pub retry: Retry,
    /// Per-endpoint circuit breaker on connect failures (outlier ejection).
    pub breaker: Breaker,
    /// Active health checks; `None` for none.
    pub health_check: Option<HealthCheck>,
    /// The HTTP version spoken to it by `http` listeners.
    pub http_version: HttpVersion,
    /// For `redis` listeners: the endpoints are Redis Sentinels, and the
    /// master they name is where commands go.
    pub sentinel: Option<Sentinel>,
    /// For `tcp` listeners: send a PROXY protocol header first on each
    /// connection, naming its client (and, in v2, its verified identity).
    pub proxy_protocol: Option<ProxyProtocolSend>,
}

/// The PROXY protocol header an upstream connection starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolSend {
    /// The text header.
    V1,
    /// The binary header, with the client's verified identity in a TLV.
    V2,
}

/// A Redis master found through Sentinel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sentinel {
    /// The name the Sentinels monitor the master under.
    pub master_name: String,
}

/// Warm connections per endpoint, made before clients arrive. At L4 each
/// one serves a single client and is then closed; the pool refills.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WarmPool {
    /// Idle connections kept ready per endpoint.
    pub size: usize,
    /// A warm connection older than this is replaced, never handed out; keep
    /// it below the server's pre-authentication timeout.
    #[serde(serialize_with = "serialized::duration")]
    pub max_age: Duration,
}

/// Idle connections per endpoint when `warm_pool` gives no `size`.
pub const DEFAULT_WARM_POOL_SIZE: usize = 2;
/// Below Postgres' 60 s `authentication_timeout`; MariaDB needs less (10 s).
pub const DEFAULT_WARM_POOL_MAX_AGE: Duration = Duration::from_secs(30);

/// Envoy's circuit-breaker thresholds and HAProxy's `maxconn`/`maxqueue`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Upstream connections handed to clients at once (warm idle ones are extra).
    pub max_connections: usize,
    /// Clients waiting for a connection slot; beyond that, refused at once.
    pub max_pending: usize,
    /// A waiting client is refused after this long.
    #[serde(serialize_with = "serialized::duration")]
    pub queue_timeout: Duration,
    /// HTTP requests in flight to the upstream at once (Envoy's
    /// `max_requests`); beyond it they queue like connections do.
    pub max_requests: usize,
    /// HTTP retries in flight at once (Envoy's `max_retries`); a retry
    /// beyond it is not made.
    pub max_retries: usize,
}

/// Default of [`Limits::max_connections`].
pub const DEFAULT_UPSTREAM_MAX_CONNECTIONS: usize = 4096;
/// Default of [`Limits::max_pending`].
pub const DEFAULT_MAX_PENDING: usize = 256;
/// Default of [`Limits::queue_timeout`].
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of [`Limits::max_requests`] (Envoy's).
pub const DEFAULT_MAX_REQUESTS: usize = 1024;
/// Default of [`Limits::max_retries`].
pub const DEFAULT_MAX_RETRIES: usize = 16;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_UPSTREAM_MAX_CONNECTIONS,
            max_pending: DEFAULT_MAX_PENDING,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            max_requests: DEFAULT_MAX_REQUESTS,
            max_retries: DEFAULT_MAX_RETRIES,
        }
    }
}

/// Connect retries: a failed connect (or TLS handshake) sent nothing
/// upstream, so another attempt is always safe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Retry {
    /// Connect attempts per client, the first included; 1 turns retries off.
    pub attempts: u32,
    /// Backoff before the first retry; doubles for each one, with full jitter.
    #[serde(serialize_with = "serialized::duration")]
    pub backoff: Duration,
    /// Ceiling of the backoff.
    #[serde(serialize_with = "serialized::duration")]
    pub max_backoff: Duration,
    /// All of one client's attempts and backoffs end within this.
    #[serde(serialize_with = "serialized::duration")]
    pub deadline: Duration,
    /// Retries may add this percentage to the first attempts of the last 10 s...
    pub budget_percent: u32,
    /// ...plus this many retries per second, whatever the traffic.
    pub budget_min_per_second: u32,
}

/// Default of [`Retry::attempts`].
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 3;
/// Default of [`Retry::backoff`].
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);
/// Default of [`Retry::max_backoff`].
pub const DEFAULT_RETRY_MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Default of [`Retry::deadline`].
pub const DEFAULT_RETRY_DEADLINE: Duration = Duration::from_secs(10);
/// Default of [`Retry::budget_percent`] (linkerd's and Finagle's 20 %).
pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;
/// Default of [`Retry::budget_min_per_second`].
pub const DEFAULT_RETRY_BUDGET_MIN_PER_SECOND: u32 = 10;

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            backoff: DEFAULT_RETRY_BACKOFF,
            max_backoff: DEFAULT_RETRY_MAX_BACKOFF,
            deadline: DEFAULT_RETRY_DEADLINE,
            budget_percent: DEFAULT_RETRY_BUDGET_PERCENT,
            budget_min_per_second: DEFAULT_RETRY_BUDGET_MIN_PER_SECOND,
        }
    }
}

/// Per-endpoint circuit breaker: consecutive failures open it; after
/// `open_for` (doubling on each failed probe, up to `max_open_for`) one probe
/// is let through, and its success closes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Breaker {
    /// Consecutive connect failures that open the breaker; 0 turns it off.
    pub consecutive_failures: u32,
    /// How long an endpoint stays out after it first opens.
    #[serde(serialize_with = "serialized::duration")]
    pub open_for: Duration,
    /// Ceiling of the doubling interval.
    #[serde(serialize_with = "serialized::duration")]
    pub max_open_for: Duration,
    /// Share of an upstream's endpoints that may be out at once (at least one may).
    pub max_ejected_percent: u32,
}

/// Default of [`Breaker::consecutive_failures`] (Envoy's `consecutive_5xx`).
pub const DEFAULT_BREAKER_CONSECUTIVE_FAILURES: u32 = 5;
/// Default of [`Breaker::open_for`].
pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(5);
/// Default of [`Breaker::max_open_for`].
pub const DEFAULT_BREAKER_MAX_OPEN_FOR: Duration = Duration::from_secs(60);
/// Default of [`Breaker::max_ejected_percent`].
pub const DEFAULT_BREAKER_MAX_EJECTED_PERCENT: u32 = 50;

impl Default for Breaker {
    fn default() -> Self {
        Self {
            consecutive_failures: DEFAULT_BREAKER_CONSECUTIVE_FAILURES,
            open_for: DEFAULT_BREAKER_OPEN_FOR,
            max_open_for: DEFAULT_BREAKER_MAX_OPEN_FOR,
            max_ejected_percent: DEFAULT_BREAKER_MAX_EJECTED_PERCENT,
        }
    }
}

/// Active health checking of every endpoint of an upstream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HealthCheck {
    /// What a check sends and expects.
    pub probe: Probe,
    /// Time between checks of one endpoint.
    #[serde(serialize_with = "serialized::duration")]
    pub interval: Duration,
    /// Limit on one check.
    #[serde(serialize_with = "serialized::duration")]
    pub timeout: Duration,
    /// Consecutive passes that bring an unhealthy endpoint back.
    pub healthy_threshold: u32,
    /// Consecutive failures that take a healthy endpoint out.
    pub unhealthy_threshold: u32,
    /// For the `mariadb` probe: log in as this user (no password, no
    /// privileges needed) and quit, so the server counts no aborted
    /// handshake; without it the probe reads the greeting and hangs up.
    pub user: Option<String>,
}

/// Default of [`HealthCheck::interval`].
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Default of [`HealthCheck::timeout`].
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Default of [`HealthCheck::healthy_threshold`].
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// Default of [`HealthCheck::unhealthy_threshold`].
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

/// A health check's probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// The TCP connect (and TLS handshake, with origination) succeeds.
    Tcp,
    /// `PING` is answered with `+PONG` (or `-NOAUTH`: the server is up).
    Redis,
    /// The server greeting arrives and is not an error packet.
    Mariadb,
    /// An `SSLRequest` is answered with `S` or `N`.
    Postgres,
}

impl Probe {
    /// The probe's name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Redis => "redis",
            Self::Mariadb => "mariadb",
            Self::Postgres => "postgres",
        }
    }
}

/// How an endpoint is picked for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// The endpoint with the fewest active connections (ties in turn).
    LeastConnections,
    /// The better of two random endpoints by peak-EWMA latency times
    /// outstanding work (linkerd's and Finagle's power of two choices).
    PeakEwma,
}

/// A `host:port` an upstream runs on. The host may be a name, resolved at
/// every connect, or an IP literal (IPv6 in brackets).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Hostname or IP address, without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why a string is not a `host:port` endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not HOST:PORT (IPv6 as [ADDR]:PORT)")]
pub struct EndpointSyntaxError(pub String);

impl FromStr for Endpoint {
    type Err = EndpointSyntaxError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || EndpointSyntaxError(text.to_owned());
        let (host, port) = text.rsplit_once(':').ok_or_else(error)?;
        let host = match host.strip_prefix('[') {
            Some(bracketed) => bracketed
                .strip_suffix(']')
                .filter(|inner| inner.parse::<std::net::Ipv6Addr>().is_ok())
                .ok_or_else(error)?,
            None if host.contains(':') => return Err(error()),
            None => host,
        };
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(error)?;
        let host_is_valid = !host.is_empty()
            && host
                .chars()
                .all(|character| character.is_ascii_alphanumeric() || "-._:".contains(character));
        if !host_is_valid {
            return Err(error());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl serde::Serialize for IpNetwork {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// How the model is written out (the admin port's `/config`): durations as
/// text (`1m 30s`), secrets redacted.
mod serialized {
    use std::time::Duration;

    pub(super) fn duration<S: serde::Serializer>(
        duration: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*duration))
    }

    pub(super) fn optional_duration<S: serde::Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => self::duration(duration, serializer),
            None => serializer.serialize_none(),
        }
    }

    /// Secrets by name: the names, never the values.
    pub(super) fn redacted<S: serde::Serializer>(
        _secret: &str,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }

    /// A map of names to secrets shows the names only.
    pub(super) fn redacted_values<S: serde::Serializer>(
        secrets: &std::collections::BTreeMap<String, String>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_map(secrets.keys().map(|name| (name, "<redacted>")))
    }

    /// A secret shows whether it is set, never its value.
    pub(super) fn secret<S: serde::Serializer>(
        secret: &Option<String>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match secret {
            Some(_) => serializer.serialize_str("<redacted>"),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod ip_network_tests {
    use super::IpNetwork;

    #[test]
    fn blocks_contain_their_addresses_only() {
        let block = IpNetwork::parse("10.1.0.0/16").unwrap();
        assert!(block.contains("10.1.200.3".parse().unwrap()));
        assert!(!block.contains("10.2.0.1".parse().unwrap()));
        assert!(block.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = IpNetwork::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let everything = IpNetwork::parse("0.0.0.0/0").unwrap();
        assert!(everything.contains("203.0.113.9".parse().unwrap()));
        let six = IpNetwork::parse("2001:db8::/32").unwrap();
        assert!(six.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!six.contains("10.1.0.1".parse().unwrap()));
        assert!(IpNetwork::parse("10.0.0.0/33").is_err());
        assert!(IpNetwork::parse("ten").is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_names_ipv4_and_bracketed_ipv6() {
        let parsed: Endpoint = "mariadb.default.svc:3306".parse().unwrap();
        assert_eq!(
            (parsed.host.as_str(), parsed.port),
            ("mariadb.default.svc", 3306)
        );
        let parsed: Endpoint = "[::1]:6379".parse().unwrap();
        assert_eq!((parsed.host.as_str(), parsed.port), ("::1", 6379));
        assert_eq!(parsed.to_string(), "[::1]:6379");
        assert_eq!(
            "10.0.0.7:5432".parse::<Endpoint>().unwrap().to_string(),
            "10.0.0.7:5432"
        );
    }

    #[test]
    fn malformed_endpoints_are_rejected() {
        for text in [
            "redis",
            "redis:",
            ":6379",
            "redis:0",
            "redis:70000",
            "::1:6379",
            "[db]:1",
            "a b:1",
        ] {
            assert!(
                text.parse::<Endpoint>().is_err(),
                "{text} should be rejected"
            );
        }
    }
}
