//! Upstreams and their endpoints: connects, slots and queueing, retries,
//! breakers, health checks, warm pools, TLS originated.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::{EndpointLabels, EndpointStateLabels, HandshakeResult, UpstreamLabels};
use crate::resilience::breaker::State as BreakerState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    upstream: String,
    endpoint: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamReasonLabels {
    upstream: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointResultLabels {
    upstream: String,
    endpoint: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamHandshakeLabels {
    upstream: String,
    endpoint: String,
    result: &'static str,
}

fn connect_duration_histogram() -> Histogram {
    // 100 µs .. ~6.5 s: loopback connects land in the first buckets, a
    // connect timeout in the last ones.
    Histogram::new(exponential_buckets(0.0001, 3.0, 11))
}

fn queue_wait_histogram() -> Histogram {
    // 1 ms .. ~16 s; slots taken at once land in the first bucket.
    Histogram::new(exponential_buckets(0.001, 4.0, 8))
}

pub(super) struct Families {
    connect_attempts: Family<EndpointLabels, Counter>,
    connect_failures: Family<FailureLabels, Counter>,
    connect_duration: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    queue_wait: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    upstream_refused: Family<UpstreamReasonLabels, Counter>,
    retries: Family<UpstreamLabels, Counter>,
    retry_overflow: Family<UpstreamLabels, Counter>,
    budget_exhausted: Family<UpstreamLabels, Counter>,
    breaker_transitions: Family<EndpointStateLabels, Counter>,
    health_checks: Family<EndpointResultLabels, Counter>,
    resumptions: Family<EndpointLabels, Counter>,
    warm_used: Family<EndpointLabels, Counter>,
    upstream_tls_handshakes: Family<UpstreamHandshakeLabels, Counter>,
}

impl Families {
    pub(super) fn new() -> Self {
        Self {
            connect_attempts: Family::default(),
            connect_failures: Family::default(),
            connect_duration: Family::new_with_constructor(connect_duration_histogram),
            queue_wait: Family::new_with_constructor(queue_wait_histogram),
            upstream_refused: Family::default(),
            retries: Family::default(),
            retry_overflow: Family::default(),
            budget_exhausted: Family::default(),
            breaker_transitions: Family::default(),
            health_checks: Family::default(),
            resumptions: Family::default(),
            warm_used: Family::default(),
            upstream_tls_handshakes: Family::default(),
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "upstream_connect_attempts",
            "TCP connect attempts to an upstream endpoint",
            self.connect_attempts.clone(),
        );
        registry.register(
            "upstream_connect_failures",
            "Failed TCP connect attempts to an upstream endpoint, by reason",
            self.connect_failures.clone(),
        );
        registry.register_with_unit(
            "upstream_connect_duration",
            "Time to establish a TCP connection to an upstream endpoint (successful attempts)",
            Unit::Seconds,
            self.connect_duration.clone(),
        );
        registry.register_with_unit(
            "upstream_queue_wait",
            "Time clients waited for an upstream connection slot",
            Unit::Seconds,
            self.queue_wait.clone(),
        );
        registry.register(
            "upstream_refused",
            "Clients given no upstream connection before any attempt, by reason",
            self.upstream_refused.clone(),
        );
        registry.register(
            "upstream_retries",
            "Retries: connect attempts after a client's first, and HTTP tries after a request's first",
            self.retries.clone(),
        );
        registry.register(
            "upstream_retry_overflow",
            "HTTP retries not made because limits.max_retries were already in flight",
            self.retry_overflow.clone(),
        );
        registry.register(
            "upstream_retry_budget_exhausted",
            "Retries not made because the upstream's retry budget was spent",
            self.budget_exhausted.clone(),
        );
        registry.register(
            "upstream_breaker_transitions",
            "Circuit breaker state changes, by the state entered",
            self.breaker_transitions.clone(),
        );
        registry.register(
            "upstream_health_checks",
            "Active health check results",
            self.health_checks.clone(),
        );
        registry.register(
            "upstream_tls_resumptions",
            "TLS handshakes to upstream endpoints that resumed a session",
            self.resumptions.clone(),
        );
        registry.register(
            "upstream_warm_connections_used",
            "Client connections served from the warm pool",
            self.warm_used.clone(),
        );
        registry.register(
            "upstream_tls_handshakes",
            "TLS handshakes to upstream endpoints, by result",
            self.upstream_tls_handshakes.clone(),
        );
    }

    /// Handles for one upstream's metrics.
    pub(super) fn upstream(&self, upstream: &str) -> UpstreamMetrics {
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

    /// Handles for one upstream endpoint's metrics.
    pub(super) fn endpoint(&self, upstream: &str, endpoint: &str) -> EndpointMetrics {
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
