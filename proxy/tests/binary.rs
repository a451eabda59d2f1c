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
