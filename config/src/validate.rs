//! Checks across a whole [`Config`]: references, duplicates, zero values and
//! plaintext exposure. Runs on configs read from YAML (with lines) and on
//! configs built in code by the CLI one-liners (without).

use std::collections::{HashMap, HashSet};

use crate::error::Problem;
use crate::model::Config;

/// Where each key path was written, and which paths already have a problem.
#[derive(Debug, Default)]
pub struct SourceMap {
    lines: HashMap<String, u64>,
    reported: HashSet<String>,
}

impl SourceMap {
    pub(crate) fn new(lines: HashMap<String, u64>, reported: HashSet<String>) -> Self {
        Self { lines, reported }
    }

    fn line(&self, path: &str) -> Option<u64> {
        self.lines.get(path).copied()
    }

    /// Whether a problem was already reported at `path` or below it.
    fn reported_under(&self, path: &str) -> bool {
        self.reported.iter().any(|reported| {
            reported
                .strip_prefix(path)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }
}

/// Returns every problem in `config`; empty when it is valid.
pub fn validate(config: &Config, source_map: &SourceMap) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut report = |path: String, message: String| {
        if !source_map.reported_under(&path) {
            problems.push(Problem::new(path.clone(), source_map.line(&path), message));
        }
    };

    if config.listeners.is_empty() {
        report(
            "listeners".into(),
            "at least one listener is required".into(),
        );
    }
    if config.drain.grace_period.is_zero() {
        report(
            "drain.grace_period".into(),
            "must be greater than zero".into(),
        );
    }

    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut addresses: HashMap<std::net::SocketAddr, usize> = HashMap::new();
    for (index, listener) in config.listeners.iter().enumerate() {
        let path = format!("listeners[{index}]");
        if let Some(first) = names.insert(&listener.name, index) {
            report(
                format!("{path}.name"),
                format!(
                    "listener name {:?} is already used by listeners[{first}]; give each listener its own `name`",
                    listener.name
                ),
            );
        }
        if listener.listen.port() != 0
            && let Some(first) = addresses.insert(listener.listen, index)
        {
            report(
                format!("{path}.listen"),
                format!(
                    "{} is already the address of listeners[{first}]",
                    listener.listen
                ),
            );
        }
        if config.upstream(&listener.upstream).is_none() {
            let known: Vec<_> = config
                .upstreams
                .iter()
                .map(|upstream| upstream.name.as_str())
                .collect();
            report(
                format!("{path}.upstream"),
                format!(
                    "no upstream named {:?} (upstreams: {})",
                    listener.upstream,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        if listener.max_connections == 0 {
            report(
                format!("{path}.max_connections"),
                "must be greater than zero".into(),
            );
        }
        if listener.idle_timeout.is_zero() {
            report(
                format!("{path}.idle_timeout"),
                "must be greater than zero".into(),
            );
        }
        if !listener.listen.ip().is_loopback() && !listener.unsafe_plaintext {
            report(
                format!("{path}.listen"),
                format!(
                    "{} is not a loopback address and this listener is plaintext; \
                     set `unsafe_plaintext: true` on the listener to accept plaintext from the network",
                    listener.listen
                ),
            );
        }
    }

    for upstream in &config.upstreams {
        let path = format!("upstreams.{}", upstream.name);
        if upstream.endpoints.is_empty() {
            report(
                format!("{path}.endpoints"),
                "an upstream needs at least one endpoint".into(),
            );
        }
        if upstream.connect_timeout.is_zero() {
            report(
                format!("{path}.connect_timeout"),
                "must be greater than zero".into(),
            );
        }
    }
    problems
}
