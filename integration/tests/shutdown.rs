//! Sidecar lifecycle: SIGTERM drains (ready turns 503 at once, transfers in
//! flight complete, the process exits 0 when the last one closes), listeners
//! close unless told to keep serving loopback clients, and `POST /shutdown`
//! works only when enabled.

use std::time::Duration;

use attache_integration::{Attache, exchange, http_request, servers};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const TRANSFER: usize = 2 * 1024 * 1024;

fn config(upstream: std::net::SocketAddr, listener_extra: &str, top_extra: &str) -> String {
    format!(
        "listeners:\n  - name: app\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: up\n{listener_extra}\
         upstreams:\n  up:\n    endpoints: [\"{upstream}\"]\n\
         drain:\n  grace_period: 120s\n{top_extra}"
    )
}

#[tokio::test]
async fn sigterm_lets_a_transfer_finish_then_exits_zero_without_waiting_the_grace_period() {
    // About 2 s of transfer: 64 KiB every 60 ms.
    let upstream = servers::slow_source(TRANSFER, 64 * 1024, Duration::from_millis(60)).await;
    let mut attache = Attache::run(&config(upstream, "", "")).await.unwrap();
    let front = attache.listener("app");
    assert_eq!(attache.admin_get("/ready").await.unwrap().0, 200);

    let mut client = TcpStream::connect(front).await.unwrap();
    let mut first = [0; 1];
    client.read_exact(&mut first).await.unwrap();
    attache.terminate();
    attache.wait_for_log("draining: not ready").await.unwrap();
    assert_eq!(
        attache.admin_get("/ready").await.unwrap(),
        (503, "draining\n".to_owned())
    );
    assert_eq!(
        attache.admin_get("/live").await.unwrap().0,
        200,
        "still live while draining"
    );

    attache
        .wait_for_log("draining: listeners closed")
        .await
        .unwrap();
    assert!(
        TcpStream::connect(front).await.is_err(),
        "a new connection after SIGTERM is refused"
    );
    assert!(!attache.has_exited(), "still draining the transfer");

    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    let mut received = first.to_vec();
    received.extend(rest);
    assert_eq!(
        servers::sha256_hex(&received),
        servers::sha256_hex(&servers::random_bytes(TRANSFER, 11))
    );
    // The upstream closed; the client closes its side too, ending the connection.
    drop(client);

    // The grace period is 120 s; exiting well inside it shows attache left
    // when the last connection closed.
    let status = attache.wait_exit(Duration::from_secs(60)).await.unwrap();
    assert!(status.success(), "exit status {status}");
    attache
        .wait_for_log("drained: all connections closed; exiting")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_listener_told_to_keep_accepting_serves_loopback_clients_while_draining() {
    let upstream = servers::echo().await;
    let hold = servers::slow_source(512 * 1024, 32 * 1024, Duration::from_millis(100)).await;
    let yaml = format!(
        "listeners:\n  - name: app\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: up\n    keep_accepting_while_draining: true\n\
         \x20 - name: other\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: hold\n\
         upstreams:\n  up:\n    endpoints: [\"{upstream}\"]\n  hold:\n    endpoints: [\"{hold}\"]\n\
         drain:\n  grace_period: 120s\n"
    );
    let mut attache = Attache::run(&yaml).await.unwrap();
    let app = attache.listener("app");
    let other = attache.listener("other");
    // A long transfer on the other listener keeps the process draining.
    let mut held = TcpStream::connect(other).await.unwrap();
    let mut byte = [0; 1];
    held.read_exact(&mut byte).await.unwrap();

    attache.terminate();
    attache
        .wait_for_log("draining: listeners closed")
        .await
        .unwrap();
    assert!(
        TcpStream::connect(other).await.is_err(),
        "the ordinary listener closed"
    );
    let mut late = TcpStream::connect(app)
        .await
        .expect("the keep-accepting listener still accepts");
    assert_eq!(
        exchange(&mut late, b"still here").await.unwrap(),
        b"still here"
    );
    drop(late);

    let mut rest = Vec::new();
    held.read_to_end(&mut rest).await.unwrap();
    drop(held);
    let status = attache.wait_exit(Duration::from_secs(60)).await.unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn post_shutdown_drains_when_enabled() {
    let upstream = servers::echo().await;
    let mut attache = Attache::run(&config(upstream, "", "admin:\n  shutdown_endpoint: true\n"))
        .await
        .unwrap();
    assert_eq!(
        attache.admin_get("/startup").await.unwrap(),
        (200, "started\n".to_owned())
    );
    let (status, body) = http_request(attache.admin(), "POST", "/shutdown")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (202, "draining\n"));
    let status = attache.wait_exit(Duration::from_secs(60)).await.unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn post_shutdown_is_refused_when_not_enabled() {
    let upstream = servers::echo().await;
    let mut attache = Attache::run(&config(upstream, "", "")).await.unwrap();
    let (status, _) = http_request(attache.admin(), "POST", "/shutdown")
        .await
        .unwrap();
    assert_eq!(status, 404);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!attache.has_exited());
    assert_eq!(attache.admin_get("/ready").await.unwrap().0, 200);
}
