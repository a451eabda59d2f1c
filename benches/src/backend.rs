//! The backend every system forwards to: a fixed tiny HTTP server with
//! keep-alive, speaking HTTP/1.1 and HTTP/2 without TLS (h2c, prior knowledge).
//!
//! It answers every request with `200 ok\n`. The harness runs it in its own
//! process (`weft-benches backend`) so that its CPU is never counted as a proxy's.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The body of every answer.
pub const BODY: &[u8] = b"ok\n";

/// Serves on a new port of 127.0.0.1 from a spawned task (tests); returns
/// its address.
pub async fn spawn_on_loopback() -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener));
    Ok(addr)
}

/// Serves connections from `listener` until the process ends.
pub async fn serve(listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Usually out of file descriptors: wait for some to close.
                tracing::warn!(%error, "backend accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await
            {
                tracing::debug!(%error, "backend connection ended with an error");
            }
        });
    }
}

async fn answer(_request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(BODY))))
}
