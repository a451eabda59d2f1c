//! Every `/metrics` passes `promtool check metrics`, and a real Prometheus
//! (Debian's `/usr/bin/prometheus` on 127.0.0.1) scraping a test mesh answers
//! the PromQL of `deploy/grafana/` with the requests that were made.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use weft_tests::apps;
use weft_tests::control::{IdentityPair, TestControl};
use weft_tests::mesh::{CLIENT_ID, Pair, SERVER_ID};
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

/// Dashboard queries on families a static test pair cannot produce cheaply:
/// they may return nothing. Every other query must return data.
const MAY_BE_EMPTY: [(&str, &str); 4] = [
    (
        "weft_proxy_retries_total",
        "retries need a ResiliencePolicy from discovery; static targets have none",
    ),
    (
        "weft_proxy_retry_budget_exhausted_total",
        "as retries, and a spent budget on top",
    ),
    (
        "weft_proxy_endpoint_ejected",
        "the circuit breaker needs discovered endpoints and a ResiliencePolicy",
    ),
    (
        "weft_proxy_ejections_total",
        "as weft_proxy_endpoint_ejected",
    ),
];

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
    let prometheus = Prometheus::start(&binary, &[client, server]).await.unwrap();
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

    let instances = format!("{client}|{server}");
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
        let may_be_empty = MAY_BE_EMPTY
            .iter()
            .any(|(family, _)| query.contains(family));
        if result.is_empty() && !may_be_empty {
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
    pair.client.shutdown(Duration::from_secs(1)).await;
    pair.server.shutdown(Duration::from_secs(1)).await;
}
