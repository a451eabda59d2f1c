//! `AuthorizationPolicy`: who may call a Service's (or some pods') ports.

use k8s_openapi::apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{PolicyStatus, ServiceRef};

/// Allows callers to reach the ports of a Service (`targetRef`) or of the pods a
/// label selector picks (`podSelector`): exactly one of the two. A request is
/// allowed when one rule matches it; `allowPlaintext` also lets in callers with
/// no mesh identity.
// Each `printcolumn(...)` repeats `type_ = "string"`, which clippy takes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policy.weft.io",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    shortname = "authzpol",
    category = "weft",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    doc = "Which callers (by identity, namespace or service account) may reach a Service's or some pods' ports.",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name"),
    printcolumn(
        name = "Plaintext",
        type_ = "boolean",
        json_path = ".spec.allowPlaintext"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.targetRef) != has(self.podSelector)",
    "message": "set exactly one of targetRef and podSelector",
}]))]
pub struct AuthorizationPolicySpec {
    /// The Service, in this namespace, whose pods this policy protects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<ServiceRef>,
    /// The pods, in this namespace, this policy protects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// The ports protected, by number or by container port name. Empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<IntOrString>,
    /// The callers allowed; a request is allowed when any rule matches it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthorizationRule>,
    /// Whether callers with no mesh identity (plaintext) are allowed too, for
    /// the requests the rules' `http` matches allow. Default false.
    #[serde(default)]
    pub allow_plaintext: bool,
}

/// One set of allowed callers, and optionally the requests they may make.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationRule {
    /// Who may call. Left out: any authenticated mesh identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<FromSpec>,
    /// Which requests they may make (any of the matches). Empty: every request
    /// (and every opaque TCP connection).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpMatchSpec>,
}

/// Callers, by any of identity, namespace or service account.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromSpec {
    /// SPIFFE identities, exact (`spiffe://cluster.local/ns/shop/sa/web`) or
    /// with `*` standing for one whole segment (`spiffe://cluster.local/ns/shop/sa/*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^spiffe://[^/]+(/[^/]+)*$")))]
    pub identities: Vec<String>,
    /// Namespaces whose workloads may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,
    /// Service accounts whose workloads may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountRef>,
}

/// A service account; its namespace defaults to the policy's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// HTTP requests: any of the methods (empty: any) and any of the path prefixes
/// (empty: any).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchSpec {
    /// Methods such as `GET`, `POST`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[A-Z]+$")))]
    pub methods: Vec<String>,
    /// Path prefixes, matched on whole segments (`/api` matches `/api/x`, not `/apix`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^/")))]
    pub path_prefixes: Vec<String>,
}
