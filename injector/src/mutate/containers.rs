//! The containers and volumes the injector adds: `weft-init`, the proxy
//! (native or classic sidecar), the projected token volume and `weft-init`'s
//! `/run`.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, Pod, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_api::Identity;
use weft_api::consts::{
    IDENTITY_TOKEN_AUDIENCE, PROXY_ADMIN_PORT, PROXY_INBOUND_PORT, PROXY_UID, env, init_env,
    inject, otel_env,
};

use super::settings::{Settings, ports_text};
use crate::config::InjectConfig;

/// Everything about the pod the proxy's environment depends on.
pub(super) struct ProxyInputs<'a> {
    pub identity: &'a Identity,
    pub controller_identity: &'a Identity,
    pub settings: &'a Settings,
    /// `/shutdown` on: the classic sidecar of a Job's pod.
    pub shutdown_endpoint: bool,
    pub native: bool,
    /// The app containers' ports, whose inbound policy the proxy watches from the start.
    pub inbound_ports: Vec<u16>,
    /// The kubelet's HTTP and gRPC probes (`port`, path), which the proxy lets
    /// plaintext callers make.
    pub probe_paths: Vec<(u16, String)>,
    /// The pod's service name and version for its spans' resource (see
    /// [`trace_service`]).
    pub trace_service: (String, Option<String>),
}

/// The name and version the pod's spans are reported under: the
/// `app.kubernetes.io/name` label, else `app`, else the name of the
/// ReplicaSet or Job that made the pod (its `generateName` less the
/// template hash), else the pod's name, else its service account; the version
/// from `app.kubernetes.io/version`, else `version`.
pub(super) fn trace_service(pod: &Pod, service_account: &str) -> (String, Option<String>) {
    let labels = pod.metadata.labels.as_ref();
    let label = |key: &str| {
        labels
            .and_then(|l| l.get(key))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let owner = || {
        let generated = pod.metadata.generate_name.as_deref()?.trim_end_matches('-');
        let name = match label("pod-template-hash") {
            Some(hash) => generated
                .strip_suffix(hash.as_str())
                .map_or(generated, |n| n.trim_end_matches('-')),
            None => generated,
        };
        (!name.is_empty()).then(|| name.to_owned())
    };
    let name = label("app.kubernetes.io/name")
        .or_else(|| label("app"))
        .or_else(owner)
        .or_else(|| pod.metadata.name.clone().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| service_account.to_owned());
    let version = label("app.kubernetes.io/version").or_else(|| label("version"));
    (name, version)
}

/// The `OTEL_*` variables of a proxy that traces (none when tracing is off).
fn otel_env(s: &Settings, (service, version): &(String, Option<String>)) -> Vec<EnvVar> {
    if s.otlp_endpoint.is_empty() {
        return Vec::new();
    }
    let mut resource = vec![
        format!("k8s.namespace.name=$({})", env::POD_NAMESPACE),
        format!("k8s.pod.name=$({})", env::POD_NAME),
    ];
    if let Some(version) = version {
        resource.push(format!("service.version={version}"));
    }
    vec![
        env_var(otel_env::EXPORTER_OTLP_ENDPOINT, s.otlp_endpoint.clone()),
        env_var(otel_env::TRACES_SAMPLER, "parentbased_traceidratio"),
        env_var(
            otel_env::TRACES_SAMPLER_ARG,
            s.trace_sample_ratio.to_string(),
        ),
        env_var(otel_env::SERVICE_NAME, service.clone()),
        env_var(otel_env::RESOURCE_ATTRIBUTES, resource.join(",")),
    ]
}

/// The TCP ports the pod's containers declare, sorted.
pub(super) fn app_ports(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<u16> {
    let mut ports: Vec<u16> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .filter(|p| *p > 0)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// An environment variable from the pod's own fields (the downward API).
fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: field_path.to_owned(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn env_var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn pull_policy(config: &InjectConfig) -> Option<String> {
    (!config.image_pull_policy.is_empty()).then(|| config.image_pull_policy.clone())
}

fn drop_all() -> Vec<String> {
    vec!["ALL".to_owned()]
}

/// `weft-init`: the interception rules, as root with NET_ADMIN and NET_RAW only.
pub(super) fn init_container(
    config: &InjectConfig,
    settings: &Settings,
    skip_inbound: &str,
    resources: ResourceRequirements,
) -> Container {
    let mut env = Vec::new();
    let subnets = settings
        .skip_subnets
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    for (name, value) in [
        (init_env::SKIP_INBOUND_PORTS, skip_inbound.to_owned()),
        (
            init_env::SKIP_OUTBOUND_PORTS,
            ports_text(&settings.skip_outbound_ports),
        ),
        (init_env::SKIP_SUBNETS, subnets),
    ] {
        if !value.is_empty() {
            env.push(env_var(name, value));
        }
    }
    Container {
        name: inject::INIT_CONTAINER.to_owned(),
        image: Some(config.init_image.clone()),
        image_pull_policy: pull_policy(config),
        env: (!env.is_empty()).then_some(env),
        resources: Some(resources),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()]),
                drop: Some(drop_all()),
            }),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            // iptables needs root in the pod's user namespace.
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: inject::INIT_RUN_VOLUME.to_owned(),
            mount_path: "/run".to_owned(),
            ..VolumeMount::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

fn admin_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(PROXY_ADMIN_PORT)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// The proxy: a native sidecar (`restartPolicy: Always`, startup probe) or a
/// classic one (postStart hook that waits for readiness).
pub(super) fn proxy_container(config: &InjectConfig, p: &ProxyInputs<'_>) -> Container {
    let s = p.settings;
    let mut env = vec![
        env_var(env::IDENTITY, p.identity.uri().as_ref()),
        env_var(
            env::IDENTITY_TOKEN_FILE,
            format!("{}/{}", inject::TOKEN_MOUNT_PATH, inject::TOKEN_FILE),
        ),
        env_var(env::CONTROLLER_ADDR, config.controller_addr.clone()),
        env_var(
            env::CONTROLLER_IDENTITY,
            p.controller_identity.uri().as_ref(),
        ),
        env_var(env::TRUST_ANCHORS, config.trust_anchors_pem.clone()),
        env_var(env::LOG, s.log_level.clone()),
        env_var(
            env::DEFAULT_INBOUND_POLICY,
            s.default_inbound_policy.clone(),
        ),
        env_var(env::SHUTDOWN_ENDPOINT, p.shutdown_endpoint.to_string()),
        // A pod's name is not known at admission (a ReplicaSet's pods are
        // named by generateName): the kubelet fills these in, and expands
        // `$(...)` of the variables before.
        field_env(env::POD_NAME, "metadata.name"),
        field_env(env::POD_NAMESPACE, "metadata.namespace"),
        env_var(
            env::WORKLOAD,
            format!("$({})/$({})", env::POD_NAMESPACE, env::POD_NAME),
        ),
    ];
    env.extend(otel_env(s, &p.trace_service));
    if !p.probe_paths.is_empty() {
        let paths: Vec<String> = p
            .probe_paths
            .iter()
            .map(|(port, path)| format!("{port}:{path}"))
            .collect();
        env.push(env_var(env::PROBE_PATHS, paths.join(" ")));
    }
    if !p.inbound_ports.is_empty() {
        let ports: Vec<String> = p.inbound_ports.iter().map(u16::to_string).collect();
        env.push(env_var(env::INBOUND_PORTS, ports.join(",")));
    }
    if !s.opaque_ports.is_empty() {
        let ports: Vec<String> = s.opaque_ports.iter().map(u16::to_string).collect();
        env.push(env_var(env::OPAQUE_PORTS, ports.join(",")));
    }
    let port = |name: &str, number: u16| ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(number),
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    };
    let mut container = Container {
        name: inject::PROXY_CONTAINER.to_owned(),
        image: Some(config.proxy_image.clone()),
        image_pull_policy: pull_policy(config),
        ports: Some(vec![
            port(inject::ADMIN_PORT_NAME, PROXY_ADMIN_PORT),
            port(inject::INBOUND_PORT_NAME, PROXY_INBOUND_PORT),
        ]),
        env: Some(env),
        resources: Some(s.proxy_resources.clone()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(drop_all()),
            }),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_user: Some(i64::from(PROXY_UID)),
            run_as_group: Some(i64::from(PROXY_UID)),
            run_as_non_root: Some(true),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: inject::TOKEN_VOLUME.to_owned(),
            mount_path: inject::TOKEN_MOUNT_PATH.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        liveness_probe: Some(admin_probe("/live", 10, 3)),
        readiness_probe: Some(admin_probe("/ready", 5, 3)),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    };
    if p.native {
        container.restart_policy = Some("Always".to_owned());
        // The next init containers (the app's) start once this succeeds:
        // up to 2 minutes for the first certificate.
        container.startup_probe = Some(admin_probe("/ready", 1, 120));
    } else {
        container.lifecycle = Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        inject::PROXY_CONTAINER.to_owned(),
                        inject::WAIT_READY_FLAG.to_owned(),
                    ]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        });
    }
    container
}

/// The projected ServiceAccount token the proxy presents to `Certify`, and
/// `weft-init`'s writable `/run`.
pub(super) fn volumes(config: &InjectConfig) -> Vec<Volume> {
    vec![
        Volume {
            name: inject::TOKEN_VOLUME.to_owned(),
            projected: Some(ProjectedVolumeSource {
                default_mode: None,
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(IDENTITY_TOKEN_AUDIENCE.to_owned()),
                        expiration_seconds: Some(config.token_expiration_seconds),
                        path: inject::TOKEN_FILE.to_owned(),
                    }),
                    ..VolumeProjection::default()
                }]),
            }),
            ..Volume::default()
        },
        Volume {
            name: inject::INIT_RUN_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_owned()),
                size_limit: None,
            }),
            ..Volume::default()
        },
    ]
}
