//! Spans reach a local OTLP/HTTP receiver and decode: an HTTP request's
//! server span continues the caller's `traceparent`, each upstream try is
//! a client span under it whose context the app receives, retries are
//! counted on the try spans, a TCP connection becomes a span with its
//! byte counts, and spans reach an https collector that requires a client
//! certificate, with the headers `OTEL_EXPORTER_OTLP_HEADERS` names.

use attache_integration::http_app::HttpApp;
use attache_integration::otlp::{CLIENT, Collector, ReceivedSpan, SERVER};
use attache_integration::pki::Pki;
use attache_integration::{Attache, curl, servers};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Export every 100 ms instead of every 5 s.
const FAST_EXPORT: [(&str, &str); 1] = [("OTEL_BSP_SCHEDULE_DELAY", "100")];

fn attribute<'a>(span: &'a ReceivedSpan, key: &str) -> &'a str {
    span.attributes
        .get(key)
        .unwrap_or_else(|| panic!("no {key} on {span:#?}"))
}

#[tokio::test]
async fn http_spans_continue_the_callers_trace_and_reach_the_app() {
    let collector = Collector::start().await;
    let app = HttpApp::start("app").await;
    let config = format!(
        "tracing: {{ otlp_endpoint: \"{}\", service_name: front-door }}
listeners:
  - name: front
    listen: 127.0.0.1:0
    protocol: http
    upstream: app
upstreams:
  app: {{ endpoints: [\"{}\"] }}
",
        collector.endpoint(),
        app.address
    );
    let attache = Attache::run_with_env(&config, &FAST_EXPORT).await.unwrap();
    let front = attache.listener("front");
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let response = curl(&[
        &format!("http://{front}/echo?q=1"),
        "-H",
        &format!("traceparent: 00-{trace}-{caller_span}-01"),
    ])
    .await;
    assert_eq!(response.status, 200);
    let echo: Value = serde_json::from_str(&response.body).unwrap();

    let spans = collector
        .wait_until(|spans| spans.iter().filter(|span| span.trace_id == trace).count() == 2)
        .await;
    let in_trace: Vec<_> = spans.iter().filter(|span| span.trace_id == trace).collect();
    let server = in_trace
        .iter()
        .find(|span| span.kind == SERVER)
        .expect("a server span");
    let client = in_trace
        .iter()
        .find(|span| span.kind == CLIENT)
        .expect("a client span");
    assert_eq!(server.service_name, "front-door");
    assert_eq!(server.parent_span_id, caller_span);
    assert_eq!(server.name, "GET");
    assert_eq!(attribute(server, "http.request.method"), "GET");
    assert_eq!(attribute(server, "url.path"), "/echo");
    assert_eq!(attribute(server, "url.scheme"), "http");
    assert_eq!(attribute(server, "network.protocol.version"), "1.1");
    assert_eq!(attribute(server, "client.address"), "127.0.0.1");
    assert_eq!(attribute(server, "http.response.status_code"), "200");
    assert_eq!(attribute(server, "attache.route"), "app");
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(attribute(client, "server.address"), "127.0.0.1");
    assert_eq!(
        attribute(client, "server.port"),
        app.address.port().to_string()
    );
    assert_eq!(attribute(client, "http.response.status_code"), "200");
    assert!(!client.attributes.contains_key("http.request.resend_count"));
    // The app is handed the try's context: same trace, parent = the client span.
    assert_eq!(
        echo["headers"]["traceparent"],
        serde_json::json!([format!("00-{trace}-{}-01", client.span_id)])
    );

    // The request's duration carries its trace as an exemplar (OpenMetrics),
    // so a slow bucket leads to the trace. Recorded once the body ended.
    let exemplar = format!("# {{trace_id=\"{trace}\"}}");
    let deadline = std::time::Instant::now() + attache_integration::START_TIMEOUT;
    loop {
        let metrics = attache.openmetrics().await.unwrap();
        if metrics.lines().any(|line| {
            line.starts_with("attache_http_request_duration_seconds_bucket{")
                && line.contains(&exemplar)
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exemplar {exemplar}:\n{metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Prometheus' text format has no exemplars.
    let (_, text) = attache.admin_get("/metrics").await.unwrap();
    assert!(!text.contains(&exemplar));

    // Without a traceparent a new trace starts; a retried try is counted.
    app.script(&[503]);
    let response = curl(&[&format!("http://{front}/script")]).await;
    assert_eq!(response.status, 200);
    let spans = collector
        .wait_until(|spans| spans.iter().filter(|span| span.trace_id != trace).count() == 3)
        .await;
    let fresh: Vec<_> = spans.iter().filter(|span| span.trace_id != trace).collect();
    let server = fresh.iter().find(|span| span.kind == SERVER).unwrap();
    assert_eq!(server.parent_span_id, "");
    let mut tries: Vec<_> = fresh.iter().filter(|span| span.kind == CLIENT).collect();
    tries.sort_by_key(|span| span.attributes.contains_key("http.request.resend_count"));
    assert!(
        tries
            .iter()
            .all(|span| span.parent_span_id == server.span_id)
    );
    assert_eq!(attribute(tries[0], "http.response.status_code"), "503");
    assert_eq!(tries[0].status_code, 2);
    assert_eq!(attribute(tries[1], "http.response.status_code"), "200");
    assert_eq!(attribute(tries[1], "http.request.resend_count"), "1");
    assert_eq!(attribute(server, "http.response.status_code"), "200");
}

/// A TCP listener `echo` in front of `echo`, then `extra` at the top level.
fn echo_config(echo: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "listeners:
  - {{ name: echo, listen: \"127.0.0.1:0\", protocol: tcp, upstream: echo }}
upstreams:
  echo: {{ endpoints: [\"{echo}\"] }}
{extra}"
    )
}

/// Sends `bytes` on a new connection to `address`, half-closes, and
/// returns everything read back until the connection closes.
async fn echo_once(address: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
    client.write_all(bytes).await.unwrap();
    client.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    client.read_to_end(&mut echoed).await.unwrap();
    echoed
}

#[tokio::test]
async fn a_tcp_connection_becomes_a_span_with_its_bytes() {
    let collector = Collector::start().await;
    let echo = servers::echo().await;
    // No tracing section: the standard environment variable turns export on.
    let config = echo_config(echo, "");
    let endpoint = collector.endpoint();
    // On a current-thread runtime (as on a one-CPU pod): the flush at exit
    // runs the exporter's requests on the thread that waits for it.
    let mut attache = Attache::run_with_env(
        &config,
        &[
            ("ATTACHE_WORKER_THREADS", "1"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        echo_once(attache.listener("echo"), b"hello, span").await,
        b"hello, span"
    );
    // The default 5 s export interval has not passed: the exit flushes.
    attache.terminate();
    assert!(
        attache
            .wait_exit(std::time::Duration::from_secs(20))
            .await
            .unwrap()
            .success()
    );
    let spans = collector.wait_until(|spans| !spans.is_empty()).await;
    let [span] = spans.as_slice() else {
        panic!("one span expected: {spans:#?}")
    };
    assert_eq!((span.name.as_str(), span.kind), ("tcp echo", SERVER));
    assert_eq!(span.service_name, "attache");
    assert_eq!(span.parent_span_id, "");
    assert_eq!(attribute(span, "network.transport"), "tcp");
    assert_eq!(
        attribute(span, "attache.upstream.endpoint"),
        echo.to_string()
    );
    assert_eq!(attribute(span, "attache.bytes_to_upstream"), "11");
    assert_eq!(attribute(span, "attache.bytes_to_client"), "11");
    assert_eq!(attribute(span, "attache.result"), "ok");
}

#[tokio::test]
async fn each_shared_redis_command_is_a_span_without_its_arguments() {
    let collector = Collector::start().await;
    let config = format!(
        "tracing: {{ otlp_endpoint: \"{}\" }}
listeners:
  - {{ name: cache, listen: \"127.0.0.1:0\", protocol: redis, upstream: redis }}
upstreams:
  redis: {{ endpoints: [\"127.0.0.1:6379\"] }}
",
        collector.endpoint()
    );
    let attache = Attache::run_with_env(&config, &FAST_EXPORT).await.unwrap();
    let mut redis = redis::Client::open(format!("redis://{}/", attache.listener("cache")))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("attache:test:span-secret:{}", std::process::id());
    let _: () = redis::AsyncCommands::set(&mut redis, &key, "text")
        .await
        .unwrap();
    let failed: redis::RedisResult<i64> =
        redis::cmd("INCR").arg(&key).query_async(&mut redis).await;
    assert!(failed.is_err());
    let _: () = redis::AsyncCommands::del(&mut redis, &key).await.unwrap();
    // A transaction runs in a pinned session: its commands are spans too.
    let _: (i64,) = redis::pipe()
        .atomic()
        .incr(&key, 1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis::AsyncCommands::del(&mut redis, &key).await.unwrap();
    let _ = collector
        .wait_until(|spans| {
            ["MULTI", "EXEC"]
                .iter()
                .all(|name| spans.iter().any(|span| span.name == *name))
        })
        .await;
    let spans = collector
        .wait_until(|spans| {
            ["SET", "INCR", "DEL"]
                .iter()
                .all(|name| spans.iter().any(|span| span.name == *name))
        })
        .await;
    for span in spans
        .iter()
        .filter(|span| ["SET", "INCR", "DEL"].contains(&span.name.as_str()))
    {
        assert_eq!(span.kind, CLIENT);
        assert_eq!(attribute(span, "db.system"), "redis");
        assert_eq!(attribute(span, "db.operation.name"), span.name);
        assert_eq!(attribute(span, "db.namespace"), "0");
        assert!(
            span.attributes
                .values()
                .all(|value| !value.contains("span-secret")),
            "arguments never reach a span: {span:#?}"
        );
        let expected_status = if span.name == "INCR" { 2 } else { 0 };
        assert_eq!(span.status_code, expected_status, "{span:#?}");
    }
}

#[tokio::test]
async fn spans_reach_an_https_collector_with_a_client_certificate_and_headers() {
    let pki = Pki::new();
    let collector =
        Collector::start_tls(&pki.cert("server"), &pki.key("server"), Some(&pki.ca())).await;
    let echo = servers::echo().await;
    let endpoint = format!("tracing: {{ otlp_endpoint: {} }}\n", collector.endpoint());
    let config = echo_config(echo, &endpoint);
    let (ca, cert, key) = (pki.ca(), pki.cert("app"), pki.key("app"));
    let attache = Attache::run_with_env(
        &config,
        &[
            FAST_EXPORT[0],
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &key),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cret"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        echo_once(attache.listener("echo"), b"over https").await,
        b"over https"
    );
    let spans = collector.wait_until(|spans| !spans.is_empty()).await;
    assert_eq!(spans[0].name, "tcp echo");
    assert_eq!(attribute(&spans[0], "attache.bytes_to_upstream"), "10");
    let keys = collector.header_values("x-api-key");
    assert!(
        !keys.is_empty() && keys.iter().all(|key| key == "s3cret"),
        "{keys:?}"
    );
}

#[tokio::test]
async fn an_https_collector_with_an_unreadable_ca_file_stops_the_start() {
    let config = "listeners:
  - { name: echo, listen: \"127.0.0.1:0\", protocol: tcp, upstream: echo }
upstreams:
  echo: { endpoints: [\"127.0.0.1:1\"] }
tracing:
  otlp_endpoint: https://collector.example:4318
";
    let error = Attache::run_with_env(
        config,
        &[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.crt")],
    )
    .await
    .err()
    .expect("attache refuses to start");
    assert!(
        error
            .to_string()
            .contains("/nonexistent/ca.crt: cannot read: No such file or directory"),
        "{error}"
    );
}

#[tokio::test]
async fn each_postgres_statement_is_a_span_without_its_text() {
    let collector = Collector::start().await;
    let config = format!(
        "tracing: {{ otlp_endpoint: \"{}\" }}
listeners:
  - {{ name: db, listen: \"127.0.0.1:0\", protocol: postgres, upstream: postgres }}
upstreams:
  postgres: {{ endpoints: [\"127.0.0.1:5432\"] }}
",
        collector.endpoint()
    );
    let attache = Attache::run_with_env(&config, &FAST_EXPORT).await.unwrap();
    let client = attache_integration::postgres::connect(attache.listener("db")).await;
    client
        .simple_query("select 'span-secret' as literal")
        .await
        .unwrap();
    let failed = client.simple_query("select span_secret_column").await;
    assert!(failed.is_err());
    let spans = collector
        .wait_until(|spans| {
            spans.iter().any(|span| span.name == "SELECT test")
                && spans
                    .iter()
                    .any(|span| span.attributes.contains_key("db.response.status_code"))
        })
        .await;
    let selected = spans
        .iter()
        .find(|span| span.name == "SELECT test")
        .unwrap();
    assert_eq!(selected.kind, CLIENT);
    assert_eq!(attribute(selected, "db.system.name"), "postgresql");
    assert_eq!(attribute(selected, "db.namespace"), "test");
    assert_eq!(attribute(selected, "db.operation.name"), "SELECT");
    assert_eq!(selected.status_code, 0);
    let failed = spans
        .iter()
        .find(|span| span.attributes.contains_key("db.response.status_code"))
        .unwrap();
    assert_eq!(attribute(failed, "db.response.status_code"), "42703");
    assert_eq!(failed.status_code, 2, "{failed:#?}");
    for span in spans
        .iter()
        .filter(|span| span.attributes.contains_key("db.system.name"))
    {
        assert!(
            span.attributes
                .values()
                .all(|value| !value.contains("span-secret") && !value.contains("span_secret")),
            "SQL text never reaches a span: {span:#?}"
        );
    }
}

/// attache with a mysql listener to the local MariaDB (its listener
/// settings after `upstream: mariadb`), exporting to `collector`, and a
/// client connected through it.
async fn traced_mysql(collector: &Collector, settings: &str) -> (Attache, mysql_async::Conn) {
    let config = format!(
        "tracing: {{ otlp_endpoint: \"{}\" }}
listeners:
  - {{ name: my, listen: \"127.0.0.1:0\", protocol: mysql, upstream: mariadb{settings} }}
upstreams:
  mariadb: {{ endpoints: [\"127.0.0.1:3306\"] }}
",
        collector.endpoint()
    );
    let attache = Attache::run_with_env(&config, &FAST_EXPORT).await.unwrap();
    let client = attache_integration::mysql::connect(attache.listener("my"), "test").await;
    (attache, client)
}

#[tokio::test]
async fn each_mysql_command_is_a_span_with_its_schema_and_error_code() {
    use mysql_async::prelude::Queryable as _;
    let collector = Collector::start().await;
    let (_attache, mut client) = traced_mysql(&collector, "").await;
    client
        .query_drop("SELECT 'span-secret' AS literal")
        .await
        .unwrap();
    assert!(
        client
            .query_drop("SELECT span_secret_column")
            .await
            .is_err()
    );
    let spans = collector
        .wait_until(|spans| {
            spans.iter().any(|span| {
                span.attributes
                    .get("db.response.status_code")
                    .map(String::as_str)
                    == Some("1054")
            })
        })
        .await;
    let selected = spans
        .iter()
        .find(|span| {
            span.name == "SELECT test" && !span.attributes.contains_key("db.response.status_code")
        })
        .unwrap();
    assert_eq!(selected.kind, CLIENT);
    assert_eq!(attribute(selected, "db.system.name"), "mariadb");
    assert_eq!(attribute(selected, "db.namespace"), "test");
    assert_eq!(attribute(selected, "db.operation.name"), "SELECT");
    assert_eq!(selected.status_code, 0);
    let failed = spans
        .iter()
        .find(|span| span.attributes.contains_key("db.response.status_code"))
        .unwrap();
    assert_eq!(failed.status_code, 2, "{failed:#?}");
    for span in spans
        .iter()
        .filter(|span| span.attributes.contains_key("db.system.name"))
    {
        assert!(
            span.attributes
                .values()
                .all(|value| !value.contains("span-secret") && !value.contains("span_secret")),
            "SQL text never reaches a span: {span:#?}"
        );
    }
}

#[tokio::test]
async fn with_trace_query_text_a_mysql_span_carries_its_command_without_literals() {
    use mysql_async::prelude::Queryable as _;
    let collector = Collector::start().await;
    let (_attache, mut client) =
        traced_mysql(&collector, ", mysql: { trace_query_text: true }").await;
    client
        .query_drop("SELECT 'span-secret' AS a, \"other-secret\", 42 /* note-secret */")
        .await
        .unwrap();
    // A prepared statement's execution carries the statement's text.
    let sum: i64 = client
        .exec_first("SELECT ? + 7 AS prepared_sum, 'prepared-secret'", (1,))
        .await
        .unwrap()
        .map(|(sum, _): (i64, String)| sum)
        .unwrap();
    assert_eq!(sum, 8);
    let spans = collector
        .wait_until(|spans| {
            let has = |wanted: &str| {
                spans.iter().any(|span| {
                    span.attributes
                        .get("db.query.text")
                        .is_some_and(|text| text.contains(wanted))
                })
            };
            has("AS a") && has("prepared_sum")
        })
        .await;
    let executed = spans
        .iter()
        .find(|span| {
            span.attributes.get("db.operation.name").map(String::as_str) == Some("EXECUTE")
        })
        .unwrap();
    assert_eq!(
        attribute(executed, "db.query.text"),
        "SELECT ? + ? AS prepared_sum, ?"
    );
    let selected = spans
        .iter()
        .find(|span| {
            span.attributes
                .get("db.query.text")
                .is_some_and(|text| text.contains("AS a"))
        })
        .unwrap();
    assert_eq!(attribute(selected, "db.query.text"), "SELECT ? AS a, ?, ?");
    for span in &spans {
        assert!(
            span.attributes
                .values()
                .all(|value| !value.contains("secret")),
            "no literal reaches a span: {span:#?}"
        );
    }
}

#[tokio::test]
async fn with_trace_query_text_each_span_carries_its_own_statement_without_literals() {
    let collector = Collector::start().await;
    let config = format!(
        "tracing: {{ otlp_endpoint: \"{}\" }}
listeners:
  - name: db
    listen: \"127.0.0.1:0\"
    protocol: postgres
    upstream: postgres
    postgres: {{ trace_query_text: true }}
upstreams:
  postgres: {{ endpoints: [\"127.0.0.1:5432\"] }}
",
        collector.endpoint()
    );
    let attache = Attache::run_with_env(&config, &FAST_EXPORT).await.unwrap();
    let client = attache_integration::postgres::connect(attache.listener("db")).await;
    // Simple protocol, then extended statements pipelined (tokio-postgres
    // sends both before reading either answer).
    client
        .simple_query("select 'simple-secret' as literal, 42 -- a 'comment-secret'")
        .await
        .unwrap();
    let first = client.query("select $1::text || 'first-secret'", &[&"p"]);
    let second = client.query("select $1::int + 1000 as second", &[&1]);
    let (first, second) = tokio::join!(first, second);
    first.unwrap();
    second.unwrap();
    let expected = [
        "select ? as literal, ?",
        "select $1::text || ?",
        "select $1::int + ? as second",
    ];
    let spans = collector
        .wait_until(|spans| {
            expected.iter().all(|text| {
                spans.iter().any(|span| {
                    span.attributes.get("db.query.text").map(String::as_str) == Some(*text)
                })
            })
        })
        .await;
    for span in spans
        .iter()
        .filter(|span| span.attributes.contains_key("db.system.name"))
    {
        assert!(
            span.attributes
                .values()
                .all(|value| !value.contains("secret")
                    && !value.contains("42")
                    && !value.contains("1000")),
            "no literal reaches a span: {span:#?}"
        );
    }
}
