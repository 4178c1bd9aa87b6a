//! `${VAR}` and `${VAR:-default}` substitution on the raw configuration text,
//! done before YAML parsing so that any value (ports, durations, counts) can
//! come from the environment, as Kubernetes users pass `DB_HOST` / `DB_PORT`.
//!
//! Rules: `${NAME}` takes the variable and is an error when it is unset;
//! `${NAME:-default}` takes the default when the variable is unset or empty;
//! `$$` is a literal `$`; comments (`#` after whitespace or at line start,
//! outside quotes) are left alone. Substitution never adds lines unless a
//! value holds a newline, so line numbers in later errors stay true.

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

fn interpolate_line(
    line: &str,
    line_number: u64,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
    problems: &mut Vec<Problem>,
) {
    let mut rest = line;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(close) = body.find('}') else {
                problems.push(Problem::new(
                    "",
                    Some(line_number),
                    "unterminated `${`: expected `${NAME}` or `${NAME:-default}` (write `$$` for a literal `$`)",
                ));
                return;
            };
            let reference = &body[..close];
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
            } else {
                match (env(name).filter(|value| default.is_none() || !value.is_empty()), default) {
                    (Some(value), _) => out.push_str(&value),
                    (None, Some(default)) => out.push_str(default),
                    (None, None) => problems.push(Problem::new(
                        "",
                        Some(line_number),
                        format!("environment variable {name} is not set (use `${{{name}:-default}}` to give a default)"),
                    )),
                }
            }
            rest = &body[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
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
