//! The demo's workloads: which services, how many replicas, who calls whom,
//! and on which loopback ports each part listens.

use std::net::{SocketAddr, TcpListener};

use weft_api::Identity;

/// Namespace of the demo's identities.
pub const NAMESPACE: &str = "demo";

/// One replica of a service: an app (except for the load generator, whose
/// "app" is the demo process itself) and its sidecar.
#[derive(Clone, Debug)]
pub struct Workload {
    pub service: &'static str,
    pub replica: String,
    pub identity: Identity,
    /// The app's own port; `None` for the load generator.
    pub app: Option<SocketAddr>,
    /// The sidecar's inbound listener.
    pub inbound: SocketAddr,
    /// The sidecar's admin server.
    pub admin: SocketAddr,
    /// Upstream service name -> the sidecar's listener for it.
    pub upstreams: Vec<(&'static str, SocketAddr)>,
}

/// Who calls whom: `loadgen -> web -> {checkout, inventory}`.
const SERVICES: &[(&str, usize, &[&str])] = &[
    ("loadgen", 1, &["web"]),
    ("web", 1, &["checkout", "inventory"]),
    ("checkout", 2, &[]),
    ("inventory", 1, &[]),
];

/// A free port on 127.0.0.1. Bound and released: another process could take
/// it in between, which the caller reports as a bind error naming the port.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Builds the workloads with fresh ports.
pub fn workloads(trust_domain: &str) -> anyhow::Result<Vec<Workload>> {
    let mut out = Vec::new();
    for &(service, replicas, upstreams) in SERVICES {
        let identity = Identity::new(trust_domain, NAMESPACE, service)?;
        for i in 0..replicas {
            out.push(Workload {
                service,
                replica: format!("{service}-{i}"),
                identity: identity.clone(),
                app: if service == "loadgen" {
                    None
                } else {
                    Some(free_addr()?)
                },
                inbound: free_addr()?,
                admin: free_addr()?,
                upstreams: upstreams
                    .iter()
                    .map(|u| Ok((*u, free_addr()?)))
                    .collect::<std::io::Result<_>>()?,
            });
        }
    }
    Ok(out)
}

/// The `WEFT_PROXY_UPSTREAMS` value for `w`: every replica of each upstream
/// service, with the identity they must prove.
pub fn upstreams_env(w: &Workload, all: &[Workload]) -> String {
    w.upstreams
        .iter()
        .map(|(service, listen)| {
            let replicas: Vec<&Workload> = all.iter().filter(|o| o.service == *service).collect();
            let targets: Vec<String> = replicas.iter().map(|r| r.inbound.to_string()).collect();
            let identity = replicas
                .first()
                .map(|r| r.identity.to_string())
                .unwrap_or_default();
            format!("{service},{listen},{},{identity}", targets.join("+"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_reaches_both_checkout_replicas() {
        let all = workloads("cluster.local").unwrap();
        assert_eq!(all.len(), 5);
        let web = all.iter().find(|w| w.service == "web").unwrap();
        let env = upstreams_env(web, &all);
        let checkout: Vec<&Workload> = all.iter().filter(|w| w.service == "checkout").collect();
        assert!(
            env.contains(&format!("{}+{}", checkout[0].inbound, checkout[1].inbound)),
            "{env}"
        );
        assert!(
            env.contains("spiffe://cluster.local/ns/demo/sa/inventory"),
            "{env}"
        );
    }
}
