//! The `tracing` subscriber: one line per event on stderr, JSON when stderr
//! is not a terminal (containers), human-readable text when it is. Events
//! reach stderr through [`output`](super::output)'s queue, so a stuck log
//! reader never blocks the thread that logs.

use std::io::IsTerminal;

use attache_config::model::{LogFormat, LogLevel};
use tracing_subscriber::EnvFilter;

use super::output::EventWriter;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
pub(crate) fn init(level: LogLevel, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter(level)));
    let json = json_on_stderr(format);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(EventWriter::default);
    // A second init (tests, or a subcommand that logs before reading its
    // config) keeps the first subscriber; that is harmless.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// attache's own events at `level`, other crates' warnings. rustls' log lines
/// describe what peers sent (an IP address as SNI, say), one per connection
/// a client controls: they stay at debug (`RUST_LOG=rustls=debug`), and the
/// handshake failures they explain are counted and logged by attache.
fn default_filter(level: LogLevel) -> String {
    format!("warn,rustls=error,attache={}", level.as_str())
}

/// Whether stderr lines are JSON: on `auto`, when stderr is not a terminal.
pub(crate) fn json_on_stderr(format: LogFormat) -> bool {
    match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    }
}
