//! Support for attache's end-to-end tests: build and spawn the real binary,
//! learn its bound addresses from its JSON logs, read its admin endpoints,
//! and run small upstream servers for the behaviours no database shows.
//!
//! # Layout
//! - [`Attache`]: one running attache process (killed on drop).
//! - [`http_request`] / [`Attache::metric`]: a minimal HTTP/1.1 client for the admin port.
//! - [`curl`]: requests through the real curl, parsed.
//! - [`servers`]: echo, source/sink and black-hole upstreams on port 0.
//! - [`http_app`]: an HTTP app server with scripted statuses, hangs, streams and WebSocket echo.
//! - [`otlp`]: a local OTLP/HTTP receiver that decodes the spans it gets.
//! - [`pki`]: a development CA and certificates for TLS tests.
//! - [`redis_server`]: a private, restartable `redis-server` (plain or TLS).

pub mod http_app;
pub mod mysql;
pub mod otlp;
pub mod pki;
pub mod postgres;
pub mod redis_server;
pub mod servers;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a test waits for attache to start or for a log line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The attache binary, built once per test process (`cargo build` is a
/// no-op when it is current).
///
/// # Panics
/// When the build fails.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("ATTACHE_BIN") {
            return PathBuf::from(path);
        }
        let profile_dir = profile_dir();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "attache", "--bin", "attache"]);
        if profile_dir
            .file_name()
            .is_some_and(|name| name == "release")
        {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building attache failed");
        profile_dir.join("attache")
    })
}

/// A running attache process; killed when dropped.
pub struct Attache {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    stdout: Arc<Mutex<Vec<Value>>>,
    /// The read end of a stream nobody reads any more (see [`Stalled`]).
    _stalled: Option<Box<dyn std::io::Read + Send>>,
    _config: Option<tempfile::NamedTempFile>,
}

/// How to run attache, for [`Attache::launch`].
pub struct Launch<'a> {
    pub arguments: &'a [&'a str],
    pub config: Option<tempfile::NamedTempFile>,
    pub env: &'a [(&'a str, &'a str)],
    pub stalled: Option<Stalled>,
    /// A hard and soft limit on open files (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
}

/// A stream whose reader stops, as a stuck log collector does: attache's
/// end of the pipe stays open and fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stalled {
    /// stdout (the access log) is never read.
    Stdout,
    /// stderr (the log) is read until "attache started", then never again.
    Stderr,
}

impl Attache {
    /// Runs `attache run -c <config>` with the admin server on a free port and
    /// waits until it logged that it started.
    ///
    /// # Errors
    /// When attache exits or does not start in time (its stderr is included).
    pub async fn run(config_yaml: &str) -> anyhow::Result<Self> {
        Self::run_with_env(config_yaml, &[]).await
    }

    /// Like [`Attache::run`], with extra environment variables.
    ///
    /// # Errors
    /// When attache exits or does not start in time.
    pub async fn run_with_env(config_yaml: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let file = write_config(config_yaml)?;
        let path = file.path().display().to_string();
        Self::spawn_with_env(
            &["run", "-c", &path, "--admin", "127.0.0.1:0"],
            Some(file),
            env,
        )
        .await
    }

    /// Runs attache with `arguments` and waits for "attache started".
    ///
    /// # Errors
    /// When attache exits or does not start in time.
    pub async fn spawn(
        arguments: &[&str],
        config: Option<tempfile::NamedTempFile>,
    ) -> anyhow::Result<Self> {
        Self::spawn_with_env(arguments, config, &[]).await
    }

    /// Like [`Attache::spawn`], with extra environment variables.
    ///
    /// # Errors
    /// When attache exits or does not start in time.
    pub async fn spawn_with_env(
        arguments: &[&str],
        config: Option<tempfile::NamedTempFile>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::spawn_stalled(arguments, config, env, None).await
    }

    /// Like [`Attache::spawn_with_env`], with one stream's reader stopped.
    ///
    /// # Errors
    /// When attache exits or does not start in time.
    pub async fn spawn_stalled(
        arguments: &[&str],
        config: Option<tempfile::NamedTempFile>,
        env: &[(&str, &str)],
        stalled: Option<Stalled>,
    ) -> anyhow::Result<Self> {
        Self::launch(Launch {
            arguments,
            config,
            env,
            stalled,
            open_files: None,
        })
        .await
    }

    /// Runs attache as `launch` says and waits for "attache started".
    ///
    /// # Errors
    /// When attache exits or does not start in time.
    pub async fn launch(launch: Launch<'_>) -> anyhow::Result<Self> {
        let Launch {
            arguments,
            config,
            env,
            stalled,
            open_files,
        } = launch;
        // prlimit (util-linux) sets the limit and execs attache: same pid.
        let mut command = match open_files {
            Some(limit) => {
                let mut command = Command::new("prlimit");
                command
                    .arg(format!("--nofile={limit}:{limit}"))
                    .arg("--")
                    .arg(binary());
                command
            }
            None => Command::new(binary()),
        };
        let mut child = command
            .args(arguments)
            .env("RUST_LOG", "attache=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn attache")?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let (hand_back, handed_back) = std::sync::mpsc::channel();
        // Reads `stream` line by line; with `stop_at`, stops reading after
        // the line holding it and hands the reader back, unread.
        let collect = |stream: Box<dyn std::io::Read + Send>, stop_at: Option<&'static str>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            let hand_back = hand_back.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                while matches!(reader.read_line(&mut line), Ok(read) if read > 0) {
                    let text = line.trim_end_matches('\n').to_owned();
                    line.clear();
                    let stop = stop_at.is_some_and(|marker| text.contains(marker));
                    let event = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    sink.lock().expect("log sink").push(event);
                    if stop {
                        let _ = hand_back.send(Box::new(reader) as Box<dyn std::io::Read + Send>);
                        return;
                    }
                }
            });
            lines
        };
        let stderr_stop = (stalled == Some(Stalled::Stderr)).then_some("attache started");
        let events = collect(Box::new(stderr), stderr_stop);
        let (stdout, mut unread) = if stalled == Some(Stalled::Stdout) {
            (
                Arc::default(),
                Some(Box::new(stdout) as Box<dyn std::io::Read + Send>),
            )
        } else {
            (collect(Box::new(stdout), None), None)
        };
        let mut attache = Self {
            child,
            events,
            stdout,
            _stalled: None,
            _config: config,
        };
        attache.wait_for_log("attache started").await?;
        if stderr_stop.is_some() {
            unread = Some(handed_back.recv_timeout(START_TIMEOUT)?);
        }
        attache._stalled = unread;
        Ok(attache)
    }

    /// Every log event so far (JSON objects; non-JSON lines as strings).
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().expect("log sink").clone()
    }

    /// Every line attache wrote on stdout (the HTTP access log), as JSON.
    pub fn stdout_lines(&self) -> Vec<Value> {
        self.stdout.lock().expect("stdout sink").clone()
    }

    /// Waits until stdout holds at least `count` lines, and returns them.
    ///
    /// # Errors
    /// When they do not arrive in [`START_TIMEOUT`].
    pub async fn wait_for_stdout_lines(&self, count: usize) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let lines = self.stdout_lines();
            if lines.len() >= count {
                return Ok(lines);
            }
            if Instant::now() > deadline {
                bail!("{} stdout lines, expected {count}: {lines:?}", lines.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for an event whose `message` is `message`, and returns it.
    ///
    /// # Errors
    /// When attache exits first or nothing matches in [`START_TIMEOUT`].
    pub async fn wait_for_log(&mut self, message: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(event) = self
                .events()
                .into_iter()
                .find(|event| event["message"] == message)
            {
                return Ok(event);
            }
            if let Some(status) = self.child.try_wait()? {
                tokio::time::sleep(Duration::from_millis(100)).await;
                bail!(
                    "attache exited ({status}) before logging {message:?}; log:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "no {message:?} log event in time; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the log holds `text` anywhere in an event (the log is
    /// read from attache's stderr by a thread, so a line can trail the
    /// metric or reply that it goes with).
    ///
    /// # Errors
    /// When it does not appear within the start-up timeout.
    pub async fn wait_for_log_text(&self, text: &str) -> anyhow::Result<()> {
        self.wait_for_any_log_text(&[text]).await
    }

    /// Waits until the log holds one of `texts` (for a line whose wording
    /// depends on the peer's version).
    ///
    /// # Errors
    /// When none appears within the start-up timeout.
    pub async fn wait_for_any_log_text(&self, texts: &[&str]) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = self.log_text();
            if texts.iter().any(|text| log.contains(text)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("none of {texts:?} in the log in time; log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The log as text, for failure messages.
    pub fn log_text(&self) -> String {
        self.events()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn address_in(&self, message: &str, filter: impl Fn(&Value) -> bool) -> SocketAddr {
        self.events()
            .iter()
            .find(|event| event["message"] == message && filter(event))
            .and_then(|event| event["address"].as_str()?.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no {message:?} event with an address; log:\n{}",
                    self.log_text()
                )
            })
    }

    /// The address listener `name` is bound to.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.address_in("listener bound", |event| event["listener"] == name)
    }

    /// The admin server's address.
    pub fn admin(&self) -> SocketAddr {
        self.address_in("admin server listening", |_| true)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid =
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pids fit in i32"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .expect("SIGTERM is delivered");
    }

    /// Waits up to `timeout` for the process to exit.
    ///
    /// # Errors
    /// When it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "attache still running after {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// GET `path` on the admin port: (status, body).
    ///
    /// # Errors
    /// When the admin port does not answer.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_request(self.admin(), "GET", path).await
    }

    /// `/metrics` as Prometheus asks for it (`Accept: application/openmetrics-text`).
    ///
    /// # Errors
    /// When `/metrics` does not answer 200 with OpenMetrics.
    pub async fn openmetrics(&self) -> anyhow::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(self.admin()).await?;
        let request = "GET /metrics HTTP/1.1\r\nHost: admin\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nConnection: close\r\n\r\n";
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .with_context(|| format!("not an HTTP response: {response:?}"))?;
        if !head.starts_with("HTTP/1.1 200")
            || !head
                .to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text")
        {
            bail!("not OpenMetrics: {head}");
        }
        Ok(body.to_owned())
    }

    /// Every sample on `/metrics`, keyed by the sample as written before its
    /// value, such as `attache_connections_total{listener="db"}`.
    ///
    /// # Errors
    /// When `/metrics` does not answer 200.
    pub async fn metrics(&self) -> anyhow::Result<HashMap<String, f64>> {
        let (status, body) = self.admin_get("/metrics").await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(body
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (sample, value) = line.rsplit_once(' ')?;
                Some((sample.to_owned(), value.parse().ok()?))
            })
            .collect())
    }

    /// Waits until `sample` equals `value` (metrics that a connection's task
    /// updates after the client already saw the outcome).
    ///
    /// # Errors
    /// When it does not get there within [`START_TIMEOUT`], with the last value.
    pub async fn wait_for_metric(&self, sample: &str, value: f64) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let current = self.metric(sample).await?;
            if current == value {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{sample} is {current}, expected {value}; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `sample` is at least `minimum`.
    ///
    /// # Errors
    /// When it does not get there within [`START_TIMEOUT`], with the last value.
    pub async fn wait_for_metric_at_least(&self, sample: &str, minimum: f64) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let current = self.metric(sample).await?;
            if current >= minimum {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{sample} is {current}, expected at least {minimum}; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One sample's value; 0 when the sample is absent.
    ///
    /// # Errors
    /// When `/metrics` does not answer.
    pub async fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        Ok(self.metrics().await?.get(sample).copied().unwrap_or(0.0))
    }
}

impl Drop for Attache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects to `front` and expects attache to close the connection without
/// sending anything (upstream unavailable, refused, queue timeout).
///
/// # Panics
/// When data arrives or the connection is still open after 20 s.
pub async fn expect_closed(front: SocketAddr) {
    let mut client = tokio::net::TcpStream::connect(front)
        .await
        .expect("connect to attache");
    let mut received = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut received)).await;
    let closed = matches!(read, Ok(Ok(0))) || matches!(read, Ok(Err(_)));
    assert!(
        closed,
        "client connection closed without data, got {read:?}"
    );
}

/// Connects to `front` and reads until the upstream closes (a greeter's greeting).
///
/// # Panics
/// When the connection fails or stays open for 20 s.
pub async fn read_greeting(front: SocketAddr) -> String {
    let mut client = tokio::net::TcpStream::connect(front)
        .await
        .expect("connect to attache");
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut received))
        .await
        .expect("the greeting ends within 20 s")
        .expect("read the greeting");
    String::from_utf8_lossy(&received).into_owned()
}

/// Established TCP connections that process `pid` holds to `port` on
/// loopback, counted with `ss` (iproute2).
///
/// # Panics
/// When `ss` cannot run.
pub fn established_to(pid: u32, port: u16) -> usize {
    let output = Command::new("ss")
        .args([
            "-Htnp",
            "state",
            "established",
            "dport",
            "=",
            &format!(":{port}"),
        ])
        .output()
        .expect("ss (iproute2) runs");
    let owner = format!("pid={pid},");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(&owner))
        .count()
}

/// Waits until [`established_to`] is `count`.
///
/// # Errors
/// When it does not get there within [`START_TIMEOUT`], with the last count.
pub async fn wait_for_established(pid: u32, port: u16, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let current = established_to(pid, port);
        if current == count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{current} connections from pid {pid} to port {port}, expected {count}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `yaml` to a temporary file.
///
/// # Errors
/// When the file cannot be written.
pub fn write_config(yaml: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::fs::write(file.path(), yaml)?;
    Ok(file)
}

/// Sends `payload` and half-closes while reading until the peer closes, both
/// at once (so neither side's buffers can fill and stall the other), and
/// returns what was read.
///
/// # Errors
/// When reading or writing fails.
pub async fn exchange(
    stream: &mut tokio::net::TcpStream,
    payload: &[u8],
) -> std::io::Result<Vec<u8>> {
    let (mut read, mut write) = stream.split();
    let sending = async {
        write.write_all(payload).await?;
        write.shutdown().await
    };
    let mut received = Vec::new();
    tokio::try_join!(sending, read.read_to_end(&mut received))?;
    Ok(received)
}

/// PINGs the Redis (or Redis-speaking proxy) at `address` with the real client.
///
/// # Errors
/// When the connection or the command fails.
pub async fn redis_ping(address: SocketAddr) -> redis::RedisResult<String> {
    let client = redis::Client::open(format!("redis://{address}/"))?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    redis::cmd("PING").query_async(&mut connection).await
}

/// A MariaDB pool for root on database `test` at `address`.
pub fn mariadb_pool(address: SocketAddr) -> mysql_async::Pool {
    let options = mysql_async::OptsBuilder::default()
        .ip_or_hostname(address.ip().to_string())
        .tcp_port(address.port())
        .user(Some("root"))
        .db_name(Some("test"))
        .prefer_socket(false);
    mysql_async::Pool::new(options)
}

/// Waits until the certificate at `path` expired more than two seconds ago.
/// (openssl calls a certificate expired in its `notAfter` second, webpki
/// still valid; the margin keeps both agreeing.)
///
/// # Panics
/// When it has not expired within [`START_TIMEOUT`].
pub async fn wait_until_expired(path: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let still_valid = Command::new("openssl")
            .args(["x509", "-noout", "-checkend", "-2", "-in", path])
            .output()
            .expect("openssl runs")
            .status
            .success();
        if !still_valid {
            return;
        }
        assert!(Instant::now() < deadline, "{path} never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends one HTTP/1.1 request without a body and returns (status, body).
///
/// # Errors
/// When the server does not answer with a parseable response.
pub async fn http_request(
    address: SocketAddr,
    method: &str,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A response as curl saw it.
#[derive(Debug)]
pub struct CurlResponse {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// curl's `%{http_version}`: `1.1` or `2`.
    pub version: String,
}

impl CurlResponse {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// The first value of header `name` (lowercase) in `headers`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(known, _)| known == name)
        .map(|(_, value)| value.as_str())
}

/// Runs curl with `arguments` (at least a URL) and parses its answer.
///
/// # Panics
/// When curl cannot run or fails (no response).
pub async fn curl(arguments: &[&str]) -> CurlResponse {
    let output = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-S",
            "--max-time",
            "30",
            "-D",
            "/dev/stderr",
            "-w",
            "\n%{http_version}",
        ])
        .args(arguments)
        .output()
        .await
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "curl failed: {stderr}");
    let (body, version) = stdout.rsplit_once('\n').expect("curl's version line");
    // With redirects or 1xx there can be several heads; the last one counts.
    let head = stderr
        .split("\r\n\r\n")
        .filter(|head| head.starts_with("HTTP/"))
        .last()
        .unwrap_or_else(|| panic!("no response head in {stderr:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|status| status.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    CurlResponse {
        status,
        headers,
        body: body.to_owned(),
        version: version.trim().to_owned(),
    }
}

/// The target directory of the running test's profile (test executables
/// live in `target/<profile>/deps`).
fn profile_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
        .expect("test executable is in target/<profile>/deps")
}

/// Fails the test, with what `what` printed, unless it exited with success.
///
/// # Panics
/// When `output` is a failure's.
pub fn assert_succeeded(output: &std::process::Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The Go application in `integration/clients/<name>` (a real driver
/// exercising a pooling listener: pgx, go-sql-driver/mysql), built with Go
/// and the driver from Debian's packages in GOPATH mode, so nothing is
/// fetched; binary and build cache go under the target directory.
///
/// # Panics
/// When Go or the driver's package is missing, or the build fails.
pub async fn go_client(name: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(name);
    let profile_dir = profile_dir();
    let binary = profile_dir.join(format!("{name}-client"));
    let output = tokio::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(&source)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", profile_dir.join("go-cache"))
        .output()
        .await
        .expect("go (Debian's golang-go) runs");
    assert!(
        output.status.success(),
        "go build of integration/clients/{name}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    binary
}
