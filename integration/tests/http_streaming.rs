//! Large bodies stream through the HTTP proxy byte-exact, both ways, while
//! attache's memory stays far below the body size (read from /proc).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use attache_integration::Attache;
use attache_integration::http_app::HttpApp;
use attache_integration::servers::{hex, random_chunks, random_chunks_sha256};
use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;

const SIZE: usize = 200 * 1024 * 1024;
/// Far below the body size: what streaming must stay under.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Samples attache's RSS every 20 ms until stopped; returns the peak.
fn watch_rss(pid: u32) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let peak = tokio::spawn(async move {
        let peak = AtomicU64::new(0);
        while !stopped.load(Ordering::Relaxed) {
            peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak.load(Ordering::Relaxed)
    });
    (stop, peak)
}

async fn proxy() -> (HttpApp, Attache) {
    let app = HttpApp::start("app").await;
    let config = format!(
        "listeners:
  - name: front
    listen: 127.0.0.1:0
    protocol: http
    upstream: app
    http: {{ request_timeout: 120s }}
upstreams:
  app: {{ endpoints: [\"{}\"] }}
",
        app.address
    );
    let attache = Attache::run(&config).await.unwrap();
    (app, attache)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_200_mib_download_streams_byte_exact_in_little_memory() {
    let (_app, attache) = proxy().await;
    let (stop, peak) = watch_rss(attache.pid());
    let mut curl = tokio::process::Command::new("curl")
        .args(["-s", "-S", "--fail", "--max-time", "120"])
        .arg(format!(
            "http://{}/download/{SIZE}/7",
            attache.listener("front")
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = curl.stdout.take().unwrap();
    let mut hasher = Sha256::new();
    let mut received = 0;
    let mut buffer = vec![0; 256 * 1024];
    loop {
        let read = stdout.read(&mut buffer).await.unwrap();
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        received += read;
    }
    assert!(curl.wait().await.unwrap().success());
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await.unwrap();
    assert_eq!(received, SIZE);
    assert_eq!(hex(&hasher.finalize()), random_chunks_sha256(SIZE, 7));
    assert!(
        peak > 0 && peak < RSS_LIMIT_KIB,
        "attache peaked at {peak} KiB"
    );
    let lines = attache.wait_for_stdout_lines(1).await.unwrap();
    assert_eq!(lines[0]["bytes_sent"], SIZE);
    assert_eq!(lines[0]["complete"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_200_mib_upload_with_a_content_length_streams_byte_exact_in_little_memory() {
    let (app, attache) = proxy().await;
    let (stop, peak) = watch_rss(attache.pid());
    let frames = futures_util::stream::iter(
        random_chunks(SIZE, 11, 256 * 1024)
            .map(|chunk| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(chunk)))),
    );
    let request = http::Request::post(format!("http://{}/upload", attache.listener("front")))
        .header("content-length", SIZE)
        .body(StreamBody::new(frames))
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await.unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["body_len"], SIZE);
    assert_eq!(answer["body_sha256"], random_chunks_sha256(SIZE, 11));
    assert!(
        peak > 0 && peak < RSS_LIMIT_KIB,
        "attache peaked at {peak} KiB"
    );
    assert_eq!(app.requests(), 1);
    let lines = attache.wait_for_stdout_lines(1).await.unwrap();
    assert_eq!(lines[0]["bytes_received"], SIZE);
}
