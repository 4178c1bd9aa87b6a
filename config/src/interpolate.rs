//! `${VAR}` and `${VAR:-default}` substitution on the raw configuration text,
//! done before YAML parsing so that any value (ports, durations, counts) can
//! come from the environment, as Kubernetes users pass `DB_HOST` / `DB_PORT`.
//!
//! Rules: `${NAME}` takes the variable and is an error when it is unset;
//! `${NAME:-default}` takes the default when the variable is unset or empty;
//! `$$` is a literal `$`; comments (`#` after whitespace or at line start,
//! outside quotes) are left alone.
//!
//! A value is always one scalar: it can never add a key, a list item or a
//! document, whatever it holds. It is escaped for where the reference
//! stands: inside double quotes (`\`, `"` and control characters escaped),
//! inside single quotes (`'` doubled; a line break there is an error, as a
//! single-quoted scalar cannot carry one), or unquoted, where a value of
//! plain characters (letters, digits, `-_./:@%+=~`, as ports, hosts, URLs
//! and durations are) goes in as it is, so `${PORT}` stays a number; any
//! other value becomes a double-quoted string when the reference is the
//! whole scalar, and is an error when it is part of a longer unquoted one.
//! Substitution never adds lines, so line numbers in later errors stay true.

use crate::error::Problem;

/// Returns `text` with every reference replaced from `env`.
///
/// # Errors
/// One [`Problem`] per unset variable without default, malformed reference
/// or invalid variable name, each with its line.
pub fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<Problem>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let line_number = index as u64 + 1;
        let (content, comment) = split_comment(line);
        interpolate_line(content, line_number, env, &mut out, &mut problems);
        out.push_str(comment);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Splits a line into the part that may hold references and a trailing
/// comment (which may also hold the line break).
fn split_comment(line: &str) -> (&str, &str) {
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for (at, character) in line.char_indices() {
        match (quote, character) {
            (None, '\'' | '"') => quote = Some(character),
            (Some(open), _) if character == open => quote = None,
            (None, '#') if previous.is_whitespace() => return line.split_at(at),
            _ => {}
        }
        previous = character;
    }
    (line, "")
}

/// Where a reference stands in its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Plain,
    SingleQuoted,
    DoubleQuoted,
}

fn interpolate_line(
    line: &str,
    line_number: u64,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
    problems: &mut Vec<Problem>,
) {
    let mut context = Context::Plain;
    let mut characters = line.char_indices().peekable();
    // Where this line starts in `out`.
    let line_start = out.len();
    while let Some((at, character)) = characters.next() {
        match (context, character) {
            // A quote opens a quoted scalar only where a scalar starts.
            (Context::Plain, '\'') if scalar_starts(&out[line_start..]) => {
                context = Context::SingleQuoted;
            }
            (Context::Plain, '"') if scalar_starts(&out[line_start..]) => {
                context = Context::DoubleQuoted;
            }
            (Context::SingleQuoted, '\'') => context = Context::Plain,
            (Context::DoubleQuoted, '"') => context = Context::Plain,
            (Context::DoubleQuoted, '\\') => {
                out.push(character);
                if let Some((_, escaped)) = characters.next() {
                    out.push(escaped);
                }
                continue;
            }
            (_, '$') => {
                let after = &line[at + 1..];
                if after.starts_with('$') {
                    characters.next();
                    out.push('$');
                    continue;
                }
                if let Some(body) = after.strip_prefix('{') {
                    let Some(close) = body.find('}') else {
                        problems.push(Problem::new(
                            "",
                            Some(line_number),
                            "unterminated `${`: expected `${NAME}` or `${NAME:-default}` (write `$$` for a literal `$`)",
                        ));
                        return;
                    };
                    let reference = &body[..close];
                    let rest = &body[close + 1..];
                    if let Some(value) = resolve(reference, line_number, env, problems) {
                        let whole_scalar = stands_alone(&out[line_start..], rest);
                        match insert(&value, context, whole_scalar) {
                            Ok(text) => out.push_str(&text),
                            Err(why) => problems.push(Problem::new(
                                "",
                                Some(line_number),
                                format!("the value of `${{{reference}}}` {why}"),
                            )),
                        }
                    }
                    // Skip the reference: `${`, its body and `}`.
                    let end = at + 1 + 1 + close + 1;
                    while characters.peek().is_some_and(|(next, _)| *next < end) {
                        characters.next();
                    }
                    continue;
                }
            }
            _ => {}
        }
        out.push(character);
    }
}

/// The value of `reference` (`NAME` or `NAME:-default`), or `None` with a
/// problem recorded.
fn resolve(
    reference: &str,
    line_number: u64,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let (name, default) = match reference.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (reference, None),
    };
    if !is_variable_name(name) {
        problems.push(Problem::new(
            "",
            Some(line_number),
            format!("`${{{reference}}}` is not a valid reference: a name is letters, digits and `_`, not starting with a digit"),
        ));
        return None;
    }
    match (
        env(name).filter(|value| default.is_none() || !value.is_empty()),
        default,
    ) {
        (Some(value), _) => Some(value),
        (None, Some(default)) => Some(default.to_owned()),
        (None, None) => {
            problems.push(Problem::new(
                "",
                Some(line_number),
                format!("environment variable {name} is not set (use `${{{name}:-default}}` to give a default)"),
            ));
            None
        }
    }
}

/// Whether an unquoted reference is a whole scalar: nothing of the scalar
/// before it on its line (after a key's `:`, a list's `-`, a flow's `[`,
/// `{` or `,`) and nothing after it but a comment or a flow's `,`, `]`, `}`.
fn stands_alone(before: &str, after: &str) -> bool {
    let after = after.trim_start();
    scalar_starts(before) && (after.is_empty() || after.starts_with(['#', ',', ']', '}']))
}

/// Whether a scalar starts after `before` (the line so far): at the line's
/// start, after a key's `: `, a list's `- `, a complex key's `? `, or
/// after a flow collection's `[`, `{` or `,`.
fn scalar_starts(before: &str) -> bool {
    let trimmed = before.trim_end();
    let spaced = trimmed.len() < before.len();
    trimmed.is_empty()
        || (spaced && trimmed.ends_with([':', '-', '?']))
        || trimmed.ends_with(['[', '{', ','])
}

/// Letters, digits and the punctuation of hosts, ports, URLs and durations:
/// unquoted, such a value is one scalar, as the author wrote it.
fn is_plain(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || "-_./:@%+=~".contains(character))
        && !value.ends_with(':')
}

/// `value` as text for its context, never more than one scalar.
fn insert(value: &str, context: Context, whole_scalar: bool) -> Result<String, &'static str> {
    match context {
        Context::DoubleQuoted => Ok(escape_double_quoted(value)),
        Context::SingleQuoted if value.chars().any(char::is_control) => Err(
            "holds a line break or control character, which a single-quoted YAML string cannot carry; use double quotes",
        ),
        Context::SingleQuoted => Ok(value.replace('\'', "''")),
        Context::Plain if is_plain(value) => Ok(value.to_owned()),
        Context::Plain if whole_scalar => Ok(format!("\"{}\"", escape_double_quoted(value))),
        Context::Plain => Err(
            "holds characters that cannot stand unquoted inside a longer value; put the whole value in double quotes",
        ),
    }
}

/// The text of `value` inside a double-quoted YAML scalar.
fn escape_double_quoted(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for character in value.chars() {
        match character {
            '"' => escaped.push_str("\\\""),
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            control if control.is_control() => {
                escaped.push_str(&format!("\\u{:04x}", u32::from(control)));
            }
            other => escaped.push(other),
        }
    }
    escaped
}

fn is_variable_name(name: &str) -> bool {
    let mut characters = name.chars();
    matches!(characters.next(), Some(first) if first == '_' || first.is_ascii_alphabetic())
        && characters.all(|character| character == '_' || character.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "DB_HOST" => Some("mariadb.prod".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_set_variables_and_defaults() {
        let text = "a: ${DB_HOST}:${DB_PORT:-3306}\nb: ${EMPTY:-fallback}\n";
        assert_eq!(
            interpolate(text, &env).unwrap(),
            "a: mariadb.prod:3306\nb: fallback\n"
        );
    }

    #[test]
    fn dollar_dollar_is_a_literal_dollar_and_lone_dollars_pass() {
        assert_eq!(interpolate("p: $${X} $5\n", &env).unwrap(), "p: ${X} $5\n");
    }

    #[test]
    fn comments_are_not_interpolated() {
        let text = "a: 1 # uses ${UNSET}\n# ${ALSO_UNSET}\nb: \"x # ${DB_HOST}\"\n";
        assert_eq!(
            interpolate(text, &env).unwrap(),
            "a: 1 # uses ${UNSET}\n# ${ALSO_UNSET}\nb: \"x # mariadb.prod\"\n"
        );
    }

    /// The configuration `text` parses to with `INJECTED` set to `value`.
    fn parsed(text: &str, value: &str) -> Result<crate::Config, crate::ConfigError> {
        let value = value.to_owned();
        crate::parse(text, "test", &move |name| {
            (name == "INJECTED").then(|| value.clone())
        })
    }

    const INJECTION: &str =
        "x\nadmin: {listen: 0.0.0.0:9901, shutdown_endpoint: true}\nlisteners: []\n#";

    #[test]
    fn no_value_can_add_a_key_an_item_or_a_document() {
        let base = |line: &str| {
            format!(
                "listeners:\n  - name: a\n    listen: 127.0.0.1:7000\n    protocol: tcp\n    upstream: db\n\
                 upstreams:\n  db:\n    endpoints: [\"127.0.0.1:3306\"]\n{line}"
            )
        };
        for (case, line) in [
            ("plain", "tracing: {service_name: ${INJECTED}}\n"),
            (
                "double-quoted",
                "tracing: {service_name: \"${INJECTED}\"}\n",
            ),
            ("block plain", "tracing:\n  service_name: ${INJECTED}\n"),
            (
                "block double-quoted",
                "tracing:\n  service_name: \"svc-${INJECTED}\"\n",
            ),
        ] {
            for value in [
                INJECTION.to_owned(),
                INJECTION.replace('x', "x\""),
                INJECTION.replace('x', "x'"),
                "x\"}, admin: {shutdown_endpoint: true}, y: {\"".to_owned(),
                "x\n---\nadmin: {shutdown_endpoint: true}".to_owned(),
            ] {
                let config = parsed(&base(line), &value)
                    .unwrap_or_else(|error| panic!("{case}: {value:?}: {error}"));
                assert!(!config.admin.shutdown_endpoint, "{case}: {value:?}");
                assert_eq!(config.listeners.len(), 1, "{case}: {value:?}");
                let name = config.tracing.service_name.clone();
                assert!(name.ends_with(&value), "{case}: {name:?} holds {value:?}");
            }
        }
    }

    #[test]
    fn values_that_cannot_be_one_scalar_where_they_stand_are_errors() {
        let text = "listeners:\n  - name: a\n    listen: 127.0.0.1:${INJECTED}\n";
        let error = parsed(text, "1\nadmin: {}").unwrap_err().to_string();
        assert!(error.contains("cannot stand unquoted"), "{error}");
        let text = "listeners:\n  - name: '${INJECTED}'\n";
        let error = parsed(text, "a\nb").unwrap_err().to_string();
        assert!(error.contains("single-quoted"), "{error}");
    }

    #[test]
    fn plain_values_keep_their_type_and_quotes_keep_their_meaning() {
        let text = "x: ${A}\ny: \"${B}\"\nz: '${C}'\nw: [${A}, ${D}]\n";
        let env = |name: &str| match name {
            "A" => Some("5432".to_owned()),
            "B" => Some("say \"hi\"\\".to_owned()),
            "C" => Some("it's".to_owned()),
            "D" => Some("a b".to_owned()),
            _ => None,
        };
        assert_eq!(
            interpolate(text, &env).unwrap(),
            "x: 5432\ny: \"say \\\"hi\\\"\\\\\"\nz: 'it''s'\nw: [5432, \"a b\"]\n"
        );
    }

    #[test]
    fn every_unset_variable_is_reported_with_its_line() {
        let problems =
            interpolate("a: ${ONE}\nb: ok\nc: ${TWO} ${3X}\nd: ${open\n", &env).unwrap_err();
        let lines: Vec<_> = problems.iter().map(|problem| problem.line).collect();
        assert_eq!(lines, vec![Some(1), Some(3), Some(3), Some(4)]);
        assert!(problems[0].message.contains("ONE is not set"));
        assert!(problems[2].message.contains("not a valid reference"));
        assert!(problems[3].message.contains("unterminated"));
    }
}
