//! A point-in-time view of every upstream: slots in use and queued, and per
//! endpoint the breaker, health, active connections and warm pool. Served
//! as JSON on the admin port's `/upstreams` and read by the state gauges at
//! each scrape.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde::Serialize;

use super::{Health, Upstream};
use crate::resilience::breaker::State as BreakerState;
use crate::telemetry::metrics::{
    EndpointLabels, EndpointReasonLabels, EndpointStateLabels, UpstreamLabels,
};

#[derive(Debug, Serialize)]
pub(crate) struct UpstreamStatus {
    pub(crate) name: String,
    /// Connection slots held by clients.
    pub(crate) active: usize,
    /// Clients queued for a slot.
    pub(crate) pending: usize,
    pub(crate) endpoints: Vec<EndpointStatus>,
}

#[derive(Debug, Serialize)]
pub(crate) struct EndpointStatus {
    pub(crate) address: String,
    /// `closed`, `open` or `half_open`.
    pub(crate) breaker: &'static str,
    /// `healthy`, `unhealthy`, or `unknown` (no health check, or none finished).
    pub(crate) health: &'static str,
    /// Connections handed to clients and still open.
    pub(crate) active: usize,
    /// Absent without a warm pool.
    pub(crate) warm_pool: Option<WarmPoolStatus>,
}

#[derive(Debug, Serialize)]
pub(crate) struct WarmPoolStatus {
    /// Idle connections the pool keeps.
    pub(crate) size: usize,
    /// Idle connections ready now.
    pub(crate) idle: u32,
    /// Connections made since start.
    pub(crate) created: u64,
    /// Connections dropped for reaching `max_age`.
    pub(crate) expired: u64,
    /// Connections found closed, stale or carrying data when checked out.
    pub(crate) invalid: u64,
}

impl Upstream {
    pub(crate) fn status(&self) -> UpstreamStatus {
        UpstreamStatus {
            name: self.name.to_string(),
            active: self.limit.in_use(),
            pending: self.limit.waiting(),
            endpoints: self
                .endpoints
                .iter()
                .map(|endpoint| {
                    let state = &endpoint.state;
                    EndpointStatus {
                        address: state.address.to_string(),
                        breaker: state.breaker_state().label(),
                        health: state.health().label(),
                        active: state.active.load(std::sync::atomic::Ordering::Relaxed),
                        warm_pool: endpoint.warm.as_ref().map(|pool| {
                            let pool_state = pool.state();
                            let statistics = pool_state.statistics;
                            WarmPoolStatus {
                                size: self.warm_size,
                                idle: pool_state.idle_connections,
                                created: statistics.connections_created,
                                expired: statistics.connections_closed_max_lifetime,
                                invalid: statistics.connections_closed_invalid,
                            }
                        }),
                    }
                })
                .collect(),
        }
    }
}

/// The state gauges, read from the upstreams at each scrape.
#[derive(Debug)]
pub(crate) struct UpstreamStates {
    /// The upstreams in service, swapped by a config reload.
    pub(crate) upstreams: Arc<arc_swap::ArcSwap<Vec<Arc<Upstream>>>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Upstream")
            .field("name", &self.name())
            .finish_non_exhaustive()
    }
}

impl Collector for UpstreamStates {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let statuses: Vec<UpstreamStatus> = self
            .upstreams
            .load()
            .iter()
            .map(|upstream| upstream.status())
            .collect();
        let gauge = |value: usize| ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));

        let mut family = encoder.encode_descriptor(
            "upstream_connections_active",
            "Upstream connection slots held by clients",
            None,
            MetricType::Gauge,
        )?;
        for status in &statuses {
            gauge(status.active).encode(family.encode_family(&UpstreamLabels {
                upstream: status.name.clone(),
            })?)?;
        }
        let mut family = encoder.encode_descriptor(
            "upstream_pending_clients",
            "Clients queued for an upstream connection slot",
            None,
            MetricType::Gauge,
        )?;
        for status in &statuses {
            gauge(status.pending).encode(family.encode_family(&UpstreamLabels {
                upstream: status.name.clone(),
            })?)?;
        }

        let endpoints = || {
            statuses.iter().flat_map(|status| {
                status
                    .endpoints
                    .iter()
                    .map(move |endpoint| (status.name.as_str(), endpoint))
            })
        };
        let one_hot = |current: &str, state: &str| gauge(usize::from(current == state));
        let mut family = encoder.encode_descriptor(
            "upstream_breaker_state",
            "Circuit breaker state of an endpoint: 1 for the current state",
            None,
            MetricType::Gauge,
        )?;
        for (upstream, endpoint) in endpoints() {
            for state in BreakerState::ALL.map(BreakerState::label) {
                let labels = EndpointStateLabels {
                    upstream: upstream.to_owned(),
                    endpoint: endpoint.address.clone(),
                    state,
                };
                one_hot(endpoint.breaker, state).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "upstream_endpoint_health",
            "Health check verdict on an endpoint: 1 for the current one",
            None,
            MetricType::Gauge,
        )?;
        for (upstream, endpoint) in endpoints() {
            for state in [Health::Healthy, Health::Unhealthy, Health::Unknown].map(Health::label) {
                let labels = EndpointStateLabels {
                    upstream: upstream.to_owned(),
                    endpoint: endpoint.address.clone(),
                    state,
                };
                one_hot(endpoint.health, state).encode(family.encode_family(&labels)?)?;
            }
        }

        let pools = || {
            endpoints().filter_map(|(upstream, endpoint)| {
                Some((
                    upstream,
                    endpoint.address.as_str(),
                    endpoint.warm_pool.as_ref()?,
                ))
            })
        };
        let mut family = encoder.encode_descriptor(
            "upstream_pool_idle_connections",
            "Warm connections ready for clients",
            None,
            MetricType::Gauge,
        )?;
        for (upstream, endpoint, pool) in pools() {
            let labels = EndpointLabels {
                upstream: upstream.to_owned(),
                endpoint: endpoint.to_owned(),
            };
            gauge(pool.idle as usize).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "upstream_pool_connections_created",
            "Warm connections made",
            None,
            MetricType::Counter,
        )?;
        for (upstream, endpoint, pool) in pools() {
            let labels = EndpointLabels {
                upstream: upstream.to_owned(),
                endpoint: endpoint.to_owned(),
            };
            ConstCounter::new(pool.created).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "upstream_pool_connections_discarded",
            "Warm connections dropped unused: expired (max_age) or invalid at checkout",
            None,
            MetricType::Counter,
        )?;
        for (upstream, endpoint, pool) in pools() {
            for (reason, count) in [("expired", pool.expired), ("invalid", pool.invalid)] {
                let labels = EndpointReasonLabels {
                    upstream: upstream.to_owned(),
                    endpoint: endpoint.to_owned(),
                    reason,
                };
                ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
