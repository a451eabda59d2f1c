//! The injection decision: a pure function of the pod, its namespace and the
//! configuration. The webhook and `weft inject` both call [`mutate`].

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;

use crate::config::InjectConfig;

/// The namespace a pod is created in, as far as injection cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// What to do with a pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Inject: this patch, applied to the pod as it was given, meshes it.
    Inject(json_patch::Patch),
    /// Leave the pod unmeshed, for this reason.
    Skip(Skipped),
    /// Refuse the pod, with a message for its owner that says what to change.
    Deny(String),
}

/// A pod left unmeshed.
#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    pub reason: SkipReason,
    /// A patch that records the reason on the pod (an annotation), where one is
    /// due (for example a hostNetwork pod in an opted-in namespace); nothing else.
    pub patch: Option<json_patch::Patch>,
}

/// Why a pod was not injected. [`SkipReason::label`] is the metric label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Neither the namespace nor the pod opted in.
    NotEnabled,
    /// The pod's `weft.io/inject: disabled` annotation.
    PodOptedOut,
    /// `kube-system`, `kube-public`, `kube-node-lease` or the mesh namespace.
    ProtectedNamespace,
    /// `hostNetwork: true`: the pod shares the node's network namespace.
    HostNetwork,
    /// The pod already carries the proxy (`weft.io/injected-by`).
    AlreadyInjected,
    /// An annotation or label whose value is not understood: `key`, `value`.
    InvalidValue { key: String, value: String },
}

impl SkipReason {
    /// A short, stable label for metrics and annotations.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotEnabled => "not-enabled",
            Self::PodOptedOut => "pod-opted-out",
            Self::ProtectedNamespace => "protected-namespace",
            Self::HostNetwork => "host-network",
            Self::AlreadyInjected => "already-injected",
            Self::InvalidValue { .. } => "invalid-value",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotEnabled => f.write_str("neither the namespace nor the pod opted in"),
            Self::PodOptedOut => f.write_str("the pod opted out (weft.io/inject: disabled)"),
            Self::ProtectedNamespace => f.write_str("the namespace is never injected"),
            Self::HostNetwork => f.write_str("the pod uses the host network"),
            Self::AlreadyInjected => f.write_str("the pod is already injected"),
            Self::InvalidValue { key, value } => write!(f, "{key}: {value:?} is not understood"),
        }
    }
}

/// Decides whether and how to inject `pod`, created in `namespace`.
pub fn mutate(pod: &Pod, namespace: &NamespaceInfo, config: &InjectConfig) -> Decision {
    // Placeholder until the injection logic lands (issue 10, helper inject-core).
    let _ = (pod, namespace, config);
    Decision::Skip(Skipped {
        reason: SkipReason::NotEnabled,
        patch: None,
    })
}

/// Removes what [`mutate`] added from a pod spec (for `weft uninject`); `None`
/// when the pod was not injected.
pub fn uninject(pod: &Pod) -> Option<Pod> {
    let _ = pod;
    None
}
