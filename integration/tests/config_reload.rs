//! Config reload without a restart: the file is rewritten (as a rename, the
//! way editors and Kubernetes replace files) or its ConfigMap-style `..data`
//! symlink is swapped, and attache applies the new config to new
//! connections and requests while traffic flows, keeps established tunnels
//! on the settings they started with, refuses a broken file as a whole,
//! and drains a removed listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use attache_integration::http_app::HttpApp;
use attache_integration::{Attache, exchange, servers, wait_for_established};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A config file in a directory of its own.
struct ConfigDir {
    directory: tempfile::TempDir,
}

impl ConfigDir {
    fn new(yaml: &str) -> Self {
        let config = Self {
            directory: tempfile::tempdir().unwrap(),
        };
        config.replace(yaml);
        config
    }

    fn path(&self) -> PathBuf {
        self.directory.path().join("attache.yaml")
    }

    /// Replaces the file at once (write beside it, then rename).
    fn replace(&self, yaml: &str) {
        let staged = self.directory.path().join(".attache.yaml.new");
        std::fs::write(&staged, yaml).unwrap();
        std::fs::rename(&staged, self.path()).unwrap();
    }

    async fn start(&self) -> Attache {
        let path = self.path().display().to_string();
        Attache::spawn(&["run", "-c", &path, "--admin", "127.0.0.1:0"], None)
            .await
            .unwrap()
    }
}

const RELOADED: &str = r#"attache_config_reloads_total{result="ok"}"#;
const REFUSED: &str = r#"attache_config_reloads_total{result="error"}"#;

fn http_config(
    upstream_a: SocketAddr,
    extra_routes: &str,
    extra_upstreams: &str,
    listener_extra: &str,
) -> String {
    format!(
        r#"
listeners:
  - name: web
    listen: 127.0.0.1:0
    protocol: http
    upstream: a
    http:
{listener_extra}      routes:
{extra_routes}        - name: default
          match: {{ path_prefix: / }}
          upstream: a
upstreams:
  a:
    endpoints: ["{upstream_a}"]
{extra_upstreams}"#
    )
}

/// Who answered a request, or why none did.
async fn served_by(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    front: SocketAddr,
    path: &str,
) -> Result<(String, http::HeaderMap), String> {
    let response = client
        .get(format!("http://{front}{path}").parse().unwrap())
        .await
        .map_err(|error| format!("request failed: {error}"))?;
    let status = response.status();
    let headers = response.headers().clone();
    let name = headers
        .get("x-served-by")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    response
        .into_body()
        .collect()
        .await
        .map_err(|error| format!("body failed: {error}"))?;
    if status != 200 {
        return Err(format!("status {status} from {name:?}"));
    }
    Ok((name, headers))
}

#[tokio::test]
async fn http_reloads_reach_open_connections_and_no_request_fails() {
    let (a, b, c) = (
        HttpApp::start("a").await,
        HttpApp::start("b").await,
        HttpApp::start("c").await,
    );
    let config = ConfigDir::new(&http_config(a.address, "", "", ""));
    let attache = config.start().await;
    let front = attache.listener("web");

    // Four keep-alive clients send requests back to back through every reload.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (stop, answered, failures) = (stop.clone(), answered.clone(), failures.clone());
            tokio::spawn(async move {
                let client = Client::builder(TokioExecutor::new()).build_http();
                while !stop.load(Ordering::SeqCst) {
                    match served_by(&client, front, "/echo").await {
                        Ok(_) => answered.fetch_add(1, Ordering::SeqCst),
                        Err(error) => {
                            failures.lock().unwrap().push(error);
                            0
                        }
                    };
                }
            })
        })
        .collect();
    let client = Client::builder(TokioExecutor::new()).build_http();
    assert_eq!(served_by(&client, front, "/echo").await.unwrap().0, "a");

    // 1: a route to a new upstream.
    let route_b =
        "        - name: b\n          match: { path_prefix: /echo/b }\n          upstream: b\n";
    let upstream_b = format!("  b:\n    endpoints: [\"{}\"]\n", b.address);
    config.replace(&http_config(a.address, route_b, &upstream_b, ""));
    attache.wait_for_metric(RELOADED, 1.0).await.unwrap();
    // The same keep-alive connection follows the new routes.
    assert_eq!(served_by(&client, front, "/echo/b").await.unwrap().0, "b");
    assert_eq!(served_by(&client, front, "/echo").await.unwrap().0, "a");

    // 2: upstream a's endpoint replaced by app c.
    config.replace(&http_config(c.address, route_b, &upstream_b, ""));
    attache.wait_for_metric(RELOADED, 2.0).await.unwrap();
    assert_eq!(served_by(&client, front, "/echo").await.unwrap().0, "c");
    let before = a.requests();

    // 3: a timeout changed, and a response header added.
    let settings = "      request_timeout: 7s\n      upstream_time_header: x-upstream-time\n";
    config.replace(&http_config(c.address, route_b, &upstream_b, settings));
    attache.wait_for_metric(RELOADED, 3.0).await.unwrap();
    let (name, headers) = served_by(&client, front, "/echo").await.unwrap();
    assert_eq!(name, "c");
    assert!(headers.contains_key("x-upstream-time"), "{headers:?}");
    let (status, body) = attache.admin_get("/config").await.unwrap();
    assert_eq!(status, 200);
    let active: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(active["generation"], 4);
    assert_eq!(
        active["config"]["listeners"][0]["http"]["request_timeout"],
        "7s"
    );

    stop.store(true, Ordering::SeqCst);
    for finished in loops {
        finished.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(answered.load(Ordering::SeqCst) > 0);
    // Nothing reached app a after its endpoint was replaced.
    assert_eq!(a.requests(), before);
    assert_eq!(attache.metric(REFUSED).await.unwrap(), 0.0);
}

fn tcp_config(listeners: &[(&str, &str, SocketAddr)]) -> String {
    let mut yaml = String::from("listeners:\n");
    for (name, listen, _) in listeners {
        yaml.push_str(&format!(
            "  - {{ name: {name}, listen: \"{listen}\", protocol: tcp, upstream: {name} }}\n"
        ));
    }
    yaml.push_str("upstreams:\n");
    for (name, _, upstream) in listeners {
        yaml.push_str(&format!("  {name}: {{ endpoints: [\"{upstream}\"] }}\n"));
    }
    yaml
}

/// Sends 256 KiB through `stream` and checks it comes back whole.
async fn echo_round(stream: &mut tokio::net::TcpStream, seed: u64) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let payload = servers::random_bytes(256 * 1024, seed);
    let (mut read, mut write) = stream.split();
    let sending = write.write_all(&payload);
    let mut received = vec![0; payload.len()];
    let receiving = read.read_exact(&mut received);
    let (sent, got) = tokio::join!(sending, receiving);
    sent.unwrap();
    got.unwrap();
    assert_eq!(
        servers::sha256_hex(&received),
        servers::sha256_hex(&payload)
    );
}

#[tokio::test]
async fn a_tunnel_open_across_a_reload_keeps_its_upstream_and_new_ones_get_the_new_one() {
    let (first, second) = (servers::echo().await, servers::echo().await);
    let config = ConfigDir::new(&tcp_config(&[("db", "127.0.0.1:0", first)]));
    let attache = config.start().await;
    let front = attache.listener("db");
    let mut tunnel = tokio::net::TcpStream::connect(front).await.unwrap();
    echo_round(&mut tunnel, 1).await;

    config.replace(&tcp_config(&[("db", "127.0.0.1:0", second)]));
    attache.wait_for_metric(RELOADED, 1.0).await.unwrap();
    // Same socket: the address did not change.
    let mut fresh = tokio::net::TcpStream::connect(front).await.unwrap();
    echo_round(&mut fresh, 2).await;
    wait_for_established(attache.pid(), second.port(), 1)
        .await
        .unwrap();
    // The tunnel opened before the reload still flows, to the first echo.
    echo_round(&mut tunnel, 3).await;
    assert_eq!(
        attache_integration::established_to(attache.pid(), first.port()),
        1
    );
    let echoed = exchange(&mut tunnel, b"last words").await.unwrap();
    assert_eq!(echoed, b"last words");
}

#[tokio::test]
async fn a_removed_listener_finishes_its_connection_then_refuses_new_ones() {
    let echo = servers::echo().await;
    let config = ConfigDir::new(&tcp_config(&[
        ("kept", "127.0.0.1:0", echo),
        ("gone", "127.0.0.2:0", echo),
    ]));
    let attache = config.start().await;
    let gone = attache.listener("gone");
    let mut open = tokio::net::TcpStream::connect(gone).await.unwrap();
    echo_round(&mut open, 4).await;

    config.replace(&tcp_config(&[("kept", "127.0.0.1:0", echo)]));
    attache.wait_for_metric(RELOADED, 1.0).await.unwrap();
    // Only the removed listener closes; its socket is gone before the line.
    attache.wait_for_log_text("listener closed").await.unwrap();
    let refused = tokio::net::TcpStream::connect(gone).await;
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    // The connection accepted before the reload goes on to its end.
    echo_round(&mut open, 5).await;
    let echoed = exchange(&mut open, b"bye").await.unwrap();
    assert_eq!(echoed, b"bye");
    let kept = attache.listener("kept");
    let mut stream = tokio::net::TcpStream::connect(kept).await.unwrap();
    echo_round(&mut stream, 6).await;
}

#[tokio::test]
async fn a_broken_config_is_refused_whole_and_the_running_one_keeps_serving() {
    let echo = servers::echo().await;
    let good = tcp_config(&[("db", "127.0.0.1:0", echo)]);
    let config = ConfigDir::new(&good);
    let attache = config.start().await;
    let front = attache.listener("db");
    let hash = attache_integration::servers::sha256_hex(good.as_bytes());
    let info = format!("attache_config_info{{hash=\"{hash}\"}}");
    assert_eq!(attache.metric(&info).await.unwrap(), 1.0);

    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let free = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let missing = config.directory.path().join("missing.pem");
    let broken = [
        // YAML syntax.
        (format!("{good}  oops: [\n"), "line".to_owned()),
        // A listener naming an upstream that does not exist.
        (
            "listeners:\n  - { name: db, listen: 127.0.0.1:0, protocol: tcp, upstream: nowhere }\n"
                .to_owned(),
            "listeners[0].upstream".to_owned(),
        ),
        // A certificate that cannot be read.
        (
            format!(
                "listeners:\n  - name: db\n    listen: 127.0.0.1:0\n    protocol: tcp\n    upstream: db\n    tls: {{ cert: {m}, key: {m}, client_auth: none }}\nupstreams:\n  db: {{ endpoints: [\"{echo}\"] }}\n",
                m = missing.display()
            ),
            "missing.pem".to_owned(),
        ),
        // A new listener on a free port and one on a taken port: neither binds.
        (
            tcp_config(&[
                ("db", "127.0.0.1:0", echo),
                ("fresh", &free.to_string(), echo),
                ("clash", &taken.local_addr().unwrap().to_string(), echo),
            ]),
            "cannot listen".to_owned(),
        ),
    ];
    for (refusals, (yaml, said)) in broken.iter().enumerate() {
        config.replace(yaml);
        attache
            .wait_for_metric(REFUSED, (refusals + 1) as f64)
            .await
            .unwrap();
        attache.wait_for_log_text(said).await.unwrap();
        let mut stream = tokio::net::TcpStream::connect(front).await.unwrap();
        echo_round(&mut stream, 10 + refusals as u64).await;
    }
    assert!(
        tokio::net::TcpStream::connect(free).await.is_err(),
        "half-applied: {free} was bound"
    );
    assert_eq!(attache.metric(RELOADED).await.unwrap(), 0.0);
    assert_eq!(attache.metric(&info).await.unwrap(), 1.0);
    assert_eq!(
        attache.metric("attache_config_generation").await.unwrap(),
        1.0
    );
}

#[tokio::test]
async fn a_configmap_symlink_swap_reloads_and_config_shows_it_redacted() {
    let (first, second) = (servers::echo().await, servers::echo().await);
    let directory = tempfile::tempdir().unwrap();
    let version = |name: &str, yaml: &str| -> PathBuf {
        let folder = directory.path().join(name);
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("attache.yaml"), yaml).unwrap();
        folder
    };
    let with_password = |upstream: SocketAddr| {
        format!(
            "listeners:\n  - name: cache\n    listen: 127.0.0.1:0\n    protocol: redis\n    upstream: cache\n    redis: {{ password: hunter2-secret }}\nupstreams:\n  cache: {{ endpoints: [\"{upstream}\"] }}\n"
        )
    };
    let (v1, v2) = (with_password(first), with_password(second));
    version("..2026_12_01_v1", &v1);
    std::os::unix::fs::symlink("..2026_12_01_v1", directory.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/attache.yaml", directory.path().join("attache.yaml"))
        .unwrap();
    let path = directory.path().join("attache.yaml").display().to_string();
    let attache = Attache::spawn(&["run", "-c", &path, "--admin", "127.0.0.1:0"], None)
        .await
        .unwrap();

    let (_, body) = attache.admin_get("/config").await.unwrap();
    let active: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(active["generation"], 1);
    assert_eq!(active["sha256"], servers::sha256_hex(v1.as_bytes()));
    assert_eq!(active["source"], path.as_str());
    assert_eq!(
        active["config"]["listeners"][0]["redis"]["password"],
        "<redacted>"
    );
    assert!(!body.contains("hunter2"), "{body}");

    // Kubernetes' update: a new version folder, then ..data renamed over.
    version("..2026_12_01_v2", &v2);
    swap_symlink(directory.path(), "..data", "..2026_12_01_v2");
    attache.wait_for_metric(RELOADED, 1.0).await.unwrap();
    let (_, body) = attache.admin_get("/config").await.unwrap();
    let active: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(active["generation"], 2);
    assert_eq!(active["sha256"], servers::sha256_hex(v2.as_bytes()));
    assert_eq!(
        active["config"]["upstreams"][0]["endpoints"][0],
        second.to_string()
    );
    let info = format!(
        "attache_config_info{{hash=\"{}\"}}",
        servers::sha256_hex(v2.as_bytes())
    );
    assert_eq!(attache.metric(&info).await.unwrap(), 1.0);
    assert!(
        attache
            .metric("attache_config_last_reload_success_timestamp_seconds")
            .await
            .unwrap()
            > 0.0
    );
}

/// Points `name` in `directory` at `target` atomically (a new link, renamed over).
fn swap_symlink(directory: &Path, name: &str, target: &str) {
    let staged = directory.join(format!("{name}.tmp"));
    std::os::unix::fs::symlink(target, &staged).unwrap();
    std::fs::rename(&staged, directory.join(name)).unwrap();
}
