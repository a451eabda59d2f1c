//! The systems under test, each started on 127.0.0.1 and torn down after.
//!
//! Every system exposes a plain-HTTP entry point for the load generator
//! (HTTP/1.1 and h2c; nginx needs a separate port for h2c) and, for the proxy
//! pairs, the mTLS address of the server-side proxy (for the handshake test).
//! The client-side proxy forwards over mTLS to the server-side proxy, which
//! forwards to the shared backend.

mod collector;
mod haproxy;
mod nginx;
mod weft;
pub(crate) mod weft_policy;

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::pki::Pki;
use weft_api::consts::otel_env as otel;

pub use weft::{WeftProxy, find_binary, find_weft_proxy};

/// The systems, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SystemKind {
    /// The load generator calls the backend directly: the floor.
    Direct,
    Weft,
    /// The weft pair with a route (two-backend split), retries, a retry
    /// budget and circuit breaking from a real controller's discovery.
    WeftPolicy,
    /// The weft pair tracing every request (100 % sampling) to an OTLP
    /// receiver in the harness.
    WeftTrace100,
    /// The weft pair tracing 1 % of requests.
    WeftTrace1,
    HaproxyHttp,
    HaproxyTcp,
    Nginx,
}

impl SystemKind {
    pub const ALL: [SystemKind; 8] = [
        Self::Direct,
        Self::Weft,
        Self::WeftPolicy,
        Self::WeftTrace100,
        Self::WeftTrace1,
        Self::HaproxyHttp,
        Self::HaproxyTcp,
        Self::Nginx,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Weft => "weft",
            Self::WeftPolicy => "weft-policy",
            Self::WeftTrace100 => "weft-trace-100",
            Self::WeftTrace1 => "weft-trace-1",
            Self::HaproxyHttp => "haproxy-http",
            Self::HaproxyTcp => "haproxy-tcp",
            Self::Nginx => "nginx",
        }
    }

    /// A peer is a proxy pair other than weft.
    pub fn is_peer(self) -> bool {
        matches!(self, Self::HaproxyHttp | Self::HaproxyTcp | Self::Nginx)
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::Direct => "load generator -> backend, no proxy (the floor)",
            Self::Weft => {
                "weft-proxy pair: upstream listener -> mTLS (TLS 1.3, HTTP/2 between proxies) -> inbound -> backend"
            }
            Self::WeftPolicy => {
                "the weft pair with traffic policy from a real controller's discovery: the upstream names a service whose HTTPRoute splits it 50/50 between two backends, with retries, a retry budget and circuit breaking (no request needs a retry)"
            }
            Self::WeftTrace100 => {
                "the weft pair with OpenTelemetry tracing at 100 % sampling: each request a CLIENT and a SERVER span, exported over OTLP/gRPC to a receiver in the harness"
            }
            Self::WeftTrace1 => {
                "the weft pair with OpenTelemetry tracing at 1 % sampling (parent-based trace-id ratio), exported the same way"
            }
            Self::HaproxyHttp => {
                "HAProxy pair, mode http: client side -> mTLS (TLS 1.3, client certificates, ALPN h2) -> server side -> backend (HTTP/1.1 keep-alive)"
            }
            Self::HaproxyTcp => {
                "HAProxy pair, mode tcp: the same mTLS between the pair, bytes relayed, one backend connection per client connection"
            }
            Self::Nginx => {
                "nginx pair: client side -> mTLS (TLS 1.3, client certificates, HTTP/1.1 keep-alive upstream) -> server side -> backend"
            }
        }
    }
}

impl std::fmt::Display for SystemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What every system is started with.
#[derive(Debug, Clone)]
pub struct StartEnv {
    pub pki: Pki,
    pub backend: SocketAddr,
    /// A directory for configuration files and logs.
    pub work_dir: PathBuf,
    pub weft_proxy: Option<WeftProxy>,
    /// Threads or worker processes of each proxy, the same for every system:
    /// weft's runtime threads, HAProxy's `nbthread`, nginx's `worker_processes`.
    pub workers: usize,
}

/// A started system. Dropping it stops its processes.
#[derive(Debug)]
pub struct Running {
    pub kind: SystemKind,
    pub http1: SocketAddr,
    pub http2: SocketAddr,
    /// The server-side proxy's mTLS listener.
    pub tls: Option<SocketAddr>,
    processes: Vec<Process>,
    /// weft-policy's controller, stopped after the processes.
    control: Option<weft_policy::ControlPlane>,
    /// The traced pairs' OTLP receiver, stopped after the processes.
    collector: Option<collector::Collector>,
}

#[derive(Debug)]
struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Running {
    /// The root processes of the proxies (descendants are counted with them).
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(|p| p.child.id()).collect()
    }

    /// Spans the traced pairs' receiver got (`None` for other systems).
    pub fn spans_received(&self) -> Option<u64> {
        self.collector.as_ref().map(collector::Collector::spans)
    }

    /// Fails, with the tail of its log, if a process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.processes {
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "{} exited with {status}; its log ends with:\n{}",
                    p.name,
                    log_tail(&p.log)
                );
            }
        }
        Ok(())
    }

    /// Stops every process: SIGTERM, then SIGKILL after a grace period.
    pub fn stop(mut self) {
        self.stop_processes();
    }

    fn stop_processes(&mut self) {
        for p in &self.processes {
            if let Ok(pid) = i32::try_from(p.child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for p in &mut self.processes {
            while Instant::now() < deadline {
                if matches!(p.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !matches!(p.child.try_wait(), Ok(Some(_))) {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        self.processes.clear();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_processes();
        self.control.take();
        self.collector.take();
    }
}

/// Starts `kind` and waits until its listeners accept connections.
pub fn start(kind: SystemKind, env: &StartEnv) -> anyhow::Result<Running> {
    let dir = env.work_dir.join(kind.name());
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut running = match kind {
        SystemKind::Direct => Running {
            kind,
            http1: env.backend,
            http2: env.backend,
            tls: None,
            processes: Vec::new(),
            control: None,
            collector: None,
        },
        SystemKind::Weft => weft::start(env, &dir, &[])?,
        SystemKind::WeftTrace100 | SystemKind::WeftTrace1 => {
            let collector = collector::Collector::start()?;
            let ratio = if kind == SystemKind::WeftTrace100 {
                "1"
            } else {
                "0.01"
            };
            let endpoint = format!("http://{}", collector.addr);
            let vars = [
                (otel::EXPORTER_OTLP_ENDPOINT, endpoint.as_str()),
                (otel::TRACES_SAMPLER, "parentbased_traceidratio"),
                (otel::TRACES_SAMPLER_ARG, ratio),
                (otel::SERVICE_NAME, "bench"),
            ];
            let mut running = weft::start(env, &dir, &vars)?;
            running.collector = Some(collector);
            running
        }
        SystemKind::WeftPolicy => weft_policy::start(env, &dir)?,
        SystemKind::HaproxyHttp => haproxy::start(env, &dir, haproxy::Mode::Http)?,
        SystemKind::HaproxyTcp => haproxy::start(env, &dir, haproxy::Mode::Tcp)?,
        SystemKind::Nginx => nginx::start(env, &dir)?,
    };
    running.kind = kind;
    let mut addrs = vec![running.http1, running.http2];
    addrs.extend(running.tls);
    let deadline = Instant::now() + Duration::from_secs(15);
    for addr in addrs {
        loop {
            running.check_alive()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("{kind} did not listen on {addr} within 15 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if kind == SystemKind::WeftPolicy {
        weft_policy::wait_serving(&mut running, Duration::from_secs(15))?;
    }
    Ok(running)
}

/// The open-files limit the systems inherit from the harness.
pub(crate) fn nofile_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
}

/// A port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// `GET <path>` with `Host: <host>` and `Connection: close`, read to the
/// end: the status line and the body (as sent: the servers asked answer
/// with a length, not in chunks).
pub(crate) fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(String, String)> {
    use std::io::{Read, Write};
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    tcp.set_read_timeout(Some(Duration::from_secs(2)))?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut response = Vec::new();
    tcp.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    ))
}

/// Spawns `command` with its output in `dir/<name>.log`.
pub(crate) fn spawn(name: &str, mut command: Command, dir: &Path) -> anyhow::Result<ProcessHandle> {
    let log = dir.join(format!("{name}.log"));
    let out = fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("start {name} ({command:?}); is it installed?"))?;
    Ok(ProcessHandle(Process {
        name: name.to_string(),
        child,
        log,
    }))
}

/// A spawned process, to be handed to [`Running`].
#[derive(Debug)]
pub(crate) struct ProcessHandle(Process);

impl Running {
    pub(crate) fn pair(
        http1: SocketAddr,
        http2: SocketAddr,
        tls: SocketAddr,
        processes: Vec<ProcessHandle>,
    ) -> Self {
        Self {
            kind: SystemKind::Direct,
            http1,
            http2,
            tls: Some(tls),
            processes: processes.into_iter().map(|p| p.0).collect(),
            control: None,
            collector: None,
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Drop for Process {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
