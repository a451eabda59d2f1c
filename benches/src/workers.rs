//! The worker processes the harness starts: the backend, load runs, idle
//! connections and handshake runs. Each is this same binary with a
//! subcommand, so its CPU is never counted as a proxy's.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::figures::Mem;
use crate::handshake::{HandshakeResult, HandshakeSpec};
use crate::load::{LoadResult, LoadSpec};
use crate::procs::{self, Sample};

/// This executable, to start workers from.
#[derive(Debug, Clone)]
pub struct Workers {
    exe: PathBuf,
}

/// A load run with the proxy figures sampled around and during it.
#[derive(Debug, Clone)]
pub struct Measured {
    pub load: LoadResult,
    pub before: Sample,
    pub after: Sample,
    /// Highest RSS sampled while the load ran.
    pub rss_max: Mem,
}

/// How often proxy memory is sampled during a load run.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

impl Workers {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            exe: std::env::current_exe().context("locate the harness executable")?,
        })
    }

    /// Starts the backend and waits for its address.
    pub fn backend(&self) -> anyhow::Result<Backend> {
        let mut child = Command::new(&self.exe)
            .args(["backend", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("start the backend worker")?;
        let stdout = child.stdout.take().context("backend stdout")?;
        // From here on, dropping `backend` stops the process.
        let mut backend = Backend {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = read_line_within(stdout, Duration::from_secs(10))?;
        backend.addr = line
            .strip_prefix("listening ")
            .and_then(|a| a.trim().parse().ok())
            .with_context(|| format!("backend announced `{line}`, expected `listening <addr>`"))?;
        Ok(backend)
    }

    /// Runs one load, sampling `pids` before, during and after.
    pub fn load(&self, spec: &LoadSpec, pids: &[u32]) -> anyhow::Result<Measured> {
        let limit =
            Duration::from_millis(spec.warmup_ms + spec.duration_ms) + Duration::from_secs(30);
        let before = procs::sample(pids);
        let mut child = Command::new(&self.exe)
            .args(["load", "--spec", &serde_json::to_string(spec)?])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("start a load worker")?;
        let mut stdout = child.stdout.take().context("load worker stdout")?;
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out);
            out
        });
        let started = Instant::now();
        let mut rss_max = Mem::default();
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the load worker ran past its {} s limit", limit.as_secs());
            }
            if !pids.is_empty() {
                rss_max = rss_max.max(Mem::rss(&procs::sample(pids)));
            }
            std::thread::sleep(SAMPLE_EVERY);
        }
        let after = procs::sample(pids);
        let status = child.wait()?;
        let out = reader
            .join()
            .map_err(|_| anyhow::anyhow!("load output reader panicked"))?;
        if !status.success() {
            bail!("the load worker failed ({status})");
        }
        let load: LoadResult = serde_json::from_str(out.trim())
            .with_context(|| format!("load worker printed `{}`", out.trim()))?;
        Ok(Measured {
            load,
            before,
            after,
            rss_max: rss_max.max(Mem::rss(&after)),
        })
    }

    pub fn handshake(&self, spec: &HandshakeSpec) -> anyhow::Result<HandshakeResult> {
        let out = self.bounded_output(
            Command::new(&self.exe).args(["handshake", "--spec", &serde_json::to_string(spec)?]),
            Duration::from_millis(spec.duration_ms) + Duration::from_secs(30),
        )?;
        serde_json::from_str(out.trim())
            .with_context(|| format!("handshake worker printed `{}`", out.trim()))
    }

    /// Opens `count` idle connections to `addr`, then samples `pids` while
    /// they are held. Returns (opened, failed, sample).
    pub fn idle(
        &self,
        addr: SocketAddr,
        count: usize,
        pids: &[u32],
    ) -> anyhow::Result<(usize, usize, Sample)> {
        let mut child = Command::new(&self.exe)
            .args([
                "idle",
                "--addr",
                &addr.to_string(),
                "--count",
                &count.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start the idle-connections worker")?;
        let stdout = child.stdout.take().context("idle worker stdout")?;
        let line = read_line_within(stdout, Duration::from_secs(90));
        let result = line.and_then(|line| {
            let mut parts = line.split_whitespace();
            let (Some("ready"), Some(open), Some(failed)) =
                (parts.next(), parts.next(), parts.next())
            else {
                bail!("idle worker announced `{line}`, expected `ready <open> <failed>`");
            };
            // Let the proxies settle (buffers freed, upstream pools built).
            std::thread::sleep(Duration::from_secs(1));
            Ok((open.parse()?, failed.parse()?, procs::sample(pids)))
        });
        drop(child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        result
    }

    fn bounded_output(&self, command: &mut Command, limit: Duration) -> anyhow::Result<String> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("start a worker")?;
        let mut stdout = child.stdout.take().context("worker stdout")?;
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out);
            out
        });
        let started = Instant::now();
        while child.try_wait()?.is_none() {
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                bail!("a worker ran past its {} s limit", limit.as_secs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = child.wait()?;
        let out = reader
            .join()
            .map_err(|_| anyhow::anyhow!("worker output reader panicked"))?;
        if !status.success() {
            bail!("a worker failed ({status})");
        }
        Ok(out)
    }
}

/// The backend process; stopped when dropped.
#[derive(Debug)]
pub struct Backend {
    child: Child,
    pub addr: SocketAddr,
}

impl Backend {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one line from a worker, giving up after `limit`.
fn read_line_within(stdout: ChildStdout, limit: Duration) -> anyhow::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the worker never blocks on a full pipe.
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let line = rx
        .recv_timeout(limit)
        .with_context(|| format!("no answer from the worker within {} s", limit.as_secs()))?;
    Ok(line.trim().to_string())
}
