//! `weft_api::crd::{HttpRoute, GrpcRoute}` against the real Gateway API v1.5.1
//! CRDs: real example objects deserialize and convert, and every field path
//! the types read or write exists in the CRD's `openAPIV3Schema` (standard
//! channel, and experimental for `retry`).
//!
//! The CRDs are found in `$WEFT_GATEWAY_API_CRDS` (the directory holding
//! `v1.5.1/`), else in `shared/gateway-api` beside the repository or one of
//! its parents (`/work/shared/gateway-api` for `/work/main`). Missing, the
//! test is skipped, except under `CI=true`, where it fails.

use std::path::{Path, PathBuf};

use serde_json::Value;
use weft_api::crd::{GrpcRoute, HttpRoute, MeshRoute, from_value_strict};

fn crds_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("WEFT_GATEWAY_API_CRDS") {
        return Some(PathBuf::from(dir));
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("shared/gateway-api"))
        .find(|dir| dir.join("v1.5.1").is_dir())
}

/// The v1 `openAPIV3Schema` of a CRD file, or `None` (skip) outside CI.
fn schema(channel: &str, file: &str) -> Option<Value> {
    let Some(dir) = crds_dir() else {
        // Panics under CI=true.
        weft_tests::skip::skip(&weft_tests::skip::Reason::Missing(
            "the Gateway API CRDs are missing: set WEFT_GATEWAY_API_CRDS to the directory \
             holding v1.5.1/ (../shared/gateway-api from the repository)"
                .into(),
        ));
        return None;
    };
    let path = dir.join("v1.5.1").join(channel).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let crd: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let version = crd["spec"]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .find(|v| v["name"] == "v1")
        .expect("a v1 version")
        .clone();
    Some(version["schema"]["openAPIV3Schema"].clone())
}

/// Every path (`spec.rules[].backendRefs[].weight`) of the keys in `value`.
fn paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.push(path.clone());
                paths(v, &path, out);
            }
        }
        Value::Array(items) => {
            for v in items {
                paths(v, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// Whether `path` exists in `schema` (objects by `properties`, lists by `items`).
fn in_schema(schema: &Value, path: &str) -> bool {
    let mut node = schema;
    for part in path.split('.') {
        let (key, lists) = match part.find('[') {
            Some(at) => (&part[..at], part[at..].matches("[]").count()),
            None => (part, 0),
        };
        let Some(next) = node["properties"].get(key) else {
            return false;
        };
        node = next;
        for _ in 0..lists {
            node = &node["items"];
        }
    }
    true
}

fn check_paths(object: &Value, schema: &Value) {
    let mut all = Vec::new();
    paths(object, "", &mut all);
    let missing: Vec<&String> = all
        .iter()
        .filter(|p| !p.starts_with("metadata") && *p != "apiVersion" && *p != "kind")
        .filter(|p| !in_schema(schema, p))
        .collect();
    assert!(missing.is_empty(), "not in the CRD schema: {missing:?}");
}

/// A GAMMA HTTPRoute: parent the Service `checkout` port 80, a 90/10 split,
/// every field weft reads set, with a status as weft writes it.
fn gamma_http_route() -> Value {
    serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": { "name": "checkout-split", "namespace": "shop", "generation": 3 },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "checkout",
                             "namespace": "shop", "port": 80, "sectionName": "http" }],
            "hostnames": ["checkout.shop.svc.cluster.local"],
            "rules": [{
                "name": "split",
                "matches": [{
                    "path": { "type": "PathPrefix", "value": "/cart" },
                    "method": "POST",
                    "headers": [{ "type": "Exact", "name": "X-Canary", "value": "1" }],
                }],
                "backendRefs": [
                    { "group": "", "kind": "Service", "name": "checkout-v1",
                      "namespace": "shop", "port": 80, "weight": 90 },
                    { "name": "checkout-v2", "port": 80, "weight": 10 },
                ],
                "timeouts": { "request": "2s", "backendRequest": "500ms" },
            }],
        },
        "status": { "parents": [{
            "parentRef": { "group": "", "kind": "Service", "name": "checkout", "port": 80 },
            "controllerName": weft_api::consts::ROUTE_CONTROLLER_NAME,
            "conditions": [{ "type": "Accepted", "status": "True", "reason": "Accepted",
                             "message": "in force", "observedGeneration": 3,
                             "lastTransitionTime": "2026-01-01T00:00:00Z" }],
        }] },
    })
}

fn experimental_retry_route() -> Value {
    serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": { "name": "inventory-retry", "namespace": "shop" },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "inventory" }],
            "rules": [{
                "backendRefs": [{ "name": "inventory", "port": 8080 }],
                "retry": { "attempts": 2, "codes": [500, 503], "backoff": "50ms" },
            }],
        },
    })
}

fn grpc_route() -> Value {
    serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": { "name": "checkout-grpc", "namespace": "shop" },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "checkout", "port": 9090 }],
            "hostnames": ["checkout"],
            "rules": [{
                "name": "orders",
                "matches": [{
                    "method": { "type": "Exact", "service": "shop.v1.Checkout",
                                "method": "PlaceOrder" },
                    "headers": [{ "type": "Exact", "name": "x-canary", "value": "1" }],
                }],
                "backendRefs": [
                    { "name": "checkout-v1", "port": 9090, "weight": 90 },
                    { "name": "checkout-v2", "port": 9090, "weight": 10 },
                ],
            }],
        },
    })
}

#[test]
fn a_gamma_http_route_deserializes_converts_and_matches_the_schema() {
    let object = gamma_http_route();
    let route: HttpRoute = from_value_strict(object.clone()).expect("every field known");
    let mesh = MeshRoute::try_from(&route).expect("valid");
    assert_eq!(mesh.parents[0].port, Some(80));
    let rule = &mesh.rules[0];
    assert_eq!(rule.route.name, "shop/checkout-split/split");
    let weights: Vec<u32> = rule.route.backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [90, 10]);
    assert_eq!(
        rule.route.timeouts.backend_request,
        Some(std::time::Duration::from_millis(500))
    );
    // What weft serializes (status included) exists in the schema.
    let again = serde_json::to_value(&route).expect("serialize");
    for channel in ["standard", "experimental"] {
        if let Some(schema) = schema(channel, "httproutes.yaml") {
            check_paths(&object, &schema);
            check_paths(&again, &schema);
            assert!(!in_schema(&schema, "spec.rules[].backendRefs[].wieght"));
        }
    }
}

#[test]
fn an_experimental_retry_converts_and_matches_the_experimental_schema() {
    let object = experimental_retry_route();
    let route: HttpRoute = from_value_strict(object.clone()).expect("every field known");
    let mesh = MeshRoute::try_from(&route).expect("valid");
    let retry = mesh.rules[0].route.retry.clone().expect("a retry policy");
    assert_eq!(retry.attempts, 2);
    assert!(retry.on.retries_status(500) && retry.on.retries_status(503));
    assert!(!retry.on.retries_status(502));
    assert!(retry.on.connect_failure);
    assert_eq!(retry.backoff.base, std::time::Duration::from_millis(50));
    if let Some(schema) = schema("experimental", "httproutes.yaml") {
        check_paths(&object, &schema);
    }
    if let Some(standard) = schema("standard", "httproutes.yaml") {
        assert!(
            !in_schema(&standard, "spec.rules[].retry"),
            "retry is experimental"
        );
    }
}

#[test]
fn a_grpc_route_deserializes_converts_and_matches_the_schema() {
    let object = grpc_route();
    let route: GrpcRoute = from_value_strict(object.clone()).expect("every field known");
    let mesh = MeshRoute::try_from(&route).expect("valid");
    assert_eq!(mesh.rules[0].route.backends.len(), 2);
    for channel in ["standard", "experimental"] {
        if let Some(schema) = schema(channel, "grpcroutes.yaml") {
            check_paths(&object, &schema);
        }
    }
}

#[test]
fn conversion_errors_name_the_field() {
    let mut object = gamma_http_route();
    object["spec"]["rules"][0]["backendRefs"][1]["weight"] = serde_json::json!(-1);
    let route: HttpRoute = serde_json::from_value(object).expect("parses");
    let err = MeshRoute::try_from(&route).expect_err("negative weight");
    assert_eq!(
        err.to_string(),
        "spec.rules[0].backendRefs[1].weight: -1 is negative; use a value between 0 and 1000000"
    );
    let mut object = experimental_retry_route();
    object["spec"]["rules"][0]["retry"]["codes"] = serde_json::json!([503, 700]);
    let route: HttpRoute = serde_json::from_value(object).expect("parses");
    let err = MeshRoute::try_from(&route).expect_err("bad code");
    assert_eq!(err.field, "spec.rules[0].retry.codes[1]");
    let mut object = gamma_http_route();
    object["spec"]["rules"][0]["matches"][0]["path"]["type"] = "RegularExpression".into();
    let route: HttpRoute = serde_json::from_value(object).expect("parses");
    let err = MeshRoute::try_from(&route).expect_err("regex");
    assert_eq!(err.field, "spec.rules[0].matches[0].path.type");
    let mut object = experimental_retry_route();
    object["spec"]["rules"][0]["retry"]["backoff"] = "soon".into();
    let route: HttpRoute = serde_json::from_value(object).expect("parses");
    let err = MeshRoute::try_from(&route).expect_err("bad duration");
    assert_eq!(err.field, "spec.rules[0].retry.backoff");
    let mut object = gamma_http_route();
    object["spec"]["rules"][0]["filters"] = serde_json::json!([
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x", "value": "y"}]}}
    ]);
    let route: HttpRoute = serde_json::from_value(object).expect("parses");
    let err = MeshRoute::try_from(&route).expect_err("a filter");
    assert_eq!(err.field, "spec.rules[0].filters[0]");
    assert!(
        err.to_string()
            .contains("RequestHeaderModifier is not supported"),
        "{err}"
    );
    let mut object = gamma_http_route();
    object["spec"]["rules"][0]["backendRefs"][0]["filters"] =
        serde_json::json!([{"type": "RequestMirror"}]);
    let route: HttpRoute = serde_json::from_value(object).expect("parses");
    let err = MeshRoute::try_from(&route).expect_err("a backend filter");
    assert_eq!(err.field, "spec.rules[0].backendRefs[0].filters[0]");
    let mut object = gamma_http_route();
    object["spec"]["rules"][0]["matches"][0]["queryParams"] =
        serde_json::json!([{"name": "canary", "value": "1"}]);
    let route: HttpRoute = serde_json::from_value(object).expect("parses");
    let err = MeshRoute::try_from(&route).expect_err("query params");
    assert_eq!(err.field, "spec.rules[0].matches[0].queryParams");
}
