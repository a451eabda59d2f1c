//! Webhook latency (issue "Injection and install"): the real `weft-injector`
//! server (its own tokio runtime, 2 threads) answering AdmissionReviews of an
//! injectable pod (the fixture the injector's tests send: a Deployment's pod in
//! a namespace labelled `weft.io/inject=enabled`) over HTTPS (TLS 1.3,
//! keep-alive, as the API server holds its connections), at a fixed rate, open
//! loop: connection `i` of `n` sends its `k`-th review at `start + (i + k·n)/rate`,
//! and a review sent late because its connection was busy counts from its
//! intended time (coordinated omission corrected). Bounded: reviews unsent 2 s
//! after the end count as errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use weft_injector::injector::{self, Parts};
use weft_injector::metrics::Metrics;
use weft_injector::namespaces::NamespaceIndex;
use weft_injector::{InjectConfig, NamespaceInfo};

use crate::load::Latency;

/// The AdmissionReview sent (shared with the injector's tests).
const POD_CREATE: &str = include_str!("../../injector/tests/data/pod-create.json");
/// Admissions per second.
pub const RATE: f64 = 500.0;
/// Keep-alive connections the load is spread over.
pub const CONNECTIONS: usize = 4;
const DRAIN: Duration = Duration::from_secs(2);
const HIGHEST_US: u64 = 60_000_000;

/// The webhook figure.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum WebhookFigure {
    Measured {
        rate: f64,
        connections: usize,
        duration_s: f64,
        answered: u64,
        errors: u64,
        first_error: Option<String>,
        /// Microseconds.
        latency_us: Latency,
        /// What the decision answered (`injected` once the injection logic is in).
        outcome: String,
    },
    NotMeasured {
        reason: String,
    },
}

/// Measures for `duration` after `warmup`.
pub fn measure(warmup: Duration, duration: Duration) -> WebhookFigure {
    match run(warmup, duration) {
        Ok(figure) => figure,
        Err(error) => WebhookFigure::NotMeasured {
            reason: format!("the webhook benchmark failed: {error:#}"),
        },
    }
}

fn run(warmup: Duration, duration: Duration) -> anyhow::Result<WebhookFigure> {
    let work = tempfile::tempdir().context("temp dir")?;
    let pki = crate::pki::Pki::generate(work.path())?;
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("webhook")
        .enable_all()
        .build()?;
    let metrics = Arc::new(Metrics::new());
    let index = Arc::new(NamespaceIndex::new(metrics.clone()));
    index.reset([NamespaceInfo {
        name: "shop".into(),
        labels: [(
            weft_api::consts::INJECT_KEY.to_string(),
            weft_api::consts::INJECT_ENABLED.to_string(),
        )]
        .into(),
        annotations: Default::default(),
    }]);
    let running = server_runtime.block_on(injector::start(Parts {
        decide: weft_injector::server::mutate_decision(),
        config: InjectConfig::default(),
        cert_file: pki.server.chain.clone(),
        key_file: pki.server.key.clone(),
        trust_anchors_file: Some(pki.root.clone()),
        reload_interval: Duration::from_secs(5),
        namespaces: index,
        client: None,
        metrics,
        listen: "127.0.0.1:0".parse()?,
        admin_addr: "127.0.0.1:0".parse()?,
    }))?;
    let addr = running.webhook_addr;

    let mut roots = rustls::RootCertStore::empty();
    for cert in weft_api::tls::certs_from_pem(&std::fs::read(&pki.root)?, "the bench root")? {
        roots.add(cert)?;
    }
    let client_config =
        rustls::ClientConfig::builder_with_provider(weft_api::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(client_config));
    let body = Bytes::from(POD_CREATE.as_bytes().to_vec());

    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = client_runtime.block_on(async {
        let mut senders = Vec::new();
        for _ in 0..CONNECTIONS {
            senders.push(connect(&connector, addr).await?);
        }
        // One review first: what the decision answers.
        let (_, answer) = post(&mut senders[0], body.clone()).await?;
        let outcome = outcome_of(&answer);
        let start = Instant::now() + Duration::from_millis(10);
        let record_from = start + warmup;
        let end = record_from + duration;
        let interval = Duration::from_secs_f64(CONNECTIONS as f64 / RATE);
        let mut tasks = Vec::new();
        for (i, mut sender) in senders.into_iter().enumerate() {
            let body = body.clone();
            let offset = Duration::from_secs_f64(i as f64 / RATE);
            tasks.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new_with_bounds(1, HIGHEST_US, 3)
                    .expect("static histogram bounds are valid");
                let (mut answered, mut errors, mut first_error) = (0u64, 0u64, None);
                let mut k = 0u32;
                loop {
                    let intended = start + offset + interval * k;
                    if intended >= end {
                        break;
                    }
                    k += 1;
                    let now = Instant::now();
                    if now > end + DRAIN {
                        errors += 1;
                        first_error.get_or_insert_with(|| "unsent at the end".to_string());
                        continue;
                    }
                    // Late (the connection was busy): count from the intended time.
                    // On time: from the actual send, so that tokio's 1 ms timer
                    // granularity is not charged to the webhook.
                    let from = if intended > now {
                        tokio::time::sleep_until(intended.into()).await;
                        Instant::now()
                    } else {
                        intended
                    };
                    let result = post(&mut sender, body.clone()).await;
                    let latency = from.elapsed();
                    let recorded = intended >= record_from;
                    match result {
                        Ok((200, _)) => {
                            if recorded {
                                answered += 1;
                                let us = u64::try_from(latency.as_micros()).unwrap_or(HIGHEST_US);
                                h.saturating_record(us.clamp(1, HIGHEST_US));
                            }
                        }
                        Ok((status, _)) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("HTTP {status}"));
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                (h, answered, errors, first_error)
            }));
        }
        let mut histogram = Histogram::<u64>::new_with_bounds(1, HIGHEST_US, 3)
            .expect("static histogram bounds are valid");
        let (mut answered, mut errors, mut first_error) = (0, 0, None);
        for task in tasks {
            let (h, a, e, f) = task.await?;
            histogram.add(&h).expect("histograms share their bounds");
            answered += a;
            errors += e;
            first_error = first_error.or(f);
        }
        anyhow::Ok(WebhookFigure::Measured {
            rate: RATE,
            connections: CONNECTIONS,
            duration_s: duration.as_secs_f64(),
            answered,
            errors,
            first_error,
            latency_us: Latency::from_histogram(&histogram),
            outcome,
        })
    });
    server_runtime.block_on(running.shutdown());
    result
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(connector: &TlsConnector, addr: std::net::SocketAddr) -> anyhow::Result<Sender> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await
        .context("TLS handshake with the webhook")?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn post(sender: &mut Sender, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
    let request = http::Request::post(weft_api::consts::injector::INJECT_PATH)
        .header(http::header::HOST, "localhost")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

fn outcome_of(answer: &[u8]) -> String {
    let review: serde_json::Value = serde_json::from_slice(answer).unwrap_or_default();
    let response = &review["response"];
    match (response["allowed"].as_bool(), response.get("patch")) {
        (Some(true), Some(_)) => "allowed with a patch".into(),
        (Some(true), None) => "allowed unchanged".into(),
        (Some(false), _) => format!("denied: {}", response["status"]["message"]),
        _ => "not an AdmissionReview".into(),
    }
}
