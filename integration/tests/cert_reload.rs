//! Certificate rotation without a restart: rewritten files, a Kubernetes
//! `..data` symlink swap and SIGHUP all reload; new handshakes present the
//! new certificate while established connections keep flowing; a corrupt or
//! mismatched replacement is rejected and the old certificate stays.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use attache_integration::{Attache, binary, exchange, servers, wait_until_expired};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Pki {
    directory: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let pki = Self {
            directory: tempfile::tempdir().unwrap(),
        };
        attache(&["certs", "ca", "--out", &pki.path("ca")]);
        pki.issue(
            "certs",
            "app",
            &["--uri", "spiffe://cluster.local/ns/default/sa/app"],
        );
        pki
    }

    fn path(&self, relative: &str) -> String {
        self.directory.path().join(relative).display().to_string()
    }

    fn issue(&self, out: &str, name: &str, extra: &[&str]) {
        let (ca, out) = (self.path("ca"), self.path(out));
        let mut arguments = vec!["certs", "issue", "--ca", &ca, "--out", &out, "--name", name];
        arguments.extend_from_slice(extra);
        attache(&arguments);
    }
}

fn attache(arguments: &[&str]) {
    let output = Command::new(binary()).args(arguments).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn serial_of(pem: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(pem).unwrap();
    String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout)
        .trim()
        .to_owned()
}

fn file_serial(path: &str) -> String {
    serial_of(&std::fs::read(path).unwrap())
}

/// The serial of the certificate a new handshake with `address` presents.
fn served_serial(pki: &Pki, address: SocketAddr) -> String {
    let output = Command::new("timeout")
        .args([
            "20",
            "openssl",
            "s_client",
            "-connect",
            &address.to_string(),
            "-servername",
            "localhost",
        ])
        .args([
            "-CAfile",
            &pki.path("ca/ca.crt"),
            "-cert",
            &pki.path("certs/app.crt"),
            "-key",
            &pki.path("certs/app.key"),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    serial_of(&output.stdout)
}

async fn front_door(pki: &Pki, cert: &str, key: &str) -> Attache {
    Attache::run(&format!(
        "listeners:\n  - name: front\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: echo\n\
         \x20   tls: {{cert: {cert}, key: {key}, client_ca: {}}}\n\
         upstreams:\n  echo:\n    endpoints: [\"{}\"]\n",
        pki.path("ca/ca.crt"),
        servers::echo().await,
    ))
    .await
    .unwrap()
}

const RELOADS_OK: &str = "attache_tls_reloads_total{result=\"ok\"}";
const RELOADS_ERROR: &str = "attache_tls_reloads_total{result=\"error\"}";
const RELOADS_UNCHANGED: &str = "attache_tls_reloads_total{result=\"unchanged\"}";
const EXPIRY: &str =
    "attache_tls_certificate_expiry_timestamp_seconds{kind=\"listener\",name=\"front\"}";

#[tokio::test(flavor = "multi_thread")]
async fn rewritten_files_serve_new_handshakes_while_old_connections_keep_flowing() {
    let pki = Pki::new();
    pki.issue("tls", "server", &["--dns", "localhost", "--days", "30"]);
    let (cert, key) = (pki.path("tls/server.crt"), pki.path("tls/server.key"));
    let door = front_door(&pki, &cert, &key).await;
    let ambassador = Attache::run(&format!(
        "listeners:\n  - name: app\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: door\n\
         upstreams:\n  door:\n    endpoints: [\"{}\"]\n    tls: {{ca: {}, cert: {}, key: {}, server_name: localhost}}\n",
        door.listener("front"),
        pki.path("ca/ca.crt"),
        pki.path("certs/app.crt"),
        pki.path("certs/app.key"),
    ))
    .await
    .unwrap();
    let app = ambassador.listener("app");

    // A long-lived connection through the tunnel.
    let mut long_lived = tokio::net::TcpStream::connect(app).await.unwrap();
    long_lived.write_all(b"before").await.unwrap();
    let mut echoed = [0; 6];
    long_lived.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"before");

    let old_serial = served_serial(&pki, door.listener("front"));
    assert_eq!(old_serial, file_serial(&cert));
    let expiry_before = door.metric(EXPIRY).await.unwrap();

    // New connections keep working while the certificate rotates.
    let churn = tokio::spawn(async move {
        let mut failures = 0;
        for index in 0..100u32 {
            let payload = index.to_be_bytes();
            let worked = match tokio::net::TcpStream::connect(app).await {
                Ok(mut stream) => exchange(&mut stream, &payload)
                    .await
                    .is_ok_and(|echo| echo == payload),
                Err(_) => false,
            };
            failures += u32::from(!worked);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        failures
    });

    pki.issue("tls", "server", &["--dns", "localhost", "--days", "60"]);
    let new_serial = file_serial(&cert);
    assert_ne!(new_serial, old_serial);
    door.wait_for_metric_at_least(RELOADS_OK, 1.0)
        .await
        .unwrap();
    assert_eq!(
        served_serial(&pki, door.listener("front")),
        new_serial,
        "new handshakes present the new certificate"
    );
    assert_eq!(door.metric(RELOADS_ERROR).await.unwrap(), 0.0);
    let expiry_after = door.metric(EXPIRY).await.unwrap();
    assert!(
        expiry_after - expiry_before > 29.0 * 86400.0,
        "expiry gauge moved by ~30 days: {expiry_before} -> {expiry_after}"
    );

    assert_eq!(
        churn.await.unwrap(),
        0,
        "no new connection failed during the rotation"
    );
    long_lived.write_all(b"after!").await.unwrap();
    long_lived.read_exact(&mut echoed).await.unwrap();
    assert_eq!(
        &echoed, b"after!",
        "the established connection keeps flowing"
    );
}

fn replace_atomically(path: &str, contents: &[u8]) {
    let temporary = format!("{path}.new");
    std::fs::write(&temporary, contents).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_or_mismatched_replacement_keeps_the_old_certificate() {
    let pki = Pki::new();
    pki.issue("tls", "server", &["--dns", "localhost"]);
    pki.issue("other", "server", &["--dns", "localhost"]);
    let (cert, key) = (pki.path("tls/server.crt"), pki.path("tls/server.key"));
    let door = front_door(&pki, &cert, &key).await;
    let serial = served_serial(&pki, door.listener("front"));

    replace_atomically(
        &cert,
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    );
    door.wait_for_metric_at_least(RELOADS_ERROR, 1.0)
        .await
        .unwrap();
    assert_eq!(served_serial(&pki, door.listener("front")), serial);

    // A valid certificate whose key is not the one beside it.
    let errors = door.metric(RELOADS_ERROR).await.unwrap();
    replace_atomically(&cert, &std::fs::read(pki.path("other/server.crt")).unwrap());
    door.wait_for_metric_at_least(RELOADS_ERROR, errors + 1.0)
        .await
        .unwrap();
    assert_eq!(
        served_serial(&pki, door.listener("front")),
        serial,
        "the old certificate stays in service"
    );

    // A matching pair that has expired.
    pki.issue("expired", "server", &["--dns", "localhost", "--days", "0"]);
    let expired = pki.path("expired/server.crt");
    wait_until_expired(&expired).await;
    let errors = door.metric(RELOADS_ERROR).await.unwrap();
    replace_atomically(
        &key,
        &std::fs::read(pki.path("expired/server.key")).unwrap(),
    );
    replace_atomically(&cert, &std::fs::read(&expired).unwrap());
    door.wait_for_metric_at_least(RELOADS_ERROR, errors + 1.0)
        .await
        .unwrap();
    assert_eq!(
        served_serial(&pki, door.listener("front")),
        serial,
        "the old certificate stays in service"
    );
    door.wait_for_log_text("the certificate expired on ")
        .await
        .unwrap();
    assert_eq!(
        served_serial(&pki, door.listener("front")),
        serial,
        "still the old certificate"
    );
    assert_eq!(door.metric(RELOADS_OK).await.unwrap(), 0.0);
    door.wait_for_log_text("TLS reload rejected").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kubernetes_secret_symlink_swap_is_picked_up() {
    let pki = Pki::new();
    // The layout kubelet writes for a Secret volume.
    let secret = PathBuf::from(pki.path("secret"));
    pki.issue("secret/..v1", "tls", &["--dns", "localhost"]);
    std::os::unix::fs::symlink("..v1", secret.join("..data")).unwrap();
    for file in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(Path::new("..data").join(file), secret.join(file)).unwrap();
    }
    let (cert, key) = (pki.path("secret/tls.crt"), pki.path("secret/tls.key"));
    let door = front_door(&pki, &cert, &key).await;
    let old_serial = served_serial(&pki, door.listener("front"));

    pki.issue("secret/..v2", "tls", &["--dns", "localhost"]);
    std::os::unix::fs::symlink("..v2", secret.join("..data_tmp")).unwrap();
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    let new_serial = file_serial(&cert);
    assert_ne!(new_serial, old_serial);

    door.wait_for_metric_at_least(RELOADS_OK, 1.0)
        .await
        .unwrap();
    assert_eq!(served_serial(&pki, door.listener("front")), new_serial);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_rebuilds_only_what_changed() {
    let pki = Pki::new();
    pki.issue("tls", "server", &["--dns", "localhost"]);
    let door = front_door(
        &pki,
        &pki.path("tls/server.crt"),
        &pki.path("tls/server.key"),
    )
    .await;
    assert_eq!(door.metric(RELOADS_OK).await.unwrap(), 0.0);
    let pid = nix::unistd::Pid::from_raw(door.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    door.wait_for_metric(RELOADS_UNCHANGED, 1.0).await.unwrap();
    assert_eq!(door.metric(RELOADS_OK).await.unwrap(), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_the_files_never_reloads_and_sessions_keep_resuming() {
    let pki = Pki::new();
    pki.issue("tls", "server", &["--dns", "localhost"]);
    let (cert, key) = (
        PathBuf::from(pki.path("tls/server.crt")),
        PathBuf::from(pki.path("tls/server.key")),
    );
    let door = Attache::run(&format!(
        "listeners:\n  - name: front\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: redis\n\
         \x20   tls: {{cert: {}, key: {}, client_ca: {}}}\n\
         upstreams:\n  redis:\n    endpoints: [\"127.0.0.1:6379\"]\n",
        cert.display(),
        key.display(),
        pki.path("ca/ca.crt"),
    ))
    .await
    .unwrap();
    let session = pki.path("session.pem");
    let connect = |session_flag: &str| {
        let output = Command::new("timeout")
            .args(["20", "openssl", "s_client", "-connect"])
            .arg(door.listener("front").to_string())
            .args([
                "-servername",
                "localhost",
                "-CAfile",
                &pki.path("ca/ca.crt"),
            ])
            .args([
                "-cert",
                &pki.path("certs/app.crt"),
                "-key",
                &pki.path("certs/app.key"),
            ])
            .args(["-ign_eof", session_flag, &session])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                // QUIT: Redis closes, after the session tickets arrived.
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

    // A backup agent, an app reading the same Secret, `openssl -CAfile`.
    for _ in 0..20 {
        for file in [&cert, &key, &PathBuf::from(pki.path("ca/ca.crt"))] {
            std::fs::read(file).unwrap();
        }
    }
    // A file created beside them is a change event: once attache has
    // handled it, it has handled every read before it.
    std::fs::write(pki.path("tls/marker"), b"x").unwrap();
    let deadline = std::time::Instant::now() + attache_integration::START_TIMEOUT;
    loop {
        let handled =
            door.metric(RELOADS_OK).await.unwrap() + door.metric(RELOADS_UNCHANGED).await.unwrap();
        if handled >= 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", door.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        door.metric(RELOADS_OK).await.unwrap(),
        0.0,
        "reads or an unchanged directory reloaded; log:\n{}",
        door.log_text()
    );
    let second = connect("-sess_in");
    assert!(
        second.contains("Reused, TLSv1.3") && second.contains("+PONG"),
        "resumption broke: {second}"
    );

    // A real change (a new pair moved into place): one reload.
    pki.issue("staging", "server", &["--dns", "localhost"]);
    for file in ["server.key", "server.crt"] {
        std::fs::rename(
            pki.path(&format!("staging/{file}")),
            pki.path(&format!("tls/{file}")),
        )
        .unwrap();
    }
    door.wait_for_metric(RELOADS_OK, 1.0).await.unwrap();
    // A reload asked for now finds nothing new, and nothing else reloaded.
    let pid = nix::unistd::Pid::from_raw(door.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    door.wait_for_metric_at_least(RELOADS_UNCHANGED, 2.0)
        .await
        .unwrap();
    assert_eq!(door.metric(RELOADS_OK).await.unwrap(), 1.0);
}
