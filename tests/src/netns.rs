//! Pods made of Linux network namespaces, for tests of transparent interception.
//!
//! A [`Net`] is a bridge namespace holding a Linux bridge; each [`Pod`] is a
//! namespace with an address from 198.18.0.0/15 (the benchmarking range, the
//! only one these tests use) on a veth whose other end is on the bridge.
//! Names carry the test process's pid and a counter, so tests run in
//! parallel; dropping a pod kills every process in its namespace and deletes
//! it (with its veth), dropping the net deletes the bridge namespace, also
//! when a test panics. Namespaces left by a killed test process are swept by
//! the next [`Net::new`].
//!
//! Everything here needs root (`ip netns`); [`skip_unless_root`] tells a test
//! to skip, and why, when it does not run as root (a failure under `CI=true`).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, bail};
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Prefix of every namespace these tests create.
const PREFIX: &str = "weftt";
/// Pod addresses: 198.18.0.2, .3, ... on a /15.
const POD_NET: [u8; 3] = [198, 18, 0];
const POD_PREFIX_LEN: u8 = 15;

static NEXT_NET: AtomicU32 = AtomicU32::new(0);

/// Returns `true` when the running test cannot run here, after saying why
/// ([`crate::skip::skip`]: a failure under `CI=true`): it needs root, the
/// `ip` tool and iptables' nft tools (for `weft-init`). Use as
/// `if skip_unless_root() { return; }`.
pub fn skip_unless_root() -> bool {
    use crate::skip::{Reason, find_program, skip};
    let reason = if !nix::unistd::geteuid().is_root() {
        Reason::root("network namespaces; see tests/README.md")
    } else if find_program("ip").is_none() {
        Reason::tool("ip", "apt-get install iproute2")
    } else if find_program("iptables-nft-restore").is_none() {
        Reason::tool("iptables-nft-restore", "apt-get install iptables")
    } else {
        return false;
    };
    skip(&reason);
    true
}

/// Path of a binary of this workspace (e.g. `weft-init`), found next to the
/// test executable in the cargo target directory, or in `$WEFT_BIN_DIR`.
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("WEFT_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // target/<profile>/deps/<test-binary>
            let exe = std::env::current_exe().context("current_exe")?;
            exe.parent()
                .and_then(|deps| deps.parent())
                .context("test binary has no target directory")?
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} does not exist: build it first (`cargo build -p weft-proxy --bins`, which \
             `cargo test --workspace` does) or set WEFT_BIN_DIR",
            path.display()
        );
    }
    Ok(path)
}

/// A bridge namespace that pods attach to.
pub struct Net {
    prefix: String,
    bridge_ns: String,
    next_host: AtomicU32,
}

impl Net {
    /// Creates the bridge namespace, named after `tag` (a short test name).
    pub fn new(tag: &str) -> anyhow::Result<Net> {
        sweep_stale_namespaces();
        let n = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{PREFIX}-{}-{n}-{tag}", std::process::id());
        let bridge_ns = format!("{prefix}-br");
        ip(&["netns", "add", &bridge_ns])?;
        let net = Net {
            prefix,
            bridge_ns,
            next_host: AtomicU32::new(2),
        };
        ip(&["-n", &net.bridge_ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &net.bridge_ns, "link", "set", "br0", "up"])?;
        ip(&["-n", &net.bridge_ns, "link", "set", "lo", "up"])?;
        Ok(net)
    }

    /// The prefix of every namespace name of this net (unique per test).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A command that runs `program` in the bridge namespace, as root (for
    /// example `tcpdump -i br0` to capture what crosses the bridge).
    pub fn bridge_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.bridge_ns]).arg(program);
        cmd
    }

    /// Creates a pod: a namespace with loopback up and `eth0` on the bridge,
    /// addressed with the next free 198.18.0.x/15.
    pub fn pod(&self, name: &str) -> anyhow::Result<Pod> {
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        let host = u8::try_from(host)
            .ok()
            .filter(|h| *h < 255)
            .context("too many pods on one net")?;
        let ns = format!("{}-{name}", self.prefix);
        ip(&["netns", "add", &ns])?;
        let pod = Pod {
            name: ns,
            addr: Ipv4Addr::new(POD_NET[0], POD_NET[1], POD_NET[2], host),
            children: Mutex::new(Vec::new()),
        };
        let veth = format!("veth{host}");
        ip(&[
            "link",
            "add",
            "name",
            &veth,
            "netns",
            &self.bridge_ns,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod.name,
        ])?;
        ip(&["-n", &self.bridge_ns, "link", "set", &veth, "master", "br0"])?;
        ip(&["-n", &self.bridge_ns, "link", "set", &veth, "up"])?;
        let cidr = format!("{}/{POD_PREFIX_LEN}", pod.addr);
        ip(&["-n", &pod.name, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &pod.name, "link", "set", "eth0", "up"])?;
        ip(&["-n", &pod.name, "link", "set", "lo", "up"])?;
        Ok(pod)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        delete_namespace(&self.bridge_ns);
    }
}

/// A network namespace standing in for a pod.
pub struct Pod {
    name: String,
    addr: Ipv4Addr,
    children: Mutex<Vec<Child>>,
}

impl Pod {
    /// A listener bound inside the pod, ready for tokio.
    pub fn tokio_listener(
        &self,
        addr: std::net::SocketAddr,
    ) -> anyhow::Result<tokio::net::TcpListener> {
        let listener = self.enter(|| std::net::TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        Ok(tokio::net::TcpListener::from_std(listener)?)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pod's address on the bridge.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// A command that runs `program` inside the pod's namespace, as root.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// A command that runs `program` inside the pod's namespace as `uid`
    /// (and gid `uid`, no supplementary groups, no capabilities).
    pub fn command_as(&self, uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(["--clear-groups", "--inh-caps=-all"])
            .arg(program);
        cmd
    }

    /// Runs `cmd` to completion and fails, with its output, unless it succeeds.
    pub fn run(&self, cmd: &mut Command) -> anyhow::Result<Output> {
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {cmd:?}"))?;
        if !output.status.success() {
            bail!(
                "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output)
    }

    /// Starts `cmd` in the background; it is killed when the pod is dropped.
    pub fn spawn(&self, cmd: &mut Command) -> anyhow::Result<u32> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(child);
        Ok(pid)
    }

    /// Runs `f` on a thread that has entered the pod's network namespace:
    /// sockets it creates belong to the pod and stay there when it returns.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening namespace {}", self.name))?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(&ns, CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("entering namespace {}", self.name))?;
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("thread in namespace {} panicked", self.name))?
        })
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let mut children = self
            .children
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for child in children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        delete_namespace(&self.name);
    }
}

/// Kills every process in namespace `ns`, then deletes it (its veths go with it).
fn delete_namespace(ns: &str) {
    for _ in 0..3 {
        let pids = match Command::new("ip").args(["netns", "pids", ns]).output() {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(_) => String::new(),
        };
        let pids: Vec<i32> = pids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if let Err(e) = ip(&["netns", "del", ns]) {
        eprintln!("cleanup: {e:#}");
    }
}

/// Deletes namespaces whose creating test process is gone (killed mid-test).
fn sweep_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            delete_namespace(&name);
        }
    }
}

/// Runs `ip` with `args`, failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
