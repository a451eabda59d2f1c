//! Test support shared by weft's end-to-end suites.
//!
//! - [`pki`]: a root, an intermediate and leaves made to order.
//! - [`apps`]: real servers standing in for apps (HTTP/1.1 + HTTP/2 echo with
//!   upgrades, TCP echo, a tonic gRPC bidirectional stream).
//! - [`mesh`]: proxies started in process on 127.0.0.1 and wired as pairs.
//! - [`control`]: a local controller in process, and proxy pairs certified
//!   by it (`weft_proxy::identity`), for the identity tests.
//! - [`kube_validate`]: Kubernetes manifests checked offline against the API's
//!   JSON schemas of several versions (`kubernetes-validate`).
//! - [`dns`]: a tiny UDP DNS server answering for given names, standing in
//!   for a cluster's DNS (`tests/static_binaries.rs`, `tests/dns.rs`).
//! - [`load`]: continuous HTTP traffic that counts every request.
//! - [`netns`]: pods made of network namespaces on a bridge, for the
//!   transparent-interception tests (`tests/netns_intercept.rs`, root only).
//! - [`prometheus`]: Debian's `promtool` and a real `prometheus` server on
//!   127.0.0.1 scraping given targets (`tests/prometheus.rs`, `tests/audit.rs`).
//! - [`pods`]: meshed pods in those namespaces: `weft-init` plus a real
//!   `weft-proxy` as uid 2510 (`tests/netns_mesh.rs`, root only).
//! - [`skip`]: the one way a suite says it cannot run here (root, a tool, a
//!   cluster): printed, recorded for `scripts/test`, a failure under `CI=true`
//!   unless only the Kubernetes kubeconfig is missing.

pub mod apps;
pub mod control;
pub mod dns;
pub mod kube_validate;
pub mod load;
pub mod mesh;
pub mod netns;
pub mod pki;
pub mod pods;
pub mod prometheus;
pub mod skip;
