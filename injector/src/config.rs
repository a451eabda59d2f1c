//! [`InjectConfig`]: what the injector puts into a pod. Read by the webhook from its
//! configuration file (YAML or JSON, camelCase keys, every key optional), built
//! by `weft inject` and `weft install` from their flags.
//!
//! The `config.weft.io/*` defaults here are the lowest layer: a namespace's
//! annotations override them and a pod's annotations override those. They are
//! checked like annotations (a bad default denies with a message naming the
//! configuration key).

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
    /// `imagePullPolicy` of both (`Always`, `IfNotPresent`, `Never`; empty:
    /// the cluster's default). Default `IfNotPresent`.
    pub image_pull_policy: String,
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
    /// The proxy's resources (overridden by `config.weft.io/proxy-*`).
    pub proxy_resources: Resources,
    /// `weft-init`'s resources (a namespace with a ResourceQuota needs them).
    pub init_resources: Resources,
    /// The proxy's log filter (`config.weft.io/log-level`). Default `info`.
    pub log_level: String,
    /// The default inbound policy (`config.weft.io/default-inbound-policy`):
    /// `allow-all`, `mesh-only`, `deny` or `audit`. Default `allow-all`.
    pub default_inbound_policy: String,
    /// Inbound ports never redirected (`config.weft.io/skip-inbound-ports`).
    pub skip_inbound_ports: String,
    /// Outbound ports never redirected (`config.weft.io/skip-outbound-ports`).
    pub skip_outbound_ports: String,
    /// Destination subnets never redirected (`config.weft.io/skip-subnets`).
    pub skip_subnets: String,
    /// Ports relayed opaque (`config.weft.io/opaque-ports`). Default: the
    /// server-speaks-first protocols Linkerd also lists (SMTP, MySQL, Galera,
    /// PostgreSQL, Redis, Elasticsearch, memcached), which protocol detection
    /// would otherwise hold for its timeout.
    pub opaque_ports: String,
    /// Keep the ports of every kubelet probe of the app out of the inbound
    /// redirect. Default false: the proxy lets plaintext callers make the
    /// HTTP and gRPC probes' own requests, so those ports stay protected; only
    /// `tcpSocket` and HTTPS probe ports are kept out (see
    /// docs/architecture.md, "Injection").
    pub skip_probe_ports: bool,
    /// Where proxies send their spans, OTLP over gRPC (`http://host:4317`, or
    /// `https://` for TLS; `config.weft.io/otlp-endpoint`). Default empty:
    /// tracing off, and no `OTEL_*` variable is added.
    pub otlp_endpoint: String,
    /// The share of new traces sampled, 0 to 1
    /// (`config.weft.io/trace-sample-ratio`); a request that arrives with a
    /// trace context follows its caller's decision. Default 0.01.
    pub trace_sample_ratio: String,
    /// Lifetime asked for the projected token (the kubelet renews it at 80 %).
    /// Default 3600.
    pub token_expiration_seconds: i64,
}

/// Requests and limits of a container, as Kubernetes quantities; an empty
/// string leaves that one unset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Resources {
    pub cpu_request: String,
    pub cpu_limit: String,
    pub memory_request: String,
    pub memory_limit: String,
}

impl Resources {
    fn new(cpu_request: &str, cpu_limit: &str, memory_request: &str, memory_limit: &str) -> Self {
        Self {
            cpu_request: cpu_request.to_owned(),
            cpu_limit: cpu_limit.to_owned(),
            memory_request: memory_request.to_owned(),
            memory_limit: memory_limit.to_owned(),
        }
    }
}

impl Default for InjectConfig {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION").to_owned();
        Self {
            proxy_image: format!("weft/weft-proxy:{version}"),
            init_image: format!("weft/weft-init:{version}"),
            version,
            image_pull_policy: "IfNotPresent".to_owned(),
            trust_domain: weft_api::identity::DEFAULT_TRUST_DOMAIN.to_owned(),
            mesh_namespace: weft_api::consts::MESH_NAMESPACE.to_owned(),
            controller_addr: format!(
                "weft-controller.{}.svc:{}",
                weft_api::consts::MESH_NAMESPACE,
                weft_api::consts::CONTROLLER_GRPC_PORT
            ),
            trust_anchors_pem: String::new(),
            native_sidecars: true,
            // One runtime thread by default: a core is the most it can use.
            proxy_resources: Resources::new("100m", "1", "64Mi", "256Mi"),
            init_resources: Resources::new("10m", "100m", "16Mi", "64Mi"),
            log_level: "info".to_owned(),
            default_inbound_policy: "allow-all".to_owned(),
            skip_inbound_ports: String::new(),
            skip_outbound_ports: String::new(),
            skip_subnets: String::new(),
            opaque_ports: "25,587,3306,4444,5432,6379,9300,11211".to_owned(),
            skip_probe_ports: false,
            otlp_endpoint: String::new(),
            trace_sample_ratio: "0.01".to_owned(),
            token_expiration_seconds: 3600,
        }
    }
}
