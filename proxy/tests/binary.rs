//! The `weft-proxy` binary as an operator runs it: configured by environment,
//! credentials from PEM files, stopped by SIGTERM.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_api::consts::env;
use weft_tests::control::free_port as free_addr;
use weft_tests::mesh::{CLIENT_ID, SERVER_ID};
use weft_tests::pki::TestCa;

const BIN: &str = env!("CARGO_BIN_EXE_weft-proxy");

fn write_identity(dir: &Path, name: &str, ca: &TestCa, identity: &str) -> Vec<(String, String)> {
    let leaf = ca.issue(identity);
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let anchors = dir.join("anchors.pem");
    std::fs::write(&cert, &leaf.chain_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    std::fs::write(&anchors, ca.anchors_pem()).unwrap();
    vec![
        (env::CERT_FILE.into(), cert.display().to_string()),
        (env::KEY_FILE.into(), key.display().to_string()),
        (
            env::TRUST_ANCHORS_FILE.into(),
            anchors.display().to_string(),
        ),
    ]
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(vars: &[(String, String)], stderr: Stdio) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().stdout(Stdio::null()).stderr(stderr);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().unwrap())
}

fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path, "")
}

/// One HTTP/1.1 request on its own connection: the status and the whole
/// response text.
fn http_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    Some((status, out))
}

/// The body of an HTTP/1.1 response with a content-length.
fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Waits for `/ready`: a debug binary starting beside a busy test run (CI
/// builds the static binaries meanwhile) took over 10 s once.
fn wait_ready(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some((200, _)) = http_get(admin, "/ready") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("proxy at {admin} never became ready");
}

/// The server side of a pair: the binary in front of `app`, with its inbound
/// and admin addresses.
fn start_server(dir: &Path, ca: &TestCa, app: SocketAddr) -> (Proc, SocketAddr, SocketAddr) {
    let (inbound, admin) = (free_addr(), free_addr());
    let mut vars = write_identity(dir, "server", ca, SERVER_ID);
    vars.extend([
        (env::INBOUND_ADDR.into(), inbound.to_string()),
        (env::ADMIN_ADDR.into(), admin.to_string()),
        (env::APP_ADDR.into(), app.to_string()),
    ]);
    (spawn(&vars, Stdio::piped()), inbound, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_pair_serves_and_drains_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("weft-proxy-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = TestCa::new("weft test");
    let app = weft_tests::apps::http_echo().await;

    let (mut server, server_inbound, server_admin) = start_server(&dir, &ca, app);

    let client_admin = free_addr();
    let upstream = free_addr();
    let mut client_env = write_identity(&dir, "client", &ca, CLIENT_ID);
    client_env.extend([
        (env::INBOUND_ADDR.into(), free_addr().to_string()),
        (env::ADMIN_ADDR.into(), client_admin.to_string()),
        (env::APP_ADDR.into(), "127.0.0.1:9".into()),
        (
            env::UPSTREAMS.into(),
            format!("checkout,{upstream},{server_inbound},{SERVER_ID}"),
        ),
    ]);
    let client = spawn(&client_env, Stdio::piped());

    let (server_admin_c, client_admin_c) = (server_admin, client_admin);
    tokio::task::spawn_blocking(move || {
        wait_ready(server_admin_c);
        wait_ready(client_admin_c);
        let (status, text) = http_get(upstream, "/hello").unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(
            text.contains(&format!("x-seen-client-id: {CLIENT_ID}")),
            "{text}"
        );
        let (status, metrics) = http_get(client_admin_c, "/metrics").unwrap();
        assert_eq!(status, 200);
        assert!(
            metrics.contains("weft_requests_total{direction=\"outbound\""),
            "{metrics}"
        );
        let (status, _) = http_get(client_admin_c, "/live").unwrap();
        assert_eq!(status, 200);
    })
    .await
    .unwrap();

    // SIGTERM drains and exits cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "server proxy did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    drop(client);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_configuration_lists_every_problem_and_exits_2() {
    let out = Command::new(BIN)
        .env_clear()
        .env(env::INBOUND_ADDR, "not-an-address")
        .env(env::UPSTREAMS, "web,127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    for needle in [
        env::INBOUND_ADDR,
        env::UPSTREAMS,
        env::CERT_FILE,
        env::KEY_FILE,
        env::TRUST_ANCHORS_FILE,
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
}

/// `/config` shows what the proxy runs with (no secrets), and `/log-level`
/// changes the filter of the running process: a bad filter is refused with
/// the reason and the old one stays; a good one takes effect at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_shows_config_and_changes_the_log_level() {
    let dir = std::env::temp_dir().join(format!("weft-proxy-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = TestCa::new("weft test");
    let app = weft_tests::apps::http_echo().await;

    let (_server, server_inbound, server_admin) = start_server(&dir, &ca, app);

    let admin = free_addr();
    let upstream = free_addr();
    let log = dir.join("client.log");
    let mut client_env = write_identity(&dir, "client", &ca, CLIENT_ID);
    client_env.extend([
        (env::INBOUND_ADDR.into(), free_addr().to_string()),
        (env::ADMIN_ADDR.into(), admin.to_string()),
        (env::APP_ADDR.into(), "127.0.0.1:9".into()),
        (env::WORKER_THREADS.into(), "2".into()),
        (
            env::UPSTREAMS.into(),
            format!("checkout,{upstream},{server_inbound},{SERVER_ID}"),
        ),
    ]);
    let _client = spawn(&client_env, std::fs::File::create(&log).unwrap().into());

    let log_path = log.clone();
    tokio::task::spawn_blocking(move || {
        wait_ready(server_admin);
        wait_ready(admin);
        let (status, text) = http_get(admin, "/config").unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("content-type: application/json"), "{text}");
        let config: serde_json::Value = serde_json::from_str(body_of(&text)).unwrap();
        let up = &config["upstreams"][0];
        assert_eq!(up["name"], "checkout", "{config:#}");
        assert_eq!(up["listen"], upstream.to_string(), "{config:#}");
        let endpoint = &up["backends"][0]["endpoints"][0];
        assert_eq!(endpoint["addr"], server_inbound.to_string(), "{config:#}");
        assert_eq!(endpoint["identity"], SERVER_ID, "{config:#}");
        assert_eq!(config["admin"], admin.to_string(), "{config:#}");
        assert_eq!(config["certificate"]["identity"], CLIENT_ID, "{config:#}");
        assert!(
            config["certificate"]["expires_in_seconds"]
                .as_i64()
                .unwrap()
                > 0
        );
        assert_eq!(config["trust_anchors"], 1, "{config:#}");
        assert_eq!(config["process"]["worker_threads"], 2, "{config:#}");
        assert_eq!(config["process"]["identity_source"]["source"], "files");
        assert!(config["transparent"].is_null(), "{config:#}");
        assert_eq!(config["log_level"], "info", "{config:#}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");

        let (status, text) = http_get(admin, "/log-level").unwrap();
        assert_eq!((status, body_of(&text)), (200, "info\n"), "{text}");

        // A filter that does not parse is refused, and nothing changes.
        let (status, text) = http_request(admin, "PUT", "/log-level", "weft_proxy=loud").unwrap();
        assert_eq!(status, 400, "{text}");
        assert!(
            body_of(&text).starts_with("invalid log filter \"weft_proxy=loud\""),
            "{text}"
        );
        assert!(text.contains("the filter stays \"info\""), "{text}");
        let (_, text) = http_get(admin, "/log-level").unwrap();
        assert_eq!(body_of(&text), "info\n");
        let (status, _) = http_request(admin, "PUT", "/log-level", "").unwrap();
        assert_eq!(status, 400);
        let (status, _) = http_request(admin, "DELETE", "/log-level", "").unwrap();
        assert_eq!(status, 405);

        // Before the change, a request logs nothing at debug level; after it,
        // the same request does.
        let (status, _) = http_get(upstream, "/before").unwrap();
        assert_eq!(status, 200);
        assert!(
            !std::fs::read_to_string(&log_path)
                .unwrap()
                .contains("DEBUG")
        );
        let (status, text) =
            http_request(admin, "PUT", "/log-level", "info,weft_proxy=debug").unwrap();
        assert_eq!(status, 200, "{text}");
        let (_, text) = http_get(admin, "/log-level").unwrap();
        assert_eq!(body_of(&text), "info,weft_proxy=debug\n");
        let (status, _) = http_get(upstream, "/after").unwrap();
        assert_eq!(status, 200);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let written = std::fs::read_to_string(&log_path).unwrap();
            if written.contains("DEBUG") {
                assert!(written.contains("log filter changed"), "{written}");
                assert!(written.contains("outbound request"), "{written}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no debug line after the change:\n{written}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

/// What an injected pod relies on: anchors given as PEM text, `/shutdown`
/// turned off, and `weft-proxy --wait-ready` (the classic sidecar's postStart
/// hook) exiting 0 once the proxy is ready and 1 when none answers in time.
#[test]
fn pod_mode_inline_anchors_wait_ready_and_no_shutdown_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("weft test");
    let admin = free_addr();
    let mut vars: Vec<(String, String)> = write_identity(dir.path(), "pod", &ca, SERVER_ID)
        .into_iter()
        .filter(|(k, _)| k != env::TRUST_ANCHORS_FILE)
        .collect();
    vars.extend([
        (env::TRUST_ANCHORS.into(), ca.anchors_pem().to_owned()),
        (env::SHUTDOWN_ENDPOINT.into(), "false".into()),
        (env::INBOUND_ADDR.into(), free_addr().to_string()),
        (env::ADMIN_ADDR.into(), admin.to_string()),
        (env::APP_ADDR.into(), "127.0.0.1:9".into()),
    ]);
    let _proxy = spawn(&vars, Stdio::null());

    let wait = Command::new(BIN)
        .args(["--wait-ready", "20"])
        .env(env::ADMIN_ADDR, admin.to_string())
        .output()
        .unwrap();
    assert_eq!(wait.status.code(), Some(0), "{wait:?}");
    assert_eq!(http_get(admin, "/ready").unwrap().0, 200);

    let (status, text) = http_request(admin, "POST", "/shutdown", "").unwrap();
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("WEFT_PROXY_SHUTDOWN_ENDPOINT=false"),
        "{text}"
    );
    let (_, text) = http_get(admin, "/config").unwrap();
    let config: serde_json::Value = serde_json::from_str(body_of(&text)).unwrap();
    assert_eq!(
        config["process"]["trust_anchors"]["inline_bytes"],
        ca.anchors_pem().len(),
        "{config:#}"
    );
    assert_eq!(config["shutdown_endpoint"], false, "{config:#}");
    // Still serving after the refused shutdown.
    assert_eq!(http_get(admin, "/live").unwrap().0, 200);

    // Nothing listens on this port: not ready in time, exit 1.
    let nobody = free_addr();
    let started = Instant::now();
    let wait = Command::new(BIN)
        .args(["--wait-ready", "1"])
        .env(env::ADMIN_ADDR, nobody.to_string())
        .output()
        .unwrap();
    assert_eq!(wait.status.code(), Some(1), "{wait:?}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    let err = String::from_utf8_lossy(&wait.stderr);
    assert!(err.contains("was not ready within 1 s"), "{err}");
}

// --- Faults: drains with requests in flight, a peer killed mid-traffic. ---

/// A pair of proxy binaries in front of a [`HeldApp`], each side's
/// environment kept so that it can be started again the same way.
struct FaultPair {
    dir: std::path::PathBuf,
    app: weft_tests::apps::HeldApp,
    server: Proc,
    server_vars: Vec<(String, String)>,
    server_inbound: SocketAddr,
    server_admin: SocketAddr,
    client: Proc,
    client_admin: SocketAddr,
    upstream: SocketAddr,
}

impl FaultPair {
    async fn start(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("weft-proxy-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = TestCa::new("weft test");
        let app = weft_tests::apps::HeldApp::start().await;
        let (server_inbound, server_admin) = (free_addr(), free_addr());
        let mut server_vars = write_identity(&dir, "server", &ca, SERVER_ID);
        server_vars.extend([
            (env::INBOUND_ADDR.into(), server_inbound.to_string()),
            (env::ADMIN_ADDR.into(), server_admin.to_string()),
            (env::APP_ADDR.into(), app.addr.to_string()),
            (env::SHUTDOWN_GRACE.into(), "60".into()),
        ]);
        let server = spawn(&server_vars, Stdio::inherit());
        let (client_admin, upstream) = (free_addr(), free_addr());
        let mut client_vars = write_identity(&dir, "client", &ca, CLIENT_ID);
        client_vars.extend([
            (env::INBOUND_ADDR.into(), free_addr().to_string()),
            (env::ADMIN_ADDR.into(), client_admin.to_string()),
            (env::APP_ADDR.into(), "127.0.0.1:9".into()),
            (env::SHUTDOWN_GRACE.into(), "60".into()),
            (
                env::UPSTREAMS.into(),
                format!("checkout,{upstream},{server_inbound},{SERVER_ID}"),
            ),
        ]);
        let client = spawn(&client_vars, Stdio::inherit());
        tokio::task::spawn_blocking(move || {
            wait_ready(server_admin);
            wait_ready(client_admin);
        })
        .await
        .unwrap();
        Self {
            dir,
            app,
            server,
            server_vars,
            server_inbound,
            server_admin,
            client,
            client_admin,
            upstream,
        }
    }
}

impl Drop for FaultPair {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

type H1 = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>;

async fn h1(addr: SocketAddr) -> H1 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

async fn h2(addr: SocketAddr) -> H2 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

fn get(path: &str) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::get(format!("http://checkout{path}"))
        .body(http_body_util::Empty::new())
        .unwrap()
}

/// What a request through the pair got: the status, the `weft-proxy-error`
/// header, and the body (or the error that cut it).
#[derive(Debug)]
struct Outcome {
    status: u16,
    proxy_error: Option<String>,
    body: Result<String, String>,
}

async fn outcome(
    rsp: Result<http::Response<hyper::body::Incoming>, hyper::Error>,
) -> Result<Outcome, String> {
    use http_body_util::BodyExt;
    let rsp = rsp.map_err(|e| format!("request: {e}"))?;
    let status = rsp.status().as_u16();
    let proxy_error = rsp
        .headers()
        .get(weft_api::consts::PROXY_ERROR_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = rsp
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .map_err(|e| format!("body: {e}"));
    Ok(Outcome {
        status,
        proxy_error,
        body,
    })
}

/// 100 requests in flight through the pair, held by the app: 30 HTTP/1.1
/// connections with a held answer, 20 with a streaming answer cut after its
/// first chunk, and one HTTP/2 connection with 30 held and 20 streaming
/// streams. Each task returns its path and outcome.
async fn hundred_in_flight(
    pair: &FaultPair,
) -> tokio::task::JoinSet<(&'static str, Result<Outcome, String>)> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let path = if i < 30 { "/held" } else { "/stream" };
        let mut tx = h1(pair.upstream).await;
        tasks.spawn(async move { (path, outcome(tx.send_request(get(path)).await).await) });
    }
    let tx = h2(pair.upstream).await;
    for i in 0..50 {
        let path = if i < 30 { "/held" } else { "/stream" };
        let mut tx = tx.clone();
        tasks.spawn(async move { (path, outcome(tx.send_request(get(path)).await).await) });
    }
    pair.app.wait_held(100, Duration::from_secs(60)).await;
    tasks
}

/// Waits until connecting to `addr` is refused (or reset).
async fn wait_refused(addr: SocketAddr, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            // Refused, or reset when the connection was queued on the
            // listener as it closed: either way at once, never a hang.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                return;
            }
            Err(e) => panic!("{what}: connecting to {addr} failed with {e}, not a refusal"),
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what}: {addr} still accepts connections 20 s into the drain"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Waits (bounded) for a process to exit; its status.
async fn wait_exit(proc: &mut Proc, limit: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(status) = proc.0.try_wait().unwrap() {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not exit within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Clone, Copy, Debug)]
enum Stop {
    Sigterm,
    PostShutdown,
}

#[derive(Clone, Copy, Debug)]
enum Side {
    Server,
    Client,
}

/// Drains one side of the pair with 100 requests in flight: the listener
/// that side serves new callers on refuses them, every request in flight is
/// answered in full, and the process exits 0.
async fn drain_with_requests_in_flight(side: Side, stop: Stop) {
    let mut pair = FaultPair::start(&format!("drain-{side:?}-{stop:?}")).await;
    let mut tasks = hundred_in_flight(&pair).await;
    eprintln!("{} requests held by the app", pair.app.held());
    let (admin, listener) = match side {
        Side::Server => (pair.server_admin, pair.server_inbound),
        Side::Client => (pair.client_admin, pair.upstream),
    };
    let started = Instant::now();
    match stop {
        Stop::Sigterm => {
            let proc = match side {
                Side::Server => &pair.server,
                Side::Client => &pair.client,
            };
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(proc.0.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
        }
        Stop::PostShutdown => {
            let (status, text) =
                tokio::task::spawn_blocking(move || http_request(admin, "POST", "/shutdown", ""))
                    .await
                    .unwrap()
                    .expect("the admin server answers");
            assert_eq!(status, 200, "{text}");
        }
    }
    // New callers are refused while the held requests are still in flight.
    wait_refused(listener, "draining").await;
    assert_eq!(
        pair.app.held(),
        100,
        "a held request ended before the release"
    );
    eprintln!(
        "{side:?} refuses new connections {:?} into the drain",
        started.elapsed()
    );
    pair.app.release();
    let mut answered = 0;
    while let Some(done) = tasks.join_next().await {
        let (path, outcome) = done.unwrap();
        let outcome = outcome.unwrap_or_else(|e| panic!("{path}: {e}"));
        let want = if path == "/stream" {
            weft_tests::apps::HELD_STREAM_BODY
        } else {
            "held"
        };
        assert_eq!(outcome.status, 200, "{path}: {outcome:?}");
        assert_eq!(outcome.body.as_deref(), Ok(want), "{path}: {outcome:?}");
        answered += 1;
    }
    assert_eq!(answered, 100);
    let proc = match side {
        Side::Server => &mut pair.server,
        Side::Client => &mut pair.client,
    };
    let status = wait_exit(proc, Duration::from_secs(30), "the drained proxy").await;
    eprintln!(
        "100 of 100 in-flight requests answered in full; {side:?} exited {status} {:?} after {stop:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_proxy_drains_100_requests_in_flight_on_sigterm() {
    drain_with_requests_in_flight(Side::Server, Stop::Sigterm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_proxy_drains_100_requests_in_flight_on_post_shutdown() {
    drain_with_requests_in_flight(Side::Server, Stop::PostShutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_proxy_drains_100_requests_in_flight_on_sigterm() {
    drain_with_requests_in_flight(Side::Client, Stop::Sigterm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_proxy_drains_100_requests_in_flight_on_post_shutdown() {
    drain_with_requests_in_flight(Side::Client, Stop::PostShutdown).await;
}

/// The client proxy's open descriptors and live tokio tasks, from its /metrics.
async fn usage(admin: SocketAddr) -> (f64, f64) {
    let (status, text) = tokio::task::spawn_blocking(move || http_get(admin, "/metrics"))
        .await
        .unwrap()
        .expect("metrics");
    assert_eq!(status, 200);
    let text = body_of(&text).to_owned();
    (
        weft_tests::mesh::sample(&text, "process_open_fds").expect("process_open_fds"),
        weft_tests::mesh::sample(&text, "weft_runtime_alive_tasks")
            .expect("weft_runtime_alive_tasks"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_killed_mid_traffic_fails_fast_recovers_and_leaks_nothing() {
    let mut pair = FaultPair::start("dead-peer").await;
    // Warm-up: the client proxy's pool holds its connection to the peer.
    for _ in 0..3 {
        let rsp = outcome(h1(pair.upstream).await.send_request(get("/now")).await).await;
        assert_eq!(rsp.unwrap().status, 200);
        let rsp = outcome(h2(pair.upstream).await.send_request(get("/now")).await).await;
        assert_eq!(rsp.unwrap().status, 200);
    }
    let (fds0, tasks0) = usage(pair.client_admin).await;

    // 40 requests in flight: held answers and answers cut mid-body, over
    // HTTP/1.1 and HTTP/2.
    let mut tasks = tokio::task::JoinSet::new();
    let h2_tx = h2(pair.upstream).await;
    // Streaming answers count here once their head reached the client.
    let heads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for i in 0..40 {
        let path = if i % 2 == 0 { "/held" } else { "/stream" };
        let proto = if i < 20 { "h1" } else { "h2" };
        let rsp = if i < 20 {
            let mut tx = h1(pair.upstream).await;
            Box::pin(async move { tx.send_request(get(path)).await })
                as std::pin::Pin<Box<dyn Future<Output = _> + Send>>
        } else {
            let mut tx = h2_tx.clone();
            Box::pin(async move { tx.send_request(get(path)).await })
        };
        let heads = heads.clone();
        tasks.spawn(async move {
            let rsp = rsp.await;
            if rsp.is_ok() {
                heads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            (proto, path, outcome(rsp).await)
        });
    }
    pair.app.wait_held(40, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while heads.load(std::sync::atomic::Ordering::SeqCst) < 20 {
        assert!(
            Instant::now() < deadline,
            "the streaming heads did not reach the client"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    pair.server.0.kill().unwrap();
    let killed = Instant::now();
    let _ = pair.server.0.wait();
    let mut slowest = Duration::ZERO;
    while let Some(done) = tokio::time::timeout(Duration::from_secs(15), tasks.join_next())
        .await
        .expect("a request through the killed peer hung for 15 s")
    {
        let (proto, path, got) = done.unwrap();
        slowest = slowest.max(killed.elapsed());
        match (path, got) {
            // A held request had no answer yet: the proxy answers it.
            ("/held", Ok(o)) => {
                assert_eq!(o.status, 502, "{proto} {path}: {o:?}");
                assert_eq!(
                    o.proxy_error.as_deref(),
                    Some("peer-unavailable"),
                    "{proto} {path}: {o:?}"
                );
            }
            // A streaming answer had its head: its body is cut, never completed.
            ("/stream", Ok(o)) => {
                assert_eq!(o.status, 200, "{proto} {path}: {o:?}");
                assert!(
                    o.body.is_err(),
                    "{proto} {path}: the cut body completed: {o:?}"
                );
            }
            // HTTP/2 may see the stream reset instead.
            (_, Err(e)) if proto == "h2" => eprintln!("{proto} {path}: {e}"),
            (_, Err(e)) => panic!("{proto} {path}: {e}"),
            _ => unreachable!(),
        }
    }
    eprintln!("every in-flight request ended {slowest:?} after the SIGKILL at the latest");

    // While the peer is gone, a new request is refused at once, with the
    // reason: nothing listens on the peer's port any more.
    let asked = Instant::now();
    let o = outcome(h1(pair.upstream).await.send_request(get("/now")).await)
        .await
        .unwrap();
    assert_eq!(o.status, 502, "{o:?}");
    assert_eq!(o.proxy_error.as_deref(), Some("connect-refused"), "{o:?}");
    eprintln!(
        "a request to the dead peer answered 502 connect-refused in {:?}",
        asked.elapsed()
    );
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );

    // The peer is back on the same address: the next request succeeds.
    pair.server = spawn(&pair.server_vars, Stdio::inherit());
    let admin = pair.server_admin;
    tokio::task::spawn_blocking(move || wait_ready(admin))
        .await
        .unwrap();
    for (proto, o) in [
        (
            "h1",
            outcome(h1(pair.upstream).await.send_request(get("/now")).await).await,
        ),
        (
            "h2",
            outcome(h2(pair.upstream).await.send_request(get("/now")).await).await,
        ),
    ] {
        let o = o.unwrap();
        assert_eq!(
            (o.status, o.body.as_deref()),
            (200, Ok("now")),
            "{proto} after the restart: {o:?}"
        );
    }
    drop(h2_tx);

    // Nothing leaked in the client proxy: descriptors and tasks come back to
    // what they were before the fault.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (fds, tasks) = usage(pair.client_admin).await;
        if fds <= fds0 && tasks <= tasks0 {
            eprintln!(
                "client proxy: {fds0} fds and {tasks0} tasks before, {fds} and {tasks} after"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "client proxy: {fds0} fds and {tasks0} tasks before the fault, still {fds} and {tasks} 30 s after"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
