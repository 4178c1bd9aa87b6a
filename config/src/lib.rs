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
    AccessLog, Admin, Balance, Breaker, ClientAuth, Config, Drain, Endpoint, HealthCheck,
    HttpListener, HttpVersion, IdentityAllowList, IpNetwork, Limits, Listener, ListenerKind,
    ListenerTls, Log, LogFormat, Probe, Protocol, ProxyProtocol, ProxyProtocolSend,
    ProxyProtocolVersion, RedisListener, Retry, Route, RouteAction, RouteMatch, Sentinel,
    TlsVersion, Tracing, Upstream, UpstreamTls, WarmPool,
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
    let document: document::Document = serde_saphyr::from_str(text)
        .map_err(|error| invalid(vec![Problem::from_yaml(&error, text)]))?;
    let (config, source_map, mut problems) = document.into_config();
    problems.extend(validate::validate(&config, &source_map));
    if problems.is_empty() {
        Ok(config)
    } else {
        problems.sort_by_key(|problem| problem.line);
        Err(invalid(problems))
    }
}
