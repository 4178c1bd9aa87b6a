//! Active health checks against real servers: a stopped Redis leaves the
//! rotation and returns when it is back; the MariaDB and Postgres probes
//! pass against the real servers and fail against the wrong protocol; the
//! MariaDB probe logs in when given a user, and says why a login fails.
//! Readiness never depends on them.

use attache_integration::redis_server::RedisServer;
use attache_integration::{Attache, redis_ping};

fn health(upstream: &str, endpoint: &str, state: &str) -> String {
    format!(
        "attache_upstream_endpoint_health{{upstream=\"{upstream}\",endpoint=\"{endpoint}\",state=\"{state}\"}}"
    )
}

// Blocking redis-server stops and restarts run while attache is polled.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_redis_leaves_the_rotation_and_returns_when_it_is_back() {
    let mut private = RedisServer::plain();
    let (flaky, shared) = (private.address.to_string(), "127.0.0.1:6379");
    // No retries and no breaker: only the health checks keep clients away
    // from the stopped server, so every PING succeeding proves they do.
    let attache = Attache::run(&format!(
        "listeners:\n  - {{name: cache, listen: \"127.0.0.1:0\", protocol: tcp, upstream: cache}}\n\
         upstreams:\n  cache:\n    endpoints: [\"{flaky}\", \"{shared}\"]\n\
         \x20   retry: {{attempts: 1}}\n    breaker: {{consecutive_failures: 0}}\n\
         \x20   health_check: {{probe: redis, interval: 200ms, timeout: 200ms, healthy_threshold: 2, unhealthy_threshold: 2}}\n"
    ))
    .await
    .unwrap();
    attache
        .wait_for_metric(&health("cache", &flaky, "healthy"), 1.0)
        .await
        .unwrap();
    attache
        .wait_for_metric(&health("cache", shared, "healthy"), 1.0)
        .await
        .unwrap();

    private.stop();
    attache
        .wait_for_metric(&health("cache", &flaky, "unhealthy"), 1.0)
        .await
        .unwrap();
    let attempts = format!(
        "attache_upstream_connect_attempts_total{{upstream=\"cache\",endpoint=\"{flaky}\"}}"
    );
    let before = attache.metric(&attempts).await.unwrap();
    for _ in 0..6 {
        assert_eq!(redis_ping(attache.listener("cache")).await.unwrap(), "PONG");
    }
    assert_eq!(
        attache.metric(&attempts).await.unwrap(),
        before,
        "no client was sent there"
    );
    let (status, _) = attache.admin_get("/ready").await.unwrap();
    assert_eq!(status, 200, "upstream health never fails readiness");
    let (_, upstreams) = attache.admin_get("/upstreams").await.unwrap();
    let upstreams: serde_json::Value = serde_json::from_str(&upstreams).unwrap();
    assert_eq!(
        upstreams["upstreams"][0]["endpoints"][0]["health"],
        "unhealthy"
    );

    private.restart();
    attache
        .wait_for_metric(&health("cache", &flaky, "healthy"), 1.0)
        .await
        .unwrap();
    for _ in 0..4 {
        assert_eq!(redis_ping(attache.listener("cache")).await.unwrap(), "PONG");
    }
    assert!(
        attache.metric(&attempts).await.unwrap() > before,
        "back in rotation"
    );
    // Log lines can reach the reader after the metrics that go with them.
    for line in [
        "health check: endpoint unhealthy, out of rotation",
        "health check: endpoint healthy",
    ] {
        attache.wait_for_log_text(line).await.unwrap();
    }
}

#[tokio::test]
async fn mariadb_and_postgres_probes_pass_against_the_real_servers_only() {
    let (mariadb, postgres) = ("127.0.0.1:3306", "127.0.0.1:5432");
    let check = |probe: &str| {
        format!("    health_check: {{probe: {probe}, interval: 300ms, timeout: 300ms}}\n")
    };
    let attache = Attache::run(&format!(
        "listeners:\n  - {{name: mariadb, listen: \"127.0.0.1:0\", protocol: tcp, upstream: mariadb}}\n\
         upstreams:\n\
         \x20 mariadb:\n    endpoints: [\"{mariadb}\"]\n{}\
         \x20 postgres:\n    endpoints: [\"{postgres}\"]\n{}\
         \x20 mariadb_probe_on_postgres:\n    endpoints: [\"{postgres}\"]\n{}\
         \x20 postgres_probe_on_mariadb:\n    endpoints: [\"{mariadb}\"]\n{}\
         \x20 mariadb_login:\n    endpoints: [\"{mariadb}\"]\n{}\
         \x20 mariadb_login_refused:\n    endpoints: [\"{mariadb}\"]\n{}",
        check("mariadb"),
        check("postgres"),
        check("mariadb"),
        check("postgres"),
        check("mariadb, user: root"),
        check("mariadb, user: attache_no_such_user"),
    ))
    .await
    .unwrap();
    for (upstream, endpoint, state) in [
        ("mariadb", mariadb, "healthy"),
        ("postgres", postgres, "healthy"),
        ("mariadb_probe_on_postgres", postgres, "unhealthy"),
        ("postgres_probe_on_mariadb", mariadb, "unhealthy"),
        ("mariadb_login", mariadb, "healthy"),
        ("mariadb_login_refused", mariadb, "unhealthy"),
    ] {
        attache
            .wait_for_metric(&health(upstream, endpoint, state), 1.0)
            .await
            .unwrap();
    }
    let passes = "attache_upstream_health_checks_total{upstream=\"postgres\",endpoint=\"127.0.0.1:5432\",result=\"pass\"}";
    assert!(attache.metric(passes).await.unwrap() >= 1.0);
    // Log lines can reach the reader after the metrics that go with them.
    attache
        .wait_for_log_text("mariadb probe: no answer within 300ms")
        .await
        .expect("the failing probe says why");
    attache
        .wait_for_log_text("postgres probe: unexpected answer")
        .await
        .unwrap();
    // Unknown users get an error packet or, from some servers, a switch to
    // another authentication method; either way the reason names the user.
    attache
        .wait_for_any_log_text(&[
            "login as \\\"attache_no_such_user\\\" refused: Access denied",
            "asked \\\"attache_no_such_user\\\" for another authentication method",
        ])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_probe_failing_on_every_endpoint_does_not_take_the_upstream_down() {
    use mysql_async::prelude::Queryable;

    // A misconfigured check (the probe's user does not exist) fails on the
    // only endpoint; health is then ignored and the app keeps its database.
    let attache = Attache::run(
        "listeners:\n  - {name: mariadb, listen: \"127.0.0.1:0\", protocol: tcp, upstream: mariadb}\n\
         upstreams:\n  mariadb:\n    endpoints: [\"127.0.0.1:3306\"]\n\
         \x20   health_check: {probe: mariadb, user: attache_no_such_user, interval: 200ms, timeout: 200ms}\n",
    )
    .await
    .unwrap();
    attache
        .wait_for_metric(&health("mariadb", "127.0.0.1:3306", "unhealthy"), 1.0)
        .await
        .unwrap();
    let pool = attache_integration::mariadb_pool(attache.listener("mariadb"));
    let mut connection = pool.get_conn().await.unwrap();
    let answer: Option<i64> = connection.query_first("SELECT 6 * 7").await.unwrap();
    assert_eq!(answer, Some(42));
    drop(connection);
    pool.disconnect().await.unwrap();
    attache
        .wait_for_log_text(
            "every endpoint failed its health checks; ignoring them until one passes",
        )
        .await
        .unwrap();
}
