//! Checks across a whole [`Config`]: references, duplicates, zero values and
//! plaintext exposure. Runs on configs read from YAML (with lines) and on
//! configs built in code by the CLI one-liners (without).

use std::collections::{HashMap, HashSet};

use crate::error::Problem;
use crate::model::{
    ClientAuth, Config, DatabaseAuth, HttpListener, IdentityAllowList, ListenerKind, ListenerTls,
    PoolMode, Probe, Protocol, RouteAction, Upstream,
};

/// Where each key path was written, and which paths already have a problem.
#[derive(Debug, Default)]
pub struct SourceMap {
    lines: HashMap<String, u64>,
    reported: HashSet<String>,
}

impl SourceMap {
    pub(crate) fn new(lines: HashMap<String, u64>, reported: HashSet<String>) -> Self {
        Self { lines, reported }
    }

    /// The line `path` was written on; for a key that was left out, the
    /// first line written inside it, or else in its nearest written section.
    fn line(&self, path: &str) -> Option<u64> {
        let mut section = path;
        loop {
            if let Some(line) = self.lines.get(section) {
                return Some(*line);
            }
            let prefix = format!("{section}.");
            let inside = self
                .lines
                .iter()
                .filter(|(noted, _)| noted.starts_with(&prefix))
                .map(|(_, line)| *line)
                .min();
            if inside.is_some() {
                return inside;
            }
            section = section.rsplit_once('.')?.0;
        }
    }

    /// Whether a problem was already reported at `path` or below it.
    fn reported_under(&self, path: &str) -> bool {
        self.reported.iter().any(|reported| {
            reported
                .strip_prefix(path)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }
}

/// Returns every problem in `config`; empty when it is valid.
pub fn validate(config: &Config, source_map: &SourceMap) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut report = |path: String, message: String| {
        if !source_map.reported_under(&path) {
            problems.push(Problem::new(path.clone(), source_map.line(&path), message));
        }
    };

    if config.listeners.is_empty() {
        report(
            "listeners".into(),
            "at least one listener is required".into(),
        );
    }
    let tracing = &config.tracing;
    if !(0.0..=1.0).contains(&tracing.sample_ratio) {
        report(
            "tracing.sample_ratio".into(),
            format!("{} is not a ratio between 0 and 1", tracing.sample_ratio),
        );
    }
    if let Some(endpoint) = &tracing.otlp_endpoint
        && !endpoint.starts_with("http://")
        && !endpoint.starts_with("https://")
    {
        report(
            "tracing.otlp_endpoint".into(),
            format!("{endpoint:?} is not an http:// or https:// URL (OTLP/HTTP)"),
        );
    }
    if config.drain.grace_period.is_zero() {
        report(
            "drain.grace_period".into(),
            "must be greater than zero".into(),
        );
    }

    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut addresses: HashMap<std::net::SocketAddr, usize> = HashMap::new();
    for (index, listener) in config.listeners.iter().enumerate() {
        let path = format!("listeners[{index}]");
        if let Some(first) = names.insert(&listener.name, index) {
            report(
                format!("{path}.name"),
                format!(
                    "listener name {:?} is already used by listeners[{first}]; give each listener its own `name`",
                    listener.name
                ),
            );
        }
        if listener.listen.port() != 0
            && let Some(first) = addresses.insert(listener.listen, index)
        {
            report(
                format!("{path}.listen"),
                format!(
                    "{} is already the address of listeners[{first}]",
                    listener.listen
                ),
            );
        }
        match (&listener.upstream, &listener.kind) {
            (Some(upstream), _) => check_reference(config, format!("{path}.upstream"), upstream, &mut report),
            (None, ListenerKind::Http(http)) if !http.routes.is_empty() => {}
            (None, _) => report(
                format!("{path}.upstream"),
                "required: the upstream that connections (on an http listener: unrouted requests) go to"
                    .into(),
            ),
        }
        if let ListenerKind::Redis(redis) = &listener.kind {
            if redis.shared_connections == 0 {
                report(
                    format!("{path}.redis.shared_connections"),
                    "must be greater than zero".into(),
                );
            }
            if redis.username.is_some() && redis.password.is_none() {
                report(
                    format!("{path}.redis.username"),
                    "needs `password` as well".into(),
                );
            }
            if redis.upstream_username.is_some() && redis.upstream_password.is_none() {
                report(
                    format!("{path}.redis.upstream_username"),
                    "needs `upstream_password` as well".into(),
                );
            }
            if redis.max_pinned == 0 {
                report(
                    format!("{path}.redis.max_pinned"),
                    "must be greater than zero".into(),
                );
            }
            if redis.command_timeout.is_zero() {
                report(
                    format!("{path}.redis.command_timeout"),
                    "must be greater than zero".into(),
                );
            }
            if let Some(cache) = &redis.cache {
                validate_cache(cache, &format!("{path}.redis.cache"), &mut report);
            }
        }
        if !matches!(listener.kind, ListenerKind::Redis(_))
            && let Some(upstream) = listener
                .upstream
                .as_deref()
                .and_then(|name| config.upstream(name))
            && upstream.sentinel.is_some()
        {
            report(
                format!("upstreams.{}.sentinel", upstream.name),
                format!(
                    "listener {:?} is not a redis listener; only `protocol: redis` follows a Sentinel master",
                    listener.name
                ),
            );
        }
        let pooled_database = match &listener.kind {
            ListenerKind::Postgres(postgres) => postgres.pool.auth == DatabaseAuth::Local,
            ListenerKind::Mysql(mysql) => mysql.pool.auth == DatabaseAuth::Local,
            _ => false,
        };
        if (matches!(listener.protocol(), Protocol::Http | Protocol::Redis) || pooled_database)
            && let Some(upstream) = listener.upstream.as_deref()
            && config
                .upstream(upstream)
                .is_some_and(|upstream| upstream.proxy_protocol.is_some())
        {
            report(
                format!("upstreams.{upstream}.proxy_protocol"),
                format!(
                    "listener {:?} ({}) shares upstream connections among its clients; a PROXY \
                     protocol header names one client per connection, so it is for tcp listeners \
                     only (http passes the client in X-Forwarded-For)",
                    listener.name,
                    listener.protocol().as_str()
                ),
            );
        }
        if let ListenerKind::Postgres(postgres) = &listener.kind {
            validate_postgres(postgres, &format!("{path}.postgres"), &mut report);
            if let Some(tls) = &listener.tls
                && !tls.alpn.iter().any(|protocol| protocol == "postgresql")
            {
                report(
                    format!("{path}.tls.alpn"),
                    "a postgres listener must offer \"postgresql\" (Postgres 17 clients \
                     with sslnegotiation=direct require it); leave alpn out for that default"
                        .into(),
                );
            }
        }
        if let ListenerKind::Mysql(mysql) = &listener.kind {
            validate_mysql(mysql, &format!("{path}.mysql"), &mut report);
            if listener.tls.is_some() && mysql.pool.auth == DatabaseAuth::Passthrough {
                report(
                    format!("{path}.tls"),
                    "with `auth: passthrough` the server greets the client and negotiates its TLS; \
                     use `auth: local` for TLS from attache's listener, or a tcp listener"
                        .into(),
                );
            }
            if let Some(upstream) = listener.upstream.as_deref()
                && config
                    .upstream(upstream)
                    .is_some_and(|upstream| upstream.warm_pool.is_some())
            {
                report(
                    format!("upstreams.{upstream}.warm_pool"),
                    format!(
                        "listener {:?} speaks MySQL to upstream {upstream:?}; a MySQL server \
                         greets each connection at once and drops it unanswered, so warm TCP \
                         connections go stale. Use `mysql.min_idle` for logged-in ones",
                        listener.name
                    ),
                );
            }
            if mysql.pool.auth == DatabaseAuth::Passthrough
                && let Some(upstream) = listener.upstream.as_deref()
                && config.mysql_start_tls(upstream)
            {
                report(
                    format!("upstreams.{upstream}.tls"),
                    format!(
                        "listener {:?} relays its clients' own logins (`auth: passthrough`), and \
                         the server negotiates TLS with each client itself; use `auth: local` for \
                         in-band TLS from attache to the server",
                        listener.name
                    ),
                );
            }
        }
        if listener.protocol() != Protocol::Mysql
            && let Some(upstream) = listener.upstream.as_deref()
            && config.mysql_start_tls(upstream)
        {
            report(
                format!("listeners[{index}].upstream"),
                format!(
                    "upstream {upstream:?} has `tls` and a mysql listener starts that TLS \
                     inside the MySQL protocol; listener {:?} ({}) would need it from the \
                     first byte. Give it an upstream of its own",
                    listener.name,
                    listener.protocol().as_str()
                ),
            );
        }
        if listener.protocol() != Protocol::Postgres
            && let Some(upstream) = listener.upstream.as_deref()
            && config.postgres_start_tls(upstream).is_some()
        {
            report(
                format!("listeners[{index}].upstream"),
                format!(
                    "upstream {upstream:?} has `tls` and a postgres listener starts that TLS \
                     inside the Postgres protocol (SSLRequest); listener {:?} ({}) would need it \
                     from the first byte. Give it an upstream of its own",
                    listener.name,
                    listener.protocol().as_str()
                ),
            );
        }
        if let ListenerKind::Postgres(postgres) = &listener.kind
            && postgres.pool.auth == DatabaseAuth::Passthrough
            && let Some(upstream) = listener.upstream.as_deref()
            && config.postgres_start_tls(upstream).is_some()
        {
            report(
                format!("upstreams.{upstream}.tls"),
                format!(
                    "listener {:?} relays its clients' own logins (`auth: passthrough`); over \
                     TLS to the server, a SCRAM login would be bound to a channel the client \
                     never sees, and libpq refuses it. Use `auth: local` for in-band TLS to the \
                     server",
                    listener.name
                ),
            );
        }
        if let ListenerKind::Postgres(postgres) = &listener.kind
            && let Some(upstream) = listener.upstream.as_deref()
            && let Some(mode) = config.postgres_start_tls(upstream)
            && mode != postgres.server_sslmode
        {
            report(
                format!("{path}.postgres.server_sslmode"),
                format!(
                    "postgres listeners sharing upstream {upstream:?} must agree on server_sslmode"
                ),
            );
        }
        if let ListenerKind::Http(http) = &listener.kind {
            validate_http(config, &format!("{path}.http"), http, &mut report);
            let routed = http.routes.iter().filter_map(|route| match &route.action {
                RouteAction::Upstream(upstream) => Some(upstream),
                RouteAction::Direct { .. } => None,
            });
            for upstream in listener.upstream.iter().chain(routed) {
                if config
                    .upstream(upstream)
                    .is_some_and(|upstream| upstream.warm_pool.is_some())
                {
                    report(
                        format!("upstreams.{upstream}.warm_pool"),
                        format!(
                            "http listener {:?} sends requests here over its own keep-alive pool; \
                             a warm pool serves tcp listeners only",
                            listener.name
                        ),
                    );
                }
            }
        }
        if listener.max_connections == 0 {
            report(
                format!("{path}.max_connections"),
                "must be greater than zero".into(),
            );
        }
        if listener.idle_timeout.is_zero() {
            report(
                format!("{path}.idle_timeout"),
                "must be greater than zero".into(),
            );
        }
        if let Some(tls) = &listener.tls {
            validate_listener_tls(&path, tls, &mut report);
        } else if !listener.listen.ip().is_loopback() && !listener.unsafe_plaintext {
            report(
                format!("{path}.listen"),
                format!(
                    "{} is not a loopback address and this listener is plaintext; \
                     set `unsafe_plaintext: true` on the listener to accept plaintext from the network",
                    listener.listen
                ),
            );
        }
    }

    for upstream in &config.upstreams {
        let path = format!("upstreams.{}", upstream.name);
        if upstream.endpoints.is_empty() {
            report(
                format!("{path}.endpoints"),
                "an upstream needs at least one endpoint".into(),
            );
        }
        if upstream.connect_timeout.is_zero() {
            report(
                format!("{path}.connect_timeout"),
                "must be greater than zero".into(),
            );
        }
        if let Some(tls) = &upstream.tls {
            if tls.cert.is_some() != tls.key.is_some() {
                report(
                    format!("{path}.tls"),
                    "a client certificate needs both `cert` and `key`".into(),
                );
            }
            validate_allow_list(&format!("{path}.tls.allow"), &tls.allow, &mut report);
        }
        validate_resilience(&path, upstream, &mut report);
    }
    problems
}

fn check_reference(
    config: &Config,
    path: String,
    upstream: &str,
    report: &mut impl FnMut(String, String),
) {
    if config.upstream(upstream).is_some() {
        return;
    }
    let known: Vec<_> = config
        .upstreams
        .iter()
        .map(|upstream| upstream.name.as_str())
        .collect();
    let known = if known.is_empty() {
        "none".to_owned()
    } else {
        known.join(", ")
    };
    report(
        path,
        format!("no upstream named {upstream:?} (upstreams: {known})"),
    );
}

fn validate_http(
    config: &Config,
    path: &str,
    http: &HttpListener,
    report: &mut impl FnMut(String, String),
) {
    for (index, route) in http.routes.iter().enumerate() {
        let route_path = format!("{path}.routes[{index}]");
        match &route.action {
            RouteAction::Upstream(upstream) => {
                check_reference(config, format!("{route_path}.upstream"), upstream, report);
            }
            RouteAction::Direct { status, .. } if !(200..=599).contains(status) => report(
                format!("{route_path}.direct_response.status"),
                format!("{status} is not a final HTTP status (200 to 599)"),
            ),
            RouteAction::Direct { .. } => {}
        }
        if let Some(prefix) = &route.matches.path_prefix
            && !prefix.starts_with('/')
        {
            report(
                format!("{route_path}.match.path_prefix"),
                format!("{prefix:?} must start with `/`"),
            );
        }
        for method in &route.matches.methods {
            if http::Method::from_bytes(method.as_bytes()).is_err() {
                report(
                    format!("{route_path}.match.method"),
                    format!("{method:?} is not an HTTP method"),
                );
            }
        }
        for (name, _) in &route.matches.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                report(
                    format!("{route_path}.match.headers"),
                    format!("{name:?} is not a header name"),
                );
            }
        }
    }
    let mut positive = |key: &str, is_zero: bool| {
        if is_zero {
            report(format!("{path}.{key}"), "must be greater than zero".into());
        }
    };
    positive("request_timeout", http.request_timeout.is_zero());
    positive(
        "per_try_timeout",
        http.per_try_timeout
            .is_some_and(|timeout| timeout.is_zero()),
    );
    positive("header_read_timeout", http.header_read_timeout.is_zero());
    positive("max_headers", http.max_headers == 0);
    if http.max_header_bytes < MIN_HEADER_BYTES {
        report(
            format!("{path}.max_header_bytes"),
            format!(
                "{} is below the smallest supported limit, {MIN_HEADER_BYTES}",
                http.max_header_bytes
            ),
        );
    }
    for status in &http.retry_statuses {
        if !(100..=599).contains(status) {
            report(
                format!("{path}.retry_statuses"),
                format!("{status} is not an HTTP status"),
            );
        }
    }
    for (key, header) in [
        ("upstream_time_header", &http.upstream_time_header),
        ("peer_identity_header", &http.peer_identity_header),
    ] {
        if let Some(header) = header
            && http::HeaderName::from_bytes(header.as_bytes()).is_err()
        {
            report(
                format!("{path}.{key}"),
                format!("{header:?} is not a header name"),
            );
        }
    }
}

/// The smallest request header limit hyper's HTTP/1 server accepts.
pub const MIN_HEADER_BYTES: usize = 8192;

/// Zero values that would silently disable something, and settings that
/// contradict each other.
fn validate_resilience(path: &str, upstream: &Upstream, report: &mut impl FnMut(String, String)) {
    if upstream.warm_pool.is_some() && upstream.proxy_protocol.is_some() {
        report(
            format!("{path}.proxy_protocol"),
            "a warm pool's connections are made before their client is known, and a PROXY \
             protocol header names the client of each connection: use one or the other"
                .to_owned(),
        );
    }
    let mut positive = |key: &str, is_zero: bool| {
        if is_zero {
            report(format!("{path}.{key}"), "must be greater than zero".into());
        }
    };
    if let Some(warm_pool) = &upstream.warm_pool {
        positive("warm_pool.size", warm_pool.size == 0);
        positive("warm_pool.max_age", warm_pool.max_age.is_zero());
    }
    let limits = &upstream.limits;
    positive("limits.max_connections", limits.max_connections == 0);
    positive("limits.queue_timeout", limits.queue_timeout.is_zero());
    positive("limits.max_requests", limits.max_requests == 0);
    let retry = &upstream.retry;
    positive("retry.attempts", retry.attempts == 0);
    positive("retry.deadline", retry.deadline.is_zero());
    let breaker = &upstream.breaker;
    positive("breaker.open_for", breaker.open_for.is_zero());
    if let Some(health_check) = &upstream.health_check {
        positive("health_check.interval", health_check.interval.is_zero());
        positive("health_check.timeout", health_check.timeout.is_zero());
        positive(
            "health_check.healthy_threshold",
            health_check.healthy_threshold == 0,
        );
        positive(
            "health_check.unhealthy_threshold",
            health_check.unhealthy_threshold == 0,
        );
    }
    if retry.backoff > retry.max_backoff {
        report(
            format!("{path}.retry.max_backoff"),
            format!(
                "{:?} is below retry.backoff ({:?})",
                retry.max_backoff, retry.backoff
            ),
        );
    }
    if breaker.max_open_for < breaker.open_for {
        report(
            format!("{path}.breaker.max_open_for"),
            format!(
                "{:?} is below breaker.open_for ({:?})",
                breaker.max_open_for, breaker.open_for
            ),
        );
    }
    if breaker.max_ejected_percent > 100 {
        report(
            format!("{path}.breaker.max_ejected_percent"),
            "is a percentage: 0 to 100".into(),
        );
    }
    if let Some(health_check) = &upstream.health_check {
        if health_check.timeout > health_check.interval {
            report(
                format!("{path}.health_check.timeout"),
                format!(
                    "{:?} is longer than health_check.interval ({:?})",
                    health_check.timeout, health_check.interval
                ),
            );
        }
        if health_check.user.is_some() && health_check.probe != Probe::Mariadb {
            report(
                format!("{path}.health_check.user"),
                format!(
                    "only the mariadb probe logs in; the {} probe has no use for a user",
                    health_check.probe.as_str()
                ),
            );
        }
        if upstream.tls.is_some() && matches!(health_check.probe, Probe::Mariadb | Probe::Postgres)
        {
            report(
                format!("{path}.health_check.probe"),
                format!(
                    "the {} probe speaks the server's plaintext greeting, but this upstream originates TLS \
                     (MariaDB and Postgres negotiate TLS inside their protocol); use `probe: tcp`",
                    health_check.probe.as_str()
                ),
            );
        }
    }
}

fn validate_listener_tls(path: &str, tls: &ListenerTls, report: &mut impl FnMut(String, String)) {
    if tls.client_auth != ClientAuth::None && tls.client_ca.is_none() {
        report(
            format!("{path}.tls.client_ca"),
            "required to verify client certificates (or set `client_auth: none` to accept clients without one)"
                .into(),
        );
    }
    if tls.client_auth == ClientAuth::None && !tls.allow.is_empty() {
        report(
            format!("{path}.tls.allow"),
            "an allow-list needs client certificates: remove `client_auth: none`".into(),
        );
    }
    validate_allow_list(&format!("{path}.tls.allow"), &tls.allow, report);
}

fn validate_allow_list(
    path: &str,
    allow: &IdentityAllowList,
    report: &mut impl FnMut(String, String),
) {
    for (index, uri) in allow.uris.iter().enumerate() {
        let misplaced_wildcard = uri
            .split('/')
            .any(|segment| segment.contains('*') && segment != "*");
        if !uri.contains("://") || misplaced_wildcard {
            report(
                format!("{path}.uris[{index}]"),
                format!(
                    "{uri:?} is not a URI pattern: `scheme://...`, where `*` stands for one whole path segment"
                ),
            );
        }
    }
}

/// The keys both database sections share: a pool that can lend
/// something, and pooling only where attache logs in itself. `database`
/// names the server in the messages.
fn validate_pool(
    pool: &crate::model::PoolSettings,
    path: &str,
    database: &str,
    report: &mut impl FnMut(String, String),
) {
    if pool.pool_size == 0 {
        report(format!("{path}.pool_size"), "must be at least 1".into());
    }
    if pool.max_prepared_statements == 0 {
        report(
            format!("{path}.max_prepared_statements"),
            "must be at least 1".into(),
        );
    }
    if pool.min_idle > pool.pool_size {
        report(
            format!("{path}.min_idle"),
            format!("must not exceed pool_size ({})", pool.pool_size),
        );
    }
    for (key, value) in [
        ("queue_timeout", Some(pool.queue_timeout)),
        ("server_lifetime", Some(pool.server_lifetime)),
        ("server_idle_timeout", Some(pool.server_idle_timeout)),
        ("query_timeout", pool.query_timeout),
    ] {
        if value.is_some_and(|value| value.is_zero()) {
            report(format!("{path}.{key}"), "must be greater than zero".into());
        }
    }
    if pool.auth == DatabaseAuth::Passthrough {
        if pool.pool_mode == PoolMode::Transaction {
            report(
                format!("{path}.pool_mode"),
                "`auth: passthrough` gives each client a server connection of its own, so it \
                 needs `pool_mode: session`; use `auth: local` to pool transactions"
                    .into(),
            );
        }
        if pool.server_user.is_some() || pool.server_password.is_some() {
            report(
                format!("{path}.server_user"),
                format!(
                    "`auth: passthrough` relays the client's own login to {database}; \
                     server_user and server_password are for `auth: local`"
                ),
            );
        }
    }
}

/// The `postgres:` section of a listener.
fn validate_postgres(
    postgres: &crate::model::PostgresListener,
    path: &str,
    report: &mut impl FnMut(String, String),
) {
    validate_pool(&postgres.pool, path, "Postgres", report);
    if postgres
        .idle_in_transaction_timeout
        .is_some_and(|value| value.is_zero())
    {
        report(
            format!("{path}.idle_in_transaction_timeout"),
            "must be greater than zero".into(),
        );
    }
    for (name, user) in &postgres.users {
        let secret = &user.secret;
        if name.is_empty() {
            report(format!("{path}.users"), "a user name is empty".into());
        }
        if secret.is_empty() {
            report(
                format!("{path}.users.{name}"),
                "is empty: give a password or a SCRAM-SHA-256 verifier".into(),
            );
        }
        if user.query_timeout.is_some_and(|timeout| timeout.is_zero()) {
            report(
                format!("{path}.users.{name}"),
                "query_timeout must be greater than zero".into(),
            );
        }
        if secret.starts_with("SCRAM-SHA-256$")
            && crate::model::ScramVerifier::parse(secret).is_none()
        {
            report(
                format!("{path}.users.{name}"),
                "is not a SCRAM-SHA-256 verifier as Postgres stores it \
                 (SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, base64)"
                    .into(),
            );
        }
    }
    if postgres.pool.auth == DatabaseAuth::Passthrough
        && (!postgres.users.is_empty() || postgres.users_file.is_some())
    {
        report(
            format!("{path}.users"),
            "`auth: passthrough` relays the client's own login to Postgres; users are for \
             `auth: local`"
                .into(),
        );
    }
}

/// The `mysql:` section of a listener.
fn validate_mysql(
    mysql: &crate::model::MysqlListener,
    path: &str,
    report: &mut impl FnMut(String, String),
) {
    validate_pool(&mysql.pool, path, "MySQL", report);
    for (index, name) in mysql.replayed_variables.iter().enumerate() {
        if name.is_empty()
            || !name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
        {
            report(
                format!("{path}.replayed_variables[{index}]"),
                format!("{name:?} is not a session variable's name (letters, digits and _)"),
            );
        }
    }
    if mysql.users.keys().any(String::is_empty) {
        report(format!("{path}.users"), "a user name is empty".into());
    }
    if mysql.pool.auth == DatabaseAuth::Passthrough
        && (!mysql.users.is_empty() || mysql.users_file.is_some())
    {
        report(
            format!("{path}.users"),
            "`auth: passthrough` relays the client's own login to MySQL; users are for \
             `auth: local`"
                .into(),
        );
    }
}

/// The `cache:` section of a redis listener: bounds that mean something,
/// keys named, commands the cache knows.
fn validate_cache(
    cache: &crate::model::RedisCache,
    path: &str,
    report: &mut impl FnMut(String, String),
) {
    if cache.max_memory == 0 {
        report(
            format!("{path}.max_memory"),
            "must be greater than zero (a size such as 64MiB)".into(),
        );
    }
    if cache.max_entries == 0 {
        report(
            format!("{path}.max_entries"),
            "must be greater than zero".into(),
        );
    }
    if cache.max_ttl.is_zero() {
        report(
            format!("{path}.max_ttl"),
            "must be greater than zero".into(),
        );
    }
    if cache.max_entry_bytes == 0
        || (cache.max_memory > 0 && cache.max_entry_bytes > cache.max_memory)
    {
        report(
            format!("{path}.max_entry_bytes"),
            format!(
                "must be greater than zero and at most max_memory ({} bytes)",
                cache.max_memory
            ),
        );
    }
    if cache.keys.is_empty() {
        report(
            format!("{path}.keys"),
            "list the key prefixes or patterns that may be cached (user:, session:*); nothing else is cached".into(),
        );
    }
    for (index, key) in cache.keys.iter().enumerate() {
        if key.is_empty() {
            report(
                format!("{path}.keys[{index}]"),
                "an empty prefix would cache every key: write \"*\" if that is meant".into(),
            );
        }
    }
    for (index, command) in cache.commands.iter().enumerate() {
        if !crate::model::CACHEABLE_COMMANDS.contains(&command.as_str()) {
            report(
                format!("{path}.commands[{index}]"),
                format!(
                    "{command:?} cannot be cached; the cacheable commands are {}",
                    crate::model::CACHEABLE_COMMANDS.join(", ")
                ),
            );
        }
    }
}
