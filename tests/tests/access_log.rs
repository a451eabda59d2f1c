//! The access log: with `access_log` on, one JSON line per request on each
//! side of the pair (target `weft_proxy::access`), a refused request's line
//! naming the reason.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde_json::Value;
use weft_api::policy::InboundMode;
use weft_tests::apps::http_echo;
use weft_tests::mesh::{CLIENT_ID, Pair, SERVER_ID};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

async fn get(addr: SocketAddr, path: &str) -> u16 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "checkout")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let rsp = tx.send_request(req).await.unwrap();
    let status = rsp.status().as_u16();
    let _ = rsp.into_body().collect().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_per_request_and_refusals_name_their_reason() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter("weft_proxy::access=info")
        .with_writer(move || writer.clone())
        .init();
    let pair = Pair::configured(http_echo().await, false, &|c| {
        c.access_log = true;
        c.default_inbound = InboundMode::MeshOnly;
    })
    .await;
    assert_eq!(get(pair.entry, "/orders/7").await, 200);
    // Plaintext straight to the server's inbound side: mesh-only refuses it.
    assert_eq!(get(pair.server.inbound_addr, "/admin").await, 403);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = captured.lines();
        if lines.len() >= 3 || tokio::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let fields: Vec<&Value> = lines.iter().map(|l| &l["fields"]).collect();
    assert_eq!(fields.len(), 3, "{lines:#?}");
    assert!(lines.iter().all(|l| l["target"] == "weft_proxy::access"));
    let find = |direction: &str, path: &str| {
        fields
            .iter()
            .find(|f| f["direction"] == direction && f["path"] == path)
            .unwrap_or_else(|| panic!("no {direction} {path} line: {fields:#?}"))
    };
    let out = find("outbound", "/orders/7");
    assert_eq!(out["status"], 200);
    assert_eq!(out["method"], "GET");
    assert_eq!(out["client_identity"], CLIENT_ID);
    assert_eq!(out["server_identity"], SERVER_ID);
    assert_eq!(out["mtls"], true);
    let inbound = find("inbound", "/orders/7");
    assert_eq!(inbound["client_identity"], CLIENT_ID);
    assert_eq!(inbound["status"], 200);
    let refused = find("inbound", "/admin");
    assert_eq!(refused["status"], 403);
    assert_eq!(refused["proxy_error"], "unauthorized");
    assert_eq!(refused["mtls"], false);
}
