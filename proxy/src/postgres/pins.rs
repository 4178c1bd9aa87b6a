//! What a statement's text does to its session beyond its transaction, read
//! from the SQL the client sends (simple `Query` and `Parse`).
//!
//! In transaction mode a session that leaves state on its server
//! connection keeps that connection for the rest of its life (pinned)
//! instead of handing the state to the next client: `SET`/`RESET` (not
//! `SET LOCAL`, not `SET TRANSACTION`), `LISTEN`, session advisory locks,
//! SQL `PREPARE`, `DECLARE ... WITH HOLD`, temporary tables, `LOAD`.
//! `DISCARD ALL` and `DEALLOCATE ALL` drop the connection's prepared
//! statements and settings, which attache must then forget too. A query
//! that is only `DEALLOCATE name` ([`deallocated`]) may name a statement
//! the client prepared with `Parse`, which the server knows by attache's
//! name: the session answers it itself.
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

/// The statement name of a query that is one `DEALLOCATE [PREPARE] name`
/// and nothing more, as the server reads the name: folded to lower case
/// unless quoted (pgx sends both forms). `DEALLOCATE ALL` is not one.
pub(super) fn deallocated(sql: &[u8]) -> Option<Vec<u8>> {
    let sql = std::str::from_utf8(sql).ok()?;
    let rest = keyword(sql, "deallocate")?;
    let rest = keyword(rest, "prepare").unwrap_or(rest);
    let rest = skip_comments(rest);
    let (name, rest) = if rest.starts_with('"') {
        crate::userlist::quoted(rest).filter(|(name, _)| !name.is_empty())?
    } else {
        let end = rest.find(|c: char| !word_char(c)).unwrap_or(rest.len());
        let name = rest[..end].to_ascii_lowercase();
        let starts_well = name.starts_with(|c: char| c.is_alphabetic() || c == '_');
        if !starts_well || name == "all" {
            return None;
        }
        (name, &rest[end..])
    };
    let rest = skip_comments(rest);
    let rest = rest.strip_prefix(';').unwrap_or(rest);
    skip_comments(rest).is_empty().then(|| name.into_bytes())
}

/// `text` after `word` (any case) and the comments before it, when `word`
/// is a whole word there.
fn keyword<'a>(text: &'a str, word: &str) -> Option<&'a str> {
    let text = skip_comments(text);
    let rest = text
        .get(..word.len())
        .filter(|head| head.eq_ignore_ascii_case(word))
        .map(|_| &text[word.len()..])?;
    (!rest.starts_with(word_char)).then_some(rest)
}

/// Whether `c` can go on a word (keyword or unquoted name).
fn word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
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

    #[test]
    fn a_query_of_one_deallocate_names_its_statement_as_the_server_reads_it() {
        let name = |sql: &str| deallocated(sql.as_bytes()).map(String::from_utf8);
        assert_eq!(name("deallocate lrupsc_1_0"), Some(Ok("lrupsc_1_0".into())));
        assert_eq!(name("DEALLOCATE PREPARE Q1;"), Some(Ok("q1".into())));
        assert_eq!(
            name(" /* pgx */ deallocate \"Mine\" ; "),
            Some(Ok("Mine".into()))
        );
        assert_eq!(name("deallocate \"a\"\"b\""), Some(Ok("a\"b".into())));
        for other in [
            "deallocate all",
            "DEALLOCATE PREPARE ALL",
            "deallocate q; select 1",
            "deallocate",
            "deallocate \"\"",
            "deallocate \"open",
            "deallocatex q",
            "select 'deallocate q'",
            "deallocate 1q",
        ] {
            assert_eq!(name(other), None, "{other}");
        }
    }
}
