//! Telemetry: the Prometheus metric registry with every metric name attache
//! exports, the `tracing` subscriber that writes logs, the HTTP access log,
//! OpenTelemetry span export, and the queues that keep stdout and stderr
//! writes off the worker threads.

pub(crate) mod access_log;
pub(crate) mod log_limit;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod output;
pub(crate) mod traces;
