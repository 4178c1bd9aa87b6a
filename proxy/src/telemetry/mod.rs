//! Telemetry: the Prometheus metric registry with every metric name attache
//! exports, the `tracing` subscriber that writes logs, the HTTP access log,
//! and OpenTelemetry span export.

pub(crate) mod access_log;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod traces;
