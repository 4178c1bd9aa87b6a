//! A log reader that stops reading (a stuck collector, a full pipe) never
//! freezes attache: requests keep being served, `/metrics` answers and
//! counts the dropped lines, and SIGTERM still drains and exits 0.

use std::time::Duration;

use attache_integration::http_app::HttpApp;
use attache_integration::{Attache, Stalled, servers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one request or connection may take before the test calls it
/// stalled: far beyond any loaded machine, far below "forever".
const STALL: Duration = Duration::from_secs(20);

/// Enough lines to fill a 64 KiB pipe and attache's 4096-line queue many
/// times over.
const MAX_ROUNDS: usize = 40;
const PER_ROUND: usize = 500;

async fn dropped(attache: &Attache, stream: &str) -> f64 {
    attache
        .metric(&format!(
            "attache_log_lines_dropped_total{{stream=\"{stream}\"}}"
        ))
        .await
        .expect("/metrics answers while the log reader is stuck")
}

/// `attache PROTOCOL` to `upstream`, with `stalled`'s reader stopped.
async fn one_liner(protocol: &str, upstream: std::net::SocketAddr, stalled: Stalled) -> Attache {
    let upstream = upstream.to_string();
    Attache::spawn_stalled(
        &[
            protocol,
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--admin",
            "127.0.0.1:0",
        ],
        None,
        &[],
        Some(stalled),
    )
    .await
    .unwrap()
}

async fn terminate_and_expect_clean_exit(mut attache: Attache) {
    attache.terminate();
    let status = attache
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("SIGTERM ends attache although its log reader is stuck");
    assert!(status.success(), "{status}");
}

/// One HTTP/1.1 request on a keep-alive connection; its access-log line
/// carries a 2 KiB header, so lines are large.
async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
) {
    let request = http::Request::get("/status/200")
        .header("host", "app")
        .header("x-padding", "p".repeat(2048))
        .body(http_body_util::Empty::new())
        .unwrap();
    let exchange = async {
        sender.ready().await?;
        sender.send_request(request).await
    };
    let response = tokio::time::timeout(STALL, exchange)
        .await
        .expect("a request stalled: a stuck stdout reader blocks the proxy")
        .expect("the request is answered");
    assert_eq!(response.status(), 200);
    let _ = http_body_util::BodyExt::collect(response.into_body()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_access_log_reader_drops_lines_and_the_proxy_keeps_serving() {
    let app = HttpApp::start("app").await;
    let attache = one_liner("http", app.address, Stalled::Stdout).await;
    let front = attache.listener("http");
    let stream = tokio::net::TcpStream::connect(front).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);

    let mut rounds = 0;
    while dropped(&attache, "stdout").await == 0.0 {
        rounds += 1;
        assert!(rounds <= MAX_ROUNDS, "no access-log line was ever dropped");
        for _ in 0..PER_ROUND {
            get(&mut sender).await;
        }
    }
    // Still served, and still counted, after the drops began.
    for _ in 0..PER_ROUND {
        get(&mut sender).await;
    }
    let (status, _) = attache.admin_get("/ready").await.unwrap();
    assert_eq!(status, 200);
    assert!(dropped(&attache, "stdout").await > 0.0);
    drop(sender);
    terminate_and_expect_clean_exit(attache).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_log_reader_drops_lines_and_the_proxy_keeps_serving() {
    // Debug logging writes a line for every connection that closes.
    let attache = one_liner("tcp", servers::echo().await, Stalled::Stderr).await;
    let front = attache.listener("tcp");
    let echo_once = || async move {
        let exchange = async {
            let mut client = tokio::net::TcpStream::connect(front).await.unwrap();
            client.write_all(b"ping").await.unwrap();
            client.shutdown().await.unwrap();
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).await.unwrap();
            reply
        };
        let reply = tokio::time::timeout(STALL, exchange)
            .await
            .expect("a connection stalled: a stuck stderr reader blocks the proxy");
        assert_eq!(reply, b"ping");
    };

    let mut rounds = 0;
    while dropped(&attache, "stderr").await == 0.0 {
        rounds += 1;
        assert!(rounds <= MAX_ROUNDS, "no log line was ever dropped");
        for _ in 0..PER_ROUND {
            echo_once().await;
        }
    }
    for _ in 0..PER_ROUND {
        echo_once().await;
    }
    let (status, _) = attache.admin_get("/live").await.unwrap();
    assert_eq!(status, 200);
    terminate_and_expect_clean_exit(attache).await;
}
