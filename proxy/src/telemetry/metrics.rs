//! Every metric attache exports, registered once at start-up. Protocol code
//! resolves label sets into handles ([`ListenerMetrics`], [`EndpointMetrics`])
//! when a listener or endpoint is created, so the hot path only increments
//! atomics.
//!
//! Names (all with the `attache_` prefix):
//! - `connections_total{listener}`: connections accepted and handed to a handler
//! - `connections_active{listener}`: connections being proxied now
//! - `connections_refused_total{listener,reason}`: closed at accept; reason is
//!   `max_connections` or `draining`
//! - `connections_closed_total{listener,result}`: result is `ok`,
//!   `idle_timeout`, `error` or `upstream_unavailable`
//! - `transferred_bytes_total{listener,direction}`: `to_upstream` / `to_client`
//! - `upstream_connect_attempts_total{upstream,endpoint}`
//! - `upstream_connect_failures_total{upstream,endpoint,reason}`: reason is
//!   `timeout`, `refused`, `resolve` or `error`
//! - `upstream_connect_duration_seconds{upstream,endpoint}`: successful connects
//! - `tls_handshakes_total{listener,result}`: TLS terminated on a listener
//! - `upstream_tls_handshakes_total{upstream,endpoint,result}`: TLS originated
//!   to an endpoint; result is `ok`, `no_client_cert`, `unknown_ca`,
//!   `expired`, `not_yet_valid`, `identity_refused`, `protocol_version`,
//!   `protocol_error`, `peer_alert`, `timeout` or `error`
//! - `tls_reloads_total{result}`: certificate reloads, `ok` or `error`
//!   (rejected; the previous material stays)
//! - `tls_certificate_expiry_timestamp_seconds{kind,name}`: `notAfter` of the
//!   certificate a listener or upstream presents
//! - `build_info{version}`: always 1

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

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
struct EndpointLabels {
    upstream: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    upstream: String,
    endpoint: String,
    reason: &'static str,
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
struct CertificateLabels {
    kind: &'static str,
    name: String,
}

/// The metric registry and its families.
pub(crate) struct Metrics {
    tls_reloads: Family<ReloadLabels, Counter>,
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
            certificate_expiry: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "tls_reloads",
            "Certificate reloads by result (error: rejected, previous material kept)",
            metrics.tls_reloads.clone(),
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
        }
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

    /// Handles for one upstream endpoint's metrics.
    pub(crate) fn endpoint(&self, upstream: &str, endpoint: &str) -> EndpointMetrics {
        let labels = EndpointLabels {
            upstream: upstream.to_owned(),
            endpoint: endpoint.to_owned(),
        };
        EndpointMetrics {
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
    /// Any other error (unreachable network, ...).
    Error,
}

impl ConnectFailure {
    const ALL: [Self; 5] = [
        Self::Timeout,
        Self::Refused,
        Self::Resolve,
        Self::Tls,
        Self::Error,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Resolve => "resolve",
            Self::Tls => "tls",
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
    /// Not TLS, or malformed (for example, plaintext sent to a TLS port).
    ProtocolError,
    /// The peer refused us with an alert (for example, our certificate).
    PeerAlert,
    Timeout,
    Error,
}

impl HandshakeResult {
    const ALL: [Self; 11] = [
        Self::Ok,
        Self::NoClientCert,
        Self::UnknownCa,
        Self::Expired,
        Self::NotYetValid,
        Self::IdentityRefused,
        Self::ProtocolVersion,
        Self::ProtocolError,
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
            Self::ProtocolError => "protocol_error",
            Self::PeerAlert => "peer_alert",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// Reload result counters.
pub(crate) struct ReloadMetrics {
    pub(crate) ok: Counter,
    pub(crate) error: Counter,
}

/// One listener's metric handles.
#[derive(Clone)]
pub(crate) struct ListenerMetrics {
    pub(crate) opened: Counter,
    pub(crate) active: Gauge,
    pub(crate) refused_max_connections: Counter,
    pub(crate) refused_draining: Counter,
    closed: [Counter; 5],
    pub(crate) to_upstream_bytes: Counter,
    pub(crate) to_client_bytes: Counter,
    handshakes: [Counter; 11],
}

impl ListenerMetrics {
    pub(crate) fn closed(&self, result: CloseResult) {
        self.closed[result as usize].inc();
    }

    pub(crate) fn handshake(&self, result: HandshakeResult) {
        self.handshakes[result as usize].inc();
    }
}

/// One upstream endpoint's metric handles.
#[derive(Clone)]
pub(crate) struct EndpointMetrics {
    pub(crate) attempts: Counter,
    failures: [Counter; 5],
    pub(crate) duration: Histogram,
    handshakes: [Counter; 11],
}

impl EndpointMetrics {
    pub(crate) fn failed(&self, reason: ConnectFailure) {
        self.failures[reason as usize].inc();
    }

    pub(crate) fn handshake(&self, result: HandshakeResult) {
        self.handshakes[result as usize].inc();
    }
}
