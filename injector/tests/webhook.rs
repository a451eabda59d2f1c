//! The webhook over real HTTPS (a hyper client trusting a test CA) with
//! AdmissionReview bodies as the API server sends them; serving-certificate
//! rotation while requests flow; the admin server's `/ready` and `/metrics`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::SanType;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use weft_injector::injector::{self, Parts, Running};
use weft_injector::metrics::Metrics;
use weft_injector::namespaces::NamespaceIndex;
use weft_injector::server::{Decide, mutate_decision};
use weft_injector::{Decision, InjectConfig, NamespaceInfo};
use weft_tests::pki::{LeafSpec, TestCa};

const POD_CREATE: &str = include_str!("data/pod-create.json");
const SERVER_NAME: &str = "weft-injector.weft-system.svc";

/// The serving certificate's files, written as the kubelet writes a Secret
/// volume: `tls.crt -> ..data/tls.crt`, `..data -> <version dir>`, swapped atomically.
struct SecretDir {
    dir: tempfile::TempDir,
    version: AtomicU64,
}

impl SecretDir {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in ["tls.crt", "tls.key", "ca-bundle.crt"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.path().join(name))
                .expect("link");
        }
        Self {
            dir,
            version: AtomicU64::new(0),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, cert: &str, key: &str, anchors: &str) {
        let n = self.version.fetch_add(1, Ordering::SeqCst);
        let version = self.dir.path().join(format!("..v{n}"));
        std::fs::create_dir(&version).expect("version dir");
        std::fs::write(version.join("tls.crt"), cert).expect("write cert");
        std::fs::write(version.join("tls.key"), key).expect("write key");
        std::fs::write(version.join("ca-bundle.crt"), anchors).expect("write anchors");
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).expect("symlink");
        std::fs::rename(&tmp, self.dir.path().join("..data")).expect("swap");
    }
}

fn serving_leaf(ca: &TestCa) -> weft_tests::pki::Leaf {
    let mut spec = LeafSpec::identity("spiffe://cluster.local/ns/weft-system/sa/weft-injector");
    spec.sans = vec![SanType::DnsName(SERVER_NAME.try_into().expect("DNS name"))];
    ca.issue_spec(&spec)
}

struct Harness {
    ca: TestCa,
    secret: SecretDir,
    running: Running,
    index: Arc<NamespaceIndex>,
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> NamespaceInfo {
    NamespaceInfo {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        annotations: BTreeMap::new(),
    }
}

async fn start(decide: Decide) -> Harness {
    let ca = TestCa::new("webhook");
    let secret = SecretDir::new();
    let leaf = serving_leaf(&ca);
    secret.write(&leaf.chain_pem, &leaf.key_pem, ca.anchors_pem());
    let metrics = Arc::new(Metrics::new());
    let index = Arc::new(NamespaceIndex::new(metrics.clone()));
    index.reset([
        namespace(
            "shop",
            &[(
                weft_api::consts::INJECT_KEY,
                weft_api::consts::INJECT_ENABLED,
            )],
        ),
        namespace("plain", &[]),
    ]);
    let running = injector::start(Parts {
        decide,
        config: InjectConfig::default(),
        cert_file: secret.path("tls.crt"),
        key_file: secret.path("tls.key"),
        trust_anchors_file: Some(secret.path("ca-bundle.crt")),
        reload_interval: Duration::from_millis(50),
        namespaces: index.clone(),
        client: None,
        metrics,
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin_addr: "127.0.0.1:0".parse().expect("addr"),
    })
    .await
    .expect("the injector starts");
    Harness {
        ca,
        secret,
        running,
        index,
    }
}

/// An HTTPS client that trusts the test root.
fn connector(ca: &TestCa) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root_der()).expect("test root");
    let config = rustls::ClientConfig::builder_with_provider(weft_api::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut config = config;
    // Every connection a full handshake: a resumed session shows the
    // certificate of the session it resumes, not the one being served now.
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A new HTTPS connection; returns the sender and the serving leaf's serial.
async fn connect(connector: &TlsConnector, addr: std::net::SocketAddr) -> (Sender, Vec<u8>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = connector
        .connect(ServerName::try_from(SERVER_NAME).expect("name"), tcp)
        .await
        .expect("TLS handshake with the webhook");
    let leaf = tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone();
    let (_, parsed) = x509_serial(&leaf);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    (sender, parsed)
}

fn x509_serial(cert: &[u8]) -> ((), Vec<u8>) {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).expect("the serving certificate parses");
    ((), parsed.raw_serial().to_vec())
}

async fn post(sender: &mut Sender, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let request = http::Request::post(path)
        .header(http::header::HOST, SERVER_NAME)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    sender.ready().await.expect("connection ready");
    let response = sender.send_request(request).await.expect("a response");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, body)
}

async fn review(h: &Harness, body: &Value) -> (u16, Vec<u8>) {
    let (mut sender, _) = connect(&connector(&h.ca), h.running.webhook_addr).await;
    post(
        &mut sender,
        weft_api::consts::injector::INJECT_PATH,
        serde_json::to_vec(body).expect("json"),
    )
    .await
}

fn pod_create(namespace: &str) -> Value {
    let mut body: Value = serde_json::from_str(POD_CREATE).expect("fixture");
    body["request"]["namespace"] = json!(namespace);
    body["request"]["object"]["metadata"]["namespace"] = json!(namespace);
    body
}

fn response_of(body: &[u8]) -> Value {
    let review: Value = serde_json::from_slice(body).expect("an AdmissionReview");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    review["response"].clone()
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.expect("connect admin");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, "admin")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn wait_for<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Applies the response's `patch` (the AdmissionResponse's `[]byte`, which
/// JSON carries as base64 text) to the pod as it was sent.
fn apply_patch(original: &Value, patch: &Value) -> Value {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch.as_str().expect("the patch is base64 text"))
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("a JSON patch");
    let mut pod = original.clone();
    json_patch::patch(&mut pod, &patch).expect("the patch applies to the pod as sent");
    pod
}

#[tokio::test]
async fn injects_a_pod_of_an_opted_in_namespace() {
    let h = start(mutate_decision()).await;
    let body = pod_create("shop");
    let (status, answer) = review(&h, &body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let response = response_of(&answer);
    assert_eq!(response["uid"], body["request"]["uid"]);
    assert_eq!(response["allowed"], true);
    assert_eq!(
        response["patchType"], "JSONPatch",
        "a pod of a namespace labelled weft.io/inject=enabled is injected: {response}"
    );
    let pod = apply_patch(&body["request"]["object"], &response["patch"]);
    assert!(
        pod["metadata"]["annotations"][weft_api::consts::INJECTED_BY_ANNOTATION].is_string(),
        "{pod}"
    );
    let (_, metrics) = get(h.running.admin_addr, "/metrics").await;
    assert!(
        weft_tests::mesh::has(
            &metrics,
            r#"weft_injector_admissions_total{outcome="injected",reason="none"} 1"#
        ),
        "{metrics}"
    );
    h.running.shutdown().await;
}

/// The decision's patch reaches the API server intact, whatever `mutate` says:
/// the server's part of injection, checked with a decision of our own.
#[tokio::test]
async fn the_decision_patch_is_sent_and_applies_to_the_pod_as_sent() {
    let decide: Decide = Arc::new(|_pod, _ns, config| {
        let patch = json!([{
            "op": "add",
            "path": "/metadata/annotations/weft.io~1injected-by",
            "value": config.version,
        }]);
        Decision::Inject(serde_json::from_value(patch).expect("a JSON patch"))
    });
    let h = start(decide).await;
    let body = pod_create("shop");
    let (status, answer) = review(&h, &body).await;
    assert_eq!(status, 200);
    let response = response_of(&answer);
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let pod = apply_patch(&body["request"]["object"], &response["patch"]);
    assert_eq!(
        pod["metadata"]["annotations"][weft_api::consts::INJECTED_BY_ANNOTATION],
        InjectConfig::default().version
    );
    h.running.shutdown().await;
}

#[tokio::test]
async fn skips_pods_left_unmeshed_with_their_reason() {
    let h = start(mutate_decision()).await;
    // An unlabelled namespace: allowed, no patch.
    let (status, answer) = review(&h, &pod_create("plain")).await;
    assert_eq!(status, 200);
    let response = response_of(&answer);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
    // A hostNetwork pod in an opted-in namespace: allowed, not injected, reason counted.
    let mut host = pod_create("shop");
    host["request"]["object"]["spec"]["hostNetwork"] = json!(true);
    let (status, answer) = review(&h, &host).await;
    assert_eq!(status, 200);
    let response = response_of(&answer);
    assert_eq!(response["allowed"], true);
    if response.get("patch").is_some() {
        let pod = apply_patch(&host["request"]["object"], &response["patch"]);
        assert!(
            pod["metadata"]["annotations"]
                .get(weft_api::consts::INJECTED_BY_ANNOTATION)
                .is_none(),
            "a hostNetwork pod is never injected: {pod}"
        );
    }
    let (_, metrics) = get(h.running.admin_addr, "/metrics").await;
    for line in [
        r#"weft_injector_admissions_total{outcome="skipped",reason="not-enabled"} 1"#,
        r#"weft_injector_admissions_total{outcome="skipped",reason="host-network"} 1"#,
    ] {
        assert!(
            weft_tests::mesh::has(&metrics, line),
            "missing {line}:\n{metrics}"
        );
    }
    // What `promtool check metrics` reads (the Prometheus text format) passes.
    if let Some(promtool) = weft_tests::prometheus::tool(weft_tests::prometheus::PROMTOOL)
        && let Err(e) = weft_tests::prometheus::promtool_check(&promtool, &metrics).await
    {
        panic!("{e:#}\n--- /metrics ---\n{metrics}");
    }
    h.running.shutdown().await;
}

#[tokio::test]
async fn a_denial_carries_403_and_the_message() {
    let decide: Decide = Arc::new(|_pod, ns, _config| {
        Decision::Deny(format!(
            "pods in {} cannot be injected: fix the ports",
            ns.name
        ))
    });
    let h = start(decide).await;
    let (status, answer) = review(&h, &pod_create("shop")).await;
    assert_eq!(status, 200);
    let response = response_of(&answer);
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 403);
    assert_eq!(response["status"]["reason"], "Forbidden");
    assert_eq!(
        response["status"]["message"],
        "pods in shop cannot be injected: fix the ports"
    );
    let (_, metrics) = get(h.running.admin_addr, "/metrics").await;
    assert!(
        weft_tests::mesh::has(
            &metrics,
            r#"weft_injector_admissions_total{outcome="denied",reason="pod-spec"} 1"#
        ),
        "{metrics}"
    );
    h.running.shutdown().await;
}

#[tokio::test]
async fn malformed_bodies_and_other_requests() {
    let called = Arc::new(AtomicBool::new(false));
    let decide: Decide = {
        let called = called.clone();
        Arc::new(move |_pod, _ns, _config| {
            called.store(true, Ordering::SeqCst);
            Decision::Deny("must not be asked".into())
        })
    };
    let h = start(decide).await;
    let (mut sender, _) = connect(&connector(&h.ca), h.running.webhook_addr).await;
    let path = weft_api::consts::injector::INJECT_PATH;

    let (status, body) = post(&mut sender, path, b"{\"kind\": \"AdmissionRev".to_vec()).await;
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("not an AdmissionReview"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let mut v1beta1 = pod_create("shop");
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let (status, body) = post(
        &mut sender,
        path,
        serde_json::to_vec(&v1beta1).expect("json"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("admission.k8s.io/v1"));

    // A pod UPDATE and a Service CREATE: allowed unchanged, the decision not asked.
    let mut update = pod_create("shop");
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = update["request"]["object"].clone();
    let mut service = pod_create("shop");
    service["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Service"});
    service["request"]["resource"] = json!({"group": "", "version": "v1", "resource": "services"});
    service["request"]["object"] = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "checkout", "namespace": "shop"},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "checkout"}}});
    for body in [update, service] {
        let (status, answer) =
            post(&mut sender, path, serde_json::to_vec(&body).expect("json")).await;
        assert_eq!(status, 200);
        let response = response_of(&answer);
        assert_eq!(response["allowed"], true);
        assert_eq!(response["uid"], body["request"]["uid"]);
        assert!(response.get("patch").is_none());
    }
    assert!(!called.load(Ordering::SeqCst));

    // A namespace nobody knows: 503, so that the failure policy applies.
    let (status, body) = post(
        &mut sender,
        path,
        serde_json::to_vec(&pod_create("ghost")).expect("json"),
    )
    .await;
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains("\"ghost\""));

    // Another path, another method.
    let (status, _) = post(&mut sender, "/mutate", b"{}".to_vec()).await;
    assert_eq!(status, 404);

    let (_, metrics) = get(h.running.admin_addr, "/metrics").await;
    for line in [
        r#"weft_injector_admissions_total{outcome="error",reason="bad-request"} 2"#,
        r#"weft_injector_admissions_total{outcome="skipped",reason="not-pod-create"} 2"#,
        r#"weft_injector_admissions_total{outcome="error",reason="namespace-unknown"} 1"#,
    ] {
        assert!(
            weft_tests::mesh::has(&metrics, line),
            "missing {line}:\n{metrics}"
        );
    }
    h.running.shutdown().await;
}

#[tokio::test]
async fn ready_needs_a_synced_index_and_reports_what_is_missing() {
    let h = start(mutate_decision()).await;
    let (status, _) = get(h.running.admin_addr, "/ready").await;
    assert_eq!(status, 200);
    let (status, _) = get(h.running.admin_addr, "/live").await;
    assert_eq!(status, 200);
    // A fresh index that never synced: not ready.
    let metrics = Arc::new(Metrics::new());
    let secret = SecretDir::new();
    let leaf = serving_leaf(&h.ca);
    secret.write(&leaf.chain_pem, &leaf.key_pem, h.ca.anchors_pem());
    let unsynced = injector::start(Parts {
        decide: mutate_decision(),
        config: InjectConfig::default(),
        cert_file: secret.path("tls.crt"),
        key_file: secret.path("missing.key"),
        trust_anchors_file: Some(secret.path("ca-bundle.crt")),
        reload_interval: Duration::from_millis(50),
        namespaces: Arc::new(NamespaceIndex::new(metrics.clone())),
        client: None,
        metrics,
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin_addr: "127.0.0.1:0".parse().expect("addr"),
    })
    .await
    .expect("starts without a key, not ready");
    let (status, body) = get(unsynced.admin_addr, "/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("no serving certificate"), "{body}");
    assert!(body.contains("namespace index is not synced"), "{body}");
    let _ = &h.index;
    unsynced.shutdown().await;
    h.running.shutdown().await;
}

#[tokio::test]
async fn serving_certificate_rotation_while_requests_flow() {
    let h = Arc::new(start(mutate_decision()).await);
    let addr = h.running.webhook_addr;
    let connector = connector(&h.ca);
    let (_, first_serial) = connect(&connector, addr).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (connector, stop, ok) = (connector.clone(), stop.clone(), ok.clone());
        let body = serde_json::to_vec(&pod_create("plain")).expect("json");
        clients.push(tokio::spawn(async move {
            // Two clients keep one connection; two open a new one per request.
            let keep = i % 2 == 0;
            let (mut sender, _) = connect(&connector, addr).await;
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if !keep {
                    sender = connect(&connector, addr).await.0;
                }
                let (status, answer) = post(
                    &mut sender,
                    weft_api::consts::injector::INJECT_PATH,
                    body.clone(),
                )
                .await;
                if status == 200 && response_of(&answer)["allowed"] == true {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failures.push(status);
                }
            }
            failures
        }));
    }
    wait_for("requests flow", || {
        let ok = ok.clone();
        async move { ok.load(Ordering::SeqCst) > 20 }
    })
    .await;

    // A bad pair (key of another certificate): refused, the old one kept.
    let other = serving_leaf(&h.ca);
    let current = serving_leaf(&h.ca);
    h.secret
        .write(&current.chain_pem, &other.key_pem, h.ca.anchors_pem());
    wait_for("the bad pair is counted", || {
        let h = h.clone();
        async move {
            let (_, m) = get(h.running.admin_addr, "/metrics").await;
            weft_tests::mesh::has(
                &m,
                r#"weft_injector_serving_cert_reloads_total{result="error"} 1"#,
            )
        }
    })
    .await;
    assert_eq!(connect(&connector, addr).await.1, first_serial);

    // Two good rotations: new handshakes see each new certificate.
    let mut serial = first_serial.clone();
    for _ in 0..2 {
        let next = serving_leaf(&h.ca);
        h.secret
            .write(&next.chain_pem, &next.key_pem, h.ca.anchors_pem());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let seen = loop {
            let (_, seen) = connect(&connector, addr).await;
            if seen != serial {
                break seen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no new handshake saw the new certificate in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        serial = seen;
        let flowed = ok.load(Ordering::SeqCst);
        wait_for("requests keep flowing", || {
            let ok = ok.clone();
            async move { ok.load(Ordering::SeqCst) > flowed + 10 }
        })
        .await;
    }
    assert_ne!(serial, first_serial);
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        let failures = client.await.expect("client task");
        assert!(failures.is_empty(), "failed admissions: {failures:?}");
    }
    let (_, m) = get(h.running.admin_addr, "/metrics").await;
    assert!(
        weft_tests::mesh::has(
            &m,
            r#"weft_injector_serving_cert_reloads_total{result="ok"} 2"#
        ),
        "{m}"
    );
}
