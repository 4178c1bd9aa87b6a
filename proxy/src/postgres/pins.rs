//! What a statement's text does to its session beyond its transaction, read
//! from the SQL the client sends (simple `Query` and `Parse`).
//!
//! In transaction mode a session that leaves state on its server
//! connection keeps that connection for the rest of its life (pinned)
//! instead of handing the state to the next client: `SET`/`RESET` (not
//! `SET LOCAL`, not `SET TRANSACTION`), `LISTEN`, session advisory locks,
//! SQL `PREPARE`, `DECLARE ... WITH HOLD`, temporary tables, `LOAD`.
//! `DISCARD ALL` and `DEALLOCATE ALL` drop the connection's prepared
//! statements and settings, which attache must then forget too.
//!
//! The reading is deliberately simple: statements split at `;`, leading
//! comments skipped, keywords compared case-insensitively. A keyword
//! inside a string literal may pin a session that did not need it (safe);
//! state made inside a function body (`EXECUTE 'SET ...'` in PL/pgSQL) is
//! not seen, except through the `ParameterStatus` the server reports.

use crate::telemetry::metrics::PinReason;

/// What a statement does to its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionEffect {
    /// It leaves state on the server connection.
    Pin(PinReason),
    /// It drops the connection's prepared statements (and, for `DISCARD
    /// ALL`, its settings).
    Discard,
}

/// The first effect among the statements of `sql`.
pub(super) fn effect(sql: &[u8]) -> Option<SessionEffect> {
    let lowered = String::from_utf8_lossy(sql).to_ascii_lowercase();
    if lowered.contains("pg_advisory_lock") || lowered.contains("pg_try_advisory_lock") {
        return Some(SessionEffect::Pin(PinReason::AdvisoryLock));
    }
    lowered
        .split(';')
        .find_map(|statement| statement_effect(skip_comments(statement)))
}

fn statement_effect(statement: &str) -> Option<SessionEffect> {
    let words: Vec<&str> = statement.split_whitespace().take(4).collect();
    let pin = |reason| Some(SessionEffect::Pin(reason));
    match words.as_slice() {
        ["set", "local" | "transaction", ..] => None,
        ["set" | "reset", ..] => pin(PinReason::Set),
        ["listen", ..] => pin(PinReason::Listen),
        ["prepare", ..] => pin(PinReason::Prepare),
        ["load", ..] => pin(PinReason::Load),
        ["declare", ..] if statement.contains("with hold") => pin(PinReason::HoldCursor),
        ["create", "temp" | "temporary", ..]
        | ["create", "local" | "global", "temp" | "temporary", ..] => pin(PinReason::TempTable),
        ["create", "unlogged", ..] => None,
        ["discard", "all" | "plans", ..] | ["deallocate", "all", ..] => {
            Some(SessionEffect::Discard)
        }
        ["deallocate", "prepare", "all", ..] => Some(SessionEffect::Discard),
        _ => None,
    }
}

/// `statement` without the whitespace and comments before its first word.
fn skip_comments(mut statement: &str) -> &str {
    loop {
        statement = statement.trim_start();
        if let Some(rest) = statement.strip_prefix("--") {
            statement = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = statement.strip_prefix("/*") {
            statement = rest.split_once("*/").map_or("", |(_, after)| after);
        } else {
            return statement;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(sql: &str) -> Option<PinReason> {
        match effect(sql.as_bytes()) {
            Some(SessionEffect::Pin(reason)) => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn session_state_pins_and_transaction_state_does_not() {
        assert_eq!(pin("SET search_path TO app"), Some(PinReason::Set));
        assert_eq!(
            pin("  /* x */ -- y\n set TimeZone = 'UTC'"),
            Some(PinReason::Set)
        );
        assert_eq!(pin("RESET ALL"), Some(PinReason::Set));
        assert_eq!(pin("SET LOCAL search_path TO app"), None);
        assert_eq!(pin("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"), None);
        assert_eq!(
            pin("BEGIN; SET statement_timeout = 5"),
            Some(PinReason::Set)
        );
        assert_eq!(pin("LISTEN jobs"), Some(PinReason::Listen));
        assert_eq!(
            pin("SELECT pg_advisory_lock(42)"),
            Some(PinReason::AdvisoryLock)
        );
        assert_eq!(
            pin("SELECT pg_try_advisory_lock_shared(1)"),
            Some(PinReason::AdvisoryLock)
        );
        assert_eq!(pin("SELECT pg_advisory_xact_lock(42)"), None);
        assert_eq!(pin("PREPARE q AS SELECT 1"), Some(PinReason::Prepare));
        assert_eq!(
            pin("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
            Some(PinReason::HoldCursor)
        );
        assert_eq!(pin("DECLARE c CURSOR FOR SELECT 1"), None);
        assert_eq!(
            pin("CREATE TEMP TABLE t (a int)"),
            Some(PinReason::TempTable)
        );
        assert_eq!(
            pin("create local temporary table t (a int)"),
            Some(PinReason::TempTable)
        );
        assert_eq!(pin("CREATE TABLE t (a int)"), None);
        assert_eq!(pin("LOAD 'auto_explain'"), Some(PinReason::Load));
        assert_eq!(pin("SELECT 'set me'"), None);
        assert_eq!(pin("UPDATE settings SET a = 1"), None);
    }

    #[test]
    fn discarding_is_told_apart() {
        assert_eq!(effect(b"DISCARD ALL"), Some(SessionEffect::Discard));
        assert_eq!(effect(b"deallocate all"), Some(SessionEffect::Discard));
        assert_eq!(effect(b"DEALLOCATE q"), None);
    }
}
