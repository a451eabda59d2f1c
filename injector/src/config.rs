//! [`InjectConfig`]: what the injector puts into a pod. Read by the webhook from its
//! configuration file (YAML or JSON, camelCase keys, every key optional), built
//! by `weft inject` and `weft install` from their flags.

use serde::{Deserialize, Serialize};

/// What an injected pod gets. Every field has a default (see [`Default`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct InjectConfig {
    /// The injector's version, written into `weft.io/injected-by`.
    pub version: String,
    /// Image of the proxy sidecar.
    pub proxy_image: String,
    /// Image of the `weft-init` init container.
    pub init_image: String,
    /// Trust domain of workload identities.
    pub trust_domain: String,
    /// Namespace of the mesh's own components (never injected).
    pub mesh_namespace: String,
    /// The controller's gRPC address as the proxy dials it (`host:port`).
    pub controller_addr: String,
    /// The trust anchors (PEM bundle) given to every proxy. Not part of the
    /// configuration file: the webhook reads it from the `weft-trust-anchors`
    /// ConfigMap mounted as a file.
    #[serde(skip)]
    pub trust_anchors_pem: String,
    /// Native sidecar (init container with `restartPolicy: Always`) when true,
    /// classic sidecar (first container, postStart hook waiting for readiness) when false.
    pub native_sidecars: bool,
}

impl Default for InjectConfig {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION").to_owned();
        Self {
            proxy_image: format!("weft/weft-proxy:{version}"),
            init_image: format!("weft/weft-init:{version}"),
            version,
            trust_domain: weft_api::identity::DEFAULT_TRUST_DOMAIN.to_owned(),
            mesh_namespace: weft_api::consts::MESH_NAMESPACE.to_owned(),
            controller_addr: format!(
                "weft-controller.{}.svc:{}",
                weft_api::consts::MESH_NAMESPACE,
                weft_api::consts::CONTROLLER_GRPC_PORT
            ),
            trust_anchors_pem: String::new(),
            native_sidecars: true,
        }
    }
}
