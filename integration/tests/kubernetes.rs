//! The Kubernetes material: every manifest under docs/kubernetes validates
//! against the Kubernetes schemas (kubernetes-validate, offline), every
//! attache config embedded in a ConfigMap passes `attache check`, what
//! `attache inject` writes validates too, every shipped example config is
//! referenced by the documentation, plain-secrets.sh makes exactly the
//! Secrets the workloads mount with the names the Certificates ask for, and
//! the migration Job's shutdown lines stop attache, and every sidecar has its
//! probes, a locked-down securityContext, memory requests and limits, and a
//! drain that ends within the pod's grace period.

use std::path::{Path, PathBuf};
use std::process::Command;

use attache_integration::binary;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn validate(path: &Path) {
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(path)
        .output()
        .expect("kubernetes-validate is installed by .ci/run (pip install kubernetes-validate)");
    assert!(
        output.status.success(),
        "{} does not validate:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn manifests() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root().join("docs/kubernetes"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "yaml")
        })
        .collect();
    paths.sort();
    assert!(paths.len() >= 2, "manifests: {paths:?}");
    paths
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    for path in manifests() {
        validate(&path);
    }
}

#[test]
fn every_embedded_attache_config_passes_attache_check() {
    let mut checked = 0;
    for path in manifests() {
        let text = std::fs::read_to_string(&path).unwrap();
        // Each ConfigMap's `attache.yaml: |` block, de-indented.
        for block in text.split("  attache.yaml: |\n").skip(1) {
            let config: String = block
                .lines()
                .take_while(|line| line.starts_with("    ") || line.is_empty())
                .map(|line| format!("{}\n", line.get(4..).unwrap_or("")))
                .collect();
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), &config).unwrap();
            let output = Command::new(binary())
                .args(["check", "-c"])
                .arg(file.path())
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}: attache check failed:\n{}\n{config}",
                path.display(),
                String::from_utf8_lossy(&output.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 6, "{checked} configs checked");
}

#[test]
fn what_attache_inject_writes_validates() {
    // The guide's production microservice, in short.
    let deployment = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: production-microservice
  labels: {app: prod-service}
spec:
  replicas: 3
  selector:
    matchLabels: {app: prod-service}
  template:
    metadata:
      labels: {app: prod-service}
      annotations:
        prometheus.io/scrape: \"true\"
        prometheus.io/port: \"9090\"
    spec:
      initContainers:
        - name: db-migrations
          image: busybox
          command: [sh, -c, echo migrated]
      containers:
        - name: app
          image: hashicorp/http-echo
          args: [\"-text=Production Microservice v1.0\", \"-listen=:8080\"]
          ports: [{containerPort: 8080, name: http}]
          lifecycle:
            preStop:
              exec: {command: [/bin/sh, -c, sleep 15]}
      terminationGracePeriodSeconds: 45
";
    let mut inject = Command::new(binary());
    inject.args([
        "inject",
        "-",
        "--config-map",
        "prod-attache",
        "--secret",
        "prod-tls",
    ]);
    let output = run_with_input(&mut inject, deployment);
    assert!(output.status.success());
    let injected = String::from_utf8(output.stdout).unwrap();
    assert!(injected.contains("name: attache"));
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), &injected).unwrap();
    validate(file.path());
}

#[test]
fn every_example_config_is_referenced_by_the_documentation() {
    let mut documentation = std::fs::read_to_string(root().join("README.md")).unwrap();
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|extension| extension == "md") {
            documentation.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    for entry in std::fs::read_dir(root().join("config/examples")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(documentation.contains(&name), "no document mentions {name}");
    }
}

/// Every document of a YAML file (or text) as JSON values.
fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_str_multiple(text).unwrap()
}

fn manifest_documents() -> Vec<serde_json::Value> {
    manifests()
        .iter()
        .flat_map(|path| documents(&std::fs::read_to_string(path).unwrap()))
        .collect()
}

/// The subject alternative names of a PEM certificate, as OpenSSL prints them
/// (`DNS:a`, `URI:spiffe://...`), sorted.
fn subject_alternative_names(pem: &[u8]) -> Vec<String> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), pem).unwrap();
    let output = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let mut names: Vec<String> = text
        .lines()
        .skip(1)
        .flat_map(|line| line.split(", "))
        .map(|name| name.trim().to_owned())
        .collect();
    names.sort();
    names
}

/// Runs `command` with `input` on its stdin; its output.
fn run_with_input(command: &mut Command, input: &str) -> std::process::Output {
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn base64_decode(text: &str) -> Vec<u8> {
    let output = run_with_input(Command::new("base64").arg("-d"), text);
    assert!(output.status.success());
    output.stdout
}

#[test]
fn plain_secrets_match_the_certificates_and_the_mounted_secrets() {
    let work = tempfile::tempdir().unwrap();
    let output = Command::new("bash")
        .arg(root().join("docs/kubernetes/plain-secrets.sh"))
        .arg(work.path().join("ca"))
        .env("ATTACHE", binary())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).unwrap();
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), &printed).unwrap();
    validate(file.path());

    let manifests = manifest_documents();
    // Secrets the workloads mount, and what cert-manager is asked to issue.
    let mut mounted = std::collections::BTreeSet::new();
    let mut certificates = std::collections::BTreeMap::new();
    for document in &manifests {
        let volumes = &document["spec"]["template"]["spec"]["volumes"];
        for volume in volumes.as_array().into_iter().flatten() {
            if let Some(name) = volume["secret"]["secretName"].as_str() {
                mounted.insert(name.to_owned());
            }
        }
        if document["kind"] == "Certificate" {
            let spec = &document["spec"];
            let mut names: Vec<String> = spec["dnsNames"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|name| format!("DNS:{}", name.as_str().unwrap()))
                .chain(
                    spec["uris"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|uri| format!("URI:{}", uri.as_str().unwrap())),
                )
                .collect();
            names.sort();
            certificates.insert(spec["secretName"].as_str().unwrap().to_owned(), names);
        }
    }
    let secrets: std::collections::BTreeMap<String, serde_json::Value> = documents(&printed)
        .into_iter()
        .map(|secret| {
            (
                secret["metadata"]["name"].as_str().unwrap().to_owned(),
                secret,
            )
        })
        .collect();
    assert!(mounted.len() >= 3, "mounted: {mounted:?}");
    assert_eq!(
        mounted,
        certificates.keys().cloned().collect(),
        "Secrets mounted vs Secrets cert-manager makes"
    );
    assert_eq!(
        mounted,
        secrets.keys().cloned().collect(),
        "Secrets mounted vs Secrets plain-secrets.sh makes"
    );
    for (name, secret) in &secrets {
        assert_eq!(secret["type"], "kubernetes.io/tls");
        for key in ["tls.crt", "tls.key", "ca.crt"] {
            assert!(secret["data"][key].is_string(), "{name} has no {key}");
        }
        let pem = base64_decode(secret["data"]["tls.crt"].as_str().unwrap());
        assert_eq!(
            subject_alternative_names(&pem),
            certificates[name],
            "{name}: plain-secrets.sh issues other names than the Certificate"
        );
    }
}

#[tokio::test]
async fn the_migration_job_stops_attache_with_the_lines_it_runs() {
    let manifest =
        std::fs::read_to_string(root().join("docs/kubernetes/migration-job.yaml")).unwrap();
    // The job's own lines, from opening the admin port to reading the status.
    let lines: Vec<&str> = manifest
        .lines()
        .map(str::trim)
        .skip_while(|line| !line.starts_with("exec 3<>/dev/tcp/"))
        .take(3)
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[2].starts_with("head -n 1"), "{lines:?}");
    let config = "
admin: {shutdown_endpoint: true}
listeners:
  - {name: mariadb, listen: 127.0.0.1:0, protocol: tcp, upstream: mariadb}
upstreams:
  mariadb: {endpoints: [\"127.0.0.1:3306\"]}
";
    let mut attache = attache_integration::Attache::run(config).await.unwrap();
    let port = attache.admin().port().to_string();
    let script = lines.join("\n").replace("9901", &port);
    let output = tokio::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim_end(),
        "HTTP/1.1 202 Accepted"
    );
    let status = attache
        .wait_exit(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

/// What every attache sidecar in the manifests must have: the probes on
/// the admin port, the locked-down securityContext, memory requests and
/// limits, the native form unless it says it is classic, and a drain that
/// ends before Kubernetes kills the pod.
#[test]
fn every_sidecar_has_probes_a_locked_down_context_resources_and_a_drain_within_the_grace_period() {
    let documents = manifest_documents();
    let config_maps: std::collections::BTreeMap<String, String> = documents
        .iter()
        .filter(|document| document["kind"] == "ConfigMap")
        .filter_map(|document| {
            let name = document["metadata"]["name"].as_str()?.to_owned();
            Some((name, document["data"]["attache.yaml"].as_str()?.to_owned()))
        })
        .collect();
    let mut sidecars = 0;
    for document in &documents {
        let pod = &document["spec"]["template"]["spec"];
        let containers = ["initContainers", "containers"]
            .into_iter()
            .flat_map(|list| {
                pod[list]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(move |container| (list, container))
            });
        for (list, container) in containers {
            if container["args"][0] != "run"
                || !container["image"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("attache")
            {
                continue;
            }
            sidecars += 1;
            let name = document["metadata"]["name"].as_str().unwrap();
            if list == "initContainers" {
                assert_eq!(
                    container["restartPolicy"], "Always",
                    "{name}: a native sidecar"
                );
            }
            for (probe, path) in [
                ("startupProbe", "/startup"),
                ("readinessProbe", "/ready"),
                ("livenessProbe", "/live"),
            ] {
                assert_eq!(container[probe]["httpGet"]["path"], path, "{name}: {probe}");
                assert_eq!(
                    container[probe]["httpGet"]["port"], "attache-admin",
                    "{name}: {probe}"
                );
            }
            let context = &container["securityContext"];
            assert_eq!(context["runAsNonRoot"], true, "{name}");
            assert_eq!(context["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(context["allowPrivilegeEscalation"], false, "{name}");
            // Pod Security "restricted" requires it.
            assert_eq!(
                context["seccompProfile"]["type"], "RuntimeDefault",
                "{name}"
            );
            // One slow probe must not take the pod out of its Service
            // (Kubernetes' default is 3).
            assert!(
                container["readinessProbe"]["failureThreshold"]
                    .as_u64()
                    .is_none_or(|threshold| threshold >= 3),
                "{name}: readiness failureThreshold"
            );
            assert_eq!(
                context["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{name}"
            );
            for kind in ["requests", "limits"] {
                assert!(
                    container["resources"][kind]["memory"].is_string(),
                    "{name}: memory {kind}"
                );
            }
            let config_map = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|volume| volume["configMap"]["name"].as_str())
                .unwrap_or_else(|| panic!("{name}: no config volume"));
            let config = attache_config::parse(&config_maps[config_map], config_map, &|_| None)
                .unwrap_or_else(|error| panic!("{error}"));
            let pod_grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
            assert!(
                config.drain.grace_period < std::time::Duration::from_secs(pod_grace),
                "{name}: drain.grace_period {:?} is not below terminationGracePeriodSeconds {pod_grace}",
                config.drain.grace_period
            );
        }
    }
    assert!(sidecars >= 9, "{sidecars} sidecars checked");
}

#[test]
fn the_prometheus_operator_manifests_scrape_every_sidecar_and_carry_the_alert_rules() {
    let text =
        std::fs::read_to_string(root().join("docs/kubernetes/prometheus-operator.yaml")).unwrap();
    let operator = documents(&text);
    let of_kind = |kind: &str| {
        operator
            .iter()
            .find(|document| document["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
            .clone()
    };
    let rules = of_kind("PrometheusRule");
    let alerts =
        documents(&std::fs::read_to_string(root().join("docs/prometheus/alerts.yaml")).unwrap());
    assert_eq!(
        rules["spec"], alerts[0],
        "the PrometheusRule is docs/prometheus/alerts.yaml"
    );

    let monitor = of_kind("PodMonitor");
    let port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .unwrap();
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"][0]["path"],
        "/metrics"
    );
    // Every attache container in every manifest names its admin port so.
    let mut sidecars = 0;
    for document in manifest_documents() {
        let spec = &document["spec"]["template"]["spec"];
        let containers = spec["containers"]
            .as_array()
            .into_iter()
            .chain(spec["initContainers"].as_array())
            .flatten();
        // Proxies, not `attache wait` init containers (no admin port).
        for container in containers.filter(|container| {
            container["image"]
                .as_str()
                .is_some_and(|image| image.contains("attache"))
                && container["args"][0] != "wait"
        }) {
            sidecars += 1;
            let ports: Vec<&str> = container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|declared| declared["containerPort"] == 9901)
                .filter_map(|declared| declared["name"].as_str())
                .collect();
            assert_eq!(ports, [port], "{}: admin port", container["name"]);
        }
    }
    assert!(sidecars >= 8, "{sidecars} attache containers found");
}
