//! Upstream resilience through the real binary: connection slots and the
//! queue behind them, connect retries under the retry budget and the
//! deadline, and the per-endpoint circuit breaker against a port that is
//! closed and then reopened.

use std::net::SocketAddr;

use attache_integration::{Attache, expect_closed, read_greeting, servers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One listener per upstream (listener name = upstream name); `upstreams`
/// is the YAML of the `upstreams:` map, indented by four spaces per upstream.
fn config(names: &[&str], upstreams: &str) -> String {
    let listeners: String = names
        .iter()
        .map(|name| {
            format!(
                "  - {{name: {name}, listen: \"127.0.0.1:0\", protocol: tcp, upstream: {name}}}\n"
            )
        })
        .collect();
    format!("listeners:\n{listeners}upstreams:\n{upstreams}")
}

fn sample(name: &str, labels: &str) -> String {
    format!("attache_{name}{{{labels}}}")
}

fn attempts(endpoint: &str) -> String {
    sample(
        "upstream_connect_attempts_total",
        &format!("upstream=\"db\",endpoint=\"{endpoint}\""),
    )
}

/// A client that wrote `byte` through attache and got it echoed back.
async fn echoed_client(front: SocketAddr, byte: u8) -> TcpStream {
    let mut client = TcpStream::connect(front).await.unwrap();
    client.write_all(&[byte]).await.unwrap();
    let mut echoed = [0u8; 1];
    client.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed[0], byte);
    client
}

#[tokio::test]
async fn a_full_upstream_queues_clients_refuses_the_overflow_and_times_out_the_queue() {
    let echo = servers::echo().await;
    let attache = Attache::run(&config(
        &["patient", "hasty"],
        &format!(
            "  patient:\n    endpoints: [\"{echo}\"]\n    limits: {{max_connections: 4, max_pending: 2, queue_timeout: 60s}}\n\
             \x20 hasty:\n    endpoints: [\"{echo}\"]\n    limits: {{max_connections: 1, max_pending: 1, queue_timeout: 200ms}}\n"
        ),
    ))
    .await
    .unwrap();
    let front = attache.listener("patient");
    let mut served = Vec::new();
    for byte in 1..=4 {
        served.push(echoed_client(front, byte).await);
    }
    // The 5th and 6th clients wait for a slot; their bytes wait in attache.
    let mut queued = Vec::new();
    for byte in [5, 6] {
        let mut client = TcpStream::connect(front).await.unwrap();
        client.write_all(&[byte]).await.unwrap();
        queued.push(client);
    }
    let pending = sample("upstream_pending_clients", "upstream=\"patient\"");
    attache.wait_for_metric(&pending, 2.0).await.unwrap();
    // The 7th finds the queue full and is closed at once.
    expect_closed(front).await;
    let refused = |reason: &str| {
        sample(
            "upstream_refused_total",
            &format!("upstream=\"patient\",reason=\"{reason}\""),
        )
    };
    assert_eq!(attache.metric(&refused("overflow")).await.unwrap(), 1.0);

    // Two served clients leave; the queued ones get their slots in order.
    served.truncate(2);
    for (client, byte) in queued.iter_mut().zip([5u8, 6]) {
        let mut echoed = [0u8; 1];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed[0], byte);
    }
    attache.wait_for_metric(&pending, 0.0).await.unwrap();
    let active = sample("upstream_connections_active", "upstream=\"patient\"");
    assert_eq!(attache.metric(&active).await.unwrap(), 4.0);
    let waits = sample("upstream_queue_wait_seconds_count", "upstream=\"patient\"");
    assert_eq!(attache.metric(&waits).await.unwrap(), 6.0);
    assert_eq!(
        attache.metric(&refused("queue_timeout")).await.unwrap(),
        0.0
    );

    // A queued client whose wait outlasts the queue timeout is closed and counted.
    let hasty = attache.listener("hasty");
    let _holder = echoed_client(hasty, 9).await;
    expect_closed(hasty).await;
    let timed_out = sample(
        "upstream_refused_total",
        "upstream=\"hasty\",reason=\"queue_timeout\"",
    );
    assert_eq!(attache.metric(&timed_out).await.unwrap(), 1.0);
}

#[tokio::test]
async fn a_refused_connect_is_retried_on_the_next_endpoint() {
    let closed = servers::closed_port().to_string();
    let working = servers::greeter("served").await.to_string();
    let attache = Attache::run(&config(
        &["db"],
        &format!("  db:\n    endpoints: [\"{closed}\", \"{working}\"]\n"),
    ))
    .await
    .unwrap();
    // Round robin starts at the first endpoint: the closed one.
    assert_eq!(read_greeting(attache.listener("db")).await, "served");
    let metrics = attache.metrics().await.unwrap();
    assert_eq!(metrics[&attempts(&closed)], 1.0);
    assert_eq!(metrics[&attempts(&working)], 1.0);
    assert_eq!(
        metrics[&sample("upstream_retries_total", "upstream=\"db\"")],
        1.0
    );
}

#[tokio::test]
async fn retries_stop_when_the_budget_is_spent() {
    let endpoints = [
        servers::closed_port().to_string(),
        servers::closed_port().to_string(),
    ];
    // No share of traffic, a floor of 1 retry per second: 10 retries per
    // 10 s window, whatever the attempts setting allows.
    let attache = Attache::run(&config(
        &["db"],
        &format!(
            "  db:\n    endpoints: [\"{}\", \"{}\"]\n\
             \x20   retry: {{attempts: 100, backoff: 1ms, max_backoff: 2ms, budget_percent: 0, budget_min_per_second: 1}}\n\
             \x20   breaker: {{consecutive_failures: 0}}\n",
            endpoints[0], endpoints[1]
        ),
    ))
    .await
    .unwrap();
    expect_closed(attache.listener("db")).await;
    expect_closed(attache.listener("db")).await;
    let metrics = attache.metrics().await.unwrap();
    let total_attempts: f64 = endpoints
        .iter()
        .map(|endpoint| metrics[&attempts(endpoint)])
        .sum();
    assert_eq!(
        total_attempts, 12.0,
        "1 + 10 retries, then 1 with the budget spent"
    );
    assert_eq!(
        metrics[&sample("upstream_retries_total", "upstream=\"db\"")],
        10.0
    );
    assert_eq!(
        metrics[&sample("upstream_retry_budget_exhausted_total", "upstream=\"db\"")],
        2.0
    );
    attache
        .wait_for_log_text("the retry budget was spent")
        .await
        .unwrap();
}

#[tokio::test]
async fn retries_stop_at_the_client_deadline() {
    let black_hole = servers::BlackHole::new();
    let endpoint = black_hole.address.to_string();
    let attache = Attache::run(&config(
        &["db"],
        &format!(
            "  db:\n    endpoints: [\"{endpoint}\"]\n    connect_timeout: 200ms\n\
             \x20   retry: {{attempts: 100, backoff: 1ms, max_backoff: 2ms, deadline: 1s}}\n\
             \x20   breaker: {{consecutive_failures: 0}}\n"
        ),
    ))
    .await
    .unwrap();
    expect_closed(attache.listener("db")).await;
    let tried = attache.metric(&attempts(&endpoint)).await.unwrap();
    assert!(
        (2.0..100.0).contains(&tried),
        "retried, then stopped by the deadline rather than the attempts ({tried})"
    );
    attache
        .wait_for_log_text("the connect deadline passed")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_probed_once_after_the_interval_and_restored() {
    let reserved = servers::ReservedPort::new();
    let flaky = reserved.address;
    let steady = servers::greeter("steady").await;
    let attache = Attache::run(&config(
        &["db"],
        &format!(
            "  db:\n    endpoints: [\"{flaky}\", \"{steady}\"]\n\
             \x20   retry: {{attempts: 2, backoff: 1ms, max_backoff: 1ms}}\n\
             \x20   breaker: {{consecutive_failures: 2, open_for: 1s, max_open_for: 1s}}\n"
        ),
    ))
    .await
    .unwrap();
    let front = attache.listener("db");
    let flaky_attempts = attempts(&flaky.to_string());
    let transitions = |state: &str| {
        sample(
            "upstream_breaker_transitions_total",
            &format!("upstream=\"db\",endpoint=\"{flaky}\",state=\"{state}\""),
        )
    };
    // Round robin: clients 1 and 3 start at the closed endpoint, fail there
    // and are retried on the steady one. The second failure opens the breaker.
    for _ in 0..4 {
        assert_eq!(read_greeting(front).await, "steady");
    }
    assert_eq!(attache.metric(&flaky_attempts).await.unwrap(), 2.0);
    assert_eq!(attache.metric(&transitions("open")).await.unwrap(), 1.0);
    // Ejected: its turns go to the steady endpoint without an attempt.
    for _ in 0..4 {
        assert_eq!(read_greeting(front).await, "steady");
    }
    assert_eq!(attache.metric(&flaky_attempts).await.unwrap(), 2.0);

    // The port opens again. After the interval a single probe goes there,
    // succeeds and closes the breaker.
    let reopened = reserved.listen();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = reopened.accept().await {
            let _ = stream.write_all(b"flaky").await;
            let _ = stream.shutdown().await;
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut greetings = Vec::new();
    while !greetings.iter().any(|greeting| greeting == "flaky") {
        assert!(
            greetings.len() < 2,
            "the probe is sent within one round: {greetings:?}"
        );
        greetings.push(read_greeting(front).await);
    }
    assert_eq!(
        attache.metric(&flaky_attempts).await.unwrap(),
        3.0,
        "one probe"
    );
    assert_eq!(
        attache.metric(&transitions("half_open")).await.unwrap(),
        1.0
    );
    assert_eq!(attache.metric(&transitions("closed")).await.unwrap(), 1.0);
    let mut after = Vec::new();
    for _ in 0..4 {
        after.push(read_greeting(front).await);
    }
    after.sort();
    assert_eq!(
        after,
        ["flaky", "flaky", "steady", "steady"],
        "traffic returns"
    );
}

#[tokio::test]
async fn when_every_endpoint_is_ejected_clients_fail_fast_with_a_clear_log_line() {
    let closed = servers::closed_port().to_string();
    let attache = Attache::run(&config(
        &["db"],
        &format!(
            "  db:\n    endpoints: [\"{closed}\"]\n    retry: {{attempts: 1}}\n\
             \x20   breaker: {{consecutive_failures: 2, open_for: 60s}}\n"
        ),
    ))
    .await
    .unwrap();
    for _ in 0..3 {
        expect_closed(attache.listener("db")).await;
    }
    let metrics = attache.metrics().await.unwrap();
    assert_eq!(
        metrics[&attempts(&closed)],
        2.0,
        "the third client made no attempt"
    );
    assert_eq!(
        metrics[&sample(
            "upstream_refused_total",
            "upstream=\"db\",reason=\"no_endpoint\""
        )],
        1.0
    );
    let state = sample(
        "upstream_breaker_state",
        &format!("upstream=\"db\",endpoint=\"{closed}\",state=\"open\""),
    );
    assert_eq!(metrics[&state], 1.0);
    attache
        .wait_for_log_text(
            "every endpoint is ejected by its circuit breaker or unhealthy; failing fast",
        )
        .await
        .unwrap();
}
