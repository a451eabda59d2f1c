//! Names and numbers that the parts of weft agree on (DESIGN.md, "Ports, names, uid").
//!
//! Nothing here may be written a second time elsewhere: import it.

/// Proxy outbound listener: iptables target for the pod's outgoing TCP.
pub const PROXY_OUTBOUND_PORT: u16 = 15140;
/// Proxy inbound listener: iptables target for incoming TCP.
pub const PROXY_INBOUND_PORT: u16 = 15143;
/// Proxy admin server: `/live`, `/ready`, `/metrics`, ...
pub const PROXY_ADMIN_PORT: u16 = 15191;
/// The proxy runs as this uid and gid; its own traffic is not redirected.
pub const PROXY_UID: u32 = 2510;
/// Controller gRPC (identity, discovery, inbound policy), TLS.
pub const CONTROLLER_GRPC_PORT: u16 = 8090;
/// Injector webhook, HTTPS.
pub const INJECTOR_WEBHOOK_PORT: u16 = 9443;
/// Controller and injector admin and metrics.
pub const CONTROL_PLANE_ADMIN_PORT: u16 = 9990;

/// Namespace label (and pod annotation) that opts into injection.
pub const INJECT_KEY: &str = "weft.io/inject";
pub const INJECT_ENABLED: &str = "enabled";
pub const INJECT_DISABLED: &str = "disabled";
/// Annotation set on injected pods, valued with the injector's version.
pub const INJECTED_BY_ANNOTATION: &str = "weft.io/injected-by";
/// Prefix of the per-pod configuration annotations.
pub const CONFIG_ANNOTATION_PREFIX: &str = "config.weft.io/";
/// CRD group and version of weft's own policy resources.
pub const CRD_GROUP: &str = "policy.weft.io";
pub const CRD_VERSION: &str = "v1alpha1";
/// The `controllerName` weft writes in an HTTPRoute's or GRPCRoute's
/// `status.parents[]` (Gateway API: a domain-prefixed path).
pub const ROUTE_CONTROLLER_NAME: &str = "policy.weft.io/weft-controller";
/// Namespace the mesh's own components run in by default.
pub const MESH_NAMESPACE: &str = "weft-system";
/// Audience of the projected ServiceAccount token a proxy presents to Certify.
pub const IDENTITY_TOKEN_AUDIENCE: &str = "identity.weft.io";

/// Request header set by the inbound proxy: the SPIFFE identity of the caller,
/// proven by mTLS. Any value sent by a client is removed first.
pub const CLIENT_ID_HEADER: &str = "weft-client-id";
/// Response header on responses the proxy generated itself, naming the cause.
/// Its presence tells an app owner "the mesh refused", not "the server failed".
pub const PROXY_ERROR_HEADER: &str = "weft-proxy-error";
/// Hop header between proxies: the protocol the app spoke before the request was
/// carried over the proxies' HTTP/2 connection (for example `HTTP/1.1`).
pub const ORIG_PROTO_HEADER: &str = "weft-orig-proto";

/// ALPN protocols spoken on mesh mTLS connections between proxies.
pub mod alpn {
    /// HTTP multiplexed over HTTP/2 (the default for HTTP between proxies).
    pub const H2: &[u8] = b"h2";
    /// HTTP/1.1 between proxies, used for requests that upgrade the connection.
    pub const HTTP1: &[u8] = b"http/1.1";
    /// Opaque TCP: the bytes are relayed unchanged to the app.
    pub const OPAQUE: &[u8] = b"weft.opaque/1";
}

/// Environment variables the proxy reads (set by the injector in a pod, by the
/// local controller in local mode, or by hand). Defaults are documented on each.
/// The OpenTelemetry SDK's standard variables the proxy reads for tracing
/// (the injector sets them from the pod and its settings).
pub mod otel_env {
    pub const EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    /// Wins over [`EXPORTER_OTLP_ENDPOINT`] for traces.
    pub const EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    /// A PEM file of the CA certificates that verify an `https://` collector;
    /// without it, the web PKI roots do.
    pub const EXPORTER_OTLP_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
    /// Wins over [`EXPORTER_OTLP_CERTIFICATE`] for traces.
    pub const EXPORTER_OTLP_TRACES_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE";
    /// `none` turns tracing off; `otlp` (the default) is the only exporter.
    pub const TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
    pub const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
    pub const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
    pub const TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
    pub const TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
}

pub mod env {
    /// Inbound listener address. Default `0.0.0.0:15143`.
    pub const INBOUND_ADDR: &str = "WEFT_PROXY_INBOUND_ADDR";
    /// Transparent outbound listener address. Default `127.0.0.1:15140`, and
    /// `[::1]:15140` too when the network namespace has IPv6. Only used in
    /// transparent mode (no `WEFT_PROXY_APP_ADDR`) unless set.
    pub const OUTBOUND_ADDR: &str = "WEFT_PROXY_OUTBOUND_ADDR";
    /// Admin server address. Default `0.0.0.0:15191`.
    pub const ADMIN_ADDR: &str = "WEFT_PROXY_ADMIN_ADDR";
    /// Where the inbound proxy sends traffic for the app, as `host:port`. When
    /// unset, the app is reached on 127.0.0.1 at the connection's original port.
    pub const APP_ADDR: &str = "WEFT_PROXY_APP_ADDR";
    /// Upstream listeners (local mode, and explicit upstreams in a pod): entries
    /// separated by whitespace, each `name,listen-addr,target-addr,identity[,opaque]`,
    /// for example `checkout,127.0.0.1:4140,127.0.0.1:5143,spiffe://cluster.local/ns/shop/sa/checkout`.
    /// Several replicas: join their addresses with `+` (`127.0.0.1:5143+127.0.0.1:5144`).
    /// With discovery on, an entry may instead name a service, `listen-addr=service:port[,opaque]`
    /// (`127.0.0.1:4140=checkout:80`): its endpoints, weights and policy come from the
    /// controller. The static form stays an explicit override.
    pub const UPSTREAMS: &str = "WEFT_PROXY_UPSTREAMS";
    /// `true`/`false`: ask the controller's `Discovery.Watch` for upstream services and
    /// transparent destinations. Default: on when `CONTROLLER_ADDR` is set.
    pub const DISCOVERY: &str = "WEFT_PROXY_DISCOVERY";
    /// The controller's gRPC address (`host:port`). When set, the proxy
    /// generates its key in memory and gets its certificate from
    /// `Identity.Certify`; otherwise it reads `CERT_FILE` and `KEY_FILE`.
    pub const CONTROLLER_ADDR: &str = "WEFT_PROXY_CONTROLLER_ADDR";
    /// The identity the controller must prove. Default: the controller identity
    /// in the workload's trust domain.
    pub const CONTROLLER_IDENTITY: &str = "WEFT_PROXY_CONTROLLER_IDENTITY";
    /// The workload's identity (`spiffe://...`), which its token proves.
    pub const IDENTITY: &str = "WEFT_PROXY_IDENTITY";
    /// File holding the token presented to `Certify` (projected ServiceAccount
    /// token in Kubernetes, bootstrap token in local mode).
    pub const IDENTITY_TOKEN_FILE: &str = "WEFT_PROXY_IDENTITY_TOKEN_FILE";
    /// Seconds between checks of the trust anchor file for changes. Default 5.
    pub const TRUST_ANCHORS_RELOAD: &str = "WEFT_PROXY_TRUST_ANCHORS_RELOAD";
    /// PEM file with the workload certificate chain, leaf first.
    pub const CERT_FILE: &str = "WEFT_PROXY_CERT_FILE";
    /// PEM file with the workload private key.
    pub const KEY_FILE: &str = "WEFT_PROXY_KEY_FILE";
    /// PEM bundle of trust anchors (may hold several roots during a rotation).
    pub const TRUST_ANCHORS_FILE: &str = "WEFT_PROXY_TRUST_ANCHORS_FILE";
    /// Seconds to wait for the first bytes when detecting a protocol. Default 10.
    pub const DETECT_TIMEOUT: &str = "WEFT_PROXY_DETECT_TIMEOUT";
    /// Seconds an HTTP/1 client may take to send a request's head, counted
    /// from its first byte (idle keep-alive connections are not timed out).
    /// Default 10.
    pub const HEADER_TIMEOUT: &str = "WEFT_PROXY_HEADER_TIMEOUT";
    /// Seconds in-flight work may take to drain at shutdown. Default 30.
    pub const SHUTDOWN_GRACE: &str = "WEFT_PROXY_SHUTDOWN_GRACE";
    /// Threads that run the proxy's work. Default 1: one thread runs every
    /// connection, with no hand-offs between threads (the lowest latency and CPU
    /// per request for a sidecar); more for pods whose traffic needs more than
    /// one core.
    pub const WORKER_THREADS: &str = "WEFT_PROXY_WORKER_THREADS";
    /// Log filter, in `tracing_subscriber::EnvFilter` syntax. Default `info`.
    pub const LOG: &str = "WEFT_PROXY_LOG";
    /// Log format: `plain` or `json`. Default `plain`.
    pub const LOG_FORMAT: &str = "WEFT_PROXY_LOG_FORMAT";
    /// `on`: one log line per HTTP request (target `weft_proxy::access`).
    /// Default `off`.
    pub const ACCESS_LOG: &str = "WEFT_PROXY_ACCESS_LOG";
    /// Meshed destinations for the transparent outbound listener, until
    /// discovery replaces them: entries separated by whitespace, each
    /// `IP=IDENTITY` or `IP:PORT=IDENTITY`. Others are passed through. Default none.
    pub const DESTINATIONS: &str = "WEFT_PROXY_DESTINATIONS";
    /// A file with more destination entries, one per line (`#` comments).
    pub const DESTINATIONS_FILE: &str = "WEFT_PROXY_DESTINATIONS_FILE";
    /// Destination ports relayed as opaque TCP without protocol detection
    /// (server-speaks-first protocols), comma separated. Default none.
    pub const OPAQUE_PORTS: &str = "WEFT_PROXY_OPAQUE_PORTS";

    // --- Injection (issue 10, inject-core) ---
    /// The trust anchors as PEM text (the injector inlines the bundle: pods of
    /// other namespaces cannot mount the mesh namespace's ConfigMap). Exactly
    /// one of this and `TRUST_ANCHORS_FILE` is set; inline anchors are not
    /// reloaded (a rotation reaches a pod when it is created again).
    pub const TRUST_ANCHORS: &str = "WEFT_PROXY_TRUST_ANCHORS";
    /// Whether `POST /shutdown` on the admin server stops the proxy: `true` or
    /// `false`. Default `true`; the injector sets `false` except for the classic
    /// sidecar of a Job's pod, whose workload ends its proxy that way.
    pub const SHUTDOWN_ENDPOINT: &str = "WEFT_PROXY_SHUTDOWN_ENDPOINT";
    /// The default inbound policy of the workload: one of
    /// `weft_api::policy::InboundMode` (default `allow-all`). Set by the injector
    /// from `config.weft.io/default-inbound-policy` (pod, then namespace, then
    /// the install option); the inbound proxy enforces it.
    pub const DEFAULT_INBOUND_POLICY: &str = "WEFT_PROXY_DEFAULT_INBOUND_POLICY";
    /// The largest request body (bytes) buffered so it can be retried; default 65536.
    pub const RETRY_BUFFER_BYTES: &str = "WEFT_PROXY_RETRY_BUFFER_BYTES";
    /// The most distinct peer identities metric labels name; later ones are
    /// labelled `overflow`. Default 100.
    pub const METRICS_MAX_IDENTITIES: &str = "WEFT_PROXY_METRICS_MAX_IDENTITIES";
    /// Seconds after which the metric series of a peer identity not seen
    /// since (and with no open connection) are removed, freeing its place
    /// under `METRICS_MAX_IDENTITIES`. Default 600 (10 minutes).
    pub const METRICS_IDLE_EXPIRY: &str = "WEFT_PROXY_METRICS_IDLE_EXPIRY";
    /// The workload the proxy serves, as `Inbound.Watch` names it:
    /// `<namespace>/<pod name>` (the injector sets it from the downward API),
    /// the workload's name in local mode. Unset: no inbound policy is watched.
    pub const WORKLOAD: &str = "WEFT_PROXY_WORKLOAD";
    /// The app ports (comma-separated) whose inbound policy the proxy watches
    /// from the start (the injector sets the pod's container ports).
    pub const INBOUND_PORTS: &str = "WEFT_PROXY_INBOUND_PORTS";
    /// The kubelet's HTTP and gRPC probes, `port:path` separated by spaces
    /// (`8080:/healthz 9090:/grpc.health.v1.Health/Check`): the inbound proxy
    /// lets a plaintext caller make exactly these requests in every mode.
    pub const PROBE_PATHS: &str = "WEFT_PROXY_PROBE_PATHS";
    /// The pod's name and namespace (downward API), from which the injector
    /// composes [`WORKLOAD`].
    pub const POD_NAME: &str = "WEFT_PROXY_POD_NAME";
    pub const POD_NAMESPACE: &str = "WEFT_PROXY_POD_NAMESPACE";
}

/// Environment variables `weft-init` reads when the matching flag is not given
/// (the injector sets them on the init container from the `config.weft.io/`
/// annotations). Lists are separated by commas.
pub mod init_env {
    /// Inbound ports not redirected to the proxy, e.g. `22,8000-8100`. Default none.
    pub const SKIP_INBOUND_PORTS: &str = "WEFT_INIT_SKIP_INBOUND_PORTS";
    /// Outbound destination ports not redirected to the proxy, e.g. `25,587`. Default none.
    pub const SKIP_OUTBOUND_PORTS: &str = "WEFT_INIT_SKIP_OUTBOUND_PORTS";
    /// Destination subnets (IPv4 or IPv6 CIDR) not redirected, e.g.
    /// `10.96.0.0/12,fd00::/8`. Default none.
    pub const SKIP_SUBNETS: &str = "WEFT_INIT_SKIP_SUBNETS";
    /// Whether to install the IPv6 rules too: `true` or `false`. Default `true`.
    pub const IPV6: &str = "WEFT_INIT_IPV6";
    /// uid whose traffic is never redirected (the proxy's). Default 2510.
    pub const PROXY_UID: &str = "WEFT_INIT_PROXY_UID";
}

/// Service account of the controller: its gRPC endpoint presents the identity
/// `spiffe://<trust-domain>/ns/weft-system/sa/weft-controller`.
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "weft-controller";

/// The injector webhook (`weft-injector`): its HTTP path and the files it reads in
/// its pod. The deploy manifests and `weft install` mount and name these.
pub mod injector {
    /// Path the API server POSTs AdmissionReviews of pod CREATE to, on
    /// [`super::INJECTOR_WEBHOOK_PORT`] (the MutatingWebhookConfiguration's
    /// `clientConfig.service.path`, or the end of its `url`).
    pub const INJECT_PATH: &str = "/inject";
    /// Directory the webhook serving certificate Secret is mounted at.
    pub const SERVING_CERT_DIR: &str = "/var/run/weft/webhook";
    /// Default serving certificate chain (PEM, leaf first): `tls.crt` of the Secret.
    pub const SERVING_CERT_FILE: &str = "/var/run/weft/webhook/tls.crt";
    /// Default serving key (PEM): `tls.key` of the Secret.
    pub const SERVING_KEY_FILE: &str = "/var/run/weft/webhook/tls.key";
    /// Default path of the mounted anchors bundle in the injector's pod
    /// ([`super::install::TRUST_ANCHORS_CONFIGMAP`], key [`super::install::TRUST_ANCHORS_KEY`]).
    pub const TRUST_ANCHORS_FILE: &str = "/var/run/weft/anchors/ca-bundle.crt";
}

/// The Kubernetes objects of an installation (`deploy/`, `weft install`,
/// `weft check`; issue 10), named once here for the CLI, the controller, the
/// injector and the tests.
pub mod install {
    /// Secret holding the issuer: `tls.crt`, `tls.key`, `ca.crt` (the anchors).
    pub const ISSUER_SECRET: &str = "weft-issuer";
    /// ConfigMap holding the trust anchors (PEM bundle) under [`TRUST_ANCHORS_KEY`].
    pub const TRUST_ANCHORS_CONFIGMAP: &str = "weft-trust-anchors";
    pub const TRUST_ANCHORS_KEY: &str = "ca-bundle.crt";
    /// Secret holding the webhook's serving certificate (`tls.crt`, `tls.key`).
    pub const INJECTOR_TLS_SECRET: &str = "weft-injector-tls";
    /// Name of the injector's Deployment, Service and service account.
    pub const INJECTOR_NAME: &str = "weft-injector";
    /// ConfigMap holding the injector's configuration (`InjectConfig`, YAML).
    pub const INJECTOR_CONFIGMAP: &str = "weft-injector-config";
    pub const INJECTOR_CONFIG_KEY: &str = "config.yaml";
    /// The MutatingWebhookConfiguration.
    pub const WEBHOOK_CONFIGURATION: &str = "weft-injector";
    /// Field manager of `weft install --apply` (server-side apply).
    pub const FIELD_MANAGER: &str = "weft";
    /// The label the API server sets on every namespace, valued with its name.
    pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
    /// Standard labels set on every object of an installation.
    pub const NAME_LABEL: &str = "app.kubernetes.io/name";
    pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
    /// Plural names of weft's own CRDs (group [`super::CRD_GROUP`]).
    pub const CRD_PLURALS: &[&str] = &["resiliencepolicies", "authorizationpolicies"];
    /// The Gateway API CRD weft needs (a prerequisite, installed by the user).
    pub const GATEWAY_HTTPROUTE_CRD: &str = "httproutes.gateway.networking.k8s.io";
}

// --- Injection (issue 10, inject-core) ---

/// What the injector adds to a pod, and the annotations that configure it.
pub mod inject {
    /// The proxy's container (native sidecar in `initContainers`, or the first
    /// of `containers`).
    pub const PROXY_CONTAINER: &str = "weft-proxy";
    /// The init container that installs the interception rules.
    pub const INIT_CONTAINER: &str = "weft-init";
    /// The projected ServiceAccount token volume (audience
    /// [`super::IDENTITY_TOKEN_AUDIENCE`]), mounted read-only into the proxy.
    pub const TOKEN_VOLUME: &str = "weft-identity-token";
    /// Where the token volume is mounted in the proxy.
    pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/weft.io/identity";
    /// The token's file name in that volume.
    pub const TOKEN_FILE: &str = "token";
    /// A writable `/run` for `weft-init` (the xtables lock), whose root
    /// filesystem is read-only.
    pub const INIT_RUN_VOLUME: &str = "weft-init-run";
    /// Annotation recording why a pod that asked for the mesh was not injected
    /// (a skip reason's label, e.g. `host-network`).
    pub const SKIPPED_ANNOTATION: &str = "weft.io/inject-skipped";
    /// The proxy's admin port, as it is named in the pod.
    pub const ADMIN_PORT_NAME: &str = "weft-admin";
    /// The proxy's inbound port, as it is named in the pod.
    pub const INBOUND_PORT_NAME: &str = "weft-inbound";
    /// Namespaces never injected (besides the mesh's own).
    pub const PROTECTED_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];
    /// Labels the Job controller puts on its pods.
    pub const JOB_NAME_LABELS: [&str; 2] = ["batch.kubernetes.io/job-name", "job-name"];
    /// The proxy binary's flag that waits until the proxy is ready (the classic
    /// sidecar's postStart hook: the image has no shell).
    pub const WAIT_READY_FLAG: &str = "--wait-ready";

    /// `config.weft.io/` annotations (on the pod, or inherited from its
    /// namespace; the pod's win).
    pub mod annotation {
        /// Inbound ports not redirected to the proxy (`22,8000-8100`).
        pub const SKIP_INBOUND_PORTS: &str = "config.weft.io/skip-inbound-ports";
        /// Outbound destination ports not redirected (`25,587`).
        pub const SKIP_OUTBOUND_PORTS: &str = "config.weft.io/skip-outbound-ports";
        /// Destination subnets not redirected (`10.96.0.0/12,fd00::/8`).
        pub const SKIP_SUBNETS: &str = "config.weft.io/skip-subnets";
        /// Destination ports relayed opaque, without protocol detection (`3306,6379`).
        pub const OPAQUE_PORTS: &str = "config.weft.io/opaque-ports";
        /// The proxy's resources (Kubernetes quantities).
        pub const PROXY_CPU_REQUEST: &str = "config.weft.io/proxy-cpu-request";
        pub const PROXY_CPU_LIMIT: &str = "config.weft.io/proxy-cpu-limit";
        pub const PROXY_MEMORY_REQUEST: &str = "config.weft.io/proxy-memory-request";
        pub const PROXY_MEMORY_LIMIT: &str = "config.weft.io/proxy-memory-limit";
        /// The proxy's log filter (`info`, `warn,weft_proxy=debug`).
        pub const LOG_LEVEL: &str = "config.weft.io/log-level";
        /// The workload's default inbound policy (one of
        /// `weft_api::policy::InboundMode`).
        pub const DEFAULT_INBOUND_POLICY: &str = "config.weft.io/default-inbound-policy";
        /// Where the proxy sends its spans (OTLP/gRPC, `http://collector:4317`;
        /// empty: tracing off).
        pub const OTLP_ENDPOINT: &str = "config.weft.io/otlp-endpoint";
        /// The share of new traces the proxy samples (0 to 1); requests that
        /// arrive with a trace context follow its decision.
        pub const TRACE_SAMPLE_RATIO: &str = "config.weft.io/trace-sample-ratio";

        /// Every annotation of the prefix the injector understands.
        pub const ALL: [&str; 12] = [
            SKIP_INBOUND_PORTS,
            SKIP_OUTBOUND_PORTS,
            SKIP_SUBNETS,
            OPAQUE_PORTS,
            PROXY_CPU_REQUEST,
            PROXY_CPU_LIMIT,
            PROXY_MEMORY_REQUEST,
            PROXY_MEMORY_LIMIT,
            LOG_LEVEL,
            DEFAULT_INBOUND_POLICY,
            OTLP_ENDPOINT,
            TRACE_SAMPLE_RATIO,
        ];
    }

    /// Prometheus' scrape annotations, set on an injected pod that has none.
    pub mod prometheus {
        pub const SCRAPE: &str = "prometheus.io/scrape";
        pub const PORT: &str = "prometheus.io/port";
        pub const PATH: &str = "prometheus.io/path";
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn config_annotations_carry_the_prefix() {
            for key in super::annotation::ALL {
                assert!(
                    key.starts_with(crate::consts::CONFIG_ANNOTATION_PREFIX),
                    "{key}"
                );
            }
        }
    }
}
