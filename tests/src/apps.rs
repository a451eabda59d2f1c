//! Real servers that stand in for apps: they know nothing of the mesh.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic_prost::ProstCodec;

/// Headers the echo app adds to tell the test what it saw.
pub const SEEN_CLIENT_ID: &str = "x-seen-client-id";
pub const SEEN_VERSION: &str = "x-seen-version";
pub const SEEN_HOST: &str = "x-seen-host";
/// The `traceparent` the app received (empty when none).
pub const SEEN_TRACEPARENT: &str = "x-seen-traceparent";
/// The B3 headers the app received (`b3`, then `x-b3-traceid`; empty when none).
pub const SEEN_B3: &str = "x-seen-b3";
/// The protocol name the echo app accepts in `Upgrade`.
pub const ECHO_UPGRADE: &str = "weft-echo";

type EchoBody = BoxBody<Bytes, hyper::Error>;

/// An HTTP/1.1 and HTTP/2 server that streams each request body back, reports
/// what it saw in `x-seen-*` headers, and accepts `Upgrade: weft-echo` by
/// echoing raw bytes on the upgraded connection.
pub async fn http_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo app");
    http_echo_on(listener)
}

/// [`http_echo`] on a listener the caller bound (for example in a network
/// namespace); returns its address.
pub fn http_echo_on(listener: TcpListener) -> SocketAddr {
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(echo);
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http2().max_concurrent_streams(1_000);
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

async fn echo(mut req: Request<Incoming>) -> Result<Response<EchoBody>, Infallible> {
    let seen = |name: &str| {
        req.headers()
            .get(name)
            .cloned()
            .unwrap_or(HeaderValue::from_static(""))
    };
    let client_id = seen(weft_api::consts::CLIENT_ID_HEADER);
    let host = seen("host");
    let traceparent = seen("traceparent");
    let b3 = match req
        .headers()
        .get("b3")
        .or(req.headers().get("x-b3-traceid"))
    {
        Some(v) => v.clone(),
        None => HeaderValue::from_static(""),
    };
    let version = HeaderValue::from_str(&format!("{:?}", req.version()))
        .unwrap_or(HeaderValue::from_static("?"));
    let wants_echo_upgrade = req
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v == ECHO_UPGRADE);
    let mut rsp = if wants_echo_upgrade {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut rsp = Response::new(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        );
        *rsp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        rsp.headers_mut().insert(
            http::header::UPGRADE,
            HeaderValue::from_static(ECHO_UPGRADE),
        );
        rsp.headers_mut().insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        rsp
    } else {
        Response::new(req.into_body().boxed())
    };
    let h = rsp.headers_mut();
    h.insert(SEEN_CLIENT_ID, client_id);
    h.insert(SEEN_VERSION, version);
    h.insert(SEEN_HOST, host);
    h.insert(SEEN_TRACEPARENT, traceparent);
    h.insert(SEEN_B3, b3);
    Ok(rsp)
}

/// Writes `data` on a connection upgraded to [`ECHO_UPGRADE`] while reading
/// it back, and returns what came back (the echo app's side sends each byte
/// it reads).
pub async fn echo_through(upgraded: hyper::upgrade::Upgraded, data: &[u8]) -> Vec<u8> {
    let mut io = TokioIo::new(upgraded);
    let (mut r, mut w) = tokio::io::split(&mut io);
    let send = async {
        w.write_all(data)
            .await
            .expect("write on the upgraded connection");
        w.flush().await.expect("flush the upgraded connection");
    };
    let recv = async {
        let mut got = vec![0u8; data.len()];
        r.read_exact(&mut got)
            .await
            .expect("read the echo on the upgraded connection");
        got
    };
    let ((), got) = tokio::join!(send, recv);
    got
}

/// A TCP server that writes back every byte it reads.
pub async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind tcp echo");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// The message of the test gRPC service.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoMessage {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

/// Full path of the bidirectional streaming method.
pub const GRPC_CHAT_PATH: &str = "/weft.test.Echo/Chat";
/// A message with these bytes ends the chat with INTERNAL (in the trailers,
/// after the replies before it).
pub const GRPC_FAIL: &[u8] = b"fail";

/// A tonic gRPC server with one bidirectional streaming method,
/// `weft.test.Echo/Chat`, that answers each message with the same message
/// ([`GRPC_FAIL`] excepted). Any other method is UNIMPLEMENTED (a
/// trailers-only response).
pub async fn grpc_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind grpc app");
    let addr = listener.local_addr().expect("local addr");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(EchoService)
            .serve_with_incoming(incoming)
            .await;
    });
    addr
}

#[derive(Clone, Debug)]
struct EchoService;

impl NamedService for EchoService {
    const NAME: &'static str = "weft.test.Echo";
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;
type MessageStream = Pin<Box<dyn Stream<Item = Result<EchoMessage, tonic::Status>> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for EchoService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if req.uri().path() != GRPC_CHAT_PATH {
                return Ok(tonic::Status::unimplemented("no such method").into_http());
            }
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<EchoMessage, EchoMessage>::default());
            Ok(grpc.streaming(Chat, req).await)
        })
    }
}

#[derive(Clone, Debug)]
struct Chat;

impl tonic::server::StreamingService<EchoMessage> for Chat {
    type Response = EchoMessage;
    type ResponseStream = MessageStream;
    type Future = BoxFuture<Result<tonic::Response<MessageStream>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<EchoMessage>>) -> Self::Future {
        Box::pin(async move {
            let stream: MessageStream = Box::pin(request.into_inner().map(|m| match m {
                Ok(m) if m.data == GRPC_FAIL => Err(tonic::Status::internal("asked to fail")),
                other => other,
            }));
            Ok(tonic::Response::new(stream))
        })
    }
}

/// Opens the bidirectional stream on `channel`.
pub async fn grpc_chat(
    channel: tonic::transport::Channel,
    outgoing: impl Stream<Item = EchoMessage> + Send + 'static,
) -> Result<tonic::Streaming<EchoMessage>, tonic::Status> {
    grpc_stream(channel, GRPC_CHAT_PATH, tonic::Request::new(outgoing)).await
}

/// Opens a bidirectional stream of [`EchoMessage`]s to the method at
/// `path`, with the request's metadata (a `traceparent`, say).
pub async fn grpc_stream<S>(
    channel: tonic::transport::Channel,
    path: &'static str,
    request: tonic::Request<S>,
) -> Result<tonic::Streaming<EchoMessage>, tonic::Status>
where
    S: Stream<Item = EchoMessage> + Send + 'static,
{
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let rsp = client
        .streaming(
            request,
            http::uri::PathAndQuery::from_static(path),
            ProstCodec::<EchoMessage, EchoMessage>::default(),
        )
        .await?;
    Ok(rsp.into_inner())
}

/// An app whose answers wait for the test: `GET /held` answers `held` once
/// [`HeldApp::release`] is called, `GET /stream` sends `first\n` at once and
/// `second\n` and `third\n` after the release (a response mid-body), any
/// other path answers `now` at once. It counts the requests it holds, so a
/// test can act while exactly N are in flight.
pub struct HeldApp {
    pub addr: SocketAddr,
    held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

/// The whole body of a `/stream` answer of [`HeldApp`].
pub const HELD_STREAM_BODY: &str = "first\nsecond\nthird\n";

impl HeldApp {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind held app");
        let addr = listener.local_addr().expect("local addr");
        let held = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let counter = held.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (held, released) = (counter.clone(), released.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        held_answer(req, held.clone(), released.clone())
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    builder.http2().max_concurrent_streams(1_000);
                    let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                });
            }
        });
        Self {
            addr,
            held,
            release,
        }
    }

    /// Requests waiting for the release now.
    pub fn held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits (at most `timeout`) until `n` requests are held.
    pub async fn wait_held(&self, n: usize, timeout: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.held() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} requests reached the app after {timeout:?}",
                self.held()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Lets every held answer, and every later one, finish.
    pub fn release(&self) {
        let _ = self.release.send(true);
    }
}

async fn held_answer(
    req: Request<Incoming>,
    held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    mut released: tokio::sync::watch::Receiver<bool>,
) -> Result<Response<EchoBody>, Infallible> {
    use std::sync::atomic::Ordering;
    let stream = match req.uri().path() {
        "/stream" => true,
        "/held" => false,
        _ => {
            return Ok(Response::new(
                Full::new(Bytes::from_static(b"now"))
                    .map_err(|never| match never {})
                    .boxed(),
            ));
        }
    };
    held.fetch_add(1, Ordering::SeqCst);
    if !stream {
        let _ = released.wait_for(|r| *r).await;
        held.fetch_sub(1, Ordering::SeqCst);
        return Ok(Response::new(
            Full::new(Bytes::from_static(b"held"))
                .map_err(|never| match never {})
                .boxed(),
        ));
    }
    let chunks = futures::stream::unfold(0u8, move |step| {
        let mut released = released.clone();
        let held = held.clone();
        async move {
            let chunk: &'static [u8] = match step {
                0 => b"first\n",
                1 => {
                    let _ = released.wait_for(|r| *r).await;
                    held.fetch_sub(1, Ordering::SeqCst);
                    b"second\n"
                }
                2 => b"third\n",
                _ => return None,
            };
            let frame = hyper::body::Frame::data(Bytes::from_static(chunk));
            Some((Ok::<_, hyper::Error>(frame), step + 1))
        }
    });
    Ok(Response::new(BodyExt::boxed(
        http_body_util::StreamBody::new(chunks),
    )))
}
