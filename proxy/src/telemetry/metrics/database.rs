//! What the database ambassadors (Postgres, MySQL) count alike, one set of
//! families per protocol under its own prefix: statements by kind and
//! their duration, transactions and theirs ([`StatementFamilies`]); the
//! server connection pools: connections lent and idle per pool, clients
//! waiting, the wait, clients that got no connection in time, and
//! connections that failed while lent ([`PoolFamilies`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::ListenerLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    listener: String,
    command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    listener: String,
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolStateLabels {
    listener: String,
    pool: String,
    state: &'static str,
}

/// 100 µs to about 105 s: query, transaction and wait durations.
pub(super) fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

pub(super) struct StatementFamilies {
    queries: Family<CommandLabels, Counter>,
    query_duration: Family<ListenerLabels, Histogram, fn() -> Histogram>,
    transactions: Family<ListenerLabels, Counter>,
    transaction_duration: Family<ListenerLabels, Histogram, fn() -> Histogram>,
}

/// What each protocol's statement families say of themselves.
pub(super) struct StatementHelp {
    pub(super) queries: &'static str,
    pub(super) query_duration: &'static str,
    pub(super) transactions: &'static str,
    pub(super) transaction_duration: &'static str,
}

impl StatementFamilies {
    pub(super) fn new() -> Self {
        Self {
            queries: Family::default(),
            query_duration: Family::new_with_constructor(duration_histogram),
            transactions: Family::default(),
            transaction_duration: Family::new_with_constructor(duration_histogram),
        }
    }

    /// Registers the families as `<prefix>_queries`, `<prefix>_query_duration`,
    /// `<prefix>_transactions` and `<prefix>_transaction_duration`.
    pub(super) fn register(&self, registry: &mut Registry, prefix: &str, help: &StatementHelp) {
        registry.register(
            format!("{prefix}_queries"),
            help.queries,
            self.queries.clone(),
        );
        registry.register_with_unit(
            format!("{prefix}_query_duration"),
            help.query_duration,
            Unit::Seconds,
            self.query_duration.clone(),
        );
        registry.register(
            format!("{prefix}_transactions"),
            help.transactions,
            self.transactions.clone(),
        );
        registry.register_with_unit(
            format!("{prefix}_transaction_duration"),
            help.transaction_duration,
            Unit::Seconds,
            self.transaction_duration.clone(),
        );
    }

    /// One listener's handles; statements are counted under `commands`
    /// (the last one takes any other kind).
    pub(super) fn listener(
        &self,
        listener: &str,
        commands: &'static [&'static str],
    ) -> StatementMetrics {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        StatementMetrics {
            commands,
            queries: commands
                .iter()
                .map(|command| {
                    self.queries
                        .get_or_create(&CommandLabels {
                            listener: listener.to_owned(),
                            command,
                        })
                        .clone()
                })
                .collect(),
            query_duration: self.query_duration.get_or_create(&labels).clone(),
            transactions: self.transactions.get_or_create(&labels).clone(),
            transaction_duration: self.transaction_duration.get_or_create(&labels).clone(),
        }
    }
}

/// One listener's statement handles.
#[derive(Clone)]
pub(crate) struct StatementMetrics {
    commands: &'static [&'static str],
    /// By `commands` index.
    queries: Box<[Counter]>,
    pub(crate) query_duration: Histogram,
    pub(crate) transactions: Counter,
    pub(crate) transaction_duration: Histogram,
}

impl StatementMetrics {
    /// Counts a statement of `kind`; a kind not counted on its own goes
    /// under the last command (`OTHER`).
    pub(crate) fn count(&self, kind: &str) {
        let index = self
            .commands
            .iter()
            .position(|command| *command == kind)
            .unwrap_or(self.commands.len() - 1);
        self.queries[index].inc();
    }
}

pub(super) struct PoolFamilies {
    server_connections: Family<PoolStateLabels, Gauge>,
    waiting: Family<PoolLabels, Gauge>,
    wait_duration: Family<ListenerLabels, Histogram, fn() -> Histogram>,
    timeouts: Family<ListenerLabels, Counter>,
    server_failures: Family<ListenerLabels, Counter>,
}

impl PoolFamilies {
    pub(super) fn new() -> Self {
        Self {
            server_connections: Family::default(),
            waiting: Family::default(),
            wait_duration: Family::new_with_constructor(duration_histogram),
            timeouts: Family::default(),
            server_failures: Family::default(),
        }
    }

    /// Registers the families as `<prefix>_pool_...` and
    /// `<prefix>_server_failures`.
    pub(super) fn register(&self, registry: &mut Registry, prefix: &str) {
        registry.register(
            format!("{prefix}_pool_server_connections"),
            "Server connections per pool (database/user): active (lent to a client) or idle",
            self.server_connections.clone(),
        );
        registry.register(
            format!("{prefix}_pool_clients_waiting"),
            "Clients waiting for a server connection, per pool",
            self.waiting.clone(),
        );
        registry.register_with_unit(
            format!("{prefix}_pool_wait_duration"),
            "How long a client waited for a server connection",
            Unit::Seconds,
            self.wait_duration.clone(),
        );
        registry.register(
            format!("{prefix}_pool_timeouts"),
            "Clients that got no server connection within queue_timeout",
            self.timeouts.clone(),
        );
        registry.register(
            format!("{prefix}_server_failures"),
            "Server connections that failed while lent (the client got an error)",
            self.server_failures.clone(),
        );
    }

    pub(super) fn listener(&self, listener: &str) -> PoolMetrics {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        PoolMetrics {
            listener: listener.to_owned(),
            server_connections: self.server_connections.clone(),
            waiting: self.waiting.clone(),
            wait_duration: self.wait_duration.get_or_create(&labels).clone(),
            timeouts: self.timeouts.get_or_create(&labels).clone(),
            server_failures: self.server_failures.get_or_create(&labels).clone(),
        }
    }
}

/// One listener's pool handles.
#[derive(Clone)]
pub(crate) struct PoolMetrics {
    listener: String,
    server_connections: Family<PoolStateLabels, Gauge>,
    waiting: Family<PoolLabels, Gauge>,
    pub(crate) wait_duration: Histogram,
    pub(crate) timeouts: Counter,
    pub(crate) server_failures: Counter,
}

/// A pool's gauges.
#[derive(Clone)]
pub(crate) struct PoolGauges {
    pub(crate) active: Gauge,
    pub(crate) idle: Gauge,
    pub(crate) waiting: Gauge,
}

impl PoolMetrics {
    /// The gauges of the pool named `pool` (`database/user`).
    pub(crate) fn pool(&self, pool: &str) -> PoolGauges {
        let state = |state| {
            self.server_connections
                .get_or_create(&PoolStateLabels {
                    listener: self.listener.clone(),
                    pool: pool.to_owned(),
                    state,
                })
                .clone()
        };
        PoolGauges {
            active: state("active"),
            idle: state("idle"),
            waiting: self
                .waiting
                .get_or_create(&PoolLabels {
                    listener: self.listener.clone(),
                    pool: pool.to_owned(),
                })
                .clone(),
        }
    }
}
