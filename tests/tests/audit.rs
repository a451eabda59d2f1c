//! `weft audit` against a real mesh on loopback: a local controller certifies
//! two proxies (`weft_proxy::identity`, as sidecars do), one identity calls
//! the other over mTLS and a plaintext client calls the server directly; the
//! real `weft` binary then reads the proxies' admin servers (and headless
//! Chromium renders its HTML report).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use weft_tests::control::{IdentityPair, TestControl};
use weft_tests::mesh::{CLIENT_ID, SERVER_ID};
use weft_tests::prometheus::{Prometheus, tool};
use weft_tests::{apps, netns::workspace_binary};

const MTLS_CALLS: usize = 7;
const PLAIN_CALLS: usize = 3;

/// One HTTP/1.1 GET; the status code.
async fn get(addr: SocketAddr) -> u16 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let rsp = tx
        .send_request(
            http::Request::get("/")
                .header("host", "checkout")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = rsp.status().as_u16();
    rsp.into_body().collect().await.unwrap();
    status
}

/// The `weft` binary's JSON answer to `args`.
fn weft_json(args: &[String]) -> anyhow::Result<Value> {
    let out = weft(args)?;
    serde_json::from_slice(&out).with_context(|| String::from_utf8_lossy(&out).into_owned())
}

fn weft(args: &[String]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new(workspace_binary("weft")?)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .context("run weft")?;
    anyhow::ensure!(
        out.status.success(),
        "weft {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// A certified pair with `MTLS_CALLS` through the mesh and `PLAIN_CALLS`
/// straight to the server proxy's inbound port, every one answered.
struct Scene {
    _control: TestControl,
    pair: IdentityPair,
}

impl Scene {
    async fn start() -> Self {
        let control = TestControl::start(Duration::from_secs(3600)).await;
        let app = apps::http_echo().await;
        let pair = IdentityPair::start(&control, app, Duration::from_secs(60)).await;
        pair.wait_ready(Duration::from_secs(20)).await;
        for _ in 0..MTLS_CALLS {
            assert_eq!(get(pair.entry).await, 200);
        }
        for _ in 0..PLAIN_CALLS {
            assert_eq!(get(pair.server.proxy.inbound_addr).await, 200);
        }
        Self {
            _control: control,
            pair,
        }
    }

    fn proxy_args(&self) -> Vec<String> {
        [&self.pair.server, &self.pair.client]
            .iter()
            .flat_map(|s| ["--proxy".to_owned(), s.proxy.admin_addr.to_string()])
            .collect()
    }

    /// `weft audit edges --output json` once both counts are in (the proxy
    /// counts a request as its response goes out; Prometheus scrapes every
    /// second), within `within`.
    async fn edges(&self, extra: &[String], within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut args = vec![
                "audit".into(),
                "edges".into(),
                "--output".into(),
                "json".into(),
            ];
            args.extend_from_slice(extra);
            let report = weft_json(&args);
            let total = report.as_ref().ok().map(|r| {
                r["edges"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["requests"].as_u64())
                    .sum::<u64>()
            });
            if total == Some((MTLS_CALLS + PLAIN_CALLS) as u64)
                || tokio::time::Instant::now() > deadline
            {
                return report.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn assert_edges(report: &Value) {
    let edges = report["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 2, "{report:#}");
    let plain = &edges[0];
    assert_eq!(plain["caller"], "plaintext (unauthenticated)", "{report:#}");
    assert_eq!(plain["caller_identity"], Value::Null);
    assert_eq!(plain["callee"], SERVER_ID);
    assert_eq!(plain["mtls"], false);
    assert_eq!(plain["requests"], PLAIN_CALLS as u64, "{report:#}");
    assert_eq!(plain["allowed"], PLAIN_CALLS as u64, "{report:#}");
    assert_eq!(plain["policies"][0]["policy"], "default:allow-all");
    let mesh = &edges[1];
    assert_eq!(mesh["caller"], CLIENT_ID, "{report:#}");
    assert_eq!(mesh["callee"], SERVER_ID);
    assert_eq!(mesh["mtls"], true);
    assert_eq!(mesh["requests"], MTLS_CALLS as u64, "{report:#}");
    assert_eq!(mesh["allowed"], MTLS_CALLS as u64, "{report:#}");
    assert!(mesh["connections"].as_u64().unwrap() >= 1, "{report:#}");
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{report:#}");
    assert_eq!(findings[0]["kind"], "Plaintext");
    assert_eq!(findings[0]["severity"], "High");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_from_the_admin_servers_are_the_calls_made_mtls_or_not() {
    let scene = Scene::start().await;
    let report = scene
        .edges(&scene.proxy_args(), Duration::from_secs(10))
        .await;
    assert_edges(&report);
    assert_eq!(report["counted"], "since each proxy started");
    scene.pair.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_are_each_proxys_certificate_serial_and_expiry() {
    let scene = Scene::start().await;
    let mut args: Vec<String> = ["audit", "identities", "--output", "json"]
        .map(String::from)
        .to_vec();
    args.extend(scene.proxy_args());
    let report = weft_json(&args).unwrap();
    let identities = report["identities"].as_array().unwrap();
    assert_eq!(identities.len(), 2, "{report:#}");
    for (sidecar, id) in [
        (&scene.pair.client, CLIENT_ID),
        (&scene.pair.server, SERVER_ID),
    ] {
        let entry = identities.iter().find(|e| e["identity"] == id).unwrap();
        let holders = entry["workloads"].as_array().unwrap();
        assert_eq!(holders.len(), 1, "{report:#}");
        let credentials = sidecar.tls.credentials().unwrap();
        let serial = weft_api::tls::serial_hex(&credentials.chain()[0]).unwrap();
        let not_after = credentials
            .not_after()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(holders[0]["workload"], sidecar.proxy.admin_addr.to_string());
        assert_eq!(holders[0]["serial"], serial, "{report:#}");
        assert_eq!(holders[0]["not_after_unix"], not_after, "{report:#}");
        assert_eq!(holders[0]["state"], "ok");
        assert!(holders[0]["renewed_at_unix"].as_u64().unwrap() <= not_after);
    }
    assert_eq!(
        report["findings"].as_array().unwrap().len(),
        0,
        "{report:#}"
    );
    scene.pair.shutdown().await;
}

/// The target directory, where test artifacts are kept.
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe
        .ancestors()
        .nth(3)
        .unwrap()
        .join("test-artifacts")
        .join("audit");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tool the test needs; under CI its absence fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_report_renders_in_chromium_without_console_errors() {
    let Some(chromium) = tool("/usr/bin/chromium") else {
        return;
    };
    let scene = Scene::start().await;
    // Wait for the counts, then render the same data as HTML.
    assert_edges(
        &scene
            .edges(&scene.proxy_args(), Duration::from_secs(10))
            .await,
    );
    let mut args: Vec<String> = ["audit", "edges", "--output", "html"]
        .map(String::from)
        .to_vec();
    args.extend(scene.proxy_args());
    let html = weft(&args).unwrap();
    scene.pair.shutdown().await;
    let page = String::from_utf8(html).unwrap();
    assert!(page.contains("<svg"), "{page}");
    assert!(
        page.contains("stroke-dasharray"),
        "the plaintext edge is dashed: {page}"
    );
    assert!(!page.contains("<script"), "{page}");

    let dir = artifacts();
    let html_path = dir.join("edges.html");
    let png_path = dir.join("edges.png");
    std::fs::write(&html_path, &page).unwrap();
    let _ = std::fs::remove_file(&png_path);
    let profile = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--enable-logging=stderr",
            "--v=0",
            "--hide-scrollbars",
            "--window-size=1100,1400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png_path.display()))
        .arg(format!("file://{}", html_path.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let read = tokio::spawn(async move {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut tokio::io::BufReader::new(stderr), &mut text)
            .await
            .ok();
        text
    });
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("chromium finished within 60 s")
        .unwrap();
    let log = read.await.unwrap();
    std::fs::write(dir.join("chromium.log"), &log).unwrap();
    assert!(status.success(), "chromium failed: {log}");
    let console: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("CONSOLE") || l.contains("Content Security Policy") || l.contains("Uncaught")
        })
        .collect();
    assert!(console.is_empty(), "console messages: {console:#?}");

    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let pixels = &buf[..info.buffer_size()];
    let n = pixels.len() as f64;
    let mean = pixels.iter().map(|&b| f64::from(b)).sum::<f64>() / n;
    let variance = pixels
        .iter()
        .map(|&b| (f64::from(b) - mean).powi(2))
        .sum::<f64>()
        / n;
    assert!(info.width >= 800 && info.height >= 600, "{info:?}");
    assert!(
        variance > 100.0,
        "the screenshot looks blank (variance {variance})"
    );
    // Red of the plaintext edge or its row is on the page.
    let chunk = info.color_type.samples();
    let red = pixels
        .chunks(chunk)
        .filter(|p| p.len() >= 3 && p[0] > 180 && p[1] < 90 && p[2] < 90)
        .count();
    assert!(red > 50, "no red pixels in the screenshot ({red})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_from_prometheus_are_the_same_calls() {
    let Some(prometheus) = tool("/usr/bin/prometheus") else {
        return;
    };
    let scene = Scene::start().await;
    let targets = [&scene.pair.server, &scene.pair.client].map(|s| s.proxy.admin_addr);
    let server = Prometheus::start(&prometheus, &targets).await.unwrap();
    let url = server.url();
    let report = scene
        .edges(&["--prometheus".into(), url], Duration::from_secs(60))
        .await;
    drop(server);
    // Prometheus names workloads by `instance`: the proxies' admin addresses.
    assert_edges(&report);
    assert_eq!(
        report["edges"][1]["workloads"][0],
        scene.pair.server.proxy.admin_addr.to_string()
    );
    scene.pair.shutdown().await;
}

#[test]
fn policy_flags_a_service_without_policy_and_one_allowing_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("workloads.yaml"),
        "apiVersion: local.weft.io/v1alpha1
kind: Workloads
services:
  - name: checkout
    namespace: shop
    ports: [8080]
    endpoints:
      - address: 127.0.0.1:18080
        serviceAccount: checkout
  - name: billing
    namespace: shop
    ports: [8081]
    endpoints:
      - address: 127.0.0.1:18081
        serviceAccount: billing
",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        "apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: { name: checkout-callers, namespace: shop }
spec:
  targetRef: { group: \"\", kind: Service, name: checkout }
  ports: [8080]
  allowPlaintext: true
  rules:
    - from: { serviceAccounts: [{ name: web }] }
---
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: { name: ghost-callers, namespace: shop }
spec:
  targetRef: { group: \"\", kind: Service, name: ghost }
  rules:
    - from: { serviceAccounts: [{ name: web }] }
",
    )
    .unwrap();
    let dir_arg = dir.path().display().to_string();
    let report = weft_json(
        &[
            "audit",
            "policy",
            "--output",
            "json",
            "--policy-dir",
            &dir_arg,
        ]
        .map(String::from),
    )
    .unwrap();
    let findings = report["findings"].as_array().unwrap();
    let has = |kind: &str, object: &str| {
        findings
            .iter()
            .any(|f| f["kind"] == kind && f["object"].as_str().unwrap().contains(object))
    };
    assert!(has("NoPolicy", "shop/billing"), "{report:#}");
    assert!(has("AllowsPlaintext", "shop/checkout"), "{report:#}");
    assert!(has("MatchesNothing", "ghost-callers"), "{report:#}");
    let services = report["services"].as_array().unwrap();
    let checkout = services.iter().find(|s| s["name"] == "checkout").unwrap();
    assert_eq!(
        checkout["ports"][0]["policies"][0], "checkout-callers",
        "{report:#}"
    );
    assert_eq!(checkout["ports"][0]["plaintextAllowed"], true, "{report:#}");

    let html = weft(
        &[
            "audit",
            "policy",
            "--output",
            "html",
            "--policy-dir",
            &dir_arg,
        ]
        .map(String::from),
    )
    .unwrap();
    let html = String::from_utf8(html).unwrap();
    assert!(html.contains("NoPolicy") && html.contains("<svg"), "{html}");
}
