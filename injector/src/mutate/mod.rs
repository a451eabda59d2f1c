//! The injection decision: a pure function of the pod, its namespace and the
//! configuration. The webhook and `weft inject` both call [`mutate`].
//!
//! - `decide`: the opt-in truth table, pods never injected, Job pods.
//! - `settings`: the `config.weft.io/*` settings (configuration < namespace < pod), checked.
//! - `probes`: the app's kubelet probes: the paths the proxy lets through, the
//!   ports it cannot.
//! - `containers`: `weft-init`, the proxy, the volumes.
//! - `patch`: the JSON patch of explicit `add` operations.
//! - `quantity`: Kubernetes resource quantities.
//! - `uninject`: the reverse, for manifests.

mod containers;
mod decide;
mod patch;
mod probes;
mod quantity;
mod settings;
mod uninject;

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use weft_api::Identity;
use weft_api::consts::{INJECTED_BY_ANNOTATION, PROXY_ADMIN_PORT, inject};

use crate::config::InjectConfig;

pub use decide::is_injected;
pub use uninject::uninject;

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

/// Checks the per-pod settings of a configuration as admission would read
/// them for a pod and namespace without annotations: the message names the
/// first bad configuration key (for `weft install`, before anything is
/// applied).
pub fn check_config(config: &InjectConfig) -> Result<(), String> {
    let namespace = NamespaceInfo {
        name: "default".to_owned(),
        labels: Default::default(),
        annotations: Default::default(),
    };
    settings::read(&Pod::default(), &namespace, config)?;
    settings::init_resources(config)?;
    Ok(())
}

/// Decides whether and how to inject `pod`, created in `namespace`.
///
/// The namespace's name is `namespace.name`, or the pod's own
/// `metadata.namespace` when that is empty, or `default`.
pub fn mutate(pod: &Pod, namespace: &NamespaceInfo, config: &InjectConfig) -> Decision {
    let ns_name = [
        namespace.name.as_str(),
        pod.metadata.namespace.as_deref().unwrap_or(""),
    ]
    .into_iter()
    .find(|n| !n.is_empty())
    .unwrap_or("default");
    if let Err(reason) = decide::opt_in(pod, ns_name, namespace, config) {
        let patch = match reason {
            SkipReason::InvalidValue { .. } => skip_annotation(pod, &reason),
            _ => None,
        };
        return Decision::Skip(Skipped { reason, patch });
    }
    if decide::uses_host_network(pod) {
        let reason = SkipReason::HostNetwork;
        return Decision::Skip(Skipped {
            patch: skip_annotation(pod, &reason),
            reason,
        });
    }
    match additions(pod, ns_name, namespace, config).and_then(|a| patch::build(pod, &a)) {
        Ok(patch) => Decision::Inject(patch),
        Err(message) => Decision::Deny(message),
    }
}

/// A patch that only records why the pod was skipped.
fn skip_annotation(pod: &Pod, reason: &SkipReason) -> Option<json_patch::Patch> {
    let additions = patch::Additions {
        annotations: BTreeMap::from([(
            inject::SKIPPED_ANNOTATION.to_owned(),
            reason.label().to_owned(),
        )]),
        ..patch::Additions::default()
    };
    patch::build(pod, &additions).ok()
}

/// Everything the injector adds to this pod, or why it cannot.
fn additions(
    pod: &Pod,
    ns_name: &str,
    namespace: &NamespaceInfo,
    config: &InjectConfig,
) -> Result<patch::Additions, String> {
    let spec = pod
        .spec
        .as_ref()
        .ok_or("the pod has no spec; nothing to inject into")?;
    if config.trust_anchors_pem.trim().is_empty() {
        return Err(
            "the injector has no trust anchors to give the proxy; configure the \
            weft-trust-anchors bundle (weft inject: --trust-anchors FILE)"
                .to_owned(),
        );
    }
    for volume in spec.volumes.iter().flatten() {
        if volume.name == inject::TOKEN_VOLUME || volume.name == inject::INIT_RUN_VOLUME {
            return Err(format!(
                "the pod already has a volume named {:?}, which the mesh adds; rename that volume",
                volume.name
            ));
        }
    }
    let service_account = spec
        .service_account_name
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let identity = Identity::new(&config.trust_domain, ns_name, service_account).map_err(|e| {
        format!("cannot give this pod a mesh identity (namespace {ns_name}, service account {service_account}): {e}")
    })?;
    let controller_identity = weft_api::control::controller_identity(&config.trust_domain)
        .map_err(|e| format!("the injector's trust domain is invalid: {e}"))?;
    let settings = settings::read(pod, namespace, config)?;
    let init_resources = settings::init_resources(config)?;

    let mut skip_inbound = settings.skip_inbound_ports.clone();
    let bypass = if config.skip_probe_ports {
        probes::probe_ports(spec)
    } else {
        probes::bypass_ports(spec)
    };
    skip_inbound.extend(
        bypass
            .into_iter()
            .map(|p| weft_proxy::iptables::PortRange { first: p, last: p }),
    );
    skip_inbound.sort();
    skip_inbound.dedup();
    let native = config.native_sidecars;
    let init = containers::init_container(
        config,
        &settings,
        &settings::ports_text(&skip_inbound),
        init_resources,
    );
    let proxy = containers::proxy_container(
        config,
        &containers::ProxyInputs {
            identity: &identity,
            controller_identity: &controller_identity,
            settings: &settings,
            shutdown_endpoint: !native && decide::is_job_pod(pod),
            native,
            inbound_ports: containers::app_ports(spec),
            probe_paths: probes::probe_paths(spec).into_iter().collect(),
            trace_service: containers::trace_service(pod, service_account),
        },
    );
    let mut annotations =
        BTreeMap::from([(INJECTED_BY_ANNOTATION.to_owned(), config.version.clone())]);
    let existing = pod.metadata.annotations.clone().unwrap_or_default();
    for (key, value) in prometheus_annotations() {
        if !existing.contains_key(key) && !prometheus_present(&existing) {
            annotations.insert(key.to_owned(), value);
        }
    }
    if !native
        && !existing.contains_key(DEFAULT_CONTAINER_ANNOTATION)
        && let Some(first) = spec.containers.first()
    {
        annotations.insert(DEFAULT_CONTAINER_ANNOTATION.to_owned(), first.name.clone());
    }
    let (init_containers, container) = if native {
        (vec![init, proxy], None)
    } else {
        (vec![init], Some(proxy))
    };
    Ok(patch::Additions {
        init_containers,
        container,
        volumes: containers::volumes(config),
        annotations,
    })
}

/// `kubectl logs` and `exec` pick this container when none is named (the
/// classic proxy comes first otherwise).
const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// The scrape annotations an injected pod gets when it has none of its own.
fn prometheus_annotations() -> [(&'static str, String); 3] {
    use inject::prometheus;
    [
        (prometheus::SCRAPE, "true".to_owned()),
        (prometheus::PORT, PROXY_ADMIN_PORT.to_string()),
        (prometheus::PATH, "/metrics".to_owned()),
    ]
}

fn prometheus_present(annotations: &BTreeMap<String, String>) -> bool {
    use inject::prometheus;
    [prometheus::SCRAPE, prometheus::PORT, prometheus::PATH]
        .iter()
        .any(|k| annotations.contains_key(*k))
}
