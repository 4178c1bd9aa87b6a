//! `attache inject`: adds attache as a native sidecar (an init container
//! with `restartPolicy: Always`, Kubernetes 1.29+) to every workload in a
//! stream of Kubernetes YAML documents, as `linkerd inject` does. Other
//! documents and fields pass through unchanged (key order kept; comments
//! are lost). Injecting twice changes nothing.

use serde_json::{Map, Value, json};

/// What the sidecar looks like.
pub(crate) struct Options {
    pub(crate) image: String,
    /// ConfigMap holding `attache.yaml`, mounted at `/etc/attache`.
    pub(crate) config_map: String,
    /// Secret with TLS material, mounted at `/etc/attache/tls` when given.
    pub(crate) secret: Option<String>,
    pub(crate) admin_port: u16,
}

/// The sidecar's container name; a workload that has one is left alone.
const NAME: &str = "attache";

/// Why the input could not be injected.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InjectError {
    #[error("the input is not YAML: {0}")]
    Parse(String),
    #[error("cannot write YAML: {0}")]
    Write(String),
}

/// Injects every workload in `yaml` (one or many documents).
///
/// # Errors
/// When the input is not YAML.
pub(crate) fn inject(yaml: &str, options: &Options) -> Result<String, InjectError> {
    let mut documents: Vec<Value> = serde_saphyr::from_str_multiple(yaml)
        .map_err(|error| InjectError::Parse(error.to_string()))?;
    for document in &mut documents {
        if let Some(pod_spec) = pod_spec(document) {
            add_sidecar(pod_spec, options);
        }
    }
    serde_saphyr::to_string_multiple(&documents)
        .map_err(|error| InjectError::Write(error.to_string()))
}

/// The pod spec inside a workload, by kind.
fn pod_spec(document: &mut Value) -> Option<&mut Map<String, Value>> {
    let kind = document.get("kind")?.as_str()?.to_owned();
    let spec = document.get_mut("spec")?;
    let pod = match kind.as_str() {
        "Pod" => spec,
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            spec.get_mut("template")?.get_mut("spec")?
        }
        "CronJob" => spec
            .get_mut("jobTemplate")?
            .get_mut("spec")?
            .get_mut("template")?
            .get_mut("spec")?,
        _ => return None,
    };
    pod.as_object_mut()
}

fn add_sidecar(pod: &mut Map<String, Value>, options: &Options) {
    let init = pod
        .entry("initContainers")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(init) = init.as_array_mut() else {
        return;
    };
    if init
        .iter()
        .any(|container| container.get("name").and_then(Value::as_str) == Some(NAME))
    {
        return;
    }
    // First, so that the init containers after it can already use it.
    init.insert(0, sidecar(options));
    let volumes = pod
        .entry("volumes")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Some(volumes) = volumes.as_array_mut() {
        volumes.push(json!({"name": "attache-config", "configMap": {"name": options.config_map}}));
        if let Some(secret) = &options.secret {
            volumes.push(json!({"name": "attache-tls", "secret": {"secretName": secret}}));
        }
    }
}

fn sidecar(options: &Options) -> Value {
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": "attache-admin"},
            "periodSeconds": period,
            "failureThreshold": failures,
        })
    };
    let mut mounts =
        vec![json!({"name": "attache-config", "mountPath": "/etc/attache", "readOnly": true})];
    if options.secret.is_some() {
        mounts.push(
            json!({"name": "attache-tls", "mountPath": "/etc/attache/tls", "readOnly": true}),
        );
    }
    json!({
        "name": NAME,
        "image": options.image,
        // Native sidecar: started before the app, stopped after it.
        "restartPolicy": "Always",
        "args": ["run", "-c", "/etc/attache/attache.yaml", "--admin", format!("0.0.0.0:{}", options.admin_port)],
        "ports": [{"name": "attache-admin", "containerPort": options.admin_port}],
        // The app starts only once attache's listeners are bound.
        "startupProbe": probe("/startup", 1, 30),
        // Three misses, not one: a single slow probe must not take the pod
        // out of its Service.
        "readinessProbe": probe("/ready", 5, 3),
        "livenessProbe": probe("/live", 10, 3),
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            // Pod Security "restricted" rejects a container without it.
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        // Twice the measured peak of most scenarios (docs/operations.md#sizing).
        "resources": {
            "requests": {"cpu": "50m", "memory": "32Mi"},
            "limits": {"memory": "128Mi"},
        },
        "volumeMounts": mounts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(secret: Option<&str>) -> Options {
        Options {
            image: "attache:test".into(),
            config_map: "app-attache".into(),
            secret: secret.map(str::to_owned),
            admin_port: 9901,
        }
    }

    const MANIFESTS: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
    prometheus.io/scrape: \"true\"
    prometheus.io/port: \"9090\"
spec:
  ports:
    - port: 80
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: production-microservice
spec:
  replicas: 3
  template:
    spec:
      initContainers:
        - name: wait-for-db
          image: busybox
      containers:
        - name: app
          image: hashicorp/http-echo
      volumes:
        - name: config
          emptyDir: {}
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
spec:
  schedule: '0 3 * * *'
  jobTemplate:
    spec:
      template:
        spec:
          containers:
            - name: job
              image: busybox
";

    fn documents(text: &str) -> Vec<Value> {
        serde_saphyr::from_str_multiple(text).unwrap()
    }

    #[test]
    fn workloads_get_the_sidecar_first_and_the_rest_is_untouched() {
        let injected = inject(MANIFESTS, &options(Some("app-tls"))).unwrap();
        let before = documents(MANIFESTS);
        let after = documents(&injected);
        assert_eq!(after.len(), 3);
        assert_eq!(after[0], before[0], "a Service is not a workload");
        let pod = &after[1]["spec"]["template"]["spec"];
        let init = pod["initContainers"].as_array().unwrap();
        assert_eq!(init[0]["name"], "attache");
        assert_eq!(init[0]["restartPolicy"], "Always");
        assert_eq!(init[0]["startupProbe"]["httpGet"]["path"], "/startup");
        assert_eq!(init[0]["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            init[0]["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(init[0]["readinessProbe"]["failureThreshold"], 3);
        assert_eq!(
            init[1]["name"], "wait-for-db",
            "the app's init containers follow"
        );
        assert_eq!(
            pod["containers"],
            before[1]["spec"]["template"]["spec"]["containers"]
        );
        let volumes: Vec<&str> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|volume| volume["name"].as_str().unwrap())
            .collect();
        assert_eq!(volumes, ["config", "attache-config", "attache-tls"]);
        assert_eq!(pod["volumes"][1]["configMap"]["name"], "app-attache");
        let cron = &after[2]["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(cron["initContainers"][0]["name"], "attache");
        // Key order is kept.
        let keys: Vec<&String> = after[1].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["apiVersion", "kind", "metadata", "spec"]);
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let once = inject(MANIFESTS, &options(None)).unwrap();
        let twice = inject(&once, &options(None)).unwrap();
        assert_eq!(documents(&once), documents(&twice));
        assert_eq!(once, twice);
    }

    #[test]
    fn every_workload_kind_gets_the_sidecar_in_its_pod_spec() {
        let template = "template: {spec: {containers: [{name: app, image: app}]}}";
        let manifests = [
            format!("kind: StatefulSet\nspec: {{serviceName: db, {template}}}"),
            format!("kind: DaemonSet\nspec: {{{template}}}"),
            format!("kind: Job\nspec: {{{template}}}"),
            "kind: Pod\nspec: {containers: [{name: app, image: app}]}".to_owned(),
            "kind: ConfigMap\ndata: {spec: x}".to_owned(),
        ]
        .join("\n---\n");
        let after = documents(&inject(&manifests, &options(None)).unwrap());
        for document in &after[..3] {
            let pod = &document["spec"]["template"]["spec"];
            assert_eq!(pod["initContainers"][0]["name"], "attache", "{document}");
            assert_eq!(pod["containers"][0]["name"], "app");
        }
        assert_eq!(after[3]["spec"]["initContainers"][0]["name"], "attache");
        assert_eq!(after[4], documents(&manifests)[4]);
    }

    #[test]
    fn input_that_is_not_yaml_is_an_error() {
        assert!(matches!(
            inject("kind: [unclosed", &options(None)),
            Err(InjectError::Parse(_))
        ));
    }
}
