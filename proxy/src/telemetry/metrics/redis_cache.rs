//! The Redis ambassador's local cache per listener: lookups by result,
//! invalidations by reason, evictions, its size, and the times it turned
//! itself off.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::ListenerLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    listener: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    listener: String,
    reason: &'static str,
}

/// Why cached replies were dropped before their time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheInvalidation {
    /// Redis said the key changed (a tracking message).
    Server,
    /// Redis said every key may have changed (FLUSHALL, FLUSHDB, or its
    /// tracking table overflowing).
    Flush,
    /// A client wrote the key through attache.
    Write,
}

/// Why the cache turned itself off (and dropped everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheDisabled {
    /// The tracking connection could not be opened or set up.
    Connect,
    /// The tracking connection closed or failed.
    Closed,
    /// The tracking connection stopped answering its heartbeat.
    Timeout,
    /// Sentinel named a new master.
    Failover,
}

impl CacheDisabled {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Closed => "closed",
            Self::Timeout => "timeout",
            Self::Failover => "failover",
        }
    }
}

pub(super) struct Families {
    requests: Family<ResultLabels, Counter>,
    invalidations: Family<ReasonLabels, Counter>,
    evictions: Family<ListenerLabels, Counter>,
    bytes: Family<ListenerLabels, Gauge>,
    entries: Family<ListenerLabels, Gauge>,
    enabled: Family<ListenerLabels, Gauge>,
    disabled: Family<ReasonLabels, Counter>,
}

impl Families {
    pub(super) fn new() -> Self {
        Self {
            requests: Family::default(),
            invalidations: Family::default(),
            evictions: Family::default(),
            bytes: Family::default(),
            entries: Family::default(),
            enabled: Family::default(),
            disabled: Family::default(),
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "redis_cache_requests",
            "Cacheable Redis reads: hit (answered from the cache), miss (sent to Redis), bypass (the cache could not be used)",
            self.requests.clone(),
        );
        registry.register(
            "redis_cache_invalidations",
            "Keys dropped from the cache, or reads in flight not stored: server (Redis' tracking message), flush (all keys), write (a write through attache)",
            self.invalidations.clone(),
        );
        registry.register(
            "redis_cache_evictions",
            "Cached replies dropped to stay within max_memory or max_entries",
            self.evictions.clone(),
        );
        registry.register_with_unit(
            "redis_cache",
            "Memory the cached replies, their keys and bookkeeping take",
            Unit::Bytes,
            self.bytes.clone(),
        );
        registry.register(
            "redis_cache_entries",
            "Cached replies",
            self.entries.clone(),
        );
        registry.register(
            "redis_cache_enabled",
            "1 while Redis tracks keys for the cache; 0 while it is cleared and bypassed",
            self.enabled.clone(),
        );
        registry.register(
            "redis_cache_disabled",
            "Times the cache was cleared and bypassed because tracking was lost, by reason",
            self.disabled.clone(),
        );
    }

    pub(super) fn cache(&self, listener: &str) -> CacheMetrics {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        let result = |result| {
            self.requests
                .get_or_create(&ResultLabels {
                    listener: listener.to_owned(),
                    result,
                })
                .clone()
        };
        let invalidation = |reason| {
            self.invalidations
                .get_or_create(&ReasonLabels {
                    listener: listener.to_owned(),
                    reason,
                })
                .clone()
        };
        let disabled = |reason: CacheDisabled| {
            self.disabled
                .get_or_create(&ReasonLabels {
                    listener: listener.to_owned(),
                    reason: reason.label(),
                })
                .clone()
        };
        CacheMetrics {
            disabled: [
                disabled(CacheDisabled::Connect),
                disabled(CacheDisabled::Closed),
                disabled(CacheDisabled::Timeout),
                disabled(CacheDisabled::Failover),
            ],
            hits: result("hit"),
            misses: result("miss"),
            bypasses: result("bypass"),
            invalidated: [
                invalidation("server"),
                invalidation("flush"),
                invalidation("write"),
            ],
            evictions: self.evictions.get_or_create(&labels).clone(),
            bytes: self.bytes.get_or_create(&labels).clone(),
            entries: self.entries.get_or_create(&labels).clone(),
            enabled: self.enabled.get_or_create(&labels).clone(),
        }
    }
}

/// One cache's handles.
#[derive(Clone)]
pub(crate) struct CacheMetrics {
    /// By [`CacheDisabled`] reason, in its order.
    disabled: [Counter; 4],
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) bypasses: Counter,
    invalidated: [Counter; 3],
    pub(crate) evictions: Counter,
    pub(crate) bytes: Gauge,
    pub(crate) entries: Gauge,
    pub(crate) enabled: Gauge,
}

impl CacheMetrics {
    pub(crate) fn invalidated(&self, reason: CacheInvalidation) {
        self.invalidated[reason as usize].inc();
    }

    pub(crate) fn disabled(&self, reason: CacheDisabled) {
        self.disabled[reason as usize].inc();
    }
}
