//! Stops everything the harness started when it is interrupted.
//!
//! The backend, the proxies (and nginx's workers), the load generator and the
//! idle-connection holder are child processes, and the weft-policy controller
//! a thread. On SIGTERM, SIGINT or SIGHUP the harness kills every process
//! descended from it (read from `/proc`, so grandchildren too), removes its
//! temporary directory, and exits with 128 + the signal number.

use std::path::PathBuf;
use std::sync::Mutex;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

use crate::procs;

/// Temporary directories to remove when interrupted (the run's PKI and configs).
static SCRATCH: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Remembers `dir` for removal when the harness is interrupted.
pub fn remove_on_interrupt(dir: PathBuf) {
    SCRATCH
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(dir);
}

/// Starts the thread that waits for SIGTERM, SIGINT and SIGHUP. Call it before
/// anything is started; an error means the signals could not be caught.
pub fn install() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    // Registered here, before any child exists, so no signal is missed.
    let (mut term, mut int, mut hup) = runtime.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        ))
    })?;
    std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            let got = runtime.block_on(async {
                tokio::select! {
                    _ = term.recv() => Signal::SIGTERM,
                    _ = int.recv() => Signal::SIGINT,
                    _ = hup.recv() => Signal::SIGHUP,
                }
            });
            let killed = kill_descendants(std::process::id());
            let dirs = std::mem::take(
                &mut *SCRATCH
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            );
            for dir in dirs {
                let _ = std::fs::remove_dir_all(dir);
            }
            eprintln!(
                "\ninterrupted ({got}): stopped the {killed} processes the harness had started"
            );
            std::process::exit(128 + got as i32);
        })?;
    Ok(())
}

/// SIGKILLs every process descended from `root` until none is left (a parent
/// killed first may have forked meanwhile); returns how many were killed.
pub fn kill_descendants(root: u32) -> usize {
    let mut killed = 0;
    for _ in 0..10 {
        let found = procs::descendants(root);
        if found.is_empty() {
            break;
        }
        for pid in found {
            let Ok(raw) = i32::try_from(pid) else {
                continue;
            };
            if kill(Pid::from_raw(raw), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        // Reap the direct children so that they leave /proc.
        while let Ok(status) =
            nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
        {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
    }
    killed
}
