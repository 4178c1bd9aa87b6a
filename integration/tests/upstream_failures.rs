//! When no endpoint can be reached the client connection is closed promptly
//! (never a hang), and the failure metrics move by exactly the number of
//! connect attempts, by reason. Retries and the breaker are covered in
//! `resilience.rs`; the first two tests here turn them off to count single
//! attempts.

use attache_integration::{Attache, expect_closed, servers};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// No retries and no breaker: one attempt per client.
const SINGLE_ATTEMPT: &str =
    "    retry: { attempts: 1 }\n    breaker: { consecutive_failures: 0 }\n";

fn config(endpoints: &[String], connect_timeout: &str) -> String {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|endpoint| format!("\"{endpoint}\""))
        .collect();
    format!(
        "listeners:\n  - name: db\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: db\n\
         upstreams:\n  db:\n    endpoints: [{}]\n    connect_timeout: {connect_timeout}\n",
        endpoints.join(", ")
    )
}

fn failures(upstream_endpoint: &str, reason: &str) -> String {
    format!(
        "attache_upstream_connect_failures_total{{upstream=\"db\",endpoint=\"{upstream_endpoint}\",reason=\"{reason}\"}}"
    )
}

fn attempts(upstream_endpoint: &str) -> String {
    format!(
        "attache_upstream_connect_attempts_total{{upstream=\"db\",endpoint=\"{upstream_endpoint}\"}}"
    )
}

#[tokio::test]
async fn a_closed_port_is_counted_as_refused_once_per_attempt() {
    let closed = servers::closed_port().to_string();
    let attache = Attache::run(&(config(std::slice::from_ref(&closed), "2s") + SINGLE_ATTEMPT))
        .await
        .unwrap();
    for _ in 0..3 {
        expect_closed(attache.listener("db")).await;
    }
    assert_eq!(attache.metric(&attempts(&closed)).await.unwrap(), 3.0);
    assert_eq!(
        attache.metric(&failures(&closed, "refused")).await.unwrap(),
        3.0
    );
    let unavailable =
        "attache_connections_closed_total{listener=\"db\",result=\"upstream_unavailable\"}";
    assert_eq!(attache.metric(unavailable).await.unwrap(), 3.0);
}

#[tokio::test]
async fn a_black_holed_endpoint_times_out_and_the_client_is_closed() {
    let black_hole = servers::BlackHole::new();
    let address = black_hole.address.to_string();
    let attache = Attache::run(&(config(std::slice::from_ref(&address), "300ms") + SINGLE_ATTEMPT))
        .await
        .unwrap();
    expect_closed(attache.listener("db")).await;
    expect_closed(attache.listener("db")).await;
    assert_eq!(attache.metric(&attempts(&address)).await.unwrap(), 2.0);
    assert_eq!(
        attache
            .metric(&failures(&address, "timeout"))
            .await
            .unwrap(),
        2.0
    );
    assert_eq!(
        attache
            .metric(&failures(&address, "refused"))
            .await
            .unwrap(),
        0.0
    );
}

#[tokio::test]
async fn every_endpoint_is_tried_once_before_the_client_is_closed() {
    let black_hole = servers::BlackHole::new();
    let endpoints = [
        servers::closed_port().to_string(),
        black_hole.address.to_string(),
        "no-such-host.invalid:5432".to_owned(),
    ];
    let attache = Attache::run(&config(&endpoints, "300ms")).await.unwrap();
    expect_closed(attache.listener("db")).await;
    let metrics = attache.metrics().await.unwrap();
    for endpoint in &endpoints {
        assert_eq!(metrics[&attempts(endpoint)], 1.0, "{endpoint} tried once");
    }
    assert_eq!(metrics[&failures(&endpoints[0], "refused")], 1.0);
    assert_eq!(metrics[&failures(&endpoints[1], "timeout")], 1.0);
    // A name that does not resolve fails fast or times out, depending on the resolver.
    let unresolved =
        metrics[&failures(&endpoints[2], "resolve")] + metrics[&failures(&endpoints[2], "timeout")];
    assert_eq!(unresolved, 1.0);
}

#[tokio::test]
async fn a_failed_endpoint_is_skipped_for_a_working_one() {
    let working = servers::greeter("up").await.to_string();
    let closed = servers::closed_port().to_string();
    let attache = Attache::run(&config(&[closed.clone(), working.clone()], "2s"))
        .await
        .unwrap();
    for _ in 0..4 {
        let mut client = TcpStream::connect(attache.listener("db")).await.unwrap();
        let mut greeting = String::new();
        client.read_to_string(&mut greeting).await.unwrap();
        assert_eq!(greeting, "up");
    }
    // Round robin starts at the closed endpoint every other connection.
    assert_eq!(
        attache.metric(&failures(&closed, "refused")).await.unwrap(),
        2.0
    );
    assert_eq!(attache.metric(&attempts(&working)).await.unwrap(), 4.0);
}
