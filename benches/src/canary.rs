//! `weft canary set` to 100 proxies (issue "Discovery and traffic policy"):
//! the whole path an SRE's weight change takes in local mode, timed from the
//! command's start to the last proxy enforcing the new weights.
//!
//! A real controller (local mode, in the harness process) serves
//! `Discovery.Watch` from a policy directory holding a `checkout` Service
//! split 90/10 between `checkout-v1` and `checkout-v2`. `n` release
//! `weft-proxy` processes (one worker thread each) get their certificates
//! through `Identity.Certify` and each hold an upstream listener for
//! `checkout:80`, so each holds its own TLS connection and stream. Then the
//! release `weft` binary runs `weft canary set checkout --weight
//! checkout-v1=50 --weight checkout-v2=50 --policy-dir <dir>`, which
//! rewrites the route's file; the controller's poll of the directory finds
//! it, the index debounces and publishes, every stream sends. Then back to
//! 90/10, [`CHANGES`] changes in all: where the poll happens to be when a
//! change lands moves one change's figure by up to the poll period.
//!
//! A proxy enforces a snapshot from the moment it swaps it in: the next
//! request on any connection routes by it (the proxy's per-request route
//! and split). Each proxy logs that swap (`discovery snapshot`, JSON, debug
//! level for that module only); the harness stamps each line as it reads
//! it. After the change every proxy's admin `/config` must show the 50/50
//! route, or the figure is not measured. Bounded: each wait gives up after
//! 60 s.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Serialize;
use serde_json::Value;
use weft_api::Identity;
use weft_api::consts::env as var;

use crate::systems::weft_policy::start_controller;

const LIMIT: Duration = Duration::from_secs(60);
/// Weight changes per measurement.
pub const CHANGES: usize = 5;
const NAMESPACE: &str = "shop";
const CALLER: &str = "spiffe://cluster.local/ns/shop/sa/web";

/// The figure.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CanaryFigure {
    /// Each figure is the median over the changes.
    Measured {
        proxies: usize,
        /// The `weft canary set` process, start to exit.
        command_ms: f64,
        /// From the command's start to the first, median and last proxy
        /// enforcing the new weights.
        first_ms: f64,
        p50_ms: f64,
        last_ms: f64,
        /// The slowest change's last proxy.
        worst_last_ms: f64,
        changes: Vec<Change>,
        /// The local controller's poll of its policy directory and the
        /// index's debounce: both inside every figure.
        poll_ms: f64,
        debounce_ms: f64,
    },
    NotMeasured {
        proxies: usize,
        reason: String,
    },
}

/// Measures the figure with `proxies` proxies, `weft_proxy` and `weft` the
/// release binaries.
pub fn measure(weft_proxy: &Path, weft: &Path, proxies: usize) -> CanaryFigure {
    match run(weft_proxy, weft, proxies) {
        Ok(figure) => figure,
        Err(error) => CanaryFigure::NotMeasured {
            proxies,
            reason: format!("{error:#}"),
        },
    }
}

/// The policy directory's documents: the checkout Service, its two
/// versions (endpoints that are never called: no request is sent) and the
/// 90/10 route.
fn policy() -> String {
    let service = |name: &str, port: u16| {
        format!(
            "  - name: {name}\n    namespace: {NAMESPACE}\n    ports: [80]\n    endpoints:\n      - address: 127.0.0.1:{port}\n        serviceAccount: checkout\n"
        )
    };
    format!(
        "apiVersion: {}\nkind: Workloads\nservices:\n  - name: checkout\n    namespace: {NAMESPACE}\n    ports: [80]\n{}{}---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: checkout\n  namespace: {NAMESPACE}\nspec:\n  parentRefs:\n    - {{group: \"\", kind: Service, name: checkout, port: 80}}\n  rules:\n    - backendRefs:\n        - {{name: checkout-v1, port: 80, weight: 90}}\n        - {{name: checkout-v2, port: 80, weight: 10}}\n",
        weft_controller::discovery::local::WORKLOADS_API_VERSION,
        service("checkout-v1", 9),
        service("checkout-v2", 9),
    )
}

/// One change's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub command_ms: f64,
    pub first_ms: f64,
    pub p50_ms: f64,
    pub last_ms: f64,
}

/// The proxies; dropping it kills them.
struct Proxies {
    children: Vec<Child>,
    admins: Vec<SocketAddr>,
}

impl Drop for Proxies {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

impl Proxies {
    /// What became of the proxies `which` names: exited, or their last
    /// other log line.
    fn describe(
        &mut self,
        which: impl Iterator<Item = usize>,
        last: &Mutex<Vec<String>>,
    ) -> String {
        let last = last.lock().map(|l| l.clone()).unwrap_or_default();
        which
            .take(5)
            .map(|i| {
                let exited = self.children[i].try_wait().ok().flatten();
                let line = last.get(i).map_or("", String::as_str);
                match exited {
                    Some(status) => format!("proxy {i} exited ({status}): {line}"),
                    None => format!("proxy {i} runs; its last other log line: {line:?}"),
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A proxy swapped in a discovery snapshot.
struct Swapped {
    proxy: usize,
    version: u64,
    at: Instant,
}

fn run(weft_proxy: &Path, weft: &Path, n: usize) -> anyhow::Result<CanaryFigure> {
    ensure!(n > 0, "no proxies to measure");
    let work = tempfile::Builder::new()
        .prefix("weft-bench-canary-")
        .tempdir()
        .context("create a temp dir")?;
    let dir = work.path();
    let policy_dir = dir.join("policy");
    std::fs::create_dir_all(&policy_dir)
        .with_context(|| format!("create {}", policy_dir.display()))?;
    std::fs::write(policy_dir.join("checkout.yaml"), policy())
        .context("write the policy directory")?;
    let (control, controller, tokens) = start_controller(dir, None, &policy_dir)?;
    let anchors = dir
        .join("controller")
        .join("issuer")
        .join(weft_controller::ca::TRUST_ANCHORS_FILE);
    let caller: Identity = CALLER.parse()?;

    let (tx, rx) = mpsc::channel::<Swapped>();
    let last_lines = Arc::new(Mutex::new(vec![String::new(); n]));
    let mut proxies = Proxies {
        children: Vec::with_capacity(n),
        admins: Vec::with_capacity(n),
    };
    // Every proxy's four addresses at once, each held until all are chosen:
    // one at a time, a port handed back could be handed out again before the
    // proxy it went to has bound it.
    let held: Vec<std::net::TcpListener> = (0..4 * n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0"))
        .collect::<anyhow::Result<_>>()?;
    let addrs: Vec<SocketAddr> = held
        .iter()
        .map(std::net::TcpListener::local_addr)
        .collect::<Result<_, _>>()?;
    drop(held);
    for (i, addr) in addrs.chunks_exact(4).enumerate() {
        let token = tokens
            .issue(&caller, Duration::from_secs(3_600))
            .context("issue a bootstrap token")?;
        let token_file = dir.join(format!("proxy-{i}.token"));
        std::fs::write(&token_file, token.as_str())
            .with_context(|| format!("write {}", token_file.display()))?;
        let admin = addr[0];
        let mut child = Command::new(weft_proxy)
            .env_clear()
            .env(var::CONTROLLER_ADDR, controller.to_string())
            .env(var::IDENTITY, CALLER)
            .env(var::IDENTITY_TOKEN_FILE, &token_file)
            .env(var::TRUST_ANCHORS_FILE, &anchors)
            .env(var::ADMIN_ADDR, admin.to_string())
            .env(var::INBOUND_ADDR, addr[1].to_string())
            .env(var::OUTBOUND_ADDR, addr[2].to_string())
            .env(var::APP_ADDR, "127.0.0.1:9")
            .env(var::UPSTREAMS, format!("{}=checkout:80", addr[3]))
            .env(var::WORKER_THREADS, "1")
            .env(var::SHUTDOWN_GRACE, "0")
            .env(var::LOG, "warn,weft_proxy::discovery=debug")
            .env(var::LOG_FORMAT, "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", weft_proxy.display()))?;
        let stderr = child.stderr.take().context("the proxy's stderr")?;
        proxies.children.push(child);
        proxies.admins.push(admin);
        let (tx, last) = (tx.clone(), last_lines.clone());
        std::thread::Builder::new()
            .name(format!("canary-proxy-{i}"))
            .spawn(move || read_swaps(i, stderr, &tx, &last))
            .context("start a log reader thread")?;
    }
    drop(tx);

    // Every proxy on the 90/10 snapshot.
    let deadline = Instant::now() + LIMIT;
    let mut version: Vec<Option<u64>> = vec![None; n];
    while version.iter().any(Option::is_none) {
        let Ok(got) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            let have = version.iter().filter(|v| v.is_some()).count();
            let missing = (0..n).filter(|&i| version[i].is_none());
            bail!(
                "only {have} of {n} proxies got their first discovery snapshot within {LIMIT:?}: {}",
                proxies.describe(missing, &last_lines)
            );
        };
        version[got.proxy] = Some(got.version);
    }
    for (i, admin) in proxies.admins.iter().enumerate() {
        wait_weights(*admin, &[90, 10], deadline)
            .with_context(|| format!("proxy {i} before the change"))?;
    }
    let mut now: Vec<u64> = version.into_iter().map(|v| v.unwrap_or(0)).collect();

    // The changes, as an SRE makes them: 10 % to 50 % and back, CHANGES
    // times (one change's figure depends on where the directory poll was).
    let mut changes = Vec::with_capacity(CHANGES);
    for c in 0..CHANGES {
        let (v1, v2) = if c % 2 == 0 { (50, 50) } else { (90, 10) };
        // Each change one more fifth of a poll period after the last one
        // settled, so that the changes meet the poll at different points.
        let poll = weft_controller::discovery::local::POLL;
        std::thread::sleep(poll.mul_f64((c % CHANGES) as f64 / CHANGES as f64));
        while let Ok(got) = rx.try_recv() {
            now[got.proxy] = got.version;
        }
        let started = Instant::now();
        let output = Command::new(weft)
            .args(["canary", "set", "checkout", "--namespace", NAMESPACE])
            .arg("--weight")
            .arg(format!("checkout-v1={v1}"))
            .arg("--weight")
            .arg(format!("checkout-v2={v2}"))
            .arg("--policy-dir")
            .arg(&policy_dir)
            .args(["--output", "json"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {} canary set", weft.display()))?;
        let command = started.elapsed();
        if !output.status.success() {
            bail!(
                "`weft canary set` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let deadline = Instant::now() + LIMIT;
        let mut enforced: Vec<Option<Instant>> = vec![None; n];
        while enforced.iter().any(Option::is_none) {
            let Ok(got) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            else {
                let have = enforced.iter().filter(|v| v.is_some()).count();
                let missing = (0..n).filter(|&i| enforced[i].is_none());
                bail!(
                    "change {}: only {have} of {n} proxies got it within {LIMIT:?}: {}",
                    c + 1,
                    proxies.describe(missing, &last_lines)
                );
            };
            if got.version != now[got.proxy] && enforced[got.proxy].is_none() {
                enforced[got.proxy] = Some(got.at);
            }
            now[got.proxy] = got.version;
        }
        for (i, admin) in proxies.admins.iter().enumerate() {
            wait_weights(*admin, &[v1, v2], Instant::now())
                .with_context(|| format!("change {}: proxy {i}", c + 1))?;
        }
        let mut took: Vec<f64> = enforced
            .into_iter()
            .flatten()
            .map(|at| at.duration_since(started).as_secs_f64() * 1e3)
            .collect();
        took.sort_by(f64::total_cmp);
        changes.push(Change {
            command_ms: command.as_secs_f64() * 1e3,
            first_ms: took[0],
            p50_ms: took[took.len() / 2],
            last_ms: took[took.len() - 1],
        });
    }
    drop(proxies);
    drop(control);

    let median = |f: fn(&Change) -> f64| {
        let mut v: Vec<f64> = changes.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(CanaryFigure::Measured {
        proxies: n,
        command_ms: median(|c| c.command_ms),
        first_ms: median(|c| c.first_ms),
        p50_ms: median(|c| c.p50_ms),
        last_ms: median(|c| c.last_ms),
        worst_last_ms: changes.iter().map(|c| c.last_ms).fold(0.0, f64::max),
        poll_ms: weft_controller::discovery::local::POLL.as_secs_f64() * 1e3,
        debounce_ms: weft_controller::discovery::SharedIndex::DEBOUNCE.as_secs_f64() * 1e3,
        changes,
    })
}

/// Reads one proxy's JSON log lines, sending each snapshot swap and
/// keeping the last other line in `last[proxy]`.
fn read_swaps(
    proxy: usize,
    stderr: impl Read,
    tx: &mpsc::Sender<Swapped>,
    last: &Mutex<Vec<String>>,
) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { return };
        let at = Instant::now();
        let entry = serde_json::from_str::<Value>(&line).unwrap_or(Value::Null);
        let fields = &entry["fields"];
        if fields["message"] != "discovery snapshot" {
            if let Ok(mut last) = last.lock()
                && let Some(slot) = last.get_mut(proxy)
            {
                *slot = line;
            }
            continue;
        }
        let Some(version) = fields["version"].as_u64() else {
            continue;
        };
        if tx.send(Swapped { proxy, version, at }).is_err() {
            return;
        }
    }
}

/// Waits (until `deadline`, at least one try) for the proxy at `admin` to
/// show `weights` on its upstream's first route in `/config`.
fn wait_weights(admin: SocketAddr, weights: &[u64; 2], deadline: Instant) -> anyhow::Result<()> {
    loop {
        let now = match config(admin) {
            Ok(config) => config["upstreams"][0]["routes"][0]["backends"]
                .as_array()
                .map(|b| b.iter().filter_map(|b| b["weight"].as_u64()).collect())
                .unwrap_or_default(),
            Err(_) if Instant::now() < deadline => Vec::new(),
            Err(error) => return Err(error.context(format!("GET http://{admin}/config"))),
        };
        if now == weights[..] {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("its /config shows the weights {now:?}, not {weights:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /config` from a proxy's admin server.
fn config(admin: SocketAddr) -> anyhow::Result<Value> {
    let (status, body) = crate::systems::get(admin, "admin", "/config")?;
    ensure!(status.starts_with("HTTP/1.1 200"), "answered {status}");
    serde_json::from_str(&body).context("not JSON")
}

/// The `weft` binary of the harness's profile (built when run under cargo).
pub fn find_weft() -> Result<PathBuf, String> {
    crate::systems::find_binary("weft-cli", "weft")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_splits_checkout_90_10() {
        let text = policy();
        assert!(text.contains("checkout-v1, port: 80, weight: 90"), "{text}");
        assert!(text.contains("checkout-v2, port: 80, weight: 10"), "{text}");
    }
}
