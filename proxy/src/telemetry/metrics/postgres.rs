//! The Postgres ambassador per listener: queries by command tag and their
//! duration, transactions, errors by SQLSTATE class, the pools (server
//! connections lent and idle, clients waiting, the wait), cancels and
//! the sessions that pinned their server connection.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::ListenerLabels;

/// The command tags counted under their own name; the rest are `OTHER`.
pub(crate) const QUERY_COMMANDS: [&str; 9] = [
    "SELECT", "INSERT", "UPDATE", "DELETE", "COPY", "BEGIN", "COMMIT", "ROLLBACK", "OTHER",
];

/// Why a session kept its server connection to itself (transaction mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PinReason {
    /// `SET` or `RESET` of a session setting.
    Set,
    /// `LISTEN`.
    Listen,
    /// A session-level advisory lock.
    AdvisoryLock,
    /// `PREPARE` in SQL.
    Prepare,
    /// `DECLARE ... WITH HOLD`.
    HoldCursor,
    /// A temporary table.
    TempTable,
    /// `LOAD` of a library.
    Load,
    /// The server reported a setting changed (`ParameterStatus`).
    ParameterStatus,
}

impl PinReason {
    pub(crate) const ALL: [Self; 8] = [
        Self::Set,
        Self::Listen,
        Self::AdvisoryLock,
        Self::Prepare,
        Self::HoldCursor,
        Self::TempTable,
        Self::Load,
        Self::ParameterStatus,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Set => "set",
            Self::Listen => "listen",
            Self::AdvisoryLock => "advisory_lock",
            Self::Prepare => "prepare",
            Self::HoldCursor => "hold_cursor",
            Self::TempTable => "temp_table",
            Self::Load => "load",
            Self::ParameterStatus => "parameter_status",
        }
    }
}

/// Why attache cancelled a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelReason {
    /// The client sent a `CancelRequest`.
    Client,
    /// The query ran past `query_timeout`.
    Timeout,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    listener: String,
    command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    listener: String,
    sqlstate_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    listener: String,
    reason: &'static str,
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

fn duration_histogram() -> Histogram {
    // 100 µs to about 105 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

pub(super) struct Families {
    queries: Family<CommandLabels, Counter>,
    query_duration: Family<ListenerLabels, Histogram, fn() -> Histogram>,
    transactions: Family<ListenerLabels, Counter>,
    transaction_duration: Family<ListenerLabels, Histogram, fn() -> Histogram>,
    errors: Family<ClassLabels, Counter>,
    pinned: Family<ReasonLabels, Counter>,
    cancels: Family<ReasonLabels, Counter>,
    server_connections: Family<PoolStateLabels, Gauge>,
    waiting: Family<PoolLabels, Gauge>,
    wait_duration: Family<ListenerLabels, Histogram, fn() -> Histogram>,
    pool_timeouts: Family<ListenerLabels, Counter>,
    server_failures: Family<ListenerLabels, Counter>,
}

impl Families {
    pub(super) fn new() -> Self {
        Self {
            queries: Family::default(),
            query_duration: Family::new_with_constructor(duration_histogram),
            transactions: Family::default(),
            transaction_duration: Family::new_with_constructor(duration_histogram),
            errors: Family::default(),
            pinned: Family::default(),
            cancels: Family::default(),
            server_connections: Family::default(),
            waiting: Family::default(),
            wait_duration: Family::new_with_constructor(duration_histogram),
            pool_timeouts: Family::default(),
            server_failures: Family::default(),
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "postgres_queries",
            "Statements completed by the server, by command tag (SELECT, INSERT, UPDATE, DELETE, COPY, BEGIN, COMMIT, ROLLBACK, OTHER)",
            self.queries.clone(),
        );
        registry.register_with_unit(
            "postgres_query_duration",
            "From a statement sent to the server to its completion",
            Unit::Seconds,
            self.query_duration.clone(),
        );
        registry.register(
            "postgres_transactions",
            "Transaction blocks ended (COMMIT, ROLLBACK, or failed)",
            self.transactions.clone(),
        );
        registry.register_with_unit(
            "postgres_transaction_duration",
            "From BEGIN to the end of its transaction block",
            Unit::Seconds,
            self.transaction_duration.clone(),
        );
        registry.register(
            "postgres_errors",
            "Errors the server answered with, by SQLSTATE class (the first two characters)",
            self.errors.clone(),
        );
        registry.register(
            "postgres_pinned",
            "Transaction-mode sessions that kept their server connection for good, by what pinned them",
            self.pinned.clone(),
        );
        registry.register(
            "postgres_cancels",
            "Queries attache asked the server to cancel: client (its CancelRequest), timeout (query_timeout)",
            self.cancels.clone(),
        );
        registry.register(
            "postgres_pool_server_connections",
            "Server connections per pool (database/user): active (lent to a client) or idle",
            self.server_connections.clone(),
        );
        registry.register(
            "postgres_pool_clients_waiting",
            "Clients waiting for a server connection, per pool",
            self.waiting.clone(),
        );
        registry.register_with_unit(
            "postgres_pool_wait_duration",
            "How long a client waited for a server connection",
            Unit::Seconds,
            self.wait_duration.clone(),
        );
        registry.register(
            "postgres_pool_timeouts",
            "Clients that got no server connection within queue_timeout",
            self.pool_timeouts.clone(),
        );
        registry.register(
            "postgres_server_failures",
            "Server connections that failed while lent (the client got an error)",
            self.server_failures.clone(),
        );
    }

    pub(super) fn postgres(&self, listener: &str) -> PostgresMetrics {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        let reason = |family: &Family<ReasonLabels, Counter>, reason| {
            family
                .get_or_create(&ReasonLabels {
                    listener: listener.to_owned(),
                    reason,
                })
                .clone()
        };
        PostgresMetrics {
            listener: listener.to_owned(),
            queries: QUERY_COMMANDS.map(|command| {
                self.queries
                    .get_or_create(&CommandLabels {
                        listener: listener.to_owned(),
                        command,
                    })
                    .clone()
            }),
            query_duration: self.query_duration.get_or_create(&labels).clone(),
            transactions: self.transactions.get_or_create(&labels).clone(),
            transaction_duration: self.transaction_duration.get_or_create(&labels).clone(),
            errors: self.errors.clone(),
            pinned: PinReason::ALL.map(|pin| reason(&self.pinned, pin.label())),
            cancels: [
                reason(&self.cancels, "client"),
                reason(&self.cancels, "timeout"),
            ],
            server_connections: self.server_connections.clone(),
            waiting: self.waiting.clone(),
            wait_duration: self.wait_duration.get_or_create(&labels).clone(),
            pool_timeouts: self.pool_timeouts.get_or_create(&labels).clone(),
            server_failures: self.server_failures.get_or_create(&labels).clone(),
        }
    }
}

/// One Postgres listener's handles.
#[derive(Clone)]
pub(crate) struct PostgresMetrics {
    listener: String,
    /// By [`QUERY_COMMANDS`] index.
    queries: [Counter; 9],
    pub(crate) query_duration: Histogram,
    pub(crate) transactions: Counter,
    pub(crate) transaction_duration: Histogram,
    errors: Family<ClassLabels, Counter>,
    /// By [`PinReason::ALL`] index.
    pinned: [Counter; 8],
    /// By [`CancelReason`].
    cancels: [Counter; 2],
    server_connections: Family<PoolStateLabels, Gauge>,
    waiting: Family<PoolLabels, Gauge>,
    pub(crate) wait_duration: Histogram,
    pub(crate) pool_timeouts: Counter,
    pub(crate) server_failures: Counter,
}

/// A pool's gauges.
#[derive(Clone)]
pub(crate) struct PoolGauges {
    pub(crate) active: Gauge,
    pub(crate) idle: Gauge,
    pub(crate) waiting: Gauge,
}

impl PostgresMetrics {
    /// Counts a completed statement by its command tag's first word.
    pub(crate) fn query(&self, tag: &str) {
        let word = tag.split(' ').next().unwrap_or_default();
        let word = match word {
            "START" => "BEGIN",
            "END" => "COMMIT",
            _ => word,
        };
        let index = QUERY_COMMANDS[..8]
            .iter()
            .position(|command| *command == word)
            .unwrap_or(8);
        self.queries[index].inc();
    }

    /// Counts an error by its SQLSTATE's class.
    pub(crate) fn error(&self, sqlstate: &str) {
        let class = match sqlstate.get(..2) {
            Some(class) if class.bytes().all(|byte| byte.is_ascii_alphanumeric()) => class,
            _ => "unknown",
        };
        self.errors
            .get_or_create(&ClassLabels {
                listener: self.listener.clone(),
                sqlstate_class: class.to_owned(),
            })
            .inc();
    }

    pub(crate) fn pinned(&self, reason: PinReason) {
        let index = PinReason::ALL
            .iter()
            .position(|pin| *pin == reason)
            .unwrap_or_default();
        self.pinned[index].inc();
    }

    pub(crate) fn cancelled(&self, reason: CancelReason) {
        self.cancels[reason as usize].inc();
    }

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
