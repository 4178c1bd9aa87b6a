//! The HTTP listener in front of an app, with real clients (curl, a
//! WebSocket client, raw sockets): the headers the app sees, HTTP/2 prior
//! knowledge, direct responses and routing, header limits, slowloris, the
//! access log and the request metrics.

use std::net::SocketAddr;
use std::time::Duration;

use attache_integration::http_app::HttpApp;
use attache_integration::{Attache, CurlResponse, curl, header};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn single(echo: &Value, name: &str) -> String {
    let values = echo["headers"][name]
        .as_array()
        .unwrap_or_else(|| panic!("no {name} header in {echo}"));
    assert_eq!(values.len(), 1, "{name}: {values:?}");
    values[0].as_str().unwrap().to_owned()
}

fn front_door(app: SocketAddr, http_extra: &str) -> String {
    format!(
        "listeners:
  - name: front
    listen: 127.0.0.1:0
    protocol: http
    upstream: app
    http:
      upstream_time_header: x-upstream-response-time
{http_extra}
upstreams:
  app:
    endpoints: [\"{app}\"]
"
    )
}

#[tokio::test]
async fn the_app_sees_forwarded_headers_a_request_id_and_no_hop_by_hop_headers() {
    let app = HttpApp::start("app").await;
    let attache = Attache::run(&front_door(app.address, "")).await.unwrap();
    let front = attache.listener("front");
    let url = format!("http://{front}/echo/path?token=abc&page=2");
    let CurlResponse {
        status,
        headers,
        body,
        ..
    } = curl(&[
        &url,
        "-H",
        "X-Forwarded-For: 203.0.113.9",
        "-H",
        "Connection: keep-alive, x-drop",
        "-H",
        "X-Drop: 1",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "Authorization: Bearer secret",
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    let first_length = body.len();
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["uri"], "/echo/path?token=abc&page=2");
    let mut names: Vec<_> = echo["headers"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "accept",
            "authorization",
            "host",
            "user-agent",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-real-ip",
            "x-request-id"
        ]
    );
    assert_eq!(single(&echo, "host"), front.to_string());
    assert_eq!(single(&echo, "x-forwarded-for"), "203.0.113.9, 127.0.0.1");
    assert_eq!(single(&echo, "x-real-ip"), "127.0.0.1");
    assert_eq!(single(&echo, "x-forwarded-proto"), "http");
    assert_eq!(single(&echo, "x-forwarded-host"), front.to_string());
    assert_eq!(single(&echo, "authorization"), "Bearer secret");
    let request_id = single(&echo, "x-request-id");
    let groups: Vec<_> = request_id.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{request_id}");
    assert_eq!(header(&headers, "x-served-by"), Some("app"));
    let upstream_time: f64 = header(&headers, "x-upstream-response-time")
        .expect("upstream time header")
        .parse()
        .unwrap();
    assert!(upstream_time >= 0.0);

    // A request id the client sends is kept.
    let CurlResponse { body, .. } = curl(&[
        &format!("http://{front}/echo"),
        "-H",
        "X-Request-Id: trace-me-42",
    ])
    .await;
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(single(&echo, "x-request-id"), "trace-me-42");

    // One access log line per request, credentials redacted.
    let lines = attache.wait_for_stdout_lines(2).await.unwrap();
    let first = &lines[0];
    assert_eq!(first["status"], 200);
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/echo/path?token=[redacted]&page=2");
    assert_eq!(first["request_headers"]["authorization"], "[redacted]");
    assert_eq!(first["request_id"], request_id.as_str());
    assert_eq!(first["upstream"], "app");
    assert_eq!(first["endpoint"], app.address.to_string());
    assert_eq!(first["route"], "app");
    assert_eq!(first["bytes_sent"], first_length);
    assert_eq!(first["complete"], true);
    assert_eq!(lines[1]["request_id"], "trace-me-42");
    assert_eq!(
        attache
            .metric("attache_http_requests_total{listener=\"front\",route=\"app\",upstream=\"app\",status_class=\"2xx\"}")
            .await
            .unwrap(),
        2.0
    );
    assert_eq!(app.requests(), 2);
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_proxied_to_an_http1_app() {
    let app = HttpApp::start("app").await;
    let attache = Attache::run(&front_door(app.address, "")).await.unwrap();
    let front = attache.listener("front");
    let CurlResponse {
        status,
        body,
        version,
        ..
    } = curl(&["--http2-prior-knowledge", &format!("http://{front}/echo")]).await;
    assert_eq!((status, version.as_str()), (200, "2"));
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["version"], "HTTP/1.1");
    // HTTP/2 carries the authority as :authority; the app still gets a Host.
    assert_eq!(single(&echo, "host"), front.to_string());
    let lines = attache.wait_for_stdout_lines(1).await.unwrap();
    assert_eq!(lines[0]["protocol"], "HTTP/2");
}

#[tokio::test]
async fn http2_to_the_app_with_prior_knowledge() {
    let app = HttpApp::start("app").await;
    let config = front_door(app.address, "")
        .replace("    endpoints:", "    http_version: http2\n    endpoints:");
    let attache = Attache::run(&config).await.unwrap();
    let front = attache.listener("front");
    for _ in 0..3 {
        let response = curl(&[&format!("http://{front}/echo")]).await;
        assert_eq!(response.status, 200);
        let echo: Value = serde_json::from_str(&response.body).unwrap();
        assert_eq!(echo["version"], "HTTP/2.0");
        assert_eq!(single(&echo, "host"), front.to_string());
    }
    // The three requests shared one multiplexed connection.
    assert_eq!(
        attache
            .metric(&format!(
                "attache_upstream_connect_attempts_total{{upstream=\"app\",endpoint=\"{}\"}}",
                app.address
            ))
            .await
            .unwrap(),
        1.0
    );
}

#[tokio::test]
async fn direct_responses_and_routes_by_host_prefix_method_and_header() {
    let web = HttpApp::start("web").await;
    let api = HttpApp::start("api").await;
    let canary = HttpApp::start("canary").await;
    let config = format!(
        "listeners:
  - name: front
    listen: 127.0.0.1:0
    protocol: http
    upstream: web
    http:
      routes:
        - name: health
          match: {{ path_prefix: /health }}
          direct_response: {{ status: 200, body: \"ok\\n\" }}
        - name: canary
          match: {{ headers: {{ x-canary: \"1\" }} }}
          upstream: canary
        - name: api
          match: {{ host: \"*.example.com\", path_prefix: /echo/v1/, method: [GET, PUT] }}
          upstream: api
  - name: routes-only
    listen: 127.0.0.1:0
    protocol: http
    http:
      routes:
        - match: {{ path_prefix: /echo }}
          upstream: api
upstreams:
  web: {{ endpoints: [\"{}\"] }}
  api: {{ endpoints: [\"{}\"] }}
  canary: {{ endpoints: [\"{}\"] }}
",
        web.address, api.address, canary.address
    );
    let attache = Attache::run(&config).await.unwrap();
    let front = attache.listener("front");
    let CurlResponse {
        status,
        headers,
        body,
        ..
    } = curl(&[&format!("http://{front}/health")]).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(header(&headers, "x-served-by"), None);

    let served_by = |arguments: Vec<String>| async move {
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        let CurlResponse {
            status, headers, ..
        } = curl(&arguments).await;
        assert_eq!(status, 200);
        header(&headers, "x-served-by").unwrap().to_owned()
    };
    let url = |path: &str| format!("http://{front}{path}");
    let host = |name: &str| format!("Host: {name}");
    assert_eq!(
        served_by(vec![
            url("/echo/v1/a"),
            "-H".into(),
            host("api.example.com")
        ])
        .await,
        "api"
    );
    assert_eq!(
        served_by(vec![
            url("/echo/v1/a"),
            "-X".into(),
            "PUT".into(),
            "-H".into(),
            host("API.Example.com:8080")
        ])
        .await,
        "api"
    );
    // Each failed condition falls through to the default upstream.
    assert_eq!(
        served_by(vec![url("/echo/v1/a"), "-H".into(), host("example.com")]).await,
        "web"
    );
    assert_eq!(
        served_by(vec![
            url("/echo/v2/a"),
            "-H".into(),
            host("api.example.com")
        ])
        .await,
        "web"
    );
    assert_eq!(
        served_by(vec![
            url("/echo/v1/a"),
            "-X".into(),
            "POST".into(),
            "-H".into(),
            host("api.example.com")
        ])
        .await,
        "web"
    );
    // Routes are evaluated in order: the header route comes first.
    assert_eq!(
        served_by(vec![
            url("/echo/v1/a"),
            "-H".into(),
            host("api.example.com"),
            "-H".into(),
            "X-Canary: 1".into()
        ])
        .await,
        "canary"
    );
    let other = attache.listener("routes-only");
    let CurlResponse { status, body, .. } = curl(&[&format!("http://{other}/nothing-here")]).await;
    assert_eq!(
        (status, body.as_str()),
        (404, "attache: no route for this request\n")
    );
    let CurlResponse {
        status, headers, ..
    } = curl(&[&format!("http://{other}/echo")]).await;
    assert_eq!(
        (status, header(&headers, "x-served-by")),
        (200, Some("api"))
    );
    assert_eq!(
        attache
            .metric("attache_http_requests_total{listener=\"front\",route=\"health\",upstream=\"\",status_class=\"2xx\"}")
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(
        attache
            .metric("attache_http_requests_total{listener=\"routes-only\",route=\"unrouted\",upstream=\"\",status_class=\"4xx\"}")
            .await
            .unwrap(),
        1.0
    );
}

#[tokio::test]
async fn oversized_or_too_many_request_headers_get_431() {
    let app = HttpApp::start("app").await;
    let attache = Attache::run(&front_door(
        app.address,
        "      max_header_bytes: 16384\n      max_headers: 20",
    ))
    .await
    .unwrap();
    let front = attache.listener("front");
    let big = format!("X-Big: {}", "a".repeat(20_000));
    let CurlResponse { status, .. } = curl(&[&format!("http://{front}/echo"), "-H", &big]).await;
    assert_eq!(status, 431);
    let mut arguments = vec![format!("http://{front}/echo")];
    for index in 0..25 {
        arguments.push("-H".into());
        arguments.push(format!("X-Header-{index}: {index}"));
    }
    let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
    let CurlResponse { status, .. } = curl(&arguments).await;
    assert_eq!(status, 431);
    // Within the limits the same request goes through.
    let CurlResponse { status, .. } =
        curl(&[&format!("http://{front}/echo"), "-H", "X-Small: 1"]).await;
    assert_eq!(status, 200);
    assert_eq!(app.requests(), 1);
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_disconnected() {
    let app = HttpApp::start("app").await;
    let attache = Attache::run(&front_door(app.address, "      header_read_timeout: 1s"))
        .await
        .unwrap();
    let front = attache.listener("front");
    let mut client = TcpStream::connect(front).await.unwrap();
    client
        .write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // One header line every 200 ms would take 20 s; the 1 s limit ends it.
    let mut closed = false;
    for index in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if client
            .write_all(format!("X-Slow-{index}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut buffer = [0; 256];
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(1), client.read(&mut buffer)).await
        {
            // Whatever hyper answers (408 or nothing), the connection ends.
            assert!(!String::from_utf8_lossy(&buffer[..read.unwrap_or(0)]).contains(" 200 "));
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the connection was still open after 20 s of trickling"
    );

    // A connection that never sends a byte is closed too.
    let mut silent = TcpStream::connect(front).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut [0; 16]))
        .await
        .expect("a silent connection is closed within the header read timeout");
    assert_eq!(read.unwrap(), 0);
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn an_access_log_header_list_keeps_only_those_headers() {
    let app = HttpApp::start("app").await;
    let attache = Attache::run(&front_door(
        app.address,
        "      access_log: {headers: [User-Agent, authorization]}",
    ))
    .await
    .unwrap();
    let url = format!("http://{}/echo", attache.listener("front"));
    let CurlResponse { status, body, .. } = curl(&[
        &url,
        "-H",
        "Authorization: Bearer secret",
        "-H",
        "X-Other: 1",
        "-A",
        "curl-test",
    ])
    .await;
    assert_eq!(status, 200);
    // The app still gets every header; only the log line is shorter.
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(single(&echo, "x-other"), "1");
    let lines = attache.wait_for_stdout_lines(1).await.unwrap();
    let logged = lines[0]["request_headers"].as_object().unwrap();
    let mut names: Vec<&String> = logged.keys().collect();
    names.sort();
    assert_eq!(names, ["authorization", "user-agent"]);
    assert_eq!(logged["authorization"], "[redacted]");
    assert_eq!(logged["user-agent"], "curl-test");
}

#[tokio::test]
async fn websocket_messages_echo_through_the_proxy() {
    let app = HttpApp::start("app").await;
    // On a current-thread runtime, as on a one-CPU pod: the tunnel task
    // shares the thread with the connections.
    let attache = Attache::run_with_env(
        &front_door(app.address, ""),
        &[("ATTACHE_WORKER_THREADS", "1")],
    )
    .await
    .unwrap();
    let front = attache.listener("front");
    let stream = TcpStream::connect(front).await.unwrap();
    let (mut socket, response) =
        tokio_tungstenite::client_async(format!("ws://{front}/ws"), stream)
            .await
            .expect("WebSocket handshake through attache");
    assert_eq!(response.status(), 101);
    let binary: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    for message in [
        Message::text("hello through attache"),
        Message::binary(binary.clone()),
        Message::text("and again"),
    ] {
        socket.send(message.clone()).await.unwrap();
        let echoed = socket.next().await.expect("an echo").unwrap();
        assert_eq!(echoed, message);
    }
    socket.close(None).await.unwrap();
}

/// GETs `path` on an open HTTP/1.1 connection; the status and body.
async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    front: SocketAddr,
    path: &str,
) -> (u16, String) {
    use http_body_util::BodyExt as _;
    sender.ready().await.unwrap();
    let request = http::Request::get(path)
        .header("host", front.to_string())
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn a_keep_alive_clients_requests_reuse_one_upstream_connection_until_the_app_closes_it() {
    let app = HttpApp::start("app").await;
    let attache = Attache::run(&front_door(app.address, "")).await.unwrap();
    let front = attache.listener("front");
    let stream = TcpStream::connect(front).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut peers = Vec::new();
    for _ in 0..4 {
        let (status, body) = get_on(&mut sender, front, "/echo").await;
        assert_eq!(status, 200);
        let echo: Value = serde_json::from_str(&body).unwrap();
        peers.push(echo["peer"].as_str().unwrap().to_owned());
    }
    assert!(
        peers.iter().all(|peer| *peer == peers[0]),
        "one upstream connection: {peers:?}"
    );
    // The app closes that connection after answering: the next request
    // goes out on a new one, and the client never sees the difference.
    assert_eq!(get_on(&mut sender, front, "/close").await.0, 200);
    let (status, body) = get_on(&mut sender, front, "/echo").await;
    assert_eq!(status, 200);
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_ne!(echo["peer"].as_str().unwrap(), peers[0]);
    let connects = attache
        .metric(&format!(
            "attache_upstream_connect_attempts_total{{upstream=\"app\",endpoint=\"{}\"}}",
            app.address
        ))
        .await
        .unwrap();
    assert_eq!(connects, 2.0);
}

#[tokio::test]
async fn an_http2_clients_concurrent_requests_each_get_an_http1_connection_of_their_own() {
    use http_body_util::BodyExt as _;
    let app = HttpApp::start("app").await;
    let attache = Attache::run(&front_door(app.address, "")).await.unwrap();
    let front = attache.listener("front");
    let stream = TcpStream::connect(front).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    // Eight requests at once, each answered after the app has seen all
    // eight: they cannot share an upstream HTTP/1 connection.
    app.gate(8);
    let requests = (0..8).map(|index| {
        let mut sender = sender.clone();
        async move {
            let request = http::Request::get(format!("http://{front}/echo/{index}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let echo: Value = serde_json::from_slice(&body).unwrap();
            (
                status,
                echo["uri"].as_str().unwrap().to_owned(),
                echo["peer"].as_str().unwrap().to_owned(),
            )
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    let mut peers: Vec<&str> = answers.iter().map(|(_, _, peer)| peer.as_str()).collect();
    peers.sort_unstable();
    peers.dedup();
    assert_eq!(peers.len(), 8, "{answers:?}");
    for (index, (status, uri, _)) in answers.iter().enumerate() {
        assert_eq!(
            (*status, uri.as_str()),
            (200, format!("/echo/{index}").as_str())
        );
    }
}
