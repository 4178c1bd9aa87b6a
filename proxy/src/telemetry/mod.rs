//! Telemetry: the Prometheus metric registry with every metric name attache
//! exports, and the `tracing` subscriber that writes logs.

pub(crate) mod logging;
pub(crate) mod metrics;
