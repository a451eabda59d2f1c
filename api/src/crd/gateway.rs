//! Gateway API v1 `HTTPRoute` and `GRPCRoute` (`gateway.networking.k8s.io/v1`),
//! only the fields weft reads, attached to a Service (GAMMA: a `parentRef` of
//! kind `Service`).
//!
//! Derived with kube's `CustomResource` rather than taken from the
//! `gateway-api` crate (0.22 binds kube 4.2 / k8s-openapi 0.28, the workspace
//! has kube 5 / 0.29); `tests/gateway_schema.rs` checks every field path here
//! against the real v1.5.1 CRD schemas. These types are not part of
//! [`super::crds`]: users install the Gateway API CRDs from upstream.
//!
//! Unknown fields: the API server sends fields weft does not model (filters,
//! session persistence, ...), so serde ignores them here;
//! [`from_value_strict`] refuses them, for the YAML a user writes by hand
//! (local mode).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The API group of the Gateway API.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// An HTTPRoute's spec: where it attaches and its rules.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    root = "HttpRoute",
    plural = "httproutes",
    namespaced,
    status = "RouteStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// The parents: for the mesh, Services (`kind: Service`, `group: ""`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<HttpRouteRule>,
}

/// A GRPCRoute's spec.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GRPCRoute",
    root = "GrpcRoute",
    plural = "grpcroutes",
    namespaced,
    status = "RouteStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<GrpcRouteRule>,
}

/// A route's parent. Gateway API defaults: group `gateway.networking.k8s.io`,
/// kind `Gateway`, namespace the route's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// For a Service parent: the route applies to this port only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

impl ParentReference {
    /// A parentRef to the Service `name` (in the route's namespace), any port.
    pub fn service(name: impl Into<String>) -> Self {
        Self {
            group: Some(String::new()),
            kind: Some("Service".to_owned()),
            name: name.into(),
            ..Self::default()
        }
    }

    /// Whether this names a Service (group `""` or `core`, kind `Service`).
    pub fn is_service(&self) -> bool {
        matches!(self.group.as_deref(), Some("" | "core"))
            && self.kind.as_deref() == Some("Service")
    }
}

/// A backend of a rule: a Service and port, and its relative weight.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackendReference {
    /// Default `""` (the core group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Default `Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    /// Default: the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Relative weight, 0 to 1,000,000; default 1 ([`BackendReference::weight`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    /// Read only to refuse them, as [`HttpRouteRule::filters`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<serde_json::Value>,
}

impl BackendReference {
    /// The Gateway API default weight of a backendRef that sets none.
    pub const DEFAULT_WEIGHT: i32 = 1;

    /// The weight, 1 when unset.
    pub fn weight(&self) -> i32 {
        self.weight.unwrap_or(Self::DEFAULT_WEIGHT)
    }
}

/// One rule of an HTTPRoute.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any match takes the request; none: every request (path prefix `/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// Experimental channel only (`HTTPRouteRetry`, GEP-1731).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<HttpRouteRetry>,
    /// Read only to refuse them: weft applies no filter yet, and a route
    /// whose filters were silently dropped would send traffic where its
    /// author did not mean it to go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<serde_json::Value>,
}

/// An HTTPRoute match: path, method and headers must all match.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Read only to refuse them (not supported yet): dropped, the match
    /// would take requests it was written to leave alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<serde_json::Value>,
}

/// A path match: `type` `Exact` or `PathPrefix` (default), `value` (default `/`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HttpPathMatch {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A header match: `type` `Exact` (default; weft supports no other), name, value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    pub name: String,
    pub value: String,
}

/// `timeouts.request` (the whole request) and `timeouts.backendRequest` (each try).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

/// `retry` (experimental channel): retries after the first try, the statuses
/// retried, the wait before a retry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

/// One rule of a GRPCRoute.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<GrpcRouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendReference>,
    /// Read only to refuse them, as [`HttpRouteRule::filters`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<serde_json::Value>,
}

/// A GRPCRoute match: method and headers must all match.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// A gRPC method match: `type` `Exact` (default), `service`, `method`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GrpcMethodMatch {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A route's status: one entry per parent and controller.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}

/// The status a controller gives a route for one parent
/// (controllerName [`crate::consts::ROUTE_CONTROLLER_NAME`] for weft).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentReference,
    pub controller_name: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A field the type does not know, found by [`from_value_strict`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StrictError {
    #[error("{0}")]
    Parse(String),
    #[error("{field}: unknown field; remove it (weft reads only the fields it documents)")]
    UnknownField { field: String },
}

/// Deserializes `value` and refuses every field the type would drop: the
/// parsed value is serialized again and every key of the input must be in it.
/// For hand-written YAML (local mode); objects from the API server carry
/// fields weft does not model and are parsed with plain serde.
pub fn from_value_strict<T: DeserializeOwned + Serialize>(
    value: serde_json::Value,
) -> Result<T, StrictError> {
    let parsed: T =
        serde_json::from_value(value.clone()).map_err(|e| StrictError::Parse(e.to_string()))?;
    let again = serde_json::to_value(&parsed).map_err(|e| StrictError::Parse(e.to_string()))?;
    if let Some(field) = first_unknown(&value, &again, String::new()) {
        return Err(StrictError::UnknownField { field });
    }
    Ok(parsed)
}

/// The path of the first key in `input` that `known` lacks.
fn first_unknown(
    input: &serde_json::Value,
    known: &serde_json::Value,
    path: String,
) -> Option<String> {
    use serde_json::Value;
    match (input, known) {
        (Value::Object(input), Value::Object(known)) => input.iter().find_map(|(key, value)| {
            let field = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match known.get(key) {
                Some(k) => first_unknown(value, k, field),
                // `field: null` and empty lists are what an unset field looks like.
                None if value.is_null() || value.as_array().is_some_and(|a| a.is_empty()) => None,
                None if value.as_object().is_some_and(|o| o.is_empty()) => None,
                None => Some(field),
            }
        }),
        (Value::Array(input), Value::Array(known)) => input
            .iter()
            .zip(known)
            .enumerate()
            .find_map(|(i, (v, k))| first_unknown(v, k, format!("{path}[{i}]"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parsing_names_the_unknown_field() {
        let value = serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": { "name": "checkout", "namespace": "shop" },
            "spec": {
                "parentRefs": [{ "group": "", "kind": "Service", "name": "checkout" }],
                "rules": [{ "backendRefs": [{ "name": "checkout-v1", "wieght": 90 }] }],
            },
        });
        let err = from_value_strict::<HttpRoute>(value.clone()).expect_err("unknown field");
        assert_eq!(
            err,
            StrictError::UnknownField {
                field: "spec.rules[0].backendRefs[0].wieght".into()
            }
        );
        // Plain serde (objects from the API server) ignores it.
        let route: HttpRoute = serde_json::from_value(value).expect("lenient");
        assert_eq!(route.spec.rules[0].backend_refs[0].weight(), 1);
    }
}
