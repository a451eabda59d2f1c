//! Golden files: each `tests/golden/<name>.input.yaml` holds a pod, the
//! namespace it is created in and the configuration variant (`native`, the
//! default, or `classic`); `<name>.output.yaml` holds what `mutate` decided
//! (`inject` with the patched pod, `skip` with the reason and the pod as the
//! skip patch leaves it, or `deny` with the message). `WEFT_UPDATE_GOLDEN=1`
//! rewrites the expectations.
//!
//! Every injected pod is also checked: the patch applies to the input as it
//! was written (not only to its typed form), the result is a k8s-openapi Pod,
//! injecting it again is `AlreadyInjected`, `uninject` gives the input back,
//! and it validates against the Kubernetes 1.28 and 1.33 schemas.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::{Value, json};
use weft_injector::{Decision, InjectConfig, NamespaceInfo, SkipReason, mutate, uninject};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    namespace: Namespace,
    #[serde(default)]
    config: Option<String>,
    pod: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Namespace {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The configuration the goldens are written with: fixed versions and images
/// so that a release does not rewrite them.
fn config(variant: Option<&str>) -> InjectConfig {
    let anchors = std::fs::read_to_string(golden_dir().join("anchors.pem")).unwrap();
    InjectConfig {
        version: "0.0.0-golden".into(),
        proxy_image: "weft/weft-proxy:golden".into(),
        init_image: "weft/weft-init:golden".into(),
        trust_anchors_pem: anchors,
        native_sidecars: match variant {
            None | Some("native") => true,
            Some("classic") => false,
            Some(other) => panic!("unknown config variant {other:?}"),
        },
        ..InjectConfig::default()
    }
}

fn to_yaml(v: &Value) -> String {
    serde_yaml::to_string(v).unwrap()
}

#[test]
fn golden_pods() {
    let update = std::env::var("WEFT_UPDATE_GOLDEN").as_deref() == Ok("1");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".input.yaml"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 15, "only {} golden cases", inputs.len());

    let patched_dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut injected = 0;
    for input in &inputs {
        let name = input
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".input.yaml")
            .to_owned();
        let case: Case = serde_yaml::from_str(&std::fs::read_to_string(input).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let ns = NamespaceInfo {
            name: case.namespace.name,
            labels: case.namespace.labels,
            annotations: case.namespace.annotations,
        };
        let config = config(case.config.as_deref());
        let pod: Pod = serde_json::from_value(case.pod.clone()).unwrap();
        let outcome = match mutate(&pod, &ns, &config) {
            Decision::Inject(patch) => {
                let result = check_injected(&name, &case.pod, &pod, &patch, &ns, &config);
                let path = patched_dir.path().join(format!("{name}.yaml"));
                std::fs::write(&path, to_yaml(&result)).unwrap();
                injected += 1;
                json!({"decision": "inject", "pod": result})
            }
            Decision::Skip(skipped) => {
                let mut out = json!({"decision": "skip", "reason": skipped.reason.label(),
                    "why": skipped.reason.to_string()});
                if let Some(patch) = &skipped.patch {
                    let mut doc = case.pod.clone();
                    json_patch::patch(&mut doc, patch).unwrap();
                    let _: Pod = serde_json::from_value(doc.clone()).unwrap();
                    out["pod"] = doc;
                }
                out
            }
            Decision::Deny(message) => json!({"decision": "deny", "message": message}),
        };
        let text = to_yaml(&outcome);
        let expected_path = golden_dir().join(format!("{name}.output.yaml"));
        if update {
            std::fs::write(&expected_path, &text).unwrap();
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(expected) if expected == text => {}
            Ok(expected) => failures.push(format!(
                "{name}: output differs from {}\n--- expected\n{expected}\n--- got\n{text}",
                expected_path.display()
            )),
            Err(e) => failures.push(format!(
                "{name}: cannot read {} ({e}); run with WEFT_UPDATE_GOLDEN=1",
                expected_path.display()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(injected >= 10, "only {injected} cases inject");

    let validated =
        weft_tests::kube_validate::validate_files(&[patched_dir.path()], &["1.28.0", "1.33.0"])
            .unwrap();
    eprintln!("schema validation of the patched pods: {validated:?}");
}

/// The properties every injection has; returns the patched pod.
fn check_injected(
    name: &str,
    raw: &Value,
    pod: &Pod,
    patch: &json_patch::Patch,
    ns: &NamespaceInfo,
    config: &InjectConfig,
) -> Value {
    // The patch applies to the input as written, and to its typed form.
    let mut doc = raw.clone();
    json_patch::patch(&mut doc, patch).unwrap_or_else(|e| panic!("{name}: patch: {e}"));
    let mut typed = serde_json::to_value(pod).unwrap();
    json_patch::patch(&mut typed, patch).unwrap();
    let result: Pod =
        serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{name}: not a Pod: {e}"));
    assert_eq!(serde_json::to_value(&result).unwrap(), typed, "{name}");

    // Idempotent: injecting again changes nothing.
    match mutate(&result, ns, config) {
        Decision::Skip(s) => {
            assert_eq!(s.reason, SkipReason::AlreadyInjected, "{name}");
            assert!(s.patch.is_none(), "{name}");
        }
        other => panic!("{name}: injecting twice gave {other:?}"),
    }
    // Reversible: uninject gives the input back.
    let back = uninject(&result).unwrap_or_else(|| panic!("{name}: uninject found nothing"));
    assert_eq!(&back, pod, "{name}: uninject did not restore the pod");
    assert!(uninject(pod).is_none(), "{name}");

    // The app's containers are untouched, weft-init runs first.
    let spec = result.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().unwrap();
    assert_eq!(init[0].name, "weft-init", "{name}");
    let apps: Vec<_> = spec
        .containers
        .iter()
        .filter(|c| c.name != "weft-proxy")
        .collect();
    let original: Vec<_> = pod.spec.as_ref().unwrap().containers.iter().collect();
    assert_eq!(apps, original, "{name}");
    doc
}

/// A small pod the unit checks below vary.
fn pod(annotations: &[(&str, &str)]) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "annotations": annotations.iter().copied().collect::<BTreeMap<_, _>>()},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }))
    .unwrap()
}

fn labelled() -> NamespaceInfo {
    NamespaceInfo {
        name: "shop".into(),
        labels: BTreeMap::from([("weft.io/inject".into(), "enabled".into())]),
        annotations: BTreeMap::new(),
    }
}

#[test]
fn denials_name_the_annotation_the_value_and_what_is_expected() {
    let config = config(None);
    for (key, value, expected) in [
        (
            "config.weft.io/skip-inbound-ports",
            "80,http",
            "expected a comma-separated list of ports or ranges",
        ),
        (
            "config.weft.io/skip-subnets",
            "10.0.0.0/33",
            "bad prefix length",
        ),
        (
            "config.weft.io/proxy-cpu-limit",
            "lots",
            "expected a CPU quantity",
        ),
        (
            "config.weft.io/default-inbound-policy",
            "open",
            "one of allow-all, mesh-only, deny, audit",
        ),
        (
            "config.weft.io/otlp-endpoint",
            "collector:4317",
            "expected an OTLP/gRPC URL",
        ),
        (
            "config.weft.io/otlp-endpoint",
            "http://collector:4317/v1/traces",
            "takes no path",
        ),
        (
            "config.weft.io/trace-sample-ratio",
            "5%",
            "expected a number from 0 to 1",
        ),
        ("config.weft.io/trace-sample-ratio", "2", "outside 0 to 1"),
    ] {
        match mutate(&pod(&[(key, value)]), &labelled(), &config) {
            Decision::Deny(message) => {
                assert!(message.contains(key), "{message}");
                assert!(message.contains(&format!("{value:?}")), "{message}");
                assert!(message.contains(expected), "{message}");
            }
            other => panic!("{key}={value}: {other:?}"),
        }
    }
    // A namespace's bad annotation names the namespace.
    let mut ns = labelled();
    ns.annotations
        .insert("config.weft.io/skip-outbound-ports".into(), "mail".into());
    match mutate(&pod(&[]), &ns, &config) {
        Decision::Deny(message) => assert!(
            message.contains("config.weft.io/skip-outbound-ports of namespace shop"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_trust_anchors_is_a_denial_not_a_broken_proxy() {
    let config = InjectConfig::default();
    match mutate(&pod(&[]), &labelled(), &config) {
        Decision::Deny(message) => assert!(message.contains("no trust anchors"), "{message}"),
        other => panic!("{other:?}"),
    }
}

/// The injected proxy's environment is one the proxy itself accepts, tracing
/// on.
#[test]
fn the_proxy_accepts_the_environment_it_is_given() {
    let mut config = config(None);
    config.otlp_endpoint = "http://collector.observability:4317".into();
    let Decision::Inject(patch) = mutate(&pod(&[]), &labelled(), &config) else {
        panic!("not injected");
    };
    let mut doc = serde_json::to_value(pod(&[])).unwrap();
    json_patch::patch(&mut doc, &patch).unwrap();
    let pod: Pod = serde_json::from_value(doc).unwrap();
    let proxy = pod
        .spec
        .unwrap()
        .init_containers
        .unwrap()
        .into_iter()
        .find(|c| c.name == "weft-proxy")
        .unwrap();
    // As the kubelet does: the downward API's fields, then `$(VAR)` of the
    // variables before.
    let mut vars: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for e in proxy.env.unwrap() {
        let value = match (e.value, e.value_from) {
            (Some(mut value), None) => {
                for (name, v) in &vars {
                    value = value.replace(&format!("$({name})"), v);
                }
                value
            }
            (None, Some(from)) => match from.field_ref.unwrap().field_path.as_str() {
                "metadata.name" => "p".to_owned(),
                "metadata.namespace" => "shop".to_owned(),
                other => panic!("unexpected field {other}"),
            },
            other => panic!("{}: {other:?}", e.name),
        };
        vars.insert(e.name, value);
    }
    let var = |name: &str| vars.get(name).map(String::as_str);
    assert_eq!(
        var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        Some("http://collector.observability:4317")
    );
    assert_eq!(var("OTEL_TRACES_SAMPLER"), Some("parentbased_traceidratio"));
    assert_eq!(var("OTEL_TRACES_SAMPLER_ARG"), Some("0.01"));
    assert_eq!(var("OTEL_SERVICE_NAME"), Some("p"));
    assert_eq!(
        var("OTEL_RESOURCE_ATTRIBUTES"),
        Some("k8s.namespace.name=shop,k8s.pod.name=p")
    );
    let parsed = weft_proxy::Config::from_env(&vars).unwrap();
    let tracing = parsed.proxy.tracing.as_ref().unwrap();
    assert_eq!(tracing.endpoint, "http://collector.observability:4317");
    assert_eq!(tracing.service_name, "p");
    assert_eq!(
        tracing.sampler,
        weft_proxy::trace::Sampler {
            parent_based: true,
            ratio: 0.01
        }
    );
    assert_eq!(
        tracing.resource,
        [
            ("k8s.namespace.name".to_owned(), "shop".to_owned()),
            ("k8s.pod.name".to_owned(), "p".to_owned())
        ]
    );
    assert!(!parsed.proxy.shutdown_endpoint);
    assert_eq!(parsed.proxy.workload.as_deref(), Some("shop/p"));
    assert!(matches!(
        parsed.trust_anchors,
        weft_proxy::config::TrustAnchorsSource::Inline(_)
    ));
    match parsed.identity {
        weft_proxy::config::IdentitySource::Controller(c) => {
            assert_eq!(
                c.identity.to_string(),
                "spiffe://cluster.local/ns/shop/sa/default"
            );
            assert_eq!(
                c.controller_identity.to_string(),
                "spiffe://cluster.local/ns/weft-system/sa/weft-controller"
            );
        }
        other => panic!("{other:?}"),
    }
    weft_api::tls::TrustAnchors::from_pem(config.trust_anchors_pem.as_bytes()).unwrap();
}
