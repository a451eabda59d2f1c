//! The ports the kubelet probes the app on. Its probes come from the node, in
//! plaintext, to the pod's address: the injector keeps these ports out of the
//! inbound redirect (`InjectConfig::skip_probe_ports`): the inbound proxy
//! refuses plaintext under the `mesh-only` and `deny` modes, and does not yet
//! authorize the probes' own paths.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Every port a liveness, readiness or startup probe of the pod's containers
/// (and its own init containers with probes, i.e. sidecars) reaches on the
/// pod itself. Named ports are resolved in the probe's container; a name that
/// is not there is left out (the kubelet cannot probe it either).
pub(super) fn probe_ports(spec: &PodSpec) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        for probe in [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
            .into_iter()
            .flatten()
        {
            ports.extend(probe_port(c, probe));
        }
    }
    ports
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
