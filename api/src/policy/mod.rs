//! The policy model: what the controller pushes and the proxy applies.
//!
//! No kube or protobuf types appear here; the wire types (the CRDs of
//! [`crate::crd`], the messages of [`crate::proto`]) are converted into these
//! types at the edge, with errors ([`PolicyError`]) that name the field.
//!
//! - [`duration`]: Gateway API durations (`500ms`, `10s`).
//! - [`resilience`]: retry policy and budget, circuit breaker, load balancer.
//! - [`error`]: [`PolicyError`], a field path and what is wrong with it.

pub mod duration;
pub mod error;
pub mod resilience;

pub use error::{FieldPath, PolicyError, Problem};
pub use resilience::{
    Backoff, CircuitBreaker, GrpcCode, LoadBalancer, Resilience, RetryBudget, RetryCondition,
    RetryOn, RetryPolicy,
};
