//! What a running demo tells other `weft` commands: `weft canary` without
//! `--policy-dir` or `--kubeconfig` finds the demo running in the default
//! state directory and edits its policy directory (and reads its proxies'
//! metrics for `status`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The file, in the demo's run directory.
const FILE: &str = "demo.json";

/// A running demo, as it describes itself.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RunningDemo {
    pub pid: u32,
    /// The policy directory its controller reloads.
    pub policy_dir: PathBuf,
    /// The namespace of its services.
    pub namespace: String,
    /// The admin addresses of its proxies.
    pub proxies: Vec<SocketAddr>,
    /// The controller's admin server (`/config`).
    pub controller_admin: SocketAddr,
}

impl RunningDemo {
    /// Writes the record into `run_dir` (removed with it at the next start).
    pub fn write(&self, run_dir: &Path) -> anyhow::Result<()> {
        let path = run_dir.join(FILE);
        let text = serde_json::to_string_pretty(self).context("cannot encode the demo record")?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The demo running with state in `state_dir`, if one is: its lock is held
    /// and its record is there.
    pub fn find(state_dir: &Path) -> Option<Self> {
        if !super::lock::DemoLock::held(state_dir) {
            return None;
        }
        let text = std::fs::read_to_string(state_dir.join("run").join(FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The demo running in the default state directory.
    pub fn find_default() -> Option<Self> {
        Self::find(&super::run::default_state_dir())
    }
}
