//! One demo per state directory: a second `weft demo` says clearly that one
//! is running, instead of failing on a busy port or a locked file.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// Held while the demo runs; released when dropped (or when the process
/// dies). The file stays: removing it could let two demos lock two files.
#[derive(Debug)]
pub struct DemoLock {
    _lock: Flock<File>,
}

impl DemoLock {
    /// Whether a demo holds the lock of `state_dir` now.
    pub fn held(state_dir: &Path) -> bool {
        let Ok(file) = File::options()
            .read(true)
            .write(true)
            .open(state_dir.join("demo.lock"))
        else {
            return false;
        };
        // Taking it (and letting it go at once) means nobody holds it.
        Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err()
    }

    pub fn acquire(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join("demo.lock");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let pid = holder.trim();
                anyhow::bail!(
                    "a weft demo is already running (pid {pid}) with state in {}.\n\
                     Stop it with Ctrl-C in its terminal (or `kill {pid}`), or run another one \
                     with its own state: weft demo --state-dir <another folder>",
                    state_dir.display()
                );
            }
        };
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        Ok(Self { _lock: lock })
    }
}
