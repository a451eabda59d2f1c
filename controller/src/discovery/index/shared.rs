//! [`SharedIndex`]: the [`Index`] behind a lock, with a task that publishes
//! a burst of changes once, [`SharedIndex::DEBOUNCE`] after its first change.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
    time::Duration,
};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use weft_api::{
    Identity,
    policy::{DestinationState, InboundPolicy, InboundRequest, Target},
};

use super::{
    ChangedAt, Index, IndexSettings, Kind, NotInMesh, ObjectRef, ObjectStatus, PolicyAudit,
    Resource, UnknownWorkload,
};

/// A clonable handle on one [`Index`]. Changes (`apply`, `delete`, `reset`)
/// reach subscribers [`SharedIndex::DEBOUNCE`] after the first change of a
/// burst, in one snapshot per target; a new subscription gets its first
/// snapshot at once.
#[derive(Clone)]
pub struct SharedIndex {
    index: Arc<Mutex<Index>>,
    changed: Arc<Notify>,
}

impl SharedIndex {
    /// How long a burst of changes is gathered before it is published.
    pub const DEBOUNCE: Duration = Duration::from_millis(75);

    /// An empty index and its debounce task, which ends when `cancel` is
    /// cancelled or every handle is dropped. Call it inside a tokio runtime.
    pub fn new(settings: IndexSettings, cancel: CancellationToken) -> Self {
        Self::with_debounce(settings, Self::DEBOUNCE, cancel)
    }

    /// As [`SharedIndex::new`], gathering changes for `debounce`.
    pub fn with_debounce(
        settings: IndexSettings,
        debounce: Duration,
        cancel: CancellationToken,
    ) -> Self {
        let shared = Self {
            index: Arc::new(Mutex::new(Index::new(settings))),
            changed: Arc::new(Notify::new()),
        };
        tokio::spawn(debounce_task(
            Arc::downgrade(&shared.index),
            shared.changed.clone(),
            debounce,
            cancel,
        ));
        shared
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // The index holds no invariant a panicking holder could break half
        // way that matters more than serving; keep going.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn apply(&self, resource: Resource) {
        self.lock().apply(resource);
        self.changed.notify_one();
    }

    pub fn delete(&self, object: &ObjectRef) {
        self.lock().delete(object);
        self.changed.notify_one();
    }

    pub fn reset(&self, kind: Kind, all: Vec<Resource>) {
        self.lock().reset(kind, all);
        self.changed.notify_one();
    }

    /// See [`Index::subscribe`]: the receiver holds the target's current state.
    pub fn subscribe(
        &self,
        target: &Target,
        caller: &Identity,
    ) -> Result<watch::Receiver<Arc<DestinationState>>, NotInMesh> {
        self.lock().subscribe(target, caller)
    }

    /// See [`Index::subscribe_timed`].
    pub fn subscribe_timed(
        &self,
        target: &Target,
        caller: &Identity,
    ) -> Result<(watch::Receiver<Arc<DestinationState>>, ChangedAt), NotInMesh> {
        self.lock().subscribe_timed(target, caller)
    }

    /// See [`Index::subscribe_inbound_timed`].
    pub fn subscribe_inbound_timed(
        &self,
        request: &InboundRequest,
    ) -> Result<(watch::Receiver<Arc<InboundPolicy>>, ChangedAt), UnknownWorkload> {
        self.lock().subscribe_inbound_timed(request)
    }

    /// See [`Index::subscribe_inbound`]: the receiver holds the port's current policy.
    pub fn subscribe_inbound(
        &self,
        request: &InboundRequest,
    ) -> Result<watch::Receiver<Arc<InboundPolicy>>, UnknownWorkload> {
        self.lock().subscribe_inbound(request)
    }

    /// See [`Index::workload_identity`].
    pub fn workload_identity(&self, workload: &str) -> Result<Identity, UnknownWorkload> {
        self.lock().workload_identity(workload)
    }

    /// See [`Index::policy_audit`].
    pub fn policy_audit(&self) -> PolicyAudit {
        self.lock().policy_audit()
    }

    pub fn statuses(&self) -> Vec<ObjectStatus> {
        self.lock().statuses()
    }

    /// Changes each time a publish finds the statuses changed (for the status writer).
    pub fn statuses_changed(&self) -> watch::Receiver<u64> {
        self.lock().statuses_changed()
    }

    /// Publishes now, without waiting for the debounce.
    pub fn publish_now(&self) {
        self.lock().publish();
    }

    /// Reads the index (for `/config` and tests).
    pub fn with<R>(&self, f: impl FnOnce(&Index) -> R) -> R {
        f(&self.lock())
    }
}

async fn debounce_task(
    index: Weak<Mutex<Index>>,
    changed: Arc<Notify>,
    debounce: Duration,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = changed.notified() => {}
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(debounce) => {}
        }
        let Some(index) = index.upgrade() else {
            return;
        };
        let mut index = index.lock().unwrap_or_else(PoisonError::into_inner);
        let started = std::time::Instant::now();
        index.publish();
        tracing::debug!(
            targets = index.subscriptions(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "discovery index published"
        );
    }
}
