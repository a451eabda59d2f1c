//! Certificates signed per second (issue "Workload identity"), two figures,
//! both bounded in time and count:
//! - `sign`: the CA alone, in process: CSR checks (signature verified) and
//!   signing, one thread;
//! - `certify`: `Identity.Certify` end to end against a real controller on
//!   127.0.0.1: gRPC over TLS, bootstrap token check, signing and the audit
//!   record, from `concurrency` clients, each on its own connection.
//!
//! CSRs are made before the clock starts (a proxy makes one per renewal; that
//! cost is the proxy's).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use weft_api::Identity;
use weft_api::certify::CertifyRequest;
use weft_api::control::ControlClient;
use weft_api::tls::{MeshTls, TrustAnchors};
use weft_controller::bootstrap::BootstrapTokens;
use weft_controller::ca::{self, Ca};
use weft_controller::{Controller, Settings};

use crate::figures::ControlPlaneFigure;

const MAX_COUNT: u64 = 1_000_000;

/// The settings of a controller the harness runs in process: trust domain
/// `cluster.local`, both servers on 127.0.0.1 ports the OS picks, its audit
/// trail in `state`; its issuer generated into `state/issuer`, or loaded from
/// `issuer_dir` when given.
pub(crate) fn controller_settings(
    state: &std::path::Path,
    issuer_dir: Option<&std::path::Path>,
) -> Settings {
    Settings {
        trust_domain: "cluster.local".into(),
        issuer_dir: issuer_dir.map_or_else(|| state.join("issuer"), std::path::Path::to_path_buf),
        generate_issuer: issuer_dir.is_none(),
        issuer_poll: Duration::from_secs(5),
        cert_lifetime: Duration::from_secs(86_400),
        grpc_addr: ([127, 0, 0, 1], 0).into(),
        admin_addr: ([127, 0, 0, 1], 0).into(),
        audit_path: state.join("audit.log"),
    }
}

/// Measures both figures for `duration` each.
pub fn measure(duration: Duration, concurrency: usize) -> anyhow::Result<ControlPlaneFigure> {
    let identity = Identity::new("cluster.local", "bench", "client")?;
    let csrs: Vec<_> = (0..256)
        .map(|_| ca::new_key_and_csr(&identity).map(|(_, csr)| csr))
        .collect::<Result<_, _>>()?;

    // The CA alone.
    let root = ca::RootCa::generate("cluster.local", Duration::from_secs(86_400))?;
    let now = SystemTime::now();
    let issuer = ca::Issuer::from_pem(root.issue_issuer(
        now - Duration::from_secs(60),
        now + Duration::from_secs(86_400),
    )?)?;
    let authority = Ca::new(issuer, Duration::from_secs(86_400));
    let start = Instant::now();
    let mut signed = 0u64;
    while start.elapsed() < duration && signed < MAX_COUNT {
        authority
            .sign(&csrs[signed as usize % csrs.len()], &identity)
            .context("the CA refused a valid CSR")?;
        signed += 1;
    }
    let sign_per_second = signed as f64 / start.elapsed().as_secs_f64();

    // Certify end to end.
    let runtime = tokio::runtime::Runtime::new()?;
    let (certified, failed, elapsed, p50, p99) = runtime.block_on(async {
        let state = tempfile::tempdir()?;
        let tokens = Arc::new(BootstrapTokens::new(state.path()));
        let settings = controller_settings(state.path(), None);
        let controller = Controller::start(settings, tokens.clone()).await?;
        let token = tokens.issue(&identity, Duration::from_secs(3600))?;
        let anchors = std::fs::read(state.path().join("issuer").join(ca::TRUST_ANCHORS_FILE))?;
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let deadline = start + duration;
        let mut workers = Vec::new();
        for worker in 0..concurrency {
            let client = ControlClient::new(
                &controller.grpc_addr().to_string(),
                MeshTls::new(TrustAnchors::from_pem(&anchors)?),
                controller.identity().clone(),
            )?;
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
                                eprintln!("certify: first failure: {e}");
                            }
                        }
                    }
                    i += concurrency;
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for worker in workers {
            latencies.extend(worker.await?);
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
        anyhow::Ok((
            ok.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            elapsed,
            p50,
            p99,
        ))
    })?;
    Ok(ControlPlaneFigure::Measured {
        per_second: certified as f64 / elapsed.as_secs_f64(),
        sign_per_second,
        p50_ms: p50.as_secs_f64() * 1e3,
        p99_ms: p99.as_secs_f64() * 1e3,
        failed,
        concurrency,
    })
}
