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

/// Free ports on 127.0.0.1, each held by a listener until the pool is
/// dropped, so that no two parts of the demo are given the same port. The
/// ports are released just before the processes that bind them start; another
/// program could take one in between, which that process reports as a bind
/// error naming the port.
#[derive(Default)]
pub struct Ports {
    held: Vec<TcpListener>,
}

impl Ports {
    /// A port no other address of this pool has.
    pub fn take(&mut self) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        self.held.push(listener);
        Ok(addr)
    }
}

/// Builds the workloads with fresh ports, which `ports` holds until it is
/// dropped.
pub fn workloads(trust_domain: &str, ports: &mut Ports) -> anyhow::Result<Vec<Workload>> {
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
                    Some(ports.take()?)
                },
                inbound: ports.take()?,
                admin: ports.take()?,
                upstreams: upstreams
                    .iter()
                    .map(|u| Ok((*u, ports.take()?)))
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
        let mut ports = Ports::default();
        let all = workloads("cluster.local", &mut ports).unwrap();
        assert_eq!(all.len(), 5);
        let mut seen: Vec<SocketAddr> = all
            .iter()
            .flat_map(|w| {
                w.app
                    .into_iter()
                    .chain([w.inbound, w.admin])
                    .chain(w.upstreams.iter().map(|(_, a)| *a))
            })
            .collect();
        let n = seen.len();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), n, "every part of the demo has its own port");
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
