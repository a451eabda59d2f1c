//! The rendered manifests (`kubectl kustomize deploy/` and `weft install`)
//! are valid Kubernetes 1.28 and 1.33 objects (offline, with
//! `kubernetes-validate`), and `weft install` renders each expected object
//! exactly once, in a form that parses back into k8s-openapi types.
//!
//! Needs `kubectl` (for `kubectl kustomize`) and `kubernetes-validate`
//! (`pip install kubernetes-validate`); under `CI=true` a missing tool fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};

const VERSIONS: &[&str] = &["1.28", "1.33"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether `tool` runs; else the test skips (`weft_tests::skip`), and under
/// CI a missing tool fails it.
fn have(tool: &str, arg: &str) -> bool {
    match Command::new(tool).arg(arg).output() {
        Ok(out) if out.status.success() => true,
        _ => {
            let install = match tool {
                "kubectl" => "kubectl 1.28 or later, from the Kubernetes project's packages",
                _ => "pip install kubernetes-validate",
            };
            weft_tests::skip::skip(&weft_tests::skip::Reason::tool(tool, install));
            false
        }
    }
}

/// Validates `paths` with the shared offline validator (objects of CRD groups,
/// which it has no schema for, are skipped there; any other unknown kind fails).
fn validate_files(paths: &[PathBuf], versions: &[&str]) {
    let versions: Vec<String> = versions.iter().map(|v| format!("{v}.0")).collect();
    let versions: Vec<&str> = versions.iter().map(String::as_str).collect();
    weft_tests::kube_validate::validate_files(paths, &versions).unwrap_or_else(|e| panic!("{e:#}"));
}

fn weft(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .expect("weft runs");
    assert!(
        out.status.success(),
        "weft {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn documents(yaml: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn key(doc: &serde_yaml::Value) -> String {
    format!(
        "{}/{}",
        doc["kind"].as_str().unwrap_or_default(),
        doc["metadata"]["name"].as_str().unwrap_or_default()
    )
}

fn typed<T: serde::de::DeserializeOwned>(docs: &[serde_yaml::Value], kind: &str) -> Vec<T> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .map(|d| serde_yaml::from_value(d.clone()).unwrap_or_else(|e| panic!("{kind}: {e}")))
        .collect()
}

/// The objects every installation holds (besides the CRDs of `deploy/crds/`).
const EXPECTED: &[&str] = &[
    "Namespace/weft-system",
    "ServiceAccount/weft-controller",
    "ClusterRole/weft-controller",
    "ClusterRoleBinding/weft-controller",
    "ServiceAccount/weft-injector",
    "ClusterRole/weft-injector",
    "ClusterRoleBinding/weft-injector",
    "Service/weft-controller",
    "StatefulSet/weft-controller",
    "PodDisruptionBudget/weft-controller",
    "ConfigMap/weft-injector-config",
    "Service/weft-injector",
    "Deployment/weft-injector",
    "PodDisruptionBudget/weft-injector",
    "MutatingWebhookConfiguration/weft-injector",
];
const GENERATED: &[&str] = &[
    "Secret/weft-issuer",
    "Secret/weft-injector-tls",
    "ConfigMap/weft-trust-anchors",
];

fn counts(docs: &[serde_yaml::Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for doc in docs {
        *counts.entry(key(doc)).or_insert(0) += 1;
    }
    counts
}

#[test]
fn the_kustomize_base_validates_and_holds_no_secrets() {
    if !have("kubectl", "help") {
        return;
    }
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(repo().join("deploy"))
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/ failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    let docs = documents(&yaml);
    let counts = counts(&docs);
    for expected in EXPECTED {
        assert_eq!(
            counts.get(*expected),
            Some(&1),
            "{expected} in:\n{counts:#?}"
        );
    }
    assert!(
        docs.iter().all(|d| d["kind"].as_str() != Some("Secret")),
        "the base must hold no Secrets"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kustomize.yaml");
    std::fs::write(&file, &yaml).unwrap();
    validate_files(&[file], VERSIONS);
}

#[test]
fn weft_install_renders_each_object_once_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let variants: [&[&str]; 2] = [
        &["install"],
        &[
            "install",
            "--webhook-url",
            "https://127.0.0.1:9443/inject",
            "--native-sidecars=false",
            "--controller-replicas",
            "1",
            "--trust-domain",
            "example.org",
        ],
    ];
    let mut files = Vec::new();
    for (i, args) in variants.iter().enumerate() {
        let yaml = weft(args);
        let docs = documents(&yaml);
        let counts = counts(&docs);
        for expected in EXPECTED.iter().chain(GENERATED) {
            assert_eq!(
                counts.get(*expected),
                Some(&1),
                "{expected} in:\n{counts:#?}"
            );
        }
        assert!(counts.values().all(|n| *n == 1), "duplicates: {counts:#?}");
        // Parses back as typed objects, with the key material in place.
        let secrets: Vec<Secret> = typed(&docs, "Secret");
        for secret in &secrets {
            let data = secret.data.as_ref().unwrap();
            assert!(data.contains_key("tls.crt") && data.contains_key("tls.key"));
        }
        let configmaps: Vec<ConfigMap> = typed(&docs, "ConfigMap");
        let config = configmaps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some("weft-injector-config"))
            .unwrap();
        let inject: weft_injector::InjectConfig =
            serde_yaml::from_str(&config.data.as_ref().unwrap()["config.yaml"]).unwrap();
        let statefulsets: Vec<StatefulSet> = typed(&docs, "StatefulSet");
        let deployments: Vec<Deployment> = typed(&docs, "Deployment");
        assert_eq!(deployments.len(), 1);
        let webhooks: Vec<MutatingWebhookConfiguration> =
            typed(&docs, "MutatingWebhookConfiguration");
        let entries = webhooks[0].webhooks.as_ref().unwrap();
        assert_eq!(entries.len(), 2);
        for entry in entries {
            assert!(!entry.client_config.ca_bundle.as_ref().unwrap().0.is_empty());
        }
        let replicas = statefulsets[0].spec.as_ref().unwrap().replicas;
        if i == 0 {
            assert!(inject.native_sidecars);
            assert_eq!(replicas, Some(2));
            assert!(entries[0].client_config.service.is_some());
        } else {
            assert!(!inject.native_sidecars);
            assert_eq!(inject.trust_domain, "example.org");
            assert_eq!(replicas, Some(1));
            assert_eq!(
                entries[0].client_config.url.as_deref(),
                Some("https://127.0.0.1:9443/inject")
            );
        }
        let file = dir.path().join(format!("install-{i}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        files.push(file);
    }
    // JSON: one v1 List holding the same objects.
    let json: serde_json::Value = serde_json::from_str(&weft(&["install", "-o", "json"])).unwrap();
    assert_eq!(json["kind"], "List");
    let items = json["items"].as_array().unwrap();
    assert_eq!(items.len(), documents(&weft(&["install"])).len());
    // The validator does not open Lists: one JSON document per item.
    let file = dir.path().join("install-json.yaml");
    let items: Vec<String> = items
        .iter()
        .map(|i| serde_json::to_string(i).unwrap())
        .collect();
    std::fs::write(&file, items.join("\n---\n")).unwrap();
    files.push(file);
    validate_files(&files, VERSIONS);
}

#[test]
fn each_install_generates_fresh_key_material() {
    let secret = |yaml: &str| {
        let docs = documents(yaml);
        let secrets: Vec<Secret> = typed(&docs, "Secret");
        secrets
            .into_iter()
            .find(|s| s.metadata.name.as_deref() == Some("weft-issuer"))
            .unwrap()
            .data
            .unwrap()["tls.key"]
            .clone()
    };
    assert_ne!(secret(&weft(&["install"])), secret(&weft(&["install"])));
}

#[test]
fn bad_options_are_reported_together() {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "install",
            "--webhook-url",
            "http://nowhere",
            "--controller-replicas",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--webhook-url") && err.contains("--controller-replicas"),
        "{err}"
    );
}
