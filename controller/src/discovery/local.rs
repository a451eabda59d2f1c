//! Local mode's policy directory (`--policy-dir DIR`): the YAML documents of
//! every `*.yaml` / `*.yml` file in it (several per file, `---` between them),
//! fed to the [`SharedIndex`] and read again when a file changes.
//!
//! Documents:
//! - `HTTPRoute`, `GRPCRoute` (`gateway.networking.k8s.io/v1`),
//!   `ResiliencePolicy` and `AuthorizationPolicy` (`policy.weft.io/v1alpha1`),
//!   as on Kubernetes;
//! - `kind: Workloads` (`apiVersion: local.weft.io/v1alpha1`): the local
//!   services and their endpoints ([`Workloads`]), turned into the Service,
//!   EndpointSlice and Pod objects Kubernetes would hold, so that the index
//!   sees the same objects in both modes.
//!
//! Fields are read strictly ([`weft_api::crd::from_value_strict`]): a field
//! weft does not know (`spec.rules[0].backendRef`, a typo of `backendRefs`)
//! refuses the document. A refused document is logged (a `warn` naming the
//! file, the document's index in it, the field and the problem) and shown in
//! the admin `/config`; the last good version of that object stays in force.
//! The directory is polled ([`POLL`]); every reload resets each kind in the
//! index with the full set of objects.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ObjectReference, Pod, PodIP, PodSpec, PodStatus, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use weft_api::crd::{
    AuthorizationPolicy, GrpcRoute, HttpRoute, ResiliencePolicy, from_value_strict,
};

use super::index::{Kind, Resource, SharedIndex};

/// How often the directory is checked for changes.
pub const POLL: Duration = Duration::from_millis(500);

/// The label each local pod carries with its service's name, which the
/// local Service selects (as a Deployment's pods carry the labels their
/// Service selects).
pub const SERVICE_LABEL: &str = "local.weft.io/service";

/// The `apiVersion` of a [`Workloads`] document.
pub const WORKLOADS_API_VERSION: &str = "local.weft.io/v1alpha1";

/// A `kind: Workloads` document: the services of a local mesh.
///
/// ```yaml
/// apiVersion: local.weft.io/v1alpha1
/// kind: Workloads
/// services:
///   - name: checkout-v1
///     namespace: default        # the default
///     ports: [80]
///     endpoints:
///       - address: 127.0.0.1:9001
///         serviceAccount: checkout   # absent: not meshed (plaintext)
///         labels: { version: v1 }
/// ```
///
/// Local mode services have no cluster IP: proxies find them by name
/// (`checkout-v1:80`). An endpoint serves every port of its service on the
/// port of its address. Unknown fields are refused (strict parsing names
/// them, with their path, which `deny_unknown_fields` would not).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Workloads {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<WorkloadsMeta>,
    #[serde(default)]
    pub services: Vec<WorkloadService>,
}

/// A Workloads document's name (optional; it names the document in `/config`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadsMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One local service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadService {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub name: String,
    pub ports: Vec<u16>,
    #[serde(default)]
    pub endpoints: Vec<WorkloadEndpoint>,
}

/// One replica of a local service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEndpoint {
    /// `ip:port`.
    pub address: SocketAddr,
    /// The replica's service account; its identity is
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<serviceAccount>`. Absent:
    /// the replica is not meshed and is reached in plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Pod labels (`version: v2`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

impl Workloads {
    /// Checks what serde cannot: the version, names, ports.
    fn check(&self) -> Result<(), (String, String)> {
        if self.api_version != WORKLOADS_API_VERSION {
            return Err((
                "apiVersion".into(),
                format!(
                    "{:?} is not a Workloads version; use {WORKLOADS_API_VERSION}",
                    self.api_version
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, service) in self.services.iter().enumerate() {
            let path = format!("services[{i}]");
            if service.name.is_empty() || service.namespace.is_empty() {
                return Err((
                    format!("{path}.name"),
                    "name the service (and its namespace, default `default`)".into(),
                ));
            }
            if !seen.insert((&service.namespace, &service.name)) {
                return Err((
                    format!("{path}.name"),
                    format!(
                        "service {}/{} is listed twice",
                        service.namespace, service.name
                    ),
                ));
            }
            if service.ports.is_empty() || service.ports.contains(&0) {
                return Err((
                    format!("{path}.ports"),
                    "list the service's ports (1 to 65535), e.g. [80]".into(),
                ));
            }
        }
        Ok(())
    }

    /// The Service, EndpointSlice and Pod objects Kubernetes would hold.
    pub fn resources(&self) -> Vec<Resource> {
        let mut out = Vec::new();
        for service in &self.services {
            out.extend(service.resources());
        }
        out
    }
}

impl WorkloadService {
    fn meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            ..ObjectMeta::default()
        }
    }

    fn port_name(port: u16) -> String {
        format!("port-{port}")
    }

    fn resources(&self) -> Vec<Resource> {
        let mut out = Vec::new();
        out.push(Resource::Service(Service {
            metadata: self.meta(self.name.clone()),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                // What policies that target the Service select its pods by.
                selector: Some(BTreeMap::from([(
                    SERVICE_LABEL.to_owned(),
                    self.name.clone(),
                )])),
                ports: Some(
                    self.ports
                        .iter()
                        .map(|&port| ServicePort {
                            name: Some(Self::port_name(port)),
                            port: i32::from(port),
                            protocol: Some("TCP".into()),
                            ..ServicePort::default()
                        })
                        .collect(),
                ),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }));
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let pod_name = format!("{}-{i}", self.name);
            let mut meta = self.meta(pod_name.clone());
            let mut labels = endpoint.labels.clone();
            labels
                .entry("app".into())
                .or_insert_with(|| self.name.clone());
            labels.insert(SERVICE_LABEL.into(), self.name.clone());
            meta.labels = Some(labels);
            if endpoint.service_account.is_some() {
                meta.annotations = Some(BTreeMap::from([(
                    weft_api::consts::INJECTED_BY_ANNOTATION.to_owned(),
                    "weft-local".to_owned(),
                )]));
            }
            let ip = endpoint.address.ip().to_string();
            out.push(Resource::Pod(Pod {
                metadata: meta,
                // One container serving every port of the service on the
                // endpoint's port (what callers dial), named as the
                // Service's ports, so that policies name ports either way.
                spec: Some(PodSpec {
                    service_account_name: endpoint.service_account.clone(),
                    containers: vec![Container {
                        name: "app".into(),
                        ports: Some(
                            self.ports
                                .iter()
                                .map(|&port| ContainerPort {
                                    name: Some(Self::port_name(port)),
                                    container_port: i32::from(endpoint.address.port()),
                                    protocol: Some("TCP".into()),
                                    ..ContainerPort::default()
                                })
                                .collect(),
                        ),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
                status: Some(PodStatus {
                    pod_ip: Some(ip.clone()),
                    pod_ips: Some(vec![PodIP { ip: ip.clone() }]),
                    phase: Some("Running".into()),
                    ..PodStatus::default()
                }),
            }));
            // One slice per endpoint: local replicas share an IP (127.0.0.1)
            // and differ by port, which a slice holds once for all its endpoints.
            let mut slice_meta = self.meta(pod_name.clone());
            slice_meta.labels = Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_owned(),
                self.name.clone(),
            )]));
            out.push(Resource::EndpointSlice(EndpointSlice {
                metadata: slice_meta,
                address_type: if endpoint.address.is_ipv4() {
                    "IPv4".into()
                } else {
                    "IPv6".into()
                },
                endpoints: vec![SliceEndpoint {
                    addresses: vec![ip],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some(pod_name),
                        namespace: Some(self.namespace.clone()),
                        ..ObjectReference::default()
                    }),
                    zone: endpoint.zone.clone(),
                    ..SliceEndpoint::default()
                }],
                ports: Some(
                    self.ports
                        .iter()
                        .map(|&port| EndpointPort {
                            name: Some(Self::port_name(port)),
                            port: Some(i32::from(endpoint.address.port())),
                            protocol: Some("TCP".into()),
                            ..EndpointPort::default()
                        })
                        .collect(),
                ),
            }));
        }
        out
    }
}

/// One parsed document.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // A handful per directory, parsed on change.
enum Document {
    Workloads(Workloads),
    HttpRoute(HttpRoute),
    GrpcRoute(GrpcRoute),
    Resilience(ResiliencePolicy),
    Authorization(AuthorizationPolicy),
}

/// An object of the directory: its kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    kind: String,
    namespace: String,
    name: String,
}

/// Where a document is.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    file: PathBuf,
    document: usize,
}

#[derive(Clone, Debug)]
struct Object {
    document: Document,
    origin: Origin,
    /// `Some`: this version was refused; the object shown is the last good one.
    refused: Option<String>,
}

/// A refused document (or file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub file: PathBuf,
    /// The document's index in its file (0 first); `None`: the whole file.
    pub document: Option<usize>,
    /// The field at fault (`spec.rules[0].backendRef`); empty: the document.
    pub field: String,
    pub problem: String,
}

/// The directory's state: the objects in force and the refusals of the last reload.
#[derive(Debug, Default)]
struct State {
    files: Vec<(PathBuf, Vec<u8>)>,
    objects: BTreeMap<Key, Object>,
    refusals: Vec<Refusal>,
    reloads: u64,
}

/// The local policy backend: loads the directory into the index and keeps
/// doing so as it changes.
pub struct LocalPolicy {
    dir: PathBuf,
    index: SharedIndex,
    state: Mutex<State>,
}

/// Why the policy directory cannot be used at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the policy directory {}: {source}; create it or fix --policy-dir", dir.display())]
pub struct DirError {
    dir: PathBuf,
    #[source]
    source: std::io::Error,
}

impl std::fmt::Debug for LocalPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPolicy")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl LocalPolicy {
    /// Reads `dir` once into `index` (a bad document is reported, not fatal;
    /// an unreadable directory is).
    pub fn load(dir: &Path, index: SharedIndex) -> Result<Arc<Self>, DirError> {
        let files = read_dir(dir).map_err(|source| DirError {
            dir: dir.to_owned(),
            source,
        })?;
        let this = Arc::new(Self {
            dir: dir.to_owned(),
            index,
            state: Mutex::new(State::default()),
        });
        this.reload(files);
        Ok(this)
    }

    /// Polls the directory every `every` until `stop`, reloading on change.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stop.cancelled() => return,
            }
            match read_dir(&self.dir) {
                Ok(files) => {
                    let changed = self.lock().files != files;
                    if changed {
                        self.reload(files);
                    }
                }
                Err(error) => tracing::warn!(
                    dir = %self.dir.display(),
                    %error,
                    "cannot read the policy directory; the policy in force stays"
                ),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Parses every document, keeps the last good version of refused ones,
    /// and resets every kind in the index.
    fn reload(&self, files: Vec<(PathBuf, Vec<u8>)>) {
        let mut state = self.lock();
        let mut objects: BTreeMap<Key, Object> = BTreeMap::new();
        let mut refusals = Vec::new();
        // Files whose YAML could not be split into documents: everything they
        // held stays as it was.
        let mut unreadable: BTreeSet<PathBuf> = BTreeSet::new();
        for (file, bytes) in &files {
            let documents = match split_documents(bytes) {
                Ok(documents) => documents,
                Err((document, problem)) => {
                    refusals.push(Refusal {
                        file: file.clone(),
                        document,
                        field: String::new(),
                        problem,
                    });
                    unreadable.insert(file.clone());
                    continue;
                }
            };
            for (document, value) in documents.into_iter().enumerate() {
                if value.is_null() {
                    continue;
                }
                let origin = Origin {
                    file: file.clone(),
                    document,
                };
                let key = key_of(&value, &origin);
                match parse(value) {
                    Ok(parsed) => {
                        if let Some(key) = &key
                            && let Some(earlier) = objects.get(key)
                            && earlier.refused.is_none()
                        {
                            refusals.push(Refusal {
                                file: file.clone(),
                                document: Some(document),
                                field: "metadata.name".into(),
                                problem: format!(
                                    "{} {}/{} is also defined in {} (document {}); the first stays",
                                    key.kind,
                                    key.namespace,
                                    key.name,
                                    earlier.origin.file.display(),
                                    earlier.origin.document
                                ),
                            });
                            continue;
                        }
                        let Some(key) = key else {
                            // `parse` refuses documents without a name.
                            continue;
                        };
                        objects.insert(
                            key,
                            Object {
                                document: parsed,
                                origin,
                                refused: None,
                            },
                        );
                    }
                    Err((field, problem)) => {
                        refusals.push(Refusal {
                            file: file.clone(),
                            document: Some(document),
                            field,
                            problem: problem.clone(),
                        });
                        // The last good version of this object stays.
                        if let Some(key) = key
                            && let Some(previous) = state.objects.get(&key)
                        {
                            objects.entry(key).or_insert_with(|| Object {
                                refused: Some(problem),
                                ..previous.clone()
                            });
                        }
                    }
                }
            }
        }
        for (key, previous) in &state.objects {
            if unreadable.contains(&previous.origin.file) && !objects.contains_key(key) {
                objects.insert(key.clone(), previous.clone());
            }
        }
        for refusal in &refusals {
            tracing::warn!(
                file = %refusal.file.display(),
                document = ?refusal.document,
                field = %refusal.field,
                problem = %refusal.problem,
                "policy document refused; the last good version of the object stays in force"
            );
        }
        self.feed(&objects);
        state.reloads += 1;
        tracing::info!(
            dir = %self.dir.display(),
            objects = objects.len(),
            refused = refusals.len(),
            reload = state.reloads,
            "policy directory loaded"
        );
        state.files = files;
        state.objects = objects;
        state.refusals = refusals;
    }

    /// Resets each kind in the index with the objects in force.
    fn feed(&self, objects: &BTreeMap<Key, Object>) {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        let mut pods = Vec::new();
        let mut http = Vec::new();
        let mut grpc = Vec::new();
        let mut resilience = Vec::new();
        let mut authorization = Vec::new();
        for object in objects.values() {
            match &object.document {
                Document::Workloads(w) => {
                    for resource in w.resources() {
                        match resource {
                            r @ Resource::Service(_) => services.push(r),
                            r @ Resource::EndpointSlice(_) => slices.push(r),
                            r @ Resource::Pod(_) => pods.push(r),
                            _ => {}
                        }
                    }
                }
                Document::HttpRoute(r) => http.push(Resource::HttpRoute(r.clone())),
                Document::GrpcRoute(r) => grpc.push(Resource::GrpcRoute(r.clone())),
                Document::Resilience(r) => resilience.push(Resource::Resilience(r.clone())),
                Document::Authorization(a) => {
                    authorization.push(Resource::AuthorizationPolicy(a.clone()));
                }
            }
        }
        // Pods and endpoints before the routes that point at them.
        self.index.reset(Kind::Pod, pods);
        self.index.reset(Kind::Service, services);
        self.index.reset(Kind::EndpointSlice, slices);
        self.index.reset(Kind::Resilience, resilience);
        self.index.reset(Kind::AuthorizationPolicy, authorization);
        self.index.reset(Kind::GrpcRoute, grpc);
        self.index.reset(Kind::HttpRoute, http);
    }

    /// What the admin `/config` shows: the directory, each object with where
    /// it comes from and whether its latest version was refused, the refusals
    /// of the last reload, and the index's statuses of the policy objects.
    pub fn report(&self) -> Value {
        let state = self.lock();
        let objects: Vec<Value> = state
            .objects
            .iter()
            .map(|(key, object)| {
                json!({
                    "kind": key.kind,
                    "namespace": key.namespace,
                    "name": key.name,
                    "file": object.origin.file.display().to_string(),
                    "document": object.origin.document,
                    "status": match &object.refused {
                        None => "current".to_owned(),
                        Some(problem) => format!(
                            "its latest version was refused ({problem}); the last good version stays in force"
                        ),
                    },
                })
            })
            .collect();
        let statuses = statuses_json(&self.index);
        json!({
            "policy_dir": self.dir.display().to_string(),
            "reloads": state.reloads,
            "objects": objects,
            "refused": state.refusals,
            "statuses": statuses,
        })
    }
}

/// The index's verdicts on every policy object, for the admin `/config`
/// (both modes).
pub fn statuses_json(index: &SharedIndex) -> Value {
    index
        .statuses()
        .iter()
        .map(|s| {
            let conditions = |conditions: &[super::StatusCondition]| {
                conditions
                    .iter()
                    .map(|c| {
                        json!({
                            "type": c.type_,
                            "status": if c.status { "True" } else { "False" },
                            "reason": c.reason,
                            "message": c.message,
                        })
                    })
                    .collect::<Vec<_>>()
            };
            let mut object = json!({
                "object": s.object.to_string(),
                "conditions": conditions(&s.conditions),
            });
            if !s.parents.is_empty() {
                object["parents"] = s
                    .parents
                    .iter()
                    .zip(&s.parent_conditions)
                    .map(|(p, c)| json!({ "parentRef": p, "conditions": conditions(c) }))
                    .collect();
            }
            object
        })
        .collect()
}

/// Local mode has no object status to write to: every condition that says
/// a policy is not (wholly) in force (an invalid field, a conflict, a
/// missing backend or parent) is logged as a warning when it appears, once
/// while it holds (again if it comes back).
async fn log_conditions(index: SharedIndex, stop: CancellationToken) {
    let mut changes = index.statuses_changed();
    let mut logged: BTreeSet<(String, String, String)> = BTreeSet::new();
    loop {
        let mut now = BTreeSet::new();
        for status in index.statuses() {
            let object = status.object.to_string();
            let per_parent = status.parents.iter().zip(&status.parent_conditions);
            let mut all: Vec<(
                Option<&weft_api::crd::ParentReference>,
                &super::StatusCondition,
            )> = status.conditions.iter().map(|c| (None, c)).collect();
            all.extend(per_parent.flat_map(|(p, cs)| cs.iter().map(move |c| (Some(p), c))));
            for (parent, c) in all.into_iter().filter(|(_, c)| !c.status) {
                let key = (object.clone(), c.type_.to_owned(), c.message.clone());
                if !logged.contains(&key) && !now.contains(&key) {
                    tracing::warn!(
                        object = %object,
                        parent = parent.map(|p| p.name.as_str()),
                        condition = c.type_,
                        reason = c.reason,
                        "{}",
                        c.message
                    );
                }
                now.insert(key);
            }
        }
        logged = now;
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
}

/// Local mode's discovery: an index fed from `dir`, polled every [`POLL`]
/// until `stop`, ready for [`crate::Controller::start_with_discovery`]; the
/// backend is returned too (tests read its [`LocalPolicy::report`]).
pub fn discovery(
    dir: &Path,
    settings: super::IndexSettings,
    stop: CancellationToken,
) -> Result<(crate::Discovery, Arc<LocalPolicy>), DirError> {
    let index = SharedIndex::new(settings, stop.clone());
    let local = LocalPolicy::load(dir, index.clone())?;
    tokio::spawn(log_conditions(index.clone(), stop.clone()));
    tokio::spawn(local.clone().watch(POLL, stop));
    let report = local.clone();
    Ok((
        crate::Discovery {
            index: Arc::new(index),
            report: Arc::new(move || report.report()),
        },
        local,
    ))
}

/// The `*.yaml` and `*.yml` files of `dir` with their contents, by name
/// (also how `weft canary` reads the directory it edits).
pub fn read_dir(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if !yaml || !path.is_file() {
            continue;
        }
        match std::fs::read(&path) {
            Ok(bytes) => files.push((path, bytes)),
            // Removed between the listing and the read: it is gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    files.sort();
    Ok(files)
}

/// The documents of one file, as JSON values; on a YAML syntax error, the
/// index of the document at fault and the problem.
pub fn split_documents(bytes: &[u8]) -> Result<Vec<Value>, (Option<usize>, String)> {
    let text = std::str::from_utf8(bytes).map_err(|e| (None, format!("not UTF-8: {e}")))?;
    let mut out = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| (Some(i), format!("not valid YAML: {e}")))?;
        let value = serde_json::to_value(&value).map_err(|e| {
            (
                Some(i),
                format!("cannot be read as JSON (keys must be strings): {e}"),
            )
        })?;
        out.push(value);
    }
    Ok(out)
}

/// The kind, namespace and name of a document, when it has them.
fn key_of(value: &Value, origin: &Origin) -> Option<Key> {
    let kind = value.get("kind")?.as_str()?.to_owned();
    let metadata = value.get("metadata");
    let namespace = metadata
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let name = match (kind.as_str(), name) {
        (_, Some(name)) => name,
        // A Workloads document needs no name: its place names it.
        ("Workloads", None) => format!("{}#{}", origin.file.display(), origin.document),
        (_, None) => return None,
    };
    Some(Key {
        kind,
        namespace,
        name,
    })
}

/// Parses one document by its kind; the field at fault and the problem. A
/// policy document without `metadata.namespace` is in `default` (a Workloads
/// document has none: each of its services names its own).
fn parse(mut value: Value) -> Result<Document, (String, String)> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            (
                "kind".to_owned(),
                "missing; each document needs a kind (HTTPRoute, GRPCRoute, ResiliencePolicy, AuthorizationPolicy or Workloads)"
                    .to_owned(),
            )
        })?
        .to_owned();
    if kind != "Workloads"
        && let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut)
    {
        metadata
            .entry("namespace")
            .or_insert_with(|| Value::String(default_namespace()));
    }
    if kind != "Workloads"
        && value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        return Err(("metadata.name".into(), format!("missing; name the {kind}")));
    }
    let strict_error = |e: weft_api::crd::gateway::StrictError| {
        match e {
        weft_api::crd::gateway::StrictError::UnknownField { field } => (
            field,
            "unknown field; remove it or fix its spelling (weft reads only the fields it documents)"
                .to_owned(),
        ),
        weft_api::crd::gateway::StrictError::Parse(problem) => (String::new(), problem),
    }
    };
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let expect_version = |expected: &str| {
        if api_version == expected {
            Ok(())
        } else {
            Err((
                "apiVersion".to_owned(),
                format!("{api_version:?} is not the version of {kind}; use {expected}"),
            ))
        }
    };
    match kind.as_str() {
        "Workloads" => {
            let workloads: Workloads = from_value_strict(value).map_err(strict_error)?;
            workloads.check()?;
            Ok(Document::Workloads(workloads))
        }
        "HTTPRoute" => {
            expect_version("gateway.networking.k8s.io/v1")?;
            Ok(Document::HttpRoute(
                from_value_strict(value).map_err(strict_error)?,
            ))
        }
        "GRPCRoute" => {
            expect_version("gateway.networking.k8s.io/v1")?;
            Ok(Document::GrpcRoute(
                from_value_strict(value).map_err(strict_error)?,
            ))
        }
        "ResiliencePolicy" => {
            expect_version(&format!(
                "{}/{}",
                weft_api::consts::CRD_GROUP,
                weft_api::consts::CRD_VERSION
            ))?;
            Ok(Document::Resilience(
                from_value_strict(value).map_err(strict_error)?,
            ))
        }
        "AuthorizationPolicy" => {
            expect_version(&format!(
                "{}/{}",
                weft_api::consts::CRD_GROUP,
                weft_api::consts::CRD_VERSION
            ))?;
            Ok(Document::Authorization(
                from_value_strict(value).map_err(strict_error)?,
            ))
        }
        other => Err((
            "kind".into(),
            format!(
                "{other:?} is not read in local mode; use HTTPRoute, GRPCRoute, ResiliencePolicy, AuthorizationPolicy or Workloads"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_become_services_slices_and_pods() {
        let value: Value = serde_json::to_value(
            serde_yaml::from_str::<serde_yaml::Value>(
                "apiVersion: local.weft.io/v1alpha1\nkind: Workloads\nmetadata:\n  name: shop\nservices:\n  - name: checkout-v1\n    ports: [80]\n    endpoints:\n      - address: 127.0.0.1:9001\n        serviceAccount: checkout\n        labels: {version: v1}\n",
            )
            .unwrap(),
        )
        .unwrap();
        let Document::Workloads(w) = parse(value).unwrap() else {
            panic!("workloads")
        };
        let resources = w.resources();
        assert_eq!(resources.len(), 3);
        let Resource::Pod(pod) = &resources[1] else {
            panic!("pod")
        };
        assert_eq!(
            pod.status.as_ref().unwrap().pod_ip.as_deref(),
            Some("127.0.0.1")
        );
        assert!(
            pod.metadata
                .annotations
                .as_ref()
                .unwrap()
                .contains_key(weft_api::consts::INJECTED_BY_ANNOTATION)
        );
        let Resource::EndpointSlice(slice) = &resources[2] else {
            panic!("slice")
        };
        assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(9001));
    }

    #[test]
    fn an_unknown_field_is_named_with_its_path() {
        let value = json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "checkout"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "checkout"}],
                "rules": [{"backendRef": [{"name": "checkout-v1"}]}],
            },
        });
        let (field, problem) = parse(value).unwrap_err();
        assert_eq!(field, "spec.rules[0].backendRef");
        assert!(problem.contains("unknown field"), "{problem}");
        let value = json!({"apiVersion": "local.weft.io/v1alpha1", "kind": "Workloads",
            "services": [{"name": "a", "ports": [80], "endpoints": [{"adress": "127.0.0.1:1"}]}]});
        let (field, _) = parse(value).unwrap_err();
        // serde reports the missing `address` before the strict check.
        assert!(field.is_empty() || field.contains("adress"), "{field}");
    }
}
