//! The server proxy's connections to its app: reused while the app keeps them
//! open, replaced when the app closes them, and a clear error when the app is
//! not there, with the proxy serving again as soon as it is.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_api::consts::PROXY_ERROR_HEADER;
use weft_tests::mesh::Pair;

/// A plain HTTP/1.1 app written by hand, so that the test decides when it
/// closes a connection: after every response when `close_after_each`
/// (without saying so in the response, as an app whose idle timeout fires
/// does), otherwise never. Counts the connections it accepted.
async fn counting_app(listener: TcpListener, close_after_each: bool) -> Arc<AtomicUsize> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // Requests without bodies: a head ends the request.
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    let rsp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if tcp.write_all(rsp).await.is_err() || close_after_each {
                        return;
                    }
                }
            });
        }
    });
    accepted
}

/// A proxy pair in front of a new [`counting_app`].
async fn pair_before_counting_app(close_after_each: bool) -> (Pair, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let accepted = counting_app(listener, close_after_each).await;
    (Pair::new(app, false).await, accepted)
}

async fn get(entry: SocketAddr, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    let tcp = TcpStream::connect(entry).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "checkout")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let rsp = tx.send_request(req).await.unwrap();
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_connections_are_reused_while_the_app_keeps_them_open() {
    let (pair, accepted) = pair_before_counting_app(false).await;
    // Each request on its own client connection: the app still sees one.
    for i in 0..50 {
        let (status, _, body) = get(pair.entry, &format!("/keep/{i}")).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"ok"[..]),
            "request {i}"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_closing_its_connections_costs_no_request() {
    let (pair, accepted) = pair_before_counting_app(true).await;
    for i in 0..20 {
        let (status, _, body) = get(pair.entry, &format!("/close/{i}")).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"ok"[..]),
            "request {i}"
        );
        // Give the proxy a moment to see the close, as between real requests.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_not_listening_is_named_and_the_proxy_serves_once_it_is() {
    // A port nobody listens on yet.
    let app = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let pair = Pair::new(app, false).await;
    let (status, headers, body) = get(pair.entry, "/down").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers[PROXY_ERROR_HEADER], "app-unavailable");
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains(&format!("the app at {app} did not answer: cannot connect")),
        "{text}"
    );

    let accepted = counting_app(TcpListener::bind(app).await.unwrap(), false).await;
    let (status, _, body) = get(pair.entry, "/up").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// The app's keep-alive connection to its sidecar stays open while idle, for
/// longer than hyper's default header timeout (30 s), which would otherwise
/// close it and race with the app's next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_app_connection_to_the_sidecar_stays_open() {
    let (pair, _) = pair_before_counting_app(false).await;
    let mut client = TcpStream::connect(pair.entry).await.unwrap();
    let request = b"GET /idle HTTP/1.1\r\nhost: checkout\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    for round in 0..2 {
        client.write_all(request).await.unwrap();
        let n = client.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(
            head.starts_with("HTTP/1.1 200 OK"),
            "round {round}: {head:?}"
        );
        if round == 0 {
            tokio::time::sleep(Duration::from_secs(32)).await;
        }
    }
}
