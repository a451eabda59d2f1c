//! The Kubernetes discovery backend against a real API server. Runs only when
//! `WEFT_E2E_KUBECONFIG` names a kubeconfig of a disposable cluster (a bare
//! kube-apiserver 1.28 with kube-controller-manager is enough: there is no
//! kubelet, so this test plays its part); otherwise it prints why it is
//! skipped and passes.
//!
//! It installs the Gateway API CRDs (`WEFT_GATEWAY_API_CRDS`, default
//! `../shared/gateway-api/v1.5.1/standard` beside the repository), weft's CRDs
//! and the controller's RBAC (`deploy/`), then in a fresh namespace creates the
//! Services `checkout`, `checkout-v1` and `checkout-v2`, Pods bound to a Node
//! with their IPs (198.18.0.0/15) and Ready condition written through the
//! status subresource, and waits for the EndpointSlices the controller manager
//! makes from them. The controller's Kubernetes backend runs in this process,
//! calling the API server as the controller's ServiceAccount (impersonated, so
//! the ClusterRole is what is tested), feeding a `SharedIndex`; a subscriber of
//! `checkout` must see:
//!
//! - the 90/10 split of an HTTPRoute (parentRef the Service `checkout`), with the
//!   pods' addresses and identities (none for the pod without the injection
//!   annotation), and the route's `Accepted` and `ResolvedRefs` on the server,
//!   written by the field manager `weft-controller`;
//! - a weight change applied as `weft canary set` does (server-side apply, field
//!   manager `weft`), within 1 s (the time is printed);
//! - a ResiliencePolicy's retry budget; then a malformed ResiliencePolicy and a
//!   malformed HTTPRoute get `Accepted=False` on the server naming the field,
//!   while the subscriber keeps the previous policy and split;
//! - an AuthorizationPolicy applied with kubectl reaches the inbound
//!   subscription of a pod behind its Service (what `Inbound.Watch` streams),
//!   with the port's mode escalated to deny; a malformed version gets
//!   `Accepted=False` naming the field while the last good one stays;
//! - a backendRef to a Service that does not exist gets `ResolvedRefs=False`
//!   naming it, and a parentRef to one `Accepted=False` (`NoMatchingParent`)
//!   in that parent's entry.
//!
//! The namespace is deleted at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams,
};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_api::Identity;
use weft_api::policy::{
    Decision, DestinationState, InboundMode, InboundPolicy, InboundRequest, Target,
};
use weft_controller::discovery::index::{IndexSettings, SharedIndex};
use weft_controller::discovery::lease::{self, LeaseSettings};

const CRDS_ENV: &str = "WEFT_GATEWAY_API_CRDS";
const NODE: &str = "weft-e2e-node";
const TRUST_DOMAIN: &str = "cluster.local";
/// How long any one step may take on a loaded machine.
const STEP: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_follows_a_real_api_server() {
    let Some(kubeconfig) = weft_tests::skip::kubeconfig() else {
        return;
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // `WEFT_TEST_LOG=weft_controller::discovery=debug` shows the backend's logs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("WEFT_TEST_LOG"))
        .with_test_writer()
        .try_init();
    let admin = client(&kubeconfig, None).await;
    let ns = format!("weft-e2e-disc-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .expect("create the test namespace");
    let outcome = tokio::spawn(run(kubeconfig, admin.clone(), ns.clone())).await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
}

async fn run(kubeconfig: PathBuf, admin: kube::Client, ns: String) {
    install_crds_and_rbac(&kubeconfig);
    node(&admin).await;
    workloads(&admin, &ns).await;

    // The controller's backend, as the controller's ServiceAccount.
    let controller = client(
        &kubeconfig,
        Some("system:serviceaccount:weft-system:weft-controller"),
    )
    .await;
    let shutdown = CancellationToken::new();
    let index = SharedIndex::new(
        IndexSettings {
            trust_domain: TRUST_DOMAIN.into(),
            cluster_domain: "cluster.local".into(),
            ..IndexSettings::default()
        },
        shutdown.clone(),
    );
    // This run's own status Lease, so that a run that died holding one does
    // not delay this one's status writes.
    let lease = LeaseSettings {
        name: format!("weft-controller-status-{ns}"),
        ..LeaseSettings::new(weft_api::consts::MESH_NAMESPACE)
    };
    let backend =
        weft_controller::discovery::kube::spawn(controller, index.clone(), lease, shutdown.clone());

    let routes = Api::<DynamicObject>::namespaced_with(admin.clone(), &ns, &http_route_resource());
    apply(
        &routes,
        "checkout",
        http_route(&ns, "checkout", &[("checkout-v1", 90), ("checkout-v2", 10)]),
        "kubectl",
    )
    .await;

    let caller = Identity::new(TRUST_DOMAIN, &ns, "client").expect("an identity");
    let target: Target = format!("checkout.{ns}.svc.cluster.local:80")
        .parse()
        .expect("a target");
    let mut rx = index
        .subscribe(&target, &caller)
        .expect("a Service's authority is in the mesh");

    // The 90/10 split with endpoints and identities.
    let state = wait_state(&mut rx, |s| {
        weights(s) == split(&[("checkout-v1", 90), ("checkout-v2", 10)]) && ready(s)
    })
    .await;
    let v1 = state.backend("checkout-v1").expect("backend checkout-v1");
    let v1_identity = Identity::new(TRUST_DOMAIN, &ns, "checkout-v1").expect("an identity");
    let mut addrs: Vec<String> = v1.endpoints.iter().map(|e| e.addr.to_string()).collect();
    addrs.sort();
    assert_eq!(
        addrs,
        vec![pod_addr(1, 8080), pod_addr(2, 8080)],
        "{state:#?}"
    );
    assert!(
        v1.endpoints
            .iter()
            .all(|e| e.identity.as_ref() == Some(&v1_identity)),
        "{state:#?}"
    );
    let v2 = state.backend("checkout-v2").expect("backend checkout-v2");
    let v2_identity = Identity::new(TRUST_DOMAIN, &ns, "checkout-v2").expect("an identity");
    let meshed = v2
        .endpoints
        .iter()
        .find(|e| e.addr.to_string() == pod_addr(3, 8080))
        .expect("checkout-v2-0");
    assert_eq!(meshed.identity.as_ref(), Some(&v2_identity), "{state:#?}");
    let plain = v2
        .endpoints
        .iter()
        .find(|e| e.addr.to_string() == pod_addr(4, 8080))
        .expect("the unmeshed pod");
    assert_eq!(
        plain.identity, None,
        "a pod without the injection annotation is not meshed"
    );
    eprintln!(
        "split 90/10 seen: {} endpoints of checkout-v1, {} of checkout-v2",
        v1.endpoints.len(),
        v2.endpoints.len()
    );

    // The route's status on the server.
    let accepted = wait_route_condition(&routes, "checkout", "Accepted", "True").await;
    let resolved = wait_route_condition(&routes, "checkout", "ResolvedRefs", "True").await;
    eprintln!(
        "route status: Accepted=True ({}: {}), ResolvedRefs=True ({}: {})",
        accepted.0, accepted.1, resolved.0, resolved.1
    );
    assert_status_manager(&routes, "checkout").await;

    // `weft canary set checkout --weight checkout-v1=50 --weight checkout-v2=50`.
    let started = Instant::now();
    apply(
        &routes,
        "checkout",
        http_route(&ns, "checkout", &[("checkout-v1", 50), ("checkout-v2", 50)]),
        "weft",
    )
    .await;
    let applied = started.elapsed();
    wait_state(&mut rx, |s| {
        weights(s) == split(&[("checkout-v1", 50), ("checkout-v2", 50)])
    })
    .await;
    let seen = started.elapsed();
    eprintln!(
        "weight change 90/10 -> 50/50: applied in {} ms, seen by the subscriber {} ms after the apply began",
        applied.as_millis(),
        seen.as_millis()
    );
    assert!(
        seen < Duration::from_secs(1),
        "the subscriber saw the new weights after {seen:?}"
    );

    // A ResiliencePolicy: its budget reaches the subscriber.
    let policies =
        Api::<DynamicObject>::namespaced_with(admin.clone(), &ns, &resilience_resource());
    apply(
        &policies,
        "checkout",
        resilience(&ns, "checkout", "checkout", 0.3, "10s"),
        "kubectl",
    )
    .await;
    let state = wait_state(&mut rx, |s| (s.retry_budget.ratio - 0.3).abs() < 1e-9).await;
    assert_eq!(state.retry_budget.window, Duration::from_secs(10));
    wait_policy_condition(&policies, "checkout", "Accepted", "True").await;

    // A malformed ResiliencePolicy: named on the server, the last good one stays.
    apply(
        &policies,
        "checkout",
        resilience(&ns, "checkout", "checkout", 0.5, "5m"),
        "kubectl",
    )
    .await;
    let (reason, message) = wait_policy_condition(&policies, "checkout", "Accepted", "False").await;
    eprintln!("malformed ResiliencePolicy: Accepted=False {reason}: {message}");
    assert!(message.contains("spec.retryBudget.window"), "{message}");
    let now = rx.borrow().clone();
    assert!(
        (now.retry_budget.ratio - 0.3).abs() < 1e-9,
        "the last good policy stays: {now:#?}"
    );

    // A malformed HTTPRoute (a match type weft does not support): named on the
    // server, the last good split stays.
    let mut bad = http_route(&ns, "checkout", &[("checkout-v1", 10), ("checkout-v2", 90)]);
    bad["spec"]["rules"][0]["matches"] =
        json!([{ "path": { "type": "RegularExpression", "value": "/.*" } }]);
    apply(&routes, "checkout", bad, "weft").await;
    let (reason, message) = wait_route_condition(&routes, "checkout", "Accepted", "False").await;
    eprintln!("malformed HTTPRoute: Accepted=False {reason}: {message}");
    assert!(
        message.contains("spec.rules[0].matches[0].path"),
        "{message}"
    );
    let now = rx.borrow().clone();
    assert_eq!(
        weights(&now),
        split(&[("checkout-v1", 50), ("checkout-v2", 50)]),
        "the last good split stays: {now:#?}"
    );

    // An AuthorizationPolicy applied with kubectl reaches the inbound
    // subscription of a pod behind its Service (what `Inbound.Watch` streams):
    // web may call checkout-v1's `http` port, everyone else is denied.
    let workload = InboundRequest {
        workload: format!("{ns}/checkout-v1-0"),
        port: 8080,
    };
    let mut inbound = index
        .subscribe_inbound(&workload)
        .expect("checkout-v1-0 is a known pod");
    let file = std::env::temp_dir().join(format!("{ns}-authz.yaml"));
    let write_policy = |identity: &str| {
        let text = format!(
            "apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{ name: checkout-v1-callers, namespace: {ns} }}
spec:
  targetRef: {{ group: \"\", kind: Service, name: checkout-v1 }}
  ports: [http]
  rules:
    - from: {{ identities: [\"{identity}\"] }}
"
        );
        std::fs::write(&file, text).expect("write the policy file");
    };
    let web = format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/web");
    write_policy(&web);
    let started = Instant::now();
    kubectl(&kubeconfig, &["apply", "-f", &file.display().to_string()]);
    let policy = wait_inbound(&mut inbound, |p| {
        p.authorizations
            .iter()
            .any(|a| a.name == "checkout-v1-callers")
    })
    .await;
    eprintln!(
        "AuthorizationPolicy reached the inbound subscriber {} ms after kubectl apply began",
        started.elapsed().as_millis()
    );
    assert_eq!(policy.default_mode, InboundMode::Deny, "{policy:#?}");
    let web_id: Identity = web.parse().expect("an identity");
    let other: Identity = format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/other")
        .parse()
        .expect("an identity");
    assert!(matches!(
        policy.decide(Some(&web_id), Some(("GET", "/"))),
        Decision::Allowed(Some("checkout-v1-callers"))
    ));
    assert_eq!(
        policy.decide(Some(&other), Some(("GET", "/"))),
        Decision::Denied
    );
    assert_eq!(policy.decide(None, Some(("GET", "/"))), Decision::Denied);
    let authz = Api::<DynamicObject>::namespaced_with(
        admin.clone(),
        &ns,
        &ApiResource::erase::<weft_api::crd::AuthorizationPolicy>(&()),
    );
    wait_policy_condition(&authz, "checkout-v1-callers", "Accepted", "True").await;

    // A malformed one (a `*` inside a segment, which the schema lets through):
    // named on the server, the last good one stays in force.
    write_policy(&format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/we*"));
    kubectl(&kubeconfig, &["apply", "-f", &file.display().to_string()]);
    let (reason, message) =
        wait_policy_condition(&authz, "checkout-v1-callers", "Accepted", "False").await;
    eprintln!("malformed AuthorizationPolicy: Accepted=False {reason}: {message}");
    assert!(
        message.contains("spec.rules[0].from.identities[0]"),
        "{message}"
    );
    let now = inbound.borrow().clone();
    assert!(
        matches!(
            now.decide(Some(&web_id), Some(("GET", "/"))),
            Decision::Allowed(Some("checkout-v1-callers"))
        ),
        "the last good policy stays: {now:#?}"
    );
    let _ = std::fs::remove_file(&file);

    // A backendRef to a Service that does not exist.
    apply(
        &routes,
        "checkout-ghost",
        http_route(
            &ns,
            "checkout-v2",
            &[("checkout-v2", 50), ("checkout-v3", 50)],
        ),
        "kubectl",
    )
    .await;
    let (reason, message) =
        wait_route_condition(&routes, "checkout-ghost", "ResolvedRefs", "False").await;
    eprintln!("missing backend: ResolvedRefs=False {reason}: {message}");
    assert!(message.contains("checkout-v3"), "{message}");

    // A parentRef to a Service that does not exist: that parent's entry says so.
    apply(
        &routes,
        "checkout-stray",
        http_route(&ns, "nowhere", &[("checkout-v1", 100)]),
        "kubectl",
    )
    .await;
    let (reason, message) =
        wait_route_condition(&routes, "checkout-stray", "Accepted", "False").await;
    eprintln!("missing parent: Accepted=False {reason}: {message}");
    assert_eq!(reason, "NoMatchingParent");
    assert!(message.contains("nowhere does not exist"), "{message}");

    shutdown.cancel();
    backend.await.expect("the backend stops");
}

/// Two replicas electing the status writer on one Lease, as the controller's
/// ServiceAccount (so its Role is what is tested): exactly one holds it; when
/// the holder stops it releases the Lease and the other takes it at once; a
/// Lease whose holder stopped renewing without releasing is taken only after
/// its duration has passed as the taker observed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_holds_the_status_lease() {
    let Some(kubeconfig) = weft_tests::skip::kubeconfig() else {
        return;
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    install_crds_and_rbac(&kubeconfig);
    let controller = client(
        &kubeconfig,
        Some("system:serviceaccount:weft-system:weft-controller"),
    )
    .await;
    let name = format!("weft-e2e-lease-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let settings = |holder: &str| LeaseSettings {
        name: name.clone(),
        holder: holder.to_owned(),
        duration: Duration::from_secs(3),
        renew_every: Duration::from_millis(500),
        retry_every: Duration::from_millis(100),
        ..LeaseSettings::new(weft_api::consts::MESH_NAMESPACE)
    };
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let mut a = lease::elect(controller.clone(), settings("replica-a"), stop_a.clone());
    let mut b = lease::elect(controller.clone(), settings("replica-b"), stop_b.clone());
    let deadline = Instant::now() + STEP;
    while !(*a.borrow_and_update() || *b.borrow_and_update()) {
        assert!(
            Instant::now() < deadline,
            "no replica took the Lease within {STEP:?}"
        );
        tokio::select! {
            _ = a.changed() => {}
            _ = b.changed() => {}
        }
    }
    let (mut holder, stop_holder, mut other, stop_other) = if *a.borrow() {
        (a, stop_a, b, stop_b)
    } else {
        (b, stop_b, a, stop_a)
    };
    assert!(!*other.borrow(), "both replicas hold the Lease");
    // Still one holder after several renewals and retries.
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_millis(700), other.changed())
            .await
            .expect_err("the other replica took a Lease that was being renewed");
        assert!(
            *holder.borrow_and_update(),
            "the holder lost a Lease it renewed"
        );
    }
    let stopped = Instant::now();
    stop_holder.cancel();
    tokio::time::timeout(STEP, other.wait_for(|held| *held))
        .await
        .expect("the other replica takes the released Lease")
        .expect("its election runs");
    let took = stopped.elapsed();
    eprintln!("released Lease taken over in {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "a released Lease waited out its duration ({took:?})"
    );
    let _ = holder.changed().await;
    assert!(
        !*holder.borrow(),
        "a stopped replica still says it holds the Lease"
    );

    // A holder that vanished without releasing: the Lease names a ghost.
    stop_other.cancel();
    // The election ends (its sender dropped) once it has released the Lease.
    while other.changed().await.is_ok() {}
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(controller.clone(), weft_api::consts::MESH_NAMESPACE);
    let mut ghost = leases.get(&name).await.expect("the Lease");
    let spec = ghost.spec.get_or_insert_with(Default::default);
    spec.holder_identity = Some("replica-ghost".into());
    spec.lease_duration_seconds = Some(3);
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    leases
        .replace(&name, &PostParams::default(), &ghost)
        .await
        .expect("write the ghost holder");
    let started = Instant::now();
    let stop_c = CancellationToken::new();
    let mut c = lease::elect(controller.clone(), settings("replica-c"), stop_c.clone());
    tokio::time::timeout(STEP, c.wait_for(|held| *held))
        .await
        .expect("a replica takes a Lease whose holder stopped renewing")
        .expect("its election runs");
    let waited = started.elapsed();
    eprintln!("an abandoned Lease taken over after {waited:?}");
    assert!(
        waited >= Duration::from_secs(3),
        "a Lease held by another was taken before its duration passed ({waited:?})"
    );
    stop_c.cancel();
    while c.changed().await.is_ok() {}
    let _ = leases.delete(&name, &DeleteParams::default()).await;
}

// --- what the subscriber sees -------------------------------------------------

/// The split of the route (every test route has one rule), else the
/// backends' own weights.
fn weights(state: &DestinationState) -> BTreeMap<String, u32> {
    if let Some(route) = state.routes.iter().find(|r| !r.backends.is_empty()) {
        return route
            .backends
            .iter()
            .map(|b| (b.name.clone(), b.weight))
            .collect();
    }
    state
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.weight))
        .collect()
}

fn split(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(n, w)| ((*n).to_owned(), *w)).collect()
}

/// Every backend has all its endpoints (2 each).
/// Both backends have both their endpoints, and the three meshed pods'
/// identities are known (the Pods' watcher may lag the EndpointSlices').
fn ready(state: &DestinationState) -> bool {
    let endpoints = || state.backends.iter().flat_map(|b| &b.endpoints);
    state.backends.len() == 2
        && state.backends.iter().all(|b| b.endpoints.len() == 2)
        && endpoints().filter(|e| e.identity.is_some()).count() == 3
}

async fn wait_state(
    rx: &mut watch::Receiver<Arc<DestinationState>>,
    want: impl Fn(&DestinationState) -> bool,
) -> Arc<DestinationState> {
    let found = tokio::time::timeout(STEP, async {
        rx.wait_for(|s| want(s)).await.map(|s| s.clone())
    })
    .await;
    match found {
        Ok(Ok(state)) => state,
        Ok(Err(_)) => panic!("the index dropped the subscription"),
        Err(_) => panic!(
            "the subscriber never saw the state wanted; it has {:#?}",
            rx.borrow()
        ),
    }
}

async fn wait_inbound(
    rx: &mut watch::Receiver<Arc<InboundPolicy>>,
    want: impl Fn(&InboundPolicy) -> bool,
) -> Arc<InboundPolicy> {
    let found = tokio::time::timeout(STEP, async {
        rx.wait_for(|p| want(p)).await.map(|p| p.clone())
    })
    .await;
    match found {
        Ok(Ok(policy)) => policy,
        Ok(Err(_)) => panic!("the index dropped the inbound subscription"),
        Err(_) => panic!(
            "the inbound subscriber never saw the policy wanted; it has {:#?}",
            rx.borrow()
        ),
    }
}

// --- the cluster -------------------------------------------------------------

async fn client(kubeconfig: &Path, impersonate: Option<&str>) -> kube::Client {
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig).expect("a readable kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("a usable kubeconfig");
    if let Some(user) = impersonate {
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups = Some(vec![
            "system:serviceaccounts".into(),
            "system:serviceaccounts:weft-system".into(),
            "system:authenticated".into(),
        ]);
    }
    kube::Client::try_from(config).expect("a Kubernetes client")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kubectl(kubeconfig: &Path, args: &[&str]) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Gateway API CRDs, weft's CRDs, and the controller's ServiceAccount and
/// ClusterRole, as `deploy/` has them.
fn install_crds_and_rbac(kubeconfig: &Path) {
    let gateway = std::env::var_os(CRDS_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/gateway-api/v1.5.1/standard"));
    assert!(
        gateway.is_dir(),
        "the Gateway API CRDs are not at {}; set {CRDS_ENV} to the folder of the v1.5.1 standard channel",
        gateway.display()
    );
    let gateway = gateway.to_string_lossy().into_owned();
    let deploy = repo().join("deploy");
    let path = |p: &str| deploy.join(p).to_string_lossy().into_owned();
    kubectl(
        kubeconfig,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &gateway,
        ],
    );
    kubectl(
        kubeconfig,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-k",
            &path("crds"),
        ],
    );
    kubectl(
        kubeconfig,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &path("namespace.yaml"),
        ],
    );
    kubectl(
        kubeconfig,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &path("rbac.yaml"),
        ],
    );
    kubectl(
        kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/httproutes.gateway.networking.k8s.io",
            "crd/grpcroutes.gateway.networking.k8s.io",
            "crd/resiliencepolicies.policy.weft.io",
        ],
    );
}

/// EndpointSlices and bindings need a Node object; there is no kubelet behind it.
async fn node(client: &kube::Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(NODE.into()),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create the Node: {e}"),
    }
}

/// The address of the test's pod `n` (198.18.0.0/15 holds the test cluster's
/// pod and Service addresses; 198.18.0.0/16 is left to pods).
fn pod_ip(n: u8) -> String {
    format!("198.18.{}.{n}", 1 + std::process::id() % 250)
}

fn pod_addr(n: u8, port: u16) -> String {
    format!("{}:{port}", pod_ip(n))
}

/// The Services, their ServiceAccounts and Pods (two of checkout-v1, a meshed
/// and an unmeshed one of checkout-v2), ready as a kubelet would report them,
/// and the EndpointSlices made from them.
async fn workloads(client: &kube::Client, ns: &str) {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    for name in ["checkout-v1", "checkout-v2", "legacy"] {
        accounts
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({ "metadata": { "name": name } }))
                    .expect("a ServiceAccount"),
            )
            .await
            .expect("create a ServiceAccount");
    }
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    for (name, selector) in [
        ("checkout", json!({ "app": "checkout" })),
        ("checkout-v1", json!({ "app": "checkout", "version": "v1" })),
        ("checkout-v2", json!({ "app": "checkout", "version": "v2" })),
    ] {
        let service = json!({
            "metadata": { "name": name },
            "spec": {
                "selector": selector,
                "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }],
            },
        });
        services
            .create(
                &PostParams::default(),
                &serde_json::from_value(service).expect("a Service"),
            )
            .await
            .expect("create a Service");
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for (n, name, version, account, meshed) in [
        (1, "checkout-v1-0", "v1", "checkout-v1", true),
        (2, "checkout-v1-1", "v1", "checkout-v1", true),
        (3, "checkout-v2-0", "v2", "checkout-v2", true),
        (4, "checkout-v2-legacy", "v2", "legacy", false),
    ] {
        let annotations = if meshed {
            json!({ weft_api::consts::INJECTED_BY_ANNOTATION: "weft-e2e" })
        } else {
            json!({})
        };
        let pod = json!({
            "metadata": {
                "name": name,
                "labels": { "app": "checkout", "version": version },
                "annotations": annotations,
            },
            "spec": {
                "nodeName": NODE,
                "serviceAccountName": account,
                "automountServiceAccountToken": false,
                "containers": [{
                    "name": "app",
                    "image": "registry.example/checkout:1",
                    "ports": [{ "name": "http", "containerPort": 8080 }],
                }],
            },
        });
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(pod).expect("a Pod"),
        )
        .await
        .expect("create a Pod");
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let conditions: Vec<_> = ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
            .iter()
            .map(|t| json!({ "type": t, "status": "True", "lastTransitionTime": now }))
            .collect();
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "status": {
                    "phase": "Running",
                    "podIP": pod_ip(n),
                    "podIPs": [{ "ip": pod_ip(n) }],
                    "conditions": conditions,
                },
            })),
        )
        .await
        .expect("write the pod's status");
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + STEP;
    loop {
        let list = slices
            .list(&ListParams::default())
            .await
            .expect("list EndpointSlices");
        let ready = |service: &str| -> usize {
            list.items
                .iter()
                .filter(|s| {
                    s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"))
                        .map(String::as_str)
                        == Some(service)
                })
                .flat_map(|s| s.endpoints.iter())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .count()
        };
        if ready("checkout") == 4 && ready("checkout-v1") == 2 && ready("checkout-v2") == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the controller manager made no EndpointSlices with the ready pods; is kube-controller-manager running? {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// --- routes and policies -----------------------------------------------------

fn http_route_resource() -> ApiResource {
    ApiResource::erase::<weft_api::crd::HttpRoute>(&())
}

fn resilience_resource() -> ApiResource {
    ApiResource::erase::<weft_api::crd::ResiliencePolicy>(&())
}

fn http_route(ns: &str, parent: &str, backends: &[(&str, u32)]) -> serde_json::Value {
    let backend_refs: Vec<_> = backends
        .iter()
        .map(|(name, weight)| json!({ "name": name, "port": 80, "weight": weight }))
        .collect();
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": { "namespace": ns },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": parent, "port": 80 }],
            "rules": [{ "backendRefs": backend_refs }],
        },
    })
}

fn resilience(ns: &str, name: &str, service: &str, ratio: f64, window: &str) -> serde_json::Value {
    json!({
        "apiVersion": "policy.weft.io/v1alpha1",
        "kind": "ResiliencePolicy",
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "targetRef": { "group": "", "kind": "Service", "name": service },
            "retryBudget": { "ratio": ratio, "minRetriesPerSecond": 10, "window": window },
        },
    })
}

/// Server-side apply, as `kubectl apply --server-side` (manager `kubectl`) or
/// `weft canary set` (manager `weft`) would.
async fn apply(api: &Api<DynamicObject>, name: &str, mut object: serde_json::Value, manager: &str) {
    object["metadata"]["name"] = json!(name);
    api.patch(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name} as {manager}: {e}"));
}

/// Waits until the route has weft's condition `type_` with `status`; returns
/// its reason and message.
async fn wait_route_condition(
    api: &Api<DynamicObject>,
    name: &str,
    type_: &str,
    status: &str,
) -> (String, String) {
    wait_condition(api, name, type_, status, |object| {
        object
            .data
            .pointer("/status/parents")
            .and_then(|p| p.as_array())
            .and_then(|parents| {
                parents
                    .iter()
                    .find(|p| p["controllerName"] == weft_api::consts::ROUTE_CONTROLLER_NAME)
                    .and_then(|p| p["conditions"].as_array().cloned())
            })
    })
    .await
}

async fn wait_policy_condition(
    api: &Api<DynamicObject>,
    name: &str,
    type_: &str,
    status: &str,
) -> (String, String) {
    wait_condition(api, name, type_, status, |object| {
        object
            .data
            .pointer("/status/conditions")
            .and_then(|c| c.as_array().cloned())
    })
    .await
}

async fn wait_condition(
    api: &Api<DynamicObject>,
    name: &str,
    type_: &str,
    status: &str,
    conditions: impl Fn(&DynamicObject) -> Option<Vec<serde_json::Value>>,
) -> (String, String) {
    let deadline = Instant::now() + STEP;
    loop {
        let object = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get {name}: {e}"));
        let generation = object.metadata.generation;
        let found = conditions(&object)
            .unwrap_or_default()
            .into_iter()
            .find(|c| {
                c["type"] == type_
                    && c["status"] == status
                    && c["observedGeneration"].as_i64() == generation
            });
        if let Some(c) = found {
            assert!(c["lastTransitionTime"].is_string(), "{c}");
            return (
                c["reason"].as_str().unwrap_or_default().to_owned(),
                c["message"].as_str().unwrap_or_default().to_owned(),
            );
        }
        assert!(
            Instant::now() < deadline,
            "{name} never got {type_}={status} for generation {generation:?}: {:#}",
            object.data.get("status").cloned().unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status was written by server-side apply as `weft-controller`.
async fn assert_status_manager(api: &Api<DynamicObject>, name: &str) {
    let object = api.get(name).await.expect("the route");
    let managers: Vec<(String, String, String)> = object
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            (
                m.manager.unwrap_or_default(),
                m.operation.unwrap_or_default(),
                m.subresource.unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("weft-controller".into(), "Apply".into(), "status".into())),
        "{managers:?}"
    );
}
