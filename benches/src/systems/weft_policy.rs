//! The weft pair with traffic policy: the same two `weft-proxy` processes as
//! `weft`, but the client proxy's upstream listener names a service
//! (`WEFT_PROXY_UPSTREAMS=<listen>=backend:80`) whose endpoints and policy
//! come from a real controller's `Discovery.Watch`: an HTTPRoute splitting it
//! 50/50 between two backends (both the server proxy's inbound, so the
//! figures stay comparable with `weft`) and a ResiliencePolicy with retries,
//! a retry budget and circuit breaking. Every request takes the per-request
//! route, split, pick and retry path; none needs a retry (the backend always
//! answers 200). The controller runs in the harness process, on its own
//! thread, and signs the proxies' certificates with the run's intermediate,
//! so they chain to the same root as every other system's.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use weft_api::Identity;
use weft_api::consts::env as var;
use weft_controller::bootstrap::BootstrapTokens;
use weft_controller::{AuditEcho, Controller};

use super::{Running, StartEnv, free_addr, spawn};
use crate::pki::{CLIENT_ID, SERVER_ID};

/// The namespace of the bench identities (`spiffe://cluster.local/ns/bench/...`).
const NAMESPACE: &str = "bench";

/// A controller in the harness process; dropping it stops it.
pub(crate) struct ControlPlane {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").finish_non_exhaustive()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The policy directory's documents.
fn policy(server_inbound: SocketAddr) -> String {
    let endpoint = |name: &str| {
        format!(
            "  - name: {name}\n    namespace: {NAMESPACE}\n    ports: [80]\n    endpoints:\n      - address: {server_inbound}\n        serviceAccount: server\n"
        )
    };
    format!(
        "apiVersion: local.weft.io/v1alpha1\nkind: Workloads\nservices:\n  - name: backend\n    namespace: {NAMESPACE}\n    ports: [80]\n{}{}---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: backend\n  namespace: {NAMESPACE}\nspec:\n  parentRefs:\n    - {{group: \"\", kind: Service, name: backend, port: 80}}\n  rules:\n    - backendRefs:\n        - {{name: backend-a, port: 80, weight: 50}}\n        - {{name: backend-b, port: 80, weight: 50}}\n---\n\
apiVersion: policy.weft.io/v1alpha1\nkind: ResiliencePolicy\nmetadata:\n  name: backend\n  namespace: {NAMESPACE}\nspec:\n  targetRef: {{group: \"\", kind: Service, name: backend}}\n  retryBudget: {{ratio: 0.2, minRetriesPerSecond: 10}}\n  defaultRetry: {{attempts: 2, codes: [503], conditions: [connect-failure, reset]}}\n  circuitBreaker: {{consecutiveFailures: 5}}\n",
        endpoint("backend-a"),
        endpoint("backend-b"),
    )
}

/// Starts a controller in local mode (serving `policy_dir`, polled) on its
/// own thread, its state in `dir/controller`, signing with `issuer` (or a
/// CA it generates there, whose trust anchors are then in
/// `dir/controller/issuer`).
pub(crate) fn start_controller(
    dir: &Path,
    issuer: Option<&Path>,
    policy_dir: &Path,
) -> anyhow::Result<(ControlPlane, SocketAddr, Arc<BootstrapTokens>)> {
    let state = dir.join("controller");
    std::fs::create_dir_all(&state).with_context(|| format!("create {}", state.display()))?;
    let tokens = Arc::new(BootstrapTokens::new(&state));
    let settings = crate::certify::controller_settings(&state, issuer);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<SocketAddr>>();
    let verifier = tokens.clone();
    let policy_dir = policy_dir.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("weft-policy-controller".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            runtime.block_on(async move {
                let stop = tokio_util::sync::CancellationToken::new();
                let started = async {
                    let (discovery, _) = weft_controller::discovery::local::discovery(
                        &policy_dir,
                        weft_controller::discovery::IndexSettings {
                            trust_domain: "cluster.local".into(),
                            ..Default::default()
                        },
                        stop.clone(),
                    )?;
                    let controller = Controller::start_with_discovery(
                        settings,
                        verifier,
                        AuditEcho::Off,
                        Some(discovery),
                    )
                    .await?;
                    anyhow::Ok(controller)
                }
                .await;
                match started {
                    Ok(controller) => {
                        let _ = ready_tx.send(Ok(controller.grpc_addr()));
                        let _ = stop_rx.await;
                        stop.cancel();
                        controller.shutdown().await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        })
        .context("start the controller thread")?;
    let control = ControlPlane {
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    let grpc = ready_rx
        .recv_timeout(Duration::from_secs(15))
        .context("the controller did not start within 15 s")??;
    Ok((control, grpc, tokens))
}

pub(super) fn start(env: &StartEnv, dir: &Path) -> anyhow::Result<Running> {
    let Some(proxy) = &env.weft_proxy else {
        bail!("no weft-proxy binary was found");
    };
    let listen = free_addr()?;
    let inbound = free_addr()?;
    let policy_dir = dir.join("policy");
    std::fs::create_dir_all(&policy_dir)
        .with_context(|| format!("create {}", policy_dir.display()))?;
    std::fs::write(policy_dir.join("bench.yaml"), policy(inbound))
        .context("write the policy directory")?;
    let (control, controller, tokens) =
        start_controller(dir, Some(&env.pki.issuer_dir), &policy_dir)?;

    let command = |identity: &str| -> anyhow::Result<Command> {
        let id: Identity = identity.parse()?;
        let token = tokens
            .issue(&id, Duration::from_secs(7 * 86_400))
            .context("issue a bootstrap token")?;
        let token_file = dir.join(format!("{}.token", id.service_account()));
        std::fs::write(&token_file, token.as_str())
            .with_context(|| format!("write {}", token_file.display()))?;
        let mut command = Command::new(&proxy.path);
        command
            .env_clear()
            .env(var::CONTROLLER_ADDR, controller.to_string())
            .env(var::IDENTITY, identity)
            .env(var::IDENTITY_TOKEN_FILE, &token_file)
            .env(var::TRUST_ANCHORS_FILE, &env.pki.root)
            .env(var::ADMIN_ADDR, free_addr()?.to_string())
            .env(var::OUTBOUND_ADDR, free_addr()?.to_string())
            .env(var::SHUTDOWN_GRACE, "1")
            .env(var::LOG, "warn")
            .env(var::WORKER_THREADS, env.workers.to_string());
        Ok(command)
    };
    let mut server = command(SERVER_ID)?;
    server
        .env(var::INBOUND_ADDR, inbound.to_string())
        .env(var::APP_ADDR, env.backend.to_string());
    let mut client = command(CLIENT_ID)?;
    client
        .env(var::INBOUND_ADDR, free_addr()?.to_string())
        .env(var::APP_ADDR, env.backend.to_string())
        .env(var::UPSTREAMS, format!("{listen}=backend:80"));
    let server = spawn("weft-policy-server", server, dir)?;
    let client = spawn("weft-policy-client", client, dir)?;
    let mut running = Running::pair(listen, listen, inbound, vec![client, server]);
    running.control = Some(control);
    Ok(running)
}

/// Waits until a request through `entry` is answered 200: the client proxy
/// has its certificate and discovery's first snapshot, and the server proxy
/// its certificate.
pub(super) fn wait_serving(running: &mut Running, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        running.check_alive()?;
        let last = match super::get(running.http1, "backend", "/") {
            Ok((status, _)) if status.starts_with("HTTP/1.1 200") => return Ok(()),
            Ok((status, _)) => status,
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            bail!(
                "weft-policy did not answer 200 through {} within {limit:?}; last: {last}",
                running.http1
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_splits_the_service_between_two_backends() {
        let text = policy("127.0.0.1:5143".parse().expect("addr"));
        assert!(text.contains("kind: HTTPRoute"), "{text}");
        assert!(text.contains("backend-a, port: 80, weight: 50"), "{text}");
        assert!(text.contains("address: 127.0.0.1:5143"), "{text}");
        assert!(text.contains("attempts: 2"), "{text}");
    }
}
