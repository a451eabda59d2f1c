//! Endurance: the real `weft-proxy` binaries, a client-side and a
//! server-side proxy with mTLS between them, so that memory, descriptors and
//! tasks are those of one proxy process each.
//!
//! - 1 GiB uploaded and 1 GiB downloaded through the pair (HTTP/1.1 bodies
//!   generated and checked on the fly: byte count and SHA-256 of what was
//!   sent against what arrived) with both proxies' RSS sampled throughout:
//!   the peak stays within [`TRANSFER_RSS_SLACK`] of the idle RSS.
//! - An upgraded (101 Switching Protocols) connection kept for ten minutes
//!   (`WEFT_TEST_UPGRADE_SECS` shortens it for development), a message
//!   echoed every second, while both proxies renew their controller-issued
//!   certificates (15 s lifetime) many times.
//! - 100,000 connections in bursts, split over HTTP/1.1, HTTP/2 and opaque
//!   TCP: afterwards both proxies' open descriptors, tokio tasks (when the
//!   proxy exports `weft_runtime_alive_tasks`) and RSS return to the
//!   baseline measured after a warm-up burst.
//!
//! Needs the workspace's binaries in the target directory (`cargo build
//! --bins`, see `weft_tests::netns::workspace_binary`). Figures are printed.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::convert::Infallible;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_api::consts::env;
use weft_tests::control::{TestControl, free_port};
use weft_tests::mesh::{CLIENT_ID, SERVER_ID};
use weft_tests::netns::workspace_binary;
use weft_tests::pki::TestCa;

const MIB: u64 = 1024 * 1024;
/// The size of each transfer.
const TRANSFER_BYTES: u64 = 1024 * MIB;
/// How far above its idle RSS a proxy may go while 1 GiB passes through.
const TRANSFER_RSS_SLACK: u64 = 16 * MIB;
/// Connections of the churn test, and how many are open at once.
const CHURN_TOTAL: usize = 100_000;
const CHURN_BURST: usize = 300;
/// How far above the post-warm-up baseline a proxy's RSS may settle after
/// the churn (allocator caches), and descriptors and tasks.
const CHURN_RSS_SLACK: u64 = 16 * MIB;
const CHURN_FD_SLACK: usize = 2;
const CHURN_TASK_SLACK: f64 = 2.0;
/// The first bytes of an opaque connection to the test app: echo the rest.
const TCP_MAGIC: &[u8; 4] = b"TCP!";
/// Certificate lifetime of the upgrade test: renewed every ~10 s.
const CERT_LIFETIME: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------- processes

/// A `weft-proxy` process, its output in a log file; killed when dropped.
struct Proxy {
    name: &'static str,
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
}

impl Proxy {
    fn spawn(
        name: &'static str,
        dir: &Path,
        admin: SocketAddr,
        vars: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log)?;
        let mut cmd = Command::new(workspace_binary("weft-proxy")?);
        cmd.env_clear()
            .env("NO_COLOR", "1")
            .env(env::ADMIN_ADDR, admin.to_string())
            .env(env::SHUTDOWN_GRACE, "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("spawn weft-proxy")?;
        Ok(Self {
            name,
            child,
            admin,
            log,
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}):\n{}", self.name, self.log());
        }
        Ok(())
    }

    fn rss(&self) -> u64 {
        rss_of(self.pid())
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, Iterator::count)
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = admin_get(self.admin, "/metrics").await?;
        ensure!(status == 200, "/metrics answered {status}");
        Ok(body)
    }

    /// `weft_runtime_alive_tasks`, if this proxy exports it.
    async fn tasks(&self) -> anyhow::Result<Option<f64>> {
        Ok(sample(&self.metrics().await?, "weft_runtime_alive_tasks"))
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.alive()?;
            if matches!(admin_get(self.admin, "/ready").await, Ok((200, _))) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} not ready in 60 s:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of `pid` in bytes (0 once it is gone).
fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

use weft_tests::mesh::sample;

/// A GET over HTTP/1.0 on its own connection: status and body.
async fn admin_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nhost: admin\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await??;
    let text = String::from_utf8(out)?;
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .context("an HTTP status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// Where the pair gets its certificates.
enum Certs<'a> {
    /// PEM files issued by a test CA (never renewed).
    Files(&'a TestCa),
    /// The controller's `Certify`, renewed at 70 % of their lifetime.
    Controller(&'a TestControl),
}

/// client -> client proxy -> mTLS -> server proxy -> `app`. The client proxy
/// has two upstream listeners to the server proxy: `http` (protocol
/// detection) and `tcp` (opaque).
struct Pair {
    client: Proxy,
    server: Proxy,
    http: SocketAddr,
    tcp: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Pair {
    async fn start(app: SocketAddr, certs: Certs<'_>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let identity = |name: &str, id: &str| -> anyhow::Result<Vec<(&'static str, String)>> {
            let anchors = dir.path().join("anchors.pem");
            Ok(match &certs {
                Certs::Files(ca) => {
                    let leaf = ca.issue(id);
                    let cert = dir.path().join(format!("{name}.crt"));
                    let key = dir.path().join(format!("{name}.key"));
                    std::fs::write(&cert, &leaf.chain_pem)?;
                    std::fs::write(&key, &leaf.key_pem)?;
                    std::fs::write(&anchors, ca.anchors_pem())?;
                    vec![
                        (env::CERT_FILE, cert.display().to_string()),
                        (env::KEY_FILE, key.display().to_string()),
                        (env::TRUST_ANCHORS_FILE, anchors.display().to_string()),
                    ]
                }
                Certs::Controller(control) => {
                    std::fs::write(&anchors, control.anchors_pem())?;
                    vec![
                        (env::CONTROLLER_ADDR, control.grpc_addr().to_string()),
                        (env::DISCOVERY, "false".into()),
                        (env::IDENTITY, id.into()),
                        (
                            env::IDENTITY_TOKEN_FILE,
                            control.token_file(&id.parse()?).display().to_string(),
                        ),
                        (env::TRUST_ANCHORS_FILE, anchors.display().to_string()),
                    ]
                }
            })
        };
        let inbound = free_port();
        let mut vars = identity("server", SERVER_ID)?;
        vars.extend([
            (env::INBOUND_ADDR, inbound.to_string()),
            (env::APP_ADDR, app.to_string()),
        ]);
        let mut server = Proxy::spawn("server-proxy", dir.path(), free_port(), &vars)?;
        let (http, tcp) = (free_port(), free_port());
        let mut vars = identity("client", CLIENT_ID)?;
        vars.extend([
            (env::INBOUND_ADDR, free_port().to_string()),
            (env::APP_ADDR, "127.0.0.1:9".into()),
            (
                env::UPSTREAMS,
                format!(
                    "checkout,{http},{inbound},{SERVER_ID} checkout-tcp,{tcp},{inbound},{SERVER_ID},opaque"
                ),
            ),
        ]);
        let mut client = Proxy::spawn("client-proxy", dir.path(), free_port(), &vars)?;
        server.wait_ready().await?;
        client.wait_ready().await?;
        Ok(Self {
            client,
            server,
            http,
            tcp,
            _dir: dir,
        })
    }

    fn proxies(&self) -> [&Proxy; 2] {
        [&self.client, &self.server]
    }

    fn alive(&mut self) -> anyhow::Result<()> {
        self.client.alive()?;
        self.server.alive()
    }
}

// ---------------------------------------------------------------- the app

/// A 64 KiB block of pseudo-random bytes; chunk `k` of a generated body is
/// this block with `k` in its first 8 bytes, so that reordered, repeated or
/// lost chunks change the digest.
fn base_block() -> Arc<Vec<u8>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = Vec::with_capacity(64 * 1024);
    while block.len() < 64 * 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        block.extend_from_slice(&x.to_le_bytes());
    }
    Arc::new(block)
}

/// `total` generated bytes, hashed as they go into `digest`.
fn generated(
    total: u64,
    digest: Arc<Mutex<Option<aws_lc_rs::digest::Context>>>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    let block = base_block();
    futures::stream::unfold(0u64, move |sent| {
        let block = block.clone();
        let digest = digest.clone();
        async move {
            if sent >= total {
                return None;
            }
            let n = (total - sent).min(block.len() as u64) as usize;
            let mut chunk = block[..n].to_vec();
            let index = (sent / block.len() as u64).to_le_bytes();
            let stamp = n.min(8);
            chunk[..stamp].copy_from_slice(&index[..stamp]);
            if let Some(d) = digest.lock().unwrap().as_mut() {
                d.update(&chunk);
            }
            Some((Ok(Frame::data(Bytes::from(chunk))), sent + n as u64))
        }
    })
}

fn new_digest() -> Arc<Mutex<Option<aws_lc_rs::digest::Context>>> {
    Arc::new(Mutex::new(Some(aws_lc_rs::digest::Context::new(
        &aws_lc_rs::digest::SHA256,
    ))))
}

fn finish(digest: &Mutex<Option<aws_lc_rs::digest::Context>>) -> String {
    let d = digest
        .lock()
        .unwrap()
        .take()
        .expect("digest not finished yet");
    hex(d.finish().as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a body to its end, counting and hashing: (bytes, SHA-256 hex).
async fn consume(mut body: Incoming) -> anyhow::Result<(u64, String)> {
    let mut d = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            n += data.len() as u64;
            d.update(&data);
        }
    }
    Ok((n, hex(d.finish().as_ref())))
}

type AppBody = BoxBody<Bytes, Infallible>;

/// A running SHA-256 of the bytes a body carried (`None` once finished).
type Digest = Arc<Mutex<Option<aws_lc_rs::digest::Context>>>;

/// What the app sent for the last `GET /download/<n>`: its SHA-256, set
/// when the body is complete.
#[derive(Clone, Default)]
struct Sent(Arc<Mutex<Option<Digest>>>);

/// The test app: an opaque connection starting with [`TCP_MAGIC`] gets
/// every further byte echoed; otherwise HTTP/1.1 or HTTP/2:
/// `POST /upload` answers `<bytes> <sha256>` of the body it read,
/// `GET /download/<n>` streams `n` generated bytes, anything else echoes
/// the request body.
async fn app(sent: Sent) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut magic = [0u8; 4];
                // Wait until 4 bytes are there (or the peer is gone).
                loop {
                    match tcp.peek(&mut magic).await {
                        Ok(4) => break,
                        Ok(0) | Err(_) => return,
                        Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                if &magic == TCP_MAGIC {
                    let (mut r, mut w) = tcp.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                    return;
                }
                let svc = service_fn(move |req| serve(req, sent.clone()));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

async fn serve(req: Request<Incoming>, sent: Sent) -> Result<Response<AppBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/upload" {
        let text = match consume(req.into_body()).await {
            Ok((n, digest)) => format!("{n} {digest}"),
            Err(e) => format!("error {e}"),
        };
        return Ok(Response::new(Full::new(Bytes::from(text)).boxed()));
    }
    if let Some(n) = path.strip_prefix("/download/") {
        let total: u64 = n.parse().unwrap_or(0);
        let digest = new_digest();
        *sent.0.lock().unwrap() = Some(digest.clone());
        let body = StreamBody::new(generated(total, digest));
        let mut rsp = Response::new(BodyExt::boxed(body));
        rsp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, total.into());
        return Ok(rsp);
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    Ok(Response::new(Full::new(body).boxed()))
}

// ---------------------------------------------------------------- sampling

/// Samples the peak RSS of some processes every 20 ms until stopped.
struct PeakRss {
    stop: Arc<AtomicBool>,
    peaks: Vec<Arc<AtomicU64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakRss {
    fn start(pids: &[u32]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks: Vec<_> = pids.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
        let (s, p, pids) = (stop.clone(), peaks.clone(), pids.to_vec());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for (pid, peak) in pids.iter().zip(&p) {
                    peak.fetch_max(rss_of(*pid), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            peaks,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.peaks
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .collect()
    }
}

// ---------------------------------------------------------------- clients

async fn http1(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<AppBody>> {
    let tcp = TcpStream::connect(addr).await?;
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn.with_upgrades());
    Ok(tx)
}

/// Uploads `total` generated bytes; checks the app's count and digest.
async fn upload(addr: SocketAddr, total: u64) -> anyhow::Result<()> {
    let mut tx = http1(addr).await?;
    let digest = new_digest();
    let req = Request::post("/upload")
        .header("host", "checkout")
        .header(http::header::CONTENT_LENGTH, total)
        .body(BodyExt::boxed(StreamBody::new(generated(
            total,
            digest.clone(),
        ))))?;
    let rsp = tx.send_request(req).await?;
    ensure!(rsp.status() == 200, "upload answered {}", rsp.status());
    let text = String::from_utf8(rsp.into_body().collect().await?.to_bytes().to_vec())?;
    let want = format!("{total} {}", finish(&digest));
    ensure!(
        text == want,
        "the app read {text:?}, the client sent {want:?}"
    );
    Ok(())
}

/// Downloads `total` generated bytes; checks count and digest against what
/// the app sent.
async fn download(addr: SocketAddr, total: u64, sent: &Sent) -> anyhow::Result<()> {
    let mut tx = http1(addr).await?;
    let req = Request::get(format!("/download/{total}"))
        .header("host", "checkout")
        .body(Empty::new().map_err(|never| match never {}).boxed())?;
    let rsp = tx.send_request(req).await?;
    ensure!(rsp.status() == 200, "download answered {}", rsp.status());
    let (n, got) = consume(rsp.into_body()).await?;
    let slot = sent
        .0
        .lock()
        .unwrap()
        .take()
        .context("the app sent nothing")?;
    let want = finish(&slot);
    ensure!(
        n == total && got == want,
        "received {n} bytes with SHA-256 {got}; the app sent {total} with {want}"
    );
    Ok(())
}

// ---------------------------------------------------------------- 1. transfers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_upload_and_download_with_flat_proxy_memory() -> anyhow::Result<()> {
    let sent = Sent::default();
    let app = app(sent.clone()).await;
    let ca = TestCa::new("weft test");
    let mut pair = Pair::start(app, Certs::Files(&ca)).await?;
    // Warm up: the pool, TLS sessions and buffers the transfers will use.
    upload(pair.http, 16 * MIB).await?;
    download(pair.http, 16 * MIB, &sent).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle: Vec<u64> = pair.proxies().iter().map(|p| p.rss()).collect();
    let pids: Vec<u32> = pair.proxies().iter().map(|p| p.pid()).collect();
    for (what, up) in [("upload", true), ("download", false)] {
        let peak = PeakRss::start(&pids);
        let started = Instant::now();
        let run = async {
            if up {
                upload(pair.http, TRANSFER_BYTES).await
            } else {
                download(pair.http, TRANSFER_BYTES, &sent).await
            }
        };
        tokio::time::timeout(Duration::from_secs(600), run)
            .await
            .with_context(|| format!("the 1 GiB {what} took over 600 s"))??;
        let took = started.elapsed();
        let peaks = peak.stop();
        pair.alive()?;
        println!(
            "1 GiB {what}: {:.1} s ({:.0} MiB/s); RSS idle -> peak: client proxy {:.1} -> {:.1} MiB, server proxy {:.1} -> {:.1} MiB",
            took.as_secs_f64(),
            1024.0 / took.as_secs_f64(),
            mib(idle[0]),
            mib(peaks[0]),
            mib(idle[1]),
            mib(peaks[1]),
        );
        for ((p, idle), peak) in pair.proxies().iter().zip(&idle).zip(&peaks) {
            ensure!(
                *peak <= idle + TRANSFER_RSS_SLACK,
                "{}: RSS peaked at {:.1} MiB during the {what}, idle was {:.1} MiB (allowed +{:.0} MiB)",
                p.name,
                mib(*peak),
                mib(*idle),
                mib(TRANSFER_RSS_SLACK)
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- 2. upgrade

/// The serials of `identity`'s certificate series (`weft_identity_certificate`).
fn serials(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("weft_identity_certificate{"))
        .filter_map(|l| {
            let rest = l.split_once("serial=\"")?.1;
            Some(rest.split_once('"')?.0.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_minute_upgraded_connection_across_certificate_renewals() -> anyhow::Result<()> {
    let secs: u64 = match std::env::var("WEFT_TEST_UPGRADE_SECS") {
        Ok(v) => v.parse().context("WEFT_TEST_UPGRADE_SECS")?,
        Err(_) => 600,
    };
    let hold = Duration::from_secs(secs);
    let control = TestControl::start(CERT_LIFETIME).await;
    let app = weft_tests::apps::http_echo().await;
    let mut pair = Pair::start(app, Certs::Controller(&control)).await?;

    let mut tx = http1(pair.http).await?;
    let req = Request::get("/chat")
        .header("host", "checkout")
        .header(http::header::UPGRADE, weft_tests::apps::ECHO_UPGRADE)
        .header(http::header::CONNECTION, "upgrade")
        .body(Empty::new().map_err(|never| match never {}).boxed())?;
    let rsp = tx.send_request(req).await?;
    ensure!(
        rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS,
        "upgrade answered {}",
        rsp.status()
    );
    let mut io = TokioIo::new(hyper::upgrade::on(rsp).await?);

    let mut seen: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
    let started = Instant::now();
    let mut echoes = 0u64;
    while started.elapsed() < hold {
        let msg = format!(
            "message {echoes:08} at {:.1} s\n",
            started.elapsed().as_secs_f64()
        );
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), async {
            io.write_all(msg.as_bytes()).await?;
            io.flush().await?;
            io.read_exact(&mut got).await?;
            anyhow::Ok(())
        })
        .await
        .with_context(|| format!("echo {echoes} not back in 10 s"))??;
        ensure!(
            got == msg.as_bytes(),
            "echo {echoes}: sent {msg:?}, got {:?}",
            String::from_utf8_lossy(&got)
        );
        echoes += 1;
        for (p, seen) in pair.proxies().iter().zip(seen.iter_mut()) {
            for s in serials(&p.metrics().await?) {
                if !seen.contains(&s) {
                    seen.push(s);
                }
            }
        }
        pair.alive()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // A new connection after all the renewals: handshakes with the newest
    // certificates.
    let mut fresh = http1(pair.http).await?;
    let rsp = fresh
        .send_request(
            Request::post("/after")
                .header("host", "checkout")
                .body(Full::new(Bytes::from_static(b"after")).boxed())?,
        )
        .await?;
    ensure!(
        rsp.status() == 200,
        "a new request answered {}",
        rsp.status()
    );
    let mut counts = Vec::new();
    for p in pair.proxies() {
        let text = p.metrics().await?;
        counts.push(sample(&text, "weft_identity_certify_total{result=\"ok\"}").unwrap_or(0.0));
    }
    println!(
        "upgraded connection held {:.0} s: {echoes} echoes, all back; certificates seen (lifetime {} s): client proxy {} (certify ok {}), server proxy {} (certify ok {})",
        started.elapsed().as_secs_f64(),
        CERT_LIFETIME.as_secs(),
        seen[0].len(),
        counts[0],
        seen[1].len(),
        counts[1],
    );
    // Renewed about every 10 s; at least one renewal per 20 s held.
    let want = (secs / 20).max(1) as usize + 1;
    for (p, seen) in pair.proxies().iter().zip(&seen) {
        ensure!(
            seen.len() >= want,
            "{}: {} certificates during the connection, expected at least {want}",
            p.name,
            seen.len()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- 3. churn

/// One connection of the churn: `kind` 0 HTTP/1.1, 1 HTTP/2, 2 opaque.
async fn one_connection(
    pair_http: SocketAddr,
    pair_tcp: SocketAddr,
    kind: usize,
    i: usize,
) -> anyhow::Result<()> {
    let payload = format!("churn {i}");
    match kind {
        0 => {
            let mut tx = http1(pair_http).await?;
            let rsp = tx
                .send_request(
                    Request::post("/")
                        .header("host", "checkout")
                        .header("connection", "close")
                        .body(Full::new(Bytes::from(payload.clone())).boxed())?,
                )
                .await?;
            ensure!(rsp.status() == 200, "HTTP/1.1 answered {}", rsp.status());
            let body = rsp.into_body().collect().await?.to_bytes();
            ensure!(body == payload.as_bytes(), "HTTP/1.1 echo {body:?}");
        }
        1 => {
            let tcp = TcpStream::connect(pair_http).await?;
            let (mut tx, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await?;
            let conn = tokio::spawn(conn);
            let rsp = tx
                .send_request(
                    Request::post("http://checkout/")
                        .body(Full::new(Bytes::from(payload.clone())).boxed())?,
                )
                .await?;
            ensure!(rsp.status() == 200, "HTTP/2 answered {}", rsp.status());
            let body = rsp.into_body().collect().await?.to_bytes();
            ensure!(body == payload.as_bytes(), "HTTP/2 echo {body:?}");
            drop(tx);
            conn.await??;
        }
        _ => {
            let mut tcp = TcpStream::connect(pair_tcp).await?;
            let msg = format!("{}{payload}", std::str::from_utf8(TCP_MAGIC)?);
            tcp.write_all(msg.as_bytes()).await?;
            tcp.shutdown().await?;
            let mut got = Vec::new();
            tcp.read_to_end(&mut got).await?;
            ensure!(
                got == msg.as_bytes(),
                "opaque echo {:?}",
                String::from_utf8_lossy(&got)
            );
        }
    }
    Ok(())
}

/// `n` connections, `CHURN_BURST` at a time, kinds in turn.
async fn churn(pair: &Pair, n: usize) -> anyhow::Result<()> {
    let (h, t) = (pair.http, pair.tcp);
    let results = futures::stream::iter(0..n)
        .map(|i| async move {
            tokio::time::timeout(Duration::from_secs(60), one_connection(h, t, i % 3, i))
                .await
                .with_context(|| format!("connection {i} took over 60 s"))?
                .with_context(|| format!("connection {i} (kind {})", i % 3))
        })
        .buffer_unordered(CHURN_BURST);
    futures::pin_mut!(results);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    rss: u64,
    fds: usize,
    tasks: Option<f64>,
}

async fn usage(p: &Proxy) -> anyhow::Result<Usage> {
    Ok(Usage {
        rss: p.rss(),
        fds: p.fds(),
        tasks: p.tasks().await?,
    })
}

fn show(u: &Usage) -> String {
    format!(
        "RSS {:.1} MiB, {} fds, {} tasks",
        mib(u.rss),
        u.fds,
        u.tasks.map_or("?".into(), |t| t.to_string())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_of_100k_connections_returns_to_baseline() -> anyhow::Result<()> {
    let app = app(Sent::default()).await;
    let ca = TestCa::new("weft test");
    let mut pair = Pair::start(app, Certs::Files(&ca)).await?;
    // Descriptors and tasks of the idle proxies, before any traffic; the RSS
    // baseline after a warm-up burst (the allocator keeps what it grew to).
    let mut baseline = Vec::new();
    for p in pair.proxies() {
        baseline.push(usage(p).await?);
    }
    churn(&pair, 3 * CHURN_BURST).await?;
    for (b, p) in baseline.iter_mut().zip(pair.proxies()) {
        b.rss = usage(p).await?.rss;
    }
    let started = Instant::now();
    churn(&pair, CHURN_TOTAL).await?;
    let took = started.elapsed();
    pair.alive()?;
    let mut peak_fds: Vec<usize> = pair.proxies().iter().map(|p| p.fds()).collect();
    println!(
        "{CHURN_TOTAL} connections ({} at a time, a third each HTTP/1.1, HTTP/2, opaque) in {:.1} s ({:.0}/s)",
        CHURN_BURST,
        took.as_secs_f64(),
        CHURN_TOTAL as f64 / took.as_secs_f64()
    );
    // Wait for each proxy to settle back to its baseline: connections to the
    // app left idle by the bursts close after HTTP1_IDLE_TIMEOUT (10 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    loop {
        last.clear();
        for p in pair.proxies() {
            last.push(usage(p).await?);
        }
        let settled = baseline.iter().zip(&last).all(|(b, n)| {
            n.fds <= b.fds + CHURN_FD_SLACK
                && n.rss <= b.rss + CHURN_RSS_SLACK
                && match (b.tasks, n.tasks) {
                    (Some(b), Some(n)) => n <= b + CHURN_TASK_SLACK,
                    _ => true,
                }
        });
        for (i, p) in pair.proxies().iter().enumerate() {
            peak_fds[i] = peak_fds[i].max(p.fds());
        }
        if settled || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for ((p, b), n) in pair.proxies().iter().zip(&baseline).zip(&last) {
        println!(
            "{}: baseline {} -> after the churn {}",
            p.name,
            show(b),
            show(n)
        );
    }
    for ((p, b), n) in pair.proxies().iter().zip(&baseline).zip(&last) {
        ensure!(
            n.fds <= b.fds + CHURN_FD_SLACK,
            "{}: {} fds after the churn, baseline {}: a descriptor leak",
            p.name,
            n.fds,
            b.fds
        );
        if let (Some(bt), Some(nt)) = (b.tasks, n.tasks) {
            ensure!(
                nt <= bt + CHURN_TASK_SLACK,
                "{}: {nt} tasks after the churn, baseline {bt}: a task leak",
                p.name
            );
        }
        ensure!(
            n.rss <= b.rss + CHURN_RSS_SLACK,
            "{}: RSS {:.1} MiB after the churn, baseline {:.1} MiB (allowed +{:.0} MiB)",
            p.name,
            mib(n.rss),
            mib(b.rss),
            mib(CHURN_RSS_SLACK)
        );
    }
    Ok(())
}
