//! The kubelet's probes of the app. They come from the node, in plaintext, to
//! the pod's address, so under `mesh-only` and `deny` the inbound proxy would
//! refuse them. HTTP (`httpGet` with scheme HTTP) and gRPC probes go through
//! the proxy, which lets a plaintext caller make exactly those requests
//! ([`probe_paths`], `WEFT_PROXY_PROBE_PATHS`), so the port stays protected;
//! the ports of the others (`tcpSocket`, whose connect the proxy would answer
//! whether the app listens or not, and HTTPS) are kept out of the inbound
//! redirect ([`bypass_ports`]). `InjectConfig::skip_probe_ports` keeps every
//! probed port out, as before the proxy knew the paths.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Every port a liveness, readiness or startup probe of the pod's containers
/// (and its own init containers with probes, i.e. sidecars) reaches on the
/// pod itself. Named ports are resolved in the probe's container; a name that
/// is not there is left out (the kubelet cannot probe it either).
pub(super) fn probe_ports(spec: &PodSpec) -> BTreeSet<u16> {
    probes(spec)
        .filter_map(|(c, probe)| probe_port(c, probe))
        .collect()
}

/// The ports of probes the proxy cannot pass for the app: `tcpSocket` and
/// HTTPS `httpGet` probes (see the module docs).
pub(super) fn bypass_ports(spec: &PodSpec) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for (c, probe) in probes(spec) {
        let passes = match (&probe.http_get, &probe.grpc) {
            (Some(http), _) => http.scheme.as_deref().is_none_or(|s| s == "HTTP"),
            (None, Some(_)) => true,
            (None, None) => false,
        };
        if !passes {
            ports.extend(probe_port(c, probe));
        }
    }
    ports
}

/// `port:path` of every HTTP and gRPC probe (the gRPC health check's path),
/// which the inbound proxy lets plaintext callers request.
pub(super) fn probe_paths(spec: &PodSpec) -> BTreeSet<(u16, String)> {
    let mut paths = BTreeSet::new();
    for (c, probe) in probes(spec) {
        let Some(port) = probe_port(c, probe) else {
            continue;
        };
        if let Some(http) = &probe.http_get {
            if http.scheme.as_deref().is_none_or(|s| s == "HTTP") {
                let path = http
                    .path
                    .as_deref()
                    .filter(|p| !p.is_empty())
                    .unwrap_or("/");
                // The kubelet sends the path as given; the proxy matches it
                // without its query.
                let path = path.split('?').next().unwrap_or(path);
                paths.insert((port, path.to_owned()));
            }
        } else if probe.grpc.is_some() {
            paths.insert((port, "/grpc.health.v1.Health/Check".to_owned()));
        }
    }
    paths
}

fn probes(spec: &PodSpec) -> impl Iterator<Item = (&Container, &Probe)> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| {
            [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
                .into_iter()
                .flatten()
                .map(move |p| (c, p))
        })
}

fn probe_port(c: &Container, probe: &Probe) -> Option<u16> {
    let port = if let Some(http) = &probe.http_get {
        if http.host.as_deref().is_some_and(|h| !h.is_empty()) {
            return None; // another host: not the pod
        }
        &http.port
    } else if let Some(tcp) = &probe.tcp_socket {
        if tcp.host.as_deref().is_some_and(|h| !h.is_empty()) {
            return None;
        }
        &tcp.port
    } else if let Some(grpc) = &probe.grpc {
        return u16::try_from(grpc.port).ok();
    } else {
        return None; // exec probes run inside the container
    };
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}
