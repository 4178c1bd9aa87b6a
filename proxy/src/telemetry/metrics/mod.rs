//! Every metric attache exports, registered once at start-up, one module
//! per domain (`connections`, `upstream`, `http`, `redis`, `reloads`,
//! `process`). Protocol code
//! resolves label sets into handles ([`ListenerMetrics`], [`EndpointMetrics`])
//! when a listener or endpoint is created, so the hot path only increments
//! atomics.
//!
//! Names (all with the `attache_` prefix):
//! - `connections_total{listener}`: connections accepted and handed to a handler
//! - `connections_active{listener}`: connections being proxied now
//! - `connections_refused_total{listener,reason}`: closed at accept; reason is
//!   `max_connections`, `draining`, `proxy_protocol` (a missing, malformed
//!   or untrusted header) or `local_resources` (an accept, or the
//!   client's upstream connect, failed for lack of file descriptors, buffers
//!   or memory: attache's limit, not the upstream's failure)
//! - `connections_closed_total{listener,result}`: result is `ok`,
//!   `idle_timeout`, `error` or `upstream_unavailable`
//! - `transferred_bytes_total{listener,direction}`: `to_upstream` / `to_client`
//! - `upstream_connect_attempts_total{upstream,endpoint}`
//! - `upstream_connect_failures_total{upstream,endpoint,reason}`: reason is
//!   `timeout`, `refused`, `resolve`, `tls`, `local_resources` (never held
//!   against the endpoint) or `error`
//! - `upstream_connect_duration_seconds{upstream,endpoint}`: successful connects
//! - `tls_handshakes_total{listener,result}`: TLS terminated on a listener
//! - `upstream_tls_handshakes_total{upstream,endpoint,result}`: TLS originated
//!   to an endpoint; result is `ok`, `no_client_cert`, `unknown_ca`,
//!   `expired`, `not_yet_valid`, `identity_refused`, `protocol_version`,
//!   `no_common_parameters`, `protocol_error`, `bad_record`,
//!   `bad_certificate`, `eof`, `peer_alert`, `timeout` or `error`
//! - `upstream_tls_resumptions_total{upstream,endpoint}`: originated
//!   handshakes that resumed a session (no certificate exchange)
//! - `tls_reloads_total{result}`: certificate reloads, `ok`, `error`
//!   (rejected; the previous material stays) or `unchanged` (asked for, but
//!   the files' content had not changed: nothing rebuilt)
//! - `config_reloads_total{result}`: config reloads, `ok`, `error` (refused;
//!   the running config stays) or `unchanged` (the file's bytes had not changed)
//! - `config_info{hash}`: always 1; `hash` is the SHA-256 of the active config
//! - `config_generation`: the active config's generation (1 at start, +1 per reload)
//! - `config_last_reload_success_timestamp_seconds`: when the active config
//!   was applied (at start, then at each reload that applied)
//! - `tls_certificate_expiry_timestamp_seconds{kind,name}`: `notAfter` of the
//!   certificate a listener or upstream presents
//! - `upstream_connections_active{upstream}`, `upstream_pending_clients{upstream}`:
//!   connection slots held, and clients queued for one (read at scrape)
//! - `upstream_queue_wait_seconds{upstream}`: time clients waited for a slot
//! - `upstream_refused_total{upstream,reason}`: clients given no connection
//!   before any attempt: `overflow` (queue full), `queue_timeout`, or
//!   `no_endpoint` (every endpoint ejected or unhealthy)
//! - `upstream_retries_total{upstream}`, `upstream_retry_budget_exhausted_total{upstream}`:
//!   connect retries and, for HTTP, request retries
//! - `upstream_retry_overflow_total{upstream}`: HTTP retries not made because
//!   `limits.max_retries` were already in flight
//! - `http_requests_total{listener,route,upstream,status_class}`: requests
//!   answered, by status class (`1xx`..`5xx`); `upstream` is empty for direct
//!   responses and unrouted requests
//! - `http_request_duration_seconds{listener,route,upstream}`: from the
//!   request's headers to the end of the response body
//! - `http_responses_truncated_total{listener,route,upstream}`: responses
//!   whose body the upstream cut short (counted in `http_requests_total`
//!   by their status too)
//! - `upstream_breaker_state{upstream,endpoint,state}`: 1 for the current state
//!   (`closed`, `open`, `half_open`), read at scrape
//! - `upstream_breaker_transitions_total{upstream,endpoint,state}`: entries into a state
//! - `upstream_endpoint_health{upstream,endpoint,state}`: 1 for `healthy`,
//!   `unhealthy` or `unknown`, read at scrape
//! - `upstream_health_checks_total{upstream,endpoint,result}`: `pass` / `fail`
//! - `upstream_pool_idle_connections{upstream,endpoint}`: warm connections ready
//! - `upstream_pool_connections_created_total{upstream,endpoint}`
//! - `upstream_pool_connections_discarded_total{upstream,endpoint,reason}`:
//!   `expired` (max_age) or `invalid` (closed, stale TLS, data) at checkout
//! - `upstream_warm_connections_used_total{upstream,endpoint}`: clients served
//!   from the warm pool
//! - `redis_commands_total{listener,command,result}`: commands answered;
//!   `command` is one the Redis room's command table counts by name
//!   (lowercase) or `other`; `result`
//!   is `ok`, `error` (Redis' error reply) or `failed` (attache's: timeout,
//!   connection failure, refusal)
//! - `redis_command_duration_seconds{listener}`: from a shared command's
//!   arrival to its reply
//! - `redis_upstream_connections{listener,kind}`: `shared` connections open
//!   and `pinned` ones lent to a client now
//! - `redis_cache_requests_total{listener,result}`: cacheable reads, `hit`,
//!   `miss` or `bypass` (tracking lost, a write to the key in flight)
//! - `redis_cache_invalidations_total{listener,reason}`: keys dropped on
//!   `server` messages, `flush` (all keys) and `write`s through attache
//! - `redis_cache_evictions_total{listener}`, `redis_cache_bytes{listener}`,
//!   `redis_cache_entries{listener}`
//! - `redis_cache_enabled{listener}`: 1 while Redis tracks keys for the cache
//! - `redis_cache_disabled_total{listener,reason}`: tracking lost (`connect`,
//!   `closed`, `timeout`, `failover`): the cache was cleared and bypassed
//! - `postgres_queries_total{listener,command}`: statements by command tag;
//!   `postgres_query_duration_seconds{listener}`;
//!   `postgres_transactions_total{listener}`,
//!   `postgres_transaction_duration_seconds{listener}`;
//!   `postgres_errors_total{listener,sqlstate_class}`;
//!   `postgres_pinned_total{listener,reason}`;
//!   `postgres_cancels_total{listener,reason}` (`client`, `timeout`)
//! - `postgres_pool_server_connections{listener,pool,state}` (`active`,
//!   `idle`), `postgres_pool_clients_waiting{listener,pool}`,
//!   `postgres_pool_wait_duration_seconds{listener}`,
//!   `postgres_pool_timeouts_total{listener}`,
//!   `postgres_server_failures_total{listener}`
//! - `mysql_queries_total{listener,command}`: commands by kind;
//!   `mysql_query_duration_seconds{listener}`;
//!   `mysql_transactions_total{listener}`,
//!   `mysql_transaction_duration_seconds{listener}`;
//!   `mysql_errors_total{listener,code}`; `mysql_pinned_total{listener,reason}`;
//!   `mysql_query_timeouts_total{listener}`; the same pool families as
//!   Postgres under `mysql_`
//! - `log_lines_dropped_total{stream}`: log and access-log lines dropped
//!   because the reader of `stdout` or `stderr` was not keeping up
//! - `build_info{version}`: always 1
//!
//! Unprefixed, as every exporter names them: `process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`, `process_threads`.

mod connections;
mod database;
mod http;
mod mysql;
mod postgres;
mod process;
mod redis;
mod redis_cache;
mod reloads;
mod upstream;

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub(crate) use connections::{CloseResult, ListenerMetrics};
pub(crate) use database::PoolGauges;
pub(crate) use http::RouteMetrics;
pub(crate) use mysql::{MysqlMetrics, MysqlPin};
pub(crate) use postgres::{CancelReason, PinReason, PostgresMetrics};
pub(crate) use redis::{RedisMetrics, RedisResult};
pub(crate) use redis_cache::{CacheDisabled, CacheInvalidation, CacheMetrics};
pub(crate) use reloads::ReloadMetrics;
pub(crate) use upstream::{ConnectFailure, EndpointMetrics, UpstreamMetrics, UpstreamRefusal};

use super::output::Stream;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointLabels {
    pub(crate) upstream: String,
    pub(crate) endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UpstreamLabels {
    pub(crate) upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointStateLabels {
    pub(crate) upstream: String,
    pub(crate) endpoint: String,
    pub(crate) state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointReasonLabels {
    pub(crate) upstream: String,
    pub(crate) endpoint: String,
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Every metric family, by domain, and the registry that exports them.
pub(crate) struct Metrics {
    registry: Registry,
    /// Gauges another room reads at each scrape (the upstream states).
    scraped: LateCollector,
    connections: connections::Families,
    upstream: upstream::Families,
    http: http::Families,
    redis: redis::Families,
    redis_cache: redis_cache::Families,
    postgres: postgres::Families,
    mysql: mysql::Families,
    reloads: reloads::Families,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        // The process metrics keep the names every exporter gives them;
        // attache's own all start with `attache_`.
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("attache");
        let metrics = Self {
            registry: Registry::default(),
            scraped: LateCollector::default(),
            connections: connections::Families::default(),
            upstream: upstream::Families::new(),
            http: http::Families::new(),
            redis: redis::Families::new(),
            redis_cache: redis_cache::Families::new(),
            postgres: postgres::Families::new(),
            mysql: mysql::Families::new(),
            reloads: reloads::Families::default(),
        };
        metrics.connections.register(registry);
        metrics.upstream.register(registry);
        metrics.http.register(registry);
        metrics.redis.register(registry);
        metrics.redis_cache.register(registry);
        metrics.postgres.register(registry);
        metrics.mysql.register(registry);
        metrics.reloads.register(registry);
        registry.register_collector(Box::new(DroppedLogLines));
        registry.register_collector(Box::new(metrics.scraped.clone()));
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "attache's version; always 1", build_info);
        Self {
            registry: root,
            ..metrics
        }
    }

    /// The registry in the OpenMetrics text format, for `/metrics`.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// The registry in Prometheus' text format 0.0.4, for scrapers that do
    /// not ask for OpenMetrics.
    pub(crate) fn encode_prometheus_text(&self) -> String {
        to_prometheus_text(&self.encode())
    }

    /// Installs `collector`, whose gauges are read at each scrape (the
    /// upstream room's state gauges); later calls are ignored.
    pub(crate) fn collect_at_scrape(&self, collector: Box<dyn Collector>) {
        let _ = self.scraped.0.set(collector);
    }

    /// Handles for one listener's metrics.
    pub(crate) fn listener(&self, listener: &str) -> ListenerMetrics {
        self.connections.listener(listener)
    }

    /// Handles for one upstream's metrics.
    pub(crate) fn upstream(&self, upstream: &str) -> UpstreamMetrics {
        self.upstream.upstream(upstream)
    }

    /// Handles for one upstream endpoint's metrics.
    pub(crate) fn endpoint(&self, upstream: &str, endpoint: &str) -> EndpointMetrics {
        self.upstream.endpoint(upstream, endpoint)
    }

    /// Handles for one HTTP route's metrics; `upstream` is empty for direct responses.
    pub(crate) fn route(&self, listener: &str, route: &str, upstream: &str) -> RouteMetrics {
        self.http.route(listener, route, upstream)
    }

    /// Handles for one Redis listener's metrics (the same ones on every
    /// call); `counted`: the commands counted under their own name.
    pub(crate) fn redis(&self, listener: &str, counted: &'static [&'static str]) -> RedisMetrics {
        self.redis.redis(listener, counted)
    }

    /// Handles for a Redis listener's cache.
    pub(crate) fn redis_cache(&self, listener: &str) -> CacheMetrics {
        self.redis_cache.cache(listener)
    }

    /// Handles for a Postgres listener's queries and pools.
    pub(crate) fn postgres(&self, listener: &str) -> PostgresMetrics {
        self.postgres.postgres(listener)
    }

    /// Handles for a MySQL listener's commands and pools.
    pub(crate) fn mysql(&self, listener: &str) -> MysqlMetrics {
        self.mysql.mysql(listener)
    }

    /// Certificate reload result counters.
    pub(crate) fn reloads(&self) -> ReloadMetrics {
        self.reloads.reloads()
    }

    /// Config reload result counters.
    pub(crate) fn config_reloads(&self) -> ReloadMetrics {
        self.reloads.config_reloads()
    }

    /// Records that the config with SHA-256 `hash` is active as `generation`.
    pub(crate) fn config_applied(&self, generation: u64, hash: &str) {
        self.reloads.config_applied(generation, hash);
    }

    /// The expiry gauge of the certificate `kind` (`listener` / `upstream`) `name` presents.
    pub(crate) fn certificate_expiry(&self, kind: &'static str, name: &str) -> Gauge {
        self.reloads.certificate_expiry(kind, name)
    }
}

/// How a TLS handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeResult {
    Ok,
    /// The client sent no certificate where one is required.
    NoClientCert,
    /// The peer's certificate does not chain to the configured CA (unknown
    /// issuer, or a signature the CA did not make).
    UnknownCa,
    Expired,
    NotYetValid,
    /// The certificate verified but its identity is not on the allow-list.
    IdentityRefused,
    /// No TLS version in common (for example, a TLS 1.0 or 1.1 client).
    ProtocolVersion,
    /// A TLS version in common, but no cipher suite, signature scheme or key
    /// exchange group.
    NoCommonParameters,
    /// Not TLS, or malformed (for example, plaintext sent to a TLS port).
    ProtocolError,
    /// A record that failed decryption (bad MAC) or exceeded the size limit.
    BadRecord,
    /// A certificate that is no valid end-entity certificate (a CA
    /// certificate presented as a server's, bad encoding, a wrong key usage).
    BadCertificate,
    /// The peer closed the connection before the handshake finished.
    Eof,
    /// The peer refused us with an alert (for example, our certificate).
    PeerAlert,
    Timeout,
    Error,
}

impl HandshakeResult {
    const ALL: [Self; 15] = [
        Self::Ok,
        Self::NoClientCert,
        Self::UnknownCa,
        Self::Expired,
        Self::NotYetValid,
        Self::IdentityRefused,
        Self::ProtocolVersion,
        Self::NoCommonParameters,
        Self::ProtocolError,
        Self::BadRecord,
        Self::BadCertificate,
        Self::Eof,
        Self::PeerAlert,
        Self::Timeout,
        Self::Error,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NoClientCert => "no_client_cert",
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IdentityRefused => "identity_refused",
            Self::ProtocolVersion => "protocol_version",
            Self::NoCommonParameters => "no_common_parameters",
            Self::ProtocolError => "protocol_error",
            Self::BadRecord => "bad_record",
            Self::BadCertificate => "bad_certificate",
            Self::Eof => "eof",
            Self::PeerAlert => "peer_alert",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }

    /// Whether the peer's certificate was refused: presenting it again
    /// cannot succeed.
    pub(crate) fn is_certificate_refusal(self) -> bool {
        matches!(
            self,
            Self::UnknownCa
                | Self::Expired
                | Self::NotYetValid
                | Self::IdentityRefused
                | Self::BadCertificate
        )
    }
}

/// A collector installed after start-up by the room that owns its data.
#[derive(Debug, Default, Clone)]
struct LateCollector(Arc<OnceLock<Box<dyn Collector>>>);

impl Collector for LateCollector {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        match self.0.get() {
            Some(collector) => collector.encode(encoder),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    stream: &'static str,
}

/// Lines the output queues dropped, read at each scrape.
#[derive(Debug)]
struct DroppedLogLines;

impl Collector for DroppedLogLines {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "log_lines_dropped",
            "Log and access-log lines dropped because the stream's reader was not keeping up",
            None,
            MetricType::Counter,
        )?;
        for stream in Stream::ALL {
            ConstCounter::new(stream.dropped()).encode(family.encode_family(&StreamLabels {
                stream: stream.label(),
            })?)?;
        }
        Ok(())
    }
}

/// OpenMetrics text as Prometheus text format 0.0.4: a counter's family is
/// named as its samples are (`_total`), and what 0.0.4 does not have goes:
/// `# UNIT` lines, `# EOF`, exemplars.
fn to_prometheus_text(openmetrics: &str) -> String {
    let mut text = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            // Held until the TYPE line says whether the name changes.
            if let Some(pending) = help.replace(rest) {
                text.push_str("# HELP ");
                text.push_str(pending);
                text.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "unknown" => (name.to_owned(), "untyped"),
                _ => (name.to_owned(), kind),
            };
            if let Some(pending) = help.take() {
                let description = pending.split_once(' ').map_or("", |(_, text)| text);
                text.push_str(&format!("# HELP {name} {description}\n"));
            }
            text.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        let sample = line
            .split_once(" # ")
            .map_or(line, |(sample, _exemplar)| sample);
        text.push_str(sample);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_by_their_samples_and_drops_what_it_lacks() {
        let openmetrics = "# HELP attache_connections Connections.\n# TYPE attache_connections counter\nattache_connections_total{listener=\"a\"} 3\n\
                           # HELP attache_wait Waits.\n# TYPE attache_wait histogram\n# UNIT attache_wait seconds\nattache_wait_sum 1.0 # {trace_id=\"ab\"} 0.5\n# EOF\n";
        assert_eq!(
            to_prometheus_text(openmetrics),
            "# HELP attache_connections_total Connections.\n# TYPE attache_connections_total counter\nattache_connections_total{listener=\"a\"} 3\n\
             # HELP attache_wait Waits.\n# TYPE attache_wait histogram\nattache_wait_sum 1.0\n"
        );
    }

    #[test]
    fn process_metrics_are_exported_unprefixed() {
        let text = Metrics::new().encode();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
            "process_threads",
        ] {
            assert!(
                text.lines()
                    .any(|line| line.starts_with(name) && !line.starts_with('#')),
                "{name} missing"
            );
        }
        assert!(text.contains("attache_build_info{"));
    }
}
