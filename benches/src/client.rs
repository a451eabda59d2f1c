//! One HTTP client connection of the load generator, HTTP/1.1 or HTTP/2 (h2c,
//! prior knowledge), sending `GET /` and reading the whole answer.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

/// The authority requests are sent to; proxies route by listener, not by name.
pub const AUTHORITY: &str = "backend";

/// The HTTP version a load run speaks to the system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "http1")]
    Http1,
    #[serde(rename = "http2")]
    Http2,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Self::Http1 => "HTTP/1.1",
            Self::Http2 => "HTTP/2",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("request failed: {0}")]
    Request(#[source] hyper::Error),
    #[error("unexpected status {0}")]
    Status(StatusCode),
}

enum Sender {
    Http1(http1::SendRequest<Empty<Bytes>>),
    Http2(http2::SendRequest<Empty<Bytes>>),
}

/// An open client connection.
pub struct Connection {
    sender: Sender,
    task: tokio::task::JoinHandle<()>,
}

impl Connection {
    pub async fn open(addr: SocketAddr, protocol: Protocol) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        let handshake = |source| ClientError::Handshake { addr, source };
        let (sender, task) = match protocol {
            Protocol::Http1 => {
                let (sender, conn) = http1::handshake(io).await.map_err(handshake)?;
                let task = tokio::spawn(async move {
                    let _ = conn.await;
                });
                (Sender::Http1(sender), task)
            }
            Protocol::Http2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(handshake)?;
                let task = tokio::spawn(async move {
                    let _ = conn.await;
                });
                (Sender::Http2(sender), task)
            }
        };
        Ok(Self { sender, task })
    }

    /// Sends `GET /` and reads the answer to its end; anything but 200 is an error.
    pub async fn get(&mut self) -> Result<(), ClientError> {
        let response = match &mut self.sender {
            Sender::Http1(sender) => {
                sender.ready().await.map_err(ClientError::Request)?;
                let request = Request::get("/")
                    .header(http::header::HOST, AUTHORITY)
                    .body(Empty::new())
                    .expect("a static request is valid");
                sender.send_request(request).await
            }
            Sender::Http2(sender) => {
                sender.ready().await.map_err(ClientError::Request)?;
                let request = Request::get(format!("http://{AUTHORITY}/"))
                    .body(Empty::new())
                    .expect("a static request is valid");
                sender.send_request(request).await
            }
        }
        .map_err(ClientError::Request)?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .map_err(ClientError::Request)?;
        if status != StatusCode::OK {
            return Err(ClientError::Status(status));
        }
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}
