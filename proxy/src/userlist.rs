//! A file of database users in PgBouncer's `auth_file` format (the
//! `users_file` of both database ambassadors), so a userlist an operator
//! already has (or a Kubernetes Secret with one) serves as it is: one user
//! per line, `"name" "password or verifier"`, a `"` inside a field written
//! twice; blank lines and lines starting with `;` or `#` are skipped, and
//! so is anything after the second field.

use std::path::Path;

/// The users in the file at `path`, in file order.
///
/// # Errors
/// A message naming the file (and the line) when it cannot be read or a
/// line is not two quoted fields.
pub(crate) fn read(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    parse(&text).map_err(|(line, message)| format!("line {line} of {}: {message}", path.display()))
}

/// The users in `text`, or the first bad line's number and what is wrong.
fn parse(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut users = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let expected = || {
            (
                index + 1,
                "expected two quoted fields, \"name\" \"password or SCRAM verifier\"".to_owned(),
            )
        };
        let (name, rest) = quoted(line).ok_or_else(expected)?;
        let (secret, _) = quoted(rest.trim_start()).ok_or_else(expected)?;
        if name.is_empty() {
            return Err((index + 1, "the user name is empty".to_owned()));
        }
        users.push((name, secret));
    }
    Ok(users)
}

/// A leading `"..."` field (`""` inside it is one `"`) and what follows it:
/// PgBouncer's userlist quoting, which is also SQL's for identifiers.
pub(crate) fn quoted(text: &str) -> Option<(String, &str)> {
    let mut rest = text.strip_prefix('"')?;
    let mut field = String::new();
    loop {
        let end = rest.find('"')?;
        field.push_str(&rest[..end]);
        rest = &rest[end + 1..];
        match rest.strip_prefix('"') {
            Some(after) => {
                field.push('"');
                rest = after;
            }
            None => return Some((field, rest)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbouncer_userlists_are_read() {
        let text = "; made by ops\n\n\"app\" \"s3cret\"\n# a comment\n  \"say \"\"hi\"\"\" \"SCRAM-SHA-256$4096:c2FsdA==$a:b\" \"\"\n";
        assert_eq!(
            parse(text).unwrap(),
            [
                ("app".to_owned(), "s3cret".to_owned()),
                (
                    "say \"hi\"".to_owned(),
                    "SCRAM-SHA-256$4096:c2FsdA==$a:b".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn a_bad_line_is_named() {
        assert_eq!(parse("\"app\" \"ok\"\napp secret\n").unwrap_err().0, 2);
        assert_eq!(parse("\"app\" \"unterminated\n").unwrap_err().0, 1);
        assert_eq!(parse("\"app\"\n").unwrap_err().0, 1);
        assert_eq!(parse("\"\" \"x\"\n").unwrap_err().0, 1);
    }
}
