//! The binaries weft's `FROM scratch` images carry need nothing but
//! themselves: each is built as the images build it (statically linked,
//! `-C target-feature=+crt-static`), checked to have no ELF interpreter, and
//! run chrooted in an empty directory holding only the binary, the files a
//! kubelet gives every pod (`/etc/resolv.conf`, `/etc/hosts`, `/etc/hostname`,
//! and the mounted token and trust anchors) and the devices every container
//! runtime creates (`/dev/null`, `/dev/urandom`, ...). No `/proc`, no `/sys`.
//!
//! Beyond a smoke run of each binary, a controller and a proxy run as in a
//! cluster, each in its own empty root, in a network namespace of their own
//! whose 127.0.0.1:53 is a test name server (`weft_tests::dns`; `resolv.conf`
//! cannot name another port, hence the namespace): the proxy is given
//! `weft-controller.weft-system.svc:8090`, must find it through the search
//! domains, get its certificate and answer `/ready`. A static glibc binary that
//! resolved with `getaddrinfo` would fail there (no NSS modules).
//!
//! Needs root (`chroot`, `ip netns`). Not root: skipped (`weft_tests::skip`),
//! unless `CI=true`, where it fails. The static build goes to its own target directory
//! (`$WEFT_STATIC_TARGET_DIR`, else `$CARGO_TARGET_DIR/static`, else
//! `target/static`) so that it does not invalidate the normal one; with
//! `WEFT_STATIC_BIN_DIR` set, the binaries there are used and nothing is built.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use weft_api::consts::{
    CONTROL_PLANE_ADMIN_PORT, CONTROLLER_GRPC_PORT, PROXY_ADMIN_PORT, PROXY_UID, env,
};
use weft_tests::dns::{DnsServer, Question};
use weft_tests::netns::Net;
use weft_tests::pods::http_get;

/// The target the images are built for.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// One binary an image carries, and a command it must run to completion in an
/// empty root (printing `stdout_has`). The controller and the proxy are also
/// run as services below. A new image's binary is one more row.
struct Binary {
    package: &'static str,
    name: &'static str,
    smoke: Option<(&'static [&'static str], &'static str)>,
}

const BINARIES: &[Binary] = &[
    Binary {
        package: "weft-proxy",
        name: "weft-init",
        smoke: Some((&["--dry-run"], "-A WEFT_OUTPUT")),
    },
    Binary {
        package: "weft-proxy",
        name: "weft-proxy",
        smoke: None,
    },
    Binary {
        package: "weft-controller",
        name: "weft-controller",
        smoke: Some((&["--help"], "serve")),
    },
    Binary {
        package: "weft-injector",
        name: "weft-injector",
        smoke: Some((&["--help"], "--cert-file")),
    },
];

const CONTROLLER_NAME: &str = "weft-controller.weft-system.svc";
const CONTROLLER_FQDN: &str = "weft-controller.weft-system.svc.cluster.local";
const WORKLOAD: &str = "spiffe://cluster.local/ns/default/sa/web";
/// What the kubelet writes for a pod in namespace `default` (ndots:5).
const RESOLV_CONF: &str = "search default.svc.cluster.local svc.cluster.local cluster.local\n\
                           nameserver 127.0.0.1\noptions ndots:5\n";
const TOKEN_PATH: &str = "/var/run/secrets/tokens/weft-identity";
const ANCHORS_PATH: &str = "/var/run/weft/trust-anchors/ca.crt";
/// The `PATH` of a container (and what `ip netns exec` needs to find `chroot`).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_binaries_run_in_an_empty_root_and_resolve_the_controller() {
    if skip() {
        return;
    }
    let bins = static_binaries().unwrap();
    for binary in BINARIES {
        let path = bins.join(binary.name);
        assert_static(&path).unwrap();
        if let Some((args, stdout_has)) = binary.smoke {
            let root = EmptyRoot::new(binary.name, &path).unwrap();
            let out = run(Command::new("chroot")
                .arg(root.path())
                .arg(format!("/{}", binary.name))
                .args(args))
            .unwrap();
            assert!(
                out.contains(stdout_has),
                "{} {args:?} in an empty root printed no {stdout_has:?}:\n{out}",
                binary.name
            );
        }
    }

    // A pod of its own: loopback up, a name server on its 127.0.0.1:53.
    let net = Net::new("static").unwrap();
    let pod = net.pod("pod").unwrap();
    let socket = pod
        .enter(|| std::net::UdpSocket::bind("127.0.0.1:53"))
        .unwrap()
        .unwrap();
    let dns = DnsServer::start(
        socket,
        &[(CONTROLLER_FQDN, IpAddr::V4(Ipv4Addr::LOCALHOST))],
    )
    .unwrap();

    // The controller, local mode, its state in its own root.
    let controller = EmptyRoot::new("weft-controller", &bins.join("weft-controller")).unwrap();
    std::fs::create_dir(controller.path().join("state")).unwrap();
    let token = run(Command::new("chroot").arg(controller.path()).args([
        "/weft-controller",
        "issue-token",
        "--state-dir",
        "/state",
        "--identity",
        WORKLOAD,
    ]))
    .unwrap();
    let controller_log = controller.log("controller");
    pod.spawn(
        pod.command("chroot")
            .arg(controller.path())
            .args([
                "/weft-controller",
                "serve",
                "--mode",
                "local",
                "--state-dir",
                "/state",
            ])
            .arg(format!("--grpc-addr=0.0.0.0:{CONTROLLER_GRPC_PORT}"))
            .arg(format!("--admin-addr=0.0.0.0:{CONTROL_PLANE_ADMIN_PORT}"))
            .env_clear()
            .env("PATH", PATH)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&controller_log).unwrap()),
    )
    .unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], CONTROL_PLANE_ADMIN_PORT));
    wait_for_200(&pod, admin, "/live", &controller_log).unwrap();
    let anchors = controller.path().join("state/issuer/ca.crt");
    let anchors = std::fs::read(&anchors)
        .with_context(|| format!("reading {}", anchors.display()))
        .unwrap();

    // The proxy, as uid 2510, given the controller's Service name.
    let proxy = EmptyRoot::new("weft-proxy", &bins.join("weft-proxy")).unwrap();
    proxy.file(TOKEN_PATH, token.trim().as_bytes()).unwrap();
    proxy.file(ANCHORS_PATH, &anchors).unwrap();
    let proxy_log = proxy.log("proxy");
    pod.spawn(
        pod.command("chroot")
            .arg(format!("--userspec={PROXY_UID}:{PROXY_UID}"))
            .arg(proxy.path())
            .arg("/weft-proxy")
            .env_clear()
            .env("PATH", PATH)
            .env(
                env::CONTROLLER_ADDR,
                format!("{CONTROLLER_NAME}:{CONTROLLER_GRPC_PORT}"),
            )
            .env(env::IDENTITY, WORKLOAD)
            .env(env::IDENTITY_TOKEN_FILE, TOKEN_PATH)
            .env(env::TRUST_ANCHORS_FILE, ANCHORS_PATH)
            .env(env::APP_ADDR, "127.0.0.1:8080")
            .env(env::LOG, "info,weft_api=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&proxy_log).unwrap()),
    )
    .unwrap();
    let ready = wait_for_200(
        &pod,
        SocketAddr::from(([127, 0, 0, 1], PROXY_ADMIN_PORT)),
        "/ready",
        &proxy_log,
    );
    if let Err(e) = ready {
        let controller = std::fs::read_to_string(&controller_log).unwrap_or_default();
        panic!(
            "{e:#}\nquestions asked: {:?}\ncontroller log:\n{controller}",
            dns.asked()
        );
    }
    let asked = dns.asked();
    assert!(
        asked.contains(&Question {
            name: CONTROLLER_FQDN.into(),
            kind: "A".into()
        }),
        "the proxy became ready without asking the name server for {CONTROLLER_FQDN}: {asked:?}"
    );
}

/// `true` (after saying why, [`weft_tests::skip`]) when the test cannot run
/// here; under `CI=true` it panics instead.
fn skip() -> bool {
    use weft_tests::skip::{Reason, find_program};
    let reason = if !nix::unistd::geteuid().is_root() {
        Reason::root("chroot, network namespaces")
    } else if let Some(tool) = ["chroot", "ip"]
        .into_iter()
        .find(|t| find_program(t).is_none())
    {
        Reason::tool(tool, "apt-get install coreutils iproute2")
    } else {
        return false;
    };
    weft_tests::skip::skip(&reason);
    true
}

/// The directory holding the static binaries, built now unless
/// `WEFT_STATIC_BIN_DIR` names one (cargo makes this quick when fresh).
fn static_binaries() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WEFT_STATIC_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let target_dir = match (
        std::env::var_os("WEFT_STATIC_TARGET_DIR"),
        std::env::var_os("CARGO_TARGET_DIR"),
    ) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, Some(dir)) => PathBuf::from(dir).join("static"),
        (None, None) => workspace.join("target/static"),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--target", TARGET, "--bins"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    let mut packages: Vec<&str> = BINARIES.iter().map(|b| b.package).collect();
    packages.dedup();
    for package in packages {
        cmd.args(["-p", package]);
    }
    let started = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        status.success(),
        "the static build failed ({status}): {cmd:?}"
    );
    let _ = writeln!(std::io::stderr(), "static build: {:.1?}", started.elapsed());
    Ok(target_dir.join(TARGET).join("debug"))
}

/// Fails unless `path` is an ELF executable without an interpreter
/// (`PT_INTERP`): the kernel runs it with no dynamic loader and no libraries.
fn assert_static(path: &Path) -> anyhow::Result<()> {
    let elf = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        elf.len() > 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2,
        "{} is no 64-bit ELF file",
        path.display()
    );
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        ensure!(
            at + 4 <= elf.len(),
            "{}: truncated program headers",
            path.display()
        );
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(elf[at..at + 4].try_into()?) == PT_INTERP {
            bail!(
                "{} is dynamically linked (it has an ELF interpreter); build it with -C target-feature=+crt-static",
                path.display()
            );
        }
    }
    Ok(())
}

/// An empty directory standing in for an image's root filesystem: the binary
/// and what every pod is given. Removed on drop.
struct EmptyRoot {
    dir: tempfile::TempDir,
    logs: tempfile::TempDir,
}

impl EmptyRoot {
    fn new(name: &str, binary: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("weft-root-{name}-"))
            .tempdir()?;
        // Readable by the proxy's uid, as an image's root is.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let root = Self {
            dir,
            logs: tempfile::tempdir()?,
        };
        let target = root.path().join(name);
        std::fs::copy(binary, &target).with_context(|| format!("copying {}", binary.display()))?;
        root.file("/etc/resolv.conf", RESOLV_CONF.as_bytes())?;
        root.file(
            "/etc/hosts",
            b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n10.244.0.7\tpod\n",
        )?;
        root.file("/etc/hostname", b"pod\n")?;
        root.devices()?;
        Ok(root)
    }

    /// The character devices every container has (OCI runtime spec,
    /// "Default Devices"). Needed: a static glibc binary cannot `dlsym` libc's
    /// `getrandom`, so the `getrandom` crate (rand, hickory) reads
    /// `/dev/urandom` instead.
    fn devices(&self) -> anyhow::Result<()> {
        use nix::sys::stat::{Mode, SFlag, makedev, mknod};
        let dev = self.path().join("dev");
        std::fs::create_dir(&dev)?;
        std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o755))?;
        for (name, minor) in [
            ("null", 3),
            ("zero", 5),
            ("full", 7),
            ("random", 8),
            ("urandom", 9),
        ] {
            let path = dev.join(name);
            mknod(
                &path,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(1, minor),
            )
            .with_context(|| format!("mknod {}", path.display()))?;
            // mknod's mode is filtered by the umask.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        }
        Ok(())
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `/<path>` inside the root (directories 0755, files 0644).
    fn file(&self, path: &str, contents: &[u8]) -> anyhow::Result<()> {
        let full = self.path().join(path.trim_start_matches('/'));
        let mut dir = full.parent().context("a file path")?.to_path_buf();
        std::fs::create_dir_all(&dir)?;
        while dir != self.path() {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
            dir = dir.parent().context("inside the root")?.to_path_buf();
        }
        std::fs::write(&full, contents).with_context(|| format!("writing {}", full.display()))?;
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o644))?;
        Ok(())
    }

    /// A log file outside the root.
    fn log(&self, name: &str) -> PathBuf {
        self.logs.path().join(format!("{name}.log"))
    }
}

/// Runs `cmd` to completion; its stdout, or an error with its output.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// Polls `GET path` on `addr` inside `pod` until it answers 200.
fn wait_for_200(
    pod: &weft_tests::netns::Pod,
    addr: SocketAddr,
    path: &str,
    log: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let last = match http_get(pod, addr, path) {
            Ok(rsp) if rsp.starts_with("HTTP/1.1 200") => return Ok(()),
            Ok(rsp) => rsp.lines().next().unwrap_or_default().to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            bail!(
                "{path} on {addr} did not answer 200 within {TIMEOUT:?} (last: {last}); the log:\n{log}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
