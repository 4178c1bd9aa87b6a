//! `protocol: postgres` in front of the real Postgres: the listener answers
//! the client's SSLRequest itself (`N` on plaintext, `S` and a TLS
//! handshake with the listener's certificate and client-certificate checks
//! on TLS), refuses plaintext sessions on a TLS listener, serves the
//! session (pooled, the default) with results identical to a direct
//! connection's, and gets cancel requests to the query. The clients are
//! libpq's psql and tokio-postgres.

use std::net::SocketAddr;
use std::time::Duration;

use attache_integration::pki::{ALLOWED_ID, Pki};
use attache_integration::postgres::{POSTGRES, connect, psql, psycopg, wait_until_running};
use attache_integration::{Attache, servers};

fn config(tls: &str) -> String {
    format!(
        "listeners:\n  - name: db\n    listen: 127.0.0.1:0\n    protocol: postgres\n    upstream: postgres\n{tls}\
         upstreams:\n  postgres:\n    endpoints: [\"{POSTGRES}\"]\n"
    )
}

fn tls_config(pki: &Pki) -> String {
    config(&format!(
        "    tls:\n      cert: {}\n      key: {}\n      client_ca: {}\n      allow: {{uris: [\"{ALLOWED_ID}\"]}}\n",
        pki.cert("server"),
        pki.key("server"),
        pki.ca()
    ))
}

/// libpq options for a verified TLS session with `name`'s certificate.
fn verified(pki: &Pki, name: &str) -> String {
    format!(
        "sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        pki.ca(),
        pki.cert(name),
        pki.key(name)
    )
}

/// 640 KB of text computed by Postgres; the same through attache as direct.
const BULK: &str = "select string_agg(md5(i::text), '') from generate_series(1, 20000) i";

#[tokio::test]
async fn a_plaintext_listener_answers_n_and_forwards_sessions_exactly() {
    let attache = Attache::run(&config("")).await.unwrap();
    let front = attache.listener("db");

    // libpq's default (sslmode=prefer) asks for TLS first and goes on in
    // plaintext after `N`.
    let (ok, through, stderr) = psql(front, "sslmode=prefer", BULK).await;
    assert!(ok, "{stderr}");
    let (ok, direct, stderr) = psql(POSTGRES.parse().unwrap(), "sslmode=disable", BULK).await;
    assert!(ok, "{stderr}");
    assert_eq!(through.len(), 640_000);
    assert_eq!(
        servers::sha256_hex(through.as_bytes()),
        servers::sha256_hex(direct.as_bytes())
    );

    let (ok, _, stderr) = psql(front, "sslmode=require", "select 1").await;
    assert!(!ok);
    assert!(stderr.contains("server does not support SSL"), "{stderr}");

    let client = connect(front).await;
    let two: i32 = client.query_one("SELECT 1 + 1", &[]).await.unwrap().get(0);
    assert_eq!(two, 2);
}

#[tokio::test]
async fn a_tls_listener_upgrades_in_band_and_checks_client_certificates() {
    let pki = Pki::new();
    let attache = Attache::run(&tls_config(&pki)).await.unwrap();
    let front = attache.listener("db");

    let (ok, answer, stderr) = psql(front, &verified(&pki, "app"), "select 'through TLS'").await;
    assert!(ok, "{stderr}");
    assert_eq!(answer, "through TLS");
    attache
        .wait_for_metric(
            r#"attache_tls_handshakes_total{listener="db",result="ok"}"#,
            1.0,
        )
        .await
        .unwrap();

    // A certificate from the right CA with an identity not on the list.
    let (ok, _, _) = psql(front, &verified(&pki, "intruder"), "select 1").await;
    assert!(!ok);
    attache
        .wait_for_metric(
            r#"attache_tls_handshakes_total{listener="db",result="identity_refused"}"#,
            1.0,
        )
        .await
        .unwrap();

    // No TLS at all: refused before any byte reaches Postgres.
    let (ok, _, stderr) = psql(front, "sslmode=disable", "select 1").await;
    assert!(!ok);
    assert!(stderr.contains("accepts TLS connections only"), "{stderr}");
    assert_eq!(
        attache
            .metric(r#"attache_upstream_connect_attempts_total{upstream="postgres",endpoint="127.0.0.1:5432"}"#)
            .await
            .unwrap(),
        1.0
    );
}

#[tokio::test]
async fn a_tls_listener_takes_direct_tls_that_negotiates_alpn_postgresql() {
    let pki = Pki::new();
    let attache = Attache::run(&tls_config(&pki)).await.unwrap();
    let front = attache.listener("db");

    // libpq 18 (psycopg's) with Postgres 17's direct TLS: a ClientHello
    // first, ALPN `postgresql`, no SSLRequest.
    let direct = format!("sslnegotiation=direct {}", verified(&pki, "app"));
    let (ok, answer, error) = psycopg(front, &direct, "select 'direct TLS'").await;
    assert!(ok, "{error}");
    assert_eq!(answer, "direct TLS");
    attache
        .wait_for_metric(
            r#"attache_tls_handshakes_total{listener="db",result="ok"}"#,
            1.0,
        )
        .await
        .unwrap();

    // A TLS session without ALPN might have been meant for another
    // protocol: refused once the handshake is done, before any session.
    let output = tokio::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(front.to_string())
        .args(["-servername", "localhost", "-CAfile", &pki.ca()])
        .args(["-cert", &pki.cert("app"), "-key", &pki.key("app")])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&output.stdout);
    assert!(
        answer.contains("direct TLS connections must negotiate ALPN"),
        "{answer}"
    );
    attache
        .wait_for_metric(
            r#"attache_tls_handshakes_total{listener="db",result="ok"}"#,
            2.0,
        )
        .await
        .unwrap();
    let connects =
        r#"attache_upstream_connect_attempts_total{upstream="postgres",endpoint="127.0.0.1:5432"}"#;
    assert_eq!(attache.metric(connects).await.unwrap(), 1.0);
}

#[tokio::test]
async fn a_cancel_request_reaches_postgres() {
    let attache = Attache::run(&config("")).await.unwrap();
    let front = attache.listener("db");
    let client = connect(front).await;
    let marker = format!("attache_cancel_{}", std::process::id());
    // The token names attache's address: the cancel request goes through it.
    let token = client.cancel_token();
    let sleeping = {
        let sql = format!("select pg_sleep(60) /* {marker} */");
        tokio::spawn(async move { client.simple_query(&sql).await.map(drop) })
    };
    // Cancel only once the query runs: a cancel before it would be ignored.
    wait_until_running(&marker).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let error = tokio::time::timeout(Duration::from_secs(30), sleeping)
        .await
        .expect("the query ends once cancelled")
        .unwrap()
        .unwrap_err();
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
}

/// Everything attache sends back until it closes.
async fn answer_to(front: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(front).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    // A reset after the answer is fine: attache closes with bytes unread.
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("attache closes the connection");
    answer
}

fn packet(code: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = u32::try_from(body.len() + 8)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    bytes.extend_from_slice(&code.to_be_bytes());
    bytes.extend_from_slice(body);
    bytes
}

#[tokio::test]
async fn hostile_startup_packets_get_a_fatal_error_and_never_reach_postgres() {
    let pki = Pki::new();
    let attache = Attache::run(&tls_config(&pki)).await.unwrap();
    let front = attache.listener("db");

    // Plaintext stuffed after the SSLRequest is TLS input, not a query:
    // the handshake fails and nothing is forwarded.
    let mut stuffed = packet(80_877_103, b"");
    stuffed.extend_from_slice(b"Q\0\0\0\x0dselect 1\0");
    let answer = answer_to(front, &stuffed).await;
    assert_eq!(answer.first(), Some(&b'S'));
    assert!(!answer.windows(8).any(|window| window == b"select 1"));

    let oversized = answer_to(front, &100_000u32.to_be_bytes()).await;
    assert_eq!(oversized.first(), Some(&b'E'));
    assert!(String::from_utf8_lossy(&oversized).contains("invalid length of startup packet"));

    let old_protocol = answer_to(front, &packet(2 << 16, b"user\0postgres\0\0")).await;
    assert!(String::from_utf8_lossy(&old_protocol).contains("unsupported frontend protocol 2.0"));

    let connects =
        r#"attache_upstream_connect_attempts_total{upstream="postgres",endpoint="127.0.0.1:5432"}"#;
    assert_eq!(attache.metric(connects).await.unwrap_or(0.0), 0.0);
}

#[tokio::test]
async fn the_one_liner_runs_a_postgres_listener() {
    let attache = Attache::spawn(
        &[
            "postgres",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            POSTGRES,
            "--admin",
            "127.0.0.1:0",
        ],
        None,
    )
    .await
    .unwrap();
    let front = attache.listener("postgres");
    let (ok, answer, stderr) = psql(front, "sslmode=prefer", "select 'one-liner'").await;
    assert!(ok, "{stderr}");
    assert_eq!(answer, "one-liner");
}
