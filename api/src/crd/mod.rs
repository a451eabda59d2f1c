//! The Kubernetes custom resources of weft's policy (`policy.weft.io/v1alpha1`),
//! behind the `k8s` feature: [`ResiliencePolicy`] and [`AuthorizationPolicy`].
//!
//! These are wire types: the controller converts them into the policy model
//! ([`crate::policy`]) with `TryFrom`, whose errors name the field
//! (`spec.retryBudget.ratio: ...`) for the object's status conditions. The CRD
//! YAML in `deploy/crds/` is generated from these types by
//! `tests/crds_generated.rs`, which fails when it is stale.
//!
//! [`gateway`]: the Gateway API `HTTPRoute` and `GRPCRoute` (only the fields weft
//! reads; not in [`crds`], users install the Gateway API from upstream), and
//! their conversion into [`MeshRoute`]s (`route_convert.rs`).

mod authorization;
mod convert;
pub mod gateway;
mod resilience;
mod route_convert;
mod schema;
mod status;

pub use authorization::{
    AuthorizationPolicy, AuthorizationPolicySpec, AuthorizationRule, FromSpec, HttpMatchSpec,
    ServiceAccountRef,
};
pub use gateway::{
    BackendReference, GrpcMethodMatch, GrpcRoute, GrpcRouteMatch, GrpcRouteRule, GrpcRouteSpec,
    HeaderMatch, HttpPathMatch, HttpRoute, HttpRouteMatch, HttpRouteRetry, HttpRouteRule,
    HttpRouteSpec, HttpRouteTimeouts, ParentReference, RouteParentStatus, RouteStatus,
    from_value_strict,
};
pub use resilience::{
    BackoffSpec, CircuitBreakerSpec, LoadBalancerAlgorithm, LoadBalancerSpec, ResiliencePolicy,
    ResiliencePolicySpec, RetryBudgetSpec, RetrySpec, TimeoutsSpec,
};
pub use route_convert::{MAX_WEIGHT, MeshRoute, MeshRule, ServiceBackend, ServiceParent};
pub use status::{PolicyStatus, condition};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Every CRD of weft, in the order `deploy/crds/kustomization.yaml` lists them.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![ResiliencePolicy::crd(), AuthorizationPolicy::crd()]
}

/// A reference to a Service in the policy's own namespace (Gateway API's
/// `LocalPolicyTargetReference`, limited to Services).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceRef {
    /// The API group of the target: `""` (the core group) for a Service.
    #[serde(default)]
    #[schemars(length(max = 0))]
    pub group: String,
    /// The kind of the target: `Service`.
    #[schemars(schema_with = "schema::service_kind")]
    pub kind: String,
    /// The name of the Service, in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

impl ServiceRef {
    /// A reference to the Service `name`.
    pub fn service(name: impl Into<String>) -> Self {
        Self {
            group: String::new(),
            kind: "Service".to_owned(),
            name: name.into(),
        }
    }
}
