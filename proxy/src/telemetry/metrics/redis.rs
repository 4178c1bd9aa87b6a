//! The Redis ambassador per listener: commands by name and result,
//! command duration, upstream connections, the multiplexing ratio.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::ListenerLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedisCommandLabels {
    listener: String,
    command: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedisConnectionLabels {
    listener: String,
    kind: &'static str,
}

const REDIS_RESULTS: [&str; 3] = ["ok", "error", "failed"];

fn redis_duration_histogram() -> Histogram {
    // 50 µs .. ~3.3 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 17))
}

pub(super) struct Families {
    redis_commands: Family<RedisCommandLabels, Counter>,
    redis_duration: Family<ListenerLabels, Histogram, fn() -> Histogram>,
    redis_connections: Family<RedisConnectionLabels, Gauge>,
    redis_ratio: Family<ListenerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// One set of handles per Redis listener, shared by everything serving it.
    redis_listeners: std::sync::Mutex<std::collections::HashMap<String, RedisMetrics>>,
}

impl Families {
    pub(super) fn new() -> Self {
        Self {
            redis_commands: Family::default(),
            redis_duration: Family::new_with_constructor(redis_duration_histogram),
            redis_connections: Family::default(),
            redis_ratio: Family::default(),
            redis_listeners: std::sync::Mutex::default(),
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "redis_commands",
            "Redis commands answered, by command (a closed set, else other) and result",
            self.redis_commands.clone(),
        );
        registry.register_with_unit(
            "redis_command_duration",
            "Time from a shared Redis command's arrival to its reply",
            Unit::Seconds,
            self.redis_duration.clone(),
        );
        registry.register(
            "redis_upstream_connections",
            "Redis upstream connections: shared ones open, pinned ones lent now",
            self.redis_connections.clone(),
        );
        registry.register(
            "redis_multiplexing_ratio",
            "Redis client connections per shared upstream connection",
            self.redis_ratio.clone(),
        );
    }

    /// Handles for one Redis listener's metrics (the same ones on every call).
    /// `counted`: the commands counted under their own name (sorted,
    /// uppercase); the rest count as `other`, so the label set stays closed.
    pub(super) fn redis(&self, listener: &str, counted: &'static [&'static str]) -> RedisMetrics {
        let mut listeners = self
            .redis_listeners
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        listeners
            .entry(listener.to_owned())
            .or_insert_with(|| self.new_redis(listener, counted))
            .clone()
    }

    fn new_redis(&self, listener: &str, counted: &'static [&'static str]) -> RedisMetrics {
        let commands = (0..=counted.len())
            .map(|index| {
                let command = counted
                    .get(index)
                    .map_or_else(|| "other".to_owned(), |name| name.to_ascii_lowercase());
                REDIS_RESULTS.map(|result| {
                    self.redis_commands
                        .get_or_create(&RedisCommandLabels {
                            listener: listener.to_owned(),
                            command: command.clone(),
                            result,
                        })
                        .clone()
                })
            })
            .collect();
        let connections = |kind| {
            self.redis_connections
                .get_or_create(&RedisConnectionLabels {
                    listener: listener.to_owned(),
                    kind,
                })
                .clone()
        };
        RedisMetrics {
            counted,
            commands: Arc::new(commands),
            duration: self
                .redis_duration
                .get_or_create(&ListenerLabels {
                    listener: listener.to_owned(),
                })
                .clone(),
            shared_connections: connections("shared"),
            pinned_connections: connections("pinned"),
            clients: Gauge::default(),
            ratio: self
                .redis_ratio
                .get_or_create(&ListenerLabels {
                    listener: listener.to_owned(),
                })
                .clone(),
        }
    }
}

/// How a Redis command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedisResult {
    Ok = 0,
    /// Redis answered with an error.
    Error = 1,
    /// attache answered for it: timeout, connection failure, refusal.
    Failed = 2,
}

/// One Redis listener's handles.
#[derive(Clone)]
pub(crate) struct RedisMetrics {
    /// The commands counted by name, sorted.
    counted: &'static [&'static str],
    /// Per counted command (same index, then `other`), per result.
    commands: Arc<Vec<[Counter; 3]>>,
    pub(crate) duration: Histogram,
    shared_connections: Gauge,
    pub(crate) pinned_connections: Gauge,
    /// Client connections now (not exported: the listener's
    /// `connections_active` is), for the ratio.
    clients: Gauge,
    ratio: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl RedisMetrics {
    /// A client connected (`1`) or left (`-1`).
    pub(crate) fn client(&self, change: i64) {
        self.clients.inc_by(change);
        self.update_ratio();
    }

    /// A shared upstream connection opened (`1`) or closed (`-1`).
    pub(crate) fn shared_connection(&self, change: i64) {
        self.shared_connections.inc_by(change);
        self.update_ratio();
    }

    fn update_ratio(&self) {
        let shared = self.shared_connections.get();
        let ratio = if shared > 0 {
            self.clients.get() as f64 / shared as f64
        } else {
            0.0
        };
        self.ratio.set(ratio);
    }

    /// Counts one command called `name` (as sent, any case).
    pub(crate) fn command(&self, name: &[u8], result: RedisResult) {
        let mut buffer = [0; 32];
        let upper = attache_resp::command::upper(name, &mut buffer);
        let index = self
            .counted
            .binary_search(&upper)
            .unwrap_or(self.counted.len());
        self.commands[index][result as usize].inc();
    }

    /// Counts one command by its label's index in the counted set this
    /// listener was made with (its length: `other`), as the command table
    /// found it: no name lookup per command.
    pub(crate) fn command_labelled(&self, label: usize, result: RedisResult) {
        let other = self.commands.len() - 1;
        self.commands[label.min(other)][result as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_commands_count_by_name_or_as_other() {
        let metrics = Families::new().redis("r", &["GET", "SET"]);
        metrics.command(b"get", RedisResult::Ok);
        metrics.command(b"NOSUCHCOMMAND", RedisResult::Failed);
        assert_eq!(metrics.commands[0][0].get(), 1);
        assert_eq!(metrics.commands[2][2].get(), 1);
        metrics.command_labelled(1, RedisResult::Ok);
        metrics.command_labelled(7, RedisResult::Ok);
        assert_eq!(metrics.commands[1][0].get(), 1);
        assert_eq!(metrics.commands[2][0].get(), 1);
    }
}
