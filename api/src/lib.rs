//! The shared contract of weft.
//!
//! Every other crate depends on this one and nothing here depends on them.
//!
//! - [`accept`]: the accept loop every listener uses (backs off on accept errors).
//! - [`exposition`]: `/metrics` in OpenMetrics or the Prometheus text format,
//!   as the request's `Accept` asks.
//! - [`identity`]: the SPIFFE [`Identity`] of a workload, parsed and validated.
//! - [`consts`]: ports, uid, labels, annotations, headers and environment names
//!   that the injector, the proxy and the controller must agree on.
//! - [`certify`]: `Identity.Certify` as domain types (request, certificate,
//!   typed refusal), converted from the wire types at the edge.
//! - [`control`]: the client side of the control protocol: a gRPC channel to the
//!   controller over TLS that checks the controller's identity.
//! - [`policy`]: the policy model (destinations, routes, retries, circuit
//!   breaking, load balancing, inbound authorization) with its validation and
//!   its conversions from the wire types; no kube or protobuf types in it.
//! - [`crd`] (feature `k8s`): the `policy.weft.io` custom resources
//!   (`ResiliencePolicy`, `AuthorizationPolicy`), converted into the policy
//!   model; their YAML in `deploy/crds/` is generated (see `tests/crds_generated.rs`).
//! - [`dns`]: names to addresses without the C library (static binaries in
//!   empty images): literal IPs, `/etc/hosts`, then `/etc/resolv.conf` with hickory.
//! - [`process`]: the process's own metrics (memory, CPU, threads, descriptors,
//!   tokio tasks) for every `/metrics` endpoint.
//! - [`proto`]: the generated wire types of package `weft.v1` (checked in; see
//!   `tests/proto_generated.rs`).
//! - [`tls`]: the one place where mesh TLS is configured (TLS 1.3 only, aws-lc-rs,
//!   X25519MLKEM768 preferred), where peer identities are read from certificates,
//!   and where credentials are swapped in without rebuilding configurations.

pub mod accept;
pub mod certify;
pub mod consts;
pub mod control;
#[cfg(feature = "k8s")]
pub mod crd;
pub mod dns;
pub mod exposition;
pub mod identity;
pub mod otlp;
pub mod policy;
pub mod process;
pub mod proto;
pub mod tls;

pub use identity::{Identity, IdentityError};
