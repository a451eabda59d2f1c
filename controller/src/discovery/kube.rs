//! The Kubernetes backend of discovery: one kube-runtime watcher per kind
//! (Services, EndpointSlices, Pods, Namespaces, HTTPRoutes, GRPCRoutes,
//! ResiliencePolicies, AuthorizationPolicies;
//! cluster-wide) feeding the [`SharedIndex`], and the status writer
//! ([`super::status`]) reporting back what the index made of each route and
//! policy.
//!
//! A watcher's relist (`Init` .. `InitDone`) becomes one `reset` of its kind; an
//! `Apply` an `apply`, a `Delete` a `delete`. Errors are retried with kube's
//! default backoff: a Gateway API CRD that is not installed (yet) is logged once
//! and retried until it is.
//!
//! Objects are read as `DynamicObject`s and decoded one by one into their typed
//! form, so one object that fails to decode (possible for a CRD whose schema
//! does not pin a field's type, or a newer version of a kind) never stalls the
//! watch of its kind: it is reported (a warning naming the object and the field,
//! and for routes and policies an `Accepted=False` condition on the object) and
//! the last version of it that decoded stays in force.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
#[cfg(test)]
use weft_api::crd::ParentReference;
use weft_api::crd::{AuthorizationPolicy, GrpcRoute, HttpRoute, ResiliencePolicy};

use super::index::{IndexSettings, Kind, ObjectRef, Resource, SharedIndex};
use super::lease::LeaseSettings;
use super::status::{self, StatusBook};

/// Starts the watchers, the status Lease's election and the status writer
/// (writing while this replica holds the Lease); they run until `shutdown` is
/// cancelled. The controller's ServiceAccount needs the grants of its
/// ClusterRole and Role (`cli/src/install/rbac.rs`): list and watch on every
/// kind watched here, patch on the status of routes and policies, and get,
/// create and update on Leases in `lease.namespace`.
pub fn spawn(
    client: kube::Client,
    index: SharedIndex,
    lease: LeaseSettings,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let book = StatusBook::default();
        let mut tasks = JoinSet::new();
        for watched in Watched::all() {
            tasks.spawn(watch(client.clone(), watched, index.clone(), book.clone()));
        }
        let holds = super::lease::elect(client.clone(), lease, shutdown.child_token());
        tasks.spawn(status::write_statuses(client, index, book, holds));
        shutdown.cancelled().await;
        tasks.shutdown().await;
        tracing::debug!("the Kubernetes discovery watchers stopped");
    })
}

/// Kubernetes mode's discovery in one call: a new [`SharedIndex`] fed by
/// [`spawn`]'s watchers (with the status writer), until `shutdown`.
pub fn start(
    client: kube::Client,
    settings: IndexSettings,
    lease: LeaseSettings,
    shutdown: CancellationToken,
) -> SharedIndex {
    let index = SharedIndex::new(settings, shutdown.clone());
    drop(spawn(client, index.clone(), lease, shutdown));
    index
}

/// One watched kind: where it is served and how one object of it is decoded.
#[derive(Clone)]
struct Watched {
    kind: Kind,
    resource: ApiResource,
    decode: fn(serde_json::Value) -> Result<Resource, DecodeError>,
    /// Routes and policies: their status is written back, and the last version
    /// that decoded is kept in case a relist brings one that does not.
    has_status: bool,
    /// What to install when the kind is not served (its CRD is missing).
    install_hint: &'static str,
}

impl Watched {
    fn all() -> Vec<Self> {
        vec![
            Self::new::<Service>(Kind::Service, |v| decode_as(v).map(Resource::Service)),
            Self::new::<EndpointSlice>(Kind::EndpointSlice, |v| {
                decode_as(v).map(Resource::EndpointSlice)
            }),
            Self::new::<Pod>(Kind::Pod, |v| decode_as(v).map(Resource::Pod)),
            Self {
                has_status: true,
                install_hint: GATEWAY_API_HINT,
                ..Self::new::<HttpRoute>(Kind::HttpRoute, |v| decode_as(v).map(Resource::HttpRoute))
            },
            Self {
                has_status: true,
                install_hint: GATEWAY_API_HINT,
                ..Self::new::<GrpcRoute>(Kind::GrpcRoute, |v| decode_as(v).map(Resource::GrpcRoute))
            },
            Self {
                has_status: true,
                install_hint: "install weft's CRDs (deploy/crds, or `weft install`)",
                ..Self::new::<ResiliencePolicy>(Kind::Resilience, |v| {
                    decode_as(v).map(Resource::Resilience)
                })
            },
            Self {
                has_status: true,
                install_hint: "install weft's CRDs (deploy/crds, or `weft install`)",
                ..Self::new::<AuthorizationPolicy>(Kind::AuthorizationPolicy, |v| {
                    decode_as(v).map(Resource::AuthorizationPolicy)
                })
            },
            Self::new::<Namespace>(Kind::Namespace, |v| decode_as(v).map(Resource::Namespace)),
        ]
    }

    fn new<K>(kind: Kind, decode: fn(serde_json::Value) -> Result<Resource, DecodeError>) -> Self
    where
        K: kube::Resource<DynamicType = ()>,
    {
        Self {
            kind,
            resource: ApiResource::erase::<K>(&()),
            decode,
            has_status: false,
            install_hint: "",
        }
    }

    /// `HTTPRoute.gateway.networking.k8s.io/v1`, for logs.
    fn describe(&self) -> String {
        let r = &self.resource;
        if r.group.is_empty() {
            format!("{}/{}", r.kind, r.version)
        } else {
            format!("{}.{}/{}", r.kind, r.group, r.version)
        }
    }
}

const GATEWAY_API_HINT: &str = "install the Gateway API CRDs (standard channel, v1.1 or later)";

/// Why one object could not be decoded into its typed form.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DecodeError {
    /// The field that failed (`spec.rules[0].backendRefs[0].weight`), `.` for
    /// the object as a whole.
    pub path: String,
    pub message: String,
}

/// Decodes one object as `K`, naming the field that does not fit.
pub fn decode_as<K: DeserializeOwned>(value: serde_json::Value) -> Result<K, DecodeError> {
    serde_path_to_error::deserialize(value).map_err(|e| DecodeError {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// Follows one kind until the task is dropped.
async fn watch(client: kube::Client, watched: Watched, index: SharedIndex, book: StatusBook) {
    let api: Api<DynamicObject> = Api::all_with(client, &watched.resource);
    let events = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(events);
    let what = watched.describe();
    let mut decoder = Decoder::new(watched.clone(), book);
    let mut initial: Vec<Resource> = Vec::new();
    let mut not_served = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => {
                initial.clear();
                decoder.relisting();
            }
            Ok(watcher::Event::InitApply(object)) => {
                if let Some(resource) = decoder.decode(&object, Relist::Yes) {
                    initial.push(resource);
                }
            }
            Ok(watcher::Event::InitDone) => {
                if not_served {
                    tracing::info!(kind = %what, "now served; watching it");
                    not_served = false;
                }
                let count = initial.len();
                decoder.relist_done();
                index.reset(watched.kind, std::mem::take(&mut initial));
                tracing::info!(kind = %what, objects = count, "discovery synced");
            }
            Ok(watcher::Event::Apply(object)) => {
                if let Some(resource) = decoder.decode(&object, Relist::No) {
                    index.apply(resource);
                }
            }
            Ok(watcher::Event::Delete(object)) => {
                let reference = decoder.forget(&object);
                index.delete(&reference);
            }
            Err(error) => {
                if is_not_found(&error) {
                    if !not_served {
                        tracing::warn!(
                            kind = %what,
                            "not served by the API server; {}. Retrying with backoff",
                            watched.install_hint
                        );
                        not_served = true;
                    } else {
                        tracing::debug!(kind = %what, %error, "still not served");
                    }
                } else if is_forbidden(&error) {
                    tracing::warn!(
                        kind = %what, %error,
                        "the controller may not list or watch this kind; grant it list and watch \
                         (the weft-controller ClusterRole of `weft install`). Retrying with backoff"
                    );
                } else {
                    tracing::warn!(kind = %what, %error, "discovery watch failed; retrying with backoff");
                }
            }
        }
    }
}

fn api_code(error: &watcher::Error) -> Option<u16> {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => Some(status.code),
        watcher::Error::WatchError(status) => Some(status.code),
        _ => None,
    }
}

fn is_not_found(error: &watcher::Error) -> bool {
    api_code(error) == Some(404)
}

fn is_forbidden(error: &watcher::Error) -> bool {
    api_code(error) == Some(403)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Relist {
    Yes,
    No,
}

/// Decodes one kind's objects, records what the status writer needs, and keeps
/// the last version of each route or policy that decoded.
struct Decoder {
    watched: Watched,
    book: StatusBook,
    last_good: HashMap<(String, String), Resource>,
    /// The objects of the relist under way.
    relisted: HashSet<(String, String)>,
}

impl Decoder {
    fn new(watched: Watched, book: StatusBook) -> Self {
        Self {
            watched,
            book,
            last_good: HashMap::new(),
            relisted: HashSet::new(),
        }
    }

    fn reference(&self, object: &DynamicObject) -> ObjectRef {
        ObjectRef {
            kind: self.watched.kind,
            namespace: object.metadata.namespace.clone().unwrap_or_default(),
            name: object.metadata.name.clone().unwrap_or_default(),
        }
    }

    /// A relist begins.
    fn relisting(&mut self) {
        self.relisted.clear();
    }

    /// The typed object, or (when it does not decode) the last version of it
    /// that did, if any.
    fn decode(&mut self, object: &DynamicObject, relist: Relist) -> Option<Resource> {
        let reference = self.reference(object);
        let key = (reference.namespace.clone(), reference.name.clone());
        if relist == Relist::Yes {
            self.relisted.insert(key.clone());
        }
        let decoded = serde_json::to_value(object)
            .map_err(|e| DecodeError {
                path: ".".into(),
                message: e.to_string(),
            })
            .and_then(self.watched.decode);
        match decoded {
            Ok(resource) => {
                if self.watched.has_status {
                    self.book.observe(reference, object, None);
                    self.last_good.insert(key, resource.clone());
                }
                Some(resource)
            }
            Err(error) => {
                tracing::warn!(
                    kind = %self.watched.describe(),
                    namespace = %reference.namespace,
                    name = %reference.name,
                    field = %error.path,
                    error = %error.message,
                    "an object does not decode; it is ignored and its last good version, if any, \
                     stays in force"
                );
                if self.watched.has_status {
                    self.book
                        .observe(reference, object, Some(error.to_string()));
                }
                match relist {
                    // A relist replaces everything of the kind: keep the last good one.
                    Relist::Yes => self.last_good.get(&key).cloned(),
                    // An update: the index still holds the last good one.
                    Relist::No => None,
                }
            }
        }
    }

    /// A relist is complete: forget what it no longer lists.
    fn relist_done(&mut self) {
        let listed = std::mem::take(&mut self.relisted);
        self.last_good.retain(|key, _| listed.contains(key));
        if self.watched.has_status {
            self.book.retain(self.watched.kind, |r| {
                listed.contains(&(r.namespace.clone(), r.name.clone()))
            });
        } else {
            self.book.synced(self.watched.kind);
        }
    }

    fn forget(&mut self, object: &DynamicObject) -> ObjectRef {
        let reference = self.reference(object);
        self.last_good
            .remove(&(reference.namespace.clone(), reference.name.clone()));
        if self.watched.has_status {
            self.book.forget(&reference);
        }
        reference
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(weight: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": { "name": "checkout", "namespace": "shop", "generation": 2 },
            "spec": {
                "parentRefs": [{ "group": "", "kind": "Service", "name": "checkout" }],
                "rules": [{ "backendRefs": [
                    { "name": "checkout-v1", "port": 80, "weight": 90 },
                    { "name": "checkout-v2", "port": 80, "weight": weight },
                ] }],
            },
        }))
        .expect("a DynamicObject")
    }

    fn weight_of_v2(resource: &Resource) -> Option<i32> {
        match resource {
            Resource::HttpRoute(r) => r.spec.rules[0].backend_refs[1].weight,
            _ => None,
        }
    }

    fn http_routes(book: &StatusBook) -> Decoder {
        let watched = Watched::all()
            .into_iter()
            .find(|w| w.kind == Kind::HttpRoute)
            .expect("HTTPRoutes are watched");
        Decoder::new(watched, book.clone())
    }

    #[test]
    fn a_field_that_does_not_decode_is_named() {
        let value = serde_json::to_value(route(serde_json::json!("10"))).expect("json");
        let error = decode_as::<HttpRoute>(value).expect_err("a string weight");
        assert_eq!(error.path, "spec.rules[0].backendRefs[1].weight");
        assert!(error.message.contains("invalid type: string"), "{error}");
    }

    #[test]
    fn an_object_that_does_not_decode_keeps_its_last_good_version() {
        let book = StatusBook::default();
        let mut decoder = http_routes(&book);
        let reference = ObjectRef {
            kind: Kind::HttpRoute,
            namespace: "shop".into(),
            name: "checkout".into(),
        };
        decoder.relisting();
        let good = decoder
            .decode(&route(serde_json::json!(10)), Relist::Yes)
            .expect("decodes");
        decoder.relist_done();
        assert_eq!(weight_of_v2(&good), Some(10));
        assert!(book.is_synced(Kind::HttpRoute));
        assert_eq!(book.get(&reference).expect("observed").undecodable, None);

        // An update that does not decode: nothing for the index (it keeps the
        // good one); the book names the field for the status.
        assert!(
            decoder
                .decode(&route(serde_json::json!("ten")), Relist::No)
                .is_none()
        );
        let observed = book.get(&reference).expect("observed");
        let why = observed.undecodable.expect("undecodable");
        assert!(
            why.starts_with("spec.rules[0].backendRefs[1].weight: "),
            "{why}"
        );
        assert_eq!(observed.parents, vec![ParentReference::service("checkout")]);
        assert_eq!(observed.generation, Some(2));

        // A relist that brings it again: the last good version stands in.
        decoder.relisting();
        let kept = decoder
            .decode(&route(serde_json::json!("ten")), Relist::Yes)
            .expect("the last good version");
        decoder.relist_done();
        assert_eq!(weight_of_v2(&kept), Some(10));

        // Fixed: decodes, and the book forgets the error.
        let fixed = decoder
            .decode(&route(serde_json::json!(50)), Relist::No)
            .expect("decodes");
        assert_eq!(weight_of_v2(&fixed), Some(50));
        assert_eq!(book.get(&reference).expect("observed").undecodable, None);

        // Deleted, and a relist without it: all forgotten.
        decoder.forget(&route(serde_json::json!(50)));
        assert!(book.get(&reference).is_none());
        decoder.relisting();
        decoder.relist_done();
        assert!(decoder.last_good.is_empty());
    }
}
