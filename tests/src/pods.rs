//! Meshed pods: a [`Pod`] with `weft-init`'s rules and a real `weft-proxy`
//! process running as the proxy's uid 2510, with a certificate from a test
//! CA, as the injector would set them up.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use weft_api::consts::{PROXY_ADMIN_PORT, PROXY_UID, env};

use crate::netns::{Net, Pod, workspace_binary};
use crate::pki::TestCa;

/// How long a proxy may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The SPIFFE identity of service account `sa` in namespace `default`.
pub fn identity(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
}

/// A bridge, a CA, and a scratch directory (certificates, logs, captures)
/// that is removed on drop.
pub struct Mesh {
    pub net: Net,
    pub ca: TestCa,
    dir: PathBuf,
}

impl Mesh {
    pub fn new(tag: &str) -> anyhow::Result<Mesh> {
        let net = Net::new(tag)?;
        let dir = std::env::temp_dir().join(format!("{}-files", net.prefix()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Mesh {
            net,
            ca: TestCa::new(tag),
            dir,
        })
    }

    /// The scratch directory (readable by the proxy's uid).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A pod with no proxy and no rules: outside the mesh.
    pub fn plain_pod(&self, name: &str) -> anyhow::Result<Pod> {
        self.net.pod(name)
    }

    /// A meshed pod whose workload is service account `name`: `weft-init`
    /// installs the rules, then `weft-proxy` starts as uid 2510 with `env`
    /// added to its environment; returns once `/ready` answers 200.
    pub fn meshed_pod(&self, name: &str, env: &[(&str, &str)]) -> anyhow::Result<Pod> {
        let pod = self.net.pod(name)?;
        self.mesh_pod(pod, name, env)
    }

    /// Meshes a pod made with `self.net.pod(name)` (whose address a test
    /// needed first), as [`Mesh::meshed_pod`] does.
    pub fn mesh_pod(&self, pod: Pod, name: &str, env: &[(&str, &str)]) -> anyhow::Result<Pod> {
        pod.run(&mut pod.command(workspace_binary("weft-init")?))?;

        let leaf = self.ca.issue(&identity(name));
        let file = |suffix: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = self.dir.join(format!("{name}-{suffix}"));
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let cert = file("chain.pem", &leaf.chain_pem)?;
        let key = file("key.pem", &leaf.key_pem)?;
        let anchors = file("anchors.pem", self.ca.anchors_pem())?;
        let log_path = self.dir.join(format!("{name}-proxy.log"));
        let log = std::fs::File::create(&log_path)?;

        let mut cmd = pod.command_as(PROXY_UID, workspace_binary("weft-proxy")?);
        cmd.env(env::CERT_FILE, &cert)
            .env(env::KEY_FILE, &key)
            .env(env::TRUST_ANCHORS_FILE, &anchors)
            .env(env::LOG, "info,weft_proxy=debug")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log);
        pod.spawn(&mut cmd)?;

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let admin = SocketAddr::from(([127, 0, 0, 1], PROXY_ADMIN_PORT));
            match http_get(&pod, admin, "/ready") {
                Ok(rsp) if rsp.starts_with("HTTP/1.1 200") => return Ok(pod),
                _ if Instant::now() > deadline => {
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    bail!(
                        "the proxy in {name} was not ready within {READY_TIMEOUT:?}; its log:\n{log}"
                    );
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// What the proxy of pod `name` logged so far.
    pub fn proxy_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}-proxy.log"))).unwrap_or_default()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // A failing test shows what its proxies logged.
        if std::thread::panicking()
            && let Ok(entries) = std::fs::read_dir(&self.dir)
        {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(pod) = name.strip_suffix("-proxy.log") {
                    let log = self.proxy_log(pod);
                    let _ = writeln!(std::io::stderr(), "--- proxy log of pod {pod}:\n{log}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A plain HTTP/1.1 GET of `path` at `addr`, from inside `pod` (as root);
/// returns the whole response, headers included.
pub fn http_get(pod: &Pod, addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    pod.enter(|| -> anyhow::Result<String> {
        let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            tcp,
            "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
        )?;
        let mut rsp = String::new();
        tcp.read_to_string(&mut rsp)?;
        Ok(rsp)
    })?
}

/// The proxy metrics of a meshed pod (from its admin server).
pub fn proxy_metrics(pod: &Pod) -> anyhow::Result<String> {
    http_get(
        pod,
        SocketAddr::from(([127, 0, 0, 1], PROXY_ADMIN_PORT)),
        "/metrics",
    )
}
