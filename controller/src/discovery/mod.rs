//! Discovery: what each proxy is told about the targets it sends to.
//!
//! - [`index`]: the pure [`Index`] (Kubernetes objects in, one `watch` of a
//!   full `DestinationState` per target out) and [`SharedIndex`], its
//!   clonable, debounced handle that the backends feed.

pub mod index;

pub use index::{
    Index, IndexSettings, Kind, NotInMesh, ObjectRef, ObjectStatus, Resource, SharedIndex,
    StatusCondition,
};
