//! Documentation held to the running program: the metrics catalogue in
//! docs/operations.md lists exactly the series a running attache exposes,
//! with their types and labels, and docs/benchmarks.svg is what
//! integration/bench/chart.py draws from the committed results.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use attache_integration::pki::Pki;
use attache_integration::redis_server::RedisServer;
use attache_integration::{Attache, redis_ping};
use mysql_async::prelude::Queryable as _;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The metrics table of docs/operations.md: name → (type, label names).
/// A label is a code span opening one of the comma-separated items of the
/// labels cell (`listener`, `reason` = `a` \| `b`).
fn catalogue() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let operations = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let section = operations
        .split("## Metrics")
        .nth(1)
        .expect("docs/operations.md has a Metrics section");
    let mut metrics = BTreeMap::new();
    for row in section
        .lines()
        .filter(|line| line.starts_with("| `attache_") || line.starts_with("| `process_"))
    {
        let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
        let labels = cells[2]
            .split(", ")
            .filter(|item| item.starts_with('`'))
            .filter_map(|item| item.split('`').nth(1))
            .map(str::to_owned)
            .collect();
        metrics.insert(
            cells[0].trim_matches('`').to_owned(),
            (cells[1].to_owned(), labels),
        );
    }
    metrics
}

/// Families from `# TYPE` lines (counters under their `_total` sample
/// name, as the table writes them), and the label names seen on samples.
fn exposed(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut families = BTreeMap::new();
    for line in text.lines() {
        if let Some(declaration) = line.strip_prefix("# TYPE ") {
            let (name, kind) = declaration.split_once(' ').unwrap();
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            families.insert(name, (kind.to_owned(), BTreeSet::new()));
        }
    }
    for sample in text.lines().filter(|line| !line.starts_with('#')) {
        let name = sample.split(['{', ' ']).next().unwrap();
        let family = families
            .keys()
            .filter(|family| {
                name == family.as_str()
                    || ["_bucket", "_sum", "_count", "_created"]
                        .iter()
                        .any(|suffix| name == format!("{family}{suffix}"))
            })
            .max_by_key(|family| family.len())
            .cloned();
        let Some(family) = family else { continue };
        if let Some((labels, _)) = sample
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
        {
            let names = labels
                .split("\",")
                .filter_map(|pair| pair.split_once('=').map(|(name, _)| name.trim().to_owned()))
                .filter(|name| name != "le");
            families.get_mut(&family).unwrap().1.extend(names);
        }
    }
    families
}

#[tokio::test]
async fn the_metrics_catalogue_lists_every_exposed_series_with_its_type_and_labels() {
    let pki = Pki::new();
    let redis = RedisServer::plain();
    // Every kind of listener and upstream feature, so every family registers.
    let config = format!(
        "
listeners:
  - {{name: tcp, listen: 127.0.0.1:0, protocol: tcp, upstream: redis}}
  - {{name: resp, listen: 127.0.0.1:0, protocol: redis, upstream: redis, redis: {{cache: {{max_memory: 1MiB, keys: [\"k:\"]}}}}}}
  - {{name: pg, listen: 127.0.0.1:0, protocol: postgres, upstream: postgres}}
  - {{name: my, listen: 127.0.0.1:0, protocol: mysql, upstream: mariadb}}
  - name: door
    listen: 127.0.0.1:0
    protocol: http
    tls: {{cert: {cert}, key: {key}, client_ca: {ca}}}
    http: {{routes: [{{match: {{path_prefix: /}}, direct_response: {{status: 200, body: ok}}}}]}}
upstreams:
  redis:
    endpoints: [\"{redis}\"]
    warm_pool: {{size: 1}}
    health_check: {{probe: redis}}
  postgres:
    endpoints: [\"127.0.0.1:5432\"]
  mariadb:
    endpoints: [\"127.0.0.1:3306\"]
",
        cert = pki.cert("server"),
        key = pki.key("server"),
        ca = pki.ca(),
        redis = redis.address,
    );
    let attache = Attache::run(&config).await.unwrap();
    assert_eq!(redis_ping(attache.listener("tcp")).await.unwrap(), "PONG");
    assert_eq!(redis_ping(attache.listener("resp")).await.unwrap(), "PONG");
    // A statement and an error through the Postgres pooler: its pool and
    // error families get samples.
    let postgres = attache_integration::postgres::connect(attache.listener("pg")).await;
    postgres.simple_query("select 1").await.unwrap();
    assert!(
        postgres
            .simple_query("select no_such_column")
            .await
            .is_err()
    );
    // The same through the MySQL pooler.
    let mut mysql = attache_integration::mysql::connect(attache.listener("my"), "test").await;
    mysql.query_drop("SELECT 1").await.unwrap();
    assert!(mysql.query_drop("SELECT no_such_column").await.is_err());
    // OpenMetrics, as Prometheus asks for it: counters by family name.
    let metrics = attache.openmetrics().await.unwrap();

    let documented = catalogue();
    let exposed = exposed(&metrics);
    assert!(documented.len() > 30, "{} rows read", documented.len());
    let names = |map: &BTreeMap<String, (String, BTreeSet<String>)>| {
        map.keys().cloned().collect::<BTreeSet<_>>()
    };
    assert_eq!(
        names(&documented),
        names(&exposed),
        "documented (left) and exposed (right) metric names differ"
    );
    for (name, (kind, labels)) in &exposed {
        let (documented_kind, documented_labels) = &documented[name];
        assert_eq!(documented_kind, kind, "{name}: documented type");
        assert!(
            labels.is_subset(documented_labels),
            "{name}: exposed labels {labels:?}, documented {documented_labels:?}"
        );
    }
    // The traffic above gave most families samples, so labels were compared.
    let with_labels = exposed
        .values()
        .filter(|(_, labels)| !labels.is_empty())
        .count();
    assert!(
        with_labels >= 15,
        "only {with_labels} families had labelled samples"
    );
}

#[test]
fn the_benchmark_chart_is_drawn_from_the_committed_results() {
    let output = Command::new("python3")
        .arg(root().join("integration/bench/chart.py"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every metric name a PromQL text mentions (`attache_…`, `process_…`),
/// histogram series mapped to their family.
fn metrics_in(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = promql.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        let rest = &promql[start..];
        let Some(offset) = rest
            .find("attache_")
            .into_iter()
            .chain(rest.find("process_"))
            .min()
        else {
            break;
        };
        let begin = start + offset;
        let end = promql[begin..]
            .find(|character: char| !(character.is_ascii_alphanumeric() || character == '_'))
            .map_or(promql.len(), |length| begin + length);
        let name = &promql[begin..end];
        let family = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        names.insert(family.to_owned());
        start = end;
    }
    names
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_attache_exports_and_docs_list_its_panels() {
    let text = std::fs::read_to_string(root().join("docs/grafana/attache.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exported: BTreeSet<String> = catalogue().into_keys().collect();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push((
                panel["title"].as_str().unwrap().to_owned(),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push((format!("variable {}", variable["name"]), query.to_owned()));
        }
    }
    assert!(queries.len() > 40, "{} queries", queries.len());
    let mut queried = BTreeSet::new();
    for (title, query) in &queries {
        let names = metrics_in(query);
        assert!(!names.is_empty(), "{title}: no metric in {query}");
        for name in names {
            assert!(
                exported.contains(&name),
                "{title}: {name} is not a metric attache exports ({query})"
            );
            queried.insert(name);
        }
    }
    // Every family has a panel, except the constant ones.
    let unqueried: Vec<_> = exported
        .difference(&queried)
        .filter(|name| {
            !["attache_config_last_reload_success_timestamp_seconds"].contains(&name.as_str())
        })
        .collect();
    assert!(unqueried.is_empty(), "no panel shows {unqueried:?}");
    // docs/operations.md lists the panels.
    let operations = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        assert!(
            operations.contains(title),
            "docs/operations.md does not list {title:?}"
        );
    }
}
