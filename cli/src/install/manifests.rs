//! The control plane's objects, typed (k8s-openapi), from [`InstallOptions`]:
//! the namespace, the controller (StatefulSet, Service, PodDisruptionBudget)
//! and the injector (ConfigMap, Deployment, Service, PodDisruptionBudget).
//! [`super::webhook`] and [`super::rbac`] add the rest; [`super::secrets`]
//! what `weft install` generates.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec,
};
use k8s_openapi::api::core::v1::Capabilities;
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction, Namespace,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_api::consts::{self, install as names};

use super::options::InstallOptions;
use super::render::{DeployFile, Document, RenderError};

/// Where the controller finds the `weft-issuer` Secret (its `--issuer-dir` default).
pub const ISSUER_DIR: &str = "/var/run/weft/issuer";
/// The controller's audit volume (its `--audit-log` is `audit.log` there).
pub const AUDIT_DIR: &str = "/var/lib/weft";
/// Where the injector finds its serving certificate.
pub const WEBHOOK_TLS_DIR: &str = "/var/run/weft/webhook";
/// Where the injector finds the trust anchors ConfigMap.
pub const ANCHORS_DIR: &str = "/var/run/weft/anchors";
/// Where the injector finds its configuration ConfigMap.
pub const INJECTOR_CONFIG_DIR: &str = "/etc/weft/injector";
/// The port of the injector's Service (the API server's default for webhooks).
pub const INJECTOR_SERVICE_PORT: i32 = 443;

/// Metadata with the standard labels.
pub fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels(name)),
        ..ObjectMeta::default()
    }
}

fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (names::NAME_LABEL.to_owned(), name.to_owned()),
        (names::PART_OF_LABEL.to_owned(), "weft".to_owned()),
    ])
}

fn selector(name: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            names::NAME_LABEL.to_owned(),
            name.to_owned(),
        )])),
        ..LabelSelector::default()
    }
}

/// The mesh namespace: never injected, and held to the `restricted` Pod
/// Security Standard, which the control plane's pods meet.
pub fn namespace(opts: &InstallOptions) -> Result<Document, RenderError> {
    let mut metadata = meta(&opts.namespace, None);
    let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(
        consts::INJECT_KEY.to_owned(),
        consts::INJECT_DISABLED.to_owned(),
    );
    labels.insert(
        "pod-security.kubernetes.io/enforce".to_owned(),
        "restricted".to_owned(),
    );
    Document::new(
        DeployFile::Namespace,
        "The mesh's own namespace: its pods are never injected.",
        &Namespace {
            metadata,
            ..Namespace::default()
        },
    )
}

/// The controller: a StatefulSet, so that each replica keeps its issuance
/// audit trail on its own volume across restarts; its Service; its PDB.
pub fn controller(opts: &InstallOptions) -> Result<Vec<Document>, RenderError> {
    let name = consts::CONTROLLER_SERVICE_ACCOUNT;
    let ns = Some(opts.namespace.as_str());
    let container = Container {
        name: "controller".to_owned(),
        image: Some(opts.controller_image.clone()),
        args: Some(strings(&[
            "serve",
            "--mode",
            "kubernetes",
            "--trust-domain",
            &opts.trust_domain,
            "--cert-lifetime",
            &opts.cert_lifetime,
            "--issuer-dir",
            ISSUER_DIR,
            "--audit-log",
            &format!("{AUDIT_DIR}/audit.log"),
            "--audit-stdout",
            "true",
            "--default-inbound-mode",
            opts.default_inbound_mode.as_str(),
        ])),
        ports: Some(vec![
            port("grpc", consts::CONTROLLER_GRPC_PORT),
            port("admin", consts::CONTROL_PLANE_ADMIN_PORT),
        ]),
        volume_mounts: Some(vec![
            mount("issuer", ISSUER_DIR, true),
            mount("audit", AUDIT_DIR, false),
        ]),
        ..component_container()
    };
    let pod = PodSpec {
        containers: vec![container],
        volumes: Some(vec![secret_volume("issuer", names::ISSUER_SECRET)]),
        ..component_pod(name)
    };
    let statefulset = StatefulSet {
        metadata: meta(name, ns),
        spec: Some(StatefulSetSpec {
            replicas: Some(opts.controller_replicas),
            service_name: Some(name.to_owned()),
            // Replicas are interchangeable: start and stop them together.
            pod_management_policy: Some("Parallel".to_owned()),
            selector: selector(name),
            template: template(name, pod),
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("audit".to_owned()),
                    labels: Some(labels(name)),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_owned(),
                            Quantity(opts.audit_volume_size.clone()),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            // The audit trail is evidence: its volumes outlive the StatefulSet.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".to_owned()),
                    when_scaled: Some("Retain".to_owned()),
                },
            ),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };
    let service = service(
        name,
        opts,
        vec![
            service_port("grpc", consts::CONTROLLER_GRPC_PORT.into(), "grpc"),
            service_port("admin", consts::CONTROL_PLANE_ADMIN_PORT.into(), "admin"),
        ],
    );
    Ok(vec![
        Document::new(
            DeployFile::Controller,
            "The controller's gRPC API (identity, discovery, inbound policy; TLS), dialled by\n\
             every proxy, and its admin port (/live, /ready, /metrics).",
            &service,
        )?,
        Document::new(
            DeployFile::Controller,
            "The controller: the mesh CA (issuer from Secret weft-issuer, created by\n\
             `weft install`) and the control plane. A StatefulSet so that each replica\n\
             keeps its hash-chained issuance audit trail on its own volume across\n\
             restarts; each record is also written as one JSON line on stdout.",
            &statefulset,
        )?,
        Document::new(
            DeployFile::Controller,
            "Voluntary disruptions (node drains) take at most one controller at a time.",
            &pdb(name, opts),
        )?,
    ])
}

/// The injector: its configuration, Deployment, Service and PDB.
pub fn injector(opts: &InstallOptions) -> Result<Vec<Document>, RenderError> {
    let name = names::INJECTOR_NAME;
    let ns = Some(opts.namespace.as_str());
    // InjectConfig always serializes.
    let config_yaml = serde_yaml::to_string(&opts.inject_config()).unwrap_or_default();
    let config = ConfigMap {
        metadata: meta(names::INJECTOR_CONFIGMAP, ns),
        data: Some(BTreeMap::from([(
            names::INJECTOR_CONFIG_KEY.to_owned(),
            config_yaml,
        )])),
        ..ConfigMap::default()
    };
    let config_file = format!("{INJECTOR_CONFIG_DIR}/{}", names::INJECTOR_CONFIG_KEY);
    let anchors_file = format!("{ANCHORS_DIR}/{}", names::TRUST_ANCHORS_KEY);
    let listen = format!("0.0.0.0:{}", consts::INJECTOR_WEBHOOK_PORT);
    let admin = format!("0.0.0.0:{}", consts::CONTROL_PLANE_ADMIN_PORT);
    let cert_file = format!("{WEBHOOK_TLS_DIR}/tls.crt");
    let key_file = format!("{WEBHOOK_TLS_DIR}/tls.key");
    let container = Container {
        name: "injector".to_owned(),
        image: Some(opts.injector_image.clone()),
        args: Some(strings(&[
            "--listen",
            &listen,
            "--admin-addr",
            &admin,
            "--cert-file",
            &cert_file,
            "--key-file",
            &key_file,
            "--config",
            &config_file,
            "--trust-anchors-file",
            &anchors_file,
            "--log",
            "info",
        ])),
        ports: Some(vec![
            port("webhook", consts::INJECTOR_WEBHOOK_PORT),
            port("admin", consts::CONTROL_PLANE_ADMIN_PORT),
        ]),
        volume_mounts: Some(vec![
            mount("tls", WEBHOOK_TLS_DIR, true),
            mount("anchors", ANCHORS_DIR, true),
            mount("config", INJECTOR_CONFIG_DIR, true),
        ]),
        ..component_container()
    };
    let pod = PodSpec {
        containers: vec![container],
        volumes: Some(vec![
            secret_volume("tls", names::INJECTOR_TLS_SECRET),
            configmap_volume("anchors", names::TRUST_ANCHORS_CONFIGMAP),
            configmap_volume("config", names::INJECTOR_CONFIGMAP),
        ]),
        ..component_pod(name)
    };
    let deployment = Deployment {
        metadata: meta(name, ns),
        spec: Some(DeploymentSpec {
            replicas: Some(opts.injector_replicas),
            selector: selector(name),
            template: template(name, pod),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    let service = service(
        name,
        opts,
        vec![
            service_port("webhook", INJECTOR_SERVICE_PORT, "webhook"),
            service_port("admin", consts::CONTROL_PLANE_ADMIN_PORT.into(), "admin"),
        ],
    );
    Ok(vec![
        Document::new(
            DeployFile::Injector,
            "What the injector puts into pods (InjectConfig, camelCase keys; see\n\
             injector/src/config.rs).",
            &config,
        )?,
        Document::new(
            DeployFile::Injector,
            "The webhook's Service: the API server calls port 443 (-> 9443, HTTPS).",
            &service,
        )?,
        Document::new(
            DeployFile::Injector,
            "The injector: the mutating admission webhook (serving certificate from\n\
             Secret weft-injector-tls, reloaded when it changes; trust anchors from\n\
             ConfigMap weft-trust-anchors; both created by `weft install`).",
            &deployment,
        )?,
        Document::new(
            DeployFile::Injector,
            "Voluntary disruptions take at most one injector at a time.",
            &pdb(name, opts),
        )?,
    ])
}

/// The container settings both components share: non-root, read-only root,
/// no capabilities, probes on the admin port, requests and limits.
fn component_container() -> Container {
    let probe = |path: &str, period| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    Container {
        image_pull_policy: Some("IfNotPresent".to_owned()),
        liveness_probe: Some(probe("/live", 10)),
        readiness_probe: Some(probe("/ready", 5)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("100m".to_owned())),
                ("memory".to_owned(), Quantity("64Mi".to_owned())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity("256Mi".to_owned()),
            )])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The pod settings both components share.
fn component_pod(name: &str) -> PodSpec {
    let uid = i64::from(consts::PROXY_UID);
    PodSpec {
        service_account_name: Some(name.to_owned()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(uid),
            run_as_group: Some(uid),
            // The audit volume is writable by the controller's group.
            fs_group: Some(uid),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        // Spread the replicas over nodes where the cluster can.
        affinity: Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    WeightedPodAffinityTerm {
                        weight: 100,
                        pod_affinity_term: PodAffinityTerm {
                            label_selector: Some(selector(name)),
                            topology_key: "kubernetes.io/hostname".to_owned(),
                            ..PodAffinityTerm::default()
                        },
                    },
                ]),
                ..PodAntiAffinity::default()
            }),
            ..Affinity::default()
        }),
        ..PodSpec::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn template(name: &str, spec: PodSpec) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(name)),
            annotations: Some(BTreeMap::from([
                ("prometheus.io/scrape".to_owned(), "true".to_owned()),
                (
                    "prometheus.io/port".to_owned(),
                    consts::CONTROL_PLANE_ADMIN_PORT.to_string(),
                ),
            ])),
            ..ObjectMeta::default()
        }),
        spec: Some(spec),
    }
}

fn service(name: &str, opts: &InstallOptions, ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: meta(name, Some(&opts.namespace)),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(
                names::NAME_LABEL.to_owned(),
                name.to_owned(),
            )])),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn pdb(name: &str, opts: &InstallOptions) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(name, Some(&opts.namespace)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(name)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

fn port(name: &str, number: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: number.into(),
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

fn service_port(name: &str, number: i32, target: &str) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: number,
        target_port: Some(IntOrString::String(target.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn configmap_volume(name: &str, configmap: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: configmap.to_owned(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}
