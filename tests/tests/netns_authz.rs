//! Authorization by identity in network-namespace pods (root only): a local
//! controller in a pod of its own issues the certificates and pushes the
//! `AuthorizationPolicy` of its policy directory to the server pod's proxy
//! (`Inbound.Watch`); curl in the caller pods knows nothing of the mesh.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weft_api::consts::{PROXY_ERROR_HEADER, env};
use weft_controller::bootstrap::BootstrapTokens;
use weft_tests::apps::{self, SEEN_CLIENT_ID};
use weft_tests::mesh::sample;
use weft_tests::netns::{Pod, skip_unless_root, workspace_binary};
use weft_tests::pods::{Mesh, http_get, identity, proxy_metrics};

const GRPC_PORT: u16 = 8090;
/// How long a policy change may take to reach the proxy: the directory poll
/// (500 ms), the debounce and the push, with room for a loaded CI machine.
const PUSH_DEADLINE: Duration = Duration::from_secs(15);

fn workloads(server: &Pod) -> String {
    format!(
        "apiVersion: local.weft.io/v1alpha1
kind: Workloads
services:
  - name: server
    namespace: default
    ports: [8080]
    endpoints:
      - address: {}:8080
        serviceAccount: server
",
        server.addr()
    )
}

fn policy(callers: &[&str]) -> String {
    let accounts: Vec<String> = callers.iter().map(|c| format!("{{ name: {c} }}")).collect();
    format!(
        "apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{ name: server-callers, namespace: default }}
spec:
  targetRef: {{ group: \"\", kind: Service, name: server }}
  ports: [8080]
  rules:
    - from: {{ serviceAccounts: [{}] }}
",
        accounts.join(", ")
    )
}

/// Writes `text` to `dir/name` in one rename, so the controller's poll never
/// reads half a file.
fn write_atomic(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// `curl -i` from `pod` to `target:8080/orders` with a spoofed client id.
fn curl(pod: &Pod, target: &Pod) -> String {
    let url = format!("http://{}:8080/orders", target.addr());
    let out = pod
        .run(pod.command("curl").args([
            "-sS",
            "-i",
            "--max-time",
            "10",
            "-H",
            "weft-client-id: spiffe://cluster.local/ns/default/sa/admin",
            &url,
        ]))
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the proxy log of pod `name` holds `needle`.
fn wait_for_log(mesh: &Mesh, name: &str, needle: &str) {
    let deadline = Instant::now() + PUSH_DEADLINE;
    while !mesh.proxy_log(name).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{name}'s proxy did not log {needle:?} within {PUSH_DEADLINE:?}:\n{}",
            mesh.proxy_log(name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn authz(decision: &str, policy: &str, tls: bool, caller: &str) -> String {
    format!(
        "weft_inbound_authz_total{{decision=\"{decision}\",policy=\"{policy}\",tls=\"{tls}\",peer_identity=\"{caller}\",port=\"8080\"}}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_policy_decides_by_identity_and_changes_live() {
    if skip_unless_root() {
        return;
    }
    let mesh = Mesh::new("authz").unwrap();
    let ctl = mesh.plain_pod("ctl").unwrap();
    let server = mesh.net.pod("server").unwrap();

    // The controller's state (CA, tokens) and policy directory.
    let state = mesh.dir().join("ctl-state");
    let policy_dir = mesh.dir().join("policy");
    std::fs::create_dir_all(&policy_dir).unwrap();
    weft_controller::ca::load_or_generate(&state.join("issuer"), "cluster.local").unwrap();
    let anchors = mesh.dir().join("ctl-anchors.pem");
    std::fs::copy(
        state
            .join("issuer")
            .join(weft_controller::ca::TRUST_ANCHORS_FILE),
        &anchors,
    )
    .unwrap();
    write_atomic(&policy_dir, "workloads.yaml", &workloads(&server));
    write_atomic(&policy_dir, "authz.yaml", &policy(&["allowed"]));
    let log = std::fs::File::create(mesh.dir().join("ctl.log")).unwrap();
    ctl.spawn(
        ctl.command(workspace_binary("weft-controller").unwrap())
            .args(["serve", "--mode", "local", "--issuer-poll", "1s"])
            .arg("--state-dir")
            .arg(&state)
            .arg("--policy-dir")
            .arg(&policy_dir)
            .args(["--grpc-addr", &format!("0.0.0.0:{GRPC_PORT}")])
            .args(["--admin-addr", "127.0.0.1:9990"])
            .stdout(std::process::Stdio::null())
            .stderr(log),
    )
    .unwrap();

    let tokens = BootstrapTokens::new(&state);
    let controller = format!("{}:{GRPC_PORT}", ctl.addr());
    let controller_identity = weft_api::control::controller_identity("cluster.local")
        .unwrap()
        .to_string();
    let proxy_env = |name: &str, workload: Option<&str>| -> Vec<(String, String)> {
        let id = identity(name);
        let token = tokens
            .issue(&id.parse().unwrap(), Duration::from_secs(600))
            .unwrap();
        let token_file = mesh.dir().join(format!("{name}.token"));
        std::fs::write(&token_file, token.as_str()).unwrap();
        let mut vars = vec![
            (env::CONTROLLER_ADDR.to_owned(), controller.clone()),
            (
                env::CONTROLLER_IDENTITY.to_owned(),
                controller_identity.clone(),
            ),
            (env::IDENTITY.to_owned(), id),
            (
                env::IDENTITY_TOKEN_FILE.to_owned(),
                token_file.display().to_string(),
            ),
            (
                env::TRUST_ANCHORS_FILE.to_owned(),
                anchors.display().to_string(),
            ),
        ];
        if let Some(w) = workload {
            vars.push((env::WORKLOAD.to_owned(), w.to_owned()));
            vars.push((env::INBOUND_PORTS.to_owned(), "8080".to_owned()));
        }
        vars
    };
    let start = |pod: Pod, name: &str, workload: Option<&str>| -> Pod {
        let vars = proxy_env(name, workload);
        let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        mesh.mesh_pod(pod, name, &refs).unwrap()
    };
    let server = start(server, "server", Some("default/server-0"));
    apps::http_echo_on(server.tokio_listener(([0, 0, 0, 0], 8080).into()).unwrap());
    let allowed = start(mesh.net.pod("allowed").unwrap(), "allowed", None);
    let other = start(mesh.net.pod("other").unwrap(), "other", None);
    let plain = mesh.plain_pod("plain").unwrap();
    wait_for_log(&mesh, "server", "server-callers");

    // The allowed identity gets through, with its verified identity in
    // place of the one it claimed.
    let text = curl(&allowed, &server);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains(&format!("{SEEN_CLIENT_ID}: {}", identity("allowed"))),
        "{text}"
    );
    // Another identity, and a plaintext caller, get 403 from the proxy.
    for caller in [&other, &plain] {
        let text = curl(caller, &server);
        assert!(text.starts_with("HTTP/1.1 403"), "{text}");
        assert!(
            text.contains(&format!("{PROXY_ERROR_HEADER}: unauthorized")),
            "{text}"
        );
        assert!(!text.contains(SEEN_CLIENT_ID), "reached the app: {text}");
    }
    let metrics = proxy_metrics(&server).unwrap();
    for (series, want) in [
        (
            authz("allowed", "server-callers", true, &identity("allowed")),
            1.0,
        ),
        (
            authz("denied", "default:deny", true, &identity("other")),
            1.0,
        ),
        (authz("denied", "default:deny", false, ""), 1.0),
    ] {
        assert_eq!(
            sample(&metrics, &series),
            Some(want),
            "{series} in\n{metrics}"
        );
    }
    let log = mesh.proxy_log("server");
    assert!(
        log.contains("denied an inbound request") && log.contains(&identity("other")),
        "{log}"
    );

    // A live change: `other` is allowed too, while `allowed` keeps calling;
    // no request of `allowed` fails on the way, and no proxy restarts.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let took = {
        let target = server.addr();
        let allowed = &allowed;
        std::thread::scope(|scope| {
            let (stop_, sent_, failed_) = (stop.clone(), sent.clone(), failed.clone());
            let load = scope.spawn(move || {
                let deadline = Instant::now() + PUSH_DEADLINE * 2;
                let addr = std::net::SocketAddr::from((target, 8080));
                while !stop_.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let rsp = http_get(allowed, addr, "/orders");
                    sent_.fetch_add(1, Ordering::Relaxed);
                    if !rsp.is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
                        failed_.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            // Some load before the change.
            while sent.load(Ordering::Relaxed) < 20 {
                std::thread::sleep(Duration::from_millis(10));
            }
            write_atomic(&policy_dir, "authz.yaml", &policy(&["allowed", "other"]));
            let changed = Instant::now();
            loop {
                let text = curl(&other, &server);
                if text.starts_with("HTTP/1.1 200") {
                    break;
                }
                assert!(
                    changed.elapsed() < PUSH_DEADLINE,
                    "the new policy did not apply within {PUSH_DEADLINE:?}: {text}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            let took = changed.elapsed();
            // Some load after it.
            let after = sent.load(Ordering::Relaxed) + 20;
            while sent.load(Ordering::Relaxed) < after {
                std::thread::sleep(Duration::from_millis(10));
            }
            stop.store(true, Ordering::Relaxed);
            load.join().unwrap();
            took
        })
    };
    eprintln!(
        "policy change applied in {took:?}; {} requests of the allowed caller during it",
        sent.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "allowed requests failed during the policy change"
    );
    let metrics = proxy_metrics(&server).unwrap();
    assert_eq!(
        sample(
            &metrics,
            &authz("allowed", "server-callers", true, &identity("other"))
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_lets_the_would_be_denial_through_and_counts_it() {
    if skip_unless_root() {
        return;
    }
    let mesh = Mesh::new("audit").unwrap();
    let server = mesh
        .meshed_pod("audited", &[(env::DEFAULT_INBOUND_POLICY, "audit")])
        .unwrap();
    apps::http_echo_on(server.tokio_listener(([0, 0, 0, 0], 8080).into()).unwrap());
    let plain = mesh.plain_pod("plain").unwrap();
    let text = curl(&plain, &server);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let metrics = proxy_metrics(&server).unwrap();
    let series = authz("audited", "default:audit", false, "");
    assert_eq!(
        sample(&metrics, &series),
        Some(1.0),
        "{series} in\n{metrics}"
    );
    assert!(
        mesh.proxy_log("audited").contains("audit mode let through"),
        "{}",
        mesh.proxy_log("audited")
    );
}
