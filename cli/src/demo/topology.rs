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
    /// The Service this replica is an endpoint of (`checkout-v1`).
    pub service: &'static str,
    /// Its service account, which names its identity (`checkout`: both
    /// checkout versions run as one identity, as canaries do).
    pub account: &'static str,
    pub replica: String,
    pub identity: Identity,
    /// Pod labels (`version: v2`).
    pub version: Option<&'static str>,
    /// The app's own port; `None` for the load generator.
    pub app: Option<SocketAddr>,
    /// The sidecar's inbound listener (the endpoint callers reach).
    pub inbound: SocketAddr,
    /// The sidecar's admin server.
    pub admin: SocketAddr,
    /// Upstream service name -> the sidecar's listener for it.
    pub upstreams: Vec<(&'static str, SocketAddr)>,
    /// Fails now and then (the replica the circuit breaker ejects).
    pub flaky: bool,
}

/// One service of the demo.
struct ServiceSpec {
    service: &'static str,
    account: &'static str,
    version: Option<&'static str>,
    replicas: usize,
    upstreams: &'static [&'static str],
}

/// Who calls whom: `loadgen -> web -> {checkout, inventory}`; `checkout` is
/// a Service with no endpoints of its own whose HTTPRoute splits it between
/// `checkout-v1` and `checkout-v2`.
const SERVICES: &[ServiceSpec] = &[
    ServiceSpec {
        service: "loadgen",
        account: "loadgen",
        version: None,
        replicas: 1,
        // inventory: only for `--stray-calls`, which its policy refuses.
        upstreams: &["web", STRAY_TARGET],
    },
    ServiceSpec {
        service: "web",
        account: "web",
        version: None,
        replicas: 1,
        upstreams: &["checkout", "inventory"],
    },
    ServiceSpec {
        service: "checkout-v1",
        account: "checkout",
        version: Some("v1"),
        replicas: 2,
        upstreams: &[],
    },
    ServiceSpec {
        service: "checkout-v2",
        account: "checkout",
        version: Some("v2"),
        replicas: 1,
        upstreams: &[],
    },
    ServiceSpec {
        service: "inventory",
        account: "inventory",
        version: None,
        replicas: 3,
        upstreams: &[],
    },
];

/// The service the canary splits, and its backends' weights at the start.
pub const CANARY_SERVICE: &str = "checkout";
pub const CANARY_START: &[(&str, u32)] = &[("checkout-v1", 90), ("checkout-v2", 10)];
/// The service with a flaky replica, retries and circuit breaking.
pub const FLAKY_SERVICE: &str = "inventory";
/// Where `weft demo --stray-calls` sends the load generator's stray calls.
pub const STRAY_TARGET: &str = "inventory";
/// The only caller (service account) checkout and inventory accept.
pub const ALLOWED_CALLER: &str = "web";
/// The port every demo Service is called on (`checkout:80`).
pub const SERVICE_PORT: u16 = 80;

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
    for spec in SERVICES {
        let identity = Identity::new(trust_domain, NAMESPACE, spec.account)?;
        for i in 0..spec.replicas {
            out.push(Workload {
                service: spec.service,
                account: spec.account,
                replica: format!("{}-{i}", spec.service),
                identity: identity.clone(),
                version: spec.version,
                app: if spec.service == "loadgen" {
                    None
                } else {
                    Some(ports.take()?)
                },
                inbound: ports.take()?,
                admin: ports.take()?,
                upstreams: spec
                    .upstreams
                    .iter()
                    .map(|u| Ok((*u, ports.take()?)))
                    .collect::<std::io::Result<_>>()?,
                // The last inventory replica.
                flaky: spec.service == FLAKY_SERVICE && i + 1 == spec.replicas,
            });
        }
    }
    Ok(out)
}

/// The `WEFT_PROXY_UPSTREAMS` value for `w`: each upstream listener names its
/// service, whose endpoints and policy the sidecar gets from discovery.
pub fn upstreams_env(w: &Workload) -> String {
    w.upstreams
        .iter()
        .map(|(service, listen)| format!("{listen}={service}:{SERVICE_PORT}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The policy directory's documents: the `Workloads` (every service and its
/// endpoints, with their service accounts), the canary's HTTPRoute and the
/// flaky service's ResiliencePolicy. File name -> YAML.
pub fn policy_files(all: &[Workload]) -> anyhow::Result<Vec<(&'static str, String)>> {
    use weft_controller::discovery::local::{
        WORKLOADS_API_VERSION, WorkloadEndpoint, WorkloadService, Workloads, WorkloadsMeta,
    };
    let mut services: Vec<&'static str> = vec![CANARY_SERVICE];
    for w in all {
        if w.service != "loadgen" && !services.contains(&w.service) {
            services.push(w.service);
        }
    }
    let workloads = Workloads {
        api_version: WORKLOADS_API_VERSION.to_owned(),
        kind: "Workloads".to_owned(),
        metadata: Some(WorkloadsMeta {
            name: Some("demo".to_owned()),
        }),
        services: services
            .into_iter()
            .map(|service| WorkloadService {
                namespace: NAMESPACE.to_owned(),
                name: service.to_owned(),
                ports: vec![SERVICE_PORT],
                endpoints: all
                    .iter()
                    .filter(|w| w.service == service)
                    .map(|w| WorkloadEndpoint {
                        address: w.inbound,
                        service_account: Some(w.account.to_owned()),
                        // `app` names what the pod is (both checkout
                        // versions are `checkout`), as policies select it.
                        labels: w
                            .version
                            .map(|v| ("version".to_owned(), v.to_owned()))
                            .into_iter()
                            .chain([("app".to_owned(), w.account.to_owned())])
                            .collect(),
                        zone: None,
                    })
                    .collect(),
            })
            .collect(),
    };
    let route = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": { "name": CANARY_SERVICE, "namespace": NAMESPACE },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": CANARY_SERVICE, "port": SERVICE_PORT }],
            "rules": [{
                "backendRefs": CANARY_START
                    .iter()
                    .map(|(name, weight)| serde_json::json!({ "name": name, "port": SERVICE_PORT, "weight": weight }))
                    .collect::<Vec<_>>(),
            }],
        },
    });
    let resilience = serde_json::json!({
        "apiVersion": "policy.weft.io/v1alpha1",
        "kind": "ResiliencePolicy",
        "metadata": { "name": FLAKY_SERVICE, "namespace": NAMESPACE },
        "spec": {
            "targetRef": { "group": "", "kind": "Service", "name": FLAKY_SERVICE },
            "retryBudget": { "ratio": 0.2, "minRetriesPerSecond": 10, "window": "10s" },
            "defaultRetry": {
                "attempts": 2,
                "conditions": ["gateway-error", "connect-failure", "reset"],
                "backoff": { "base": "5ms", "max": "50ms" },
            },
            "circuitBreaker": {
                "consecutiveFailures": 3,
                "baseEjectionTime": "4s",
                "maxEjectionTime": "16s",
                "maxEjectedPercent": 34,
            },
            "timeouts": { "connect": "1s", "request": "2s" },
        },
    });
    // Zero trust: checkout's pods (both versions) and inventory accept only
    // web; everything else keeps the default mode (allow-all).
    let only_web = |name: &str, target: serde_json::Value| {
        let mut spec = serde_json::json!({
            "rules": [{ "from": { "serviceAccounts": [{ "name": ALLOWED_CALLER }] } }],
        });
        if let (Some(spec), Some(target)) = (spec.as_object_mut(), target.as_object()) {
            spec.extend(target.clone());
        }
        serde_json::json!({
            "apiVersion": "policy.weft.io/v1alpha1",
            "kind": "AuthorizationPolicy",
            "metadata": { "name": name, "namespace": NAMESPACE },
            "spec": spec,
        })
    };
    let checkout_authz = only_web(
        "checkout-from-web",
        serde_json::json!({ "podSelector": { "matchLabels": { "app": CANARY_SERVICE } } }),
    );
    let inventory_authz = only_web(
        "inventory-from-web",
        serde_json::json!({ "targetRef": { "group": "", "kind": "Service", "name": STRAY_TARGET } }),
    );
    fn yaml(header: &str, doc: &impl serde::Serialize) -> anyhow::Result<String> {
        Ok(format!("# {header}\n{}", serde_yaml::to_string(doc)?))
    }
    Ok(vec![
        (
            "workloads.yaml",
            yaml(
                "The demo's services and endpoints; `weft demo` writes this file at every start.",
                &workloads,
            )?,
        ),
        (
            "checkout-route.yaml",
            yaml(
                "checkout's canary; try: weft canary set checkout --weight checkout-v1=50 --weight checkout-v2=50",
                &route,
            )?,
        ),
        (
            "inventory-resilience.yaml",
            yaml(
                "inventory: retry what a failing replica answers; eject a replica after 3 failures in a row.",
                &resilience,
            )?,
        ),
        (
            "checkout-authz.yaml",
            yaml(
                "checkout (both versions) accepts only web; every other caller gets 403.",
                &checkout_authz,
            )?,
        ),
        (
            "inventory-authz.yaml",
            yaml(
                "inventory accepts only web; try: weft demo --stray-calls 2 (loadgen straight to inventory).",
                &inventory_authz,
            )?,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_has_its_own_port_and_web_names_its_services() {
        let mut ports = Ports::default();
        let all = workloads("cluster.local", &mut ports).unwrap();
        assert_eq!(all.len(), 8);
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
        let env = upstreams_env(web);
        assert!(env.contains("=checkout:80"), "{env}");
        assert!(env.contains("=inventory:80"), "{env}");
        let flaky: Vec<&str> = all
            .iter()
            .filter(|w| w.flaky)
            .map(|w| w.replica.as_str())
            .collect();
        assert_eq!(flaky, ["inventory-2"]);
    }

    /// The files the demo writes are what the local controller accepts: every
    /// document loads into an index with no refusal, and the canary's route
    /// splits checkout 90/10.
    #[test]
    fn the_policy_files_load_into_the_local_controller() {
        let mut ports = Ports::default();
        let all = workloads("cluster.local", &mut ports).unwrap();
        let files = policy_files(&all).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in &files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let stop = tokio_util::sync::CancellationToken::new();
            let (discovery, local) = weft_controller::discovery::local::discovery(
                dir.path(),
                weft_controller::discovery::IndexSettings::default(),
                stop.clone(),
            )
            .unwrap();
            let refused = &local.report()["refused"];
            assert_eq!(refused.as_array().map(Vec::len), Some(0), "{refused}");
            let web = Identity::new("cluster.local", NAMESPACE, "web").unwrap();
            let checkout = discovery
                .index
                .subscribe(&"checkout:80".parse().unwrap(), &web)
                .expect("checkout is in the mesh");
            let inventory = discovery
                .index
                .subscribe(&"inventory:80".parse().unwrap(), &web)
                .expect("inventory is in the mesh");
            let split = |s: &weft_api::policy::DestinationState| -> Vec<(String, u32, usize)> {
                let weights = s
                    .routes
                    .first()
                    .map(|r| r.backends.clone())
                    .unwrap_or_default();
                weights
                    .iter()
                    .map(|b| {
                        let endpoints = s
                            .backends
                            .iter()
                            .find(|e| e.name == b.name)
                            .map_or(0, |e| e.endpoints.len());
                        (b.name.clone(), b.weight, endpoints)
                    })
                    .collect()
            };
            let mut checkout = checkout;
            let state = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                checkout.wait_for(|s| !split(s).is_empty()),
            )
            .await
            .expect("the route reached the subscriber")
            .unwrap()
            .clone();
            assert_eq!(
                split(&state),
                [
                    ("checkout-v1".to_owned(), 90, 2),
                    ("checkout-v2".to_owned(), 10, 1)
                ]
            );
            let checkout_id = Identity::new("cluster.local", NAMESPACE, "checkout").unwrap();
            assert!(
                state
                    .backends
                    .iter()
                    .flat_map(|b| &b.endpoints)
                    .all(|e| e.identity.as_ref() == Some(&checkout_id)),
                "{state:?}"
            );
            let mut inventory = inventory;
            let state = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                inventory.wait_for(|s| s.circuit_breaker.is_some()),
            )
            .await
            .expect("the resilience policy reached the subscriber")
            .unwrap()
            .clone();
            assert_eq!(
                state.circuit_breaker.map(|c| c.consecutive_failures),
                Some(3)
            );
            assert_eq!(
                state
                    .backends
                    .iter()
                    .map(|b| b.endpoints.len())
                    .sum::<usize>(),
                3
            );
            stop.cancel();
        });
        let route = &files[1].1;
        assert!(route.contains("checkout-v2"), "{route}");
        assert!(route.contains("weight: 10"), "{route}");
    }
}
