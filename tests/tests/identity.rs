//! Workload identity end to end: a local controller in process, proxies that
//! get their certificates from it with `Identity.Certify` (key in memory,
//! renewal at 70 %), and real HTTP traffic from an app client through a
//! client proxy to a server proxy and an echo app. Every request is counted;
//! every one must be a 200 with its body echoed.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use weft_api::Identity;
use weft_controller::ca::{IssuerPem, RootCa};
use weft_tests::apps;
use weft_tests::control::{IdentityPair, Sidecar, TestControl, anchors_tls};
use weft_tests::load::{Load, Tally};
use weft_tests::mesh::{CLIENT_ID, SERVER_ID, client_proxy};

fn assert_all_ok(what: &str, tally: &Tally) {
    assert!(tally.sent > 0, "{what}: no request was sent");
    assert_eq!(
        tally.failed, 0,
        "{what}: {} of {} requests failed; first failures: {:#?}",
        tally.failed, tally.sent, tally.failures
    );
    assert_eq!(tally.ok, tally.sent, "{what}: every request answered 200");
}

/// Sends traffic for `duration`, printing progress every 10 s.
async fn keep_sending(load: &Load, what: &str, duration: Duration) {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        tokio::time::sleep((end - Instant::now()).min(Duration::from_secs(10))).await;
        let (sent, failed) = load.progress();
        eprintln!("[{what}] {sent} requests sent, {failed} failed");
    }
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_renew_under_traffic_without_failed_requests() {
    let started = Instant::now();
    let control = TestControl::start(Duration::from_secs(10)).await;
    let app = apps::http_echo().await;
    let pair = IdentityPair::start(&control, app, Duration::from_secs(1)).await;
    pair.wait_ready(Duration::from_secs(20)).await;
    let first_ok = [
        pair.client.certify_counts().await.0,
        pair.server.certify_counts().await.0,
    ];

    let load = Load::start(pair.entry);
    keep_sending(&load, "renewal", Duration::from_secs(60)).await;
    let tally = load.finish().await;

    let mut renewals = Vec::new();
    for (side, first) in [(&pair.client, first_ok[0]), (&pair.server, first_ok[1])] {
        let (ok, errors) = side.certify_counts().await;
        eprintln!("certify: ok {ok} (first {first}), errors {errors}");
        renewals.push(ok - first);
    }
    eprintln!(
        "{} requests, all 200; renewals client {} server {}; {:?}",
        tally.sent,
        renewals[0],
        renewals[1],
        started.elapsed()
    );
    assert_all_ok("renewal", &tally);
    // 10 s certificates are renewed every 6-7 s: about 9 in 60 s.
    for (side, n) in ["client", "server"].iter().zip(&renewals) {
        assert!(*n >= 5.0, "the {side} proxy renewed {n} times in 60 s");
    }
    let valid = pair.server.not_after().unwrap();
    assert!(valid > SystemTime::now() && valid < SystemTime::now() + Duration::from_secs(11));
    // The server proxy's first certificate expired 50 s ago: a new client's
    // handshake succeeds only with the renewed one it serves now.
    let fresh = through_a_new_client(&control, &pair).await;
    eprintln!("{} requests through a new client, all 200", fresh.sent);
    assert_all_ok("a new client after the renewals", &fresh);
    pair.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_started_before_the_controller_becomes_ready_when_it_starts() {
    let mut control = TestControl::prepare(Duration::from_secs(60));
    let app = apps::http_echo().await;
    let pair = IdentityPair::start(&control, app, Duration::from_secs(1)).await;

    // No controller yet: both proxies try, fail, and say they are not ready.
    wait_for(
        "a failed Certify on both sides",
        Duration::from_secs(20),
        async || {
            pair.client.certify_counts().await.1 >= 1.0
                && pair.server.certify_counts().await.1 >= 1.0
        },
    )
    .await;
    for side in [&pair.client, &pair.server] {
        assert_eq!(side.ready_status().await, 503);
        assert!(side.not_after().is_none());
    }

    let since = Instant::now();
    control.start_controller().await;
    // The retry backoff is at most a few seconds at this point.
    pair.wait_ready(Duration::from_secs(30)).await;
    eprintln!("ready {:?} after the controller started", since.elapsed());

    let load = Load::start(pair.entry);
    load.wait_answered(100, Duration::from_secs(60)).await;
    let tally = load.finish().await;
    eprintln!("{} requests after readiness", tally.sent);
    assert_all_ok("after the controller started", &tally);
    pair.shutdown().await;
    control.stop_controller().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_stopped_mid_traffic_fails_no_request_while_certificates_are_valid() {
    // 20 s certificates: renewal is tried 12-14 s after issuance, while the
    // controller is down; the certificate stays valid until 20 s.
    let mut control = TestControl::start(Duration::from_secs(20)).await;
    let app = apps::http_echo().await;
    let pair = IdentityPair::start(&control, app, Duration::from_secs(1)).await;
    pair.wait_ready(Duration::from_secs(20)).await;
    let errors_before = [
        pair.client.certify_counts().await.1,
        pair.server.certify_counts().await.1,
    ];

    let load = Load::start(pair.entry);
    load.wait_answered(100, Duration::from_secs(60)).await;
    control.stop_controller().await;
    eprintln!("controller stopped; traffic continues");
    // Keep sending until 2 s before the first certificate of the pair expires.
    let expires = pair
        .client
        .not_after()
        .unwrap()
        .min(pair.server.not_after().unwrap());
    let left = expires
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .saturating_sub(Duration::from_secs(2));
    assert!(
        left >= Duration::from_secs(4),
        "only {left:?} of validity left"
    );
    keep_sending(&load, "controller down", left).await;
    let tally = load.finish().await;

    let errors_after = [
        pair.client.certify_counts().await.1,
        pair.server.certify_counts().await.1,
    ];
    eprintln!(
        "{} requests with the controller down for {left:?}; failed renewals {errors_before:?} -> {errors_after:?}",
        tally.sent
    );
    assert_all_ok("controller down", &tally);
    // Both proxies tried to renew while the controller was down, failed,
    // and kept serving with the certificate they had.
    for (before, after) in errors_before.iter().zip(&errors_after) {
        assert!(
            after > before,
            "no renewal was attempted while the controller was down"
        );
    }
    for side in [&pair.client, &pair.server] {
        assert_eq!(side.ready_status().await, 200);
    }
    pair.shutdown().await;
}

/// The certificate that issued a sidecar's leaf.
fn leaf_issuer(side: &Sidecar) -> Vec<u8> {
    side.tls.credentials().unwrap().chain()[1].as_ref().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_anchor_rotation_under_traffic_fails_no_request() {
    let started = Instant::now();
    let control = TestControl::start(Duration::from_secs(10)).await;
    let app = apps::http_echo().await;
    let reload = Duration::from_millis(200);
    let pair = IdentityPair::start(&control, app, reload).await;
    pair.wait_ready(Duration::from_secs(20)).await;
    let old_root = control.anchors_pem();
    let new_root = RootCa::generate("cluster.local", Duration::from_secs(86_400)).unwrap();
    let both = format!("{old_root}{}", new_root.cert_pem());

    let load = Load::start(pair.entry);
    keep_sending(&load, "rotation: old root", Duration::from_secs(3)).await;

    // 1. Proxies trust old + new.
    std::fs::write(&pair.anchors_file, &both).unwrap();
    wait_for(
        "proxies reload old + new",
        Duration::from_secs(10),
        async || {
            pair.client.tls.trust_anchors().len() == 2 && pair.server.tls.trust_anchors().len() == 2
        },
    )
    .await;
    eprintln!(
        "[rotation] proxies trust old + new ({:?})",
        started.elapsed()
    );
    keep_sending(&load, "rotation: old + new", Duration::from_secs(3)).await;

    // 2. The controller's issuer moves under the new root; the proxies renew under it.
    let old_issuer = control.controller().ca().issuer().chain()[0].clone();
    let now = SystemTime::now();
    IssuerPem {
        anchors: both.clone(),
        ..new_root
            .issue_issuer(
                now - Duration::from_secs(60),
                now + Duration::from_secs(86_400),
            )
            .unwrap()
    }
    .write(control.issuer_dir())
    .unwrap();
    wait_for(
        "the controller loads the new issuer",
        Duration::from_secs(10),
        async || control.controller().ca().issuer().chain()[0] != old_issuer,
    )
    .await;
    let new_issuer = control.controller().ca().issuer().chain()[0]
        .as_ref()
        .to_vec();
    // Renewal every 6-7 s; allow a loaded machine plenty.
    wait_for(
        "both proxies renewed under the new issuer",
        Duration::from_secs(30),
        async || leaf_issuer(&pair.client) == new_issuer && leaf_issuer(&pair.server) == new_issuer,
    )
    .await;
    wait_for(
        "the controller's own certificate under the new issuer",
        Duration::from_secs(30),
        async || {
            control.controller().tls().credentials().unwrap().chain()[1].as_ref()
                == new_issuer.as_slice()
        },
    )
    .await;
    eprintln!(
        "[rotation] proxies and controller reissued under the new root ({:?})",
        started.elapsed()
    );
    keep_sending(&load, "rotation: new issuer", Duration::from_secs(3)).await;

    // 3. Proxies trust the new root only.
    std::fs::write(&pair.anchors_file, new_root.cert_pem()).unwrap();
    wait_for(
        "proxies reload new only",
        Duration::from_secs(10),
        async || {
            pair.client.tls.trust_anchors().len() == 1 && pair.server.tls.trust_anchors().len() == 1
        },
    )
    .await;
    eprintln!(
        "[rotation] proxies trust the new root only ({:?})",
        started.elapsed()
    );
    // Renewals keep working against the controller (its certificate is under the new root).
    let ok_before = pair.client.certify_counts().await.0;
    keep_sending(&load, "rotation: new only", Duration::from_secs(10)).await;
    let tally = load.finish().await;
    assert!(
        pair.client.certify_counts().await.0 > ok_before,
        "the client proxy renewed with the new root only"
    );
    assert_all_ok("rotation", &tally);

    // A new client proxy that knows only the new root: a new handshake with the
    // server proxy in both directions.
    let fresh = through_a_new_client(&control, &pair).await;
    assert_all_ok("a new client with the new root only", &fresh);
    eprintln!(
        "rotation: {} requests through the pair, {} through a new client, all 200; {:?}",
        tally.sent,
        fresh.sent,
        started.elapsed()
    );
    pair.shutdown().await;
}

/// Starts a new client proxy (certified by the controller, trusting the
/// anchors in the pair's file) and sends 2 s of traffic through it to the
/// pair's server proxy: a new handshake with the certificate the server
/// proxy holds now.
async fn through_a_new_client(control: &TestControl, pair: &IdentityPair) -> Tally {
    let tls = anchors_tls(&pair.anchors_file);
    let client_id: Identity = CLIENT_ID.parse().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(weft_proxy::identity::run(
        control.certify_config(&client_id),
        tls.clone(),
        std::sync::Arc::new(weft_proxy::metrics::Metrics::new()),
        stop.clone(),
    ));
    let client = client_proxy(
        tls.clone(),
        "checkout",
        pair.server.proxy.inbound_addr,
        SERVER_ID,
        false,
    )
    .await;
    wait_for(
        "the new client is certified",
        Duration::from_secs(20),
        async || tls.credentials().is_some(),
    )
    .await;
    let load = Load::start(client.upstream_addr("checkout").unwrap());
    load.wait_answered(100, Duration::from_secs(60)).await;
    let tally = load.finish().await;
    stop.cancel();
    run.await.unwrap();
    client.shutdown(Duration::from_secs(1)).await;
    tally
}

/// The `openat` and other file calls in an strace log that create or write
/// files, outside `/dev` and `/proc`.
fn file_writes(trace: &str) -> Vec<String> {
    const CREATING: [&str; 9] = [
        "creat(",
        "mkdir",
        "rename",
        "link(",
        "linkat(",
        "symlink",
        "unlink",
        "truncate(",
        "mknod",
    ];
    trace
        .lines()
        .filter(|line| {
            let Some(call) = line.split_whitespace().nth(1) else {
                return false;
            };
            let path = line.split('"').nth(1).unwrap_or("");
            let special = path.starts_with("/dev/") || path.starts_with("/proc/");
            let opens = call.starts_with("open(")
                || call.starts_with("openat(")
                || call.starts_with("openat2(");
            let writable =
                line.contains("O_WRONLY") || line.contains("O_RDWR") || line.contains("O_CREAT");
            (opens && writable && !special) || CREATING.iter().any(|c| call.starts_with(c))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn file_writes_finds_what_creates_or_writes_files() {
    let trace = "\
12 openat(AT_FDCWD, \"/tmp/key.pem\", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 3
12 openat(AT_FDCWD, \"/tmp/token\", O_RDONLY|O_CLOEXEC) = 3
12 openat(AT_FDCWD, \"/dev/null\", O_RDWR|O_CLOEXEC) = 3
12 openat(AT_FDCWD, \"/tmp/x\", O_RDWR) = 3
12 rename(\"/tmp/a\", \"/tmp/b\") = 0
12 write(2, \"hello\", 5) = 5
";
    let found = file_writes(trace);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found[0].contains("key.pem") && found[1].contains("/tmp/x") && found[2].contains("rename")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_binary_never_writes_a_file() {
    use weft_api::consts::env;
    use weft_tests::skip::{Reason, skip};
    match std::process::Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "true"])
        .output()
    {
        Err(e) => {
            skip(&Reason::tool(
                "strace",
                format!("{e}; apt-get install strace"),
            ));
            return;
        }
        Ok(out) if !out.status.success() => {
            skip(&Reason::Missing(format!(
                "strace cannot trace here (ptrace not permitted?): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
            return;
        }
        Ok(_) => {}
    }
    let proxy_bin = weft_tests::netns::workspace_binary("weft-proxy").unwrap();
    let control = TestControl::start(Duration::from_secs(60)).await;
    let app = apps::http_echo().await;
    let dir = control.state.path();
    let id: Identity = SERVER_ID.parse().unwrap();
    let token_file = control.token_file(&id);
    let anchors_file = dir.join("proxy-anchors.pem");
    std::fs::write(&anchors_file, control.anchors_pem()).unwrap();
    let trace_file = dir.join("strace.txt");
    let admin = weft_tests::control::free_port();
    let inbound = weft_tests::control::free_port();
    let mut child = tokio::process::Command::new("strace")
        .args(["-f", "-qq", "-s", "128", "-e", "trace=%file,write", "-o"])
        .arg(&trace_file)
        .arg(&proxy_bin)
        .env(env::CONTROLLER_ADDR, control.grpc_addr().to_string())
        .env(env::IDENTITY, SERVER_ID)
        .env(env::IDENTITY_TOKEN_FILE, &token_file)
        .env(env::TRUST_ANCHORS_FILE, &anchors_file)
        .env(env::TRUST_ANCHORS_RELOAD, "1")
        .env(env::INBOUND_ADDR, inbound.to_string())
        .env(env::ADMIN_ADDR, admin.to_string())
        .env(env::APP_ADDR, app.to_string())
        .env(env::SHUTDOWN_GRACE, "1")
        .current_dir(dir)
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Ready means it generated its key and holds a certificate for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while weft_tests::control::admin_get(admin, "/ready").await != 200 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the proxy exited before it was ready: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the proxy was not ready after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A request through it, then a clean stop.
    let client_id: Identity = CLIENT_ID.parse().unwrap();
    let tls = anchors_tls(&anchors_file);
    let run = tokio::spawn(weft_proxy::identity::run(
        control.certify_config(&client_id),
        tls.clone(),
        std::sync::Arc::new(weft_proxy::metrics::Metrics::new()),
        tokio_util::sync::CancellationToken::new(),
    ));
    let client = client_proxy(tls.clone(), "checkout", inbound, SERVER_ID, false).await;
    wait_for(
        "the client is certified",
        Duration::from_secs(20),
        async || tls.credentials().is_some(),
    )
    .await;
    let load = Load::start(client.upstream_addr("checkout").unwrap());
    load.wait_answered(100, Duration::from_secs(60)).await;
    let tally = load.finish().await;
    assert_all_ok("through the traced proxy", &tally);
    run.abort();
    client.shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        weft_tests::control::admin_post(admin, "/shutdown").await,
        200
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the proxy stops within 20 s")
        .unwrap();
    assert!(status.success(), "the proxy exited with {status}");

    let trace = std::fs::read_to_string(&trace_file).unwrap();
    // The trace is real: it saw the proxy read its token and its anchors.
    let token = token_file.display().to_string();
    let anchors = anchors_file.display().to_string();
    assert!(
        trace
            .lines()
            .any(|l| l.contains("open") && l.contains(&token)),
        "no open of the token in the trace"
    );
    assert!(
        trace
            .lines()
            .any(|l| l.contains("open") && l.contains(&anchors)),
        "no open of the anchors in the trace"
    );
    let writes = file_writes(&trace);
    assert!(
        writes.is_empty(),
        "the proxy created or wrote files: {writes:#?}"
    );
    assert!(
        !trace.contains("PRIVATE KEY"),
        "the proxy wrote a PEM private key somewhere"
    );
    eprintln!(
        "strace: {} lines, no file opened for writing; {} requests through the proxy",
        trace.lines().count(),
        tally.sent
    );
}

/// A proxy binary certified by the controller at `control`'s address.
fn certified_proxy(
    control: &TestControl,
    identity: &str,
    extra: &[(&str, String)],
) -> (tokio::process::Child, std::net::SocketAddr) {
    use weft_api::consts::env;
    let bin = weft_tests::netns::workspace_binary("weft-proxy").unwrap();
    let dir = control.state.path();
    let id: Identity = identity.parse().unwrap();
    let anchors = dir.join(format!("{}-anchors.pem", id.service_account()));
    std::fs::write(&anchors, control.anchors_pem()).unwrap();
    let admin = weft_tests::control::free_port();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.env_clear()
        .env(env::CONTROLLER_ADDR, control.grpc_addr().to_string())
        .env(env::IDENTITY, identity)
        .env(env::IDENTITY_TOKEN_FILE, control.token_file(&id))
        .env(env::TRUST_ANCHORS_FILE, &anchors)
        .env(env::ADMIN_ADDR, admin.to_string())
        .env(env::SHUTDOWN_GRACE, "1")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    (cmd.spawn().unwrap(), admin)
}

/// The controller binary serving `control`'s state on its reserved address.
fn controller_binary(control: &TestControl, cert_lifetime: &str) -> tokio::process::Child {
    let bin = weft_tests::netns::workspace_binary("weft-controller").unwrap();
    tokio::process::Command::new(bin)
        .arg("serve")
        .arg("--state-dir")
        .arg(control.state.path())
        .args(["--grpc-addr", &control.grpc_addr().to_string()])
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--cert-lifetime",
            cert_lifetime,
        ])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// `weft_identity_certify_total{result}` of a proxy.
async fn certified(admin: std::net::SocketAddr, result: &str) -> f64 {
    let text = weft_tests::control::admin_metrics(admin).await;
    weft_tests::mesh::sample(
        &text,
        &format!("weft_identity_certify_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_with_sigkill_under_load_comes_back_and_the_proxies_renew_without_a_failed_request()
 {
    use weft_api::consts::env;
    // 10 s certificates: renewal is due 6-7 s after issuance.
    let control = TestControl::prepare(Duration::from_secs(10));
    let mut controller = controller_binary(&control, "10s");
    let app = apps::http_echo().await;
    let server_inbound = weft_tests::control::free_port();
    let upstream = weft_tests::control::free_port();
    let (_server, server_admin) = certified_proxy(
        &control,
        SERVER_ID,
        &[
            (env::INBOUND_ADDR, server_inbound.to_string()),
            (env::APP_ADDR, app.to_string()),
        ],
    );
    let (_client, client_admin) = certified_proxy(
        &control,
        CLIENT_ID,
        &[
            (
                env::INBOUND_ADDR,
                weft_tests::control::free_port().to_string(),
            ),
            (env::APP_ADDR, "127.0.0.1:9".into()),
            (
                env::UPSTREAMS,
                format!("checkout,{upstream},{server_inbound},{SERVER_ID}"),
            ),
        ],
    );
    let admins = [server_admin, client_admin];
    for admin in admins {
        wait_for("the proxy is ready", Duration::from_secs(60), async || {
            weft_tests::control::admin_get(admin, "/ready").await == 200
        })
        .await;
    }
    let load = Load::start(upstream);
    load.wait_answered(100, Duration::from_secs(60)).await;

    // SIGKILL: no goodbye, connections cut.
    controller.start_kill().unwrap();
    let _ = controller.wait().await;
    let killed = Instant::now();
    let mut failed = [0.0; 2];
    for (i, admin) in admins.iter().enumerate() {
        failed[i] = certified(*admin, "error").await;
    }
    eprintln!("controller killed; renewal errors so far {failed:?}");
    // Both proxies try to renew while it is dead, fail, and keep serving.
    for (i, admin) in admins.iter().enumerate() {
        let before = failed[i];
        wait_for("a failed renewal", Duration::from_secs(15), async || {
            certified(*admin, "error").await > before
        })
        .await;
    }
    let (sent, fails) = load.progress();
    eprintln!(
        "{sent} requests, {fails} failed; both proxies failed to renew {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(fails, 0, "a request failed while the controller was dead");

    // Back on the same state and address: both renew.
    let ok_before = [
        certified(server_admin, "ok").await,
        certified(client_admin, "ok").await,
    ];
    let _controller = controller_binary(&control, "10s");
    let restarted = Instant::now();
    for (i, admin) in admins.iter().enumerate() {
        wait_for(
            "a renewal after the restart",
            Duration::from_secs(30),
            async || certified(*admin, "ok").await > ok_before[i],
        )
        .await;
    }
    eprintln!(
        "both proxies renewed {:?} after the restart",
        restarted.elapsed()
    );
    // Traffic goes on with the renewed certificates past the old ones' expiry
    // (issued before the kill, valid for 10 s).
    let past = (killed + Duration::from_secs(11)).saturating_duration_since(Instant::now());
    keep_sending(&load, "after the restart", past).await;
    let tally = load.finish().await;
    eprintln!(
        "{} requests in all, the controller dead for {:?}",
        tally.sent,
        restarted.duration_since(killed)
    );
    assert_all_ok("across the controller's SIGKILL and restart", &tally);
}
