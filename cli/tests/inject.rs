//! `weft inject` and `weft uninject` on a multi-document manifest, as a user
//! runs them: the binary, a file or stdin in, YAML out, a summary on stderr.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde::Deserialize;
use serde_yaml::Value;

const BIN: &str = env!("CARGO_BIN_EXE_weft");

const MANIFEST: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      serviceAccountName: web
      containers:
      - name: web
        image: registry.example/web:1
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /healthz, port: http}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: report
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: report
            image: registry.example/report:1
---
apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: StatefulSet
  metadata: {name: db}
  spec:
    serviceName: db
    selector:
      matchLabels: {app: db}
    template:
      metadata:
        labels: {app: db}
        annotations: {team: data}
      spec:
        initContainers:
        - name: init-perms
          image: busybox:1.36
        containers:
        - name: db
          image: postgres:16
- apiVersion: v1
  kind: Pod
  metadata:
    name: legacy
    annotations: {weft.io/inject: disabled}
  spec:
    containers:
    - {name: legacy, image: registry.example/legacy:1}
- apiVersion: v1
  kind: Pod
  metadata: {name: exporter}
  spec:
    hostNetwork: true
    containers:
    - {name: exporter, image: prom/node-exporter:1}
"#;

fn anchors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../injector/tests/golden/anchors.pem")
}

fn weft(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refused invocation may exit before it reads its input: a broken pipe
    // is then expected, and the test looks at the exit status and stderr.
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    child.wait_with_output().unwrap()
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

fn names(seq: &Value) -> Vec<&str> {
    seq.as_sequence()
        .map(|s| s.iter().map(|c| c["name"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

fn env_of<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"].as_str() == Some(name))?["value"]
        .as_str()
}

#[test]
fn inject_and_uninject_a_multi_document_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.yaml");
    std::fs::write(&file, MANIFEST).unwrap();
    let anchors = anchors();
    let anchors = anchors.to_str().unwrap();

    let out = weft(
        &[
            "inject",
            "-f",
            file.to_str().unwrap(),
            "--trust-anchors",
            anchors,
        ],
        "",
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    for line in [
        "deployment/web: injected (native sidecar)",
        "service/web: unchanged (not a workload)",
        "cronjob/report: injected (native sidecar)",
        "statefulset/db: injected (native sidecar)",
        "pod/legacy: unchanged: the pod opted out (weft.io/inject: disabled) (pod-opted-out)",
        "pod/exporter: unchanged: the pod uses the host network (host-network)",
    ] {
        assert!(stderr.contains(line), "{line:?} missing from:\n{stderr}");
    }
    let injected_text = String::from_utf8(out.stdout).unwrap();
    let injected = docs(&injected_text);
    let original = docs(MANIFEST);
    assert_eq!(injected.len(), 4);

    let web = &injected[0]["spec"]["template"];
    assert_eq!(
        names(&web["spec"]["initContainers"]),
        ["weft-init", "weft-proxy"]
    );
    assert_eq!(names(&web["spec"]["containers"]), ["web"]);
    let proxy = &web["spec"]["initContainers"][1];
    assert_eq!(
        env_of(proxy, "WEFT_PROXY_IDENTITY"),
        Some("spiffe://cluster.local/ns/shop/sa/web")
    );
    // The readiness probe goes through the proxy, which lets its path through.
    assert_eq!(
        env_of(
            &web["spec"]["initContainers"][0],
            "WEFT_INIT_SKIP_INBOUND_PORTS"
        ),
        None,
        "an HTTP probe's port stays intercepted"
    );
    assert_eq!(
        env_of(proxy, "WEFT_PROXY_PROBE_PATHS"),
        Some("8080:/healthz"),
        "the readiness probe"
    );
    assert_eq!(
        web["metadata"]["annotations"]["weft.io/injected-by"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    // The app's container is exactly as written.
    assert_eq!(
        web["spec"]["containers"][0],
        original[0]["spec"]["template"]["spec"]["containers"][0]
    );
    // Other documents pass through unchanged.
    assert_eq!(injected[1], original[1]);
    // An object without a namespace gets the one of --namespace (default).
    let report = &injected[2]["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(
        env_of(&report["initContainers"][1], "WEFT_PROXY_IDENTITY"),
        Some("spiffe://cluster.local/ns/default/sa/default")
    );
    let db = &injected[3]["items"][0]["spec"]["template"];
    assert_eq!(
        names(&db["spec"]["initContainers"]),
        ["weft-init", "weft-proxy", "init-perms"]
    );
    assert_eq!(db["metadata"]["annotations"]["team"].as_str(), Some("data"));
    assert_eq!(injected[3]["items"][1], original[3]["items"][1]);
    assert_eq!(injected[3]["items"][2], original[3]["items"][2]);

    // Injecting again changes nothing.
    let again = weft(
        &["inject", "-f", "-", "--trust-anchors", anchors],
        &injected_text,
    );
    assert!(again.status.success());
    assert_eq!(docs(&String::from_utf8(again.stdout).unwrap()), injected);
    assert!(
        String::from_utf8(again.stderr)
            .unwrap()
            .contains("deployment/web: unchanged: the pod is already injected (already-injected)")
    );

    // uninject from stdin gives the manifest back.
    let back = weft(&["uninject", "-f", "-"], &injected_text);
    let stderr = String::from_utf8(back.stderr).unwrap();
    assert!(back.status.success(), "{stderr}");
    assert!(stderr.contains("deployment/web: uninjected"), "{stderr}");
    assert_eq!(docs(&String::from_utf8(back.stdout).unwrap()), original);
}

#[test]
fn classic_sidecars_and_jobs_and_refusals() {
    let anchors = anchors();
    let anchors = anchors.to_str().unwrap();
    let out = weft(
        &[
            "inject",
            "-f",
            "-",
            "--trust-anchors",
            anchors,
            "--native-sidecars",
            "false",
            "--proxy-image",
            "example/proxy:dev",
        ],
        MANIFEST,
    );
    assert!(out.status.success());
    let injected = docs(&String::from_utf8(out.stdout).unwrap());
    let web = &injected[0]["spec"]["template"]["spec"];
    assert_eq!(names(&web["initContainers"]), ["weft-init"]);
    assert_eq!(names(&web["containers"]), ["weft-proxy", "web"]);
    assert_eq!(
        web["containers"][0]["image"].as_str(),
        Some("example/proxy:dev")
    );
    assert_eq!(
        env_of(&web["containers"][0], "WEFT_PROXY_SHUTDOWN_ENDPOINT"),
        Some("false")
    );
    // A Job's classic sidecar can be ended by the workload.
    let report = &injected[2]["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(
        env_of(&report["containers"][0], "WEFT_PROXY_SHUTDOWN_ENDPOINT"),
        Some("true")
    );

    // A bad annotation: the object is left as it was, the message says why,
    // the exit code says something was refused.
    let bad = MANIFEST.replace(
        "      labels: {app: web}\n    spec:",
        "      labels: {app: web}\n      annotations: {config.weft.io/skip-inbound-ports: ssh}\n    spec:",
    );
    let out = weft(&["inject", "-f", "-", "--trust-anchors", anchors], &bad);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("deployment/web: not injected: annotation config.weft.io/skip-inbound-ports: \"ssh\" is not valid"),
        "{stderr}"
    );
    assert_eq!(
        docs(&String::from_utf8(out.stdout).unwrap())[0],
        docs(&bad)[0]
    );

    // No anchors: a usage error that says what is missing.
    let out = weft(
        &["inject", "-f", "-", "--trust-anchors", "/nonexistent.pem"],
        MANIFEST,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("cannot read the trust anchors")
    );
}
