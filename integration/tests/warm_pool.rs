//! Warm pools against real servers: filled before start-up completes (the
//! pool gauge and `ss` agree), a client served from the pool and the pool
//! refilled, expired connections replaced, connections the server closed
//! never handed out, and TLS handshakes done before the client arrives.

use attache_integration::pki::Pki;
use attache_integration::redis_server::RedisServer;
use attache_integration::{Attache, established_to, redis_ping, wait_for_established};

fn config(endpoint: &str, upstream_extra: &str) -> String {
    format!(
        "listeners:\n  - {{name: db, listen: \"127.0.0.1:0\", protocol: tcp, upstream: db}}\n\
         upstreams:\n  db:\n    endpoints: [\"{endpoint}\"]\n{upstream_extra}"
    )
}

fn pool_sample(name: &str, endpoint: &str, extra: &str) -> String {
    format!("attache_{name}{{upstream=\"db\",endpoint=\"{endpoint}\"{extra}}}")
}

#[tokio::test]
async fn a_postgres_warm_pool_is_full_at_start_serves_a_client_and_refills() {
    let endpoint = "127.0.0.1:5432";
    let attache = Attache::run(&config(
        endpoint,
        "    warm_pool: {size: 3, max_age: 45s}\n",
    ))
    .await
    .unwrap();
    let idle = pool_sample("upstream_pool_idle_connections", endpoint, "");
    // Start-up waited for the pool: it is full as soon as attache has started.
    assert_eq!(attache.metric(&idle).await.unwrap(), 3.0);
    assert_eq!(established_to(attache.pid(), 5432), 3);

    let front = attache.listener("db");
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host={} port={} user=postgres dbname=test",
            front.ip(),
            front.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let row = client.query_one("SELECT 40 + 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let used = pool_sample("upstream_warm_connections_used_total", endpoint, "");
    assert_eq!(attache.metric(&used).await.unwrap(), 1.0);
    // The pool refilled behind the client: three idle plus the one in use.
    attache.wait_for_metric(&idle, 3.0).await.unwrap();
    wait_for_established(attache.pid(), 5432, 4).await.unwrap();
    let created = pool_sample("upstream_pool_connections_created_total", endpoint, "");
    assert_eq!(attache.metric(&created).await.unwrap(), 4.0);

    drop(client);
    connection.await.unwrap().unwrap();
    wait_for_established(attache.pid(), 5432, 3).await.unwrap();
}

#[tokio::test]
async fn warm_connections_older_than_max_age_are_replaced() {
    let redis = RedisServer::plain();
    let endpoint = redis.address.to_string();
    let attache = Attache::run(&config(
        &endpoint,
        "    warm_pool: {size: 2, max_age: 300ms}\n",
    ))
    .await
    .unwrap();
    let expired = pool_sample(
        "upstream_pool_connections_discarded_total",
        &endpoint,
        ",reason=\"expired\"",
    );
    attache
        .wait_for_metric_at_least(&expired, 4.0)
        .await
        .unwrap();
    let created = pool_sample("upstream_pool_connections_created_total", &endpoint, "");
    // Each expired connection is replaced.
    attache
        .wait_for_metric_at_least(&created, 6.0)
        .await
        .unwrap();
    wait_for_established(attache.pid(), redis.address.port(), 2)
        .await
        .unwrap();
    assert_eq!(redis_ping(attache.listener("db")).await.unwrap(), "PONG");
}

// Blocking redis-server restarts run while attache's client is polled.
#[tokio::test(flavor = "multi_thread")]
async fn a_warm_connection_the_server_closed_is_never_handed_out() {
    let mut redis = RedisServer::plain();
    let endpoint = redis.address.to_string();
    let attache = Attache::run(&config(
        &endpoint,
        "    warm_pool: {size: 2, max_age: 60s}\n",
    ))
    .await
    .unwrap();
    let idle = pool_sample("upstream_pool_idle_connections", &endpoint, "");
    assert_eq!(attache.metric(&idle).await.unwrap(), 2.0);

    // The server restarts: both warm connections are now closed ones.
    redis.restart();
    assert_eq!(redis_ping(attache.listener("db")).await.unwrap(), "PONG");
    let invalid = pool_sample(
        "upstream_pool_connections_discarded_total",
        &endpoint,
        ",reason=\"invalid\"",
    );
    attache
        .wait_for_metric_at_least(&invalid, 1.0)
        .await
        .unwrap();
    assert_eq!(redis_ping(attache.listener("db")).await.unwrap(), "PONG");
    attache.wait_for_metric(&idle, 2.0).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_tls_connections_are_handshaken_before_the_client_arrives() {
    let pki = Pki::new();
    let redis = RedisServer::tls(&pki);
    let endpoint = redis.address.to_string();
    let attache = Attache::run(&config(
        &endpoint,
        &format!(
            "    tls: {{ca: {}, server_name: localhost, cert: {}, key: {}}}\n    warm_pool: {{size: 2}}\n",
            pki.ca(),
            pki.cert("app"),
            pki.key("app")
        ),
    ))
    .await
    .unwrap();
    let handshakes = pool_sample("upstream_tls_handshakes_total", &endpoint, ",result=\"ok\"");
    let created = pool_sample("upstream_pool_connections_created_total", &endpoint, "");
    assert_eq!(attache.metric(&handshakes).await.unwrap(), 2.0);

    assert_eq!(redis_ping(attache.listener("db")).await.unwrap(), "PONG");
    let used = pool_sample("upstream_warm_connections_used_total", &endpoint, "");
    assert_eq!(attache.metric(&used).await.unwrap(), 1.0);
    let idle = pool_sample("upstream_pool_idle_connections", &endpoint, "");
    attache.wait_for_metric(&idle, 2.0).await.unwrap();
    // Every handshake made a pool connection: the client's connection
    // reached Redis without one of its own.
    let metrics = attache.metrics().await.unwrap();
    assert_eq!(metrics[&created], 3.0);
    assert_eq!(metrics[&handshakes], 3.0);

    // Refills read the server's session tickets before joining the pool,
    // so later refills resume instead of repeating full handshakes. The
    // very first handshake has no session to resume; the second one, made
    // at the same time, usually has none either. Reading a ticket waits at
    // most 50 ms, which a loaded machine can miss now and then. So the test
    // asks for every handshake after the first two but one to resume:
    // leaving tickets unread resumed half of them (issue 4).
    for _ in 0..6 {
        assert_eq!(redis_ping(attache.listener("db")).await.unwrap(), "PONG");
    }
    attache.wait_for_metric(&idle, 2.0).await.unwrap();
    let metrics = attache.metrics().await.unwrap();
    let resumed = metrics[&pool_sample("upstream_tls_resumptions_total", &endpoint, "")];
    let total = metrics[&handshakes];
    assert!(total >= 8.0, "{total} handshakes");
    assert!(resumed <= total - 1.0, "the first handshake cannot resume");
    assert!(
        resumed >= total - 3.0,
        "{resumed} of {total} handshakes resumed"
    );
}

#[tokio::test]
async fn refills_failing_before_the_server_starts_do_not_eject_it() {
    // attache starts first, as sidecars do; every warm connect fails.
    let late = attache_integration::servers::ReservedPort::new();
    let endpoint = late.address.to_string();
    let attache = Attache::run(&config(
        &endpoint,
        "    connect_timeout: 200ms\n    warm_pool: {size: 8}\n",
    ))
    .await
    .unwrap();
    let attempts = format!(
        "attache_upstream_connect_attempts_total{{upstream=\"db\",endpoint=\"{endpoint}\"}}"
    );
    attache
        .wait_for_metric_at_least(&attempts, 8.0)
        .await
        .unwrap();
    let open = pool_sample(
        "upstream_breaker_transitions_total",
        &endpoint,
        ",state=\"open\"",
    );
    assert_eq!(
        attache.metric(&open).await.unwrap(),
        0.0,
        "refills do not feed the breaker"
    );

    // The server comes up: the first client is served, not failed fast.
    let listener = late.listen();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, b"late").await;
        }
    });
    assert_eq!(
        attache_integration::read_greeting(attache.listener("db")).await,
        "late"
    );
}
