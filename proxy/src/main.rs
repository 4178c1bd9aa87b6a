//! attache: a sidecar proxy in Rust. The app talks plaintext to localhost;
//! attache forwards to the real service and turns every connection into
//! metrics.
//!
//! # Layout
//! - `cli`: argument parsing and dispatch; `wait`: the init-container wait.
//! - `runtime`: boot, signals, drain, config reload; `generation`: the
//!   upstreams and protocol handlers built from one config, shared with the
//!   next where settings did not change; `lifecycle`: start-up latch, drain
//!   phase, open-connection count.
//! - `listener`: the pipeline every protocol shares: bind, accept,
//!   `max_connections`, drain, PROXY header, TLS termination, then
//!   `Protocol::serve`; a reload swaps a listener's settings in place.
//!   `tcp`: L4 forwarding; `http`, `redis`: the L7 protocols; `postgres`:
//!   Postgres' startup phase (in-band TLS), then the pooler (pools, logins,
//!   sessions, prepared statements, pins, cancels) or the TCP relay;
//!   `activity`: the idle timeout of connections that hyper drives.
//! - `net`: stream types and socket options every room uses;
//!   `proxy_header`: the PROXY protocol step of the listener pipeline.
//! - `upstream`: endpoints, balancing, connecting, warm pools, health checks;
//!   `resilience`: backoff, retry budget, breaker, and the tower layers
//!   (concurrency limit, per-try timeout) the HTTP stack is built from.
//! - `tls`: handshakes; `reload`: certificate reload on SIGHUP and file
//!   change, and the file watching the config reload shares.
//! - `admin`: the admin HTTP server; `telemetry`: metrics and logs.

mod activity;
mod admin;
mod cli;
mod generation;
mod http;
mod inject;
mod lifecycle;
mod listener;
mod mysql;
mod net;
mod pooling;
mod postgres;
mod proxy_header;
mod redis;
mod reload;
mod resilience;
mod runtime;
mod sql_text;
mod tcp;
mod telemetry;
mod tls;
mod upstream;
mod userlist;
mod wait;

/// mimalloc: per-thread free lists instead of glibc's arenas, about a fifth
/// less CPU per proxied HTTP request (docs/benchmarks.md) at the same
/// resident memory (built with lazy arena commit: `.cargo/config.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
