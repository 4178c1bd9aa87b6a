//! `attache certs ca` / `attache certs issue`: the files verify with openssl,
//! carry the requested names, keep keys private, and work for mutual TLS
//! between real openssl peers (as server and as client certificate).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use attache_integration::{binary, servers};

fn attache(arguments: &[&str]) -> Output {
    let output = Command::new(binary())
        .args(arguments)
        .output()
        .expect("attache runs");
    assert!(
        output.status.success(),
        "attache {arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn openssl(arguments: &[&str]) -> Output {
    Command::new("openssl")
        .args(arguments)
        .output()
        .expect("openssl runs")
}

fn path(directory: &Path, file: &str) -> String {
    directory.join(file).display().to_string()
}

fn new_ca(directory: &Path) {
    attache(&["certs", "ca", "--out", &directory.display().to_string()]);
}

fn issue(ca: &Path, out: &Path, name: &str, extra: &[&str]) {
    let mut arguments = vec![
        "certs",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--name",
        name,
    ];
    arguments.extend_from_slice(extra);
    attache(&arguments);
}

#[test]
fn issued_certificates_verify_and_carry_the_requested_names() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    new_ca(dir);
    issue(
        dir,
        dir,
        "frontend",
        &[
            "--dns",
            "frontend.default.svc",
            "--ip",
            "127.0.0.1",
            "--uri",
            "spiffe://cluster.local/ns/default/sa/frontend",
            "--days",
            "30",
        ],
    );
    let verified = openssl(&[
        "verify",
        "-CAfile",
        &path(dir, "ca.crt"),
        &path(dir, "frontend.crt"),
    ]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );

    let text = openssl(&["x509", "-in", &path(dir, "frontend.crt"), "-noout", "-text"]);
    let text = String::from_utf8_lossy(&text.stdout);
    for expected in [
        "DNS:frontend.default.svc",
        "IP Address:127.0.0.1",
        "URI:spiffe://cluster.local/ns/default/sa/frontend",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "Subject: CN = frontend",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // Valid for 30 days: still valid in 29, expired in 31.
    let in_29_days = openssl(&[
        "x509",
        "-in",
        &path(dir, "frontend.crt"),
        "-noout",
        "-checkend",
        "2505600",
    ]);
    let in_31_days = openssl(&[
        "x509",
        "-in",
        &path(dir, "frontend.crt"),
        "-noout",
        "-checkend",
        "2678400",
    ]);
    assert!(in_29_days.status.success() && !in_31_days.status.success());

    for key in ["ca.key", "frontend.key"] {
        let mode = std::fs::metadata(dir.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
}

#[test]
fn an_existing_ca_is_not_replaced_without_force() {
    let directory = tempfile::tempdir().unwrap();
    new_ca(directory.path());
    let before = std::fs::read(directory.path().join("ca.key")).unwrap();
    let again = Command::new(binary())
        .args([
            "certs",
            "ca",
            "--out",
            &directory.path().display().to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to replace a CA key"));
    assert_eq!(
        std::fs::read(directory.path().join("ca.key")).unwrap(),
        before
    );
}

/// Runs one mutual-TLS handshake between openssl s_server (server cert,
/// requiring a client cert from `ca`) and s_client (client cert); returns
/// whether s_client completed it with verification OK.
fn mutual_tls_handshake(ca: &Path, server: (&Path, &str), client: (&Path, &str)) -> bool {
    let port = servers::closed_port().port().to_string();
    let mut s_server = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-naccept",
            "1",
        ])
        .args(["-cert", &path(server.0, &format!("{}.crt", server.1))])
        .args(["-key", &path(server.0, &format!("{}.key", server.1))])
        .args([
            "-CAfile",
            &path(ca, "ca.crt"),
            "-Verify",
            "1",
            "-verify_return_error",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server runs");
    let mut lines = BufReader::new(s_server.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|line| line.is_ok_and(|line| line.contains("ACCEPT"))),
        "s_server listens"
    );

    let s_client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "backend.default.svc",
        ])
        .args([
            "-verify_hostname",
            "backend.default.svc",
            "-verify_return_error",
        ])
        .args(["-CAfile", &path(ca, "ca.crt")])
        .args(["-cert", &path(client.0, &format!("{}.crt", client.1))])
        .args(["-key", &path(client.0, &format!("{}.key", client.1))])
        // TLS 1.2: a refused client certificate fails the handshake on the
        // client's side too (TLS 1.3 reports it only on a later read).
        .arg("-tls1_2")
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client runs");
    let _ = s_server.kill();
    let _ = s_server.wait();
    let output = String::from_utf8_lossy(&s_client.stdout);
    s_client.status.success() && output.contains("Verify return code: 0 (ok)")
}

#[test]
fn issued_certificates_work_as_server_and_client_for_mutual_tls() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    new_ca(dir);
    issue(dir, dir, "backend", &["--dns", "backend.default.svc"]);
    issue(
        dir,
        dir,
        "frontend",
        &["--uri", "spiffe://cluster.local/ns/default/sa/frontend"],
    );
    assert!(mutual_tls_handshake(
        dir,
        (dir, "backend"),
        (dir, "frontend")
    ));
}

#[test]
fn a_client_certificate_from_another_ca_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let (ours, theirs) = (
        directory.path().join("ours"),
        directory.path().join("theirs"),
    );
    new_ca(&ours);
    new_ca(&theirs);
    issue(&ours, &ours, "backend", &["--dns", "backend.default.svc"]);
    issue(&theirs, &theirs, "intruder", &[]);
    assert!(!mutual_tls_handshake(
        &ours,
        (&ours, "backend"),
        (&theirs, "intruder")
    ));
}
