//! The PROXY protocol on listeners: the header a trusted load balancer
//! sends names the client everywhere attache names one (here the app's
//! `X-Forwarded-For` and the access log), the bytes after it pass
//! byte-exactly, and a header from an untrusted peer, a malformed one, or
//! none is refused and counted. HAProxy (`send-proxy-v2`) and nginx's
//! stream module (`proxy_protocol on`, v1) are the real peers in front;
//! nginx (`listen ... proxy_protocol`) is the real peer behind.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use attache_integration::http_app::HttpApp;
use attache_integration::{Attache, servers};
use attache_proxy_protocol::{encode_v1, encode_v2};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn config(upstream: SocketAddr, protocol: &str, trusted: &str) -> String {
    format!(
        "listeners:
  - name: front
    listen: 127.0.0.1:0
    protocol: {protocol}
    upstream: app
    proxy_protocol: {{ trusted: [{trusted}] }}
upstreams:
  app: {{ endpoints: [\"{upstream}\"] }}
"
    )
}

/// `request` after `header` on a new connection; everything that comes back
/// until attache closes (a refused connection may end in a reset: attache
/// closes it with the client's bytes unread).
async fn send(front: SocketAddr, header: &[u8], request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(front).await.unwrap();
    let _ = stream.write_all(header).await;
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("attache answers and closes");
    answer
}

fn forwarded_for(answer: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(answer);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let echoed: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not the app's echo: {text}"));
    echoed["headers"]["x-forwarded-for"].clone()
}

/// Writes `payload` (then half-closes) while reading everything back.
async fn echo_through(stream: TcpStream, payload: &[u8]) -> Vec<u8> {
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn({
        let payload = payload.to_vec();
        async move {
            write.write_all(&payload).await.unwrap();
            write.shutdown().await.unwrap();
        }
    });
    let mut echoed = Vec::new();
    read.read_to_end(&mut echoed).await.unwrap();
    writer.await.unwrap();
    echoed
}

const REQUEST: &[u8] = b"GET /echo HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn the_header_names_the_client_to_the_app_and_the_access_log() {
    let app = HttpApp::start("app").await;
    let attache = Attache::run(&config(app.address, "http", "\"127.0.0.1\""))
        .await
        .unwrap();
    let front = attache.listener("front");
    let destination: SocketAddr = "10.0.0.1:443".parse().unwrap();
    for (header, client) in [
        (
            encode_v1("203.0.113.7:51234".parse().unwrap(), destination),
            "203.0.113.7",
        ),
        (
            encode_v2("198.51.100.9:40000".parse().unwrap(), destination, &[]),
            "198.51.100.9",
        ),
    ] {
        let answer = send(front, &header, REQUEST).await;
        assert_eq!(forwarded_for(&answer), serde_json::json!([client]));
    }
    let lines = attache.wait_for_stdout_lines(2).await.unwrap();
    assert_eq!(lines[0]["client"], "203.0.113.7:51234");
    assert_eq!(lines[1]["client"], "198.51.100.9:40000");
}

#[tokio::test]
async fn bytes_after_the_header_pass_exactly_and_local_keeps_the_socket_address() {
    let upstream = servers::echo().await;
    let attache = Attache::run(&config(upstream, "tcp", "\"127.0.0.0/8\""))
        .await
        .unwrap();
    let front = attache.listener("front");
    let payload = servers::random_bytes(256 * 1024, 7);
    let header = encode_v2(
        "203.0.113.7:1".parse().unwrap(),
        "10.0.0.1:2".parse().unwrap(),
        &[(0x20, b"tlv")],
    );
    let mut stream = TcpStream::connect(front).await.unwrap();
    stream.write_all(&header).await.unwrap();
    let echoed = echo_through(stream, &payload).await;
    assert_eq!(
        servers::sha256_hex(&echoed),
        servers::sha256_hex(&payload),
        "byte-exact after the header"
    );
    // A v2 LOCAL header (the balancer's health check) is accepted.
    let mut local = attache_proxy_protocol::V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let mut stream = TcpStream::connect(front).await.unwrap();
    stream.write_all(&local).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"ping");
}

#[tokio::test]
async fn untrusted_peers_malformed_and_missing_headers_are_refused_and_counted() {
    let upstream = servers::echo().await;
    let refused = "attache_connections_refused_total{listener=\"front\",reason=\"proxy_protocol\"}";
    // 127.0.0.1 is not trusted here.
    let strict = Attache::run(&config(upstream, "tcp", "\"10.0.0.0/8\""))
        .await
        .unwrap();
    let header = encode_v1(
        "203.0.113.7:1".parse().unwrap(),
        "10.0.0.1:2".parse().unwrap(),
    );
    assert!(
        send(strict.listener("front"), &header, b"ping")
            .await
            .is_empty()
    );
    strict.wait_for_metric(refused, 1.0).await.unwrap();

    let attache = Attache::run(&config(upstream, "tcp", "\"127.0.0.1\""))
        .await
        .unwrap();
    let front = attache.listener("front");
    for (count, garbage) in [
        &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\nping"[..],
        b"ping without any header\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\x01\x02\x03\x04",
    ]
    .into_iter()
    .enumerate()
    {
        assert!(send(front, garbage, b"").await.is_empty(), "{garbage:?}");
        attache
            .wait_for_metric(refused, (count + 1) as f64)
            .await
            .unwrap();
    }
    attache
        .wait_for_log_text("connection refused: PROXY protocol")
        .await
        .unwrap();
}

/// A peer server (HAProxy, nginx) run in the foreground from a config
/// file in its own directory, listening on `address`; killed on drop.
struct Peer {
    child: Child,
    address: SocketAddr,
    _directory: tempfile::TempDir,
}

impl Peer {
    /// Writes `config(address, directory)` to `file` and runs `program`
    /// with `arguments(config path, directory)`, until it listens.
    async fn start(
        program: &str,
        file: &str,
        config: impl FnOnce(SocketAddr, &str) -> String,
        arguments: impl FnOnce(&str, &str) -> Vec<String>,
    ) -> Self {
        let directory = tempfile::tempdir().unwrap();
        let address = servers::closed_port();
        let prefix = directory.path().display().to_string();
        let path = directory.path().join(file).display().to_string();
        std::fs::write(&path, config(address, &prefix)).unwrap();
        let child = Command::new(program)
            .args(arguments(&path, &prefix))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("{program} is installed by .ci/run: {error}"));
        let deadline = std::time::Instant::now() + attache_integration::START_TIMEOUT;
        while TcpStream::connect(address).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{program} did not listen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            child,
            address,
            _directory: directory,
        }
    }

    /// HAProxy forwarding to `backend` with `send-proxy-v2`.
    async fn haproxy(backend: SocketAddr) -> Self {
        Self::start(
            "haproxy",
            "haproxy.cfg",
            |address, _| {
                format!(
                    "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                     frontend front\n  bind {address}\n  default_backend attache\n\
                     backend attache\n  server attache {backend} send-proxy-v2\n"
                )
            },
            |config, _| vec!["-db".into(), "-f".into(), config.into()],
        )
        .await
    }

    /// nginx's stream module forwarding to `backend` with `proxy_protocol
    /// on` (it sends v1); `proxy_half_close` so a client's half-close does
    /// not end the session before the echo comes back.
    async fn nginx_stream(backend: SocketAddr) -> Self {
        Self::start(
            "nginx",
            "nginx.conf",
            |address, prefix| {
                format!(
                    "load_module {STREAM_MODULE};\npid {prefix}/nginx.pid;\nerror_log stderr;\nevents {{}}\n\
                     stream {{\n  server {{\n    listen {address};\n    proxy_pass {backend};\n    proxy_protocol on;\n    proxy_half_close on;\n  }}\n}}\n"
                )
            },
            |_, prefix| {
                ["-e", "stderr", "-p", prefix, "-c", "nginx.conf", "-g", NGINX_FOREGROUND]
                    .map(str::to_owned)
                    .to_vec()
            },
        )
        .await
    }

    /// nginx answering every request with the client address its PROXY
    /// protocol header named.
    async fn nginx() -> Self {
        Self::start(
            "nginx",
            "nginx.conf",
            |address, prefix| {
                format!(
                    "pid {prefix}/nginx.pid;\nerror_log stderr;\nevents {{}}\n\
                     http {{\n  access_log off;\n  client_body_temp_path {prefix};\n  proxy_temp_path {prefix};\n\
                     fastcgi_temp_path {prefix};\n  uwsgi_temp_path {prefix};\n  scgi_temp_path {prefix};\n\
                     server {{\n    listen {address} proxy_protocol;\n\
                     location / {{ return 200 \"$proxy_protocol_addr\\n\"; }}\n  }}\n}}\n"
                )
            },
            |_, prefix| {
                ["-e", "stderr", "-p", prefix, "-c", "nginx.conf", "-g", NGINX_FOREGROUND]
                    .map(str::to_owned)
                    .to_vec()
            },
        )
        .await
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx in the foreground as one process: killing it stops it all (a
/// killed master leaves its worker running, holding its port, forever).
const NGINX_FOREGROUND: &str = "daemon off; master_process off;";

/// Where Debian's libnginx-mod-stream puts the module (`.ci/run` installs it).
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// Through `front` (a load balancer started in front of attache's http
/// listener), a client from 127.0.0.2 reaches the app as 127.0.0.2.
async fn the_app_sees_the_real_client_behind(front: fn(SocketAddr) -> BoxedPeer) {
    let app = HttpApp::start("app").await;
    let attache = Attache::run(&config(app.address, "http", "\"127.0.0.1\""))
        .await
        .unwrap();
    let balancer = front(attache.listener("front")).await;
    // The client comes from 127.0.0.2; the balancer connects from 127.0.0.1.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(balancer.address).await.unwrap();
    stream.write_all(REQUEST).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("an answer through the load balancer")
        .unwrap();
    assert_eq!(forwarded_for(&answer), serde_json::json!(["127.0.0.2"]));
}

/// Through `front` in front of attache's tcp listener, 1 MiB echoes back exactly.
async fn bytes_pass_exactly_behind(front: fn(SocketAddr) -> BoxedPeer) {
    let upstream = servers::echo().await;
    let attache = Attache::run(&config(upstream, "tcp", "\"127.0.0.1\""))
        .await
        .unwrap();
    let balancer = front(attache.listener("front")).await;
    let payload = servers::random_bytes(1024 * 1024, 11);
    let stream = TcpStream::connect(balancer.address).await.unwrap();
    let echoed = echo_through(stream, &payload).await;
    assert_eq!(servers::sha256_hex(&echoed), servers::sha256_hex(&payload));
    assert_eq!(
        attache
            .metric(
                r#"attache_connections_refused_total{listener="front",reason="proxy_protocol"}"#
            )
            .await
            .unwrap_or(0.0),
        0.0
    );
}

type BoxedPeer = std::pin::Pin<Box<dyn std::future::Future<Output = Peer>>>;

fn haproxy(backend: SocketAddr) -> BoxedPeer {
    Box::pin(Peer::haproxy(backend))
}

fn nginx_stream(backend: SocketAddr) -> BoxedPeer {
    Box::pin(Peer::nginx_stream(backend))
}

#[tokio::test]
async fn behind_haproxy_the_app_sees_the_real_client() {
    the_app_sees_the_real_client_behind(haproxy).await;
}

#[tokio::test]
async fn behind_haproxy_bytes_pass_exactly() {
    bytes_pass_exactly_behind(haproxy).await;
}

#[tokio::test]
async fn behind_nginx_stream_the_app_sees_the_real_client() {
    the_app_sees_the_real_client_behind(nginx_stream).await;
}

#[tokio::test]
async fn behind_nginx_stream_bytes_pass_exactly() {
    bytes_pass_exactly_behind(nginx_stream).await;
}

fn sending_config(upstream: SocketAddr, version: &str) -> String {
    format!(
        "listeners:
  - name: front
    listen: 127.0.0.1:0
    protocol: tcp
    upstream: app
upstreams:
  app: {{ endpoints: [\"{upstream}\"], proxy_protocol: {version} }}
"
    )
}

#[tokio::test]
async fn nginx_behind_attache_learns_the_client_from_both_versions() {
    let nginx = Peer::nginx().await;
    for version in ["v1", "v2"] {
        let attache = Attache::run(&sending_config(nginx.address, version))
            .await
            .unwrap();
        // The client comes from 127.0.0.2; attache connects from 127.0.0.1.
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut stream = socket.connect(attache.listener("front")).await.unwrap();
        stream.write_all(REQUEST).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
            .await
            .expect("nginx answers through attache")
            .unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "{version}: {text}");
        assert!(text.ends_with("\r\n\r\n127.0.0.2\n"), "{version}: {text}");
    }
}

#[tokio::test]
async fn the_header_attache_sends_names_the_address_the_client_reached() {
    // A listener on one address names that address; a wildcard listener
    // names the address each client connected to.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = app.local_addr().unwrap();
    let config = format!(
        "listeners:
  - {{ name: one, listen: \"127.0.0.1:0\", protocol: tcp, upstream: app }}
  - {{ name: any, listen: \"0.0.0.0:0\", protocol: tcp, upstream: app, unsafe_plaintext: true }}
upstreams:
  app: {{ endpoints: [\"{upstream}\"], proxy_protocol: v1 }}
"
    );
    let attache = Attache::run(&config).await.unwrap();
    let one = attache.listener("one");
    let any_port = attache.listener("any").port();
    for reached in [one, SocketAddr::from(([127, 0, 0, 3], any_port))] {
        let client = TcpStream::connect(reached).await.unwrap();
        let (mut accepted, _) = app.accept().await.unwrap();
        let mut header = Vec::new();
        while !header.ends_with(b"\r\n") {
            let mut byte = [0_u8];
            accepted.read_exact(&mut byte).await.unwrap();
            header.push(byte[0]);
        }
        let client_port = client.local_addr().unwrap().port();
        assert_eq!(
            String::from_utf8(header).unwrap(),
            format!(
                "PROXY TCP4 127.0.0.1 {} {client_port} {}\r\n",
                reached.ip(),
                reached.port()
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn v2_carries_the_verified_client_identity_before_the_tls_clients_bytes() {
    let pki = attache_integration::pki::Pki::new();
    // An upstream that reads the header, then answers with what it said.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buffer = Vec::new();
        let header = loop {
            let mut chunk = [0; 512];
            let read = stream.read(&mut chunk).await.unwrap();
            buffer.extend_from_slice(&chunk[..read]);
            if let Some(header) =
                attache_proxy_protocol::parse(&buffer, attache_proxy_protocol::Accept::V2).unwrap()
            {
                break header;
            }
        };
        let body = &buffer[28..header.length];
        let text = format!(
            "source={} tlv={:02x} value={}\n",
            header.addresses.unwrap().source.ip(),
            body[0],
            String::from_utf8_lossy(&body[3..])
        );
        stream.write_all(text.as_bytes()).await.unwrap();
    });
    let attache = Attache::run(&format!(
        "listeners:\n  - name: front\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: app\n\
         \x20   tls: {{cert: {}, key: {}, client_ca: {}}}\n\
         upstreams:\n  app: {{ endpoints: [\"{upstream}\"], proxy_protocol: v2 }}\n",
        pki.cert("server"),
        pki.key("server"),
        pki.ca(),
    ))
    .await
    .unwrap();
    let output = Command::new("timeout")
        .args(["20", "openssl", "s_client", "-quiet", "-connect"])
        .arg(attache.listener("front").to_string())
        .args(["-servername", "localhost", "-CAfile", &pki.ca()])
        .args(["-cert", &pki.cert("app"), "-key", &pki.key("app")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        text.trim(),
        format!(
            "source=127.0.0.1 tlv=e0 value={}",
            attache_integration::pki::ALLOWED_ID
        )
    );
}
