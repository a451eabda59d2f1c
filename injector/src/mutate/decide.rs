//! Whether a pod is injected at all: the opt-in truth table, the pods that are
//! never injected, and what kind of pod it is (a Job's).

use k8s_openapi::api::core::v1::Pod;
use weft_api::consts::{self, INJECT_DISABLED, INJECT_ENABLED, INJECT_KEY, inject};

use super::{NamespaceInfo, SkipReason};
use crate::config::InjectConfig;

/// The pod's own opt-in or opt-out: the `weft.io/inject` annotation, or the
/// label of the same name (which a webhook's objectSelector can see); the
/// annotation wins when both are set.
fn pod_choice(pod: &Pod) -> Option<&str> {
    let meta = &pod.metadata;
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(INJECT_KEY))
        .or_else(|| meta.labels.as_ref().and_then(|l| l.get(INJECT_KEY)))
        .map(String::as_str)
}

/// `Ok` when the pod is to be injected, else why not. Checked in this order:
/// protected namespace, already injected, the pod's choice, the namespace's.
pub(super) fn opt_in(
    pod: &Pod,
    namespace: &str,
    ns: &NamespaceInfo,
    config: &InjectConfig,
) -> Result<(), SkipReason> {
    if inject::PROTECTED_NAMESPACES.contains(&namespace) || namespace == config.mesh_namespace {
        return Err(SkipReason::ProtectedNamespace);
    }
    if is_injected(pod) {
        return Err(SkipReason::AlreadyInjected);
    }
    let invalid = |value: &str| SkipReason::InvalidValue {
        key: INJECT_KEY.to_owned(),
        value: value.to_owned(),
    };
    match pod_choice(pod) {
        Some(INJECT_ENABLED) => return Ok(()),
        Some(INJECT_DISABLED) => return Err(SkipReason::PodOptedOut),
        Some(other) => return Err(invalid(other)),
        None => {}
    }
    match ns.labels.get(INJECT_KEY).map(String::as_str) {
        Some(INJECT_ENABLED) => Ok(()),
        None | Some(INJECT_DISABLED) => Err(SkipReason::NotEnabled),
        Some(other) => Err(invalid(other)),
    }
}

/// The marker annotation, or one of weft's containers already in the pod.
pub fn is_injected(pod: &Pod) -> bool {
    let marked = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(consts::INJECTED_BY_ANNOTATION));
    let ours = |name: &str| name == inject::PROXY_CONTAINER || name == inject::INIT_CONTAINER;
    marked
        || pod.spec.as_ref().is_some_and(|spec| {
            spec.containers.iter().any(|c| ours(&c.name))
                || spec.init_containers.iter().flatten().any(|c| ours(&c.name))
        })
}

/// A pod made by a Job: an owner of kind Job, or the Job controller's labels.
pub(super) fn is_job_pod(pod: &Pod) -> bool {
    let meta = &pod.metadata;
    let owned = meta
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "Job" && o.api_version.starts_with("batch/"));
    owned
        || meta
            .labels
            .as_ref()
            .is_some_and(|l| inject::JOB_NAME_LABELS.iter().any(|k| l.contains_key(*k)))
}

/// `hostNetwork: true`.
pub(super) fn uses_host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}
