//! The Kubernetes material: every manifest under docs/kubernetes validates
//! against the Kubernetes schemas (kubernetes-validate, offline), every
//! attache config embedded in a ConfigMap passes `attache check`, what
//! `attache inject` writes validates too, and every shipped example config
//! is referenced by the documentation.

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
    let mut child = Command::new(binary())
        .args([
            "inject",
            "-",
            "--config-map",
            "prod-attache",
            "--secret",
            "prod-tls",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(deployment.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
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
