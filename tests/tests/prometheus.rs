//! Every `/metrics` passes `promtool check metrics`, and a real Prometheus
//! (Debian's `/usr/bin/prometheus` on 127.0.0.1) scraping a test mesh answers
//! the PromQL of `deploy/grafana/` with the requests that were made.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use weft_tests::apps;
use weft_tests::control::{IdentityPair, TestControl};
use weft_tests::mesh::SERVER_ID;
use weft_tests::prometheus::{PROMTOOL, http_get, promtool_check, tool};

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
