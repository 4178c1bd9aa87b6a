//! A point-in-time view of every upstream: slots in use and queued, and per
//! endpoint the breaker, health, active connections and warm pool. Served
//! as JSON on the admin port's `/upstreams` and read by the state gauges at
//! each scrape.

use serde::Serialize;

use super::Upstream;

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
