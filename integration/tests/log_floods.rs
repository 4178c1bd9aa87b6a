//! A client that fails on purpose, connection after connection, cannot
//! flood the log: per-connection failure lines are rate-limited per
//! listener and reason, and the counters stay exact.

use std::time::Instant;

use attache_integration::pki::Pki;
use attache_integration::{Attache, servers};

/// Lines per reason per second (`telemetry/log_limit.rs`).
const LINES_PER_SECOND: f64 = 5.0;
const CONNECTIONS: usize = 300;

#[tokio::test]
async fn failed_handshakes_are_counted_exactly_and_logged_at_a_bounded_rate() {
    let pki = Pki::new();
    let mut door = Attache::run(&pki.front_door_config(servers::echo().await))
        .await
        .unwrap();
    let front = door.listener("front");
    let started = Instant::now();
    for _ in 0..CONNECTIONS {
        // Connects and leaves before saying anything.
        drop(tokio::net::TcpStream::connect(front).await.unwrap());
    }
    door.wait_for_metric(
        "attache_tls_handshakes_total{listener=\"front\",result=\"eof\"}",
        CONNECTIONS as f64,
    )
    .await
    .unwrap();
    // Every line was written while the failures happened, so within this
    // many one-second windows.
    let windows = started.elapsed().as_secs_f64().ceil() + 1.0;
    door.wait_for_log("client TLS handshake failed")
        .await
        .unwrap();
    let lines: Vec<_> = door
        .events()
        .into_iter()
        .filter(|event| event["message"] == "client TLS handshake failed")
        .collect();
    assert!(!lines.is_empty(), "failures are still logged");
    assert!(
        lines.len() as f64 <= LINES_PER_SECOND * windows,
        "{} lines for {CONNECTIONS} failures in {windows} windows",
        lines.len()
    );
    let suppressed: u64 = lines
        .iter()
        .filter_map(|line| line["suppressed"].as_u64())
        .sum();
    assert!(
        suppressed as usize + lines.len() <= CONNECTIONS,
        "suppressed counts only lines left out"
    );
}
