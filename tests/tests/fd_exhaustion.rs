//! Out of file descriptors: the real binaries, started under
//! `prlimit --nofile=N:N` (util-linux) with a small `N`, are given more
//! connections than they have descriptors for. The extra connections wait in
//! the kernel's backlog and every `accept` fails with `EMFILE`; each
//! listener's accept loop (`weft_api::accept::accept_loop`) must then
//!
//! 1. back off instead of spinning: the process's CPU time
//!    (`/proc/<pid>/stat`, utime + stime) over a window of exhaustion, with
//!    connections pending on every listener, stays under a tenth of a core;
//! 2. keep serving the connections it has: keep-alive connections opened
//!    before the exhaustion still get their answers;
//! 3. recover: once the hogging connections close, new connections to every
//!    listener are accepted and served within seconds.
//!
//! The proxy (upstream listener to an in-process server proxy, admin,
//! inbound) and the controller (gRPC, admin) are covered. Needs `prlimit` and
//! the workspace's binaries in the target directory (`cargo build --bins`, see
//! `weft_tests::netns::workspace_binary`). The measured figures are printed.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use weft_api::consts::env;
use weft_api::tls::{MeshTls, TrustAnchors};
use weft_tests::control::free_port;
use weft_tests::mesh::{CLIENT_ID, SERVER_ID, server_proxy};
use weft_tests::netns::workspace_binary;
use weft_tests::pki::TestCa;

/// The open-files limit the binaries run with: enough to start, small enough
/// to reach with a few connections.
const NOFILE: usize = 96;
/// Connections opened to the hogged listener: more than the process can take.
const HOGS: usize = NOFILE + 32;
/// Connections left pending on each other listener while it is exhausted.
const PENDING: usize = 4;
/// The window over which the CPU time is measured.
const WINDOW: Duration = Duration::from_secs(2);
/// The most CPU the process may use while exhausted, in cores. Backing off,
/// the binaries use under 1 %; an accept loop that retries at once took 31 %
/// of a core on a loaded 2-core machine (more when it has the core to itself).
const MAX_CPU: f64 = 0.10;
/// Bound on every wait (a loaded 2-core machine).
const TIMEOUT: Duration = Duration::from_secs(30);
/// Recovery must take no longer than this after the hogs close.
const RECOVERY: Duration = Duration::from_secs(10);

/// A binary running under `prlimit`, its stdout and stderr in a log file;
/// killed when dropped.
struct Limited {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Limited {
    /// Starts `binary` (a workspace binary) with `args` and `envs` under an
    /// open-files limit of [`NOFILE`]. `prlimit` sets the limit and execs the
    /// binary: the child's pid is the binary's.
    fn spawn(
        name: &'static str,
        dir: &Path,
        args: &[String],
        envs: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let binary = workspace_binary(name)?;
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).context("create the log file")?;
        let err = out.try_clone().context("clone the log file")?;
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={NOFILE}:{NOFILE}"))
            .arg(binary)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (key, value) in envs {
            cmd.env(key, value);
        }
        let child = cmd.spawn().context("spawn prlimit (util-linux)")?;
        Ok(Self { name, child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails if the process exited.
    fn alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}):\n{}", self.name, self.log());
        }
        Ok(())
    }

    /// Its open descriptors.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, Iterator::count)
    }

    /// Its CPU time so far (user + system).
    fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // The fields after the command name, which is in parentheses.
        let rest = stat.rsplit_once(')').context("a stat line")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
        let ticks: u64 = fields
            .get(11..13)
            .context("utime and stime")?
            .iter()
            .map(|f| f.parse::<u64>())
            .sum::<Result<u64, _>>()?;
        Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
    }

    /// Whether `listener` logged that it backs off for want of descriptors.
    fn backed_off(&self, listener: &str) -> bool {
        self.log().lines().any(|line| {
            line.contains("failed to accept a connection; backing off")
                && names(line, listener)
                && line.contains("os error 24")
        })
    }

    /// Whether `listener` logged that it accepts again.
    fn recovered(&self, listener: &str) -> bool {
        self.log()
            .lines()
            .any(|line| line.contains("accepting connections again") && names(line, listener))
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn names(line: &str, listener: &str) -> bool {
    line.contains(&format!("listener=\"{listener}\""))
        || line.contains(&format!("listener={listener} "))
}

/// `CLK_TCK`, the unit of `/proc/<pid>/stat`'s times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Waits until `done` holds, checking every 20 ms, for at most `timeout`.
async fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if done()? {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A keep-alive HTTP/1.1 connection.
struct Http1 {
    tx: SendRequest<Empty<Bytes>>,
    host: String,
}

impl Http1 {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        Self::over(tcp, addr).await
    }

    /// Over TLS, trusting `tls` and expecting the name `localhost`.
    async fn connect_tls(
        addr: SocketAddr,
        tls: &tokio_rustls::TlsConnector,
    ) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let stream = tokio::time::timeout(Duration::from_secs(10), tls.connect(name, tcp))
            .await
            .context("no TLS handshake within 10 s")??;
        Self::over(stream, addr).await
    }

    async fn over<IO>(io: IO, addr: SocketAddr) -> anyhow::Result<Self>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(conn);
        Ok(Self {
            tx,
            host: addr.to_string(),
        })
    }

    /// GET `path`: the status, within 10 s.
    async fn get(&mut self, path: &str) -> anyhow::Result<u16> {
        let req = http::Request::get(path)
            .header(http::header::HOST, &self.host)
            .body(Empty::new())?;
        let answer = async {
            self.tx.ready().await?;
            let rsp = self.tx.send_request(req).await?;
            let status = rsp.status().as_u16();
            // Read the body: the connection is then free for the next request.
            http_body_util::BodyExt::collect(rsp.into_body()).await?;
            anyhow::Ok(status)
        };
        tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .context("no answer within 10 s")?
    }
}

/// GET `path` on a new connection, retried until a 200 or [`RECOVERY`];
/// returns how long it took.
async fn fresh_200(addr: SocketAddr, path: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < RECOVERY {
        let attempt = async {
            let mut conn = Http1::connect(addr).await?;
            conn.get(path).await
        };
        match tokio::time::timeout(RECOVERY, attempt).await {
            Ok(Ok(200)) => return Ok(start.elapsed()),
            Ok(Ok(status)) => last = format!("status {status}"),
            Ok(Err(e)) => last = format!("{e:#}"),
            Err(_) => last = "no answer".into(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("GET http://{addr}{path} on a new connection: no 200 within {RECOVERY:?} ({last})")
}

/// Opens `count` TCP connections to `addr` (each completes in the kernel's
/// backlog whether or not the process accepts it).
async fn open(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        conns.push(TcpStream::connect(addr).await.context("connect a hog")?);
    }
    Ok(conns)
}

/// Hogs `hogged` (the connections stay open, sending nothing) until the
/// process is out of descriptors, leaves connections pending on `others`,
/// waits until every one of those listeners logged its back-off, and returns
/// all the connections and the CPU used over [`WINDOW`], in cores.
async fn exhaust(
    process: &mut Limited,
    hogged: (&str, SocketAddr),
    others: &[(&str, SocketAddr)],
) -> anyhow::Result<(Vec<TcpStream>, f64)> {
    let mut conns = open(hogged.1, HOGS).await?;
    wait_until(
        &format!("{} to run out of descriptors on {}", process.name, hogged.0),
        TIMEOUT,
        || Ok(process.backed_off(hogged.0)),
    )
    .await?;
    for (name, addr) in others {
        conns.extend(open(*addr, PENDING).await?);
        wait_until(&format!("{name} to back off"), TIMEOUT, || {
            Ok(process.backed_off(name))
        })
        .await?;
    }
    process.alive()?;
    let fds = process.fds();
    ensure!(
        fds >= NOFILE - 1,
        "{} holds {fds} descriptors of {NOFILE}",
        process.name
    );
    let (cpu0, t0) = (process.cpu()?, Instant::now());
    tokio::time::sleep(WINDOW).await;
    let (cpu1, t1) = (process.cpu()?, Instant::now());
    let fds = process.fds();
    ensure!(
        fds >= NOFILE - 1,
        "{} was no longer out of descriptors at the end of the window ({fds} of {NOFILE})",
        process.name
    );
    let cores = (cpu1 - cpu0).as_secs_f64() / (t1 - t0).as_secs_f64();
    Ok((conns, cores))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_backs_off_out_of_descriptors_serves_its_connections_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let app = weft_tests::apps::http_echo().await;
    let ca = TestCa::new("fd exhaustion");
    let server = server_proxy(ca.mesh_tls(SERVER_ID), app).await;
    let leaf = ca.issue(CLIENT_ID);
    let (cert, key, anchors) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("anchors.pem"),
    );
    std::fs::write(&cert, &leaf.chain_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    std::fs::write(&anchors, ca.anchors_pem()).unwrap();
    let (upstream, admin, inbound) = (free_port(), free_port(), free_port());
    let path = |p: &Path| p.display().to_string();
    let mut proxy = Limited::spawn(
        "weft-proxy",
        dir.path(),
        &[],
        &[
            (env::CERT_FILE, path(&cert)),
            (env::KEY_FILE, path(&key)),
            (env::TRUST_ANCHORS_FILE, path(&anchors)),
            (env::APP_ADDR, "127.0.0.1:9".into()),
            (env::INBOUND_ADDR, inbound.to_string()),
            (env::ADMIN_ADDR, admin.to_string()),
            (
                env::UPSTREAMS,
                format!("checkout,{upstream},{},{SERVER_ID}", server.inbound_addr),
            ),
            // The hogs send nothing: detection must not give up on them
            // during the test.
            (env::DETECT_TIMEOUT, "300".into()),
            (env::LOG, "info".into()),
        ],
    )
    .unwrap();
    fresh_200(admin, "/ready")
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", proxy.log()))
        .unwrap();

    // Keep-alive connections from before, each used once.
    let mut app_conn = Http1::connect(upstream).await.unwrap();
    assert_eq!(app_conn.get("/before").await.unwrap(), 200);
    let mut admin_conn = Http1::connect(admin).await.unwrap();
    assert_eq!(admin_conn.get("/live").await.unwrap(), 200);

    let (conns, cores) = exhaust(
        &mut proxy,
        ("upstream", upstream),
        &[("admin", admin), ("inbound", inbound)],
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", proxy.log()))
    .unwrap();
    assert!(
        cores < MAX_CPU,
        "the proxy used {:.0} % of a core out of descriptors",
        cores * 100.0
    );

    // The connections it has are served.
    let start = Instant::now();
    assert_eq!(app_conn.get("/during").await.unwrap(), 200);
    assert_eq!(admin_conn.get("/live").await.unwrap(), 200);
    let served_in = start.elapsed();
    proxy.alive().unwrap();

    // Descriptors free up: every listener accepts again.
    drop(conns);
    let upstream_in = fresh_200(upstream, "/after").await.unwrap();
    let admin_in = fresh_200(admin, "/live").await.unwrap();
    wait_until("the inbound listener to accept again", RECOVERY, || {
        Ok(proxy.recovered("inbound"))
    })
    .await
    .unwrap();
    for listener in ["upstream", "admin"] {
        assert!(
            proxy.recovered(listener),
            "{listener}: no recovery logged\n{}",
            proxy.log()
        );
    }
    assert_eq!(app_conn.get("/later").await.unwrap(), 200);
    eprintln!(
        "weft-proxy at {NOFILE} descriptors: {:.1} % of a core over {WINDOW:?} out of \
         descriptors; the connections it had answered in {served_in:?}; after the hogs \
         closed, a new connection was served in {upstream_in:?} (upstream), {admin_in:?} (admin)",
        cores * 100.0
    );
    let _ = server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_backs_off_out_of_descriptors_serves_its_connections_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let (grpc, admin) = (free_port(), free_port());
    let mut controller = Limited::spawn(
        "weft-controller",
        dir.path(),
        &[
            "serve".into(),
            "--mode".into(),
            "local".into(),
            "--state-dir".into(),
            state.display().to_string(),
            format!("--grpc-addr={grpc}"),
            format!("--admin-addr={admin}"),
        ],
        &[],
    )
    .unwrap();
    fresh_200(admin, "/ready")
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", controller.log()))
        .unwrap();
    let anchors = std::fs::read(state.join("issuer/ca.crt")).unwrap();
    let tls = MeshTls::new(TrustAnchors::from_pem(&anchors).unwrap());

    // Keep-alive connections from before, each used once.
    let mut grpc_conn = Grpc::connect(grpc, tls.clone()).unwrap();
    let refused = grpc_conn.certify().await.unwrap();
    let mut admin_conn = Http1::connect(admin).await.unwrap();
    assert_eq!(admin_conn.get("/live").await.unwrap(), 200);

    // The admin listener keeps idle connections: it is the one hogged.
    let (conns, cores) = exhaust(
        &mut controller,
        ("controller-admin", admin),
        &[("controller-grpc", grpc)],
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", controller.log()))
    .unwrap();
    assert!(
        cores < MAX_CPU,
        "the controller used {:.0} % of a core out of descriptors",
        cores * 100.0
    );

    let start = Instant::now();
    assert_eq!(grpc_conn.certify().await.unwrap(), refused);
    assert_eq!(admin_conn.get("/live").await.unwrap(), 200);
    let served_in = start.elapsed();
    controller.alive().unwrap();

    drop(conns);
    let start = Instant::now();
    let grpc_in = loop {
        let mut fresh = Grpc::connect(grpc, tls.clone()).unwrap();
        match fresh.certify().await {
            Ok(code) if code == refused => break start.elapsed(),
            other => assert!(
                start.elapsed() < RECOVERY,
                "no gRPC answer on a new connection within {RECOVERY:?}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let admin_in = fresh_200(admin, "/live").await.unwrap();
    for listener in ["controller-admin", "controller-grpc"] {
        assert!(
            controller.recovered(listener),
            "{listener}: no recovery logged\n{}",
            controller.log()
        );
    }
    eprintln!(
        "weft-controller at {NOFILE} descriptors: {:.1} % of a core over {WINDOW:?} out of \
         descriptors; the connections it had answered in {served_in:?}; after the hogs \
         closed, a new connection was served in {grpc_in:?} (gRPC), {admin_in:?} (admin)",
        cores * 100.0
    );
}

/// A gRPC channel to the controller (one HTTP/2 connection, kept).
struct Grpc {
    client: weft_api::proto::weft_v1::identity_client::IdentityClient<tonic::transport::Channel>,
}

impl Grpc {
    fn connect(addr: SocketAddr, tls: Arc<MeshTls>) -> anyhow::Result<Self> {
        let expected = weft_api::control::controller_identity("cluster.local")?;
        let channel = weft_api::control::watch_channel(
            &addr.to_string(),
            tls,
            &expected,
            weft_api::dns::Resolver::system(),
        )?;
        Ok(Self {
            client: weft_api::proto::weft_v1::identity_client::IdentityClient::new(channel),
        })
    }

    /// A `Certify` with no token: the controller's refusal (its status code),
    /// within 10 s. A transport failure is an error.
    async fn certify(&mut self) -> anyhow::Result<tonic::Code> {
        let request = weft_api::proto::weft_v1::CertifyRequest {
            token: String::new(),
            csr: Vec::new(),
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), self.client.certify(request))
            .await
            .context("no gRPC answer within 10 s")?;
        match answer {
            Ok(_) => bail!("an empty Certify was answered with a certificate"),
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown
                ) =>
            {
                bail!("the call failed: {status}")
            }
            Err(status) => Ok(status.code()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_injector_backs_off_out_of_descriptors_serves_its_connections_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("fd exhaustion");
    let mut spec = weft_tests::pki::LeafSpec::identity(SERVER_ID);
    spec.sans = vec![rcgen::SanType::DnsName("localhost".try_into().unwrap())];
    let leaf = ca.issue_spec(&spec);
    let file = |name: &str, contents: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    };
    let cert = file("tls.crt", &leaf.chain_pem);
    let key = file("tls.key", &leaf.key_pem);
    let anchors = file("ca.crt", ca.anchors_pem());
    // An API server that is not there: the namespace watch retries with its
    // back-off; the webhook and the admin server serve regardless.
    let kubeconfig = file(
        "kubeconfig",
        "apiVersion: v1\nkind: Config\nclusters:\n- name: none\n  cluster:\n    \
         server: http://127.0.0.1:1\nusers:\n- name: none\n  user: {}\ncontexts:\n\
         - name: none\n  context:\n    cluster: none\n    user: none\n\
         current-context: none\n",
    );
    let (webhook, admin) = (free_port(), free_port());
    let mut injector = Limited::spawn(
        "weft-injector",
        dir.path(),
        &[
            format!("--listen={webhook}"),
            format!("--admin-addr={admin}"),
            format!("--cert-file={cert}"),
            format!("--key-file={key}"),
            format!("--trust-anchors-file={anchors}"),
            format!("--kubeconfig={kubeconfig}"),
        ],
        &[],
    )
    .unwrap();
    fresh_200(admin, "/live")
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", injector.log()))
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root_der()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(weft_api::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client));

    // Keep-alive connections from before, each used once. A GET of the
    // webhook is refused, always the same way: an answer.
    let mut webhook_conn = Http1::connect_tls(webhook, &tls).await.unwrap();
    let answer = webhook_conn.get("/inject").await.unwrap();
    let mut admin_conn = Http1::connect(admin).await.unwrap();
    assert_eq!(admin_conn.get("/live").await.unwrap(), 200);

    let (conns, cores) = exhaust(
        &mut injector,
        ("injector-admin", admin),
        &[("webhook", webhook)],
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", injector.log()))
    .unwrap();
    assert!(
        cores < MAX_CPU,
        "the injector used {:.0} % of a core out of descriptors",
        cores * 100.0
    );

    let start = Instant::now();
    assert_eq!(webhook_conn.get("/inject").await.unwrap(), answer);
    assert_eq!(admin_conn.get("/live").await.unwrap(), 200);
    let served_in = start.elapsed();
    injector.alive().unwrap();

    drop(conns);
    let start = Instant::now();
    let webhook_in = loop {
        let attempt = async {
            let mut conn = Http1::connect_tls(webhook, &tls).await?;
            conn.get("/inject").await
        };
        match attempt.await {
            Ok(status) if status == answer => break start.elapsed(),
            other => assert!(
                start.elapsed() < RECOVERY,
                "no webhook answer on a new connection within {RECOVERY:?}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let admin_in = fresh_200(admin, "/live").await.unwrap();
    for listener in ["injector-admin", "webhook"] {
        assert!(
            injector.recovered(listener),
            "{listener}: no recovery logged\n{}",
            injector.log()
        );
    }
    eprintln!(
        "weft-injector at {NOFILE} descriptors: {:.1} % of a core over {WINDOW:?} out of \
         descriptors; the connections it had answered in {served_in:?}; after the hogs \
         closed, a new connection was served in {webhook_in:?} (webhook), {admin_in:?} (admin)",
        cores * 100.0
    );
}
