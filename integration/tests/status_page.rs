//! The admin port's status page (`GET /`), rendered by a real browser
//! (headless Chromium, Debian's `chromium`): against a running attache with
//! a TLS listener and an upstream with one healthy and one unhealthy
//! endpoint, the page shows the listener, both endpoints' health, the
//! certificate with its names and days left, and the config generation.
//! The screenshot it takes (`status-page.png` in Cargo's `CARGO_TARGET_TMPDIR`,
//! `target/tmp/` by default) is the one docs/operations.md shows; copy it to
//! docs/ when the page changes.

use std::path::PathBuf;
use std::process::Command;

use attache_integration::http_app::HttpApp;
use attache_integration::pki::Pki;
use attache_integration::{Attache, servers};

fn chromium(arguments: &[&str]) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .args(arguments)
        .output()
        .expect("chromium (Debian's package) is installed by .ci/run")
}

#[tokio::test]
async fn a_browser_shows_listeners_endpoint_health_certificates_and_the_config() {
    let pki = Pki::new();
    let app = HttpApp::start("app").await;
    let dead = servers::closed_port();
    let config = format!(
        "listeners:\n  - name: front\n    listen: 127.0.0.1:0\n    protocol: http\n    upstream: app\n\
         \x20   tls: {{cert: {cert}, key: {key}, client_auth: none}}\n\
         upstreams:\n  app:\n    endpoints: [\"{healthy}\", \"{dead}\"]\n\
         \x20   health_check: {{probe: tcp, interval: 1s, timeout: 900ms, unhealthy_threshold: 1, healthy_threshold: 1}}\n",
        cert = pki.cert("server"),
        key = pki.key("server"),
        healthy = app.address,
    );
    let attache = Attache::run(&config).await.unwrap();
    let health = |endpoint: &str, state: &str| {
        format!(
            "attache_upstream_endpoint_health{{upstream=\"app\",endpoint=\"{endpoint}\",state=\"{state}\"}}"
        )
    };
    attache
        .wait_for_metric(&health(&dead.to_string(), "unhealthy"), 1.0)
        .await
        .unwrap();
    attache
        .wait_for_metric(&health(&app.address.to_string(), "healthy"), 1.0)
        .await
        .unwrap();

    let url = format!("http://{}/", attache.admin());
    let dom = chromium(&["--dump-dom", &url]);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    let row_of = |needle: &str| -> String {
        dom.split("<tr>")
            .find(|row| row.contains(needle))
            .unwrap_or_else(|| panic!("no row with {needle}:\n{dom}"))
            .to_owned()
    };
    assert!(dom.contains("<title>attache status</title>"), "{dom}");
    assert!(
        dom.contains(r#"<span class="ok" id="state">serving</span>"#),
        "{dom}"
    );
    assert!(dom.contains(r#"<b id="generation">1</b>"#), "{dom}");
    let front = row_of("<td>front</td>");
    assert!(
        front.contains("<td>http</td>") && front.contains(&attache.listener("front").to_string()),
        "{front}"
    );
    // The first look has no earlier count to make a rate from.
    assert!(front.contains(r#"<td class="rate">—</td>"#), "{front}");
    assert!(row_of(&app.address.to_string()).contains(r#"<td class="ok">healthy</td>"#));
    assert!(row_of(&dead.to_string()).contains(r#"<td class="bad">unhealthy</td>"#));
    let certificate = row_of("listener front");
    assert!(certificate.contains("dns=localhost"), "{certificate}");
    // `attache certs issue` signs for 90 days by default.
    assert!(
        certificate.contains(r#"<td class="ok">89</td>"#)
            || certificate.contains(r#"<td class="ok">90</td>"#),
        "{certificate}"
    );

    // Cargo's scratch directory for integration tests (inside the target
    // directory, wherever that is).
    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let shot = chromium(&[
        &format!("--screenshot={}", screenshot.display()),
        "--window-size=1100,900",
        &url,
    ]);
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|error| panic!("{}: {error}", screenshot.display()));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}
