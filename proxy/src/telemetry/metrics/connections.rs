//! Client connections per listener: accepted, open, refused, closed,
//! bytes relayed, TLS handshakes on the listener.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::{HandshakeResult, ListenerLabels};
use crate::telemetry::log_limit::LogLimit;

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
struct HandshakeLabels {
    listener: String,
    result: &'static str,
}

#[derive(Default)]
pub(super) struct Families {
    connections: Family<ListenerLabels, Counter>,
    connections_active: Family<ListenerLabels, Gauge>,
    connections_refused: Family<RefusedLabels, Counter>,
    connections_closed: Family<ClosedLabels, Counter>,
    transferred_bytes: Family<BytesLabels, Counter>,
    tls_handshakes: Family<HandshakeLabels, Counter>,
}

impl Families {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections",
            "Client connections accepted and handed to a protocol handler",
            self.connections.clone(),
        );
        registry.register(
            "connections_active",
            "Client connections being proxied now",
            self.connections_active.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections closed at accept (max_connections reached, or draining)",
            self.connections_refused.clone(),
        );
        registry.register(
            "connections_closed",
            "Client connections ended, by result",
            self.connections_closed.clone(),
        );
        registry.register_with_unit(
            "transferred",
            "Bytes relayed, by direction",
            Unit::Bytes,
            self.transferred_bytes.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes on listeners, by result",
            self.tls_handshakes.clone(),
        );
    }

    /// Handles for one listener's metrics.
    pub(super) fn listener(&self, listener: &str) -> ListenerMetrics {
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
