//! The demo's child processes: started with their output captured to log
//! files, stopped with SIGTERM then SIGKILL, and never left behind.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// Every process the demo started.
#[derive(Debug, Default)]
pub struct Children {
    list: Vec<(String, Child)>,
}

impl Children {
    /// Starts `program args` with `env`, logging to `<log_dir>/<name>.log`.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log_dir: &Path,
    ) -> anyhow::Result<()> {
        let log_path = log_dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", log_path.display()))?;
        let err = log
            .try_clone()
            .map_err(|e| anyhow::anyhow!("cannot reopen {}: {e}", log_path.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(super::PARENT_PID_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {name} ({}): {e}", program.display()))?;
        self.list.push((name.to_owned(), child));
        Ok(())
    }

    /// The first child that has exited, with its status.
    pub fn exited(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.list.iter_mut().find_map(|(name, child)| {
            child
                .try_wait()
                .ok()
                .flatten()
                .map(|status| (name.clone(), status))
        })
    }

    /// SIGTERM to everyone, then SIGKILL to whoever is still there after `grace`.
    pub async fn stop_all(&mut self, grace: Duration) {
        for (_, child) in &self.list {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        for (name, child) in &mut self.list {
            match tokio::time::timeout_at(deadline, child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(child = %name, "did not stop in time; killing it");
                    let _ = child.kill().await;
                }
            }
        }
        self.list.clear();
    }
}

/// For a child process: exits when the demo that started it is gone (for
/// example killed with SIGKILL), so that nothing is left behind.
pub fn exit_with_parent() {
    let Some(parent) = std::env::var(super::PARENT_PID_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    std::thread::spawn(move || {
        loop {
            if nix::unistd::getppid().as_raw() != parent {
                std::process::exit(0);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
}
