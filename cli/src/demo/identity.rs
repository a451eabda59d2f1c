//! The demo's control plane: the local controller (run inside the demo
//! process, with its CA kept in the state directory and reused by later runs),
//! and a bootstrap token for each workload, with which its sidecar asks
//! `Identity.Certify` for a certificate like a pod would with its
//! ServiceAccount token. The controller also serves `Discovery.Watch` from the
//! demo's policy directory, which `weft canary` edits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use weft_api::Identity;
use weft_api::consts::env;
use weft_controller::bootstrap::BootstrapTokens;
use weft_controller::controller::{Controller, Settings};

use super::DemoArgs;
use super::topology::Workload;

/// The trust domain of the demo's identities.
pub const TRUST_DOMAIN: &str = weft_api::identity::DEFAULT_TRUST_DOMAIN;
/// Certificate lifetime when `--cert-ttl` is not given.
const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Bootstrap tokens outlive any demo run.
const TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The running local controller.
pub struct LocalMesh {
    pub grpc_addr: SocketAddr,
    pub identity: Identity,
    pub anchors_file: PathBuf,
    pub state_dir: PathBuf,
    /// The policy directory the controller reloads.
    pub policy_dir: PathBuf,
    /// The controller's admin server (`/config` shows the policy in force).
    pub admin_addr: SocketAddr,
    _controller: Controller,
    _policy_watch: tokio_util::sync::DropGuard,
}

/// What each sidecar is given to prove its identity.
pub struct Proof {
    controller: SocketAddr,
    anchors_file: PathBuf,
    run_dir: PathBuf,
}

impl Proof {
    fn token_file(&self, w: &Workload) -> PathBuf {
        self.run_dir.join(format!("{}.token", w.replica))
    }

    /// The sidecar environment that points it at the controller.
    pub fn env(&self, w: &Workload) -> Vec<(String, String)> {
        vec![
            (env::CONTROLLER_ADDR.to_owned(), self.controller.to_string()),
            (env::IDENTITY.to_owned(), w.identity.to_string()),
            (
                env::IDENTITY_TOKEN_FILE.to_owned(),
                self.token_file(w).display().to_string(),
            ),
            (
                env::TRUST_ANCHORS_FILE.to_owned(),
                self.anchors_file.display().to_string(),
            ),
        ]
    }
}

/// Starts the local controller, serving discovery from `policy_dir`. Its CA is
/// generated into the state directory on the first run and reused after.
pub async fn start_controller(
    args: &DemoArgs,
    state_dir: &Path,
    policy_dir: &Path,
) -> anyhow::Result<LocalMesh> {
    let issuer_dir = state_dir.join("ca");
    let settings = Settings {
        trust_domain: TRUST_DOMAIN.to_owned(),
        issuer_dir: issuer_dir.clone(),
        generate_issuer: true,
        issuer_poll: Duration::from_secs(5),
        cert_lifetime: args.cert_ttl.unwrap_or(DEFAULT_CERT_TTL),
        // Port 0: the controller binds before the workloads' ports are
        // chosen and reports what it got.
        grpc_addr: ([127, 0, 0, 1], 0).into(),
        admin_addr: ([127, 0, 0, 1], 0).into(),
        audit_path: state_dir.join("audit.log"),
    };
    let verifier = Arc::new(BootstrapTokens::new(state_dir));
    let stop = tokio_util::sync::CancellationToken::new();
    let (discovery, _) = weft_controller::discovery::local::discovery(
        policy_dir,
        weft_controller::discovery::IndexSettings {
            trust_domain: TRUST_DOMAIN.to_owned(),
            ..Default::default()
        },
        stop.clone(),
    )
    .with_context(|| format!("cannot read the policy directory {}", policy_dir.display()))?;
    let controller = Controller::start_with_discovery(
        settings,
        verifier,
        weft_controller::AuditEcho::Off,
        Some(discovery),
    )
    .await
    .context("the local controller could not start")?;
    Ok(LocalMesh {
        grpc_addr: controller.grpc_addr(),
        identity: controller.identity().clone(),
        anchors_file: issuer_dir.join(weft_controller::ca::TRUST_ANCHORS_FILE),
        state_dir: state_dir.to_owned(),
        policy_dir: policy_dir.to_owned(),
        admin_addr: controller.admin_addr(),
        _controller: controller,
        _policy_watch: stop.drop_guard(),
    })
}

/// Issues a bootstrap token for every workload and writes it where its
/// sidecar reads it (readable by this user only).
pub fn bootstrap(
    mesh: &LocalMesh,
    workloads: &[Workload],
    run_dir: &Path,
) -> anyhow::Result<Proof> {
    let tokens = BootstrapTokens::new(&mesh.state_dir);
    let proof = Proof {
        controller: mesh.grpc_addr,
        anchors_file: mesh.anchors_file.clone(),
        run_dir: run_dir.to_owned(),
    };
    for w in workloads {
        let token = tokens
            .issue(&w.identity, TOKEN_TTL)
            .with_context(|| format!("cannot issue a bootstrap token for {}", w.identity))?;
        let path = proof.token_file(w);
        write_private(&path, token.as_str())?;
    }
    Ok(proof)
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
