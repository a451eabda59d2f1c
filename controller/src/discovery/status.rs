//! Writes back what the index made of each route and policy: an HTTPRoute's or
//! GRPCRoute's `status.parents[]` (one entry per Service parent, controller
//! [`ROUTE_CONTROLLER_NAME`], conditions `Accepted` and `ResolvedRefs`) and a
//! ResiliencePolicy's `status.conditions`, each with reason, message,
//! `observedGeneration` and `lastTransitionTime` (kept while the condition's
//! status stays the same).
//!
//! Only the replica holding the status Lease ([`super::lease`]) writes.
//! Written with server-side apply on the status subresource, field manager
//! [`FIELD_MANAGER`], and only when the status on the server differs from the
//! one wanted (times aside), so an unchanged index writes nothing. The writer
//! wakes when the index's statuses change and when the watchers see a route or
//! policy change (its status included: one overwritten by hand is put back). It
//! writes nothing before the Services and the object's own kind are synced, so
//! a controller that has just started does not report every backend missing.
//!
//! `status.parents` is an atomic list in the Gateway API CRDs: the entries of
//! other controllers (a Gateway's, say) are copied from the current object and
//! written back unchanged.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::json;
use tokio::sync::{Notify, watch};
use weft_api::consts::ROUTE_CONTROLLER_NAME;
use weft_api::crd::{
    AuthorizationPolicy, GrpcRoute, HttpRoute, ParentReference, PolicyStatus, ResiliencePolicy,
    RouteParentStatus, RouteStatus, condition,
};

use super::index::{Kind, ObjectRef, ObjectStatus, SharedIndex};

/// The field manager of every status the controller writes.
pub const FIELD_MANAGER: &str = "weft-controller";

/// How long a failed write waits before the writer tries again (doubling).
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the watchers saw of each route and policy, for the status writer.
#[derive(Clone, Default)]
pub(crate) struct StatusBook {
    inner: Arc<Mutex<Book>>,
    changed: Arc<Notify>,
}

#[derive(Default)]
struct Book {
    objects: HashMap<ObjectRef, Observed>,
    synced: HashSet<Kind>,
}

/// One route or policy as last seen.
#[derive(Clone, Debug, Default)]
pub(crate) struct Observed {
    pub generation: Option<i64>,
    /// The object's `status`, as on the server.
    pub status: serde_json::Value,
    /// Its `spec.parentRefs` (routes), read even when the object does not decode.
    pub parents: Vec<ParentReference>,
    /// Why the object does not decode, if it does not.
    pub undecodable: Option<String>,
}

impl StatusBook {
    fn lock(&self) -> MutexGuard<'_, Book> {
        // A panic while holding the lock leaves plain data behind; go on with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the object as the API server sent it.
    pub(crate) fn observe(
        &self,
        reference: ObjectRef,
        object: &DynamicObject,
        undecodable: Option<String>,
    ) {
        let observed = Observed {
            generation: object.metadata.generation,
            status: object.data.get("status").cloned().unwrap_or_default(),
            parents: parent_refs(&object.data),
            undecodable,
        };
        self.lock().objects.insert(reference, observed);
        self.changed.notify_one();
    }

    pub(crate) fn forget(&self, reference: &ObjectRef) {
        self.lock().objects.remove(reference);
    }

    /// Keeps, of `kind`, the objects `keep` accepts; marks the kind synced.
    pub(crate) fn retain(&self, kind: Kind, keep: impl Fn(&ObjectRef) -> bool) {
        let mut book = self.lock();
        book.objects.retain(|r, _| r.kind != kind || keep(r));
        book.synced.insert(kind);
        drop(book);
        self.changed.notify_one();
    }

    /// Marks a kind without statuses (Services) synced.
    pub(crate) fn synced(&self, kind: Kind) {
        self.lock().synced.insert(kind);
        self.changed.notify_one();
    }

    pub(crate) fn is_synced(&self, kind: Kind) -> bool {
        self.lock().synced.contains(&kind)
    }

    pub(crate) fn get(&self, reference: &ObjectRef) -> Option<Observed> {
        self.lock().objects.get(reference).cloned()
    }

    fn undecodable(&self) -> Vec<(ObjectRef, Observed)> {
        self.lock()
            .objects
            .iter()
            .filter(|(_, o)| o.undecodable.is_some())
            .map(|(r, o)| (r.clone(), o.clone()))
            .collect()
    }

    fn set_status(&self, reference: &ObjectRef, status: serde_json::Value) {
        if let Some(observed) = self.lock().objects.get_mut(reference) {
            observed.status = status;
        }
    }
}

/// The `spec.parentRefs` of a route, each read on its own (one that does not
/// decode is skipped).
fn parent_refs(data: &serde_json::Value) -> Vec<ParentReference> {
    data.pointer("/spec/parentRefs")
        .and_then(|v| v.as_array())
        .map(|refs| {
            refs.iter()
                .filter_map(|r| serde_json::from_value(r.clone()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Writes the statuses the index reports, whenever they or the objects change,
/// until the task is dropped. A write that fails is retried with backoff.
pub(crate) async fn write_statuses(
    client: kube::Client,
    index: SharedIndex,
    book: StatusBook,
    mut holds: watch::Receiver<bool>,
) {
    let mut changes = index.statuses_changed();
    let mut retry = RETRY_MIN;
    loop {
        // Another replica holds the status Lease: it writes. Taking the Lease
        // over starts with a full pass.
        if !*holds.borrow_and_update() {
            if holds.changed().await.is_err() {
                return;
            }
            continue;
        }
        let failed = write_changed(&client, &index, &book).await;
        if failed {
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                changed = changes.changed() => if changed.is_err() { return },
                changed = holds.changed() => if changed.is_err() { return },
            }
            retry = (retry * 2).min(RETRY_MAX);
        } else {
            retry = RETRY_MIN;
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = book.changed.notified() => {}
                changed = holds.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// One pass: every route and policy whose status on the server is not the one
/// wanted gets it. Returns whether a write failed.
async fn write_changed(client: &kube::Client, index: &SharedIndex, book: &StatusBook) -> bool {
    if !book.is_synced(Kind::Service) {
        return false;
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut wanted: Vec<(ObjectRef, Option<i64>, Want)> = index
        .statuses()
        .into_iter()
        .filter_map(|s| want_of(&s).map(|w| (s.object, s.generation, w)))
        .collect();
    let undecodable = book.undecodable();
    wanted.retain(|(r, _, _)| !undecodable.iter().any(|(u, _)| u == r));
    for (reference, observed) in &undecodable {
        let conditions =
            undecodable_conditions(observed.undecodable.as_deref().unwrap_or_default());
        let want = if matches!(reference.kind, Kind::Resilience | Kind::AuthorizationPolicy) {
            Want::Policy(conditions)
        } else {
            Want::Route(
                observed
                    .parents
                    .iter()
                    .filter(|p| p.is_service())
                    .map(|p| ParentWanted {
                        parent: p.clone(),
                        conditions: conditions.clone(),
                    })
                    .collect(),
            )
        };
        wanted.push((reference.clone(), observed.generation, want));
    }
    let mut failed = false;
    for (reference, generation, want) in wanted {
        if !book.is_synced(reference.kind) {
            continue;
        }
        // Not seen by its watcher yet (or deleted): nothing to write to.
        let Some(observed) = book.get(&reference) else {
            continue;
        };
        // The index has not taken the newest version yet: its publish will
        // wake the writer again.
        if generation < observed.generation {
            continue;
        }
        let status = match want {
            Want::Route(parents) => {
                let current: RouteStatus =
                    serde_json::from_value(observed.status.clone()).unwrap_or_default();
                route_parents(&current, &parents, generation, &now)
                    .map(|parents| json!({ "parents": parents }))
            }
            Want::Policy(conditions) => {
                let current: PolicyStatus =
                    serde_json::from_value(observed.status.clone()).unwrap_or_default();
                policy_conditions(&current, &conditions, generation, &now)
                    .map(|conditions| json!({ "conditions": conditions }))
            }
        };
        let Some(status) = status else {
            continue;
        };
        match patch_status(client, &reference, status).await {
            Ok(written) => {
                tracing::debug!(
                    kind = ?reference.kind,
                    namespace = %reference.namespace,
                    name = %reference.name,
                    "status written"
                );
                book.set_status(
                    &reference,
                    written.data.get("status").cloned().unwrap_or_default(),
                );
            }
            // Deleted meanwhile: its watcher will say so.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(error) => {
                failed = true;
                let hint = match &error {
                    kube::Error::Api(e) if e.code == 403 => {
                        "; grant the controller patch on the status subresource (the \
                         weft-controller ClusterRole of `weft install`)"
                    }
                    _ => "",
                };
                tracing::warn!(
                    kind = ?reference.kind,
                    namespace = %reference.namespace,
                    name = %reference.name,
                    %error,
                    "could not write the status{hint}; retrying with backoff"
                );
            }
        }
    }
    failed
}

/// What one object's status should say.
enum Want {
    Route(Vec<ParentWanted>),
    Policy(Vec<Wanted>),
}

fn want_of(status: &ObjectStatus) -> Option<Want> {
    let wanted = |conditions: &[super::StatusCondition]| -> Vec<Wanted> {
        conditions
            .iter()
            .map(|c| Wanted::new(c.type_, c.status, c.reason, c.message.clone()))
            .collect()
    };
    match status.object.kind {
        Kind::HttpRoute | Kind::GrpcRoute => Some(Want::Route(
            status
                .parents
                .iter()
                .enumerate()
                .map(|(i, p)| ParentWanted {
                    parent: p.clone(),
                    conditions: wanted(
                        status
                            .parent_conditions
                            .get(i)
                            .map_or(&status.conditions, |c| c),
                    ),
                })
                .collect(),
        )),
        Kind::Resilience | Kind::AuthorizationPolicy => {
            Some(Want::Policy(wanted(&status.conditions)))
        }
        _ => None,
    }
}

/// Server-side apply of `status` on the object's status subresource.
async fn patch_status(
    client: &kube::Client,
    reference: &ObjectRef,
    status: serde_json::Value,
) -> Result<DynamicObject, kube::Error> {
    let resource = match reference.kind {
        Kind::HttpRoute => ApiResource::erase::<HttpRoute>(&()),
        Kind::GrpcRoute => ApiResource::erase::<GrpcRoute>(&()),
        Kind::AuthorizationPolicy => ApiResource::erase::<AuthorizationPolicy>(&()),
        _ => ApiResource::erase::<ResiliencePolicy>(&()),
    };
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &reference.namespace, &resource);
    let body = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": { "name": reference.name, "namespace": reference.namespace },
        "status": status,
    });
    api.patch_status(
        &reference.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
}

/// A condition the controller wants on an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub type_: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Wanted {
    pub fn new(
        type_: impl Into<String>,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

fn status_word(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// The conditions to write: `wanted`, each keeping the `lastTransitionTime`
/// of the current condition of its type when its status has not changed.
pub fn conditions(
    current: &[Condition],
    wanted: &[Wanted],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    wanted
        .iter()
        .map(|w| {
            let status = status_word(w.status);
            let since = current
                .iter()
                .find(|c| c.type_ == w.type_ && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: w.type_.clone(),
                status: status.to_owned(),
                reason: w.reason.clone(),
                message: w.message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// Whether `current` already says what `wanted` says (times aside). Of
/// `current`, only the types weft writes count.
pub fn conditions_hold(current: &[Condition], wanted: &[Wanted], generation: Option<i64>) -> bool {
    let ours = current
        .iter()
        .filter(|c| {
            c.type_ == condition::ACCEPTED
                || c.type_ == condition::RESOLVED_REFS
                || wanted.iter().any(|w| w.type_ == c.type_)
        })
        .count();
    ours == wanted.len()
        && wanted.iter().all(|w| {
            current.iter().any(|c| {
                c.type_ == w.type_
                    && c.status == status_word(w.status)
                    && c.reason == w.reason
                    && c.message == w.message
                    && c.observed_generation == generation
            })
        })
}

/// What the controller wants in a route's status for each of its Service parents.
#[derive(Clone, Debug, PartialEq)]
pub struct ParentWanted {
    pub parent: ParentReference,
    pub conditions: Vec<Wanted>,
}

/// A route's new `status.parents`: the entries of other controllers as they
/// are, then weft's, one per wanted parent. `None` when the current status
/// already says it.
pub fn route_parents(
    current: &RouteStatus,
    wanted: &[ParentWanted],
    generation: Option<i64>,
    now: &Time,
) -> Option<Vec<RouteParentStatus>> {
    let ours: Vec<&RouteParentStatus> = current
        .parents
        .iter()
        .filter(|p| p.controller_name == ROUTE_CONTROLLER_NAME)
        .collect();
    let holds = ours.len() == wanted.len()
        && wanted.iter().all(|w| {
            ours.iter().any(|p| {
                p.parent_ref == w.parent
                    && conditions_hold(&p.conditions, &w.conditions, generation)
            })
        });
    if holds {
        return None;
    }
    let mut parents: Vec<RouteParentStatus> = current
        .parents
        .iter()
        .filter(|p| p.controller_name != ROUTE_CONTROLLER_NAME)
        .cloned()
        .collect();
    for w in wanted {
        let before = ours
            .iter()
            .find(|p| p.parent_ref == w.parent)
            .map(|p| p.conditions.as_slice())
            .unwrap_or_default();
        parents.push(RouteParentStatus {
            parent_ref: w.parent.clone(),
            controller_name: ROUTE_CONTROLLER_NAME.to_owned(),
            conditions: conditions(before, &w.conditions, generation, now),
        });
    }
    Some(parents)
}

/// A policy's new `status.conditions`; `None` when the current status already
/// says it.
pub fn policy_conditions(
    current: &PolicyStatus,
    wanted: &[Wanted],
    generation: Option<i64>,
    now: &Time,
) -> Option<Vec<Condition>> {
    if conditions_hold(&current.conditions, wanted, generation) {
        return None;
    }
    Some(conditions(&current.conditions, wanted, generation, now))
}

/// The conditions of an object that does not decode: not accepted, naming the
/// field; the last version that decoded stays in force.
fn undecodable_conditions(error: &str) -> Vec<Wanted> {
    vec![Wanted::new(
        condition::ACCEPTED,
        false,
        condition::REASON_INVALID,
        format!("{error}; the last valid version of this object stays in force"),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: &str) -> Time {
        Time(s.parse().expect("a timestamp"))
    }

    fn accepted(status: bool, message: &str) -> Wanted {
        let reason = if status {
            condition::REASON_ACCEPTED
        } else {
            condition::REASON_INVALID
        };
        Wanted::new(condition::ACCEPTED, status, reason, message)
    }

    fn resolved() -> Wanted {
        Wanted::new(
            condition::RESOLVED_REFS,
            true,
            condition::REASON_RESOLVED_REFS,
            "all references resolved",
        )
    }

    #[test]
    fn transition_time_is_kept_while_the_status_stays() {
        let then = time("2026-01-01T00:00:00Z");
        let now = time("2026-02-02T00:00:00Z");
        let first = conditions(&[], &[accepted(true, "ok"), resolved()], Some(1), &then);
        assert!(first.iter().all(|c| c.last_transition_time == then));
        assert!(conditions_hold(
            &first,
            &[accepted(true, "ok"), resolved()],
            Some(1)
        ));
        // A new generation, same statuses: rewritten, times kept.
        assert!(!conditions_hold(
            &first,
            &[accepted(true, "ok"), resolved()],
            Some(2)
        ));
        let second = conditions(&first, &[accepted(true, "ok"), resolved()], Some(2), &now);
        assert!(second.iter().all(|c| c.last_transition_time == then));
        assert!(second.iter().all(|c| c.observed_generation == Some(2)));
        // Accepted flips: its time moves, ResolvedRefs' does not.
        let third = conditions(
            &second,
            &[accepted(false, "spec.rules[0]: bad"), resolved()],
            Some(3),
            &now,
        );
        assert_eq!(third[0].status, "False");
        assert_eq!(third[0].last_transition_time, now);
        assert_eq!(third[1].last_transition_time, then);
    }

    #[test]
    fn other_controllers_parents_are_kept_and_an_unchanged_status_is_not_written() {
        let now = time("2026-02-02T00:00:00Z");
        let gateway = RouteParentStatus {
            parent_ref: ParentReference {
                name: "edge".into(),
                ..ParentReference::default()
            },
            controller_name: "example.com/gateway".into(),
            conditions: vec![],
        };
        let current = RouteStatus {
            parents: vec![gateway.clone()],
        };
        let wanted = vec![ParentWanted {
            parent: ParentReference::service("checkout"),
            conditions: vec![accepted(true, "ok"), resolved()],
        }];
        let parents = route_parents(&current, &wanted, Some(4), &now).expect("a change");
        assert_eq!(parents.len(), 2);
        assert_eq!(parents[0], gateway);
        assert_eq!(parents[1].controller_name, ROUTE_CONTROLLER_NAME);
        assert_eq!(parents[1].parent_ref, ParentReference::service("checkout"));
        let written = RouteStatus { parents };
        assert_eq!(route_parents(&written, &wanted, Some(4), &now), None);
        // A parent removed from the spec: weft's entry for it goes.
        let parents = route_parents(&written, &[], Some(5), &now).expect("a change");
        assert_eq!(parents, vec![gateway]);
    }

    #[test]
    fn policy_conditions_of_other_types_do_not_count() {
        let now = time("2026-02-02T00:00:00Z");
        let mut current = PolicyStatus {
            conditions: conditions(&[], &[accepted(true, "ok")], Some(1), &now),
        };
        current.conditions.push(Condition {
            type_: "Audited".into(),
            status: "True".into(),
            reason: "Audited".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: now.clone(),
        });
        assert_eq!(
            policy_conditions(&current, &[accepted(true, "ok")], Some(1), &now),
            None
        );
        let changed = policy_conditions(&current, &[accepted(false, "bad")], Some(1), &now)
            .expect("a change");
        assert_eq!(changed.len(), 1);
    }

    #[test]
    fn parent_refs_are_read_one_by_one() {
        let data = serde_json::json!({ "spec": { "parentRefs": [
            { "group": "", "kind": "Service", "name": "checkout" },
            { "name": 7 },
        ] } });
        assert_eq!(
            parent_refs(&data),
            vec![ParentReference::service("checkout")]
        );
    }
}
