//! The status both policy kinds share: standard `metav1.Condition`s.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The status of a policy object, written by the controller (server-side apply,
/// field manager `weft-controller`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// `Accepted` (the object is valid and in force) and `ResolvedRefs` (its
    /// target exists), each with a reason and a message naming the field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Condition types and reasons (Gateway API's vocabulary).
pub mod condition {
    /// The object is valid and its policy is in force.
    pub const ACCEPTED: &str = "Accepted";
    /// The object's references (its target Service) exist.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";

    /// Reason of `Accepted=True`.
    pub const REASON_ACCEPTED: &str = "Accepted";
    /// Reason of `Accepted=False`: a field is invalid (the message names it);
    /// the last good policy stays in force.
    pub const REASON_INVALID: &str = "Invalid";
    /// Reason of `ResolvedRefs=True`.
    pub const REASON_RESOLVED_REFS: &str = "ResolvedRefs";
    /// Reason of `ResolvedRefs=False`: the target does not exist.
    pub const REASON_TARGET_NOT_FOUND: &str = "TargetNotFound";
    /// Reason of a route's `ResolvedRefs=False`: a backendRef names no Service
    /// (that backend gets no endpoints; the route stays in force).
    pub const REASON_BACKEND_NOT_FOUND: &str = "BackendNotFound";
    /// Reason of a route's `Accepted=False` for a parent that does not exist.
    pub const REASON_NO_MATCHING_PARENT: &str = "NoMatchingParent";
    /// Reason of a policy's `Accepted=False`: an older policy of the same kind
    /// targets the same object and is the one in force (GEP-713).
    pub const REASON_CONFLICTED: &str = "Conflicted";
}
