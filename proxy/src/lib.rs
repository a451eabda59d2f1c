//! weft-proxy: the data plane of weft.
//!
//! A sidecar next to every app. Map of the crate:
//!
//! - [`config`]: the proxy's configuration, parsed from the environment contract
//!   of `weft_api::consts::env` in one place, every bad variable reported.
//! - [`proxy`]: [`start`] binds the listeners and returns a [`ProxyHandle`].
//! - [`inbound`]: terminates mesh mTLS, records the client identity, and forwards
//!   to the app (`weft-client-id` on HTTP requests).
//! - [`outbound`]: upstream listeners; route, backend and endpoint selection; the
//!   pooled HTTP/2 connection per peer; opaque TCP.
//! - [`detect`]: protocol detection on the first bytes of a connection.
//! - [`http`]: body types, hop-by-hop headers, upgrades, and responses the proxy
//!   generates itself (with a `weft-proxy-error` header).
//! - [`transport`]: TCP and mesh TLS connection set-up, with typed failures.
//! - [`identity`]: the workload certificate from the controller (key in
//!   memory, renewal at 70 %), and trust anchors reloaded when they change.
//! - [`metrics`] and [`admin`]: Prometheus metrics and the admin server.
//! - [`run`]: the program (environment, PEM files, signals), shared by the
//!   `weft-proxy` binary and `weft`.
//! - [`destinations`]: the static map of meshed destinations (address ->
//!   expected identity) for the transparent outbound listener.
//! - [`iptables`]: the pod's interception rules (`weft-init`): a plan as data,
//!   rendered for `iptables-nft-restore`, installed and verified.
//! - [`sockopt`]: the original destination of a redirected connection
//!   (`SO_ORIGINAL_DST`); the only module that may hold `unsafe` (it has none).

pub mod access;
pub mod admin;
pub mod authz;
pub mod config;
pub mod destinations;
pub mod detect;
pub mod discovery;
mod head_timeout;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod inbound_policy;
pub mod iptables;
pub mod metrics;
pub mod outbound;
pub mod proxy;
pub mod run;
pub mod sockopt;
pub mod trace;
pub mod transport;

pub use config::{
    AppTarget, Backend, Config, ConfigError, Endpoint, ProxyConfig, Target, Transparent, Upstream,
};
pub use proxy::{ProxyHandle, StartError, start, start_with};

/// Locks `m`. A poisoned lock only means a panic elsewhere while it was held;
/// every value the proxy keeps under a `std` mutex is valid at every point
/// (connection lists, the log filter), so the proxy carries on with it.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
