//! The inbound side of the index: AuthorizationPolicies and Namespaces in,
//! one `watch` of an [`InboundPolicy`] per subscribed (pod, port) out, and
//! [`Index::policy_audit`], the view `weft audit policy` prints.
//!
//! A policy (in force: its last good version) protects a port of a pod of its
//! namespace when
//! - its target selects the pod: `targetRef` a Service whose `spec.selector`
//!   (non-empty) the pod's labels satisfy, or `podSelector` matching them;
//! - and its `ports` name the port (empty: every port): a number is the
//!   container port, a name a container port's name; for a Service target a
//!   Service port (by number or name) also names the container port its
//!   `targetPort` resolves to on that pod.
//!
//! The port's [`InboundPolicy`]: every authorization of every policy that
//! protects it (each named after its policy), and the default mode: the pod's
//! `config.weft.io/default-inbound-policy` annotation, else its namespace's,
//! else [`IndexSettings::default_inbound_mode`](super::IndexSettings). Once
//! one policy protects a port, the mode becomes `deny` (unless it is `audit`,
//! which stays): only the callers the policies name get in (as in Istio).
//!
//! Subscriptions are recomputed at [`Index::publish`] and a new policy is sent
//! only when it differs from the one the receiver holds.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::api::core::v1::Namespace;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use weft_api::{
    Identity,
    consts::inject::annotation::DEFAULT_INBOUND_POLICY,
    crd::condition,
    policy::{
        Authorization, AuthorizationPolicy, InboundMode, InboundPolicy, InboundRequest,
        PolicyTarget, PortRef, Principal, ProtocolHint,
    },
};

use super::{
    ChangedAt, Index, Key, Kind, ObjectStatus, PodInfo, ServiceInfo, StatusCondition, TargetPort,
    accepted, next_entry,
};

/// A subscribed workload port: ((namespace, pod), port).
pub(super) type InboundKey = (Key, u16);

/// A workload `Inbound.Watch` names that the index does not know: no pod
/// `<namespace>/<name>` (yet), or not of that form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "workload {workload:?} is not known to the controller: it names no pod as \
     <namespace>/<pod name> (a pod that has just started may not be seen yet; retry)"
)]
pub struct UnknownWorkload {
    pub workload: String,
}

/// What `weft audit policy` shows: who may reach each Service port, and what
/// to fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAudit {
    pub services: Vec<ServiceAccess>,
    /// Most severe first.
    pub findings: Vec<PolicyFinding>,
}

/// One Service and its ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccess {
    pub namespace: String,
    pub name: String,
    /// The pods it selects. None, as a route's parent: no finding is made
    /// about it (its traffic goes to the route's backends, each audited itself).
    pub pods: usize,
    pub ports: Vec<PortAccess>,
}

/// Who may reach one Service port (on the pods behind it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortAccess {
    /// The Service port.
    pub port: u16,
    /// The mode of requests no authorization allows (the most permissive of
    /// the pods behind the port, when they differ).
    #[serde(serialize_with = "mode_as_str")]
    pub default_mode: InboundMode,
    /// The AuthorizationPolicies protecting the port.
    pub policies: Vec<String>,
    /// The callers let in, readable: identities and patterns, `namespace
    /// shop`, `service account shop/web`, `any mesh identity`, `plaintext`
    /// (with ` (HTTP: ...)` when only some requests are allowed).
    pub allowed: Vec<String>,
    /// Whether a caller without a mesh identity gets in (for some requests).
    pub plaintext_allowed: bool,
}

/// Something `weft audit policy` flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyFinding {
    pub severity: Severity,
    pub kind: FindingKind,
    /// `Service shop/checkout` or `AuthorizationPolicy shop/x`.
    pub object: String,
    /// What is wrong and what to do.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Severity {
    High,
    Medium,
    Low,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum FindingKind {
    /// A Service no AuthorizationPolicy protects.
    NoPolicy,
    /// A policy, or a port's default mode, lets plaintext callers in.
    AllowsPlaintext,
    /// A policy that protects nothing (missing Service, no pod selected, a
    /// port no pod has).
    MatchesNothing,
    /// A policy that does not convert (its last good version, if any, stays).
    Invalid,
}

fn mode_as_str<S: serde::Serializer>(mode: &InboundMode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(mode.as_str())
}

/// The mode a `config.weft.io/default-inbound-policy` annotation names; a
/// value that names none is ignored (the injector refuses such pods).
pub(super) fn mode_annotation(
    annotations: Option<&BTreeMap<String, String>>,
    key: &Key,
) -> Option<InboundMode> {
    let value = annotations?.get(DEFAULT_INBOUND_POLICY)?;
    match value.parse() {
        Ok(mode) => Some(mode),
        Err(problem) => {
            tracing::debug!(
                namespace = %key.0,
                name = %key.1,
                annotation = DEFAULT_INBOUND_POLICY,
                %problem,
                "annotation ignored"
            );
            None
        }
    }
}

/// How permissive a mode is: smaller lets more in.
fn openness(mode: InboundMode) -> u8 {
    match mode {
        InboundMode::AllowAll => 0,
        InboundMode::Audit => 1,
        InboundMode::MeshOnly => 2,
        InboundMode::Deny => 3,
    }
}

fn parse_workload(workload: &str) -> Result<Key, UnknownWorkload> {
    match workload.split_once('/') {
        Some((ns, pod)) if !ns.is_empty() && !pod.is_empty() && !pod.contains('/') => {
            Ok((ns.to_owned(), pod.to_owned()))
        }
        _ => Err(UnknownWorkload {
            workload: workload.to_owned(),
        }),
    }
}

impl Index {
    /// A receiver of the inbound policy of `request.port` of the pod
    /// `request.workload` (`<namespace>/<pod name>`, both modes). It holds
    /// the current policy at once; later changes arrive at [`Index::publish`].
    pub fn subscribe_inbound(
        &mut self,
        request: &InboundRequest,
    ) -> Result<watch::Receiver<Arc<InboundPolicy>>, UnknownWorkload> {
        self.subscribe_inbound_timed(request).map(|(rx, _)| rx)
    }

    /// As [`Index::subscribe_inbound`], with when the change behind each
    /// update reached the index.
    pub fn subscribe_inbound_timed(
        &mut self,
        request: &InboundRequest,
    ) -> Result<(watch::Receiver<Arc<InboundPolicy>>, ChangedAt), UnknownWorkload> {
        let pod = parse_workload(&request.workload)?;
        let key = (pod, request.port);
        if let Some((tx, changed_at)) = self.inbound_subscriptions.get(&key) {
            return Ok((tx.subscribe(), changed_at.clone()));
        }
        let policy = self
            .inbound_policy(&key.0, request.port)
            .ok_or_else(|| UnknownWorkload {
                workload: request.workload.clone(),
            })?;
        let (tx, rx) = watch::channel(Arc::new(policy));
        let changed_at = ChangedAt::default();
        self.inbound_subscriptions
            .insert(key, (tx, changed_at.clone()));
        Ok((rx, changed_at))
    }

    /// The identity of the workload's pod: its service account in the trust
    /// domain (whether or not the pod is injected yet). `Inbound.Watch` lets
    /// only that identity watch the pod's policy.
    pub fn workload_identity(&self, workload: &str) -> Result<Identity, UnknownWorkload> {
        let unknown = || UnknownWorkload {
            workload: workload.to_owned(),
        };
        let key = parse_workload(workload)?;
        let pod = self.pods.get(&key).ok_or_else(unknown)?;
        Identity::new(&self.settings.trust_domain, &key.0, &pod.service_account)
            .map_err(|_| unknown())
    }

    /// Sends each watched workload port whose policy changed its new policy;
    /// drops those nobody watches. A pod that went away keeps its last policy
    /// (its proxy is going away too).
    pub(super) fn publish_inbound(&mut self, cause: Instant) {
        self.inbound_subscriptions
            .retain(|_, (tx, _)| tx.receiver_count() > 0);
        for ((pod, port), (tx, changed_at)) in &self.inbound_subscriptions {
            let Some(policy) = self.inbound_policy(pod, *port) else {
                continue;
            };
            if **tx.borrow() != policy {
                changed_at.set(cause);
                tx.send_replace(Arc::new(policy));
            }
        }
    }

    /// The policy of a pod's port; `None`: no such pod.
    fn inbound_policy(&self, key: &Key, port: u16) -> Option<InboundPolicy> {
        let pod = self.pods.get(key)?;
        let protecting = self.protecting(&key.0, pod, port);
        let mut mode = self.base_mode(&key.0, pod);
        if !protecting.is_empty() && mode != InboundMode::Audit {
            mode = InboundMode::Deny;
        }
        Some(InboundPolicy {
            protocol: ProtocolHint::Unknown,
            default_mode: mode,
            authorizations: protecting
                .iter()
                .flat_map(|p| p.authorizations.iter().cloned())
                .collect(),
        })
    }

    /// The pod's annotation, else its namespace's, else the mesh default.
    fn base_mode(&self, namespace: &str, pod: &PodInfo) -> InboundMode {
        pod.default_inbound
            .or_else(|| self.namespace_mode(namespace))
            .unwrap_or(self.settings.default_inbound_mode)
    }

    fn namespace_mode(&self, namespace: &str) -> Option<InboundMode> {
        self.namespaces.get(namespace).copied().flatten()
    }

    /// The policies in force protecting a port of a pod of `namespace`, by name.
    fn protecting(&self, namespace: &str, pod: &PodInfo, port: u16) -> Vec<&AuthorizationPolicy> {
        self.authorization
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .filter_map(|(_, e)| e.in_force.as_ref())
            .filter(|p| self.selects(p, pod) && self.port_matches(p, pod, port))
            .collect()
    }

    /// Whether a policy's target picks the pod (of the policy's namespace).
    fn selects(&self, policy: &AuthorizationPolicy, pod: &PodInfo) -> bool {
        match &policy.target {
            PolicyTarget::Service(name) => self
                .services
                .get(&(policy.namespace.clone(), name.clone()))
                .is_some_and(|s| service_selects(s, pod)),
            PolicyTarget::Pods(selector) => selector.matches(&pod.labels),
        }
    }

    fn target_service(&self, policy: &AuthorizationPolicy) -> Option<&ServiceInfo> {
        match &policy.target {
            PolicyTarget::Service(name) => {
                self.services.get(&(policy.namespace.clone(), name.clone()))
            }
            PolicyTarget::Pods(_) => None,
        }
    }

    /// Whether a policy's `ports` name container port `port` of the pod.
    fn port_matches(&self, policy: &AuthorizationPolicy, pod: &PodInfo, port: u16) -> bool {
        if policy.ports.is_empty() {
            return true;
        }
        let service = self.target_service(policy);
        policy.ports.iter().any(|wanted| {
            let direct = match wanted {
                PortRef::Number(n) => *n == port,
                PortRef::Name(name) => pod
                    .container_ports
                    .iter()
                    .any(|(n, number)| n == name && *number == port),
            };
            direct
                || service.is_some_and(|s| {
                    s.ports.iter().any(|sp| {
                        let named = match wanted {
                            PortRef::Number(n) => sp.port == *n,
                            PortRef::Name(name) => sp.name == *name,
                        };
                        named && resolve_target(&sp.target, pod) == Some(port)
                    })
                })
        })
    }

    /// The status of every AuthorizationPolicy: `Accepted` (or `Invalid`
    /// naming the field) and, for a Service target, `ResolvedRefs`.
    pub(super) fn authorization_statuses(&self) -> Vec<ObjectStatus> {
        let mut out = Vec::new();
        for ((namespace, name), entry) in &self.authorization {
            let mut conditions = vec![accepted(entry)];
            if let Some(policy) = &entry.in_force {
                conditions.push(match &policy.target {
                    PolicyTarget::Service(service)
                        if !self
                            .services
                            .contains_key(&(namespace.clone(), service.clone())) =>
                    {
                        StatusCondition {
                            type_: condition::RESOLVED_REFS,
                            status: false,
                            reason: condition::REASON_TARGET_NOT_FOUND,
                            message: format!(
                                "spec.targetRef.name: {service:?} names no Service in namespace \
                                 {namespace}; it protects nothing until the Service exists"
                            ),
                        }
                    }
                    PolicyTarget::Service(service) => StatusCondition {
                        type_: condition::RESOLVED_REFS,
                        status: true,
                        reason: condition::REASON_RESOLVED_REFS,
                        message: format!("Service {namespace}/{service} exists"),
                    },
                    PolicyTarget::Pods(_) => StatusCondition {
                        type_: condition::RESOLVED_REFS,
                        status: true,
                        reason: condition::REASON_RESOLVED_REFS,
                        message: "podSelector picks pods by their labels".into(),
                    },
                });
            }
            out.push(ObjectStatus::policy(
                Kind::AuthorizationPolicy,
                namespace,
                name,
                entry.generation,
                conditions,
            ));
        }
        out
    }

    pub(super) fn apply_authorization(
        &mut self,
        key: Key,
        policy: &weft_api::crd::AuthorizationPolicy,
    ) {
        let converted = AuthorizationPolicy::try_from(policy);
        let entry = self.authorization.remove(&key);
        let entry = next_entry(entry, &policy.metadata, Vec::new(), converted);
        self.authorization.insert(key, entry);
    }

    pub(super) fn apply_namespace(&mut self, namespace: &Namespace) {
        let name = namespace.metadata.name.clone().unwrap_or_default();
        let key = (String::new(), name.clone());
        let mode = mode_annotation(namespace.metadata.annotations.as_ref(), &key);
        self.namespaces.insert(name, mode);
    }

    /// Who may reach each Service port, and the findings of `weft audit policy`.
    pub fn policy_audit(&self) -> PolicyAudit {
        let mut services = Vec::new();
        let mut findings = Vec::new();
        let mut keys: Vec<&Key> = self.services.keys().collect();
        keys.sort();
        for key in keys {
            let Some(service) = self.services.get(key) else {
                continue;
            };
            let access = self.service_access(key, service);
            // A route's parent with no pods of its own: its traffic goes to
            // the route's backends, each audited itself.
            let route_parent = access.pods == 0
                && self.routes.iter().any(|(route, entry)| {
                    entry.parents.iter().any(|p| {
                        p.name == key.1
                            && p.namespace.as_deref().unwrap_or(&route.namespace) == key.0
                    })
                });
            if !route_parent {
                findings.extend(service_findings(key, &access));
            }
            services.push(access);
        }
        for ((namespace, name), entry) in &self.authorization {
            let object = format!("AuthorizationPolicy {namespace}/{name}");
            if entry.error.is_some() {
                findings.push(PolicyFinding {
                    severity: Severity::High,
                    kind: FindingKind::Invalid,
                    object: object.clone(),
                    message: format!("{}; fix the field", accepted(entry).message),
                });
            }
            let Some(policy) = &entry.in_force else {
                continue;
            };
            if policy.authorizations.iter().any(|a| a.allow_plaintext) {
                findings.push(PolicyFinding {
                    severity: Severity::Medium,
                    kind: FindingKind::AllowsPlaintext,
                    object: object.clone(),
                    message: "allows callers without a mesh identity (spec.allowPlaintext: \
                              true): they are not authenticated; mesh those callers and remove \
                              allowPlaintext"
                        .into(),
                });
            }
            for message in self.matches_nothing(policy) {
                findings.push(PolicyFinding {
                    severity: Severity::Medium,
                    kind: FindingKind::MatchesNothing,
                    object: object.clone(),
                    message,
                });
            }
        }
        findings
            .sort_by(|a, b| (a.severity, &a.object, a.kind).cmp(&(b.severity, &b.object, b.kind)));
        PolicyAudit { services, findings }
    }

    fn service_access(&self, key: &Key, service: &ServiceInfo) -> ServiceAccess {
        let (namespace, name) = key;
        let pods: Vec<&PodInfo> = self.pods_of(namespace, |p| service_selects(service, p));
        let ports = service
            .ports
            .iter()
            .map(|sp| {
                let mut policies: BTreeMap<&str, &AuthorizationPolicy> = BTreeMap::new();
                let mut modes = Vec::new();
                for pod in &pods {
                    let Some(port) = resolve_target(&sp.target, pod) else {
                        continue;
                    };
                    let protecting = self.protecting(namespace, pod, port);
                    let mut mode = self.base_mode(namespace, pod);
                    if !protecting.is_empty() && mode != InboundMode::Audit {
                        mode = InboundMode::Deny;
                    }
                    modes.push(mode);
                    policies.extend(protecting.into_iter().map(|p| (p.name.as_str(), p)));
                }
                if modes.is_empty() {
                    // No pod (yet): the policies naming this Service and port.
                    for ((ns, _), entry) in &self.authorization {
                        let Some(policy) = &entry.in_force else {
                            continue;
                        };
                        let names_port = policy.ports.is_empty()
                            || policy.ports.iter().any(|p| match p {
                                PortRef::Number(n) => *n == sp.port,
                                PortRef::Name(n) => *n == sp.name,
                            });
                        if ns == namespace
                            && policy.target == PolicyTarget::Service(name.clone())
                            && names_port
                        {
                            policies.insert(policy.name.as_str(), policy);
                        }
                    }
                    let mut mode = self
                        .namespace_mode(namespace)
                        .unwrap_or(self.settings.default_inbound_mode);
                    if !policies.is_empty() && mode != InboundMode::Audit {
                        mode = InboundMode::Deny;
                    }
                    modes.push(mode);
                }
                let default_mode = modes
                    .into_iter()
                    .min_by_key(|m| openness(*m))
                    .unwrap_or(self.settings.default_inbound_mode);
                let authorizations: Vec<&Authorization> = policies
                    .values()
                    .flat_map(|p| p.authorizations.iter())
                    .collect();
                let mut allowed: BTreeSet<String> = BTreeSet::new();
                match default_mode {
                    InboundMode::AllowAll | InboundMode::Audit => {
                        allowed.insert("any mesh identity".into());
                        allowed.insert("plaintext".into());
                    }
                    InboundMode::MeshOnly => {
                        allowed.insert("any mesh identity".into());
                    }
                    InboundMode::Deny => {}
                }
                for authz in &authorizations {
                    allowed.extend(describe(authz));
                }
                PortAccess {
                    port: sp.port,
                    default_mode,
                    policies: policies.keys().map(|n| (*n).to_owned()).collect(),
                    allowed: allowed.into_iter().collect(),
                    plaintext_allowed: matches!(
                        default_mode,
                        InboundMode::AllowAll | InboundMode::Audit
                    ) || authorizations.iter().any(|a| a.allow_plaintext),
                }
            })
            .collect();
        ServiceAccess {
            namespace: namespace.clone(),
            name: name.clone(),
            pods: pods.len(),
            ports,
        }
    }

    /// The pods of a namespace that `keep` accepts, by name.
    fn pods_of(&self, namespace: &str, keep: impl Fn(&PodInfo) -> bool) -> Vec<&PodInfo> {
        let mut pods: Vec<(&Key, &PodInfo)> = self
            .pods
            .iter()
            .filter(|((ns, _), p)| ns == namespace && keep(p))
            .collect();
        pods.sort_by_key(|(k, _)| *k);
        pods.into_iter().map(|(_, p)| p).collect()
    }

    /// Why a policy in force protects nothing, each with what to do.
    fn matches_nothing(&self, policy: &AuthorizationPolicy) -> Vec<String> {
        let namespace = &policy.namespace;
        let service = self.target_service(policy);
        match &policy.target {
            PolicyTarget::Service(name) => match service {
                None => {
                    return vec![format!(
                        "spec.targetRef.name: Service {namespace}/{name} does not exist, so the \
                         policy protects nothing; create the Service or fix the name"
                    )];
                }
                Some(s) if s.selector.is_none() => {
                    return vec![format!(
                        "spec.targetRef.name: Service {namespace}/{name} has no selector, so it \
                         names no pods and the policy protects nothing; target the pods with a \
                         podSelector instead"
                    )];
                }
                Some(_) => {}
            },
            PolicyTarget::Pods(_) => {}
        }
        let pods = self.pods_of(namespace, |p| self.selects(policy, p));
        if pods.is_empty() {
            let what = match &policy.target {
                PolicyTarget::Service(name) => format!("Service {namespace}/{name}'s selector"),
                PolicyTarget::Pods(_) => "spec.podSelector".to_owned(),
            };
            return vec![format!(
                "{what} matches no pod of namespace {namespace}, so the policy protects nothing \
                 (yet); check the labels"
            )];
        }
        let declared = pods.iter().any(|p| !p.container_ports.is_empty());
        let mut out = Vec::new();
        for (i, wanted) in policy.ports.iter().enumerate() {
            let on_service = service.is_some_and(|s| {
                s.ports.iter().any(|sp| match wanted {
                    PortRef::Number(n) => sp.port == *n,
                    PortRef::Name(n) => sp.name == *n,
                })
            });
            let on_pod = pods.iter().any(|p| {
                p.container_ports.iter().any(|(name, number)| match wanted {
                    PortRef::Number(n) => number == n,
                    PortRef::Name(n) => name == n,
                })
            });
            // A number may name a port the containers do not declare.
            let unknowable = matches!(wanted, PortRef::Number(_)) && !declared;
            if !on_service && !on_pod && !unknowable {
                let shown = match wanted {
                    PortRef::Number(n) => n.to_string(),
                    PortRef::Name(n) => format!("{n:?}"),
                };
                out.push(format!(
                    "spec.ports[{i}]: {shown} is no container port of the {} pod(s) the policy \
                     selects{}; name a port they have (by number or container port name)",
                    pods.len(),
                    if service.is_some() {
                        " and no port of its Service"
                    } else {
                        ""
                    }
                ));
            }
        }
        out
    }
}

/// The findings about one Service's ports.
fn service_findings(key: &Key, access: &ServiceAccess) -> Vec<PolicyFinding> {
    let object = format!("Service {}/{}", key.0, key.1);
    let mut out = Vec::new();
    if access.ports.iter().all(|p| p.policies.is_empty()) {
        let plaintext = access.ports.iter().any(|p| p.plaintext_allowed);
        let modes: BTreeSet<&str> = access
            .ports
            .iter()
            .map(|p| p.default_mode.as_str())
            .collect();
        let modes: Vec<&str> = modes.into_iter().collect();
        out.push(PolicyFinding {
            severity: if plaintext {
                Severity::High
            } else {
                Severity::Medium
            },
            kind: FindingKind::NoPolicy,
            object,
            message: format!(
                "no AuthorizationPolicy protects it: every caller the default mode ({}) lets in \
                 reaches it{}; add an AuthorizationPolicy with targetRef {} listing its callers",
                modes.join(", "),
                if plaintext {
                    ", plaintext callers too"
                } else {
                    ""
                },
                key.1
            ),
        });
        return out;
    }
    for port in &access.ports {
        if port.policies.is_empty()
            && matches!(
                port.default_mode,
                InboundMode::AllowAll | InboundMode::Audit
            )
        {
            out.push(PolicyFinding {
                severity: if port.default_mode == InboundMode::AllowAll {
                    Severity::High
                } else {
                    Severity::Medium
                },
                kind: FindingKind::AllowsPlaintext,
                object: object.clone(),
                message: format!(
                    "port {} is protected by no policy and its default mode {} lets plaintext \
                     callers in; add it to a policy's ports (or leave ports out), or set \
                     config.weft.io/default-inbound-policy to mesh-only or deny",
                    port.port, port.default_mode
                ),
            });
        }
    }
    out
}

fn service_selects(service: &ServiceInfo, pod: &PodInfo) -> bool {
    service
        .selector
        .as_ref()
        .is_some_and(|sel| sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v)))
}

/// The container port a Service port's `targetPort` is on this pod.
fn resolve_target(target: &TargetPort, pod: &PodInfo) -> Option<u16> {
    match target {
        TargetPort::Number(n) => Some(*n),
        TargetPort::Name(name) => pod
            .container_ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, number)| *number),
    }
}

/// The callers an authorization lets in, readable.
fn describe(authz: &Authorization) -> Vec<String> {
    let mut callers: Vec<String> = if authz.from.is_empty() {
        vec!["any mesh identity".into()]
    } else {
        authz
            .from
            .iter()
            .map(|p| match p {
                Principal::Identity(pattern) => pattern.to_string(),
                Principal::Namespace(ns) => format!("namespace {ns}"),
                Principal::ServiceAccount { namespace, name } => {
                    format!("service account {namespace}/{name}")
                }
            })
            .collect()
    };
    if authz.allow_plaintext {
        callers.push("plaintext".into());
    }
    if authz.http.is_empty() {
        return callers;
    }
    let requests: Vec<String> = authz
        .http
        .iter()
        .map(|m| {
            let methods = if m.methods.is_empty() {
                "any method".to_owned()
            } else {
                m.methods.join(",")
            };
            let paths = if m.path_prefixes.is_empty() {
                "any path".to_owned()
            } else {
                m.path_prefixes.join(",")
            };
            format!("{methods} {paths}")
        })
        .collect();
    callers
        .into_iter()
        .map(|c| format!("{c} (HTTP: {})", requests.join("; ")))
        .collect()
}
