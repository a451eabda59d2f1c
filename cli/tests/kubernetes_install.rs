//! `weft install`, the injector, `weft check` and `weft canary` against a real
//! API server.
//!
//! Runs only when `WEFT_E2E_KUBECONFIG` names a kubeconfig of a disposable cluster
//! (a bare kube-apiserver 1.28 with kube-controller-manager is enough: there is no
//! kubelet, so pods stay Pending and this test plays the kubelet's part where it
//! must); otherwise it prints why it is skipped and passes.
//!
//! It applies `weft install --webhook-url https://127.0.0.1:<port>/inject` to the
//! cluster, runs `weft-injector` on this machine with the serving certificate,
//! trust anchors and configuration the install created, and then checks what the
//! API server stored: the pods of a Deployment (2 replicas, made by the
//! controller manager) and a bare pod in a labelled namespace are injected with a
//! native sidecar; with native sidecars off (a second install) a new pod gets the
//! classic sidecar; a pod in an unlabelled namespace is not injected unless it
//! opts in with the `weft.io/inject: enabled` label; the mesh's own pods never
//! are. Finally the test marks the mesh's pods ready (binding them to a Node and
//! writing their status, as a kubelet would) and `weft check` passes.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Binding, ConfigMap, Container, Namespace, Node, ObjectReference, Pod, PodCondition, PodSpec,
    PodStatus, PodTemplateSpec, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};

const MESH_NS: &str = "weft-system";
const NODE: &str = "weft-e2e-node";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_inject_and_check_on_a_real_api_server() {
    let Some(kubeconfig) = weft_tests::skip::kubeconfig() else {
        return;
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).expect("a readable kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("a usable kubeconfig");
    let client = kube::Client::try_from(config).expect("a Kubernetes client");
    let suffix = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let labelled = format!("weft-e2e-on-{suffix}");
    let unlabelled = format!("weft-e2e-off-{suffix}");
    let work = tempfile::tempdir().expect("a temporary directory");

    let outcome = tokio::spawn(run(
        client.clone(),
        kubeconfig.clone(),
        labelled.clone(),
        unlabelled.clone(),
        work.path().to_owned(),
    ))
    .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [&labelled, &unlabelled] {
        let _ = namespaces.delete(ns, &DeleteParams::default()).await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
}

async fn run(
    client: kube::Client,
    kubeconfig: PathBuf,
    labelled: String,
    unlabelled: String,
    work: PathBuf,
) {
    gateway_api_crds(&kubeconfig);
    node(&client).await;

    // The install, with the webhook reached by URL on this machine.
    let port = free_port();
    let webhook_url = format!("https://127.0.0.1:{port}/inject");
    // Tracing on: the injected proxies get OTEL_* from their pods.
    install(
        &kubeconfig,
        &webhook_url,
        true,
        &["--otlp-endpoint", OTLP_ENDPOINT],
    );
    let mut injector = Injector::start(&client, &kubeconfig, port, &work).await;

    // A labelled namespace: a Deployment of 2 replicas and a bare pod.
    create_namespace(&client, &labelled, true).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &labelled);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &labelled);
    deployments
        .create(&PostParams::default(), &deployment("shop", 2))
        .await
        .expect("create the Deployment");
    pods.create(&PostParams::default(), &pod("bare", BTreeMap::new()))
        .await
        .expect("the API server accepts the injected bare pod");
    let shop = wait_for(|| {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=shop"))
                .await
                .ok()?;
            (list.items.len() == 2).then_some(list.items)
        }
    })
    .await
    .expect("the controller manager creates the Deployment's 2 pods");
    for p in &shop {
        assert_native_sidecar(p);
        assert_traced_as(p, "shop");
    }
    let bare = pods.get("bare").await.expect("the bare pod");
    assert_native_sidecar(&bare);

    // An unlabelled namespace: not injected, unless the pod opts in by label.
    create_namespace(&client, &unlabelled, false).await;
    let other: Api<Pod> = Api::namespaced(client.clone(), &unlabelled);
    let plain = other
        .create(&PostParams::default(), &pod("plain", BTreeMap::new()))
        .await
        .expect("create a pod in an unlabelled namespace");
    assert_not_injected(&plain);
    let opted_in = other
        .create(
            &PostParams::default(),
            &pod(
                "opted-in",
                BTreeMap::from([("weft.io/inject".to_owned(), "enabled".to_owned())]),
            ),
        )
        .await
        .expect("create an opted-in pod");
    assert_native_sidecar(&opted_in);

    // The mesh's own pods are never injected.
    let mesh_pods: Api<Pod> = Api::namespaced(client.clone(), MESH_NS);
    let mesh = wait_for(|| {
        let mesh_pods = mesh_pods.clone();
        async move {
            let list = mesh_pods.list(&ListParams::default()).await.ok()?;
            (list.items.len() >= 4).then_some(list.items)
        }
    })
    .await
    .expect("the controller and injector pods of weft-system exist");
    for p in &mesh {
        assert_not_injected(p);
    }

    // Classic sidecars: install again with native sidecars off.
    install(&kubeconfig, &webhook_url, false, &[]);
    injector.stop();
    let mut injector = Injector::start(&client, &kubeconfig, port, &work).await;
    let classic = pods
        .create(&PostParams::default(), &pod("classic", BTreeMap::new()))
        .await
        .expect("the API server accepts the classic-sidecar pod");
    assert_classic_sidecar(&classic);

    // `weft check`, once the mesh's pods are ready as a kubelet would report them.
    for p in &mesh {
        make_ready(&client, p).await;
    }
    let check = wait_for(|| {
        let kubeconfig = kubeconfig.clone();
        async move {
            let out = weft(&["check", "--kubeconfig"], &kubeconfig, &[]);
            out.status.success().then_some(out)
        }
    })
    .await;
    let Some(check) = check else {
        let out = weft(&["check", "--kubeconfig"], &kubeconfig, &[]);
        panic!(
            "weft check failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    eprintln!("{}", String::from_utf8_lossy(&check.stdout));
    injector.stop();
}

fn assert_native_sidecar(pod: &Pod) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    assert!(
        annotations.contains_key("weft.io/injected-by"),
        "{name}: not injected: {annotations:?}"
    );
    let spec = pod.spec.as_ref().expect("a pod spec");
    let init = spec.init_containers.clone().unwrap_or_default();
    assert_eq!(
        init.first().map(|c| c.name.as_str()),
        Some("weft-init"),
        "{name}: weft-init first"
    );
    let proxy = init
        .iter()
        .find(|c| c.restart_policy.as_deref() == Some("Always"))
        .unwrap_or_else(|| panic!("{name}: the API server kept no native sidecar: {init:?}"));
    assert!(proxy.startup_probe.is_some(), "{name}: a startup probe");
    assert!(
        spec.containers.iter().all(|c| c.name == "app"),
        "{name}: only the app in containers"
    );
}

const OTLP_ENDPOINT: &str = "http://otel-collector.observability:4317";

/// The proxy of `pod` (a native sidecar) sends its spans to the install's
/// collector under `service`, with the pod's namespace and name as resource.
fn assert_traced_as(pod: &Pod, service: &str) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let proxy = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "weft-proxy"))
        .unwrap_or_else(|| panic!("{name}: no weft-proxy"));
    let env: BTreeMap<String, String> = proxy
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    let var = |key: &str| env.get(key).map(String::as_str);
    assert_eq!(
        var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        Some(OTLP_ENDPOINT),
        "{name}"
    );
    assert_eq!(var("OTEL_SERVICE_NAME"), Some(service), "{name}: {env:?}");
    assert_eq!(
        var("OTEL_TRACES_SAMPLER"),
        Some("parentbased_traceidratio"),
        "{name}"
    );
    assert_eq!(
        var("OTEL_RESOURCE_ATTRIBUTES"),
        Some("k8s.namespace.name=$(WEFT_PROXY_POD_NAMESPACE),k8s.pod.name=$(WEFT_PROXY_POD_NAME)"),
        "{name}"
    );
}

fn assert_classic_sidecar(pod: &Pod) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.as_ref().expect("a pod spec");
    let init = spec.init_containers.clone().unwrap_or_default();
    assert!(
        init.iter().all(|c| c.restart_policy.is_none()),
        "{name}: no native sidecar"
    );
    let first = spec.containers.first().expect("a container");
    assert_ne!(first.name, "app", "{name}: the proxy placed first");
    assert!(
        first
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
            .is_some(),
        "{name}: the classic proxy waits for readiness in postStart"
    );
}

fn assert_not_injected(pod: &Pod) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    assert!(
        !annotations.contains_key("weft.io/injected-by"),
        "{name} must not be injected"
    );
    let spec = pod.spec.as_ref().expect("a pod spec");
    assert!(
        spec.init_containers
            .iter()
            .flatten()
            .all(|c| c.name != "weft-init"),
        "{name} must not be injected"
    );
}

/// The local injector, configured from what `weft install` put into the cluster.
struct Injector {
    child: Child,
}

impl Injector {
    async fn start(client: &kube::Client, kubeconfig: &Path, port: u16, work: &Path) -> Self {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), MESH_NS);
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), MESH_NS);
        let tls = secrets
            .get("weft-injector-tls")
            .await
            .expect("the webhook's serving certificate");
        let data = tls.data.expect("Secret data");
        std::fs::write(work.join("tls.crt"), &data["tls.crt"].0).expect("write tls.crt");
        std::fs::write(work.join("tls.key"), &data["tls.key"].0).expect("write tls.key");
        let anchors = maps
            .get("weft-trust-anchors")
            .await
            .expect("the trust anchors");
        let bundle = anchors.data.expect("ConfigMap data")["ca-bundle.crt"].clone();
        std::fs::write(work.join("ca-bundle.crt"), bundle).expect("write the anchors");
        let config = maps
            .get("weft-injector-config")
            .await
            .expect("the injector's configuration");
        let (_, text) = config
            .data
            .expect("ConfigMap data")
            .into_iter()
            .next()
            .expect("a configuration file");
        std::fs::write(work.join("config.yaml"), text).expect("write the configuration");

        let admin = free_port();
        let log = std::fs::File::create(work.join("injector.log")).expect("a log file");
        let child = Command::new(sibling_binary("weft-injector"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin-addr")
            .arg(format!("127.0.0.1:{admin}"))
            .arg("--cert-file")
            .arg(work.join("tls.crt"))
            .arg("--key-file")
            .arg(work.join("tls.key"))
            .arg("--config")
            .arg(work.join("config.yaml"))
            .arg("--trust-anchors-file")
            .arg(work.join("ca-bundle.crt"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start weft-injector");
        let ready = wait_for(|| async move {
            let out = Command::new("curl")
                .args(["-sf", &format!("http://127.0.0.1:{admin}/ready")])
                .output()
                .ok()?;
            out.status.success().then_some(())
        })
        .await;
        if ready.is_none() {
            let log = std::fs::read_to_string(work.join("injector.log")).unwrap_or_default();
            panic!("weft-injector did not become ready:\n{log}");
        }
        Self { child }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.stop();
    }
}

fn install(kubeconfig: &Path, webhook_url: &str, native: bool, more: &[&str]) {
    let native = if native { "true" } else { "false" };
    let mut args = vec!["--webhook-url", webhook_url, "--native-sidecars", native];
    args.extend_from_slice(more);
    let out = weft(&["install", "--apply", "--kubeconfig"], kubeconfig, &args);
    assert!(
        out.status.success(),
        "weft install --apply failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn weft(args: &[&str], kubeconfig: &Path, more: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .arg(kubeconfig)
        .args(more)
        .env("NO_COLOR", "1")
        .output()
        .expect("run weft")
}

/// The Gateway API CRDs, a documented prerequisite of weft.
fn gateway_api_crds(kubeconfig: &Path) {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/gateway-api/v1.5.1/standard");
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "--server-side", "-f"])
        .arg(&dir)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "apply the Gateway API CRDs from {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // On a fresh API server the routes' endpoints answer 404 until the CRDs
    // are established.
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/httproutes.gateway.networking.k8s.io",
            "crd/grpcroutes.gateway.networking.k8s.io",
        ])
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "wait for the Gateway API CRDs: {}",
        String::from_utf8_lossy(&out.stderr)
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

async fn create_namespace(client: &kube::Client, name: &str, opted_in: bool) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let labels = opted_in.then(|| BTreeMap::from([("weft.io/inject".into(), "enabled".into())]));
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels,
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .expect("create a namespace");
}

fn app_spec() -> PodSpec {
    PodSpec {
        containers: vec![Container {
            name: "app".into(),
            image: Some("registry.example/shop:1".into()),
            ..Container::default()
        }],
        ..PodSpec::default()
    }
}

fn pod(name: &str, labels: BTreeMap<String, String>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(app_spec()),
        ..Pod::default()
    }
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    let labels = BTreeMap::from([("app".to_owned(), name.to_owned())]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(app_spec()),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// What a kubelet would do for a pod that started: bind it to the node and
/// report it running and ready.
async fn make_ready(client: &kube::Client, pod: &Pod) {
    let ns = pod.metadata.namespace.clone().expect("a namespace");
    let name = pod.metadata.name.clone().expect("a name");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_none()
    {
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(NODE.into()),
                ..ObjectReference::default()
            },
        };
        let data = serde_json::to_vec(&binding).expect("a binding");
        let request = http::Request::post(format!("/api/v1/namespaces/{ns}/pods/{name}/binding"))
            .header("content-type", "application/json")
            .body(data)
            .expect("a request");
        let _: serde_json::Value = client
            .request(request)
            .await
            .expect("bind the pod to the node");
    }
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let status = PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some("198.18.0.10".into()),
        conditions: Some(
            ["Ready", "ContainersReady", "Initialized", "PodScheduled"]
                .into_iter()
                .map(|t| PodCondition {
                    type_: t.into(),
                    status: "True".into(),
                    last_transition_time: Some(now.clone()),
                    ..PodCondition::default()
                })
                .collect(),
        ),
        ..PodStatus::default()
    };
    pods.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
    .expect("write the pod's status");
}

async fn wait_for<T, F, Fut>(mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn sibling_binary(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_weft")).with_file_name(name)
}

/// `weft canary` on a real API server, end to end: the controller's Kubernetes
/// discovery (watchers, index, status writer) runs in this process with a
/// subscriber of `checkout`, an HTTPRoute splits it 90/10, and the `weft`
/// binary itself runs `canary set`, `status` and `rollback` against the API
/// server. Each change must reach the subscriber within 1 s of the command's
/// start (the time is printed); `status` must show the weights on the server;
/// a split that does not add up to 100 must be refused and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_set_reaches_a_subscriber_through_a_real_api_server() {
    use weft_api::policy::Target;
    use weft_controller::discovery::IndexSettings;
    use weft_controller::discovery::lease::LeaseSettings;

    let Some(kubeconfig) = weft_tests::skip::kubeconfig() else {
        return;
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).expect("a readable kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("a usable kubeconfig");
    let client = kube::Client::try_from(config).expect("a Kubernetes client");
    let ns = format!("weft-e2e-canary-{:06x}", rand::random::<u32>() & 0xff_ffff);
    gateway_api_crds(&kubeconfig);
    create_namespace(&client, &ns, false).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let outcome = tokio::spawn(canary(
        client.clone(),
        kubeconfig.clone(),
        ns.clone(),
        shutdown.clone(),
    ))
    .await;
    shutdown.cancel();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }

    async fn canary(
        client: kube::Client,
        kubeconfig: PathBuf,
        ns: String,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        for name in ["checkout", "checkout-v1", "checkout-v2"] {
            let service: Service = serde_json::from_value(serde_json::json!({
                "metadata": { "name": name },
                "spec": { "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }],
                          "selector": { "app": name } },
            }))
            .expect("a Service");
            services
                .create(&PostParams::default(), &service)
                .await
                .expect("create a Service");
        }
        let routes = Api::<kube::api::DynamicObject>::namespaced_with(
            client.clone(),
            &ns,
            &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
                "gateway.networking.k8s.io",
                "v1",
                "HTTPRoute",
            )),
        );
        let route: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": { "name": "checkout", "namespace": ns },
            "spec": {
                "parentRefs": [{ "group": "", "kind": "Service", "name": "checkout", "port": 80 }],
                "rules": [{ "backendRefs": [
                    { "name": "checkout-v1", "port": 80, "weight": 90 },
                    { "name": "checkout-v2", "port": 80, "weight": 10 },
                ] }],
            },
        }))
        .expect("an HTTPRoute");
        routes
            .patch(
                "checkout",
                &PatchParams::apply("kubectl"),
                &Patch::Apply(&route),
            )
            .await
            .expect("apply the HTTPRoute");

        let lease = LeaseSettings {
            name: format!("weft-controller-status-{ns}"),
            ..LeaseSettings::new(MESH_NS)
        };
        let index = weft_controller::discovery::kube::start(
            client.clone(),
            IndexSettings::default(),
            lease,
            shutdown,
        );
        let target: Target = format!("checkout.{ns}.svc.cluster.local:80")
            .parse()
            .expect("a target");
        let caller = weft_api::Identity::new("cluster.local", &ns, "web").expect("an identity");
        let mut rx = index
            .subscribe(&target, &caller)
            .expect("a Service's authority is in the mesh");
        let weights = |s: &weft_api::policy::DestinationState| -> Vec<u32> {
            s.routes
                .first()
                .map(|r| r.backends.iter().map(|b| b.weight).collect())
                .unwrap_or_default()
        };
        tokio::time::timeout(
            Duration::from_secs(60),
            rx.wait_for(|s| weights(s) == [90, 10]),
        )
        .await
        .expect("the subscriber gets the 90/10 split within 60 s")
        .expect("the index keeps the subscription");

        let mut changes = Vec::new();
        for (args, want) in [
            (
                vec![
                    "set",
                    "checkout",
                    "--weight",
                    "checkout-v1=50",
                    "--weight",
                    "checkout-v2=50",
                ],
                [50, 50],
            ),
            (vec!["rollback", "checkout"], [100, 0]),
        ] {
            let started = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_weft"))
                .arg("canary")
                .args(&args)
                .args(["--namespace", &ns, "--kubeconfig"])
                .arg(&kubeconfig)
                .env("NO_COLOR", "1")
                .output()
                .expect("run weft canary");
            assert!(
                out.status.success(),
                "weft canary {args:?} failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|s| weights(s) == want))
                .await
                .unwrap_or_else(|_| panic!("weft canary {args:?} never reached the subscriber"))
                .expect("the index keeps the subscription");
            let took = started.elapsed();
            eprintln!(
                "weft canary {} reached the subscriber {took:?} after the command started",
                args.join(" ")
            );
            changes.push((args.join(" "), took));
        }
        for (what, took) in &changes {
            assert!(
                *took < Duration::from_secs(1),
                "weft canary {what} took {took:?} to reach the subscriber (target: under 1 s)"
            );
        }

        // `status` reads the weights back from the server.
        let out = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args([
                "canary",
                "status",
                "checkout",
                "--namespace",
                &ns,
                "--output",
                "json",
            ])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .output()
            .expect("run weft canary status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = String::from_utf8_lossy(&out.stdout);
        assert!(
            status.contains("checkout-v1") && status.contains("100"),
            "{status}"
        );

        // A split that does not add up is refused; the route keeps its weights.
        let out = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["canary", "set", "checkout", "--namespace", &ns])
            .args(["--weight", "checkout-v1=50", "--weight", "checkout-v2=40"])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .output()
            .expect("run weft canary set");
        assert!(!out.status.success(), "a 90 % split was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("100"),
            "the refusal says what must hold: {stderr}"
        );
        let stored = routes.get("checkout").await.expect("the HTTPRoute");
        let stored: Vec<u64> = stored.data["spec"]["rules"][0]["backendRefs"]
            .as_array()
            .map(|b| b.iter().filter_map(|b| b["weight"].as_u64()).collect())
            .unwrap_or_default();
        assert_eq!(stored, vec![100, 0], "the refused change touched the route");
    }
}

/// `weft audit policy --kubeconfig` reads a real API server: a Service an
/// AuthorizationPolicy protects shows its callers and `deny`, one without is a
/// NoPolicy finding (allow-all lets plaintext in).
#[test]
fn audit_policy_reads_a_real_api_server() {
    let Some(kubeconfig) = weft_tests::skip::kubeconfig() else {
        return;
    };
    let ns = format!("weft-e2e-audit-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let kubectl = |args: &[&str], stdin: Option<&str>| {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let Some(text) = stdin {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write to kubectl");
        }
        let out = child.wait_with_output().expect("kubectl finished");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    kubectl(&["apply", "-k", &crds.display().to_string()], None);
    kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/authorizationpolicies.policy.weft.io",
        ],
        None,
    );
    let objects = format!(
        "apiVersion: v1
kind: Namespace
metadata: {{ name: {ns} }}
---
apiVersion: v1
kind: Service
metadata: {{ name: checkout, namespace: {ns} }}
spec: {{ selector: {{ app: checkout }}, ports: [{{ name: http, port: 80, targetPort: 8080 }}] }}
---
apiVersion: v1
kind: Service
metadata: {{ name: cart, namespace: {ns} }}
spec: {{ selector: {{ app: cart }}, ports: [{{ name: http, port: 80, targetPort: 8080 }}] }}
---
apiVersion: v1
kind: Pod
metadata: {{ name: checkout-0, namespace: {ns}, labels: {{ app: checkout }} }}
spec: {{ containers: [{{ name: app, image: app, ports: [{{ name: http, containerPort: 8080 }}] }}] }}
---
apiVersion: v1
kind: Pod
metadata: {{ name: cart-0, namespace: {ns}, labels: {{ app: cart }} }}
spec: {{ containers: [{{ name: app, image: app, ports: [{{ name: http, containerPort: 8080 }}] }}] }}
---
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{ name: checkout-from-web, namespace: {ns} }}
spec:
  targetRef: {{ group: \"\", kind: Service, name: checkout }}
  rules: [{{ from: {{ serviceAccounts: [{{ name: web }}] }} }}]
"
    );
    kubectl(&["apply", "-f", "-"], Some(&objects));
    let out = weft(
        &["audit", "policy", "--output", "json", "--kubeconfig"],
        &kubeconfig,
        &[],
    );
    kubectl(&["delete", "namespace", &ns, "--wait=false"], None);
    assert!(
        out.status.success(),
        "weft audit policy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let service = |name: &str| {
        report["services"]
            .as_array()
            .expect("services")
            .iter()
            .find(|s| s["namespace"] == ns.as_str() && s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report}"))
            .clone()
    };
    let checkout = service("checkout");
    assert_eq!(checkout["ports"][0]["defaultMode"], "deny", "{checkout}");
    assert_eq!(
        checkout["ports"][0]["policies"],
        serde_json::json!(["checkout-from-web"])
    );
    assert_eq!(
        checkout["ports"][0]["allowed"],
        serde_json::json!([format!("service account {ns}/web")])
    );
    let cart = service("cart");
    assert_eq!(cart["ports"][0]["plaintextAllowed"], true, "{cart}");
    let findings = report["findings"].as_array().expect("findings");
    assert!(
        findings
            .iter()
            .any(|f| f["kind"] == "NoPolicy" && f["object"] == format!("Service {ns}/cart")),
        "{report}"
    );
    assert!(
        !findings
            .iter()
            .any(|f| f["object"] == format!("Service {ns}/checkout") && f["kind"] == "NoPolicy"),
        "{report}"
    );
}
