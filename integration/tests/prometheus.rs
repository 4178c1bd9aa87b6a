//! What Prometheus and its tools see: `/metrics` in text format 0.0.4
//! passes `promtool check metrics` (OpenMetrics goes to scrapers that ask
//! for it), and the alert rules in docs/prometheus/ pass `promtool check
//! rules` and their unit tests (`promtool test rules`). promtool comes
//! from Debian's `prometheus` package (`.ci/run` installs it).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use attache_integration::{Attache, redis_ping, redis_server::RedisServer};

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/prometheus")
}

fn promtool(arguments: &[&str], input: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(arguments)
        .current_dir(docs())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) is installed by .ci/run");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        if let Some(input) = input {
            stdin.write_all(input.as_bytes()).unwrap();
        }
    }
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_alert_rules_are_valid_and_fire_on_what_their_tests_feed_them() {
    let (ok, said) = promtool(&["check", "rules", "alerts.yaml"], None);
    assert!(ok, "{said}");
    assert!(said.contains("SUCCESS: 11 rules found"), "{said}");
    let (ok, said) = promtool(&["test", "rules", "alerts.test.yaml"], None);
    assert!(ok, "{said}");
}

#[tokio::test]
async fn metrics_in_text_format_pass_promtool_and_openmetrics_is_there_for_who_asks() {
    let redis = RedisServer::plain();
    let config = format!(
        "listeners:\n  - {{name: tcp, listen: 127.0.0.1:0, protocol: tcp, upstream: redis}}\n  \
         - {{name: resp, listen: 127.0.0.1:0, protocol: redis, upstream: redis}}\n\
         upstreams:\n  redis: {{endpoints: [\"{}\"], health_check: {{probe: redis}}}}\n",
        redis.address
    );
    let attache = Attache::run(&config).await.unwrap();
    assert_eq!(redis_ping(attache.listener("tcp")).await.unwrap(), "PONG");
    assert_eq!(redis_ping(attache.listener("resp")).await.unwrap(), "PONG");

    let (status, text) = attache.admin_get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(!text.contains("# EOF"));
    assert!(text.contains("# TYPE attache_connections_total counter"));
    assert!(text.contains("process_resident_memory_bytes "));
    let (ok, said) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics: {said}\n{text}");

    let openmetrics = attache.openmetrics().await.unwrap();
    assert!(openmetrics.ends_with("# EOF\n"));
    assert!(openmetrics.contains("# TYPE attache_connections counter"));
}
