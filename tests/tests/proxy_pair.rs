//! A client sidecar and a server sidecar on 127.0.0.1, with real apps and real
//! clients: every protocol the proxy carries, bytes compared end to end.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_tests::apps::{self, EchoMessage, SEEN_CLIENT_ID, SEEN_HOST, SEEN_VERSION};
use weft_tests::mesh::{CLIENT_ID, Pair, metrics, sample};

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body sent in `chunk`-sized frames with no content-length (chunked).
fn chunked(data: Bytes, chunk: usize) -> Body {
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..data.len())
        .step_by(chunk)
        .map(|i| Ok(Frame::data(data.slice(i..(i + chunk).min(data.len())))))
        .collect();
    BodyExt::boxed(StreamBody::new(futures::stream::iter(frames)))
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

async fn http1(addr: std::net::SocketAddr) -> hyper::client::conn::http1::SendRequest<Body> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    tx
}

async fn http2(addr: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<Body> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_carries_10mb_bodies_both_ways_and_names_the_caller() {
    let pair = Pair::new(apps::http_echo().await, false).await;
    let mut tx = http1(pair.entry).await;
    let data = pattern(10 * 1024 * 1024, 7);

    // Content-length request body.
    let req = Request::post("/upload?x=1")
        .header("host", "checkout.shop:8080")
        .header(
            "weft-client-id",
            "spiffe://cluster.local/ns/evil/sa/spoofed",
        )
        .body(body(data.clone()))
        .unwrap();
    let rsp = tx.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.version(), Version::HTTP_11);
    assert_eq!(
        rsp.headers()[SEEN_CLIENT_ID],
        CLIENT_ID,
        "spoofed id must be replaced"
    );
    assert_eq!(rsp.headers()[SEEN_VERSION], "HTTP/1.1");
    assert_eq!(rsp.headers()[SEEN_HOST], "checkout.shop:8080");
    let got = rsp.into_body().collect().await.unwrap().to_bytes();
    assert!(got == data, "10 MB body differs after the round trip");

    // Chunked request body on the same keep-alive connection.
    tx.ready().await.expect("the connection is kept alive");
    let req = Request::post("/chunked")
        .header("host", "checkout")
        .body(chunked(data.clone(), 64 * 1024))
        .unwrap();
    let rsp = tx.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let got = rsp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        got == data,
        "chunked 10 MB body differs after the round trip"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keeps_one_connection_alive_for_1000_sequential_requests() {
    let pair = Pair::new(apps::http_echo().await, false).await;
    let mut tx = http1(pair.entry).await;
    for i in 0..1000u32 {
        let payload = format!("request {i}");
        let req = Request::post(format!("/seq/{i}"))
            .header("host", "checkout")
            .body(body(payload.clone()))
            .unwrap();
        tx.ready().await.expect("connection still open");
        let rsp = tx.send_request(req).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK, "request {i}");
        let got = rsp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got, payload.as_bytes(), "request {i}");
    }
    // All of it crossed one mesh connection between the proxies.
    let m = metrics(&pair.client).await;
    let opened = weft_tests::mesh::sum(&m, "weft_tls_handshakes_total{direction=\"outbound\"}");
    assert_eq!(opened, 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_upgrade_relays_raw_bytes_both_ways() {
    let pair = Pair::new(apps::http_echo().await, false).await;
    let mut tx = http1(pair.entry).await;
    let req = Request::get("/ws")
        .header("host", "checkout")
        .header("connection", "upgrade")
        .header("upgrade", apps::ECHO_UPGRADE)
        .body(body(Bytes::new()))
        .unwrap();
    let rsp = tx.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(rsp.headers()[SEEN_CLIENT_ID], CLIENT_ID);
    let upgraded = hyper::upgrade::on(rsp).await.expect("upgrade completes");
    let data = pattern(1024 * 1024, 3);
    let got = apps::echo_through(upgraded, &data).await;
    assert!(got == data, "upgraded bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_carries_100_concurrent_streams() {
    let pair = Pair::new(apps::http_echo().await, false).await;
    let tx = http2(pair.entry).await;
    let mut tasks = Vec::new();
    for i in 0..100u8 {
        let mut tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let data = pattern(64 * 1024 + usize::from(i), i);
            let req = Request::post(format!("http://checkout/stream/{i}"))
                .version(Version::HTTP_2)
                .body(body(data.clone()))
                .unwrap();
            let rsp = tx.send_request(req).await.unwrap();
            assert_eq!(rsp.status(), StatusCode::OK);
            assert_eq!(rsp.headers()[SEEN_VERSION], "HTTP/2.0");
            assert_eq!(rsp.headers()[SEEN_CLIENT_ID], CLIENT_ID);
            let got = rsp.into_body().collect().await.unwrap().to_bytes();
            assert!(got == data, "stream {i} body differs");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bidirectional_stream_interleaves_both_ways() {
    let pair = Pair::new(apps::grpc_echo().await, false).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", pair.entry))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<EchoMessage>(1);
    let mut inbound = apps::grpc_chat(channel, tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await
        .unwrap();
    // Each reply arrives before the next message is sent: a real interleaved
    // stream, not a buffered request followed by a buffered response.
    for seq in 0..100u64 {
        let data = pattern(1000 + seq as usize, seq as u8).to_vec();
        out_tx
            .send(EchoMessage {
                seq,
                data: data.clone(),
            })
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), inbound.next())
            .await
            .expect("reply in time")
            .expect("stream open")
            .expect("reply ok");
        assert_eq!(reply.seq, seq);
        assert_eq!(reply.data, data);
    }
    drop(out_tx);
    assert!(
        inbound.next().await.is_none(),
        "stream ends after the client ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_echoes_50mb() {
    let pair = Pair::new(apps::tcp_echo().await, true).await;
    let tcp = TcpStream::connect(pair.entry).await.unwrap();
    let (mut r, mut w) = tcp.into_split();
    let data = pattern(50 * 1024 * 1024, 11);
    let sent = data.clone();
    let send = tokio::spawn(async move {
        for chunk in sent.chunks(256 * 1024) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(data.len());
    r.read_to_end(&mut got).await.unwrap();
    send.await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "50 MB echo differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undetected_client_first_protocol_is_relayed_opaque() {
    let pair = Pair::new(apps::tcp_echo().await, false).await;
    let mut tcp = TcpStream::connect(pair.entry).await.unwrap();
    let msg = b"*1\r\n$4\r\nPING\r\n".repeat(1000);
    tcp.write_all(&msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tcp.read_exact(&mut got).await.unwrap();
    assert_eq!(got, msg);
    let m = metrics(&pair.client).await;
    assert_eq!(
        sample(
            &m,
            "weft_protocol_detect_total{direction=\"outbound\",protocol=\"opaque\",timed_out=\"false\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_negotiate_x25519mlkem768_and_report_requests() {
    let pair = Pair::new(apps::http_echo().await, false).await;
    let mut tx = http1(pair.entry).await;
    let rsp = tx
        .send_request(
            Request::get("/")
                .header("host", "checkout")
                .body(body(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    rsp.into_body().collect().await.unwrap();

    let client = metrics(&pair.client).await;
    let server = metrics(&pair.server).await;
    assert_eq!(
        sample(
            &client,
            "weft_tls_handshakes_total{direction=\"outbound\",kx_group=\"X25519MLKEM768\"}"
        ),
        Some(1.0),
        "{client}"
    );
    assert_eq!(
        sample(
            &server,
            "weft_tls_handshakes_total{direction=\"inbound\",kx_group=\"X25519MLKEM768\"}"
        ),
        Some(1.0),
        "{server}"
    );
    let inbound_req = format!(
        "weft_requests_total{{direction=\"inbound\",status_code=\"200\",tls=\"true\",peer_identity=\"{CLIENT_ID}\"}}"
    );
    assert_eq!(sample(&server, &inbound_req), Some(1.0), "{server}");
    let outbound_req = format!(
        "weft_requests_total{{direction=\"outbound\",status_code=\"200\",tls=\"true\",peer_identity=\"{}\",backend=\"checkout\",route=\"\"}}",
        weft_tests::mesh::SERVER_ID
    );
    assert_eq!(sample(&client, &outbound_req), Some(1.0), "{client}");
    assert!(
        client.contains("weft_response_latency_seconds_bucket{"),
        "latency histogram missing:\n{client}"
    );
    assert!(
        server.contains("weft_tcp_read_bytes_total{direction=\"inbound\",tls=\"true\""),
        "{server}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_client_connections_all_complete() {
    weft_proxy::proxy::raise_fd_limit();
    let pair = Pair::new(apps::http_echo().await, false).await;
    // Open every connection first, so that all 1,000 are open at once.
    let mut conns = Vec::new();
    for _ in 0..1000 {
        conns.push(http1(pair.entry).await);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(conns.len()));
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut tx)| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let payload = format!("connection {i}");
                let req = Request::post("/")
                    .header("host", "checkout")
                    .body(body(payload.clone()))
                    .unwrap();
                let rsp = tx
                    .send_request(req)
                    .await
                    .map_err(|e| format!("{i}: {e}"))?;
                if rsp.status() != StatusCode::OK {
                    return Err(format!("{i}: status {}", rsp.status()));
                }
                let got = rsp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                if got != payload.as_bytes() {
                    return Err(format!("{i}: body differs"));
                }
                Ok(())
            })
        })
        .collect();
    let mut failures = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}
