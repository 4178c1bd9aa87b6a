//! Telemetry: the Prometheus metric registry with every metric name attache
//! exports, the `tracing` subscriber that writes logs, and the HTTP access log.

pub(crate) mod access_log;
pub(crate) mod logging;
pub(crate) mod metrics;
