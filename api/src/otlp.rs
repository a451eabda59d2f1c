//! An OTLP/gRPC trace receiver (`opentelemetry.proto.collector.trace.v1.TraceService`),
//! built on the `opentelemetry-proto` types: what the tests, `weft demo` and
//! the benchmarks receive the proxies' spans with. Spans are converted to
//! [`ReceivedSpan`] at the edge and kept in memory (the newest
//! [`KEPT_SPANS`]). It serves in plaintext ([`Receiver::start`]) or over TLS
//! ([`Receiver::start_tls`], a collector on `https://`).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{span, status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How many spans a receiver keeps (the oldest go first).
pub const KEPT_SPANS: usize = 100_000;

/// A span's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

/// A span's status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCode {
    Unset,
    Ok,
    Error,
}

/// One span as received.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSpan {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub trace_state: String,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub status: StatusCode,
    pub status_message: String,
    /// Values as text: booleans `true`/`false`, integers in decimal.
    pub attributes: BTreeMap<String, String>,
    /// The resource's `service.name`.
    pub service_name: String,
    pub resource: BTreeMap<String, String>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_unix_ns.saturating_sub(self.start_unix_ns))
    }
}

/// Why a receiver could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("the OTLP receiver cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {0:?} waiting for the spans asked for")]
    Timeout(Duration),
    #[error("the OTLP receiver's TLS certificate or key is unusable: {0}")]
    Tls(String),
}

#[derive(Default)]
struct Store {
    spans: VecDeque<ReceivedSpan>,
    exports: u64,
    delay: Duration,
}

#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    /// Bumped after every export.
    changed: Arc<watch::Sender<u64>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves plain data: still usable.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running receiver; dropping it stops it.
pub struct Receiver {
    addr: SocketAddr,
    tls: bool,
    shared: Shared,
    stop: CancellationToken,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// Listens on `addr` (port 0: any) and serves OTLP/gRPC in plaintext
    /// (HTTP/2), on the current tokio runtime.
    pub async fn start(addr: SocketAddr) -> Result<Self, OtlpError> {
        let (listener, addr) = bind(addr).await?;
        let stop = CancellationToken::new();
        let incoming = crate::accept::incoming(
            listener,
            "otlp",
            stop.clone(),
            |tcp, _| async move { Some(tcp) },
        );
        Ok(Self::serve(addr, false, incoming, stop))
    }

    /// Like [`start`](Self::start), over TLS (HTTP/2 by ALPN) with the
    /// certificate chain (leaf first) and private key given as PEM: a
    /// collector on `https://`. A client whose handshake fails is dropped.
    pub async fn start_tls(
        addr: SocketAddr,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, OtlpError> {
        let chain = crate::tls::certs_from_pem(chain_pem, "the OTLP receiver's chain")
            .map_err(|e| OtlpError::Tls(e.to_string()))?;
        let key = rustls_pemfile::private_key(&mut &*key_pem)
            .map_err(|e| OtlpError::Tls(e.to_string()))?
            .ok_or_else(|| OtlpError::Tls("no PEM private key".to_owned()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| OtlpError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| OtlpError::Tls(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (listener, addr) = bind(addr).await?;
        // The workspace's accept loop (tonic's would spin out of file
        // descriptors); handshakes run in their own tasks (a slow one holds up
        // no other) and the finished streams are served.
        let stop = CancellationToken::new();
        let incoming = crate::accept::incoming(listener, "otlp", stop.clone(), move |tcp, _| {
            let acceptor = acceptor.clone();
            async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => Some(TlsIo(Box::new(tls))),
                    Err(error) => {
                        tracing::debug!(%error, "a TLS handshake with the OTLP receiver failed");
                        None
                    }
                }
            }
        });
        let receiver = Self::serve(addr, true, incoming, stop);
        Ok(receiver)
    }

    /// Serves `incoming` until `stop` (which also stops accepting).
    fn serve<S, IO>(addr: SocketAddr, tls: bool, incoming: S, stop: CancellationToken) -> Self
    where
        S: tokio_stream::Stream<Item = std::io::Result<IO>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
    {
        let shared = Shared {
            store: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        };
        let service = TraceServiceServer::new(Service {
            shared: shared.clone(),
        });
        let stopped = stop.clone();
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stopped.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "the OTLP receiver stopped");
            }
        });
        Self {
            addr,
            tls,
            shared,
            stop,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>` (`https://` over TLS): what
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` takes.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Every span kept.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.lock().spans.iter().cloned().collect()
    }

    /// Every span kept, removing them.
    pub fn take(&self) -> Vec<ReceivedSpan> {
        self.shared.lock().spans.drain(..).collect()
    }

    /// Export calls answered so far.
    pub fn exports(&self) -> u64 {
        self.shared.lock().exports
    }

    /// Answers every later export this late (a slow collector).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// Stops serving: later exports fail to connect.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits until the spans kept satisfy `done`, and returns them.
    pub async fn wait_for(
        &self,
        done: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<ReceivedSpan>, OtlpError> {
        let mut changed = self.shared.changed.subscribe();
        let wait = async {
            loop {
                let spans = self.spans();
                if done(&spans) {
                    return spans;
                }
                if changed.changed().await.is_err() {
                    // The sender lives as long as `self`: not reached.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| OtlpError::Timeout(timeout))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), OtlpError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| OtlpError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| OtlpError::Bind { addr, source })?;
    Ok((listener, addr))
}

/// A TLS connection to the receiver, as tonic serves it.
struct TlsIo(Box<tokio_rustls::server::TlsStream<TcpStream>>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

struct Service {
    shared: Shared,
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let delay = self.shared.lock().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let spans = convert(request.into_inner());
        {
            let mut store = self.shared.lock();
            store.exports += 1;
            for span in spans {
                if store.spans.len() >= KEPT_SPANS {
                    store.spans.pop_front();
                }
                store.spans.push_back(span);
            }
        }
        self.shared.changed.send_modify(|n| *n += 1);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

/// The wire request as domain spans.
fn convert(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service_name = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                let kind = match span::SpanKind::try_from(s.kind) {
                    Ok(span::SpanKind::Internal) => SpanKind::Internal,
                    Ok(span::SpanKind::Server) => SpanKind::Server,
                    Ok(span::SpanKind::Client) => SpanKind::Client,
                    Ok(span::SpanKind::Producer) => SpanKind::Producer,
                    Ok(span::SpanKind::Consumer) => SpanKind::Consumer,
                    _ => SpanKind::Unspecified,
                };
                let (status, status_message) = match &s.status {
                    Some(st) => (
                        match status::StatusCode::try_from(st.code) {
                            Ok(status::StatusCode::Ok) => StatusCode::Ok,
                            Ok(status::StatusCode::Error) => StatusCode::Error,
                            _ => StatusCode::Unset,
                        },
                        st.message.clone(),
                    ),
                    None => (StatusCode::Unset, String::new()),
                };
                out.push(ReceivedSpan {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: (!s.parent_span_id.is_empty()).then(|| hex(&s.parent_span_id)),
                    trace_state: s.trace_state.clone(),
                    name: s.name.clone(),
                    kind,
                    start_unix_ns: s.start_time_unix_nano,
                    end_unix_ns: s.end_time_unix_nano,
                    status,
                    status_message,
                    attributes: attributes(&s.attributes),
                    service_name: service_name.clone(),
                    resource: resource.clone(),
                });
            }
        }
    }
    out
}
