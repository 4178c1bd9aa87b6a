//! HTTP clients that lie or give up: their failures are theirs alone. A
//! malformed or aborted upload never ejects a healthy endpoint; a request
//! names one authority (no Host-based route can be bypassed with an
//! absolute-form target); CONNECT is refused; and a response the upstream
//! cuts short is counted as truncated.

use std::net::SocketAddr;

use attache_integration::http_app::HttpApp;
use attache_integration::{Attache, servers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upstream `app` with a breaker that would stay open for the whole test
/// once opened, behind a listener whose `admin.internal` route is refused.
async fn proxy_for(app: SocketAddr) -> Attache {
    Attache::run(&format!(
        "listeners:
  - name: front
    listen: 127.0.0.1:0
    protocol: http
    upstream: app
    http:
      routes:
        - name: admin
          match: {{ host: admin.internal }}
          direct_response: {{ status: 403, body: \"no\\n\" }}
upstreams:
  app:
    endpoints: [\"{app}\"]
    retry: {{ attempts: 1 }}
    breaker: {{ consecutive_failures: 5, open_for: 10m, max_open_for: 10m }}
"
    ))
    .await
    .unwrap()
}

/// Sends `request` as written and returns the response's status code and
/// head (attache answers every request here with a complete head).
async fn raw(front: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(front).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut head = Vec::new();
    let mut chunk = [0; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = stream.read(&mut chunk).await.unwrap();
        assert!(read > 0, "closed without a response: {head:?}");
        head.extend_from_slice(&chunk[..read]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    (status, head)
}

async fn breaker_never_opened(attache: &Attache, app: SocketAddr) {
    let opened = attache
        .metric(&format!(
            "attache_upstream_breaker_transitions_total{{upstream=\"app\",endpoint=\"{app}\",state=\"open\"}}"
        ))
        .await
        .unwrap();
    assert_eq!(opened, 0.0, "a client's failure ejected a healthy endpoint");
}

async fn healthy_request_is_served(front: SocketAddr) {
    let (status, head) = raw(
        front,
        b"GET /status/200 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
}

#[tokio::test]
async fn malformed_chunked_uploads_get_400_and_never_eject_the_endpoint() {
    let app = HttpApp::start("app").await;
    let attache = proxy_for(app.address).await;
    let front = attache.listener("front");
    for _ in 0..8 {
        let (status, head) = raw(
            front,
            b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\nfffffffffffffffff\r\n",
        )
        .await;
        assert_eq!(status, 400, "{head}");
    }
    breaker_never_opened(&attache, app.address).await;
    healthy_request_is_served(front).await;
}

#[tokio::test]
async fn aborted_uploads_never_eject_the_endpoint() {
    let app = HttpApp::start("app").await;
    let attache = proxy_for(app.address).await;
    let front = attache.listener("front");
    for aborted in 1..=8 {
        let mut client = TcpStream::connect(front).await.unwrap();
        client
            .write_all(
                b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            )
            .await
            .unwrap();
        // The upload reached the app: the client gives up mid-body.
        let deadline = std::time::Instant::now() + attache_integration::START_TIMEOUT;
        while app.requests() < aborted {
            assert!(
                std::time::Instant::now() < deadline,
                "upload {aborted} never reached the app: {}",
                attache.log_text()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        drop(client);
        // The connection's end means its request settled (or was dropped).
        attache
            .wait_for_metric("attache_connections_active{listener=\"front\"}", 0.0)
            .await
            .unwrap();
    }
    breaker_never_opened(&attache, app.address).await;
    healthy_request_is_served(front).await;
}

#[tokio::test]
async fn a_request_names_one_authority_and_host_routes_cannot_be_bypassed() {
    let app = HttpApp::start("app").await;
    let attache = proxy_for(app.address).await;
    let front = attache.listener("front");
    let cases: [(&[u8], u16); 7] = [
        // The route refusing admin.internal is not bypassed by a target
        // naming another host.
        (
            b"GET http://other.example/status/200 HTTP/1.1\r\nHost: admin.internal\r\n\r\n",
            400,
        ),
        (
            b"GET /status/200 HTTP/1.1\r\nHost: app\r\nHost: admin.internal\r\n\r\n",
            400,
        ),
        (b"GET /status/200 HTTP/1.1\r\n\r\n", 400),
        (
            b"GET /status/200 HTTP/1.1\r\nHost: admin.internal.\r\n\r\n",
            403,
        ),
        (
            b"GET /status/200 HTTP/1.1\r\nHost: ADMIN.internal:8080\r\n\r\n",
            403,
        ),
        (
            b"GET http://admin.internal/status/200 HTTP/1.1\r\nHost: admin.internal\r\n\r\n",
            403,
        ),
        (
            b"GET http://app/status/200 HTTP/1.1\r\nHost: app\r\n\r\n",
            200,
        ),
    ];
    for (request, expected) in cases {
        let (status, head) = raw(front, request).await;
        assert_eq!(
            status,
            expected,
            "{}\n{head}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(
        app.requests(),
        1,
        "only the agreeing request reached the app"
    );
}

#[tokio::test]
async fn connect_is_refused_and_never_reaches_the_app() {
    let app = HttpApp::start("app").await;
    let attache = proxy_for(app.address).await;
    let front = attache.listener("front");
    let (status, head) = raw(front, b"CONNECT app:443 HTTP/1.1\r\nHost: app:443\r\n\r\n").await;
    assert_eq!(status, 405, "{head}");
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn a_response_the_upstream_cuts_short_is_counted_as_truncated() {
    let upstream = servers::http_truncated(1 << 20, 48 << 10).await;
    let attache = proxy_for(upstream).await;
    let front = attache.listener("front");
    let mut client = TcpStream::connect(front).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    // attache closes the client's connection when the body breaks off.
    let _ = client.read_to_end(&mut received).await;
    let body_start = received
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    assert!(received.len() - body_start < 1 << 20);
    attache
        .wait_for_metric(
            "attache_http_responses_truncated_total{listener=\"front\",route=\"app\",upstream=\"app\"}",
            1.0,
        )
        .await
        .unwrap();
    let lines = attache.wait_for_stdout_lines(1).await.unwrap();
    assert_eq!(lines[0]["complete"], false);
    assert!(lines[0]["timestamp"].is_string(), "{}", lines[0]);
}
