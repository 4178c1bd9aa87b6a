//! What a `COM_QUERY` text is, as far as pooling cares: its kind (the
//! `command` label of `attache_mysql_queries_total`) and whether it leaves
//! session state behind that pins the client to its server connection.
//!
//! The text is read as MySQL reads it: string literals, quoted names and
//! comments are skipped, except `/*! ... */` comments, whose contents
//! MySQL executes. What this misses, the server's own session-state
//! tracking catches (`session_track_state_change`, read from each OK
//! packet): this scan names the reason, the server is the safety net.

use crate::telemetry::metrics::MysqlPin;

/// A statement's kind and what it pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Statement {
    pub(super) kind: &'static str,
    pub(super) pin: Option<MysqlPin>,
    /// A `SET` of replayed session variables only: it pins nothing, and
    /// the values the server reports follow the client to each connection.
    pub(super) replay: bool,
}

impl Statement {
    /// A command other than a query: its kind, and what it pins.
    pub(super) fn command(kind: &'static str, pin: Option<MysqlPin>) -> Self {
        Self {
            kind,
            pin,
            replay: false,
        }
    }
}

/// A word or symbol of the statement text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Word(&'a [u8]),
    /// `@name` (a user variable); `@@name` (a system variable) is not one.
    UserVariable,
    Symbol(u8),
}

/// What `text` is; `replayed`: the session variables a `SET` may change
/// without pinning (`SET NAMES` changes the four `character_set_*` and
/// `collation_connection` ones).
pub(super) fn scan(text: &[u8], replayed: &[String]) -> Statement {
    let tokens = tokens(text);
    let word = |index: usize| match tokens.get(index) {
        Some(Token::Word(word)) => Some(*word),
        _ => None,
    };
    let is = |index: usize, keyword: &str| {
        word(index).is_some_and(|word| word.eq_ignore_ascii_case(keyword.as_bytes()))
    };
    let first = tokens
        .iter()
        .position(|token| !matches!(token, Token::Symbol(b'(')))
        .unwrap_or(0);
    let kind = match word(first).map(<[u8]>::to_ascii_uppercase).as_deref() {
        Some(b"SELECT" | b"WITH" | b"VALUES" | b"TABLE") => "SELECT",
        Some(b"INSERT" | b"REPLACE") => "INSERT",
        Some(b"UPDATE") => "UPDATE",
        Some(b"DELETE") => "DELETE",
        Some(b"BEGIN") => "BEGIN",
        Some(b"START") if is(first + 1, "TRANSACTION") => "BEGIN",
        Some(b"COMMIT") => "COMMIT",
        Some(b"ROLLBACK") => "ROLLBACK",
        Some(b"PREPARE") => "PREPARE",
        Some(b"EXECUTE") => "EXECUTE",
        _ => "OTHER",
    };
    if is(first, "SET") {
        if tokens.contains(&Token::UserVariable) {
            return Statement {
                kind,
                pin: Some(MysqlPin::UserVariable),
                replay: false,
            };
        }
        let replay = set_variables(&tokens[first + 1..]).is_some_and(|names| {
            names
                .iter()
                .all(|name| replayed.iter().any(|replayed| replayed == name))
        });
        return Statement {
            kind,
            pin: (!replay).then_some(MysqlPin::Set),
            replay,
        };
    }
    let pin = if is(first, "PREPARE") {
        Some(MysqlPin::Prepare)
    } else if (is(first, "LOCK") && (is(first + 1, "TABLES") || is(first + 1, "TABLE")))
        || (is(first, "FLUSH") && (first..tokens.len()).any(|index| is(index, "LOCK")))
    {
        Some(MysqlPin::LockTables)
    } else {
        tokens
            .iter()
            .enumerate()
            .find_map(|(index, token)| match token {
                Token::UserVariable => Some(MysqlPin::UserVariable),
                Token::Word(word) if word.eq_ignore_ascii_case(b"TEMPORARY") && index > 0 => {
                    is(index - 1, "CREATE").then_some(MysqlPin::TempTable)
                }
                Token::Word(word) if word.eq_ignore_ascii_case(b"GET_LOCK") => {
                    Some(MysqlPin::GetLock)
                }
                Token::Word(word) if word.eq_ignore_ascii_case(b"SQL_CALC_FOUND_ROWS") => {
                    Some(MysqlPin::FoundRows)
                }
                _ => None,
            })
    };
    Statement {
        kind,
        pin,
        replay: false,
    }
}

/// The session variables a `SET`'s assignments (the tokens after `SET`)
/// change, lowercased: `None` for anything else than session variables
/// (`GLOBAL`, `TRANSACTION`, `PASSWORD`, `ROLE`, `STATEMENT ... FOR`...).
fn set_variables(tokens: &[Token<'_>]) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut depth = 0_usize;
    let mut assignment_start = true;
    let mut index = 0;
    while index < tokens.len() {
        let token = tokens[index];
        if assignment_start {
            assignment_start = false;
            let word = |at: usize| match tokens.get(at) {
                Some(Token::Word(word)) => {
                    std::str::from_utf8(word).ok().map(str::to_ascii_lowercase)
                }
                _ => None,
            };
            let mut name = word(index)?;
            if name == "names"
                || (name == "character" && word(index + 1)? == "set")
                || name == "charset"
            {
                names.extend(super::NAMES.map(str::to_owned));
                // `SET NAMES x [COLLATE y]`: the rest of the assignment is
                // its value.
                index += 1;
                continue;
            }
            if name == "session" || name == "local" {
                index += 1;
                name = word(index)?;
            }
            let name = name
                .strip_prefix("session.")
                .or_else(|| name.strip_prefix("local."))
                .unwrap_or(&name)
                .to_owned();
            if name.contains('.')
                || [
                    "global",
                    "transaction",
                    "password",
                    "role",
                    "default",
                    "statement",
                    "persist",
                    "persist_only",
                ]
                .contains(&name.as_str())
            {
                return None;
            }
            // `=` or `:=` must follow the name.
            match (tokens.get(index + 1), tokens.get(index + 2)) {
                (Some(Token::Symbol(b'=')), _) => index += 2,
                (Some(Token::Symbol(b':')), Some(Token::Symbol(b'='))) => index += 3,
                _ => return None,
            }
            names.push(name);
            continue;
        }
        match token {
            Token::Symbol(b'(') => depth += 1,
            Token::Symbol(b')') => depth = depth.saturating_sub(1),
            Token::Symbol(b',') if depth == 0 => assignment_start = true,
            _ => {}
        }
        index += 1;
    }
    (!names.is_empty() && !assignment_start).then_some(names)
}

fn tokens(text: &[u8]) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut at = 0;
    while let Some(&byte) = text.get(at) {
        match byte {
            b'\'' | b'"' | b'`' => at = past_quoted(text, at),
            b'#' => at = past_line(text, at),
            b'-' if text.get(at + 1) == Some(&b'-')
                && text.get(at + 2).is_none_or(u8::is_ascii_whitespace) =>
            {
                at = past_line(text, at);
            }
            // `/*! ... */` is code MySQL runs (and MariaDB's `/*M! ... */`):
            // its contents are read as statement text.
            b'/' if text.get(at + 1) == Some(&b'*') => {
                let executable = text.get(at + 2) == Some(&b'!')
                    || (text.get(at + 2) == Some(&b'M') && text.get(at + 3) == Some(&b'!'));
                if executable {
                    at += 3;
                    // The optional version number is not a word.
                    while text.get(at).is_some_and(u8::is_ascii_digit) {
                        at += 1;
                    }
                } else {
                    at = text[at + 2..]
                        .windows(2)
                        .position(|pair| pair == b"*/")
                        .map_or(text.len(), |end| at + 2 + end + 2);
                }
            }
            b'*' if text.get(at + 1) == Some(&b'/') => at += 2,
            b'@' => {
                if text.get(at + 1) == Some(&b'@') {
                    // A system variable: its name is a word of its own.
                    at += 2;
                } else {
                    tokens.push(Token::UserVariable);
                    at += 1;
                    match text.get(at) {
                        Some(b'\'' | b'"' | b'`') => at = past_quoted(text, at),
                        _ => at = past_word(text, at),
                    }
                }
            }
            byte if is_word_byte(byte) => {
                let end = past_word(text, at);
                tokens.push(Token::Word(&text[at..end]));
                at = end;
            }
            byte if byte.is_ascii_whitespace() => at += 1,
            byte => {
                tokens.push(Token::Symbol(byte));
                at += 1;
            }
        }
    }
    tokens
}

fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || byte >= 0x80
}

fn past_word(text: &[u8], mut at: usize) -> usize {
    while text
        .get(at)
        .is_some_and(|byte| is_word_byte(*byte) || *byte == b'.')
    {
        at += 1;
    }
    at
}

fn past_line(text: &[u8], at: usize) -> usize {
    text[at..]
        .iter()
        .position(|byte| *byte == b'\n')
        .map_or(text.len(), |end| at + end + 1)
}

/// Past a quoted string or name starting at `at`: a backslash escapes the
/// next byte in strings, a doubled quote stands for itself.
fn past_quoted(text: &[u8], at: usize) -> usize {
    let quote = text[at];
    let mut index = at + 1;
    while let Some(&byte) = text.get(index) {
        if byte == b'\\' && quote != b'`' {
            index += 2;
        } else if byte == quote {
            if text.get(index + 1) == Some(&quote) {
                index += 2;
            } else {
                return index + 1;
            }
        } else {
            index += 1;
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replayed() -> Vec<String> {
        [
            "character_set_client",
            "character_set_connection",
            "character_set_results",
            "collation_connection",
            "time_zone",
            "sql_mode",
            "autocommit",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn pin(text: &str) -> Option<MysqlPin> {
        scan(text.as_bytes(), &[]).pin
    }

    #[test]
    fn a_set_of_replayed_variables_only_pins_nothing() {
        for text in [
            "SET time_zone = '+05:00'",
            "set names utf8mb4 collate utf8mb4_unicode_ci",
            "SET CHARACTER SET latin1",
            "SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES'), autocommit = 0",
            "SET @@session.time_zone = 'UTC', @@autocommit := 1",
            "SET LOCAL time_zone = DEFAULT",
        ] {
            let statement = scan(text.as_bytes(), &replayed());
            assert_eq!((statement.pin, statement.replay), (None, true), "{text}");
        }
        for (text, expected) in [
            ("SET time_zone = '+05:00', wait_timeout = 10", MysqlPin::Set),
            ("SET GLOBAL time_zone = '+05:00'", MysqlPin::Set),
            ("SET @@global.sql_mode = ''", MysqlPin::Set),
            (
                "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
                MysqlPin::Set,
            ),
            ("SET time_zone = '+05:00', @x = 1", MysqlPin::UserVariable),
            ("SET PASSWORD = 'x'", MysqlPin::Set),
            ("SET time_zone", MysqlPin::Set),
        ] {
            let statement = scan(text.as_bytes(), &replayed());
            assert_eq!(
                (statement.pin, statement.replay),
                (Some(expected), false),
                "{text}"
            );
        }
    }

    #[test]
    fn statements_are_counted_by_their_first_keyword() {
        for (text, kind) in [
            ("select 1", "SELECT"),
            ("  /* hint */ (SELECT 1) UNION (SELECT 2)", "SELECT"),
            ("WITH x AS (SELECT 1) SELECT * FROM x", "SELECT"),
            ("insert into t values (1)", "INSERT"),
            ("REPLACE INTO t VALUES (1)", "INSERT"),
            ("update t set a = 1", "UPDATE"),
            ("delete from t", "DELETE"),
            ("START TRANSACTION READ ONLY", "BEGIN"),
            ("begin", "BEGIN"),
            ("commit", "COMMIT"),
            ("ROLLBACK", "ROLLBACK"),
            ("prepare s from 'select 1'", "PREPARE"),
            ("EXECUTE s", "EXECUTE"),
            ("SHOW TABLES", "OTHER"),
            ("-- a comment\nSELECT 1", "SELECT"),
        ] {
            assert_eq!(scan(text.as_bytes(), &[]).kind, kind, "{text}");
        }
    }

    #[test]
    fn session_state_pins_and_its_lookalikes_do_not() {
        for (text, expected) in [
            ("SET time_zone = '+00:00'", Some(MysqlPin::Set)),
            ("set names utf8mb4", Some(MysqlPin::Set)),
            (
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                Some(MysqlPin::Set),
            ),
            ("SET @x = 1", Some(MysqlPin::UserVariable)),
            ("SELECT @x := 5", Some(MysqlPin::UserVariable)),
            (
                "SELECT a INTO @`quoted var` FROM t",
                Some(MysqlPin::UserVariable),
            ),
            (
                "CREATE TEMPORARY TABLE t (a INT)",
                Some(MysqlPin::TempTable),
            ),
            ("LOCK TABLES t WRITE", Some(MysqlPin::LockTables)),
            ("FLUSH TABLES WITH READ LOCK", Some(MysqlPin::LockTables)),
            ("flush tables t with read lock", Some(MysqlPin::LockTables)),
            ("SELECT GET_LOCK('a', 10)", Some(MysqlPin::GetLock)),
            ("PREPARE s FROM 'SELECT 1'", Some(MysqlPin::Prepare)),
            (
                "SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1",
                Some(MysqlPin::FoundRows),
            ),
            (
                "/*!40101 SET @OLD = @@CHARACTER_SET_CLIENT */",
                Some(MysqlPin::UserVariable),
            ),
            ("SELECT @@session.time_zone", None),
            ("INSERT INTO users VALUES ('a@example.com', \"b@c\")", None),
            ("SELECT 1 -- SET @x = 1", None),
            ("SELECT 1 /* GET_LOCK('a', 1) */", None),
            ("SELECT 'it''s @x', `col@x` FROM t", None),
            ("SELECT 'back\\'slash @x'", None),
            ("CREATE TABLE temporary_things (a INT)", None),
            ("SELECT * FROM t WHERE name = 'LOCK TABLES'", None),
            ("USE other", None),
        ] {
            assert_eq!(pin(text), expected, "{text}");
        }
    }
}
