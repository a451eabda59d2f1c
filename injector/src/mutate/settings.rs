//! The `config.weft.io/*` settings of one pod: the injector's configuration,
//! overridden by the namespace's annotations, overridden by the pod's. Each
//! value is checked by the parser of the program that reads it (`weft-init`'s
//! for skip ports and subnets, the proxy's for opaque ports, tracing's for the
//! log filter), so a value the injector accepts is one they accept; a bad one
//! is a denial naming the annotation, its value and what is expected.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use weft_api::consts::{CONFIG_ANNOTATION_PREFIX, env, init_env, inject};
use weft_api::policy::InboundMode;
use weft_proxy::iptables::{InitConfig, PortRange, Subnet};

use super::{NamespaceInfo, quantity};
use crate::config::InjectConfig;

use inject::annotation as ann;

/// What the injected containers are configured with.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Settings {
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    pub skip_subnets: Vec<Subnet>,
    pub opaque_ports: Vec<u16>,
    pub proxy_resources: ResourceRequirements,
    pub log_level: String,
    pub default_inbound_policy: String,
    /// Tracing: the collector (empty: off) and the ratio of new traces sampled.
    pub otlp_endpoint: String,
    pub trace_sample_ratio: f64,
}

/// Where a value came from, for messages.
#[derive(Clone, Copy)]
enum Origin<'a> {
    Pod,
    Namespace(&'a str),
    Config(&'static str),
}

/// One setting's value and its origin.
struct Value<'a> {
    text: &'a str,
    origin: Origin<'a>,
    annotation: &'static str,
}

impl Value<'_> {
    /// "annotation config.weft.io/x: "v" ...; expected ...".
    fn problem(&self, problem: &str, expected: &str) -> String {
        let what = match self.origin {
            Origin::Pod => format!("annotation {}", self.annotation),
            Origin::Namespace(ns) => {
                format!("annotation {} of namespace {ns}", self.annotation)
            }
            Origin::Config(key) if self.annotation.is_empty() => {
                format!("the injector's configuration key {key}")
            }
            Origin::Config(key) => format!(
                "the injector's configuration key {key} (default of annotation {})",
                self.annotation
            ),
        };
        format!(
            "{what}: {:?} is not valid: {problem}; expected {expected}",
            self.text
        )
    }
}

struct Layers<'a> {
    pod: &'a BTreeMap<String, String>,
    ns: &'a NamespaceInfo,
}

impl<'a> Layers<'a> {
    fn value(&self, annotation: &'static str, key: &'static str, default: &'a str) -> Value<'a> {
        let (text, origin) = if let Some(v) = self.pod.get(annotation) {
            (v.as_str(), Origin::Pod)
        } else if let Some(v) = self.ns.annotations.get(annotation) {
            (v.as_str(), Origin::Namespace(&self.ns.name))
        } else {
            (default, Origin::Config(key))
        };
        Value {
            text: text.trim(),
            origin,
            annotation,
        }
    }
}

const PORTS: &str = "a comma-separated list of ports or ranges, e.g. 22,8000-8100 (empty: none)";
const SUBNETS: &str =
    "a comma-separated list of CIDR subnets, e.g. 10.96.0.0/12,fd00::/8 (empty: none)";
const OPAQUE: &str = "a comma-separated list of ports, e.g. 3306,6379 (empty: none)";
const LOG: &str = "a tracing filter such as info or warn,weft_proxy=debug";
const OTLP: &str =
    "an OTLP/gRPC URL such as http://otel-collector.observability:4317 (empty: tracing off)";
const RATIO: &str = "a number from 0 to 1, such as 0.01";

/// Reads and checks every setting; the message names the first bad one.
pub(super) fn read(
    pod: &Pod,
    ns: &NamespaceInfo,
    config: &InjectConfig,
) -> Result<Settings, String> {
    let empty = BTreeMap::new();
    let pod_annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    unknown_keys(pod_annotations, None)?;
    unknown_keys(&ns.annotations, Some(&ns.name))?;
    let layers = Layers {
        pod: pod_annotations,
        ns,
    };

    let init = |v: &Value<'_>, var: &str, expected: &str| -> Result<InitConfig, String> {
        let vars = HashMap::from([(var.to_owned(), v.text.to_owned())]);
        InitConfig::from_args_and_env(["weft-init"], &vars).map_err(|e| match e {
            weft_proxy::iptables::ConfigError::Invalid(problems) => {
                let problems: Vec<&str> = problems
                    .iter()
                    .map(|p| p.strip_prefix(&format!("{var}: ")).unwrap_or(p))
                    .collect();
                v.problem(&problems.join("; "), expected)
            }
            other => v.problem(&other.to_string(), expected),
        })
    };
    let v = layers.value(
        ann::SKIP_INBOUND_PORTS,
        "skipInboundPorts",
        &config.skip_inbound_ports,
    );
    let skip_inbound_ports = init(&v, init_env::SKIP_INBOUND_PORTS, PORTS)?.skip_inbound_ports;
    let v = layers.value(
        ann::SKIP_OUTBOUND_PORTS,
        "skipOutboundPorts",
        &config.skip_outbound_ports,
    );
    let skip_outbound_ports = init(&v, init_env::SKIP_OUTBOUND_PORTS, PORTS)?.skip_outbound_ports;
    let v = layers.value(ann::SKIP_SUBNETS, "skipSubnets", &config.skip_subnets);
    let skip_subnets = init(&v, init_env::SKIP_SUBNETS, SUBNETS)?.skip_subnets;

    let v = layers.value(ann::OPAQUE_PORTS, "opaquePorts", &config.opaque_ports);
    let opaque_ports = opaque_ports(&v)?;

    let v = layers.value(ann::LOG_LEVEL, "logLevel", &config.log_level);
    if v.text.is_empty() {
        return Err(v.problem("it is empty", LOG));
    }
    if let Err(error) = tracing_subscriber::EnvFilter::try_new(v.text) {
        return Err(v.problem(&error.to_string(), LOG));
    }
    let log_level = v.text.to_owned();

    let v = layers.value(
        ann::DEFAULT_INBOUND_POLICY,
        "defaultInboundPolicy",
        &config.default_inbound_policy,
    );
    if v.text.parse::<InboundMode>().is_err() {
        let modes: Vec<&str> = InboundMode::ALL.iter().map(|m| m.as_str()).collect();
        return Err(v.problem(
            "it is not an inbound policy",
            &format!("one of {}", modes.join(", ")),
        ));
    }
    let default_inbound_policy = v.text.to_owned();

    let v = layers.value(ann::OTLP_ENDPOINT, "otlpEndpoint", &config.otlp_endpoint);
    let otlp_endpoint = otlp_endpoint(&v)?;
    let v = layers.value(
        ann::TRACE_SAMPLE_RATIO,
        "traceSampleRatio",
        &config.trace_sample_ratio,
    );
    let trace_sample_ratio = match v.text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => r,
        Ok(_) => return Err(v.problem("it is outside 0 to 1", RATIO)),
        Err(_) => return Err(v.problem("it is not a number", RATIO)),
    };

    let r = &config.proxy_resources;
    let cpu = resource_pair(
        &layers.value(
            ann::PROXY_CPU_REQUEST,
            "proxyResources.cpuRequest",
            &r.cpu_request,
        ),
        &layers.value(
            ann::PROXY_CPU_LIMIT,
            "proxyResources.cpuLimit",
            &r.cpu_limit,
        ),
        "a CPU quantity such as 100m or 0.5 (empty: unset)",
    )?;
    let memory = resource_pair(
        &layers.value(
            ann::PROXY_MEMORY_REQUEST,
            "proxyResources.memoryRequest",
            &r.memory_request,
        ),
        &layers.value(
            ann::PROXY_MEMORY_LIMIT,
            "proxyResources.memoryLimit",
            &r.memory_limit,
        ),
        "a memory quantity such as 64Mi or 1G (empty: unset)",
    )?;
    Ok(Settings {
        skip_inbound_ports,
        skip_outbound_ports,
        skip_subnets,
        opaque_ports,
        proxy_resources: requirements([("cpu", cpu), ("memory", memory)]),
        log_level,
        default_inbound_policy,
        otlp_endpoint,
        trace_sample_ratio,
    })
}

/// An OTLP/gRPC collector URL: `http` or `https`, a host, and a port or none
/// (the scheme's); empty is tracing off.
fn otlp_endpoint(v: &Value<'_>) -> Result<String, String> {
    if v.text.is_empty() {
        return Ok(String::new());
    }
    let uri: http::Uri = v
        .text
        .parse()
        .map_err(|e: http::uri::InvalidUri| v.problem(&e.to_string(), OTLP))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(v.problem("it has no http:// or https:// scheme", OTLP)),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(v.problem("it names no host", OTLP));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(v.problem("OTLP/gRPC takes no path (the service path is fixed)", OTLP));
    }
    Ok(v.text.to_owned())
}

/// `weft-init`'s resources from the configuration (checked the same way).
pub(super) fn init_resources(config: &InjectConfig) -> Result<ResourceRequirements, String> {
    let r = &config.init_resources;
    fn value<'a>(text: &'a str, key: &'static str) -> Value<'a> {
        Value {
            text: text.trim(),
            origin: Origin::Config(key),
            annotation: "",
        }
    }
    let cpu = resource_pair(
        &value(&r.cpu_request, "initResources.cpuRequest"),
        &value(&r.cpu_limit, "initResources.cpuLimit"),
        "a CPU quantity such as 10m (empty: unset)",
    )?;
    let memory = resource_pair(
        &value(&r.memory_request, "initResources.memoryRequest"),
        &value(&r.memory_limit, "initResources.memoryLimit"),
        "a memory quantity such as 16Mi (empty: unset)",
    )?;
    Ok(requirements([("cpu", cpu), ("memory", memory)]))
}

/// Refuses `config.weft.io/` annotations the injector does not know (a typo
/// would otherwise be ignored without a word).
fn unknown_keys(annotations: &BTreeMap<String, String>, ns: Option<&str>) -> Result<(), String> {
    let Some(key) = annotations
        .keys()
        .find(|k| k.starts_with(CONFIG_ANNOTATION_PREFIX) && !ann::ALL.contains(&k.as_str()))
    else {
        return Ok(());
    };
    let on = ns.map_or(String::new(), |ns| format!(" of namespace {ns}"));
    Err(format!(
        "annotation {key}{on} is not a weft setting; the {CONFIG_ANNOTATION_PREFIX} annotations are {}",
        ann::ALL.join(", ")
    ))
}

/// The proxy's own parser of `WEFT_PROXY_OPAQUE_PORTS`, sorted and deduplicated.
fn opaque_ports(v: &Value<'_>) -> Result<Vec<u16>, String> {
    let vars = HashMap::from([
        (env::OPAQUE_PORTS.to_owned(), v.text.to_owned()),
        (env::CERT_FILE.to_owned(), "/unused".to_owned()),
        (env::KEY_FILE.to_owned(), "/unused".to_owned()),
        (env::TRUST_ANCHORS_FILE.to_owned(), "/unused".to_owned()),
    ]);
    match weft_proxy::Config::from_env(&vars) {
        Ok(config) => {
            let mut ports = config
                .proxy
                .transparent
                .map(|t| t.opaque_ports)
                .unwrap_or_default();
            ports.sort_unstable();
            ports.dedup();
            Ok(ports)
        }
        Err(errors) => {
            let problems: Vec<String> = errors
                .0
                .iter()
                .filter(|e| e.var == env::OPAQUE_PORTS)
                // The proxy's own hint ("; expected e.g. ...") gives way to ours.
                .map(|e| {
                    e.problem
                        .split("; expected")
                        .next()
                        .unwrap_or("")
                        .to_owned()
                })
                .collect();
            Err(v.problem(&problems.join("; "), OPAQUE))
        }
    }
}

/// A request and a limit, each optional.
type RequestAndLimit = (Option<String>, Option<String>);

/// A request and a limit, each optional, the request no more than the limit.
fn resource_pair(
    request: &Value<'_>,
    limit: &Value<'_>,
    expected: &str,
) -> Result<RequestAndLimit, String> {
    let one = |v: &Value<'_>| -> Result<Option<(String, f64)>, String> {
        if v.text.is_empty() {
            return Ok(None);
        }
        quantity::parse(v.text)
            .map(|n| Some((v.text.to_owned(), n)))
            .map_err(|p| v.problem(&p, expected))
    };
    let (req, lim) = (one(request)?, one(limit)?);
    if let (Some((_, r)), Some((_, l))) = (&req, &lim)
        && r > l
    {
        return Err(request.problem(
            &format!("it is more than the limit {:?}", limit.text),
            "a request no larger than its limit",
        ));
    }
    Ok((req.map(|(t, _)| t), lim.map(|(t, _)| t)))
}

/// `ResourceRequirements` from (resource, (request, limit)) pairs.
fn requirements<const N: usize>(pairs: [(&str, RequestAndLimit); N]) -> ResourceRequirements {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    for (name, (request, limit)) in pairs {
        if let Some(r) = request {
            requests.insert(name.to_owned(), Quantity(r));
        }
        if let Some(l) = limit {
            limits.insert(name.to_owned(), Quantity(l));
        }
    }
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..ResourceRequirements::default()
    }
}

/// `22,8000-8100`: the annotation's own form (weft-init reads it back).
pub(super) fn ports_text(ports: &[PortRange]) -> String {
    ports
        .iter()
        .map(|p| {
            if p.first == p.last {
                p.first.to_string()
            } else {
                format!("{}-{}", p.first, p.last)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}
