//! weft-injector: the mutating admission webhook that puts the weft proxy into pods.
//!
//! - [`config`]: [`InjectConfig`], what an injected pod gets (images, controller,
//!   trust anchors, resources, native or classic sidecar, defaults of the
//!   `config.weft.io/` annotations).
//! - [`mutate`]: the pure decision `mutate(pod, namespace, config) -> Decision`
//!   (a JSON patch, a skip with its reason, or a denial), shared by the webhook and
//!   `weft inject`; and [`uninject`], its reverse for manifests. Inside it:
//!   the opt-in truth table (`decide`), the checked `config.weft.io/*`
//!   settings (`settings`), the added containers (`containers`) and the patch
//!   of explicit `add` operations (`patch`).
//!
//! The webhook server (binary `weft-injector`):
//! - [`settings`]: the command line, every flag checked at once.
//! - [`injector`]: starts the webhook and admin servers and the file watches.
//! - [`server`]: HTTPS `POST /inject`, the decision taken as a [`server::Decide`].
//! - [`admission`]: AdmissionReview v1 decoded and answered (no I/O).
//! - [`namespaces`]: the Namespace index (watch, or fed by tests) and the
//!   one-off lookup of an unknown namespace.
//! - [`tls_reload`]: the serving certificate, swapped in when its files change.
//! - [`reload`]: polling files for changes (follows Secret symlink swaps).
//! - [`admin`]: `/live`, `/ready`, `/metrics`; [`metrics`]: what is counted.

pub mod admin;
pub mod admission;
pub mod config;
pub mod injector;
pub mod metrics;
pub mod mutate;
pub mod namespaces;
pub mod reload;
pub mod server;
pub mod settings;
pub mod tls_reload;

pub use config::{InjectConfig, Resources};
pub use mutate::{Decision, NamespaceInfo, SkipReason, Skipped, is_injected, mutate, uninject};
