//! Mutual TLS through the real binary and real TLS stacks: a two-attache
//! tunnel carrying Redis and MariaDB, interop with openssl s_client and curl,
//! origination to a TLS redis-server, and every refusal class counted.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use attache_integration::pki::{ALLOWED_ID, Pki};
use attache_integration::redis_server::RedisServer;
use attache_integration::{Attache, mariadb_pool, redis_ping, servers, wait_until_expired};

/// A front door: TLS listener `front` requiring a client certificate with
/// the allowed SPIFFE ID, forwarding to `upstream`.
async fn front_door(pki: &Pki, upstream: SocketAddr) -> Attache {
    Attache::run(&format!(
        "listeners:\n  - name: front\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: app\n\
         \x20   tls:\n      cert: {}\n      key: {}\n      client_ca: {}\n      allow:\n        uris: [\"spiffe://cluster.local/ns/default/sa/*\"]\n        cns: []\n\
         upstreams:\n  app:\n    endpoints: [\"{upstream}\"]\n",
        pki.cert("server"),
        pki.key("server"),
        pki.ca(),
    ))
    .await
    .unwrap()
}

fn handshakes(result: &str) -> String {
    format!("attache_tls_handshakes_total{{listener=\"front\",result=\"{result}\"}}")
}

/// A front door that lets only the exact allowed ID in.
async fn strict_front_door(pki: &Pki, upstream: SocketAddr) -> Attache {
    Attache::run(&format!(
        "listeners:\n  - name: front\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: app\n\
         \x20   tls:\n      cert: {}\n      key: {}\n      client_ca: {}\n      allow:\n        uris: [\"{ALLOWED_ID}\"]\n\
         upstreams:\n  app:\n    endpoints: [\"{upstream}\"]\n",
        pki.cert("server"),
        pki.key("server"),
        pki.ca(),
    ))
    .await
    .unwrap()
}

#[tokio::test]
async fn a_tunnel_of_two_attaches_carries_redis_and_mariadb() {
    use mysql_async::prelude::Queryable;

    let pki = Pki::new();
    let redis_door = strict_front_door(&pki, "127.0.0.1:6379".parse().unwrap()).await;
    let mariadb_door = strict_front_door(&pki, "127.0.0.1:3306".parse().unwrap()).await;
    let ambassador = Attache::run(&format!(
        "listeners:\n  - name: redis\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: redis\n\
         \x20 - name: mariadb\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: mariadb\n\
         upstreams:\n\
         \x20 redis:\n    endpoints: [\"{}\"]\n    tls: {{ca: {ca}, cert: {cert}, key: {key}, server_name: localhost}}\n\
         \x20 mariadb:\n    endpoints: [\"{}\"]\n    tls: {{ca: {ca}, cert: {cert}, key: {key}, server_name: localhost}}\n",
        redis_door.listener("front"),
        mariadb_door.listener("front"),
        ca = pki.ca(),
        cert = pki.cert("app"),
        key = pki.key("app"),
    ))
    .await
    .unwrap();

    assert_eq!(
        redis_ping(ambassador.listener("redis")).await.unwrap(),
        "PONG"
    );
    let client = redis::Client::open(format!("redis://{}/", ambassador.listener("redis"))).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!(
        "attache_mtls_{}_{}",
        std::process::id(),
        rand::random::<u32>()
    );
    let value = servers::random_bytes(1024 * 1024, 21);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(&value)
        .query_async(&mut connection)
        .await
        .unwrap();
    let back: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(servers::sha256_hex(&back), servers::sha256_hex(&value));
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();

    let address = ambassador.listener("mariadb");
    let pool = mariadb_pool(address);
    let mut mariadb = pool.get_conn().await.unwrap();
    let answer: Option<i64> = mariadb.query_first("SELECT 41 + 1").await.unwrap();
    assert_eq!(answer, Some(42));
    drop(mariadb);
    pool.disconnect().await.unwrap();

    assert!(redis_door.metric(&handshakes("ok")).await.unwrap() >= 1.0);
    let originated = "attache_upstream_tls_handshakes_total{upstream=\"redis\",endpoint=\"";
    let metrics = ambassador.metrics().await.unwrap();
    let ok: f64 = metrics
        .iter()
        .filter(|(sample, _)| sample.starts_with(originated) && sample.ends_with("result=\"ok\"}"))
        .map(|(_, value)| value)
        .sum();
    assert!(ok >= 1.0, "originated handshakes: {metrics:?}");
}

/// Runs openssl s_client against `address` with `arguments`, sending
/// `input`; it is killed after 20 s (`-quiet` waits for the server to close).
fn s_client(address: SocketAddr, arguments: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new("timeout")
        .args([
            "20",
            "openssl",
            "s_client",
            "-connect",
            &address.to_string(),
            "-quiet",
            "-servername",
            "localhost",
        ])
        .args(arguments)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

// Blocking child processes run while in-process servers serve.
#[tokio::test(flavor = "multi_thread")]
async fn openssl_s_client_with_an_allowed_certificate_reaches_redis() {
    let pki = Pki::new();
    let door = front_door(&pki, "127.0.0.1:6379".parse().unwrap()).await;
    let (_, output) = s_client(
        door.listener("front"),
        &[
            "-CAfile",
            &pki.ca(),
            "-cert",
            &pki.cert("app"),
            "-key",
            &pki.key("app"),
            "-verify_return_error",
        ],
        "PING\r\nQUIT\r\n",
    );
    assert!(output.contains("+PONG"), "s_client output: {output:?}");
    door.wait_for_metric(&handshakes("ok"), 1.0).await.unwrap();
}

// Blocking child processes run while in-process servers serve.
#[tokio::test(flavor = "multi_thread")]
async fn curl_with_a_client_certificate_gets_through_the_front_door() {
    let pki = Pki::new();
    let app = servers::http_ok("hello over mtls").await;
    let door = front_door(&pki, app).await;
    let url = format!("https://localhost:{}/", door.listener("front").port());
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            &pki.ca(),
            "--cert",
            &pki.cert("app"),
            "--key",
            &pki.key("app"),
        ])
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", door.listener("front").port()),
            &url,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hello over mtls");

    let refused = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert", &pki.ca()])
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", door.listener("front").port()),
            &url,
        ])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "curl without a client certificate must fail"
    );
    door.wait_for_metric(&handshakes("no_client_cert"), 1.0)
        .await
        .unwrap();
}

// Blocking child processes run while in-process servers serve.
#[tokio::test(flavor = "multi_thread")]
async fn each_refusal_is_classified_and_counted() {
    let pki = Pki::new();
    let door = strict_front_door(&pki, servers::echo().await).await;
    let front = door.listener("front");
    let ca = pki.ca();
    let with = |name: &str| {
        vec![
            "-CAfile".to_owned(),
            ca.clone(),
            "-cert".into(),
            pki.cert(name),
            "-key".into(),
            pki.key(name),
        ]
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["-CAfile".into(), ca.clone()], "no_client_cert"),
        (with("stranger"), "unknown_ca"),
        (with("intruder"), "identity_refused"),
        (with("expired"), "expired"),
        (with("future"), "not_yet_valid"),
    ];
    // `--days 0` ends validity at the issuing second.
    wait_until_expired(&pki.cert("expired")).await;
    for (arguments, result) in &cases {
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        let (_, output) = s_client(front, &arguments, "never echoed\n");
        assert!(
            !output.contains("never echoed"),
            "{result}: data must not pass: {output:?}; log:\n{}",
            door.log_text()
        );
        door.wait_for_metric(&handshakes(result), 1.0)
            .await
            .unwrap();
    }

    // TLS 1.1 is below the 1.2 minimum.
    let mut old = with("app");
    old.extend([
        "-tls1_1".into(),
        "-cipher".into(),
        "DEFAULT@SECLEVEL=0".into(),
    ]);
    let old: Vec<&str> = old.iter().map(String::as_str).collect();
    let _ = s_client(front, &old, "");
    door.wait_for_metric(&handshakes("protocol_version"), 1.0)
        .await
        .unwrap();

    // Plaintext bytes sent to the TLS port.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut plain = tokio::net::TcpStream::connect(front).await.unwrap();
    plain.write_all(b"PING\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(!answer.windows(5).any(|window| window == b"+PONG"));
    door.wait_for_metric(&handshakes("protocol_error"), 1.0)
        .await
        .unwrap();

    let refused =
        "attache_connections_closed_total{listener=\"front\",result=\"tls_handshake_failed\"}";
    door.wait_for_metric(refused, 7.0).await.unwrap();
    assert_eq!(door.metric(&handshakes("ok")).await.unwrap(), 0.0);
    // The refused identity is logged (the log is read by a thread, so wait for it).
    door.wait_for_log_text("spiffe://cluster.local/ns/default/sa/intruder")
        .await
        .unwrap();
}

// Blocking child processes run while in-process servers serve.
#[tokio::test(flavor = "multi_thread")]
async fn origination_reaches_a_tls_redis_server_that_requires_client_certificates() {
    let pki = Pki::new();
    let tls_redis = RedisServer::tls(&pki);
    let ambassador = |cert: Option<(String, String)>| {
        let client_cert = cert
            .map(|(cert, key)| format!(", cert: {cert}, key: {key}"))
            .unwrap_or_default();
        format!(
            "listeners:\n  - name: redis\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: redis\n\
             upstreams:\n  redis:\n    endpoints: [\"{}\"]\n    tls: {{ca: {}, server_name: localhost{client_cert}}}\n",
            tls_redis.address,
            pki.ca(),
        )
    };
    let with_cert = Attache::run(&ambassador(Some((pki.cert("app"), pki.key("app")))))
        .await
        .unwrap();
    assert_eq!(
        redis_ping(with_cert.listener("redis")).await.unwrap(),
        "PONG"
    );

    // Without a client certificate redis-server refuses us; the client's
    // connection is closed and the failure is counted as a TLS one.
    let without_cert = Attache::run(&ambassador(None)).await.unwrap();
    let pinged = redis_ping(without_cert.listener("redis")).await.is_ok();
    assert!(!pinged, "no PING without a client certificate");
    let endpoint = tls_redis.address.to_string();
    let tls_failures = format!(
        "attache_upstream_connect_failures_total{{upstream=\"redis\",endpoint=\"{endpoint}\",reason=\"tls\"}}"
    );
    // TLS 1.3 clients finish their side of the handshake before the server
    // checks the client certificate: the refusal arrives as an alert on the
    // first read, so it closes the connection as an error, with the alert
    // in the log.
    let errors = "attache_connections_closed_total{listener=\"redis\",result=\"error\"}";
    without_cert
        .wait_for_metric_at_least(errors, 1.0)
        .await
        .unwrap();
    without_cert
        .wait_for_log_text("CertificateRequired")
        .await
        .unwrap();
    assert_eq!(
        without_cert.metric(&tls_failures).await.unwrap(),
        0.0,
        "the TLS 1.3 handshake itself completed"
    );
}

#[tokio::test]
async fn one_liners_build_the_same_tunnel_without_config_files() {
    let pki = Pki::new();
    let (server_cert, server_key, ca) = (pki.cert("server"), pki.key("server"), pki.ca());
    let door = Attache::spawn(
        &[
            "tcp",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:6379",
            "--admin",
            "127.0.0.1:0",
            "--tls-cert",
            &server_cert,
            "--tls-key",
            &server_key,
            "--tls-client-ca",
            &ca,
            "--allow-uri",
            "spiffe://cluster.local/ns/*/sa/app",
        ],
        None,
    )
    .await
    .unwrap();
    let door_address = door.listener("tcp").to_string();
    let (app_cert, app_key, intruder_cert, intruder_key) = (
        pki.cert("app"),
        pki.key("app"),
        pki.cert("intruder"),
        pki.key("intruder"),
    );
    let ambassador = |cert: &str, key: &str| {
        vec![
            "tcp".to_owned(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--upstream".into(),
            door_address.clone(),
            "--admin".into(),
            "127.0.0.1:0".into(),
            "--upstream-tls-ca".into(),
            ca.clone(),
            "--upstream-tls-cert".into(),
            cert.to_owned(),
            "--upstream-tls-key".into(),
            key.to_owned(),
            "--upstream-tls-server-name".into(),
            "localhost".into(),
        ]
    };
    let allowed = ambassador(&app_cert, &app_key);
    let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
    let app = Attache::spawn(&allowed, None).await.unwrap();
    assert_eq!(redis_ping(app.listener("tcp")).await.unwrap(), "PONG");

    let refused = ambassador(&intruder_cert, &intruder_key);
    let refused: Vec<&str> = refused.iter().map(String::as_str).collect();
    let intruder = Attache::spawn(&refused, None).await.unwrap();
    let pinged = redis_ping(intruder.listener("tcp")).await.is_ok();
    assert!(!pinged, "the intruder's identity is refused");
    let refusals = "attache_tls_handshakes_total{listener=\"tcp\",result=\"identity_refused\"}";
    door.wait_for_metric_at_least(refusals, 1.0).await.unwrap();
}

#[tokio::test]
async fn origination_pins_the_server_identity_and_refuses_a_wrong_san() {
    let pki = Pki::new();
    // A server whose certificate names it only by SPIFFE ID, as an SVID does.
    pki.issue(
        "ca",
        "svid",
        &["--uri", "spiffe://cluster.local/ns/data/sa/redis"],
    );
    let door = Attache::run(&format!(
        "listeners:\n  - name: front\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: redis\n\
         \x20   tls: {{cert: {}, key: {}, client_ca: {}}}\n\
         upstreams:\n  redis:\n    endpoints: [\"127.0.0.1:6379\"]\n",
        pki.cert("svid"),
        pki.key("svid"),
        pki.ca(),
    ))
    .await
    .unwrap();
    let ambassador = |tls_extra: &str| {
        format!(
            "listeners:\n  - name: app\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: door\n\
             upstreams:\n  door:\n    endpoints: [\"{}\"]\n    tls: {{ca: {}, cert: {}, key: {}{tls_extra}}}\n",
            door.listener("front"),
            pki.ca(),
            pki.cert("app"),
            pki.key("app"),
        )
    };
    let endpoint = door.listener("front").to_string();
    let refused_as = |result: &str| {
        format!(
            "attache_upstream_tls_handshakes_total{{upstream=\"door\",endpoint=\"{endpoint}\",result=\"{result}\"}}"
        )
    };

    let pinned = Attache::run(&ambassador(
        ", allow: {uris: [\"spiffe://cluster.local/ns/data/sa/redis\"]}",
    ))
    .await
    .unwrap();
    assert_eq!(redis_ping(pinned.listener("app")).await.unwrap(), "PONG");

    let wrong_id = Attache::run(&ambassador(
        ", allow: {uris: [\"spiffe://cluster.local/ns/data/sa/other\"]}",
    ))
    .await
    .unwrap();
    assert!(redis_ping(wrong_id.listener("app")).await.is_err());
    wrong_id
        .wait_for_metric_at_least(&refused_as("identity_refused"), 1.0)
        .await
        .unwrap();
    // The refused server identity is logged.
    wrong_id
        .wait_for_log_text("spiffe://cluster.local/ns/data/sa/redis")
        .await
        .unwrap();

    // Without pinning, the name is checked: the SVID has no DNS name.
    let wrong_san = Attache::run(&ambassador(", server_name: redis.data.svc"))
        .await
        .unwrap();
    assert!(redis_ping(wrong_san.listener("app")).await.is_err());
    wrong_san
        .wait_for_metric_at_least(&refused_as("identity_refused"), 1.0)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_resume_and_alpn_is_negotiated() {
    let pki = Pki::new();
    let door = Attache::run(&format!(
        "listeners:\n  - name: front\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: redis\n\
         \x20   tls: {{cert: {}, key: {}, client_ca: {}, alpn: [h2, http/1.1]}}\n\
         upstreams:\n  redis:\n    endpoints: [\"127.0.0.1:6379\"]\n",
        pki.cert("server"),
        pki.key("server"),
        pki.ca(),
    ))
    .await
    .unwrap();
    let session = pki.path("session.pem");
    let connect = |session_flag: &str| {
        let output = Command::new("timeout")
            .args([
                "20",
                "openssl",
                "s_client",
                "-connect",
                &door.listener("front").to_string(),
            ])
            .args([
                "-servername",
                "localhost",
                "-CAfile",
                &pki.ca(),
                "-cert",
                &pki.cert("app"),
            ])
            .args([
                "-key",
                &pki.key("app"),
                "-alpn",
                "http/1.1",
                "-ign_eof",
                session_flag,
                &session,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(b"PING\r\nQUIT\r\n")?;
                child.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let first = connect("-sess_out");
    assert!(
        first.contains("New, TLSv1.3") && first.contains("+PONG"),
        "{first}"
    );
    assert!(first.contains("ALPN protocol: http/1.1"), "{first}");
    let second = connect("-sess_in");
    assert!(
        second.contains("Reused, TLSv1.3") && second.contains("+PONG"),
        "{second}"
    );
}

// Blocking child processes run while in-process servers serve.
#[tokio::test(flavor = "multi_thread")]
async fn handshake_failures_get_precise_classes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let door = front_door(&pki, servers::echo().await).await;
    let front = door.listener("front");
    let client = [
        "-CAfile".to_owned(),
        pki.ca(),
        "-cert".into(),
        pki.cert("app"),
        "-key".into(),
        pki.key("app"),
    ];
    let with = |extra: &[&str]| {
        let mut arguments: Vec<String> = client.to_vec();
        arguments.extend(extra.iter().map(|argument| (*argument).to_owned()));
        arguments
    };

    // TLS 1.2 with only a cipher suite rustls does not implement (RSA key exchange).
    let arguments = with(&["-tls1_2", "-cipher", "AES128-SHA"]);
    let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
    let _ = s_client(front, &arguments, "");
    door.wait_for_metric(&handshakes("no_common_parameters"), 1.0)
        .await
        .unwrap();

    // A TLS 1.1 client: refused with rustls' handshake_failure alert (rustls
    // offers no way to send protocol_version), counted as protocol_version.
    let old = Command::new("timeout")
        .args(["20", "openssl", "s_client", "-connect", &front.to_string()])
        .args(["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("alert"),
        "refused with an alert: {}",
        String::from_utf8_lossy(&old.stderr)
    );
    door.wait_for_metric(&handshakes("protocol_version"), 1.0)
        .await
        .unwrap();

    // A record header announcing more than any record may hold.
    let mut oversized = tokio::net::TcpStream::connect(front).await.unwrap();
    oversized
        .write_all(&[0x16, 0x03, 0x01, 0x50, 0x00])
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = oversized.read_to_end(&mut answer).await;
    door.wait_for_metric(&handshakes("bad_record"), 1.0)
        .await
        .unwrap();

    // A client that connects and leaves before saying anything.
    drop(tokio::net::TcpStream::connect(front).await.unwrap());
    door.wait_for_metric(&handshakes("eof"), 1.0).await.unwrap();
    assert_eq!(door.metric(&handshakes("error")).await.unwrap(), 0.0);
}

#[tokio::test]
async fn a_refused_upstream_certificate_is_final_not_retried() {
    let pki = Pki::new();
    // The door presents its CA's own certificate as a server certificate.
    let door = Attache::run(&format!(
        "listeners:\n  - name: front\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: app\n\
         \x20   tls: {{cert: {}, key: {}, client_ca: {}}}\n\
         upstreams:\n  app:\n    endpoints: [\"{}\"]\n",
        pki.ca(),
        pki.path("ca/ca.key"),
        pki.ca(),
        servers::echo().await,
    ))
    .await
    .unwrap();
    let endpoint = door.listener("front").to_string();
    let ambassador = Attache::run(&format!(
        "listeners:\n  - name: app\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: door\n\
         upstreams:\n  door:\n    endpoints: [\"{endpoint}\"]\n    retry: {{attempts: 3}}\n\
         \x20   tls: {{ca: {}, cert: {}, key: {}, server_name: localhost}}\n",
        pki.ca(),
        pki.cert("app"),
        pki.key("app"),
    ))
    .await
    .unwrap();
    attache_integration::expect_closed(ambassador.listener("app")).await;
    let labels = format!("upstream=\"door\",endpoint=\"{endpoint}\"");
    ambassador
        .wait_for_metric(
            &format!(
                "attache_upstream_tls_handshakes_total{{{labels},result=\"bad_certificate\"}}"
            ),
            1.0,
        )
        .await
        .unwrap();
    let metrics = ambassador.metrics().await.unwrap();
    assert_eq!(
        metrics[&format!("attache_upstream_connect_attempts_total{{{labels}}}")],
        1.0,
        "a refused certificate is not retried"
    );
    assert_eq!(
        metrics["attache_upstream_retries_total{upstream=\"door\"}"],
        0.0
    );
}
