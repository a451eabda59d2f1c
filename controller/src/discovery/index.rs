//! The discovery index: Kubernetes objects in, one `watch` of a full
//! [`DestinationState`] per subscribed target out. Pure: no I/O, no tasks
//! ([`SharedIndex`] adds the lock and the debounce task).
//!
//! For a Service target (`checkout.shop.svc.cluster.local:80`, `checkout:80`
//! in the caller's namespace, or the Service's cluster IP):
//! - routes: the rules of every HTTPRoute and GRPCRoute in force whose
//!   `parentRefs` name the Service (kind `Service`, a `port` restricts it),
//!   one route per (rule, match), ordered by the Gateway API's precedence
//!   ([`Precedence`]: an Exact path, then the longest path, then a method
//!   match, then the most header matches), ties by route creation time,
//!   then namespace/name, then rule and match order (the proxy takes the
//!   first route that matches);
//! - backends: every Service the rules name (weight 0: reached through
//!   routes), plus the Service itself with weight 1 when a request can fall
//!   through every route (GAMMA: unmatched requests go to the parent Service);
//!   with no route, just the Service itself;
//! - a backend's endpoints: its EndpointSlices (`kubernetes.io/service-name`),
//!   the slice port named as the Service port whose `port` is the backendRef's
//!   port (or the target's), ready endpoints only (unset `ready` counts as
//!   ready), identity the Pod's service account when the Pod carries
//!   `weft.io/injected-by`, zone from the slice;
//! - the target Service's `ResiliencePolicy` (the oldest, then by name, if
//!   several; each other one gets `Accepted=False`, reason `Conflicted`,
//!   naming the one in force): retry
//!   budget, circuit breaker (`None` without one: never eject), load balancer,
//!   connect timeout, and for routes that set none the retry policy and the
//!   request and per-try timeouts; a catch-all route `<ns>/<svc>/default`
//!   carries them for requests that match no route.
//!
//! A pod IP target gets a one-endpoint state; any other `ip:port` is
//! [`NotInMesh`]. A Service that does not exist (yet) gets a state with no
//! backends that fills in when it appears.
//!
//! Bad policy: an HTTPRoute, GRPCRoute or ResiliencePolicy that does not
//! convert keeps its last good version in force (or none, if it never had
//! one) and gets `Accepted=False` (reason `Invalid`, the message names the
//! field); a backendRef to a missing Service gets `ResolvedRefs=False`
//! (`BackendNotFound`), its backend no endpoints, and the route stays; a
//! parentRef to a Service that does not exist (or a port it lacks) gets
//! `Accepted=False` (`NoMatchingParent`) in that parent's entry only.
//!
//! The inbound side (AuthorizationPolicies, Namespaces; one `watch` of an
//! `InboundPolicy` per subscribed pod port, and the `weft audit policy` view)
//! is in [`inbound`]; an invalid AuthorizationPolicy follows the same
//! last-good rule.

mod inbound;
mod shared;

pub use inbound::{
    FindingKind, PolicyAudit, PolicyFinding, PortAccess, ServiceAccess, Severity, UnknownWorkload,
};
pub use shared::SharedIndex;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::{
        apis::meta::v1::{Condition, ObjectMeta, Time},
        util::intstr::IntOrString,
    },
};
use tokio::sync::watch;
use tokio::time::Instant;
use weft_api::{
    Identity,
    consts::INJECTED_BY_ANNOTATION,
    crd::{GrpcRoute, HttpRoute, MeshRoute, ParentReference, ResiliencePolicy, condition},
    policy::{
        Backend, DestinationState, Endpoint, InboundMode, LoadBalancer, PolicyError, Resilience,
        RetryBudget, Route, RouteTimeouts, Target,
    },
};

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// An object the index takes.
// The variants are the objects as the watchers hand them over (the shared
// interface); each is moved once into the index, so boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Resource {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Pod(Pod),
    HttpRoute(HttpRoute),
    GrpcRoute(GrpcRoute),
    Resilience(ResiliencePolicy),
    AuthorizationPolicy(weft_api::crd::AuthorizationPolicy),
    /// Cluster-scoped: its [`ObjectRef`] has an empty namespace.
    Namespace(Namespace),
}

/// The kinds of [`Resource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Pod,
    HttpRoute,
    GrpcRoute,
    Resilience,
    AuthorizationPolicy,
    Namespace,
}

impl Kind {
    /// The Kubernetes kind (`HTTPRoute`, `ResiliencePolicy`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Pod => "Pod",
            Self::HttpRoute => "HTTPRoute",
            Self::GrpcRoute => "GRPCRoute",
            Self::Resilience => "ResiliencePolicy",
            Self::AuthorizationPolicy => "AuthorizationPolicy",
            Self::Namespace => "Namespace",
        }
    }
}

/// Names one object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Service(_) => Kind::Service,
            Self::EndpointSlice(_) => Kind::EndpointSlice,
            Self::Pod(_) => Kind::Pod,
            Self::HttpRoute(_) => Kind::HttpRoute,
            Self::GrpcRoute(_) => Kind::GrpcRoute,
            Self::Resilience(_) => Kind::Resilience,
            Self::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Self::Namespace(_) => Kind::Namespace,
        }
    }

    fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::Service(o) => &o.metadata,
            Self::EndpointSlice(o) => &o.metadata,
            Self::Pod(o) => &o.metadata,
            Self::HttpRoute(o) => &o.metadata,
            Self::GrpcRoute(o) => &o.metadata,
            Self::Resilience(o) => &o.metadata,
            Self::AuthorizationPolicy(o) => &o.metadata,
            Self::Namespace(o) => &o.metadata,
        }
    }

    /// The object's kind, namespace and name.
    pub fn object_ref(&self) -> ObjectRef {
        let meta = self.metadata();
        ObjectRef {
            kind: self.kind(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// What the index needs to know about the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSettings {
    /// The trust domain of endpoint identities (`cluster.local`).
    pub trust_domain: String,
    /// The cluster's DNS domain (`cluster.local`): `svc.ns.svc.<domain>`.
    pub cluster_domain: String,
    /// The mesh-wide default inbound mode (`--default-inbound-mode`), for
    /// pods and namespaces without the `config.weft.io/default-inbound-policy`
    /// annotation. Default `allow-all`.
    pub default_inbound_mode: InboundMode,
}

impl Default for IndexSettings {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            default_inbound_mode: InboundMode::default(),
        }
    }
}

/// A target that is not the mesh's: an `ip:port` that is no Service cluster IP
/// and no known pod, or a name that cannot be a Service (`api.example.com`).
/// The gRPC server answers it with `NotFound`; the proxy passes it through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{target} is not in the mesh: it is no Service (name or cluster IP) and no known pod")]
pub struct NotInMesh {
    pub target: Target,
}

/// The status of one policy object, for its `status` (HTTPRoute/GRPCRoute:
/// one `status.parents[]` entry per Service parent, controllerName
/// [`weft_api::consts::ROUTE_CONTROLLER_NAME`]; ResiliencePolicy:
/// `status.conditions`).
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectStatus {
    pub object: ObjectRef,
    /// The `metadata.generation` of the version these conditions are about
    /// (the newest seen, valid or not).
    pub generation: Option<i64>,
    /// Routes: the Service parentRefs of the newest version. Empty for a
    /// ResiliencePolicy.
    pub parents: Vec<ParentReference>,
    /// `Accepted` and `ResolvedRefs` of the object (of a route: as far as
    /// they do not depend on the parent).
    pub conditions: Vec<StatusCondition>,
    /// Routes: the conditions for each of `parents`, in the same order: the
    /// object's, with `Accepted=False` (`NoMatchingParent`) for a parent
    /// Service that does not exist or has no such port.
    pub parent_conditions: Vec<Vec<StatusCondition>>,
}

impl ObjectStatus {
    /// The status of a policy (no parents): its conditions about `generation`.
    pub(crate) fn policy(
        kind: Kind,
        namespace: &str,
        name: &str,
        generation: Option<i64>,
        conditions: Vec<StatusCondition>,
    ) -> Self {
        Self {
            object: ObjectRef {
                kind,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            generation,
            parents: Vec::new(),
            conditions,
            parent_conditions: Vec::new(),
        }
    }
}

/// One condition, without its times (the writer adds them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCondition {
    /// [`condition::ACCEPTED`] or [`condition::RESOLVED_REFS`].
    pub type_: &'static str,
    pub status: bool,
    /// A `crd::condition::REASON_*`.
    pub reason: &'static str,
    pub message: String,
}

impl StatusCondition {
    /// As a `metav1.Condition` with this observed generation and transition time.
    pub fn to_condition(&self, generation: Option<i64>, now: Time) -> Condition {
        Condition {
            type_: self.type_.to_owned(),
            status: if self.status { "True" } else { "False" }.to_owned(),
            reason: self.reason.to_owned(),
            message: self.message.clone(),
            observed_generation: generation,
            last_transition_time: now,
        }
    }
}

type Key = (String, String);

#[derive(Debug, Clone, PartialEq)]
struct ServicePort {
    name: String,
    port: u16,
    /// Where the port goes on the pods (`targetPort`; unset: `port`).
    target: TargetPort,
}

/// A Service port's `targetPort`: a container port number or name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Debug)]
struct ServiceInfo {
    ports: Vec<ServicePort>,
    cluster_ips: Vec<IpAddr>,
    /// `spec.selector`; `None` (or empty): the Service selects no pods.
    selector: Option<BTreeMap<String, String>>,
}

#[derive(Debug)]
struct SliceInfo {
    service: String,
    /// (port name, number)
    ports: Vec<(String, u16)>,
    endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug)]
struct SliceEndpoint {
    addrs: Vec<IpAddr>,
    ready: bool,
    /// The Pod (same namespace) the endpoint is.
    pod: Option<String>,
    zone: Option<String>,
}

#[derive(Debug)]
struct PodInfo {
    service_account: String,
    injected: bool,
    ips: Vec<IpAddr>,
    labels: BTreeMap<String, String>,
    /// `config.weft.io/default-inbound-policy`, when it names a mode.
    default_inbound: Option<InboundMode>,
    /// Container ports: (name, may be empty; number).
    container_ports: Vec<(String, u16)>,
}

#[derive(Debug)]
struct PolicyEntry<T> {
    /// Creation time (seconds), for ordering.
    created: i64,
    generation: Option<i64>,
    /// The Service parentRefs of the newest version (routes).
    parents: Vec<ParentReference>,
    /// The last good version.
    in_force: Option<T>,
    /// Why the newest version is not in force.
    error: Option<PolicyError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Resolved {
    Service {
        namespace: String,
        name: String,
        port: u16,
    },
    Pod {
        namespace: String,
        name: String,
        addr: SocketAddr,
    },
}

struct Subscription {
    target: Target,
    resolved: Resolved,
    tx: watch::Sender<Arc<DestinationState>>,
    changed_at: ChangedAt,
}

/// When the change behind a subscription's latest update reached the index
/// (the first change of the burst that [`Index::publish`] sent): what the
/// services measure push latency from. `None` until the first update (the
/// state a subscription starts with is not a push).
#[derive(Clone, Debug, Default)]
pub struct ChangedAt(Arc<Mutex<Option<Instant>>>);

impl ChangedAt {
    fn set(&self, at: Instant) {
        // A poisoned lock only means a panic elsewhere; an Instant is whole.
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(at);
    }

    /// When the change behind the latest update reached the index.
    pub fn get(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a state holds besides its version and target.
#[derive(Debug, Clone, PartialEq)]
struct Body {
    routes: Vec<Route>,
    backends: Vec<Backend>,
    retry_budget: RetryBudget,
    circuit_breaker: Option<weft_api::policy::CircuitBreaker>,
    load_balancer: LoadBalancer,
    connect_timeout: Option<std::time::Duration>,
}

impl Body {
    fn same_as(&self, state: &DestinationState) -> bool {
        self.routes == state.routes
            && self.backends == state.backends
            && self.retry_budget == state.retry_budget
            && self.circuit_breaker == state.circuit_breaker
            && self.load_balancer == state.load_balancer
            && self.connect_timeout == state.connect_timeout
    }

    fn state(&self, version: u64, target: Target) -> DestinationState {
        DestinationState {
            version,
            target,
            routes: self.routes.clone(),
            backends: self.backends.clone(),
            retry_budget: self.retry_budget,
            circuit_breaker: self.circuit_breaker,
            load_balancer: self.load_balancer,
            connect_timeout: self.connect_timeout,
        }
    }
}

/// The index. See the module docs.
pub struct Index {
    settings: IndexSettings,
    services: HashMap<Key, ServiceInfo>,
    cluster_ips: HashMap<IpAddr, Key>,
    slices: HashMap<Key, SliceInfo>,
    /// (namespace, service) -> slice names
    slices_by_service: HashMap<Key, BTreeSet<String>>,
    pods: HashMap<Key, PodInfo>,
    pod_ips: HashMap<IpAddr, Key>,
    routes: BTreeMap<ObjectRef, PolicyEntry<Arc<MeshRoute>>>,
    resilience: BTreeMap<Key, PolicyEntry<Resilience>>,
    authorization: BTreeMap<Key, PolicyEntry<weft_api::policy::AuthorizationPolicy>>,
    /// Namespace name -> its `config.weft.io/default-inbound-policy`.
    namespaces: HashMap<String, Option<InboundMode>>,
    subscriptions: HashMap<(Target, Resolved), Subscription>,
    inbound_subscriptions: HashMap<
        inbound::InboundKey,
        (
            watch::Sender<Arc<weft_api::policy::InboundPolicy>>,
            ChangedAt,
        ),
    >,
    /// The last version handed out; every new snapshot takes the next.
    version: u64,
    dirty: bool,
    /// When the first change not yet published reached the index.
    changed_at: Option<Instant>,
    last_statuses: Vec<ObjectStatus>,
    statuses_tx: watch::Sender<u64>,
}

impl Index {
    pub fn new(settings: IndexSettings) -> Self {
        Self {
            settings,
            services: HashMap::new(),
            cluster_ips: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            pods: HashMap::new(),
            pod_ips: HashMap::new(),
            routes: BTreeMap::new(),
            resilience: BTreeMap::new(),
            authorization: BTreeMap::new(),
            namespaces: HashMap::new(),
            subscriptions: HashMap::new(),
            inbound_subscriptions: HashMap::new(),
            version: 0,
            dirty: false,
            changed_at: None,
            last_statuses: Vec::new(),
            statuses_tx: watch::channel(0).0,
        }
    }

    /// Adds or replaces an object. Subscribers see it at the next [`Index::publish`].
    pub fn apply(&mut self, resource: Resource) {
        self.changed();
        let object = resource.object_ref();
        let key = (object.namespace.clone(), object.name.clone());
        match resource {
            Resource::Service(service) => self.apply_service(key, &service),
            Resource::EndpointSlice(slice) => self.apply_slice(key, slice),
            Resource::Pod(pod) => self.apply_pod(key, &pod),
            Resource::HttpRoute(route) => {
                let converted = MeshRoute::try_from(&route);
                self.apply_route(object, &route.metadata, &route.spec.parent_refs, converted);
            }
            Resource::GrpcRoute(route) => {
                let converted = MeshRoute::try_from(&route);
                self.apply_route(object, &route.metadata, &route.spec.parent_refs, converted);
            }
            Resource::Resilience(policy) => {
                let converted = Resilience::try_from(&policy.spec);
                let entry = self.resilience.remove(&key);
                let entry = next_entry(entry, &policy.metadata, Vec::new(), converted);
                self.resilience.insert(key, entry);
            }
            Resource::AuthorizationPolicy(policy) => self.apply_authorization(key, &policy),
            Resource::Namespace(namespace) => self.apply_namespace(&namespace),
        }
    }

    /// Removes an object (its last good version too).
    pub fn delete(&mut self, object: &ObjectRef) {
        self.changed();
        let key = (object.namespace.clone(), object.name.clone());
        match object.kind {
            Kind::Service => self.remove_service(&key),
            Kind::EndpointSlice => self.remove_slice(&key),
            Kind::Pod => self.remove_pod(&key),
            Kind::HttpRoute | Kind::GrpcRoute => {
                self.routes.remove(object);
            }
            Kind::Resilience => {
                self.resilience.remove(&key);
            }
            Kind::AuthorizationPolicy => {
                self.authorization.remove(&key);
            }
            Kind::Namespace => {
                self.namespaces.remove(&object.name);
            }
        }
    }

    /// Replaces every object of `kind` with `all` (a watcher's relist, a
    /// reload of the policy directory). Objects in `all` of another kind are
    /// applied too.
    pub fn reset(&mut self, kind: Kind, all: Vec<Resource>) {
        let keep: BTreeSet<ObjectRef> = all.iter().map(Resource::object_ref).collect();
        let existing: Vec<ObjectRef> = self
            .objects(kind)
            .into_iter()
            .filter(|o| !keep.contains(o))
            .collect();
        for object in &existing {
            self.delete(object);
        }
        for resource in all {
            self.apply(resource);
        }
        self.changed();
    }

    /// Marks the index dirty, remembering when the first unpublished change came.
    fn changed(&mut self) {
        self.dirty = true;
        self.changed_at.get_or_insert_with(Instant::now);
    }

    /// The objects of a kind the index holds.
    pub fn objects(&self, kind: Kind) -> Vec<ObjectRef> {
        let refs = |keys: &mut dyn Iterator<Item = &Key>| -> Vec<ObjectRef> {
            keys.map(|(namespace, name)| ObjectRef {
                kind,
                namespace: namespace.clone(),
                name: name.clone(),
            })
            .collect()
        };
        match kind {
            Kind::Service => refs(&mut self.services.keys()),
            Kind::EndpointSlice => refs(&mut self.slices.keys()),
            Kind::Pod => refs(&mut self.pods.keys()),
            Kind::Resilience => refs(&mut self.resilience.keys()),
            Kind::AuthorizationPolicy => refs(&mut self.authorization.keys()),
            Kind::Namespace => self
                .namespaces
                .keys()
                .map(|name| ObjectRef {
                    kind,
                    namespace: String::new(),
                    name: name.clone(),
                })
                .collect(),
            Kind::HttpRoute | Kind::GrpcRoute => self
                .routes
                .keys()
                .filter(|o| o.kind == kind)
                .cloned()
                .collect(),
        }
    }

    /// A receiver of `target`'s state as `caller` sees it (short names resolve
    /// in the caller's namespace). It holds the current state at once.
    pub fn subscribe(
        &mut self,
        target: &Target,
        caller: &Identity,
    ) -> Result<watch::Receiver<Arc<DestinationState>>, NotInMesh> {
        self.subscribe_timed(target, caller).map(|(rx, _)| rx)
    }

    /// As [`Index::subscribe`], with when the change behind each update
    /// reached the index.
    pub fn subscribe_timed(
        &mut self,
        target: &Target,
        caller: &Identity,
    ) -> Result<(watch::Receiver<Arc<DestinationState>>, ChangedAt), NotInMesh> {
        let resolved = self.resolve(target, caller)?;
        let key = (target.clone(), resolved.clone());
        if let Some(sub) = self.subscriptions.get(&key) {
            return Ok((sub.tx.subscribe(), sub.changed_at.clone()));
        }
        let body = self.compute(&resolved);
        self.version += 1;
        let (tx, rx) = watch::channel(Arc::new(body.state(self.version, target.clone())));
        let changed_at = ChangedAt::default();
        self.subscriptions.insert(
            key,
            Subscription {
                target: target.clone(),
                resolved,
                tx,
                changed_at: changed_at.clone(),
            },
        );
        Ok((rx, changed_at))
    }

    /// Whether changes wait for [`Index::publish`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Recomputes the subscribed targets and sends a new snapshot (the next
    /// version) to each whose state changed; drops targets nobody watches;
    /// bumps [`Index::statuses_changed`] when a status changed.
    pub fn publish(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let cause = self.changed_at.take().unwrap_or_else(Instant::now);
        self.subscriptions
            .retain(|_, sub| sub.tx.receiver_count() > 0);
        let mut bodies: HashMap<Resolved, Body> = HashMap::new();
        for sub in self.subscriptions.values() {
            let body = bodies
                .entry(sub.resolved.clone())
                .or_insert_with(|| self.compute(&sub.resolved));
            if body.same_as(&sub.tx.borrow()) {
                continue;
            }
            self.version += 1;
            sub.changed_at.set(cause);
            sub.tx
                .send_replace(Arc::new(body.state(self.version, sub.target.clone())));
        }
        self.publish_inbound(cause);
        let statuses = self.statuses();
        if statuses != self.last_statuses {
            self.last_statuses = statuses;
            self.statuses_tx.send_modify(|n| *n += 1);
        }
    }

    /// Counts up each time [`Index::publish`] finds the statuses changed.
    pub fn statuses_changed(&self) -> watch::Receiver<u64> {
        self.statuses_tx.subscribe()
    }

    /// How many targets (and workload ports) are watched.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions.len() + self.inbound_subscriptions.len()
    }

    /// The status of every HTTPRoute, GRPCRoute, ResiliencePolicy and
    /// AuthorizationPolicy, by object.
    pub fn statuses(&self) -> Vec<ObjectStatus> {
        let mut out = Vec::new();
        for (object, entry) in &self.routes {
            let mut conditions = vec![accepted(entry)];
            let mut missing = Vec::new();
            if let Some(route) = &entry.in_force {
                for (i, rule) in route.rules.iter().enumerate() {
                    for (j, backend) in rule.backends.iter().enumerate() {
                        let key = (backend.namespace.clone(), backend.name.clone());
                        if !self.services.contains_key(&key) {
                            missing.push(format!(
                                "spec.rules[{i}].backendRefs[{j}].name: {:?} names no Service in \
                                 namespace {}; create it or fix the name (it gets no traffic)",
                                backend.name, backend.namespace
                            ));
                        }
                    }
                }
            }
            conditions.push(if missing.is_empty() {
                StatusCondition {
                    type_: condition::RESOLVED_REFS,
                    status: true,
                    reason: condition::REASON_RESOLVED_REFS,
                    message: "every backendRef names a Service".into(),
                }
            } else {
                StatusCondition {
                    type_: condition::RESOLVED_REFS,
                    status: false,
                    reason: condition::REASON_BACKEND_NOT_FOUND,
                    message: missing.join("; "),
                }
            });
            let parent_conditions = entry
                .parents
                .iter()
                .map(|parent| {
                    let mut conditions = conditions.clone();
                    if let Some(unmatched) = self.unmatched_parent(&object.namespace, parent)
                        && let Some(accepted) = conditions.first_mut()
                        && accepted.status
                    {
                        *accepted = unmatched;
                    }
                    conditions
                })
                .collect();
            out.push(ObjectStatus {
                object: object.clone(),
                generation: entry.generation,
                parents: entry.parents.clone(),
                conditions,
                parent_conditions,
            });
        }
        for ((namespace, name), entry) in &self.resilience {
            let mut conditions = vec![accepted(entry)];
            if let Some(policy) = &entry.in_force
                && entry.error.is_none()
                && let Some((winner, _)) = self.resilience_in_force(namespace, &policy.service)
                && winner != name.as_str()
            {
                conditions[0] = StatusCondition {
                    type_: condition::ACCEPTED,
                    status: false,
                    reason: condition::REASON_CONFLICTED,
                    message: format!(
                        "ResiliencePolicy {namespace}/{winner} already targets Service {} and is \
                         older; this one is not in force (delete one, or merge them into one)",
                        policy.service
                    ),
                };
            }
            if let Some(policy) = &entry.in_force {
                let key = (namespace.clone(), policy.service.clone());
                conditions.push(if self.services.contains_key(&key) {
                    StatusCondition {
                        type_: condition::RESOLVED_REFS,
                        status: true,
                        reason: condition::REASON_RESOLVED_REFS,
                        message: format!("Service {namespace}/{} exists", policy.service),
                    }
                } else {
                    StatusCondition {
                        type_: condition::RESOLVED_REFS,
                        status: false,
                        reason: condition::REASON_TARGET_NOT_FOUND,
                        message: format!(
                            "spec.targetRef.name: {:?} names no Service in namespace {namespace}",
                            policy.service
                        ),
                    }
                });
            }
            out.push(ObjectStatus::policy(
                Kind::Resilience,
                namespace,
                name,
                entry.generation,
                conditions,
            ));
        }
        out.extend(self.authorization_statuses());
        out
    }

    /// `Accepted=False` (`NoMatchingParent`) for a route's parent Service
    /// (in `namespace`, the route's, unless the parentRef names another)
    /// that does not exist or has no port the parentRef names.
    fn unmatched_parent(
        &self,
        namespace: &str,
        parent: &ParentReference,
    ) -> Option<StatusCondition> {
        let namespace = parent.namespace.as_deref().unwrap_or(namespace);
        let problem = match self
            .services
            .get(&(namespace.to_owned(), parent.name.clone()))
        {
            None => format!(
                "parentRef Service {namespace}/{} does not exist; the route applies to it once it is created",
                parent.name
            ),
            Some(service) => match parent.port {
                Some(port) if !service.ports.iter().any(|p| i32::from(p.port) == port) => {
                    let ports: Vec<String> =
                        service.ports.iter().map(|p| p.port.to_string()).collect();
                    format!(
                        "parentRef port {port}: Service {namespace}/{} has no such port (it has {}); \
                         name one of its ports or leave port out",
                        parent.name,
                        ports.join(", ")
                    )
                }
                _ => return None,
            },
        };
        Some(StatusCondition {
            type_: condition::ACCEPTED,
            status: false,
            reason: condition::REASON_NO_MATCHING_PARENT,
            message: problem,
        })
    }

    // ---- objects in ----

    fn apply_service(&mut self, key: Key, service: &Service) {
        self.remove_service(&key);
        let spec = service.spec.clone().unwrap_or_default();
        let ports = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok()?;
                let target = match p.target_port {
                    Some(IntOrString::Int(n)) => TargetPort::Number(u16::try_from(n).ok()?),
                    Some(IntOrString::String(name)) => match name.parse::<u16>() {
                        Ok(n) => TargetPort::Number(n),
                        Err(_) => TargetPort::Name(name),
                    },
                    None => TargetPort::Number(port),
                };
                Some(ServicePort {
                    name: p.name.unwrap_or_default(),
                    port,
                    target,
                })
            })
            .collect();
        let selector = spec.selector.filter(|s| !s.is_empty());
        let mut ips: Vec<String> = spec.cluster_ips.unwrap_or_default();
        ips.extend(spec.cluster_ip);
        let mut cluster_ips: Vec<IpAddr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
        cluster_ips.sort_unstable();
        cluster_ips.dedup();
        for ip in &cluster_ips {
            self.cluster_ips.insert(*ip, key.clone());
        }
        self.services.insert(
            key,
            ServiceInfo {
                ports,
                cluster_ips,
                selector,
            },
        );
    }

    fn remove_service(&mut self, key: &Key) {
        if let Some(old) = self.services.remove(key) {
            for ip in old.cluster_ips {
                if self.cluster_ips.get(&ip) == Some(key) {
                    self.cluster_ips.remove(&ip);
                }
            }
        }
    }

    fn apply_slice(&mut self, key: Key, slice: EndpointSlice) {
        self.remove_slice(&key);
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned()
        else {
            return;
        };
        let ports = slice
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| Some((p.name.unwrap_or_default(), u16::try_from(p.port?).ok()?)))
            .collect();
        let endpoints = slice
            .endpoints
            .into_iter()
            .map(|e| SliceEndpoint {
                addrs: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                ready: e.conditions.and_then(|c| c.ready).unwrap_or(true),
                pod: e
                    .target_ref
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name),
                zone: e.zone,
            })
            .collect();
        self.slices_by_service
            .entry((key.0.clone(), service.clone()))
            .or_default()
            .insert(key.1.clone());
        self.slices.insert(
            key,
            SliceInfo {
                service,
                ports,
                endpoints,
            },
        );
    }

    fn remove_slice(&mut self, key: &Key) {
        if let Some(old) = self.slices.remove(key) {
            let by = (key.0.clone(), old.service);
            if let Some(names) = self.slices_by_service.get_mut(&by) {
                names.remove(&key.1);
                if names.is_empty() {
                    self.slices_by_service.remove(&by);
                }
            }
        }
    }

    fn apply_pod(&mut self, key: Key, pod: &Pod) {
        self.remove_pod(&key);
        let spec = pod.spec.as_ref();
        let service_account = spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned());
        let annotations = pod.metadata.annotations.as_ref();
        let injected = annotations.is_some_and(|a| a.contains_key(INJECTED_BY_ANNOTATION));
        let default_inbound = inbound::mode_annotation(annotations, &key);
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let container_ports = spec
            .into_iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    u16::try_from(p.container_port).ok()?,
                ))
            })
            .collect();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let mut ips: Vec<IpAddr> = Vec::new();
        if let Some(status) = &pod.status {
            let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
            ips.extend(
                listed
                    .chain(status.pod_ip.as_deref())
                    .filter_map(|ip| ip.parse::<IpAddr>().ok()),
            );
        }
        ips.sort_unstable();
        ips.dedup();
        if !host_network {
            for ip in &ips {
                self.pod_ips.insert(*ip, key.clone());
            }
        }
        self.pods.insert(
            key,
            PodInfo {
                service_account,
                injected,
                ips,
                labels,
                default_inbound,
                container_ports,
            },
        );
    }

    fn remove_pod(&mut self, key: &Key) {
        if let Some(old) = self.pods.remove(key) {
            for ip in old.ips {
                if self.pod_ips.get(&ip) == Some(key) {
                    self.pod_ips.remove(&ip);
                }
            }
        }
    }

    fn apply_route(
        &mut self,
        object: ObjectRef,
        meta: &ObjectMeta,
        parent_refs: &[ParentReference],
        converted: Result<MeshRoute, PolicyError>,
    ) {
        let parents = parent_refs
            .iter()
            .filter(|p| p.is_service())
            .cloned()
            .collect();
        let entry = self.routes.remove(&object);
        let entry = next_entry(entry, meta, parents, converted.map(Arc::new));
        self.routes.insert(object, entry);
    }

    // ---- targets out ----

    fn resolve(&self, target: &Target, caller: &Identity) -> Result<Resolved, NotInMesh> {
        let not_in_mesh = || NotInMesh {
            target: target.clone(),
        };
        match target {
            Target::Addr(addr) => {
                if let Some((namespace, name)) = self.cluster_ips.get(&addr.ip()) {
                    return Ok(Resolved::Service {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        port: addr.port(),
                    });
                }
                if let Some((namespace, name)) = self.pod_ips.get(&addr.ip()) {
                    return Ok(Resolved::Pod {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        addr: *addr,
                    });
                }
                Err(not_in_mesh())
            }
            Target::Authority { host, port } => {
                let host = host.trim_end_matches('.');
                let full = format!(".svc.{}", self.settings.cluster_domain);
                let short = host
                    .strip_suffix(full.as_str())
                    .or_else(|| host.strip_suffix(".svc"));
                let (name, namespace) = match (short, host.split_once('.')) {
                    (Some(short), _) => short.split_once('.').ok_or_else(not_in_mesh)?,
                    (None, None) => (host, caller.namespace()),
                    (None, Some((name, namespace))) => (name, namespace),
                };
                if name.is_empty() || namespace.is_empty() || namespace.contains('.') {
                    return Err(not_in_mesh());
                }
                Ok(Resolved::Service {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    port: *port,
                })
            }
        }
    }

    fn compute(&self, resolved: &Resolved) -> Body {
        match resolved {
            Resolved::Service {
                namespace,
                name,
                port,
            } => self.compute_service(namespace, name, *port),
            Resolved::Pod {
                namespace,
                name,
                addr,
            } => {
                let identity = self.identity(namespace, name);
                Body {
                    routes: Vec::new(),
                    backends: vec![Backend {
                        name: name.clone(),
                        weight: 1,
                        endpoints: vec![Endpoint {
                            addr: *addr,
                            identity,
                            zone: None,
                        }],
                    }],
                    retry_budget: RetryBudget::default(),
                    circuit_breaker: None,
                    load_balancer: LoadBalancer::default(),
                    connect_timeout: None,
                }
            }
        }
    }

    fn compute_service(&self, namespace: &str, name: &str, port: u16) -> Body {
        let resilience = self.resilience_for(namespace, name);
        let mut attached: Vec<(&ObjectRef, &PolicyEntry<Arc<MeshRoute>>, &MeshRoute)> = self
            .routes
            .iter()
            .filter_map(|(o, e)| e.in_force.as_deref().map(|r| (o, e, r)))
            .filter(|(_, _, r)| r.attaches_to(namespace, name, port))
            .collect();
        attached.sort_by(|a, b| (a.1.created, a.0).cmp(&(b.1.created, b.0)));
        let falls_through = !attached.iter().any(|(_, _, r)| r.catches_all());
        let mut backends: Vec<Backend> = Vec::new();
        // A Service that does not exist and no route: no backends at all.
        let exists = self
            .services
            .contains_key(&(namespace.to_owned(), name.to_owned()));
        if falls_through && (exists || !attached.is_empty()) {
            backends.push(Backend {
                name: name.to_owned(),
                weight: 1,
                endpoints: self.endpoints(namespace, name, port),
            });
        }
        // Every (rule, match) with its precedence; the sort is stable, so
        // ties keep route age, then namespace/name, rule order, match order.
        let mut ranked: Vec<(Precedence, Route)> = Vec::new();
        for (_, _, route) in &attached {
            for rule in &route.rules {
                let mut r = rule.route.clone();
                for (backend_ref, service) in r.backends.iter_mut().zip(&rule.backends) {
                    let key = service.key(namespace);
                    if !backends.iter().any(|b| b.name == key) {
                        backends.push(Backend {
                            name: key.clone(),
                            weight: 0,
                            endpoints: self.endpoints(
                                &service.namespace,
                                &service.name,
                                service.port.unwrap_or(port),
                            ),
                        });
                    }
                    backend_ref.name = key;
                }
                if let Some(res) = resilience {
                    with_defaults(&mut r, res);
                }
                if r.matches.len() <= 1 {
                    ranked.push((Precedence::of(r.matches.first()), r));
                } else {
                    for m in std::mem::take(&mut r.matches) {
                        let mut one = r.clone();
                        one.matches = vec![m];
                        ranked.push((Precedence::of(one.matches.first()), one));
                    }
                }
            }
        }
        ranked.sort_by_key(|(precedence, _)| *precedence);
        let mut routes: Vec<Route> = ranked.into_iter().map(|(_, r)| r).collect();
        if let Some(res) = resilience
            && falls_through
            && (res.default_retry.is_some()
                || res.request_timeout.is_some()
                || res.per_try_timeout.is_some())
        {
            let mut r = Route {
                name: format!("{namespace}/{name}/default"),
                matches: Vec::new(),
                backends: Vec::new(),
                timeouts: RouteTimeouts::default(),
                retry: None,
            };
            with_defaults(&mut r, res);
            routes.push(r);
        }
        Body {
            routes,
            backends,
            retry_budget: resilience.and_then(|r| r.retry_budget).unwrap_or_default(),
            circuit_breaker: resilience.and_then(|r| r.circuit_breaker),
            load_balancer: resilience.and_then(|r| r.load_balancer).unwrap_or_default(),
            connect_timeout: resilience.and_then(|r| r.connect_timeout),
        }
    }

    /// The ResiliencePolicy in force for a Service.
    fn resilience_for(&self, namespace: &str, service: &str) -> Option<&Resilience> {
        self.resilience_in_force(namespace, service).map(|(_, r)| r)
    }

    /// The name and policy of the ResiliencePolicy in force for a Service:
    /// of those targeting it, the oldest, then by name (the others are
    /// `Conflicted`).
    fn resilience_in_force(&self, namespace: &str, service: &str) -> Option<(&str, &Resilience)> {
        self.resilience
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .filter_map(|((_, n), e)| e.in_force.as_ref().map(|r| (e.created, n, r)))
            .filter(|(_, _, r)| r.service == service)
            .min_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)))
            .map(|(_, n, r)| (n.as_str(), r))
    }

    /// The ready endpoints of port `port` of Service `namespace/name`.
    fn endpoints(&self, namespace: &str, name: &str, port: u16) -> Vec<Endpoint> {
        let key = (namespace.to_owned(), name.to_owned());
        let Some(service) = self.services.get(&key) else {
            return Vec::new();
        };
        let service_port =
            service
                .ports
                .iter()
                .find(|p| p.port == port)
                .or(match service.ports.as_slice() {
                    [only] => Some(only),
                    _ => None,
                });
        let Some(service_port) = service_port else {
            return Vec::new();
        };
        let mut out: Vec<Endpoint> = Vec::new();
        for slice_name in self.slices_by_service.get(&key).into_iter().flatten() {
            let Some(slice) = self.slices.get(&(namespace.to_owned(), slice_name.clone())) else {
                continue;
            };
            let number = slice
                .ports
                .iter()
                .find(|(n, _)| *n == service_port.name)
                .map(|(_, p)| *p);
            let Some(number) = number else {
                continue;
            };
            for e in slice.endpoints.iter().filter(|e| e.ready) {
                let identity = e.pod.as_deref().and_then(|p| self.identity(namespace, p));
                for ip in &e.addrs {
                    out.push(Endpoint {
                        addr: SocketAddr::new(*ip, number),
                        identity: identity.clone(),
                        zone: e.zone.clone(),
                    });
                }
            }
        }
        out.sort_by_key(|e| e.addr);
        out.dedup_by_key(|e| e.addr);
        out
    }

    /// The identity of a meshed pod: its service account in the trust domain.
    fn identity(&self, namespace: &str, pod: &str) -> Option<Identity> {
        let info = self.pods.get(&(namespace.to_owned(), pod.to_owned()))?;
        if !info.injected {
            return None;
        }
        Identity::new(
            &self.settings.trust_domain,
            namespace,
            &info.service_account,
        )
        .ok()
    }
}

/// How specific a route match is (Gateway API precedence): smaller sorts
/// first. HTTP: an Exact path before a PathPrefix, a longer path before a
/// shorter one (no path, or no match at all: the prefix `/`), then a method
/// match, then more header matches. gRPC matches are matches on the path
/// `/<service>/<method>`: service and method are an exact path, a service
/// alone a prefix of its length, then a method, then more header matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Precedence {
    /// 0: an exact path; 1: a prefix.
    prefix: u8,
    longer: std::cmp::Reverse<usize>,
    /// 0: a method is matched.
    no_method: u8,
    more_headers: std::cmp::Reverse<usize>,
}

impl Precedence {
    fn of(m: Option<&weft_api::policy::RouteMatch>) -> Self {
        use std::cmp::Reverse;
        use weft_api::policy::{PathMatch, RouteMatch};
        let (prefix, length, method, headers) = match m {
            None => (1, 1, false, 0),
            Some(RouteMatch::Http(h)) => {
                let (prefix, length) = match &h.path {
                    Some(PathMatch::Exact(p)) => (0, p.len()),
                    Some(PathMatch::Prefix(p)) => (1, p.trim_end_matches('/').len().max(1)),
                    None => (1, 1),
                };
                (prefix, length, h.method.is_some(), h.headers.len())
            }
            Some(RouteMatch::Grpc(g)) => {
                let (prefix, length) = match (&g.service, &g.method) {
                    (Some(s), Some(m)) => (0, s.len() + m.len() + 2),
                    (Some(s), None) => (1, s.len() + 1),
                    (None, _) => (1, 1),
                };
                (prefix, length, g.method.is_some(), g.headers.len())
            }
        };
        Self {
            prefix,
            longer: Reverse(length),
            no_method: u8::from(!method),
            more_headers: Reverse(headers),
        }
    }
}

/// The route's own settings win; the ResiliencePolicy fills the rest.
fn with_defaults(route: &mut Route, res: &Resilience) {
    if route.retry.is_none() {
        route.retry = res.default_retry.clone();
    }
    route.timeouts.request = route.timeouts.request.or(res.request_timeout);
    route.timeouts.backend_request = route.timeouts.backend_request.or(res.per_try_timeout);
}

fn accepted<T>(entry: &PolicyEntry<T>) -> StatusCondition {
    match &entry.error {
        None => StatusCondition {
            type_: condition::ACCEPTED,
            status: true,
            reason: condition::REASON_ACCEPTED,
            message: "in force".into(),
        },
        Some(error) => StatusCondition {
            type_: condition::ACCEPTED,
            status: false,
            reason: condition::REASON_INVALID,
            message: if entry.in_force.is_some() {
                format!("{error}; the last good version stays in force")
            } else {
                format!("{error}; nothing of this object is in force")
            },
        },
    }
}

/// The entry after a new version: in force when it converted, else the
/// previous good version stays, with the error recorded.
fn next_entry<T>(
    previous: Option<PolicyEntry<T>>,
    meta: &ObjectMeta,
    parents: Vec<ParentReference>,
    converted: Result<T, PolicyError>,
) -> PolicyEntry<T> {
    let created = meta
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(i64::MAX);
    let in_force_before = previous.and_then(|p| p.in_force);
    match converted {
        Ok(value) => PolicyEntry {
            created,
            generation: meta.generation,
            parents,
            in_force: Some(value),
            error: None,
        },
        Err(error) => PolicyEntry {
            created,
            generation: meta.generation,
            parents,
            in_force: in_force_before,
            error: Some(error),
        },
    }
}
