//! The MySQL/MariaDB ambassador per listener: commands by kind and their
//! duration, transactions, errors by server error code (the common ones,
//! else `other`), the sessions that pinned their server connection, query
//! timeouts, and the pools.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::ListenerLabels;
use super::database::{
    PoolFamilies, PoolMetrics, StatementFamilies, StatementHelp, StatementMetrics,
};

/// The kinds commands are counted under.
pub(crate) const MYSQL_COMMANDS: [&str; 10] = [
    "SELECT", "INSERT", "UPDATE", "DELETE", "BEGIN", "COMMIT", "ROLLBACK", "PREPARE", "EXECUTE",
    "OTHER",
];

/// Server error codes counted under their own number; the rest are `other`.
const ERROR_CODES: [u16; 16] = [
    1040, // too many connections
    1045, // access denied
    1046, // no database selected
    1049, // unknown database
    1054, // unknown column
    1062, // duplicate entry
    1064, // syntax error
    1146, // table does not exist
    1205, // lock wait timeout
    1213, // deadlock
    1317, // query interrupted (KILL QUERY)
    1927, // connection killed
    1969, // MariaDB max_statement_time exceeded
    3024, // MySQL max_execution_time exceeded
    1243, // unknown prepared statement handler
    1461, // too many prepared statements
];

/// Why a session kept its server connection to itself (transaction mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MysqlPin {
    /// `SET` of a session variable (or `SET TRANSACTION`, `SET NAMES`).
    Set,
    /// A user variable (`@name`).
    UserVariable,
    /// A temporary table.
    TempTable,
    /// `LOCK TABLES`.
    LockTables,
    /// `GET_LOCK()`.
    GetLock,
    /// SQL-level `PREPARE`.
    Prepare,
    /// `SQL_CALC_FOUND_ROWS`.
    FoundRows,
    /// A cursor opened by `COM_STMT_EXECUTE`.
    Cursor,
    /// `COM_SET_OPTION` (multi-statements on or off).
    SetOption,
    /// The server reported a change of session state attache did not
    /// recognise from the statement.
    SessionState,
}

impl MysqlPin {
    pub(crate) const ALL: [Self; 10] = [
        Self::Set,
        Self::UserVariable,
        Self::TempTable,
        Self::LockTables,
        Self::GetLock,
        Self::Prepare,
        Self::FoundRows,
        Self::Cursor,
        Self::SetOption,
        Self::SessionState,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Set => "set",
            Self::UserVariable => "user_variable",
            Self::TempTable => "temp_table",
            Self::LockTables => "lock_tables",
            Self::GetLock => "get_lock",
            Self::Prepare => "prepare",
            Self::FoundRows => "found_rows",
            Self::Cursor => "cursor",
            Self::SetOption => "set_option",
            Self::SessionState => "session_state",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    listener: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    listener: String,
    reason: &'static str,
}

pub(super) struct Families {
    statements: StatementFamilies,
    errors: Family<CodeLabels, Counter>,
    pinned: Family<ReasonLabels, Counter>,
    query_timeouts: Family<ListenerLabels, Counter>,
    pool: PoolFamilies,
}

impl Families {
    pub(super) fn new() -> Self {
        Self {
            statements: StatementFamilies::new(),
            errors: Family::default(),
            pinned: Family::default(),
            query_timeouts: Family::default(),
            pool: PoolFamilies::new(),
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        self.statements.register(
            registry,
            "mysql",
            &StatementHelp {
                queries: "Commands answered by the server, by kind (SELECT, INSERT, UPDATE, DELETE, BEGIN, COMMIT, ROLLBACK, PREPARE, EXECUTE, OTHER)",
                query_duration: "From a command sent to the server to the end of its reply",
                transactions: "Transactions ended (the server's in-transaction status cleared)",
                transaction_duration: "From the command that opened a transaction to the one that ended it",
            },
        );
        registry.register(
            "mysql_errors",
            "Errors the server answered with, by error code (the common ones; else other)",
            self.errors.clone(),
        );
        registry.register(
            "mysql_pinned",
            "Transaction-mode sessions that kept their server connection for good, by what pinned them",
            self.pinned.clone(),
        );
        registry.register(
            "mysql_query_timeouts",
            "Queries attache interrupted (KILL QUERY) for running past query_timeout",
            self.query_timeouts.clone(),
        );
        self.pool.register(registry, "mysql");
    }

    pub(super) fn mysql(&self, listener: &str) -> MysqlMetrics {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        MysqlMetrics {
            listener: listener.to_owned(),
            statements: self.statements.listener(listener, &MYSQL_COMMANDS),
            errors: self.errors.clone(),
            pinned: MysqlPin::ALL.map(|pin| {
                self.pinned
                    .get_or_create(&ReasonLabels {
                        listener: listener.to_owned(),
                        reason: pin.label(),
                    })
                    .clone()
            }),
            query_timeouts: self.query_timeouts.get_or_create(&labels).clone(),
            pool: self.pool.listener(listener),
        }
    }
}

/// One MySQL listener's handles.
#[derive(Clone)]
pub(crate) struct MysqlMetrics {
    listener: String,
    /// Commands by [`MYSQL_COMMANDS`], transactions, their durations.
    pub(crate) statements: StatementMetrics,
    errors: Family<CodeLabels, Counter>,
    /// By [`MysqlPin::ALL`] index.
    pinned: [Counter; 10],
    pub(crate) query_timeouts: Counter,
    /// The listener's pools.
    pub(crate) pool: PoolMetrics,
}

impl MysqlMetrics {
    /// Counts an error by its code.
    pub(crate) fn error(&self, code: u16) {
        let code = if ERROR_CODES.contains(&code) {
            code.to_string()
        } else {
            "other".to_owned()
        };
        self.errors
            .get_or_create(&CodeLabels {
                listener: self.listener.clone(),
                code,
            })
            .inc();
    }

    pub(crate) fn pinned(&self, reason: MysqlPin) {
        let index = MysqlPin::ALL
            .iter()
            .position(|pin| *pin == reason)
            .unwrap_or_default();
        self.pinned[index].inc();
    }
}
