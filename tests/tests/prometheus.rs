//! Every `/metrics` passes `promtool check metrics`, and a real Prometheus
//! (Debian's `/usr/bin/prometheus` on 127.0.0.1) scraping a test mesh answers
//! every PromQL expression of `deploy/grafana/` with data from the requests
//! that were made, retries and circuit-breaker ejections included.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use weft_api::policy::{
    Backend, Backoff, CircuitBreaker, DestinationState, Endpoint, LoadBalancer, RetryBudget,
    RetryOn, RetryPolicy, Route, RouteTimeouts,
};
use weft_proxy::{AppTarget, ProxyConfig, ProxyHandle, Target, Upstream};
use weft_tests::apps;
use weft_tests::control::{IdentityPair, TestControl};
use weft_tests::mesh::{CLIENT_ID, Pair, SERVER_ID, server_proxy};
use weft_tests::pki::TestCa;
use weft_tests::prometheus::{PROMETHEUS, PROMTOOL, Prometheus, http_get, promtool_check, tool};

/// One HTTP/1.1 GET of `path`; the status code.
async fn get(addr: SocketAddr, path: &str) -> u16 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let rsp = tx
        .send_request(
            http::Request::get(path)
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

async fn metrics_of(admin: SocketAddr) -> String {
    let (status, body) = http_get(admin, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{admin}/metrics: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics_of_proxies_and_controller() {
    let Some(promtool) = tool(PROMTOOL) else {
        return;
    };
    let control = TestControl::start(Duration::from_secs(3600)).await;
    let app = apps::http_echo().await;
    let pair = IdentityPair::start(&control, app, Duration::from_secs(60)).await;
    pair.wait_ready(Duration::from_secs(20)).await;
    for _ in 0..3 {
        assert_eq!(get(pair.entry, "/").await, 200);
        assert_eq!(get(pair.server.proxy.inbound_addr, "/").await, 200);
    }
    for (name, admin) in [
        ("client proxy", pair.client.proxy.admin_addr),
        ("server proxy", pair.server.proxy.admin_addr),
        ("controller", control.controller().admin_addr()),
    ] {
        let text = metrics_of(admin).await;
        assert!(text.contains("weft_"), "{name}: {text}");
        if let Err(e) = promtool_check(&promtool, &text).await {
            panic!("{name} ({admin}): {e:#}\n--- /metrics ---\n{text}");
        }
    }
    let client = metrics_of(pair.client.proxy.admin_addr).await;
    assert!(
        client.contains(&format!("peer_identity=\"{SERVER_ID}\"")),
        "{client}"
    );
    pair.shutdown().await;
}

/// Requests of the known run, made in two halves so that every counter has
/// two different scraped values (a `rate` over them is not zero).
const REQUESTS: u64 = 10;

/// An app answering 503 to every request (`every == 1`) or to every
/// `every`-th one, 200 otherwise; its address.
async fn failing_app(every: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let n = hits.fetch_add(1, Ordering::Relaxed);
                    let status = if n.is_multiple_of(every) { 503 } else { 200 };
                    async move {
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(Bytes::from_static(b"ok")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// A client proxy whose `checkout` target has what a ResiliencePolicy
/// gives: retries of 503 under a 10 % budget and a circuit breaker, over a
/// flaky endpoint (every other request fails) and a broken one (all fail),
/// so the retry, budget and ejection families all have series.
struct Resilient {
    client: ProxyHandle,
    entry: SocketAddr,
    _servers: Vec<ProxyHandle>,
    _states: tokio::sync::watch::Sender<Arc<DestinationState>>,
}

impl Resilient {
    async fn start() -> Self {
        let ca = TestCa::new("weft prometheus resilience");
        let mut servers = Vec::new();
        let mut endpoints = Vec::new();
        for every in [2, 1] {
            let server = server_proxy(ca.mesh_tls(SERVER_ID), failing_app(every).await).await;
            endpoints.push(Endpoint {
                addr: server.inbound_addr,
                identity: Some(SERVER_ID.parse().unwrap()),
                zone: None,
            });
            servers.push(server);
        }
        let state = DestinationState {
            version: 1,
            target: "checkout:80".parse().unwrap(),
            routes: vec![Route {
                name: "retry".into(),
                matches: vec![],
                backends: vec![],
                timeouts: RouteTimeouts::default(),
                retry: Some(RetryPolicy {
                    attempts: 2,
                    on: RetryOn::new([], &[503]),
                    backoff: Backoff {
                        base: Duration::from_millis(1),
                        max: Duration::from_millis(5),
                    },
                }),
            }],
            backends: vec![Backend {
                name: "checkout".into(),
                weight: 1,
                endpoints,
            }],
            retry_budget: RetryBudget {
                ratio: 0.1,
                min_per_second: 0,
                window: Duration::from_secs(10),
            },
            circuit_breaker: Some(CircuitBreaker {
                consecutive_failures: 3,
                base_ejection_time: Duration::from_secs(60),
                max_ejection_time: Duration::from_secs(60),
                max_ejected_percent: 50,
            }),
            load_balancer: LoadBalancer::RoundRobin,
            connect_timeout: None,
        };
        let (states_tx, rx) = tokio::sync::watch::channel(Arc::new(state));
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut config = ProxyConfig::new(AppTarget::Fixed(SocketAddr::from(([127, 0, 0, 1], 9))));
        config.inbound_addr = loopback;
        config.admin_addr = loopback;
        config.upstreams = vec![Upstream {
            listen: loopback,
            target: Target {
                name: "checkout".into(),
                opaque: false,
                backends: vec![],
            },
        }];
        let states = HashMap::from([("checkout".to_owned(), rx)]);
        let client = weft_proxy::start_with(config, ca.mesh_tls(CLIENT_ID), states)
            .await
            .unwrap();
        let entry = client.upstream_addr("checkout").unwrap();
        Self {
            client,
            entry,
            _servers: servers,
            _states: states_tx,
        }
    }
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana");
    ["mesh-overview.json", "workload.json", "canary.json"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            (name.to_string(), serde_json::from_str(&text).unwrap())
        })
        .collect()
}

/// Every `(dashboard, panel title, expr)` of the three dashboards.
fn dashboard_exprs() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (name, dashboard) in dashboards() {
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                out.push((
                    name.clone(),
                    panel["title"].as_str().unwrap().to_owned(),
                    target["expr"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counts_the_run_and_answers_every_dashboard_query() {
    let Some(binary) = tool(PROMETHEUS) else {
        return;
    };
    let app = apps::http_echo().await;
    let pair = Pair::new(app, false).await;
    let client = pair.client.admin_addr;
    let server = pair.server.admin_addr;
    let resilient = Resilient::start().await;
    let retrying = resilient.client.admin_addr;
    let prometheus = Prometheus::start(&binary, &[client, server, retrying])
        .await
        .unwrap();
    let outbound = format!(
        "sum(weft_requests_total{{direction=\"outbound\",tls=\"true\",peer_identity=\"{SERVER_ID}\"}})"
    );
    let inbound = format!(
        "sum(weft_requests_total{{direction=\"inbound\",tls=\"true\",peer_identity=\"{CLIENT_ID}\"}})"
    );
    let within = Duration::from_secs(60);
    let mut made = 0;
    for until in [REQUESTS / 2, REQUESTS] {
        while made < until {
            assert_eq!(get(pair.entry, "/").await, 200);
            made += 1;
        }
        // Both sides' counters must be scraped at each half, or a `rate`
        // over the inbound side may see one sample only.
        for expr in [&outbound, &inbound] {
            if let Err(e) = prometheus.wait_for(expr, made as f64, within).await {
                panic!("{e:#}\n{}", prometheus.log());
            }
        }
    }
    if let Err(e) = prometheus.wait_for(&inbound, REQUESTS as f64, within).await {
        panic!("{e:#}\n{}", prometheus.log());
    }
    // Prometheus scraped OpenMetrics (it asks for it): the counters keep their types.
    let types = prometheus
        .query("count by (__name__) ({__name__=~\"weft_requests_total|weft_tcp_open_total\"})")
        .await
        .unwrap();
    assert_eq!(types.len(), 2, "{types:?}");

    // Retries, a spent budget and an ejection on the resilient target, each
    // series scraped twice so that its `rate` and `increase` have data.
    let mut answered = 0;
    for _ in 0..100 {
        let status = get(resilient.entry, "/").await;
        assert!(status == 200 || status == 503, "{status}");
        answered += 1;
    }
    assert_eq!(answered, 100);
    for family in [
        "weft_proxy_retries_total",
        "weft_proxy_retry_budget_exhausted_total",
        "weft_proxy_ejections_total",
        "weft_proxy_endpoint_ejected",
    ] {
        let expr = format!("min(count_over_time({family}[1m])) >= bool 2");
        if let Err(e) = prometheus.wait_for(&expr, 1.0, within).await {
            panic!("{e:#}\n{}", prometheus.log());
        }
    }

    let instances = format!("{client}|{server}|{retrying}");
    let mut failures = Vec::new();
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 30, "{} queries", exprs.len());
    for (dashboard, panel, expr) in exprs {
        let query = expr
            .replace("$__rate_interval", "1m")
            .replace("$namespace", "shop")
            .replace("$instance", &instances)
            .replace("$backend", "checkout");
        assert!(!query.contains('$'), "{dashboard} {panel}: {query}");
        let result = match prometheus.query(&query).await {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{dashboard} / {panel}: {e:#}"));
                continue;
            }
        };
        if result.is_empty() {
            failures.push(format!("{dashboard} / {panel}: no data for {query}"));
        }
        for sample in &result {
            let value = sample["value"][1].as_str().unwrap_or_default();
            if value == "NaN" {
                failures.push(format!("{dashboard} / {panel}: NaN for {query}: {sample}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    drop(prometheus);
    resilient.client.shutdown(Duration::from_secs(1)).await;
    pair.client.shutdown(Duration::from_secs(1)).await;
    pair.server.shutdown(Duration::from_secs(1)).await;
}
