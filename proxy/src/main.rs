//! attache: a sidecar proxy in Rust. The app talks plaintext to localhost;
//! attache forwards to the real service and turns every connection into
//! metrics.
//!
//! # Layout
//! - `cli`: argument parsing and dispatch; `wait`: the init-container wait.
//! - `runtime`: boot, signals, drain; `lifecycle`: start-up latch, drain
//!   phase, open-connection count.
//! - `listener`: bind, accept, TLS termination, hand-off to a protocol;
//!   `tcp`: L4 forwarding; `http`, `redis`: the L7 protocols; `activity`:
//!   the idle timeout of connections that hyper drives.
//! - `net`: stream types and socket options every room uses;
//!   `proxy_header`: the PROXY protocol step of the listener pipeline.
//! - `upstream`: endpoints, balancing, connecting, warm pools, health checks;
//!   `resilience`: backoff, retry budget, breaker, concurrency limit.
//! - `tls`: handshakes; `reload`: certificate reload on SIGHUP and file change.
//! - `admin`: the admin HTTP server; `telemetry`: metrics and logs.

mod activity;
mod admin;
mod cli;
mod http;
mod inject;
mod lifecycle;
mod listener;
mod net;
mod proxy_header;
mod redis;
mod reload;
mod resilience;
mod runtime;
mod tcp;
mod telemetry;
mod tls;
mod upstream;
mod wait;

fn main() -> std::process::ExitCode {
    cli::main()
}
