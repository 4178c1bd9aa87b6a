//! HTTP over TLS on both legs: an mTLS front door that negotiates HTTP/2
//! through ALPN and hands the app the verified client identity, and TLS
//! origination to an HTTPS upstream (openssl s_server) requiring a client
//! certificate.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use attache_integration::http_app::HttpApp;
use attache_integration::pki::{ALLOWED_ID, Pki};
use attache_integration::{Attache, curl, servers};
use serde_json::Value;

#[tokio::test]
async fn an_mtls_front_door_speaks_h2_and_passes_the_client_identity() {
    let pki = Pki::new();
    let app = HttpApp::start("app").await;
    let config = format!(
        "listeners:
  - name: front
    listen: 127.0.0.1:0
    protocol: http
    upstream: app
    tls: {{ cert: {cert}, key: {key}, client_ca: {ca} }}
    http: {{ peer_identity_header: x-client-id }}
upstreams:
  app: {{ endpoints: [\"{app}\"] }}
",
        cert = pki.cert("server"),
        key = pki.key("server"),
        ca = pki.ca(),
        app = app.address
    );
    let attache = Attache::run(&config).await.unwrap();
    let url = format!("https://{}/echo", attache.listener("front"));
    let (ca, cert, key) = (pki.ca(), pki.cert("app"), pki.key("app"));
    let client = ["--cacert", &ca, "--cert", &cert, "--key", &key];
    for (version_flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let mut arguments = vec![url.as_str(), version_flag, "-H", "X-Client-Id: forged"];
        arguments.extend(client);
        let response = curl(&arguments).await;
        assert_eq!((response.status, response.version.as_str()), (200, version));
        let echo: Value = serde_json::from_str(&response.body).unwrap();
        assert_eq!(
            echo["headers"]["x-client-id"],
            serde_json::json!([ALLOWED_ID])
        );
        assert_eq!(
            echo["headers"]["x-forwarded-proto"],
            serde_json::json!(["https"])
        );
    }
    let lines = attache.wait_for_stdout_lines(2).await.unwrap();
    assert_eq!(lines[0]["peer"], ALLOWED_ID);
    assert_eq!(lines[0]["protocol"], "HTTP/2");

    // Without a client certificate there is no request at all.
    let output = tokio::process::Command::new("curl")
        .args(["-s", "--cacert", &ca, &url])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert_eq!(app.requests(), 2);
}

/// `openssl s_server -WWW` serving `directory`, requiring client certificates.
struct HttpsServer {
    child: Child,
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn https_server(pki: &Pki, directory: &std::path::Path, port: u16) -> HttpsServer {
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-WWW", "-accept", &port.to_string()])
        .args(["-cert", &pki.cert("server"), "-key", &pki.key("server")])
        .args(["-CAfile", &pki.ca(), "-Verify", "1"])
        .current_dir(directory)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "s_server did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    HttpsServer { child }
}

#[tokio::test]
async fn requests_are_proxied_to_an_https_upstream_with_a_client_certificate() {
    let pki = Pki::new();
    let directory = tempfile::tempdir().unwrap();
    let content = "served over mutual TLS\n".repeat(100);
    std::fs::write(directory.path().join("page.txt"), &content).unwrap();
    let port = servers::closed_port().port();
    let _server = https_server(&pki, directory.path(), port).await;
    let config = format!(
        "listeners:
  - name: out
    listen: 127.0.0.1:0
    protocol: http
    upstream: secure
upstreams:
  secure:
    endpoints: [\"127.0.0.1:{port}\"]
    tls: {{ ca: {ca}, cert: {cert}, key: {key}, server_name: localhost }}
",
        ca = pki.ca(),
        cert = pki.cert("app"),
        key = pki.key("app"),
    );
    let attache = Attache::run(&config).await.unwrap();
    let response = curl(&[&format!("http://{}/page.txt", attache.listener("out"))]).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, content);
    let endpoint = format!("127.0.0.1:{port}");
    assert_eq!(
        attache
            .metric(&format!(
                "attache_upstream_tls_handshakes_total{{upstream=\"secure\",endpoint=\"{endpoint}\",result=\"ok\"}}"
            ))
            .await
            .unwrap(),
        1.0
    );
}
