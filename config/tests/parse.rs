//! Parsing and validation through the public API: defaults, interpolation,
//! and every kind of problem reported with its key path and line.

use std::time::Duration;

use attache_config::{Balance, ConfigError, HttpVersion, Probe, Problem, RouteAction, parse};

fn problems(text: &str) -> Vec<Problem> {
    match parse(text, "test.yaml", &|_| None) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

fn rendered(text: &str) -> Vec<String> {
    problems(text).iter().map(ToString::to_string).collect()
}

const VALID: &str = "\
listeners:
  - listen: 127.0.0.1:13306
    protocol: tcp
    upstream: db
upstreams:
  db:
    endpoints: [\"${DB_HOST:-mariadb}:${DB_PORT:-3306}\", \"[::1]:3307\"]
    balance: least_connections
";

#[test]
fn a_minimal_config_gets_documented_defaults() {
    let config = parse(VALID, "test.yaml", &|name| {
        (name == "DB_PORT").then(|| "4406".into())
    })
    .unwrap();
    let listener = &config.listeners[0];
    assert_eq!(
        listener.name, "db",
        "a listener is named after its upstream by default"
    );
    assert_eq!(listener.max_connections, 4096);
    assert_eq!(listener.idle_timeout, Duration::from_secs(3600));
    let upstream = config.upstream("db").unwrap();
    assert_eq!(upstream.endpoints[0].to_string(), "mariadb:4406");
    assert_eq!(upstream.endpoints[1].to_string(), "[::1]:3307");
    assert_eq!(upstream.balance, Balance::LeastConnections);
    assert_eq!(upstream.connect_timeout, Duration::from_secs(5));
    assert_eq!(config.admin.listen, Some("127.0.0.1:9901".parse().unwrap()));
    assert_eq!(config.drain.grace_period, Duration::from_secs(25));
}

#[test]
fn every_validation_problem_is_reported_at_once_with_path_and_line() {
    let text = "\
listeners:
  - name: a
    listen: 127.0.0.1:7000
    protocol: tcp
    upstream: db
    idle_timeout: 0s
  - name: b
    listen: 127.0.0.1:7000
    protocol: tcp
    upstream: nope
  - name: b
    listen: 0.0.0.0:7001
    protocol: tcp
    upstream: db
    max_connections: 0
upstreams:
  db:
    endpoints: []
    connect_timeout: 0ms
drain:
  grace_period: 0s
";
    assert_eq!(
        rendered(text),
        vec![
            "listeners[0].idle_timeout: must be greater than zero (line 6)",
            "listeners[1].listen: 127.0.0.1:7000 is already the address of listeners[0] (line 8)",
            "listeners[1].upstream: no upstream named \"nope\" (upstreams: db) (line 10)",
            "listeners[2].name: listener name \"b\" is already used by listeners[1]; give each listener its own `name` (line 11)",
            "listeners[2].listen: 0.0.0.0:7001 is not a loopback address and this listener is plaintext; set `unsafe_plaintext: true` on the listener to accept plaintext from the network (line 12)",
            "listeners[2].max_connections: must be greater than zero (line 15)",
            "upstreams.db.endpoints: an upstream needs at least one endpoint (line 18)",
            "upstreams.db.connect_timeout: must be greater than zero (line 19)",
            "drain.grace_period: must be greater than zero (line 21)",
        ]
    );
}

#[test]
fn malformed_values_name_their_key_and_line_and_are_not_reported_twice() {
    let text = "\
listeners:
  - listen: localhost:80
    protocol: tcp
    upstream: db
    idle_timeout: 10
upstreams:
  db:
    endpoints: [\"db\"]
";
    assert_eq!(
        rendered(text),
        vec![
            "listeners[0].listen: \"localhost:80\" is not an IP:PORT address (IPv6 as [ADDR]:PORT; names are not allowed here) (line 2)",
            "listeners[0].idle_timeout: \"10\" is not a duration such as 250ms, 10s or 1h (time unit needed, for example 10sec or 10ms) (line 5)",
            "upstreams.db.endpoints[0]: \"db\" is not HOST:PORT (IPv6 as [ADDR]:PORT) (line 8)",
        ]
    );
}

#[test]
fn unknown_keys_and_syntax_errors_carry_their_line() {
    let unknown = problems(
        "listeners:\n  - listen: 127.0.0.1:1\n    protocol: tcp\n    upstream: db\n    retries: 3\n",
    );
    assert_eq!(unknown.len(), 1);
    assert_eq!(unknown[0].line, Some(5));
    assert_eq!(
        unknown[0].to_string(),
        "listeners[0].retries: unknown field `retries`, expected one of name, listen, protocol, upstream, \
         max_connections, idle_timeout, keep_accepting_while_draining, unsafe_plaintext, \
         tls, proxy_protocol, http, redis, postgres, mysql (line 5)"
    );

    let syntax = problems("listeners: [\n");
    assert_eq!(syntax[0].line, Some(1));

    let protocol =
        problems("listeners:\n  - listen: 127.0.0.1:1\n    protocol: smtp\n    upstream: db\n");
    assert_eq!(protocol[0].line, Some(3));
    assert!(protocol[0].message.contains("smtp"), "{}", protocol[0]);
    assert_eq!(protocol[0].path, "listeners[0].protocol");
}

#[test]
fn shape_and_type_errors_name_their_key_and_its_own_line() {
    let rendered = |text: &str| problems(text)[0].to_string();
    assert_eq!(
        rendered(
            "listeners:\n  - name: a\n    listen: 127.0.0.1:1\n    protocol: tcp\n    upstream: db\n    max_connections: lots\n"
        ),
        "listeners[0].max_connections: expected a whole number (line 6)"
    );
    assert_eq!(
        rendered("upstreams:\n  db:\n    endpoints: \"127.0.0.1:1\"\n"),
        "upstreams.db.endpoints: expected a list (line 3)"
    );
    // Missing: the map that lacks it, at its own line (not the last key's).
    assert_eq!(
        rendered("listeners:\n  - name: a\n    protocol: tcp\n    upstream: db\n"),
        "listeners[0]: missing field `listen` (line 2)"
    );
}

#[test]
fn unset_variables_fail_before_parsing() {
    let rendered = rendered("listeners:\n  - listen: ${LISTEN}\n");
    assert_eq!(
        rendered,
        vec![
            "environment variable LISTEN is not set (use `${LISTEN:-default}` to give a default) (line 2)"
        ]
    );
}

#[test]
fn the_error_names_the_source_and_counts_problems() {
    let error = parse("listeners: []\n", "/etc/attache/config.yaml", &|_| None).unwrap_err();
    assert_eq!(
        error.to_string(),
        "/etc/attache/config.yaml: 1 problem\n  listeners: at least one listener is required"
    );
}

#[test]
fn tls_listener_and_upstream_parse_with_defaults() {
    let text = "\
listeners:
  - name: front
    listen: 0.0.0.0:8443
    protocol: tcp
    upstream: app
    tls:
      cert: /etc/attache/tls.crt
      key: /etc/attache/tls.key
      client_ca: /etc/attache/ca.crt
      min_version: 1.3
      allow:
        uris: [\"spiffe://cluster.local/ns/*/sa/web\", \"spiffe://cluster.local/ns/jobs/*\"]
upstreams:
  app:
    endpoints: [\"127.0.0.1:8080\"]
    tls:
      ca: /etc/attache/upstream-ca.crt
      cert: /etc/attache/client.crt
      key: /etc/attache/client.key
      server_name: app.internal
";
    let config = parse(text, "test.yaml", &|_| None).unwrap();
    let tls = config.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.client_auth, attache_config::ClientAuth::Required);
    assert_eq!(tls.min_version, attache_config::TlsVersion::Tls13);
    assert_eq!(tls.allow.uris.len(), 2);
    let upstream_tls = config.upstreams[0].tls.as_ref().unwrap();
    assert_eq!(upstream_tls.server_name.as_deref(), Some("app.internal"));
    assert_eq!(upstream_tls.min_version, attache_config::TlsVersion::Tls12);
}

#[test]
fn tls_problems_are_reported_with_path_and_line() {
    let text = "\
listeners:
  - name: front
    listen: 127.0.0.1:8443
    protocol: tcp
    upstream: app
    tls:
      cert: tls.crt
      key: tls.key
      min_version: \"1.1\"
      allow:
        uris: [\"spiffe://cluster.local/ns/team-*/sa/web\"]
upstreams:
  app:
    endpoints: [\"127.0.0.1:8080\"]
    tls:
      ca: ca.crt
      cert: client.crt
";
    assert_eq!(
        rendered(text),
        vec![
            "listeners[0].tls.client_ca: required to verify client certificates (or set `client_auth: none` to accept clients without one) (line 7)",
            "listeners[0].tls.min_version: \"1.1\" is not a TLS version: use \"1.2\" or \"1.3\" (line 9)",
            "listeners[0].tls.allow.uris[0]: \"spiffe://cluster.local/ns/team-*/sa/web\" is not a URI pattern: `scheme://...`, where `*` stands for one whole path segment (line 11)",
            "upstreams.app.tls: a client certificate needs both `cert` and `key` (line 16)",
        ]
    );
}

#[test]
fn resilience_sections_parse_and_default() {
    let text = "\
listeners:
  - listen: 127.0.0.1:15432
    protocol: tcp
    upstream: pg
upstreams:
  pg:
    endpoints: [\"127.0.0.1:5432\"]
    warm_pool: { size: 4 }
    limits: { max_pending: 10 }
    retry: { attempts: 5, deadline: 3s }
    health_check: { probe: postgres }
";
    let config = parse(text, "test.yaml", &|_| None).unwrap();
    let upstream = config.upstream("pg").unwrap();
    let warm = upstream.warm_pool.as_ref().unwrap();
    assert_eq!((warm.size, warm.max_age), (4, Duration::from_secs(30)));
    assert_eq!(upstream.limits.max_pending, 10);
    assert_eq!(upstream.limits.max_connections, 4096);
    assert_eq!(upstream.limits.queue_timeout, Duration::from_secs(5));
    assert_eq!(upstream.retry.attempts, 5);
    assert_eq!(upstream.retry.deadline, Duration::from_secs(3));
    assert_eq!(upstream.retry.budget_percent, 20);
    assert_eq!(upstream.breaker.consecutive_failures, 5);
    assert_eq!(upstream.breaker.max_ejected_percent, 50);
    let check = upstream.health_check.as_ref().unwrap();
    assert_eq!(check.probe, Probe::Postgres);
    assert_eq!(
        (
            check.interval,
            check.timeout,
            check.healthy_threshold,
            check.unhealthy_threshold
        ),
        (Duration::from_secs(5), Duration::from_secs(2), 2, 3)
    );

    let without = parse(VALID, "test.yaml", &|_| None).unwrap();
    let upstream = without.upstream("db").unwrap();
    assert!(upstream.warm_pool.is_none() && upstream.health_check.is_none());
}

#[test]
fn resilience_problems_are_reported_with_path_and_line() {
    let text = "\
listeners:
  - listen: 127.0.0.1:15432
    protocol: tcp
    upstream: pg
upstreams:
  pg:
    endpoints: [\"127.0.0.1:5432\"]
    tls: { ca: ca.crt }
    warm_pool:
      size: 0
      max_age: soon
    limits: { max_connections: 0 }
    retry:
      backoff: 2s
      max_backoff: 1s
    breaker: { max_ejected_percent: 150 }
    health_check:
      probe: postgres
      interval: 1s
      timeout: 5s
      user: app
";
    assert_eq!(
        rendered(text),
        vec![
            "upstreams.pg.warm_pool.size: must be greater than zero (line 10)",
            "upstreams.pg.warm_pool.max_age: \"soon\" is not a duration such as 250ms, 10s or 1h (expected number at 0) (line 11)",
            "upstreams.pg.limits.max_connections: must be greater than zero (line 12)",
            "upstreams.pg.retry.max_backoff: 1s is below retry.backoff (2s) (line 15)",
            "upstreams.pg.breaker.max_ejected_percent: is a percentage: 0 to 100 (line 16)",
            "upstreams.pg.health_check.probe: the postgres probe speaks the server's plaintext greeting, but this upstream originates TLS (MariaDB and Postgres negotiate TLS inside their protocol); use `probe: tcp` (line 18)",
            "upstreams.pg.health_check.timeout: 5s is longer than health_check.interval (1s) (line 20)",
            "upstreams.pg.health_check.user: only the mariadb probe logs in; the postgres probe has no use for a user (line 21)",
        ]
    );
}

#[test]
fn http_listeners_parse_routes_and_get_documented_defaults() {
    let text = "\
listeners:
  - name: front
    listen: 127.0.0.1:8080
    protocol: http
    upstream: app
    tls: { cert: tls.crt, key: tls.key, client_auth: none }
    http:
      per_try_timeout: 2s
      peer_identity_header: X-Client-Id
      routes:
        - match: { path_prefix: /health }
          direct_response: { status: 200, body: \"ok\\n\" }
        - name: api
          match: { host: \"*.Example.com\", method: [get, PUT], headers: { X-Canary: \"1\" } }
          upstream: api
  - name: routes-only
    listen: 127.0.0.1:8081
    protocol: http
    http:
      routes:
        - upstream: api
upstreams:
  app: { endpoints: [\"127.0.0.1:9000\"] }
  api: { endpoints: [\"127.0.0.1:9001\"], http_version: http2, balance: peak_ewma }
tracing: { otlp_endpoint: \"http://collector:4318/\", sample_ratio: 0.25 }
";
    let config = parse(text, "test.yaml", &|_| None).unwrap();
    let front = &config.listeners[0];
    let attache_config::ListenerKind::Http(http) = &front.kind else {
        panic!("an http listener: {:?}", front.kind)
    };
    assert_eq!(http.request_timeout, Duration::from_secs(15));
    assert_eq!(http.per_try_timeout, Some(Duration::from_secs(2)));
    assert_eq!(http.header_read_timeout, Duration::from_secs(10));
    assert_eq!((http.max_header_bytes, http.max_headers), (65536, 100));
    assert_eq!(http.retry_statuses, vec![502, 503, 504]);
    assert!(!http.retry_non_idempotent);
    assert_eq!(http.retry_buffer_bytes, 65536);
    assert_eq!(http.peer_identity_header.as_deref(), Some("x-client-id"));
    assert!(http.access_log.enabled);
    assert!(
        http.access_log
            .redact_headers
            .contains(&"authorization".to_owned())
    );
    assert!(
        http.access_log
            .redact_query
            .contains(&"password".to_owned())
    );
    assert_eq!(front.tls.as_ref().unwrap().alpn, vec!["h2", "http/1.1"]);
    assert_eq!(http.routes[0].name, "direct");
    assert_eq!(
        http.routes[0].action,
        RouteAction::Direct {
            status: 200,
            body: "ok\n".into()
        }
    );
    let api = &http.routes[1];
    assert_eq!(api.name, "api");
    assert_eq!(api.matches.host.as_deref(), Some("*.example.com"));
    assert_eq!(api.matches.methods, vec!["GET", "PUT"]);
    assert_eq!(api.matches.headers, vec![("x-canary".into(), "1".into())]);
    assert_eq!(api.action, RouteAction::Upstream("api".into()));
    assert_eq!(config.listeners[1].upstream, None);
    let upstream = config.upstream("api").unwrap();
    assert_eq!(upstream.http_version, HttpVersion::Http2);
    assert_eq!(upstream.balance, Balance::PeakEwma);
    assert_eq!(
        (upstream.limits.max_requests, upstream.limits.max_retries),
        (1024, 16)
    );
    assert_eq!(
        config.tracing.otlp_endpoint.as_deref(),
        Some("http://collector:4318")
    );
    assert_eq!(config.tracing.sample_ratio, 0.25);
    assert_eq!(config.tracing.service_name, "attache");
}

#[test]
fn http_problems_are_reported_with_path_and_line() {
    let text = "\
listeners:
  - name: front
    listen: 127.0.0.1:8080
    protocol: http
    upstream: app
    http:
      max_header_bytes: 1024
      retry_statuses: [503, 700]
      routes:
        - match: { path_prefix: api }
        - upstream: nowhere
        - direct_response: { status: 99 }
        - upstream: app
          direct_response: { status: 200 }
  - name: plain
    listen: 127.0.0.1:8081
    protocol: tcp
    upstream: app
    http: { request_timeout: 1s }
  - name: nothing
    listen: 127.0.0.1:8082
    protocol: http
upstreams:
  app:
    endpoints: [\"127.0.0.1:9000\"]
    warm_pool: { size: 1 }
tracing: { otlp_endpoint: \"grpc://collector:4317\", sample_ratio: 2 }
";
    assert_eq!(
        rendered(text),
        vec![
            "listeners[0].http.max_header_bytes: 1024 is below the smallest supported limit, 8192 (line 7)",
            "listeners[0].http.retry_statuses: 700 is not an HTTP status (line 8)",
            "listeners[0].http.routes[0]: a route needs exactly one of `upstream` and `direct_response` (line 10)",
            "listeners[0].http.routes[0].match.path_prefix: \"api\" must start with `/` (line 10)",
            "listeners[0].http.routes[1].upstream: no upstream named \"nowhere\" (upstreams: app) (line 11)",
            "listeners[0].http.routes[2].direct_response.status: 99 is not a final HTTP status (200 to 599) (line 12)",
            "listeners[0].http.routes[3]: a route needs exactly one of `upstream` and `direct_response` (line 13)",
            "listeners[1].http: only a listener with `protocol: http` takes an `http` section (line 19)",
            "listeners[2].upstream: required: the upstream that connections (on an http listener: unrouted requests) go to (line 20)",
            "upstreams.app.warm_pool: http listener \"front\" sends requests here over its own keep-alive pool; a warm pool serves tcp listeners only (line 26)",
            "tracing.sample_ratio: 2 is not a ratio between 0 and 1 (line 27)",
            "tracing.otlp_endpoint: \"grpc://collector:4317\" is not an http:// or https:// URL (OTLP/HTTP) (line 27)",
        ]
    );
}

#[test]
fn a_proxy_protocol_upstream_serves_tcp_listeners_without_a_warm_pool() {
    let problems = problems(
        "listeners:\n  - {listen: 127.0.0.1:1, protocol: http, upstream: app}\n\
         \x20 - {listen: 127.0.0.1:2, protocol: tcp, upstream: warm}\n\
         upstreams:\n  app: {endpoints: [\"127.0.0.1:9\"], proxy_protocol: v2}\n\
         \x20 warm: {endpoints: [\"127.0.0.1:9\"], proxy_protocol: v1, warm_pool: {size: 2}}\n",
    );
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 2, "{text:?}");
    assert!(
        text.iter().any(
            |problem| problem.starts_with("upstreams.app.proxy_protocol")
                && problem.contains("tcp listeners only")
        ),
        "{text:?}"
    );
    assert!(
        text.iter().any(
            |problem| problem.starts_with("upstreams.warm.proxy_protocol")
                && problem.contains("warm pool")
        ),
        "{text:?}"
    );
}

#[test]
fn a_postgres_listener_starts_upstream_tls_in_band_and_keeps_that_upstream_to_itself() {
    let plain = "listeners:\n  - {listen: 127.0.0.1:6432, protocol: postgres, upstream: db}\nupstreams:\n  db: {endpoints: [\"127.0.0.1:5432\"]}\n";
    let config = parse(plain, "test.yaml", &|_| None).unwrap();
    assert_eq!(
        config.listeners[0].kind,
        attache_config::ListenerKind::Postgres(attache_config::PostgresListener::default())
    );
    assert_eq!(config.postgres_start_tls("db"), None);
    let with_tls = "listeners:\n  - {listen: 127.0.0.1:6432, protocol: postgres, upstream: db, postgres: {server_sslmode: prefer}}\nupstreams:\n  db: {endpoints: [\"127.0.0.1:5432\"], tls: {ca: ca.crt}}\n";
    let config = parse(with_tls, "test.yaml", &|_| None).unwrap();
    assert_eq!(
        config.postgres_start_tls("db"),
        Some(attache_config::ServerSslMode::Prefer)
    );
    // The same upstream for a tcp listener would need TLS from byte one;
    // a passthrough listener would relay SCRAM over a channel its client
    // never sees.
    let shared = "listeners:\n  - {listen: 127.0.0.1:6432, protocol: postgres, upstream: db}\n  - {name: raw, listen: 127.0.0.1:6433, protocol: tcp, upstream: db}\n  - {name: relay, listen: 127.0.0.1:6434, protocol: postgres, upstream: db, postgres: {auth: passthrough, pool_mode: session}}\nupstreams:\n  db: {endpoints: [\"127.0.0.1:5432\"], tls: {ca: ca.crt}}\n";
    let found: Vec<String> = problems(shared)
        .iter()
        .map(|problem| problem.path.clone())
        .collect();
    assert_eq!(
        found,
        ["listeners[1].upstream", "upstreams.db.tls"],
        "{found:?}"
    );
}

#[test]
fn a_postgres_section_is_read_and_checked_with_its_lines() {
    let text = "listeners:\n  - listen: 127.0.0.1:6432\n    protocol: postgres\n    upstream: db\n    postgres:\n      pool_mode: session\n      pool_size: 5\n      min_idle: 2\n      query_timeout: 2s\n      server_user: app\n      server_password: s3cret\nupstreams:\n  db: {endpoints: [\"127.0.0.1:5432\"]}\n";
    let config = parse(text, "test.yaml", &|_| None).unwrap();
    let attache_config::ListenerKind::Postgres(postgres) = &config.listeners[0].kind else {
        panic!("not postgres");
    };
    assert_eq!(postgres.pool.pool_mode, attache_config::PoolMode::Session);
    assert_eq!(postgres.pool.pool_size, 5);
    assert_eq!(postgres.pool.min_idle, 2);
    assert_eq!(
        postgres.pool.query_timeout,
        Some(std::time::Duration::from_secs(2))
    );
    assert_eq!(postgres.pool.server_user.as_deref(), Some("app"));
    // The password never shows in the config attache reports.
    let shown = serde_json::to_string(&config).unwrap();
    assert!(!shown.contains("s3cret"), "{shown}");

    let bad = "listeners:\n  - listen: 127.0.0.1:6432\n    protocol: postgres\n    upstream: db\n    postgres:\n      auth: passthrough\n      pool_size: 0\n      query_timeout: soon\n  - name: plain\n    listen: 127.0.0.1:6433\n    protocol: tcp\n    upstream: db\n    postgres: {pool_size: 3}\nupstreams:\n  db: {endpoints: [\"127.0.0.1:5432\"]}\n";
    let found = located(bad);
    assert_eq!(
        found,
        [
            "listeners[0].postgres.pool_mode (line 6)",
            "listeners[0].postgres.pool_size (line 7)",
            "listeners[0].postgres.query_timeout (line 8)",
            "listeners[1].postgres (line 13)",
        ]
    );
    let users = "listeners:\n  - listen: 127.0.0.1:6432\n    protocol: postgres\n    upstream: db\n    postgres:\n      users:\n        good: pass\n        bad: \"SCRAM-SHA-256$4096:c2FsdA==$short:key\"\nupstreams:\n  db: {endpoints: [\"127.0.0.1:5432\"]}\n";
    let found = located(users);
    assert_eq!(found, ["listeners[0].postgres.users.bad (line 8)"]);

    // A user with settings of its own; a bad one is named with its line.
    let settings = "listeners:\n  - listen: 127.0.0.1:6432\n    protocol: postgres\n    upstream: db\n    postgres:\n      query_timeout: 5s\n      users:\n        batch: {password: pass, query_timeout: 10m}\n        app: pass\nupstreams:\n  db: {endpoints: [\"127.0.0.1:5432\"]}\n";
    let config = parse(settings, "test", &|_| None).unwrap();
    let attache_config::ListenerKind::Postgres(postgres) = &config.listeners[0].kind else {
        panic!("a postgres listener");
    };
    assert_eq!(
        postgres.users["batch"].query_timeout,
        Some(Duration::from_secs(600))
    );
    assert_eq!(postgres.users["app"].query_timeout, None);
    let shown = serde_json::to_string(&config).unwrap();
    assert!(!shown.contains("pass\""), "{shown}");
    let found = located(&settings.replace("10m", "later"));
    assert_eq!(found, ["listeners[0].postgres.users.batch (line 8)"]);

    // A TLS postgres listener offers ALPN `postgresql` (direct TLS needs it).
    let tls = "listeners:\n  - listen: 127.0.0.1:6432\n    protocol: postgres\n    upstream: db\n    tls: {cert: c.pem, key: k.pem, client_auth: none}\nupstreams:\n  db: {endpoints: [\"127.0.0.1:5432\"]}\n";
    let config = parse(tls, "test", &|_| None).unwrap();
    assert_eq!(
        config.listeners[0].tls.as_ref().unwrap().alpn,
        ["postgresql"]
    );
    let found = located(&tls.replace("none}", "none, alpn: [h2]}"));
    assert_eq!(found, ["listeners[0].tls.alpn (line 5)"]);
}

#[test]
fn a_mysql_section_shares_the_pool_keys_and_is_checked_with_its_lines() {
    let text = "listeners:\n  - listen: 127.0.0.1:3307\n    protocol: mysql\n    upstream: db\n    mysql:\n      pool_size: 5\n      min_idle: 1\n      query_timeout: 2s\n      max_prepared_statements: 50\n      server_user: app\n      server_password: s3cret\n      users:\n        web: hunter2\nupstreams:\n  db: {endpoints: [\"127.0.0.1:3306\"]}\n";
    let config = parse(text, "test.yaml", &|_| None).unwrap();
    let attache_config::ListenerKind::Mysql(mysql) = &config.listeners[0].kind else {
        panic!("not mysql");
    };
    assert_eq!(mysql.pool.pool_mode, attache_config::PoolMode::Transaction);
    assert_eq!(mysql.pool.pool_size, 5);
    assert_eq!(mysql.pool.min_idle, 1);
    assert_eq!(mysql.pool.query_timeout, Some(Duration::from_secs(2)));
    assert_eq!(mysql.pool.max_prepared_statements, 50);
    assert_eq!(mysql.users["web"], "hunter2");
    // Neither the server's password nor a user's shows in the config
    // attache reports; the user's name does.
    let shown = serde_json::to_string(&config).unwrap();
    assert!(
        !shown.contains("s3cret") && !shown.contains("hunter2"),
        "{shown}"
    );
    assert!(shown.contains("\"web\":\"<redacted>\""), "{shown}");

    let bad = "listeners:\n  - listen: 127.0.0.1:3307\n    protocol: mysql\n    upstream: db\n    tls: {cert: c.pem, key: k.pem, client_auth: none}\n    mysql:\n      auth: passthrough\n      users: {web: x}\n      queue_timeout: 0s\n      max_prepared_statements: 0\n  - name: plain\n    listen: 127.0.0.1:3308\n    protocol: tcp\n    upstream: db\n    mysql: {pool_size: 3}\nupstreams:\n  db:\n    endpoints: [\"127.0.0.1:3306\"]\n    tls: {ca: ca.crt}\n    warm_pool: {size: 2}\n";
    let found = located(bad);
    assert_eq!(
        found,
        [
            "listeners[0].tls (line 5)",
            "listeners[0].mysql.pool_mode (line 7)",
            "listeners[0].mysql.users (line 8)",
            "listeners[0].mysql.queue_timeout (line 9)",
            "listeners[0].mysql.max_prepared_statements (line 10)",
            "listeners[1].upstream (line 14)",
            "listeners[1].mysql (line 15)",
            "upstreams.db.tls (line 19)",
            "upstreams.db.warm_pool (line 20)",
        ]
    );

    // The replayed variables: `names` and variable names, lowercased.
    let replayed = text.replace(
        "      users:\n",
        "      replayed_variables: [names, Time_Zone, \"sql mode\"]\n      users:\n",
    );
    let found = located(&replayed);
    assert_eq!(
        found,
        ["listeners[0].mysql.replayed_variables[2] (line 12)"]
    );
    let config = parse(
        &replayed.replace(", \"sql mode\"", ""),
        "test.yaml",
        &|_| None,
    )
    .unwrap();
    let attache_config::ListenerKind::Mysql(mysql) = &config.listeners[0].kind else {
        panic!("not mysql");
    };
    assert_eq!(mysql.replayed_variables, ["names", "time_zone"]);
}

/// Each problem of `text` as `path (line N)`.
fn located(text: &str) -> Vec<String> {
    problems(text)
        .iter()
        .map(|problem| format!("{} (line {})", problem.path, problem.line.unwrap_or(0)))
        .collect()
}

#[test]
fn every_shape_problem_in_a_file_is_reported_at_once() {
    let text = "listeners:\n  - name: a\n    listen: 127.0.0.1:7000\n    protocol: tcp\n    upstream: db\n    max_connections: lots\n    oops: 1\n  - {name: b, listen: 127.0.0.1:7001, protocol: tcp, upstream: db, other: 2}\nupstreams:\n  db:\n    endpoints: \"127.0.0.1:1\"\n    nonsense: true\n";
    let found = located(text);
    assert_eq!(
        found,
        [
            "listeners[0].max_connections (line 6)",
            "listeners[0].oops (line 7)",
            "listeners[1].other (line 8)",
            "upstreams.db.endpoints (line 11)",
            "upstreams.db.nonsense (line 12)",
        ]
    );
    // A genuinely missing key is reported too; one set aside is not.
    let missing = problems("listeners:\n  - {name: a, protocol: tcp, upstream: db, oops: 1}\n");
    let said: Vec<&str> = missing
        .iter()
        .map(|problem| problem.message.as_str())
        .collect();
    assert_eq!(missing.len(), 2, "{said:?}");
    assert!(
        said.iter()
            .any(|message| message.starts_with("unknown field `oops`"))
    );
    assert!(
        said.iter()
            .any(|message| message.starts_with("missing field `listen`"))
    );
    let set_aside = problems("upstreams:\n  db:\n    endpoints: \"127.0.0.1:1\"\n");
    assert_eq!(set_aside.len(), 1, "{set_aside:?}");
}

#[test]
fn a_redis_cache_section_parses_sizes_and_defaults() {
    let text = "\
listeners:
  - listen: 127.0.0.1:6380
    protocol: redis
    upstream: redis
    redis:
      cache:
        max_memory: 64MiB
        max_entry_bytes: 65536
        keys: [\"user:\", \"session:*:profile\"]
upstreams:
  redis: {endpoints: [\"127.0.0.1:6379\"]}
";
    let config = parse(text, "test.yaml", &|_| None).unwrap();
    let attache_config::ListenerKind::Redis(redis) = &config.listeners[0].kind else {
        panic!("a redis listener");
    };
    let cache = redis.cache.as_ref().expect("a cache");
    assert_eq!(cache.max_memory, 64 * 1024 * 1024);
    assert_eq!(cache.max_entry_bytes, 65536);
    assert_eq!(cache.max_ttl, Duration::from_secs(60));
    assert_eq!(cache.keys, ["user:", "session:*:profile"]);
    assert_eq!(cache.commands.len(), 11);
    assert!(cache.commands.contains(&"MGET".to_owned()));
}

#[test]
fn redis_cache_problems_name_their_key_and_line() {
    let text = "\
listeners:
  - listen: 127.0.0.1:6380
    protocol: redis
    upstream: redis
    redis:
      cache:
        max_memory: 64 parsecs
        keys: []
        commands: [get, set]
upstreams:
  redis: {endpoints: [\"127.0.0.1:6379\"]}
";
    let found = rendered(text);
    let expected = [
        (
            "listeners[0].redis.cache.max_memory: \"64 parsecs\" is not a size",
            "(line 7)",
        ),
        (
            "listeners[0].redis.cache.keys: list the key prefixes",
            "(line 8)",
        ),
        (
            "listeners[0].redis.cache.commands[1]: \"SET\" cannot be cached",
            "(line 9)",
        ),
    ];
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for (start, line) in expected {
        assert!(
            found
                .iter()
                .any(|problem| problem.starts_with(start) && problem.ends_with(line)),
            "{start} .. {line} not in {found:#?}"
        );
    }
}
