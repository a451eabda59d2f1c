//! Polling files for changes: the serving certificate and key, and the trust
//! anchors bundle, are mounted from a Secret and a ConfigMap, which the kubelet
//! updates by swapping a symlink (`..data`). Reading the files' contents on each
//! poll follows that swap, with no inotify subtleties.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The contents of a set of files, read together.
pub type Contents = Vec<Vec<u8>>;

/// Reads every file of `paths`; the first failure names its file.
pub fn read_all(paths: &[PathBuf]) -> Result<Contents, String> {
    paths
        .iter()
        .map(|path| std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display())))
        .collect()
}

/// Every `interval` until `shutdown`, reads `paths`; when their contents differ
/// from what was seen last (`initial` at the start), hands them to `apply`.
/// A read or an `apply` that fails is logged once per distinct error, and the
/// same contents are not tried again until they change.
pub async fn watch_files<F>(
    what: &'static str,
    paths: Vec<PathBuf>,
    interval: Duration,
    initial: Option<Contents>,
    shutdown: CancellationToken,
    mut apply: F,
) where
    F: FnMut(&Contents) -> Result<(), String> + Send,
{
    let mut seen = initial;
    let mut last_error: Option<String> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let contents = match read_all(&paths) {
            Ok(contents) => contents,
            Err(error) => {
                report_once(what, &mut last_error, error);
                continue;
            }
        };
        if seen.as_ref() == Some(&contents) {
            continue;
        }
        match apply(&contents) {
            Ok(()) => {
                tracing::info!(what, "reloaded");
                last_error = None;
            }
            Err(error) => report_once(what, &mut last_error, error),
        }
        seen = Some(contents);
    }
}

fn report_once(what: &'static str, last: &mut Option<String>, error: String) {
    if last.as_deref() != Some(error.as_str()) {
        tracing::error!(what, %error, "cannot load the files; keeping what is in use");
        *last = Some(error);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn applies_changed_contents_once_and_follows_symlink_swaps() {
        let dir = tempfile::tempdir().expect("temp dir");
        // The kubelet's layout: file -> ..data/file, ..data -> a timestamped dir.
        let write_version = |name: &str, body: &str| {
            let version = dir.path().join(name);
            std::fs::create_dir(&version).expect("version dir");
            std::fs::write(version.join("tls.crt"), body).expect("write");
            let tmp = dir.path().join("..data_tmp");
            std::os::unix::fs::symlink(&version, &tmp).expect("symlink");
            std::fs::rename(&tmp, dir.path().join("..data")).expect("swap");
        };
        write_version("v1", "one");
        std::os::unix::fs::symlink("..data/tls.crt", dir.path().join("tls.crt")).expect("link");
        let path = dir.path().join("tls.crt");
        let initial = read_all(std::slice::from_ref(&path)).expect("read");
        let applied = Arc::new(Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watch_files(
            "test",
            vec![path],
            Duration::from_millis(10),
            Some(initial),
            shutdown.clone(),
            {
                let applied = applied.clone();
                move |c: &Contents| {
                    let text = String::from_utf8_lossy(&c[0]).to_string();
                    applied.lock().expect("lock").push(text.clone());
                    if text == "bad" {
                        Err("bad".into())
                    } else {
                        Ok(())
                    }
                }
            },
        ));
        write_version("v2", "bad");
        wait_for(|| applied.lock().expect("lock").len() == 1).await;
        write_version("v3", "two");
        wait_for(|| applied.lock().expect("lock").len() == 2).await;
        // Unchanged contents are not applied again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*applied.lock().expect("lock"), ["bad", "two"]);
        shutdown.cancel();
        task.await.expect("the watch ends on shutdown");
    }

    async fn wait_for(condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not met in 5 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
