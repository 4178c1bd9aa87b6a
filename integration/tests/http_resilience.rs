//! HTTP resilience through the real binary against app servers that fail
//! on cue: status retries and their counters, idempotency, the retry
//! budget, request and per-try timeouts, outlier ejection and return, and
//! request limits that answer 503 at once.

use std::time::Duration;

use attache_integration::Attache;
use attache_integration::http_app::HttpApp;

/// (status, x-served-by, body) of one request made with curl.
async fn request(url: &str, extra: &[&str]) -> (u16, String, String) {
    let output = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-S",
            "--max-time",
            "20",
            "-o",
            "-",
            "-D",
            "/dev/stderr",
            "-w",
            "\n%{http_code}",
        ])
        .args(extra)
        .arg(url)
        .output()
        .await
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = stdout.rsplit_once('\n').expect("status line");
    let headers = String::from_utf8_lossy(&output.stderr).to_ascii_lowercase();
    let served_by = headers
        .lines()
        .find_map(|line| line.strip_prefix("x-served-by:"))
        .map(|value| value.trim().to_owned())
        .unwrap_or_default();
    (
        status.trim().parse().expect("a status"),
        served_by,
        body.to_owned(),
    )
}

fn config(apps: &[&HttpApp], http: &str, upstream: &str) -> String {
    let endpoints: Vec<String> = apps
        .iter()
        .map(|app| format!("\"{}\"", app.address))
        .collect();
    format!(
        "listeners:
  - name: front
    listen: 127.0.0.1:0
    protocol: http
    upstream: app
    http:
      access_log: {{ enabled: false }}
{http}
upstreams:
  app:
    endpoints: [{}]
{upstream}
",
        endpoints.join(", ")
    )
}

async fn metric(attache: &Attache, sample: &str) -> f64 {
    attache.metric(&format!("attache_{sample}")).await.unwrap()
}

#[tokio::test]
async fn a_503_twice_then_200_is_retried_and_counted() {
    let app = HttpApp::start("app").await;
    let attache = Attache::run(&config(&[&app], "", "")).await.unwrap();
    let url = format!("http://{}/script", attache.listener("front"));
    app.script(&[503, 503]);
    let (status, _, body) = request(&url, &[]).await;
    assert_eq!((status, body.as_str()), (200, "scripted 200\n"));
    assert_eq!(app.requests(), 3);
    assert_eq!(
        metric(&attache, "upstream_retries_total{upstream=\"app\"}").await,
        2.0
    );

    // A POST is not retried by default: the client gets the 503.
    app.script(&[503]);
    let (status, _, _) = request(&url, &["-X", "POST", "--data", "order=1"]).await;
    assert_eq!(status, 503);
    assert_eq!(app.requests(), 4);
    assert_eq!(
        metric(&attache, "upstream_retries_total{upstream=\"app\"}").await,
        2.0
    );
}

#[tokio::test]
async fn a_post_is_retried_when_told_to_and_its_body_replayed() {
    let app = HttpApp::start("app").await;
    let attache = Attache::run(&config(&[&app], "      retry_non_idempotent: true", ""))
        .await
        .unwrap();
    let url = format!("http://{}/script", attache.listener("front"));
    app.script(&[502]);
    let (status, _, _) = request(&url, &["-X", "POST", "--data", "order=1"]).await;
    assert_eq!(status, 200);
    assert_eq!(app.requests(), 2);
    assert_eq!(
        metric(&attache, "upstream_retries_total{upstream=\"app\"}").await,
        1.0
    );
}

#[tokio::test]
async fn retries_stop_when_the_budget_is_spent() {
    let app = HttpApp::start("app").await;
    app.fail_with(Some(503));
    // No percentage, one retry per second over the 10 s window: ten retries
    // in all. The breaker is off so that every request reaches the app.
    let upstream = "    retry: { attempts: 3, budget_percent: 0, budget_min_per_second: 1 }
    breaker: { consecutive_failures: 0 }";
    let attache = Attache::run(&config(&[&app], "", upstream)).await.unwrap();
    let url = format!("http://{}/echo", attache.listener("front"));
    for _ in 0..10 {
        let (status, _, _) = request(&url, &[]).await;
        assert_eq!(status, 503);
    }
    // The first five requests make three tries each, the last five one.
    assert_eq!(app.requests(), 20);
    assert_eq!(
        metric(&attache, "upstream_retries_total{upstream=\"app\"}").await,
        10.0
    );
    assert_eq!(
        metric(
            &attache,
            "upstream_retry_budget_exhausted_total{upstream=\"app\"}"
        )
        .await,
        5.0
    );
}

#[tokio::test]
async fn a_hanging_upstream_gets_504_at_the_request_timeout() {
    let app = HttpApp::start("app").await;
    let attache = Attache::run(&config(&[&app], "      request_timeout: 1s", ""))
        .await
        .unwrap();
    let url = format!("http://{}/hang", attache.listener("front"));
    let (status, _, body) = request(&url, &[]).await;
    assert_eq!(status, 504);
    assert_eq!(
        body,
        "attache: upstream \"app\" did not answer within the request timeout (1s)\n"
    );
    assert_eq!(
        metric(
            &attache,
            "http_requests_total{listener=\"front\",route=\"app\",upstream=\"app\",status_class=\"5xx\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_per_try_timeout_moves_the_request_to_another_endpoint() {
    let stuck = HttpApp::start("stuck").await;
    let healthy = HttpApp::start("healthy").await;
    stuck.hang(true);
    let attache = Attache::run(&config(
        &[&stuck, &healthy],
        "      request_timeout: 10s\n      per_try_timeout: 300ms",
        "    breaker: { consecutive_failures: 0 }",
    ))
    .await
    .unwrap();
    let url = format!("http://{}/echo", attache.listener("front"));
    for _ in 0..4 {
        let (status, served_by, _) = request(&url, &[]).await;
        assert_eq!((status, served_by.as_str()), (200, "healthy"));
    }
    // Round robin started half the requests on the stuck endpoint; each of
    // those timed out there once and was retried on the healthy one.
    assert_eq!(stuck.requests(), 2);
    assert_eq!(healthy.requests(), 4);
    assert_eq!(
        metric(&attache, "upstream_retries_total{upstream=\"app\"}").await,
        2.0
    );
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_then_returns_after_the_interval() {
    let apps = [
        HttpApp::start("a").await,
        HttpApp::start("b").await,
        HttpApp::start("c").await,
    ];
    apps[0].fail_with(Some(500));
    let attache = Attache::run(&config(
        &[&apps[0], &apps[1], &apps[2]],
        "",
        "    retry: { attempts: 1 }
    breaker: { consecutive_failures: 2, open_for: 1s }",
    ))
    .await
    .unwrap();
    let url = format!("http://{}/echo", attache.listener("front"));
    let mut failures = 0;
    for _ in 0..12 {
        let (status, _, _) = request(&url, &[]).await;
        if status != 200 {
            assert_eq!(status, 500);
            failures += 1;
        }
    }
    // Two consecutive 5xx ejected "a"; the rest went to "b" and "c".
    assert_eq!((failures, apps[0].requests()), (2, 2));
    assert_eq!(apps[1].requests() + apps[2].requests(), 10);
    let endpoint = apps[0].address;
    let transitions = |state: &str| {
        format!(
            "upstream_breaker_transitions_total{{upstream=\"app\",endpoint=\"{endpoint}\",state=\"{state}\"}}"
        )
    };
    assert_eq!(metric(&attache, &transitions("open")).await, 1.0);

    // Recovered; once the interval ends a probe request closes the breaker.
    apps[0].fail_with(None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while apps[0].requests() == 2 {
        assert!(tokio::time::Instant::now() < deadline, "never probed again");
        let (status, _, _) = request(&url, &[]).await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&attache, &transitions("closed")).await, 1.0);
    for _ in 0..6 {
        request(&url, &[]).await;
    }
    assert!(
        apps[0].requests() >= 4,
        "back in rotation: {}",
        apps[0].requests()
    );
}

#[tokio::test]
async fn requests_beyond_the_limits_get_a_fast_503() {
    let app = HttpApp::start("app").await;
    let attache = Attache::run(&config(
        &[&app],
        "      request_timeout: 30s",
        "    limits: { max_requests: 1, max_pending: 0 }",
    ))
    .await
    .unwrap();
    let front = attache.listener("front");
    let hanging = tokio::spawn(request_owned(format!("http://{front}/hang")));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.requests() == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _, body) = request(&format!("http://{front}/echo"), &[]).await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        "attache: upstream \"app\" is at its request limit: every slot is taken and the queue is full\n"
    );
    assert_eq!(app.requests(), 1);
    assert_eq!(
        metric(
            &attache,
            "upstream_refused_total{upstream=\"app\",reason=\"overflow\"}"
        )
        .await,
        1.0
    );
    hanging.abort();
}

async fn request_owned(url: String) -> (u16, String, String) {
    request(&url, &[]).await
}
