//! `weft-controller` as an operator runs it: `issue-token`, then `serve` in
//! local mode on 127.0.0.1 with port 0, a real `Certify` with that token, and
//! SIGTERM; and every bad flag reported at once.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use weft_api::certify::{CertifyRequest, IdentityToken};
use weft_api::control::{ControlClient, controller_identity};
use weft_api::tls::{MeshTls, TrustAnchors};
use weft_controller::ca::new_key_and_csr;

const BIN: &str = env!("CARGO_BIN_EXE_weft-controller");

/// Starts `serve` (a `weft-controller serve` command) on ephemeral loopback
/// ports; its log lines arrive on the receiver as it writes them.
fn serve_with_log(mut serve: Command) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = serve
        .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

#[tokio::test]
async fn issue_token_serve_certify_and_stop() {
    let state = tempfile::tempdir().expect("a temporary directory");
    let state_dir = state.path().to_str().expect("UTF-8");
    let id = support::identity("web");
    let issued = Command::new(BIN)
        .args(["issue-token", "--state-dir", state_dir, "--ttl", "1h"])
        .args(["--identity", &id.to_string()])
        .output()
        .expect("issue-token runs");
    assert!(issued.status.success(), "{issued:?}");
    let token = IdentityToken::new(String::from_utf8(issued.stdout).expect("UTF-8"))
        .expect("a token on stdout");

    let mut serve = Command::new(BIN);
    serve.args(["serve", "--state-dir", state_dir, "--cert-lifetime", "60s"]);
    let (mut child, rx) = serve_with_log(serve);
    let started = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the controller logs that it started");
        if line.contains("controller started") {
            break line;
        }
    };
    assert!(
        !started.contains('\x1b'),
        "no colours when not a terminal: {started}"
    );
    let grpc_addr = started
        .split_whitespace()
        .find_map(|field| field.strip_prefix("grpc_addr="))
        .expect("the bound gRPC address is logged")
        .to_owned();

    let anchors = std::fs::read(state.path().join("issuer/ca.crt")).expect("ca.crt");
    let client = ControlClient::new(
        &grpc_addr,
        MeshTls::new(TrustAnchors::from_pem(&anchors).expect("anchors")),
        controller_identity("cluster.local").expect("an identity"),
    )
    .expect("a client");
    let certified = client
        .certify(CertifyRequest {
            token,
            csr: new_key_and_csr(&id).expect("a CSR").1,
        })
        .await
        .expect("certified with the token from issue-token");
    assert_eq!(
        weft_api::tls::peer_identity(&certified.leaf).expect("an identity"),
        id
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
    let signalled = std::time::Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    // The client was still connected (with its runtime running): the controller
    // closed the connection itself, well within its grace period.
    assert!(
        signalled.elapsed() < weft_controller::controller::SHUTDOWN_GRACE,
        "stopping took {:?}",
        signalled.elapsed()
    );
    drop(client);
}

#[test]
fn every_bad_flag_is_reported_before_exiting() {
    let output = Command::new(BIN)
        .args(["serve", "--mode", "cloud", "--cert-lifetime", "soon"])
        .args(["--grpc-addr", "localhost"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for flag in ["--mode", "--cert-lifetime", "--grpc-addr"] {
        assert!(stderr.contains(flag), "{flag} missing: {stderr}");
    }
}

/// Local mode has no object status: a policy that is not in force is a
/// warning in the controller's log, naming the object and the reason
/// (a conflict between two ResiliencePolicies, a route's missing parent).
#[test]
fn local_mode_logs_the_conditions_of_policy_not_in_force() {
    let state = tempfile::tempdir().expect("a temporary directory");
    let policy = tempfile::tempdir().expect("a temporary directory");
    let resilience = |name: &str, created: &str| {
        format!(
            "apiVersion: policy.weft.io/v1alpha1\nkind: ResiliencePolicy\nmetadata:\n  name: {name}\n  \
             namespace: shop\n  creationTimestamp: \"{created}\"\nspec:\n  targetRef: {{group: \"\", kind: Service, \
             name: checkout}}\n  retryBudget: {{ratio: 0.2}}\n---\n"
        )
    };
    let documents = format!(
        "apiVersion: {}\nkind: Workloads\nservices:\n  - name: checkout\n    namespace: shop\n    ports: [80]\n---\n\
         {}{}\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: stray\n  namespace: shop\n\
         spec:\n  parentRefs:\n    - {{group: \"\", kind: Service, name: ghost}}\n  rules:\n    \
         - backendRefs:\n        - {{name: checkout, port: 80}}\n",
        weft_controller::discovery::local::WORKLOADS_API_VERSION,
        resilience("older", "2026-01-01T00:00:00Z"),
        resilience("newer", "2026-02-01T00:00:00Z"),
    );
    std::fs::write(policy.path().join("shop.yaml"), documents).expect("write the policy");
    let mut serve = Command::new(BIN);
    serve
        .args(["serve", "--state-dir"])
        .arg(state.path())
        .arg("--policy-dir")
        .arg(policy.path());
    let (mut child, rx) = serve_with_log(serve);
    let (mut conflict, mut parent) = (None, None);
    while conflict.is_none() || parent.is_none() {
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("no warning for {conflict:?} / {parent:?} within 20 s");
            }
        };
        if line.contains("Conflicted") {
            conflict = Some(line);
        } else if line.contains("NoMatchingParent") {
            parent = Some(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let conflict = conflict.unwrap_or_default();
    assert!(
        conflict.contains("WARN")
            && conflict.contains("shop/newer")
            && conflict.contains("shop/older"),
        "{conflict}"
    );
    let parent = parent.unwrap_or_default();
    assert!(parent.contains("shop/ghost does not exist"), "{parent}");
    eprintln!("{conflict}\n{parent}");
}
