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

pub mod config;
pub mod mutate;

pub use config::{InjectConfig, Resources};
pub use mutate::{Decision, NamespaceInfo, SkipReason, Skipped, is_injected, mutate, uninject};
