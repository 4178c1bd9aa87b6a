//! attache's configuration: the typed model, YAML parsing with `${VAR}` /
//! `${VAR:-default}` interpolation, and validation that reports every problem
//! at once with its key path and line.
//!
//! This crate reads the configuration file and nothing else: it knows nothing
//! about sockets, certificates or the runtime.
//!
//! # Layout
//! - [`interpolate`]: `${VAR}` substitution on the raw text, before parsing.
//! - `document`: the YAML document as written (serde types that keep lines).
//! - [`model`]: the validated configuration the runtime consumes, with its
//!   defaults in one place.
//! - [`validate`]: checks across the whole model (references, duplicates,
//!   zero timeouts, plaintext exposure).
//!
//! Files go through [`load`] (or [`parse`]); the CLI one-liners write their
//! flags as a document and go through [`parse_literal`]: one conversion,
//! one set of defaults, one validation for both.
//! - [`error`]: [`Problem`] and [`ConfigError`].

mod document;
pub mod error;
pub mod interpolate;
mod key_paths;
pub mod model;
pub mod validate;

use std::path::Path;

pub use error::{ConfigError, Problem};
pub use model::{
    AccessLog, Admin, Balance, Breaker, ClientAuth, Config, DatabaseAuth, Drain, Endpoint,
    HealthCheck, HttpListener, HttpVersion, IdentityAllowList, IpNetwork, Limits, Listener,
    ListenerKind, ListenerTls, Log, LogFormat, MysqlListener, PoolMode, PoolSettings,
    PostgresListener, PostgresUser, Probe, Protocol, ProxyProtocol, ProxyProtocolSend,
    ProxyProtocolVersion, RedisCache, RedisListener, Retry, Route, RouteAction, RouteMatch,
    ScramVerifier, Sentinel, ServerSslMode, TlsVersion, Tracing, Upstream, UpstreamTls, WarmPool,
};

/// Reads, interpolates (from the process environment), parses and validates
/// the configuration file at `path`.
///
/// # Errors
/// [`ConfigError::Read`] when the file cannot be read, and
/// [`ConfigError::Invalid`] carrying every problem found otherwise.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    parse_with_process_env(&read(path)?, path)
}

/// Reads the configuration file at `path` as text, unparsed.
///
/// # Errors
/// [`ConfigError::Read`] when the file cannot be read (or is not UTF-8).
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// [`parse`]s `text`, read from `path`, interpolating from the process
/// environment.
///
/// # Errors
/// As [`parse`].
pub fn parse_with_process_env(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse(text, &path.display().to_string(), &|name| {
        std::env::var(name).ok()
    })
}

/// Interpolates `text` with `env`, parses it and validates the result.
/// `source_name` names the input in error messages (usually the file path).
///
/// # Errors
/// [`ConfigError::Invalid`] carrying every problem found: interpolation
/// errors and YAML errors first (parsing stops there), otherwise every
/// conversion and validation problem.
pub fn parse(
    text: &str,
    source_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let text = interpolate::interpolate(text, env).map_err(|problems| ConfigError::Invalid {
        source_name: source_name.to_owned(),
        problems,
    })?;
    parse_literal(&text, source_name)
}

/// Parses and validates `text` as it is, without interpolation: for a
/// document a program wrote (the one-liners write their flags as one, so
/// flags and files share one conversion, one set of defaults and one
/// validation), where a `$` in a value is just a `$`.
///
/// # Errors
/// [`ConfigError::Invalid`] carrying every problem found.
pub fn parse_literal(text: &str, source_name: &str) -> Result<Config, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        source_name: source_name.to_owned(),
        problems,
    };
    let document = read_document(text).map_err(invalid)?;
    let (config, source_map, mut problems) = document.into_config();
    problems.extend(validate::validate(&config, &source_map));
    if problems.is_empty() {
        Ok(config)
    } else {
        problems.sort_by_key(|problem| problem.line);
        Err(invalid(problems))
    }
}

/// At most this many shape problems are gathered from one file.
const MAX_SHAPE_PROBLEMS: usize = 20;

/// Deserializes the document, or gathers the shape and type problems in
/// it: the YAML reader stops at the first, so each problem's key (an
/// unknown key, or a value of the wrong type) is blanked out of a copy of
/// the text — same lines and columns — and the copy read again, until it
/// reads or a problem cannot be set aside that way (a missing field, a
/// sequence item, a syntax error).
fn read_document(text: &str) -> Result<document::Document, Vec<Problem>> {
    let first = match serde_saphyr::from_str(text) {
        Ok(document) => return Ok(document),
        Err(error) => Problem::from_yaml(&error, text),
    };
    let mut problems = vec![first];
    let mut copy = text.to_owned();
    let mut set_aside: Vec<String> = Vec::new();
    while problems.len() < MAX_SHAPE_PROBLEMS {
        let last = &problems[problems.len() - 1];
        let settable = !last.path.is_empty()
            && !last.path.ends_with(']')
            && !last.message.starts_with("missing field");
        if !settable {
            break;
        }
        let paths = key_paths::KeyPaths::of(&copy);
        let Some(span) = paths.span_of(&last.path) else {
            break;
        };
        set_aside.push(last.path.clone());
        copy = blank(&copy, span);
        let next = match serde_saphyr::from_str::<document::Document>(&copy) {
            Ok(_) => break,
            Err(error) => Problem::from_yaml(&error, &copy),
        };
        // A map missing a required key that was set aside, or left empty
        // by setting keys aside, is not the file's problem: stop there.
        let ours = set_aside.iter().any(|path| {
            let Some(rest) = path.strip_prefix(next.path.as_str()) else {
                return false;
            };
            match next.message.strip_prefix("missing field `") {
                Some(missing) => rest
                    .strip_prefix('.')
                    .is_some_and(|key| missing.starts_with(&format!("{key}`"))),
                None => rest.starts_with('.') || rest.starts_with('['),
            }
        });
        if ours || next.path.is_empty() || next.path.contains('~') || problems.contains(&next) {
            break;
        }
        problems.push(next);
    }
    problems.sort_by_key(|problem| problem.line);
    Err(problems)
}

/// `text` with the characters from `start` to `end` (1-based line and
/// column, end exclusive) replaced by spaces, line breaks kept.
fn blank(text: &str, (start, end): ((usize, usize), (usize, usize))) -> String {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let number = index + 1;
        if number < start.0 || number > end.0 {
            out.push_str(line);
            continue;
        }
        for (offset, character) in line.chars().enumerate() {
            let column = offset + 1;
            let after_start = number > start.0 || column >= start.1;
            let before_end = number < end.0 || column < end.1;
            if character != '\n' && after_start && before_end {
                out.push(' ');
            } else {
                out.push(character);
            }
        }
    }
    out
}
