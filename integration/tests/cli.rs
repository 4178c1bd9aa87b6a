//! The command line: `attache check` on good and broken configs (every
//! problem with key path and line, exit 1), `attache run` refusing a broken
//! config, `attache wait`, the `attache tcp` and `attache redis` one-liners
//! and `attache version`.

use std::process::{Command, Output};
use std::time::Duration;

use attache_integration::redis_server::RedisServer;
use attache_integration::{Attache, binary, servers, write_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn attache(arguments: &[&str]) -> Output {
    Command::new(binary())
        .args(arguments)
        .output()
        .expect("attache runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The message of the last stderr line of a command that serves: stderr is
/// not a terminal here, so the fatal error is a JSON event like every other
/// log line.
fn fatal_message(output: &Output) -> String {
    let text = stderr(output);
    let last = text.lines().last().unwrap_or_default();
    let event: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|_| panic!("not a JSON line: {text}"));
    assert_eq!(event["level"], "ERROR", "{text}");
    assert!(event["timestamp"].is_string(), "{text}");
    event["message"].as_str().unwrap_or_default().to_owned()
}

const BROKEN: &str = "\
listeners:
  - name: a
    listen: 127.0.0.1:7000
    protocol: tcp
    upstream: db
  - name: b
    listen: 127.0.0.1:7000
    protocol: tcp
    upstream: cache
    idle_timeout: 0s
upstreams:
  db:
    endpoints: []
    connect_timeout: 0s
";

#[test]
fn check_prints_every_problem_with_key_path_and_line_and_exits_one() {
    let file = write_config(BROKEN).unwrap();
    let output = attache(&["check", "-c", &file.path().display().to_string()]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    for expected in [
        "listeners[1].listen: 127.0.0.1:7000 is already the address of listeners[0] (line 7)",
        "listeners[1].upstream: no upstream named \"cache\" (upstreams: db) (line 9)",
        "listeners[1].idle_timeout: must be greater than zero (line 10)",
        "upstreams.db.endpoints: an upstream needs at least one endpoint (line 13)",
        "upstreams.db.connect_timeout: must be greater than zero (line 14)",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(text.contains("5 problems"), "{text}");
}

#[test]
fn check_reports_syntax_unknown_keys_and_unset_variables_with_lines() {
    let cases = [
        ("listeners: [\n", "(line 1)"),
        (
            "listeners:\n  - listen: 127.0.0.1:1\n    protocol: tcp\n    upstream: db\n    retry: 3\n",
            "unknown field `retry`",
        ),
        (
            "listeners:\n  - listen: ${ATTACHE_TEST_SURELY_UNSET}\n",
            "ATTACHE_TEST_SURELY_UNSET is not set",
        ),
    ];
    for (yaml, expected) in cases {
        let file = write_config(yaml).unwrap();
        let output = attache(&["check", "-c", &file.path().display().to_string()]);
        assert_eq!(output.status.code(), Some(1), "{yaml}");
        assert!(
            stderr(&output).contains(expected),
            "{expected:?} in {}",
            stderr(&output)
        );
    }
}

#[test]
fn check_accepts_every_example() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        let output = attache(&["check", "-c", &path.display().to_string()]);
        assert!(
            output.status.success(),
            "{}: {}",
            path.display(),
            stderr(&output)
        );
        checked += 1;
    }
    assert!(checked >= 3);
}

#[test]
fn run_refuses_to_start_on_a_broken_config() {
    let file = write_config(BROKEN).unwrap();
    let output = attache(&[
        "run",
        "-c",
        &file.path().display().to_string(),
        "--admin",
        "127.0.0.1:0",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let message = fatal_message(&output);
    assert!(message.contains("no upstream named \"cache\""), "{message}");
}

#[test]
fn tcp_refuses_a_plaintext_network_listener_without_opt_in() {
    let output = attache(&[
        "tcp",
        "--listen",
        "0.0.0.0:0",
        "--upstream",
        "127.0.0.1:6379",
        "--admin",
        "off",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let message = fatal_message(&output);
    assert!(message.contains("unsafe_plaintext"), "{message}");
}

#[test]
fn version_prints_the_crate_version() {
    let output = attache(&["version"]);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("attache {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn tcp_one_liner_forwards() {
    let upstream = servers::greeter("hello from upstream").await;
    let upstream = upstream.to_string();
    let attache = Attache::spawn(
        &[
            "tcp",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--admin",
            "127.0.0.1:0",
        ],
        None,
    )
    .await
    .unwrap();
    let mut client = tokio::net::TcpStream::connect(attache.listener("tcp"))
        .await
        .unwrap();
    let mut greeting = String::new();
    client.read_to_string(&mut greeting).await.unwrap();
    assert_eq!(greeting, "hello from upstream");
    assert_eq!(attache.admin_get("/ready").await.unwrap().0, 200);
}

#[tokio::test]
async fn tcp_one_liner_limits_upstream_connections() {
    let upstream = servers::echo().await.to_string();
    let attache = Attache::spawn(
        &[
            "tcp",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--upstream-max-connections",
            "1",
            "--admin",
            "127.0.0.1:0",
        ],
        None,
    )
    .await
    .unwrap();
    let front = attache.listener("tcp");
    let mut first = tokio::net::TcpStream::connect(front).await.unwrap();
    first.write_all(b"one").await.unwrap();
    let mut echoed = [0; 3];
    first.read_exact(&mut echoed).await.unwrap();
    // The second client waits for the only slot.
    let _second = tokio::net::TcpStream::connect(front).await.unwrap();
    attache
        .wait_for_metric("attache_upstream_pending_clients{upstream=\"tcp\"}", 1.0)
        .await
        .unwrap();
    assert_eq!(
        attache
            .metric("attache_upstream_connections_active{upstream=\"tcp\"}")
            .await
            .unwrap(),
        1.0
    );
}

/// Sends `command` (inline form) and reads the reply's first line.
async fn exchange_line(client: &mut tokio::net::TcpStream, command: &str) -> String {
    client
        .write_all(format!("{command}\r\n").as_bytes())
        .await
        .unwrap();
    read_line(client).await
}

async fn read_line(client: &mut tokio::net::TcpStream) -> String {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        let mut byte = [0];
        client.read_exact(&mut byte).await.unwrap();
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

#[tokio::test]
async fn redis_one_liner_checks_the_password_and_multiplexes() {
    let redis = RedisServer::plain();
    let upstream = redis.address.to_string();
    let attache = Attache::spawn_with_env(
        &[
            "redis",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--admin",
            "127.0.0.1:0",
        ],
        None,
        &[("ATTACHE_REDIS_PASSWORD", "s3cret")],
    )
    .await
    .unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", attache.pid())).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("s3cret"),
        "the password stays out of the command line"
    );
    let front = attache.listener("redis");
    let mut clients = Vec::new();
    for index in 0..4 {
        let mut client = tokio::net::TcpStream::connect(front).await.unwrap();
        assert_eq!(
            exchange_line(&mut client, "PING").await,
            "-NOAUTH Authentication required.\r\n"
        );
        assert_eq!(exchange_line(&mut client, "AUTH s3cret").await, "+OK\r\n");
        let key = format!("one-liner-{}-{index}", std::process::id());
        assert_eq!(
            exchange_line(&mut client, &format!("SET {key} {index}")).await,
            "+OK\r\n"
        );
        assert_eq!(
            exchange_line(&mut client, &format!("GET {key}")).await,
            "$1\r\n"
        );
        assert_eq!(read_line(&mut client).await, format!("{index}\r\n"));
        clients.push(client);
    }
    // Each client sticks to one of the two shared connections, picked at
    // random and opened on first use: one or two, never one per client.
    let shared = attache
        .metric("attache_redis_upstream_connections{listener=\"redis\",kind=\"shared\"}")
        .await
        .unwrap();
    assert!(
        (1.0..=2.0).contains(&shared),
        "{shared} shared connections for four clients"
    );
}

#[tokio::test]
async fn wait_succeeds_once_every_target_listens() {
    let first = servers::echo().await;
    let second = servers::echo().await;
    let output = tokio::process::Command::new(binary())
        .args([
            "wait",
            &format!("tcp://{first}"),
            &second.to_string(),
            "--timeout",
            "10s",
        ])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn wait_fails_with_a_clear_message_after_its_timeout() {
    let closed = servers::closed_port();
    let started = std::time::Instant::now();
    let output = attache(&[
        "wait",
        &format!("tcp://{closed}"),
        "--timeout",
        "1s",
        "--interval",
        "200ms",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "waited for its timeout"
    );
    let text = stderr(&output);
    assert!(
        text.contains(&format!(
            "timed out after 1s waiting for tcp://{closed} (last error: Connection refused"
        )),
        "{text}"
    );
}

fn tls_config(cert: &str, key: &str, ca: &str, upstream_ca: &str) -> tempfile::NamedTempFile {
    write_config(&format!(
        "
listeners:
  - name: door
    listen: 127.0.0.1:0
    protocol: tcp
    upstream: app
    tls: {{cert: {cert}, key: {key}, client_ca: {ca}}}
upstreams:
  app:
    endpoints: [\"127.0.0.1:1\"]
    tls: {{ca: {upstream_ca}}}
"
    ))
    .unwrap()
}

#[test]
fn check_with_tls_files_loads_every_certificate_key_and_ca() {
    let pki = attache_integration::pki::Pki::new();
    let good = tls_config(
        &pki.cert("server"),
        &pki.key("server"),
        &pki.ca(),
        &pki.ca(),
    );
    let output = attache(&["check", "-c", good.path().to_str().unwrap(), "--tls-files"]);
    assert!(output.status.success(), "{}", stderr(&output));

    // The app's key with the server's certificate, and a CA file that is not there.
    let broken = tls_config(
        &pki.cert("server"),
        &pki.key("app"),
        &pki.ca(),
        "/nonexistent/ca.crt",
    );
    let path = broken.path().to_str().unwrap();
    assert!(
        attache(&["check", "-c", path]).status.success(),
        "without --tls-files the files are not read"
    );
    let output = attache(&["check", "-c", path, "--tls-files"]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0].matches("listener \"door\"").count(), 1, "{text}");
    assert!(lines[0].contains("is not the private key of"), "{text}");
    assert!(
        lines[1].contains("upstream \"app\": /nonexistent/ca.crt: cannot read: No such file or directory (os error 2)"),
        "{text}"
    );
}

#[test]
fn run_names_a_missing_certificate_once_and_does_not_start() {
    let pki = attache_integration::pki::Pki::new();
    let config = tls_config(
        "/nonexistent/tls.crt",
        &pki.key("server"),
        &pki.ca(),
        &pki.ca(),
    );
    let output = attache(&[
        "run",
        "-c",
        config.path().to_str().unwrap(),
        "--admin",
        "off",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        fatal_message(&output),
        "attache: listener \"door\": TLS: /nonexistent/tls.crt: cannot read: No such file or directory (os error 2)"
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    let bash = attache(&["completions", "bash"]);
    assert!(bash.status.success(), "{}", stderr(&bash));
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), &bash.stdout).unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(script.path())
        .output()
        .unwrap();
    assert!(syntax.status.success(), "bash -n: {}", stderr(&syntax));
    let bash = String::from_utf8_lossy(&bash.stdout);
    for word in ["redis", "--upstream", "--sentinel-master", "completions"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    for shell in ["zsh", "fish"] {
        let output = attache(&["completions", shell]);
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("--upstream"),
            "{shell}"
        );
    }
    let man = attache(&["man"]);
    assert!(man.status.success(), "{}", stderr(&man));
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.contains(".TH attache 1"), "{page}");
    assert!(page.contains("completions"), "{page}");
}

#[tokio::test]
async fn a_taken_admin_port_and_a_mismatched_key_say_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap().to_string();
    let output = attache(&[
        "tcp",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:1",
        "--admin",
        &admin,
    ]);
    assert_eq!(output.status.code(), Some(1));
    let message = fatal_message(&output);
    assert!(
        message.contains(&format!("admin server cannot listen on {admin}")),
        "{message}"
    );
    assert!(
        message.contains("`--admin 127.0.0.1:0` picks a free port"),
        "{message}"
    );

    let pki = attache_integration::pki::Pki::new();
    let config = write_config(&format!(
        "listeners:\n  - {{name: door, listen: 127.0.0.1:0, protocol: tcp, upstream: app, tls: {{cert: {}, key: {}, client_auth: none}}}}\nupstreams:\n  app: {{endpoints: [\"127.0.0.1:1\"]}}\n",
        pki.cert("server"),
        pki.key("app"),
    ))
    .unwrap();
    let output = attache(&[
        "run",
        "-c",
        &config.path().display().to_string(),
        "--admin",
        "off",
    ]);
    let message = fatal_message(&output);
    assert_eq!(
        message,
        format!(
            "attache: listener \"door\": {} is not the private key of {} (they do not match)",
            pki.key("app"),
            pki.cert("server")
        )
    );
}
