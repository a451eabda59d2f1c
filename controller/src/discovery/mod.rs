//! Discovery: what each proxy is told about the targets it sends to.
//!
//! - [`index`]: the pure [`Index`] (Kubernetes objects in, one `watch` of a
//!   full `DestinationState` per target out) and [`SharedIndex`], its
//!   clonable, debounced handle that the backends feed.
//! - [`kube`]: the Kubernetes backend (watchers feeding the index) and
//!   [`status`], which writes the index's verdicts into the objects' status
//!   while this replica holds the [`lease`].
//! - [`service`]: the `weft.v1.Discovery` gRPC service, reading the index;
//!   [`inbound_service`]: `weft.v1.Inbound`, a workload port's inbound policy.
//! - [`local`]: local mode's policy directory, feeding the index.

pub mod inbound_service;
pub mod index;
pub mod kube;
pub mod lease;
pub mod local;
pub mod service;
pub mod status;

pub use index::{
    ChangedAt, FindingKind, Index, IndexSettings, Kind, NotInMesh, ObjectRef, ObjectStatus,
    PolicyAudit, PolicyFinding, PortAccess, Resource, ServiceAccess, Severity, SharedIndex,
    StatusCondition, UnknownWorkload,
};
