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

    pub(crate) fn from_yaml(error: &serde_saphyr::Error) -> Self {
        let line = error.location().map(|location| location.line());
        let message = error.without_snippet().to_string();
        let message = message.strip_prefix("error: ").unwrap_or(&message);
        // The line is printed by our own Display, so keep only the column:
        // syntax errors read "line L column C: what", errors raised while
        // deserializing (unknown keys, bad values) "what at line L, column C".
        let message = match line {
            Some(line) => {
                if let Some((what, column)) = message
                    .strip_prefix(&format!("line {line} column "))
                    .and_then(|rest| rest.split_once(": "))
                    .map(|(column, what)| (what, column))
                {
                    format!("{what} (column {column})")
                } else if let Some((what, column)) =
                    message.rsplit_once(&format!(" at line {line}, column "))
                {
                    format!("{what} (column {column})")
                } else {
                    message.to_owned()
                }
            }
            None => message.to_owned(),
        };
        Self::new("", line, message)
    }
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
