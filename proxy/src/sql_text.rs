//! SQL text for spans (`db.query.text`, opt-in with `trace_query_text`,
//! for Postgres and MySQL statements): every literal a query carries
//! replaced by `?`, so values (a password in an `ALTER ROLE`, a customer's
//! e-mail in a `WHERE`) never leave attache.
//!
//! Replaced: string constants (`'...'` with `''` inside; Postgres'
//! `E'...'` with backslash escapes, `B'...'`, `X'...'`, `U&'...'` and
//! dollar-quoted strings (`$$...$$`, `$tag$...$tag$`); MySQL's `'...'` and
//! `"..."` with backslash escapes, `X'...'`, `B'...'`, `N'...'`) and
//! numbers (`42`, `3.5e-3`, `0x1F`, `.5`). Comments are dropped (they can
//! hold anything: `--`, `/* */`, and MySQL's `#`), and trailing blanks.
//! Identifiers (Postgres' `"quoted"`, MySQL's `` `quoted` ``), keywords,
//! operators and parameters (`$1`, `?`) stay. The result is cut at
//! [`MAX_TEXT`] bytes. A lexer, not a parser: text it does not understand
//! is kept only where it cannot be a literal.

/// Whose SQL it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Postgres,
    Mysql,
}

/// The longest text a span carries.
pub(crate) const MAX_TEXT: usize = 2048;

/// `sql` with its literals replaced by `?` and comments removed.
pub(crate) fn sanitize(sql: &[u8], dialect: Dialect) -> String {
    let mysql = dialect == Dialect::Mysql;
    let sql = String::from_utf8_lossy(sql);
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(bytes.len().min(MAX_TEXT));
    let mut at = 0;
    while at < bytes.len() && out.len() < MAX_TEXT {
        let byte = bytes[at];
        let previous_is_word = at > 0 && is_word(bytes[at - 1]);
        match byte {
            b'\'' | b'"' if byte == b'\'' || mysql => {
                // A prefix letter (E, B, X, N; U& before it) belongs to the literal.
                let prefix = literal_prefix(&out);
                let escapes = mysql || prefix.eq_ignore_ascii_case("e");
                out.truncate(out.len() - prefix.len());
                at = string_end(bytes, at + 1, byte, escapes);
                out.push('?');
            }
            b'"' | b'`' if (byte == b'"') != mysql => {
                let end = identifier_end(bytes, at + 1, byte);
                out.push_str(&sql[at..end]);
                at = end;
            }
            b'#' if mysql => {
                at = line_end(bytes, at);
                out.push(' ');
            }
            // MySQL's `--` comment needs a blank after it (`a--1` is a minus).
            b'-' if bytes.get(at + 1) == Some(&b'-')
                && (!mysql || bytes.get(at + 2).is_none_or(u8::is_ascii_whitespace)) =>
            {
                at = line_end(bytes, at);
                out.push(' ');
            }
            b'/' if bytes.get(at + 1) == Some(&b'*') => {
                at = block_comment_end(bytes, at + 2);
                out.push(' ');
            }
            b'$' if !mysql && !previous_is_word => match dollar_tag(bytes, at) {
                Some(tag) => {
                    let body = at + tag.len();
                    at = find(bytes, body, tag).map_or(bytes.len(), |end| end + tag.len());
                    out.push('?');
                }
                None => {
                    // A parameter ($1) or an operator: kept as it is.
                    let end = at
                        + 1
                        + bytes[at + 1..]
                            .iter()
                            .take_while(|b| b.is_ascii_digit())
                            .count();
                    out.push_str(&sql[at..end]);
                    at = end;
                }
            },
            b'0'..=b'9' if !previous_is_word => {
                at = number_end(bytes, at);
                out.push('?');
            }
            b'.' if !previous_is_word && bytes.get(at + 1).is_some_and(u8::is_ascii_digit) => {
                at = number_end(bytes, at);
                out.push('?');
            }
            _ => {
                let end = at + utf8_length(byte);
                out.push_str(&sql[at..end.min(bytes.len())]);
                at = end;
            }
        }
    }
    if out.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out.truncate(out.trim_end().len());
    out
}

fn is_word(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte >= 0x80
}

/// The letters just written that make the next quote a special string
/// constant (`E`, `B`, `X`, `U&`), when they stand alone as a word.
fn literal_prefix(out: &str) -> &str {
    let bytes = out.as_bytes();
    let stands_alone =
        |length: usize| bytes.len() == length || !is_word(bytes[bytes.len() - length - 1]);
    if bytes.len() >= 2
        && bytes[bytes.len() - 1] == b'&'
        && bytes[bytes.len() - 2].eq_ignore_ascii_case(&b'u')
        && stands_alone(2)
    {
        return &out[out.len() - 2..];
    }
    match bytes.last() {
        Some(letter) if b"eEbBxXnN".contains(letter) && stands_alone(1) => &out[out.len() - 1..],
        _ => "",
    }
}

/// Where the line comment starting at `at` ends (its newline stays).
fn line_end(bytes: &[u8], at: usize) -> usize {
    bytes[at..]
        .iter()
        .position(|&byte| byte == b'\n')
        .map_or(bytes.len(), |offset| at + offset)
}

/// Just past the string constant quoted with `quote` whose body starts at
/// `at`.
fn string_end(bytes: &[u8], mut at: usize, quote: u8, escapes: bool) -> usize {
    while at < bytes.len() {
        match bytes[at] {
            b'\\' if escapes => at += 2,
            byte if byte == quote && bytes.get(at + 1) == Some(&quote) => at += 2,
            byte if byte == quote => return at + 1,
            _ => at += 1,
        }
    }
    bytes.len()
}

/// Just past the identifier quoted with `quote` whose body starts at `at`.
fn identifier_end(bytes: &[u8], mut at: usize, quote: u8) -> usize {
    while at < bytes.len() {
        match bytes[at] {
            byte if byte == quote && bytes.get(at + 1) == Some(&quote) => at += 2,
            byte if byte == quote => return at + 1,
            _ => at += 1,
        }
    }
    bytes.len()
}

/// Just past the block comment whose body starts at `at` (they nest).
fn block_comment_end(bytes: &[u8], mut at: usize) -> usize {
    let mut depth = 1;
    while at < bytes.len() {
        if bytes[at..].starts_with(b"*/") {
            depth -= 1;
            at += 2;
            if depth == 0 {
                return at;
            }
        } else if bytes[at..].starts_with(b"/*") {
            depth += 1;
            at += 2;
        } else {
            at += 1;
        }
    }
    bytes.len()
}

/// The dollar-quote tag (`$$` or `$name$`) starting at `at`, if one does.
fn dollar_tag(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let rest = &bytes[at + 1..];
    if rest.first().is_none_or(u8::is_ascii_digit) {
        return None;
    }
    let name = rest.iter().take_while(|&&byte| is_word(byte)).count();
    (rest.get(name) == Some(&b'$')).then(|| &bytes[at..at + name + 2])
}

fn find(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    bytes[from..]
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|offset| from + offset)
}

/// Just past the number starting at `at` (digits, a point, an exponent
/// with its sign, hexadecimal, octal or binary digits, `_` separators).
fn number_end(bytes: &[u8], mut at: usize) -> usize {
    while at < bytes.len() {
        let byte = bytes[at];
        let exponent_sign = (byte == b'+' || byte == b'-')
            && bytes[at - 1].eq_ignore_ascii_case(&b'e')
            && !bytes[..at].starts_with(b"0x");
        if byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'_' || exponent_sign {
            at += 1;
        } else {
            break;
        }
    }
    at
}

fn utf8_length(first: u8) -> usize {
    match first {
        0xf0.. => 4,
        0xe0.. => 3,
        0xc0.. => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::{Dialect, sanitize};

    fn clean(sql: &str) -> String {
        sanitize(sql.as_bytes(), Dialect::Postgres)
    }

    fn clean_mysql(sql: &str) -> String {
        sanitize(sql.as_bytes(), Dialect::Mysql)
    }

    #[test]
    fn mysql_strings_comments_and_identifiers() {
        assert_eq!(
            clean_mysql(r#"SELECT `weird 'col'`, "double", 'it\'s', X'ff', 0x1F, 42 FROM t"#),
            "SELECT `weird 'col'`, ?, ?, ?, ?, ? FROM t"
        );
        assert_eq!(
            clean_mysql("SELECT a--1 # secret 'x'\n, 2 -- gone 'y'\n"),
            "SELECT a--?  \n, ?"
        );
        assert_eq!(
            clean_mysql("SELECT $1, a$b FROM t WHERE c = ?"),
            "SELECT $?, a$b FROM t WHERE c = ?"
        );
    }

    #[test]
    fn literals_become_question_marks() {
        assert_eq!(
            clean("SELECT * FROM users WHERE email = 'a@b.c' AND id = 42"),
            "SELECT * FROM users WHERE email = ? AND id = ?"
        );
        assert_eq!(
            clean("select 'it''s', 3.5e-3, .5, 0x1F"),
            "select ?, ?, ?, ?"
        );
        assert_eq!(
            clean(r"select E'a\'b', B'0101', X'ff', U&'d\0061t', N'x'"),
            "select ?, ?, ?, ?, ?"
        );
        assert_eq!(
            clean("ALTER ROLE app PASSWORD 's3cret'"),
            "ALTER ROLE app PASSWORD ?"
        );
        assert_eq!(
            clean("do $body$ begin perform 1; end $body$; select $$x$$"),
            "do ?; select ?"
        );
    }

    #[test]
    fn identifiers_parameters_and_operators_stay() {
        assert_eq!(
            clean("select t1.col2, \"Weird 'name'\" from t1 where a = $1 and b <> $2"),
            "select t1.col2, \"Weird 'name'\" from t1 where a = $1 and b <> $2"
        );
        assert_eq!(clean("select a->>'k' from x1"), "select a->>? from x1");
        assert_eq!(clean("select café, é1 from ü"), "select café, é1 from ü");
    }

    #[test]
    fn comments_go_and_unterminated_literals_end_the_text() {
        assert_eq!(
            clean("select 1 -- secret 'x'\n, /* a /* nested */ 'y' */ 2"),
            "select ?  \n,   ?"
        );
        assert_eq!(clean("select 'never closed"), "select ?");
        assert_eq!(clean("select $tag$ never closed"), "select ?");
    }

    #[test]
    fn long_text_is_cut_on_a_character() {
        let long = format!("select {}", "é".repeat(4000));
        let text = clean(&long);
        assert!(text.len() <= super::MAX_TEXT);
        assert!(text.starts_with("select é"));
    }
}
