//! How fast a policy change reaches the proxies (issue "Discovery and traffic
//! policy"): a real controller serving `Discovery.Watch` over TLS on
//! 127.0.0.1 from its index, `n` subscribers (each its own TLS connection and
//! stream, as `n` proxies would hold), then one HTTPRoute weight change
//! (90/10 to 50/50, what `weft canary set` writes) applied to the index: the
//! time from the apply to each subscriber receiving the new snapshot. It
//! includes the index's debounce (75 ms: the change meets a quiet index),
//! computing the snapshot, encoding it and every stream's send. Bounded: each
//! wait gives up after 30 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::json;
use weft_api::Identity;
use weft_api::proto::weft_v1 as pb;
use weft_api::tls::{Credentials, MeshTls, TrustAnchors};
use weft_controller::bootstrap::BootstrapTokens;
use weft_controller::discovery::index::{Resource, SharedIndex};
use weft_controller::discovery::local::Workloads;
use weft_controller::{AuditEcho, Controller, Discovery};

const LIMIT: Duration = Duration::from_secs(30);

/// The figure for one subscriber count.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PropagationFigure {
    Measured {
        subscribers: usize,
        /// From the apply to the first, median and last subscriber's receipt.
        first_ms: f64,
        p50_ms: f64,
        last_ms: f64,
        /// The index's debounce, part of every figure.
        debounce_ms: f64,
    },
    NotMeasured {
        subscribers: usize,
        reason: String,
    },
}

fn route(v1: u32, v2: u32) -> anyhow::Result<Resource> {
    let route = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": { "name": "checkout", "namespace": "shop", "creationTimestamp": "2026-01-01T00:00:00Z" },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "checkout", "port": 80 }],
            "rules": [{ "backendRefs": [
                { "name": "checkout-v1", "port": 80, "weight": v1 },
                { "name": "checkout-v2", "port": 80, "weight": v2 },
            ] }],
        },
    }))
    .context("the bench's HTTPRoute")?;
    Ok(Resource::HttpRoute(route))
}

fn workloads() -> anyhow::Result<Vec<Resource>> {
    let endpoints = |base: u16| {
        (0..3)
            .map(|i| json!({ "address": format!("198.18.0.{}:8080", base + i), "serviceAccount": "checkout" }))
            .collect::<Vec<_>>()
    };
    let w: Workloads = serde_json::from_value(json!({
        "apiVersion": weft_controller::discovery::local::WORKLOADS_API_VERSION,
        "kind": "Workloads",
        "services": [
            { "name": "checkout", "namespace": "shop", "ports": [80] },
            { "name": "checkout-v1", "namespace": "shop", "ports": [80], "endpoints": endpoints(10) },
            { "name": "checkout-v2", "namespace": "shop", "ports": [80], "endpoints": endpoints(20) },
        ],
    }))
    .context("the bench's Workloads")?;
    Ok(w.resources())
}

/// Measures the figure for `subscribers` subscribers.
pub fn measure(subscribers: usize) -> PropagationFigure {
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("a runtime")
        .and_then(|rt| rt.block_on(run(subscribers)));
    match result {
        Ok(figure) => figure,
        Err(error) => PropagationFigure::NotMeasured {
            subscribers,
            reason: format!("{error:#}"),
        },
    }
}

async fn run(n: usize) -> anyhow::Result<PropagationFigure> {
    anyhow::ensure!(n > 0, "no subscribers to measure");
    let state = tempfile::tempdir()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let index = SharedIndex::new(
        weft_controller::discovery::IndexSettings::default(),
        stop.clone(),
    );
    for r in workloads()? {
        index.apply(r);
    }
    index.apply(route(90, 10)?);
    index.publish_now();
    let settings = crate::certify::controller_settings(state.path(), None);
    let discovery = Discovery {
        index: Arc::new(index.clone()),
        report: Arc::new(|| json!({})),
    };
    let controller = Controller::start_with_discovery(
        settings,
        Arc::new(BootstrapTokens::new(state.path())),
        AuditEcho::Off,
        Some(discovery),
    )
    .await?;
    let web = Identity::new("cluster.local", "shop", "web")?;
    let (key, csr) = weft_controller::ca::new_key_and_csr(&web)?;
    let issued = controller.ca().sign(&csr, &web)?;
    let anchors = std::fs::read(
        state
            .path()
            .join("issuer")
            .join(weft_controller::ca::TRUST_ANCHORS_FILE),
    )?;
    let tls = MeshTls::new(TrustAnchors::from_pem(&anchors)?);
    tls.set_credentials(Credentials::from_der(issued.certified.full_chain(), key)?);
    let addr = controller.grpc_addr().to_string();

    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let (first_tx, mut first_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let mut client = weft_api::control::discovery_client(
            &addr,
            tls.clone(),
            controller.identity(),
            weft_api::dns::Resolver::system(),
        )?;
        let (seen, first) = (seen_tx.clone(), first_tx.clone());
        tasks.spawn(async move {
            let request = pb::DiscoveryRequest {
                target: "checkout.shop.svc.cluster.local:80".into(),
                caller_identity: "spiffe://cluster.local/ns/shop/sa/web".into(),
            };
            let Ok(stream) = client.watch(request).await else {
                return;
            };
            let mut stream = stream.into_inner();
            let Ok(Some(_)) = stream.message().await else {
                return;
            };
            let _ = first.send(());
            while let Ok(Some(state)) = stream.message().await {
                let weights: Vec<u32> = state
                    .routes
                    .first()
                    .map(|r| r.backends.iter().map(|b| b.weight).collect())
                    .unwrap_or_default();
                if weights == [50, 50] {
                    let _ = seen.send(Instant::now());
                    return;
                }
            }
        });
    }
    drop(first_tx);
    for i in 0..n {
        tokio::time::timeout(LIMIT, first_rx.recv())
            .await
            .with_context(|| format!("only {i} of {n} subscribers got their first snapshot within {LIMIT:?}"))?
            .with_context(|| format!("only {i} of {n} subscribers got their first snapshot (the others' streams failed)"))?;
    }
    // New subscriptions wake the debounce task too; let it go quiet, so the
    // change meets an idle index and waits its full debounce.
    tokio::time::sleep(SharedIndex::DEBOUNCE * 3).await;
    let changed = Instant::now();
    index.apply(route(50, 50)?);
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let at = tokio::time::timeout(LIMIT, seen_rx.recv())
            .await
            .with_context(|| {
                format!("only {i} of {n} subscribers saw the change within {LIMIT:?}")
            })?
            .context("a subscriber's stream ended")?;
        took.push(at.duration_since(changed).as_secs_f64() * 1e3);
    }
    tasks.shutdown().await;
    controller.shutdown().await;
    took.sort_by(f64::total_cmp);
    Ok(PropagationFigure::Measured {
        subscribers: n,
        first_ms: took[0],
        p50_ms: took[took.len() / 2],
        last_ms: took[took.len() - 1],
        debounce_ms: SharedIndex::DEBOUNCE.as_secs_f64() * 1e3,
    })
}
