//! The policy model: what the controller pushes and the proxy applies.
//!
//! No kube or protobuf types appear here; the wire types (the CRDs of
//! `crate::crd` (feature `k8s`), the messages of [`crate::proto`]) are converted into these
//! types at the edge, with errors ([`PolicyError`]) that name the field.
//!
//! - [`duration`]: Gateway API durations (`500ms`, `10s`).
//! - [`resilience`]: retry policy and budget, circuit breaker, load balancer.
//! - [`error`]: [`PolicyError`], a field path and what is wrong with it.
//! - [`destination`], [`route`]: a target's snapshot ([`DestinationState`]).
//! - [`authz`]: the inbound side ([`InboundPolicy`], [`InboundMode`], [`IdentityPattern`]).
//! - `wire`: conversions to and from the `weft.v1` messages.

pub mod duration;
pub mod error;
pub mod resilience;

pub use error::{FieldPath, PolicyError, Problem};
pub use resilience::{
    Backoff, CircuitBreaker, GrpcCode, LoadBalancer, Resilience, RetryBudget, RetryCondition,
    RetryOn, RetryPolicy,
};
pub mod authz;
pub mod destination;
pub mod route;
mod wire;

pub use authz::{
    Authorization, AuthorizationPolicy, Decision, HttpMatch, IdentityPattern, InboundMode,
    InboundPolicy, InboundRequest, LabelExpression, LabelSelector, PolicyTarget, PortRef,
    Principal, ProtocolHint,
};
pub use destination::{Backend, DestinationState, DiscoveryRequest, Endpoint, Target};
pub use route::{
    BackendRef, GrpcRouteMatch, HeaderMatch, HttpRouteMatch, PathMatch, Route, RouteMatch,
    RouteTimeouts,
};
