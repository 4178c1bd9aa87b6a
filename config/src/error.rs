//! Configuration errors: one [`Problem`] per finding, gathered into a
//! [`ConfigError`] that names the source.

use std::fmt;

/// One thing wrong with a configuration: where (key path and line) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path such as `listeners[1].upstream`; empty for syntax errors.
    pub path: String,
    /// 1-based line in the source, when known.
    pub line: Option<u64>,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl Problem {
    /// A problem at `path`, on `line` if known.
    pub fn new(path: impl Into<String>, line: Option<u64>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            line,
            message: message.into(),
        }
    }

    /// A problem the YAML parser or the deserializer found in `text`: named
    /// by the innermost key at its position, at that key's own line, with
    /// the deserializer's words made plainer. A syntax error, where no key
    /// holds the position, keeps its line and column.
    pub(crate) fn from_yaml(error: &serde_saphyr::Error, text: &str) -> Self {
        let location = error.location();
        let line = location.map(|location| location.line() as usize);
        let column = location.map(|location| location.column() as usize);
        let message = error.without_snippet().to_string();
        let message = message.strip_prefix("error: ").unwrap_or(&message);
        // Syntax errors read "line L column C: what", errors raised while
        // deserializing (unknown keys, bad values) "what at line L, column C".
        let (what, column_text) = match line {
            Some(line) => {
                if let Some((column, what)) = message
                    .strip_prefix(&format!("line {line} column "))
                    .and_then(|rest| rest.split_once(": "))
                {
                    (what.to_owned(), Some(column.to_owned()))
                } else if let Some((what, column)) =
                    message.rsplit_once(&format!(" at line {line}, column "))
                {
                    (what.to_owned(), Some(column.to_owned()))
                } else {
                    (message.to_owned(), None)
                }
            }
            None => (message.to_owned(), None),
        };
        let what = plainer(&what);
        let key = line.zip(column).and_then(|(line, column)| {
            let paths = crate::key_paths::KeyPaths::of(text);
            let (path, key_line) = paths.at(line, column)?;
            if what.starts_with("missing field") {
                // Reported where the map ends: name the map that lacks it.
                let parent = path
                    .rfind(['.', '['])
                    .map_or("", |end| &path[..end])
                    .to_owned();
                let parent_line = paths.line_of(&parent).unwrap_or(key_line);
                return Some((parent, parent_line));
            }
            Some((path.to_owned(), key_line))
        });
        match key {
            Some((path, key_line)) => Self::new(path, Some(key_line as u64), what),
            None => {
                let message = match column_text {
                    Some(column) => format!("{what} (column {column})"),
                    None => what,
                };
                Self::new("", line.map(|line| line as u64), message)
            }
        }
    }
}

/// The deserializer's words for a value of the wrong shape or type, as a
/// config's reader would say them.
fn plainer(what: &str) -> String {
    let replacements = [
        ("invalid u64", "expected a whole number"),
        ("invalid u32", "expected a whole number"),
        ("invalid u16", "expected a whole number"),
        ("invalid usize", "expected a whole number"),
        ("invalid f64", "expected a number"),
        ("expected sequence start", "expected a list"),
        ("expected mapping start", "expected a map of keys"),
        (
            "expected string scalar",
            "expected text (such as 10s or a name)",
        ),
    ];
    for (said, plain) in replacements {
        if let Some(rest) = what.strip_prefix(said) {
            return format!("{plain}{rest}");
        }
    }
    what.to_owned()
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path as given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration was read but is not valid; every problem is listed.
    #[error("{}", render_problems(source_name, problems))]
    Invalid {
        /// The file path, or another name for the input.
        source_name: String,
        /// Every problem found, in line order.
        problems: Vec<Problem>,
    },
}

fn render_problems(source_name: &str, problems: &[Problem]) -> String {
    let noun = if problems.len() == 1 {
        "problem"
    } else {
        "problems"
    };
    let mut out = format!("{source_name}: {} {noun}", problems.len());
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    out
}
