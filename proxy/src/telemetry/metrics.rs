//! Every metric attache exports, registered once at start-up. Protocol code
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
//! - `log_lines_dropped_total{stream}`: log and access-log lines dropped
//!   because the reader of `stdout` or `stderr` was not keeping up
//! - `build_info{version}`: always 1

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::log_limit::LogLimit;
use super::output::Stream;
use crate::resilience::breaker::State as BreakerState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    listener: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    listener: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    listener: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointLabels {
    pub(crate) upstream: String,
    pub(crate) endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    upstream: String,
    endpoint: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UpstreamLabels {
    pub(crate) upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamReasonLabels {
    upstream: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointStateLabels {
    pub(crate) upstream: String,
    pub(crate) endpoint: String,
    pub(crate) state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointResultLabels {
    upstream: String,
    endpoint: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointReasonLabels {
    pub(crate) upstream: String,
    pub(crate) endpoint: String,
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    listener: String,
    route: String,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatusLabels {
    listener: String,
    route: String,
    upstream: String,
    status_class: &'static str,
}

fn request_duration_histogram() -> Histogram {
    // 250 µs .. ~65 s: proxied loopback requests land in the first buckets,
    // request timeouts in the last ones.
    Histogram::new(exponential_buckets(0.00025, 2.0, 19))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedisCommandLabels {
    listener: String,
    command: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedisConnectionLabels {
    listener: String,
    kind: &'static str,
}

const REDIS_RESULTS: [&str; 3] = ["ok", "error", "failed"];

fn redis_duration_histogram() -> Histogram {
    // 50 µs .. ~3.3 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 17))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

fn connect_duration_histogram() -> Histogram {
    // 100 µs .. ~6.5 s: loopback connects land in the first buckets, a
    // connect timeout in the last ones.
    Histogram::new(exponential_buckets(0.0001, 3.0, 11))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    listener: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamHandshakeLabels {
    upstream: String,
    endpoint: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConfigLabels {
    hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    kind: &'static str,
    name: String,
}

fn queue_wait_histogram() -> Histogram {
    // 1 ms .. ~16 s; slots taken at once land in the first bucket.
    Histogram::new(exponential_buckets(0.001, 4.0, 8))
}

/// The metric registry and its families.
pub(crate) struct Metrics {
    /// Gauges another room reads at each scrape (the upstream states).
    scraped: LateCollector,
    queue_wait: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    upstream_refused: Family<UpstreamReasonLabels, Counter>,
    retries: Family<UpstreamLabels, Counter>,
    budget_exhausted: Family<UpstreamLabels, Counter>,
    retry_overflow: Family<UpstreamLabels, Counter>,
    http_requests: Family<RouteStatusLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    http_truncated: Family<RouteLabels, Counter>,
    redis_commands: Family<RedisCommandLabels, Counter>,
    redis_duration: Family<ListenerLabels, Histogram, fn() -> Histogram>,
    redis_connections: Family<RedisConnectionLabels, Gauge>,
    redis_ratio: Family<ListenerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// One set of handles per Redis listener, shared by everything serving it.
    redis_listeners: std::sync::Mutex<std::collections::HashMap<String, RedisMetrics>>,
    breaker_transitions: Family<EndpointStateLabels, Counter>,
    health_checks: Family<EndpointResultLabels, Counter>,
    warm_used: Family<EndpointLabels, Counter>,
    resumptions: Family<EndpointLabels, Counter>,
    tls_reloads: Family<ReloadLabels, Counter>,
    config_reloads: Family<ReloadLabels, Counter>,
    config_info: Family<ConfigLabels, Gauge>,
    config_generation: Gauge,
    config_applied_at: Gauge,
    certificate_expiry: Family<CertificateLabels, Gauge>,
    tls_handshakes: Family<HandshakeLabels, Counter>,
    upstream_tls_handshakes: Family<UpstreamHandshakeLabels, Counter>,
    registry: Registry,
    connections: Family<ListenerLabels, Counter>,
    connections_active: Family<ListenerLabels, Gauge>,
    connections_refused: Family<RefusedLabels, Counter>,
    connections_closed: Family<ClosedLabels, Counter>,
    transferred_bytes: Family<BytesLabels, Counter>,
    connect_attempts: Family<EndpointLabels, Counter>,
    connect_failures: Family<FailureLabels, Counter>,
    connect_duration: Family<EndpointLabels, Histogram, fn() -> Histogram>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("attache");
        let metrics = Self {
            scraped: LateCollector::default(),
            queue_wait: Family::new_with_constructor(queue_wait_histogram),
            upstream_refused: Family::default(),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            retry_overflow: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(request_duration_histogram),
            http_truncated: Family::default(),
            redis_commands: Family::default(),
            redis_duration: Family::new_with_constructor(redis_duration_histogram),
            redis_connections: Family::default(),
            redis_ratio: Family::default(),
            redis_listeners: std::sync::Mutex::default(),
            breaker_transitions: Family::default(),
            health_checks: Family::default(),
            warm_used: Family::default(),
            resumptions: Family::default(),
            connections: Family::default(),
            connections_active: Family::default(),
            connections_refused: Family::default(),
            connections_closed: Family::default(),
            transferred_bytes: Family::default(),
            connect_attempts: Family::default(),
            connect_failures: Family::default(),
            connect_duration: Family::new_with_constructor(connect_duration_histogram),
            tls_handshakes: Family::default(),
            upstream_tls_handshakes: Family::default(),
            tls_reloads: Family::default(),
            config_reloads: Family::default(),
            config_info: Family::default(),
            config_generation: Gauge::default(),
            config_applied_at: Gauge::default(),
            certificate_expiry: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "tls_reloads",
            "Certificate reloads by result (error: rejected, previous material kept)",
            metrics.tls_reloads.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads by result (error: refused, the running config stays)",
            metrics.config_reloads.clone(),
        );
        registry.register(
            "config_info",
            "The active config; hash is its SHA-256; always 1",
            metrics.config_info.clone(),
        );
        registry.register(
            "config_generation",
            "The active config's generation: 1 at start, one more per applied reload",
            metrics.config_generation.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the active config was applied, Unix seconds",
            metrics.config_applied_at.clone(),
        );
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "notAfter of the certificate a listener or upstream presents, Unix seconds",
            metrics.certificate_expiry.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes on listeners, by result",
            metrics.tls_handshakes.clone(),
        );
        registry.register(
            "upstream_tls_handshakes",
            "TLS handshakes to upstream endpoints, by result",
            metrics.upstream_tls_handshakes.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted and handed to a protocol handler",
            metrics.connections.clone(),
        );
        registry.register(
            "connections_active",
            "Client connections being proxied now",
            metrics.connections_active.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections closed at accept (max_connections reached, or draining)",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "connections_closed",
            "Client connections ended, by result",
            metrics.connections_closed.clone(),
        );
        registry.register_with_unit(
            "transferred",
            "Bytes relayed, by direction",
            Unit::Bytes,
            metrics.transferred_bytes.clone(),
        );
        registry.register(
            "upstream_connect_attempts",
            "TCP connect attempts to an upstream endpoint",
            metrics.connect_attempts.clone(),
        );
        registry.register(
            "upstream_connect_failures",
            "Failed TCP connect attempts to an upstream endpoint, by reason",
            metrics.connect_failures.clone(),
        );
        registry.register_with_unit(
            "upstream_connect_duration",
            "Time to establish a TCP connection to an upstream endpoint (successful attempts)",
            Unit::Seconds,
            metrics.connect_duration.clone(),
        );
        registry.register_with_unit(
            "upstream_queue_wait",
            "Time clients waited for an upstream connection slot",
            Unit::Seconds,
            metrics.queue_wait.clone(),
        );
        registry.register(
            "upstream_refused",
            "Clients given no upstream connection before any attempt, by reason",
            metrics.upstream_refused.clone(),
        );
        registry.register(
            "upstream_retries",
            "Retries: connect attempts after a client's first, and HTTP tries after a request's first",
            metrics.retries.clone(),
        );
        registry.register(
            "upstream_retry_overflow",
            "HTTP retries not made because limits.max_retries were already in flight",
            metrics.retry_overflow.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, upstream and status class",
            metrics.http_requests.clone(),
        );
        registry.register(
            "http_responses_truncated",
            "HTTP responses whose body the upstream cut short",
            metrics.http_truncated.clone(),
        );
        registry.register(
            "redis_commands",
            "Redis commands answered, by command (a closed set, else other) and result",
            metrics.redis_commands.clone(),
        );
        registry.register_with_unit(
            "redis_command_duration",
            "Time from a shared Redis command's arrival to its reply",
            Unit::Seconds,
            metrics.redis_duration.clone(),
        );
        registry.register(
            "redis_multiplexing_ratio",
            "Redis client connections per shared upstream connection",
            metrics.redis_ratio.clone(),
        );
        registry.register(
            "redis_upstream_connections",
            "Redis upstream connections: shared ones open, pinned ones lent now",
            metrics.redis_connections.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "HTTP request duration, from the request headers to the end of the response body",
            Unit::Seconds,
            metrics.http_duration.clone(),
        );
        registry.register(
            "upstream_retry_budget_exhausted",
            "Retries not made because the upstream's retry budget was spent",
            metrics.budget_exhausted.clone(),
        );
        registry.register(
            "upstream_breaker_transitions",
            "Circuit breaker state changes, by the state entered",
            metrics.breaker_transitions.clone(),
        );
        registry.register(
            "upstream_health_checks",
            "Active health check results",
            metrics.health_checks.clone(),
        );
        registry.register(
            "upstream_tls_resumptions",
            "TLS handshakes to upstream endpoints that resumed a session",
            metrics.resumptions.clone(),
        );
        registry.register(
            "upstream_warm_connections_used",
            "Client connections served from the warm pool",
            metrics.warm_used.clone(),
        );
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
            registry,
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

    /// Handles for reload results.
    pub(crate) fn reloads(&self) -> ReloadMetrics {
        let counter = |result| {
            self.tls_reloads
                .get_or_create(&ReloadLabels { result })
                .clone()
        };
        ReloadMetrics {
            ok: counter("ok"),
            error: counter("error"),
            unchanged: counter("unchanged"),
        }
    }

    /// Config reload result counters.
    pub(crate) fn config_reloads(&self) -> ReloadMetrics {
        let counter = |result| {
            self.config_reloads
                .get_or_create(&ReloadLabels { result })
                .clone()
        };
        ReloadMetrics {
            ok: counter("ok"),
            error: counter("error"),
            unchanged: counter("unchanged"),
        }
    }

    /// Records that the config with SHA-256 `hash` is active as `generation`.
    pub(crate) fn config_applied(&self, generation: u64, hash: &str) {
        self.config_info.clear();
        self.config_info
            .get_or_create(&ConfigLabels {
                hash: hash.to_owned(),
            })
            .set(1);
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        self.config_applied_at
            .set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    /// The expiry gauge of the certificate `kind` (`listener` / `upstream`) `name` presents.
    pub(crate) fn certificate_expiry(&self, kind: &'static str, name: &str) -> Gauge {
        self.certificate_expiry
            .get_or_create(&CertificateLabels {
                kind,
                name: name.to_owned(),
            })
            .clone()
    }

    /// Handles for one listener's metrics.
    pub(crate) fn listener(&self, listener: &str) -> ListenerMetrics {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        let refused = |reason| {
            self.connections_refused
                .get_or_create(&RefusedLabels {
                    listener: listener.to_owned(),
                    reason,
                })
                .clone()
        };
        let bytes = |direction| {
            self.transferred_bytes
                .get_or_create(&BytesLabels {
                    listener: listener.to_owned(),
                    direction,
                })
                .clone()
        };
        ListenerMetrics {
            opened: self.connections.get_or_create(&labels).clone(),
            active: self.connections_active.get_or_create(&labels).clone(),
            refused_max_connections: refused("max_connections"),
            refused_draining: refused("draining"),
            refused_local_resources: refused("local_resources"),
            refused_proxy_protocol: refused("proxy_protocol"),
            log_limit: Arc::default(),
            closed: CloseResult::ALL.map(|result| {
                self.connections_closed
                    .get_or_create(&ClosedLabels {
                        listener: listener.to_owned(),
                        result: result.label(),
                    })
                    .clone()
            }),
            to_upstream_bytes: bytes("to_upstream"),
            to_client_bytes: bytes("to_client"),
            handshakes: HandshakeResult::ALL.map(|result| {
                self.tls_handshakes
                    .get_or_create(&HandshakeLabels {
                        listener: listener.to_owned(),
                        result: result.label(),
                    })
                    .clone()
            }),
        }
    }

    /// Installs `collector`, whose gauges are read at each scrape (the
    /// upstream room's state gauges); later calls are ignored.
    pub(crate) fn collect_at_scrape(&self, collector: Box<dyn Collector>) {
        let _ = self.scraped.0.set(collector);
    }

    /// Handles for one upstream's metrics.
    pub(crate) fn upstream(&self, upstream: &str) -> UpstreamMetrics {
        let labels = UpstreamLabels {
            upstream: upstream.to_owned(),
        };
        UpstreamMetrics {
            queue_wait: self.queue_wait.get_or_create(&labels).clone(),
            refused: UpstreamRefusal::ALL.map(|reason| {
                self.upstream_refused
                    .get_or_create(&UpstreamReasonLabels {
                        upstream: upstream.to_owned(),
                        reason: reason.label(),
                    })
                    .clone()
            }),
            retries: self.retries.get_or_create(&labels).clone(),
            budget_exhausted: self.budget_exhausted.get_or_create(&labels).clone(),
            retry_overflow: self.retry_overflow.get_or_create(&labels).clone(),
        }
    }

    /// Handles for one Redis listener's metrics (the same ones on every call).
    /// `counted`: the commands counted under their own name (sorted,
    /// uppercase); the rest count as `other`, so the label set stays closed.
    pub(crate) fn redis(&self, listener: &str, counted: &'static [&'static str]) -> RedisMetrics {
        let mut listeners = self
            .redis_listeners
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        listeners
            .entry(listener.to_owned())
            .or_insert_with(|| self.new_redis(listener, counted))
            .clone()
    }

    fn new_redis(&self, listener: &str, counted: &'static [&'static str]) -> RedisMetrics {
        let commands = (0..=counted.len())
            .map(|index| {
                let command = counted
                    .get(index)
                    .map_or_else(|| "other".to_owned(), |name| name.to_ascii_lowercase());
                REDIS_RESULTS.map(|result| {
                    self.redis_commands
                        .get_or_create(&RedisCommandLabels {
                            listener: listener.to_owned(),
                            command: command.clone(),
                            result,
                        })
                        .clone()
                })
            })
            .collect();
        let connections = |kind| {
            self.redis_connections
                .get_or_create(&RedisConnectionLabels {
                    listener: listener.to_owned(),
                    kind,
                })
                .clone()
        };
        RedisMetrics {
            counted,
            commands: Arc::new(commands),
            duration: self
                .redis_duration
                .get_or_create(&ListenerLabels {
                    listener: listener.to_owned(),
                })
                .clone(),
            shared_connections: connections("shared"),
            pinned_connections: connections("pinned"),
            clients: Gauge::default(),
            ratio: self
                .redis_ratio
                .get_or_create(&ListenerLabels {
                    listener: listener.to_owned(),
                })
                .clone(),
        }
    }

    /// Handles for one HTTP route's metrics; `upstream` is empty for direct responses.
    pub(crate) fn route(&self, listener: &str, route: &str, upstream: &str) -> RouteMetrics {
        let status = |status_class| {
            self.http_requests
                .get_or_create(&RouteStatusLabels {
                    listener: listener.to_owned(),
                    route: route.to_owned(),
                    upstream: upstream.to_owned(),
                    status_class,
                })
                .clone()
        };
        let labels = RouteLabels {
            listener: listener.to_owned(),
            route: route.to_owned(),
            upstream: upstream.to_owned(),
        };
        RouteMetrics {
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(status),
            duration: self.http_duration.get_or_create(&labels).clone(),
            truncated: self.http_truncated.get_or_create(&labels).clone(),
        }
    }

    /// Handles for one upstream endpoint's metrics.
    pub(crate) fn endpoint(&self, upstream: &str, endpoint: &str) -> EndpointMetrics {
        let labels = EndpointLabels {
            upstream: upstream.to_owned(),
            endpoint: endpoint.to_owned(),
        };
        EndpointMetrics {
            warm_used: self.warm_used.get_or_create(&labels).clone(),
            resumptions: self.resumptions.get_or_create(&labels).clone(),
            breaker_transitions: BreakerState::ALL.map(|state| {
                self.breaker_transitions
                    .get_or_create(&EndpointStateLabels {
                        upstream: upstream.to_owned(),
                        endpoint: endpoint.to_owned(),
                        state: state.label(),
                    })
                    .clone()
            }),
            health_checks: [true, false].map(|passed| {
                self.health_checks
                    .get_or_create(&EndpointResultLabels {
                        upstream: upstream.to_owned(),
                        endpoint: endpoint.to_owned(),
                        result: if passed { "pass" } else { "fail" },
                    })
                    .clone()
            }),
            attempts: self.connect_attempts.get_or_create(&labels).clone(),
            failures: ConnectFailure::ALL.map(|reason| {
                self.connect_failures
                    .get_or_create(&FailureLabels {
                        upstream: upstream.to_owned(),
                        endpoint: endpoint.to_owned(),
                        reason: reason.label(),
                    })
                    .clone()
            }),
            duration: self.connect_duration.get_or_create(&labels).clone(),
            handshakes: HandshakeResult::ALL.map(|result| {
                self.upstream_tls_handshakes
                    .get_or_create(&UpstreamHandshakeLabels {
                        upstream: upstream.to_owned(),
                        endpoint: endpoint.to_owned(),
                        result: result.label(),
                    })
                    .clone()
            }),
        }
    }
}

/// How a proxied client connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseResult {
    /// Both sides finished normally.
    Ok,
    /// No bytes in either direction for the listener's idle timeout.
    IdleTimeout,
    /// A read or write failed (reset, broken pipe...).
    Error,
    /// No upstream endpoint could be connected.
    UpstreamUnavailable,
    /// The client's TLS handshake failed or was refused.
    TlsHandshakeFailed,
}

impl CloseResult {
    const ALL: [Self; 5] = [
        Self::Ok,
        Self::IdleTimeout,
        Self::Error,
        Self::UpstreamUnavailable,
        Self::TlsHandshakeFailed,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::IdleTimeout => "idle_timeout",
            Self::Error => "error",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::TlsHandshakeFailed => "tls_handshake_failed",
        }
    }
}

/// Why one connect attempt to an endpoint failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectFailure {
    /// No connection within the upstream's connect timeout.
    Timeout,
    /// The endpoint answered with a reset (nothing listens there).
    Refused,
    /// The hostname did not resolve.
    Resolve,
    /// The TLS handshake failed (counted by class in `upstream_tls_handshakes_total`).
    Tls,
    /// attache ran out of file descriptors, buffers or memory: not the
    /// endpoint's failure.
    LocalResources,
    /// Any other error (unreachable network, ...).
    Error,
}

impl ConnectFailure {
    const ALL: [Self; 6] = [
        Self::Timeout,
        Self::Refused,
        Self::Resolve,
        Self::Tls,
        Self::LocalResources,
        Self::Error,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Resolve => "resolve",
            Self::Tls => "tls",
            Self::LocalResources => "local_resources",
            Self::Error => "error",
        }
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

/// Reload result counters (certificates, the config).
pub(crate) struct ReloadMetrics {
    pub(crate) ok: Counter,
    pub(crate) error: Counter,
    /// A reload asked for (SIGHUP, a file event) found the content unchanged.
    pub(crate) unchanged: Counter,
}

/// One listener's metric handles.
#[derive(Clone)]
pub(crate) struct ListenerMetrics {
    pub(crate) opened: Counter,
    pub(crate) active: Gauge,
    pub(crate) refused_max_connections: Counter,
    pub(crate) refused_draining: Counter,
    /// Accepts that failed, and clients closed before an upstream try, for
    /// lack of local resources (file descriptors, buffers, memory).
    pub(crate) refused_local_resources: Counter,
    /// Connections closed for a missing, malformed or untrusted PROXY
    /// protocol header.
    pub(crate) refused_proxy_protocol: Counter,
    closed: [Counter; 5],
    pub(crate) to_upstream_bytes: Counter,
    pub(crate) to_client_bytes: Counter,
    handshakes: [Counter; HandshakeResult::ALL.len()],
    /// Rate limits for this listener's per-connection failure lines.
    pub(crate) log_limit: Arc<LogLimit>,
}

impl ListenerMetrics {
    pub(crate) fn closed(&self, result: CloseResult) {
        self.closed[result as usize].inc();
    }

    pub(crate) fn handshake(&self, result: HandshakeResult) {
        self.handshakes[result as usize].inc();
    }
}

/// Why a client got no upstream connection before any connect attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamRefusal {
    /// Every slot taken and the queue full.
    Overflow,
    /// Queued past the queue timeout.
    QueueTimeout,
    /// Every endpoint ejected or unhealthy.
    NoEndpoint,
}

impl UpstreamRefusal {
    const ALL: [Self; 3] = [Self::Overflow, Self::QueueTimeout, Self::NoEndpoint];

    fn label(self) -> &'static str {
        match self {
            Self::Overflow => "overflow",
            Self::QueueTimeout => "queue_timeout",
            Self::NoEndpoint => "no_endpoint",
        }
    }
}

/// One upstream's metric handles.
pub(crate) struct UpstreamMetrics {
    pub(crate) queue_wait: Histogram,
    refused: [Counter; 3],
    pub(crate) retries: Counter,
    pub(crate) budget_exhausted: Counter,
    pub(crate) retry_overflow: Counter,
}

/// How a Redis command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedisResult {
    Ok = 0,
    /// Redis answered with an error.
    Error = 1,
    /// attache answered for it: timeout, connection failure, refusal.
    Failed = 2,
}

/// One Redis listener's handles.
#[derive(Clone)]
pub(crate) struct RedisMetrics {
    /// The commands counted by name, sorted.
    counted: &'static [&'static str],
    /// Per counted command (same index, then `other`), per result.
    commands: Arc<Vec<[Counter; 3]>>,
    pub(crate) duration: Histogram,
    shared_connections: Gauge,
    pub(crate) pinned_connections: Gauge,
    /// Client connections now (not exported: the listener's
    /// `connections_active` is), for the ratio.
    clients: Gauge,
    ratio: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl RedisMetrics {
    /// A client connected (`1`) or left (`-1`).
    pub(crate) fn client(&self, change: i64) {
        self.clients.inc_by(change);
        self.update_ratio();
    }

    /// A shared upstream connection opened (`1`) or closed (`-1`).
    pub(crate) fn shared_connection(&self, change: i64) {
        self.shared_connections.inc_by(change);
        self.update_ratio();
    }

    fn update_ratio(&self) {
        let shared = self.shared_connections.get();
        let ratio = if shared > 0 {
            self.clients.get() as f64 / shared as f64
        } else {
            0.0
        };
        self.ratio.set(ratio);
    }

    /// Counts one command called `name` (as sent, any case).
    pub(crate) fn command(&self, name: &[u8], result: RedisResult) {
        let mut buffer = [0; 32];
        let upper = attache_resp::command::upper(name, &mut buffer);
        let index = self
            .counted
            .binary_search(&upper)
            .unwrap_or(self.counted.len());
        self.commands[index][result as usize].inc();
    }
}

/// One HTTP route's request counters (by status class) and duration histogram.
#[derive(Clone)]
pub(crate) struct RouteMetrics {
    requests: [Counter; 5],
    duration: Histogram,
    pub(crate) truncated: Counter,
}

impl RouteMetrics {
    /// Counts one answered request.
    pub(crate) fn answered(&self, status: http::StatusCode, took: std::time::Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.requests[class].inc();
        self.duration.observe(took.as_secs_f64());
    }
}

impl UpstreamMetrics {
    pub(crate) fn refused(&self, reason: UpstreamRefusal) {
        self.refused[reason as usize].inc();
    }
}

/// One upstream endpoint's metric handles.
#[derive(Clone)]
pub(crate) struct EndpointMetrics {
    pub(crate) warm_used: Counter,
    pub(crate) resumptions: Counter,
    breaker_transitions: [Counter; 3],
    health_checks: [Counter; 2],
    pub(crate) attempts: Counter,
    failures: [Counter; ConnectFailure::ALL.len()],
    pub(crate) duration: Histogram,
    handshakes: [Counter; HandshakeResult::ALL.len()],
}

impl EndpointMetrics {
    pub(crate) fn breaker_transition(&self, entered: BreakerState) {
        self.breaker_transitions[entered as usize].inc();
    }

    pub(crate) fn health_check(&self, passed: bool) {
        self.health_checks[usize::from(!passed)].inc();
    }

    pub(crate) fn failed(&self, reason: ConnectFailure) {
        self.failures[reason as usize].inc();
    }

    pub(crate) fn handshake(&self, result: HandshakeResult) {
        self.handshakes[result as usize].inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_commands_count_by_name_or_as_other() {
        let metrics = Metrics::new().redis("r", &["GET", "SET"]);
        metrics.command(b"get", RedisResult::Ok);
        metrics.command(b"NOSUCHCOMMAND", RedisResult::Failed);
        assert_eq!(metrics.commands[0][0].get(), 1);
        assert_eq!(metrics.commands[2][2].get(), 1);
    }
}
