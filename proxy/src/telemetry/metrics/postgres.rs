//! The Postgres ambassador per listener: queries by command tag and their
//! duration, transactions, errors by SQLSTATE class, the pools (server
//! connections lent and idle, clients waiting, the wait), cancels and
//! the sessions that pinned their server connection.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::database::{
    PoolFamilies, PoolMetrics, StatementFamilies, StatementHelp, StatementMetrics,
};

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
struct ClassLabels {
    listener: String,
    sqlstate_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    listener: String,
    reason: &'static str,
}

pub(super) struct Families {
    statements: StatementFamilies,
    errors: Family<ClassLabels, Counter>,
    pinned: Family<ReasonLabels, Counter>,
    cancels: Family<ReasonLabels, Counter>,
    pool: PoolFamilies,
}

impl Families {
    pub(super) fn new() -> Self {
        Self {
            statements: StatementFamilies::new(),
            errors: Family::default(),
            pinned: Family::default(),
            cancels: Family::default(),
            pool: PoolFamilies::new(),
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        self.statements.register(
            registry,
            "postgres",
            &StatementHelp {
                queries: "Statements completed by the server, by command tag (SELECT, INSERT, UPDATE, DELETE, COPY, BEGIN, COMMIT, ROLLBACK, OTHER)",
                query_duration: "From a statement sent to the server to its completion",
                transactions: "Transaction blocks ended (COMMIT, ROLLBACK, or failed)",
                transaction_duration: "From BEGIN to the end of its transaction block",
            },
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
        self.pool.register(registry, "postgres");
    }

    pub(super) fn postgres(&self, listener: &str) -> PostgresMetrics {
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
            statements: self.statements.listener(listener, &QUERY_COMMANDS),
            errors: self.errors.clone(),
            pinned: PinReason::ALL.map(|pin| reason(&self.pinned, pin.label())),
            cancels: [
                reason(&self.cancels, "client"),
                reason(&self.cancels, "timeout"),
            ],
            pool: self.pool.listener(listener),
        }
    }
}

/// One Postgres listener's handles.
#[derive(Clone)]
pub(crate) struct PostgresMetrics {
    listener: String,
    /// Statements by [`QUERY_COMMANDS`], transactions, their durations.
    pub(crate) statements: StatementMetrics,
    errors: Family<ClassLabels, Counter>,
    /// By [`PinReason::ALL`] index.
    pinned: [Counter; 8],
    /// By [`CancelReason`].
    cancels: [Counter; 2],
    /// The listener's pools.
    pub(crate) pool: PoolMetrics,
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
        self.statements.count(word);
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
}
