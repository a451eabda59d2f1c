//! The inbound side: traffic from other workloads to this workload's app.
//!
//! Mesh mTLS is terminated here; the client's identity, proven by its
//! certificate, is recorded and passed to the app in `weft-client-id`. The ALPN
//! protocol the client proxy chose says what follows: multiplexed HTTP/2,
//! HTTP/1.1 (for connection upgrades), or opaque bytes. Plaintext clients
//! (HTTP/1, h2c, opaque) are served as the inbound policy allows
//! ([`crate::authz`]); every request and opaque connection, meshed or not, is
//! authorized first: a refused HTTP request gets 403 with `weft-proxy-error:
//! unauthorized` (gRPC: `PERMISSION_DENIED`), a refused opaque connection is
//! closed. `weft-client-id` from the caller is always removed; the verified
//! identity replaces it on mesh requests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_api::consts::{CLIENT_ID_HEADER, ORIG_PROTO_HEADER, alpn};
use weft_api::tls::{MeshTls, peer_identity};

use crate::authz::{Authorizer, Caller};
use crate::config::AppTarget;
use crate::detect::{self, Protocol};
use crate::http::{
    Body, BoxError, ProxyError, error_response, incoming, is_grpc, serve_http1, serve_http2,
    splice_upgrade, strip_hop_by_hop, wants_upgrade,
};
use crate::metrics::{Direction, Metrics, RequestLabels, TcpLabels};
use crate::outbound::pool::{self, H2Pool, Http1Error, Http1Pool};
use crate::sockopt::original_dst;
use crate::transport::connect_tcp;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared by every inbound connection of a proxy.
pub struct Inbound {
    acceptor: TlsAcceptor,
    metrics: Arc<Metrics>,
    app: AppTarget,
    detect_timeout: Duration,
    /// HTTP/1 clients' time to send a request's head, from its first byte.
    header_timeout: Duration,
    app_http1: Arc<Http1Pool>,
    app_http2: H2Pool<SocketAddr>,
    /// Ports of the proxy's own listeners: never an app port.
    own_ports: Arc<[u16]>,
    authz: Authorizer,
    tracer: Option<Arc<crate::trace::Tracer>>,
    /// One log line per request (`WEFT_PROXY_ACCESS_LOG`).
    access_log: bool,
    /// This workload's TLS state: its identity, for spans.
    tls: Arc<MeshTls>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("app", &self.app)
            .field("detect_timeout", &self.detect_timeout)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    #[allow(clippy::too_many_arguments)] // one call site, each argument different
    pub fn new(
        tls: &Arc<MeshTls>,
        metrics: Arc<Metrics>,
        app: AppTarget,
        detect_timeout: Duration,
        header_timeout: Duration,
        own_ports: Arc<[u16]>,
        authz: Authorizer,
        tracer: Option<Arc<crate::trace::Tracer>>,
        access_log: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            tracer,
            access_log,
            tls: tls.clone(),
            acceptor: TlsAcceptor::from(tls.server_config()),
            authz,
            metrics,
            app,
            detect_timeout,
            header_timeout,
            app_http1: Http1Pool::new(),
            app_http2: H2Pool::default(),
            own_ports,
        })
    }
}

/// Accepts connections on the inbound listener until `shutdown`.
pub async fn serve(
    inbound: Arc<Inbound>,
    listener: TcpListener,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let stop = shutdown.clone();
    weft_api::accept::accept_loop(
        listener,
        "inbound",
        shutdown,
        tracker,
        move |tcp, client| handle_connection(inbound.clone(), tcp, client, stop.clone()),
    )
    .await;
}

async fn handle_connection(
    inbound: Arc<Inbound>,
    tcp: TcpStream,
    client: SocketAddr,
    shutdown: CancellationToken,
) {
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
    // The port the caller dialled, which policy is about: the app's port
    // (intercepted), or this listener's (local mode, where the listener is
    // the endpoint callers are given).
    let (app_addr, port) = match inbound.app {
        AppTarget::Fixed(addr) => {
            let dialled = tcp.local_addr().map_or(addr.port(), |a| a.port());
            (addr, dialled)
        }
        AppTarget::OriginalDst => match original_app_addr(&tcp, &inbound.own_ports) {
            Ok(addr) => (addr, addr.port()),
            Err(reason) => {
                inbound.metrics.inbound_refused(reason);
                tracing::warn!(%client, reason, "refused an inbound connection");
                return;
            }
        },
    };
    let detection = match detect::detect(tcp, inbound.detect_timeout).await {
        Ok(d) => d,
        Err(error) => {
            tracing::debug!(%client, %error, "connection failed during protocol detection");
            return;
        }
    };
    inbound.metrics.detected(
        Direction::Inbound,
        detection.protocol.as_str(),
        detection.timed_out,
    );
    match detection.protocol {
        Protocol::Tls => {}
        Protocol::Http1 | Protocol::Http2 => {
            let caller = Arc::new(Caller::plaintext());
            let io = inbound.metrics.tcp(
                TcpLabels {
                    direction: Direction::Inbound,
                    tls: false,
                    peer_identity: caller.label.clone(),
                },
                detection.io,
            );
            let http2 = detection.protocol == Protocol::Http2;
            serve_app_http(inbound, io, app_addr, port, caller, http2, &shutdown).await;
            return;
        }
        Protocol::Opaque => {
            if inbound.authz.allows(port, &Caller::plaintext(), None).await {
                relay_to_app(detection.io, app_addr, client).await;
            }
            return;
        }
    }
    let accepted = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        inbound.acceptor.accept(detection.io).into_fallible(),
    )
    .await;
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err((error, io))) => {
            inbound
                .metrics
                .handshake_failed(Direction::Inbound, "tls-failure");
            tracing::warn!(%client, %error, "refused a mesh client: TLS handshake failed");
            linger(io).await;
            return;
        }
        Err(_) => {
            inbound
                .metrics
                .handshake_failed(Direction::Inbound, "timeout");
            tracing::warn!(%client, "refused a mesh client: TLS handshake timed out");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    inbound
        .metrics
        .handshake(Direction::Inbound, conn.negotiated_key_exchange_group());
    // The verifier already required exactly one valid identity.
    let identity = match conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(peer_identity)
    {
        Some(Ok(id)) => id,
        Some(Err(error)) => {
            tracing::warn!(%client, %error, "refused a mesh client without a usable identity");
            return;
        }
        None => {
            tracing::warn!(%client, "refused a mesh client without a certificate");
            return;
        }
    };
    let proto = conn.alpn_protocol().map(<[u8]>::to_vec);
    let caller = Arc::new(Caller::mesh(identity));
    tracing::debug!(%client, identity = %caller.label, "accepted mesh connection");
    let io = inbound.metrics.tcp(
        TcpLabels {
            direction: Direction::Inbound,
            tls: true,
            peer_identity: caller.label.clone(),
        },
        tls,
    );
    match proto.as_deref() {
        Some(p) if p == alpn::H2 => {
            serve_app_http(inbound, io, app_addr, port, caller, true, &shutdown).await;
        }
        Some(p) if p == alpn::HTTP1 => {
            serve_app_http(inbound, io, app_addr, port, caller, false, &shutdown).await;
        }
        _ => {
            if inbound.authz.allows(port, &caller, None).await {
                relay_to_app(io, app_addr, client).await;
            }
        }
    }
}

/// Serves HTTP/1 or HTTP/2 from `caller` on `io`, each request authorized
/// then sent to the app.
async fn serve_app_http<I>(
    inbound: Arc<Inbound>,
    io: I,
    app_addr: SocketAddr,
    port: u16,
    caller: Arc<Caller>,
    http2: bool,
    shutdown: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = inbound.header_timeout;
    let client_id = caller
        .identity
        .as_ref()
        .and_then(|_| HeaderValue::from_str(&caller.label).ok());
    let svc = service_fn(move |req| {
        let inbound = inbound.clone();
        let client_id = client_id.clone();
        let caller = caller.clone();
        async move {
            Ok::<_, std::convert::Infallible>(
                handle_request(&inbound, app_addr, port, client_id, &caller, req).await,
            )
        }
    });
    let result = if http2 {
        serve_http2(io, svc, shutdown).await
    } else {
        serve_http1(io, svc, shutdown, header_timeout).await
    };
    if let Err(error) = result {
        tracing::debug!(%error, "inbound HTTP connection closed with an error");
    }
}

/// The app's address for a connection iptables redirected here: loopback at
/// the port the client dialled. A connection to one of the proxy's own ports
/// (a loop, or a client dialling the inbound port directly) is refused, with
/// the reason as a metric label.
fn original_app_addr(tcp: &TcpStream, own_ports: &[u16]) -> Result<SocketAddr, &'static str> {
    let orig = original_dst(tcp).map_err(|error| {
        tracing::debug!(%error, "no original destination");
        "no-original-destination"
    })?;
    if own_ports.contains(&orig.port()) {
        return Err("loop");
    }
    let loopback: IpAddr = if orig.is_ipv4() {
        Ipv4Addr::LOCALHOST.into()
    } else {
        Ipv6Addr::LOCALHOST.into()
    };
    Ok(SocketAddr::new(loopback, orig.port()))
}

/// Closes a refused connection gracefully: FIN after the TLS alert, then the
/// client's bytes in flight are read and dropped for up to a second. Closing
/// with unread data would send a reset, which can destroy the alert before
/// the client reads it (with TLS 1.3 a client whose certificate is refused has
/// already sent its first request), leaving it to guess why.
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(mut io: I) {
    use tokio::io::AsyncReadExt;
    let _ = io.shutdown().await;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

async fn relay_to_app<I: AsyncRead + AsyncWrite + Unpin>(
    mut io: I,
    app: SocketAddr,
    client: SocketAddr,
) {
    let mut tcp = match connect_tcp(app).await {
        Ok(tcp) => tcp,
        Err(error) => {
            tracing::warn!(%client, %app, %error, "cannot reach the app; closing the opaque connection");
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut io, &mut tcp).await {
        Ok((to_app, from_app)) => {
            tracing::debug!(%client, to_app, from_app, "opaque connection closed");
        }
        Err(error) => tracing::debug!(%client, %error, "opaque connection failed"),
    }
}

/// Why a request could not be delivered to the app.
#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error("the app at {app} did not answer: {source}")]
    Http1 {
        app: SocketAddr,
        #[source]
        source: Http1Error,
    },
    #[error("the app at {app} did not answer over HTTP/2: {source}")]
    Http2 {
        app: SocketAddr,
        #[source]
        source: BoxError,
    },
    #[error("cannot build the app request URI: {0}")]
    Uri(#[from] http::Error),
}

async fn handle_request(
    inbound: &Inbound,
    app: SocketAddr,
    port: u16,
    client_id: Option<HeaderValue>,
    caller: &Caller,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let start = Instant::now();
    let grpc = is_grpc(&req);
    let span = inbound
        .tracer
        .as_ref()
        .and_then(|t| t.begin(req.headers_mut()))
        .map(Box::new);
    let request = (span.is_some() || inbound.access_log)
        .then(|| Box::new(crate::trace::SpanRequest::of(&req)));
    let label = caller.label.clone();
    let path = req.uri().path();
    let rsp = if inbound
        .authz
        .allows(port, caller, Some((req.method().as_str(), path)))
        .await
    {
        to_app(inbound, app, client_id, caller, req, grpc).await
    } else {
        let detail = match caller.identity {
            Some(_) => format!(
                "{} may not call port {} of this workload; an AuthorizationPolicy must allow it",
                caller.label, port
            ),
            None => format!(
                "port {} of this workload requires a mesh identity (mTLS); call it through a \
                 weft proxy, or allow plaintext with an AuthorizationPolicy",
                port
            ),
        };
        error_response(ProxyError::Unauthorized, &detail, grpc)
    };
    let elapsed = start.elapsed();
    tracing::debug!(
        %app,
        client = %label,
        status = rsp.status().as_u16(),
        headers_us = elapsed.as_micros() as u64,
        "inbound request"
    );
    // A gRPC span waiting for its status in the trailers.
    let mut pending = None;
    if let Some(request) = request {
        let own = inbound.tls.credentials().map(|c| c.identity().uri());
        let outcome = crate::trace::Outcome {
            client_identity: &caller.label,
            server_identity: own.as_deref().unwrap_or(""),
            mtls: caller.identity.is_some(),
            endpoint: Some(app),
            ..request.outcome(&rsp, grpc)
        };
        if inbound.access_log {
            let trace_id = span.as_ref().map(|s| s.trace_id());
            crate::access::log(Direction::Inbound, &outcome, elapsed, trace_id.as_deref());
        }
        if let (Some(tracer), Some(span)) = (&inbound.tracer, span) {
            pending = tracer.finish(*span, crate::trace::Kind::Server, &outcome);
        }
    }
    inbound.metrics.request(
        &RequestLabels {
            direction: Direction::Inbound,
            status_code: rsp.status().as_u16(),
            tls: caller.identity.is_some(),
            peer_identity: label,
        },
        elapsed,
    );
    match pending {
        Some(pending) => pending.end_with(rsp),
        None => rsp,
    }
}

/// Sends an authorized request to the app: `weft-client-id` is the verified
/// identity or nothing, and the original protocol is restored.
async fn to_app(
    inbound: &Inbound,
    app: SocketAddr,
    client_id: Option<HeaderValue>,
    caller: &Caller,
    mut req: Request<Incoming>,
    grpc: bool,
) -> Response<Body> {
    let headers = req.headers_mut();
    // Only the proxy may say who the caller is.
    headers.remove(CLIENT_ID_HEADER);
    if let Some(client_id) = client_id {
        headers.insert(CLIENT_ID_HEADER, client_id);
    }
    // Only a client proxy sets the original protocol of a request it carried
    // over HTTP/2; a plaintext caller's header is not trusted.
    let orig_proto = headers
        .remove(ORIG_PROTO_HEADER)
        .filter(|_| caller.identity.is_some());
    let result = if req.version() == Version::HTTP_2 && orig_proto.is_none() {
        to_app_http2(inbound, app, req).await
    } else {
        to_app_http1(inbound, app, orig_proto, req).await
    };
    match result {
        Ok(rsp) => rsp,
        Err(error) => {
            tracing::warn!(%app, client = %caller.label, %error, "inbound request failed");
            error_response(ProxyError::AppUnavailable, &error.to_string(), grpc)
        }
    }
}

/// Delivers a request to the app over HTTP/1.1, restoring the original
/// protocol of a request that crossed the mesh as HTTP/2.
async fn to_app_http1(
    inbound: &Inbound,
    app: SocketAddr,
    orig_proto: Option<HeaderValue>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, AppError> {
    let from_http2 = req.version() == Version::HTTP_2;
    let downstream = (!from_http2 && wants_upgrade(&req)).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    if from_http2 {
        if !parts.headers.contains_key(header::HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, host);
        }
        parts.version = match orig_proto.as_ref().map(HeaderValue::as_bytes) {
            Some(b"HTTP/1.0") => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
    }
    // Origin form (`/path?query`) on the connection to the app.
    parts.uri =
        crate::http::origin_form(std::mem::take(&mut parts.uri)).map_err(http::Error::from)?;
    let mut rsp = inbound
        .app_http1
        .send(app, Request::from_parts(parts, incoming(body)))
        .await
        .map_err(|source| AppError::Http1 { app, source })?;
    if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(downstream) = downstream {
            splice_upgrade(downstream, hyper::upgrade::on(&mut rsp));
        }
    } else if from_http2 {
        strip_hop_by_hop(rsp.headers_mut());
    }
    Ok(rsp.map(incoming))
}

/// Delivers an HTTP/2 request (gRPC, h2c) to the app over one multiplexed
/// connection.
async fn to_app_http2(
    inbound: &Inbound,
    app: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, AppError> {
    let err = |source: BoxError| AppError::Http2 { app, source };
    let mut tx = inbound
        .app_http2
        .get(&app, || async {
            let tcp = connect_tcp(app).await.map_err(|e| err(e.into()))?;
            pool::handshake(tcp).await.map_err(|e| err(e.into()))
        })
        .await?
        .tx;
    let rsp = tx
        .send_request(req.map(incoming))
        .await
        .map_err(|e| err(e.into()))?;
    Ok(rsp.map(incoming))
}
