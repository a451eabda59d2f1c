//! Certificates signed per second.
//!
//! `cargo bench -p weft-controller --bench certify [-- --seconds 5 --concurrency 16]`
//!
//! Two figures, both bounded in time and count:
//! - `sign`: the CA alone, in process: CSR checks (signature verified), signing,
//!   one thread;
//! - `certify`: `Identity.Certify` end to end against a real controller on
//!   127.0.0.1: gRPC over TLS, bootstrap token check, signing and the audit
//!   record, from `--concurrency` clients, each on its own connection.
//!
//! CSRs are made before the clock starts (a proxy makes one per renewal; that
//! cost is the proxy's). The last line is the result as JSON, for the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weft_api::Identity;
use weft_api::certify::CertifyRequest;
use weft_api::control::ControlClient;
use weft_api::tls::{MeshTls, TrustAnchors};
use weft_controller::bootstrap::BootstrapTokens;
use weft_controller::ca::{self, Ca};
use weft_controller::{Controller, Settings};

const MAX_COUNT: u64 = 1_000_000;

struct Options {
    seconds: f64,
    concurrency: usize,
}

fn options() -> Options {
    let mut options = Options {
        seconds: 5.0,
        concurrency: 16,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--seconds" => options.seconds = args[i + 1].parse().expect("--seconds <number>"),
            "--concurrency" => {
                options.concurrency = args[i + 1].parse().expect("--concurrency <number>");
            }
            // `cargo bench` passes `--bench`.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    options
}

fn main() {
    let options = options();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let identity = Identity::new("cluster.local", "bench", "client").unwrap();
    let csrs: Vec<_> = (0..256)
        .map(|_| ca::new_key_and_csr(&identity).unwrap().1)
        .collect();
    let duration = Duration::from_secs_f64(options.seconds);

    // The CA alone.
    let root = ca::RootCa::generate("cluster.local", Duration::from_secs(86_400)).unwrap();
    let now = std::time::SystemTime::now();
    let issuer = ca::Issuer::from_pem(
        root.issue_issuer(
            now - Duration::from_secs(60),
            now + Duration::from_secs(86_400),
        )
        .unwrap(),
    )
    .unwrap();
    let authority = Ca::new(issuer, Duration::from_secs(86_400));
    let start = Instant::now();
    let mut signed = 0u64;
    while start.elapsed() < duration && signed < MAX_COUNT {
        authority
            .sign(&csrs[signed as usize % csrs.len()], &identity)
            .expect("signed");
        signed += 1;
    }
    let sign_rate = signed as f64 / start.elapsed().as_secs_f64();
    println!(
        "sign: {signed} certificates in {:.2?}: {sign_rate:.0}/s (one thread)",
        start.elapsed()
    );

    // Certify end to end.
    let (certified, failed, elapsed, p50, p99) = runtime.block_on(async {
        let state = tempfile::tempdir().unwrap();
        let tokens = Arc::new(BootstrapTokens::new(state.path()));
        let settings = Settings {
            trust_domain: "cluster.local".into(),
            issuer_dir: state.path().join("issuer"),
            generate_issuer: true,
            issuer_poll: Duration::from_secs(5),
            cert_lifetime: Duration::from_secs(86_400),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            audit_path: state.path().join("audit.log"),
        };
        let controller = Controller::start(settings, tokens.clone()).await.unwrap();
        let token = tokens.issue(&identity, Duration::from_secs(3600)).unwrap();
        let anchors = std::fs::read(state.path().join("issuer/ca.crt")).unwrap();
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let deadline = start + duration;
        let mut workers = Vec::new();
        for worker in 0..options.concurrency {
            let client = ControlClient::new(
                &controller.grpc_addr().to_string(),
                MeshTls::new(TrustAnchors::from_pem(&anchors).unwrap()),
                controller.identity().clone(),
            )
            .unwrap();
            let (ok, failed, token, csrs) =
                (ok.clone(), failed.clone(), token.clone(), csrs.clone());
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = worker;
                while Instant::now() < deadline && ok.load(Ordering::Relaxed) < MAX_COUNT {
                    let request = CertifyRequest {
                        token: token.clone(),
                        csr: csrs[i % csrs.len()].clone(),
                    };
                    let sent = Instant::now();
                    match client.certify(request).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            latencies.push(sent.elapsed());
                        }
                        Err(e) => {
                            if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("first failure: {e}");
                            }
                        }
                    }
                    i += options.concurrency;
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for worker in workers {
            latencies.extend(worker.await.unwrap());
        }
        let elapsed = start.elapsed();
        latencies.sort();
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        let (p50, p99) = (at(0.5), at(0.99));
        controller.shutdown().await;
        (
            ok.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            elapsed,
            p50,
            p99,
        )
    });
    let certify_rate = certified as f64 / elapsed.as_secs_f64();
    println!(
        "certify: {certified} certificates in {elapsed:.2?} from {} clients: {certify_rate:.0}/s, \
         p50 {p50:.2?}, p99 {p99:.2?}, {failed} failed",
        options.concurrency
    );
    println!(
        "{}",
        serde_json::json!({
            "sign_per_second": sign_rate.round(),
            "certify_per_second": certify_rate.round(),
            "certify_p50_ms": p50.as_secs_f64() * 1e3,
            "certify_p99_ms": p99.as_secs_f64() * 1e3,
            "certify_failed": failed,
            "concurrency": options.concurrency,
        })
    );
}
