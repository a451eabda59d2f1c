//! One outbound HTTP request: choose an endpoint, send it over mesh mTLS, and
//! record it.

use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use weft_api::consts::{ORIG_PROTO_HEADER, alpn};

use std::sync::Arc;

use weft_api::policy::Route;

use super::upstream::{BreakerContext, EndpointRuntime, Outcome, Resolved, Upstream};
use super::{Outbound, balance, pool};
use crate::config::Endpoint;
use crate::http::{
    Body, ProxyError, error_response, incoming, is_grpc, request_body, strip_hop_by_hop,
};
use crate::metrics::{Direction, RequestLabels};
use crate::trace::SpanRequest;
use crate::transport::{ConnectError, connect_mesh};

/// Why an outbound request failed inside the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP/2 handshake with {peer} failed: {source}")]
    Handshake {
        peer: String,
        #[source]
        source: hyper::Error,
    },
    #[error("request to {peer} failed: {source}")]
    Send {
        peer: String,
        #[source]
        source: hyper::Error,
    },
    #[error(
        "peer {peer} refused the TLS session: {alert}; it may not trust this proxy's certificate"
    )]
    PeerTls { peer: String, alert: String },
    #[error("cannot build the request URI for authority {authority:?}: {reason}")]
    Uri { authority: String, reason: String },
    /// A plaintext request to an endpoint outside the mesh.
    #[error("plaintext request to {peer} (not in the mesh) failed: {source}")]
    Plain {
        peer: String,
        /// The connection could not be made (nothing was sent).
        connect: bool,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ForwardError {
    pub(crate) fn kind(&self) -> ProxyError {
        match self {
            Self::Connect(e) => e.kind(),
            Self::PeerTls { .. } => ProxyError::TlsFailure,
            Self::Handshake { .. } | Self::Send { .. } | Self::Uri { .. } | Self::Plain { .. } => {
                ProxyError::PeerUnavailable
            }
        }
    }

    /// With TLS 1.3 the client finishes its handshake before the server has
    /// checked the client certificate, so a refusal by the server shows up as
    /// a TLS alert on the first read: name it as a TLS failure.
    fn peer(peer: &Endpoint, source: hyper::Error, handshake: bool) -> Self {
        let peer = peer.addr.to_string();

        if let Some(alert) = crate::transport::tls_cause(&source) {
            return Self::PeerTls { peer, alert };
        }
        if handshake {
            Self::Handshake { peer, source }
        } else {
            Self::Send { peer, source }
        }
    }
}

/// Where a request went and what came back.
pub(crate) struct Done {
    pub rsp: Response<Body>,
    /// The backend (index into the snapshot's backends) of the last try.
    pub backend: Option<usize>,
    pub endpoint: Option<Arc<EndpointRuntime>>,
    /// Tries sent after the first (retries).
    pub resends: u32,
}

impl Done {
    pub(crate) fn error(error: ProxyError, detail: &str, grpc: bool) -> Self {
        Self {
            rsp: error_response(error, detail, grpc),
            backend: None,
            endpoint: None,
            resends: 0,
        }
    }
}

/// Handles one request from the app to `upstream`. Never fails: errors become
/// responses naming the cause in `weft-proxy-error`.
///
/// The snapshot is read per request, so a keep-alive connection follows a new
/// weight on its next request. A route with retries or timeouts takes the
/// boxed [`super::retry`] path; any other request is one try.
pub async fn handle(
    outbound: &Outbound,
    upstream: &Upstream,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let start = Instant::now();
    let grpc = is_grpc(&req);
    // Boxed: only sampled (or logged) requests carry them, and the future
    // stays small.
    let span = outbound
        .tracer
        .as_ref()
        .and_then(|t| t.begin(req.headers_mut()))
        .map(Box::new);
    let request = (span.is_some() || outbound.access_log).then(|| Box::new(SpanRequest::of(&req)));
    let resolved = upstream.resolve();
    let route = balance::route(
        &resolved.state.routes,
        req.method().as_str(),
        req.uri().path(),
        req.headers(),
    );
    let resilient = route.is_some_and(|(_, r)| {
        r.retry.as_ref().is_some_and(|p| p.attempts > 0)
            || r.timeouts.request.is_some()
            || r.timeouts.backend_request.is_some()
    });
    let done = if req.version() != Version::HTTP_2 && crate::http::wants_upgrade(&req) {
        // Rare: boxed so that the future of every request stays small.
        Box::pin(upgrade(outbound, upstream, &resolved, route, req, grpc)).await
    } else if resilient {
        Box::pin(super::retry::resilient(
            outbound, upstream, &resolved, route, req, grpc,
        ))
        .await
    } else {
        once(outbound, upstream, &resolved, route, req, grpc).await
    };
    let elapsed = start.elapsed();
    let backend = done
        .backend
        .and_then(|i| resolved.backend_names.get(i))
        .cloned()
        .unwrap_or_else(|| Arc::from(""));
    let route_name = route
        .and_then(|(i, _)| resolved.route_names.get(i))
        .cloned()
        .unwrap_or_else(|| Arc::from(""));
    let peer_identity = done
        .endpoint
        .as_ref()
        .and_then(|e| e.endpoint.identity.as_ref())
        .map_or_else(|| Arc::from(""), |i| i.uri());
    let status = done.rsp.status().as_u16();
    let tls = done.endpoint.as_ref().is_none_or(|e| e.mesh.is_some());
    // A gRPC span waiting for its status in the trailers.
    let mut pending = None;
    if let Some(request) = request {
        let own = outbound.tls.credentials().map(|c| c.identity().uri());
        let outcome = crate::trace::Outcome {
            client_identity: own.as_deref().unwrap_or(""),
            server_identity: &peer_identity,
            mtls: tls && done.endpoint.is_some(),
            route: &route_name,
            backend: &backend,
            endpoint: done.endpoint.as_ref().map(|e| e.addr()),
            resend_count: done.resends,
            ..request.outcome(&done.rsp, grpc)
        };
        if outbound.access_log {
            let trace_id = span.as_ref().map(|s| s.trace_id());
            crate::access::log(Direction::Outbound, &outcome, elapsed, trace_id.as_deref());
        }
        if let (Some(tracer), Some(span)) = (&outbound.tracer, span) {
            pending = tracer.finish(*span, crate::trace::Kind::Client, &outcome);
        }
    }
    outbound.metrics.outbound_request(
        RequestLabels {
            direction: Direction::Outbound,
            status_code: status,
            tls,
            peer_identity,
        },
        backend,
        route_name,
        elapsed,
    );
    tracing::debug!(
        target = %upstream.name,
        endpoint = ?done.endpoint.as_ref().map(|e| e.addr()),
        status,
        headers_us = elapsed.as_micros() as u64,
        "outbound request"
    );
    match pending {
        Some(pending) => pending.end_with(done.rsp),
        None => done.rsp,
    }
}

/// Picks a backend and an endpoint for a try, avoiding `avoid` when it can.
/// `route` is the route taken and its index in the snapshot's routes, as
/// [`balance::route`] gives them.
pub(crate) fn pick(
    upstream: &Upstream,
    resolved: &Resolved,
    route: Option<(usize, &Route)>,
    avoid: Option<&Arc<EndpointRuntime>>,
) -> Option<(usize, Arc<EndpointRuntime>)> {
    let b = balance::backend(resolved, route)?;
    let endpoints = resolved.backends.get(b)?;
    let e = balance::endpoint(
        upstream.runtime(),
        endpoints,
        &resolved.state.load_balancer,
        avoid,
    )?;
    Some((b, e))
}

/// Records a try's outcome in the endpoint's latency and breaker state.
pub(crate) fn record(
    outbound: &Outbound,
    upstream: &Upstream,
    resolved: &Resolved,
    backend: usize,
    endpoint: &EndpointRuntime,
    rtt: std::time::Duration,
    failed: bool,
) {
    let ctx = BreakerContext {
        breaker: resolved.state.circuit_breaker.as_ref(),
        siblings: resolved.backends.get(backend).map_or(&[], Vec::as_slice),
        metrics: &outbound.metrics,
        target: &upstream.name,
        backend: resolved.backend_names.get(backend).map_or("", |b| b),
    };
    let outcome = if failed {
        Outcome::Failure
    } else {
        Outcome::Success
    };
    endpoint.record(rtt, outcome, &resolved.state.load_balancer, &ctx);
}

/// The message for a target with nothing to send to.
pub(crate) fn no_endpoints(upstream: &Upstream, grpc: bool) -> Done {
    Done::error(
        ProxyError::NoEndpoints,
        &format!("service {} has no endpoints", upstream.name),
        grpc,
    )
}

/// One try, no retries: the path of every request whose route retries nothing.
async fn once(
    outbound: &Outbound,
    upstream: &Upstream,
    resolved: &Resolved,
    route: Option<(usize, &Route)>,
    req: Request<Incoming>,
    grpc: bool,
) -> Done {
    let Some((backend, endpoint)) = pick(upstream, resolved, route, None) else {
        return no_endpoints(upstream, grpc);
    };
    let flight = endpoint.start();
    let sent = Instant::now();
    let connect_timeout = resolved
        .state
        .connect_timeout
        .unwrap_or(outbound.connect_timeout);
    let result = match endpoint.mesh.as_ref() {
        Some(mesh) => {
            forward(
                outbound,
                &upstream.name,
                mesh,
                req.map(request_body),
                connect_timeout,
            )
            .await
        }
        // Boxed: only endpoints outside the mesh take it, and inline it
        // took every request's future to 3.6 KB, past its 3 KB bound.
        None => {
            Box::pin(send_plain(
                outbound,
                endpoint.addr(),
                req.map(request_body),
                connect_timeout,
            ))
            .await
        }
    };
    let rtt = sent.elapsed();
    let rsp = match result {
        Ok(rsp) => {
            let failed = rsp.status().is_server_error();
            record(
                outbound, upstream, resolved, backend, &endpoint, rtt, failed,
            );
            rsp
        }
        Err(error) => {
            record(outbound, upstream, resolved, backend, &endpoint, rtt, true);
            failure_response(upstream, &endpoint, &error, grpc)
        }
    };
    drop(flight);
    Done {
        rsp,
        backend: Some(backend),
        endpoint: Some(endpoint),
        resends: 0,
    }
}

pub(crate) fn failure_response(
    upstream: &Upstream,
    endpoint: &EndpointRuntime,
    error: &ForwardError,
    grpc: bool,
) -> Response<Body> {
    tracing::warn!(
        target = %upstream.name,
        endpoint = %endpoint.addr(),
        identity = endpoint.endpoint.identity.as_ref().map_or_else(|| "(not meshed)".to_owned(), ToString::to_string),
        %error,
        "outbound request failed"
    );
    error_response(error.kind(), &error.to_string(), grpc)
}

/// Sends a request in plaintext to an endpoint outside the mesh (one with no
/// identity: a pod without a proxy): as it came from the app, HTTP/1.x on a
/// pooled HTTP/1.1 connection (origin-form URI), HTTP/2 (h2c, gRPC) on one
/// multiplexed connection per endpoint. Nothing of the mesh is added: the
/// server is not a weft proxy.
pub(crate) async fn send_plain(
    outbound: &Outbound,
    addr: std::net::SocketAddr,
    req: Request<Body>,
    connect_timeout: std::time::Duration,
) -> Result<Response<Body>, ForwardError> {
    let conn = plain_connection(outbound, addr, req.version(), connect_timeout).await?;
    send_plain_on(outbound, addr, conn, req).await
}

/// A connection to an endpoint outside the mesh for one request of
/// `version`, made (or found) before the request is sent, so that a failure
/// to connect leaves the request's body unread and the try can go again.
pub(crate) async fn plain_connection(
    outbound: &Outbound,
    addr: std::net::SocketAddr,
    version: Version,
    connect_timeout: std::time::Duration,
) -> Result<PlainConn, ForwardError> {
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| plain_error(addr, true, source);
    if version == Version::HTTP_2 {
        let conn = outbound
            .plain_http2
            .get(&addr, || async {
                let tcp =
                    tokio::time::timeout(connect_timeout, crate::transport::connect_tcp(addr))
                        .await
                        .map_err(|e| failed(e.into()))?
                        .map_err(|e| failed(e.into()))?;
                pool::handshake(tcp).await.map_err(|e| failed(e.into()))
            })
            .await?;
        return Ok(PlainConn::Http2(conn));
    }
    let conn = tokio::time::timeout(connect_timeout, outbound.plain_http1.connection(addr))
        .await
        .map_err(|e| failed(e.into()))?
        .map_err(|e| failed(e.into()))?;
    Ok(PlainConn::Http1(conn))
}

/// A connection to an endpoint outside the mesh ([`plain_connection`]).
pub(crate) enum PlainConn {
    /// One of the pooled HTTP/1.1 connections, one request at a time.
    Http1(pool::Http1Conn),
    /// The endpoint's one multiplexed h2c connection.
    Http2(pool::Conn),
}

/// Sends `req` on `conn`, a connection to `addr` from [`plain_connection`].
pub(crate) async fn send_plain_on(
    outbound: &Outbound,
    addr: std::net::SocketAddr,
    conn: PlainConn,
    req: Request<Body>,
) -> Result<Response<Body>, ForwardError> {
    match conn {
        PlainConn::Http2(conn) => {
            let mut tx = conn.tx;
            let rsp = tx
                .send_request(req)
                .await
                .map_err(|e| plain_error(addr, false, e.into()))?;
            Ok(rsp.map(incoming))
        }
        PlainConn::Http1(conn) => {
            let (mut parts, body) = req.into_parts();
            plain_form(&mut parts).map_err(|e| plain_error(addr, false, e.into()))?;
            let rsp = outbound
                .plain_http1
                .send_on(addr, conn, Request::from_parts(parts, body))
                .await
                .map_err(|e| {
                    let connect = matches!(e, pool::Http1Error::Connect(_));
                    plain_error(addr, connect, e.into())
                })?;
            Ok(rsp.map(incoming))
        }
    }
}

fn plain_error(
    addr: std::net::SocketAddr,
    connect: bool,
    source: Box<dyn std::error::Error + Send + Sync>,
) -> ForwardError {
    ForwardError::Plain {
        peer: addr.to_string(),
        connect,
        source,
    }
}

/// The form an HTTP/1 request takes to a server outside the mesh: a `Host`
/// header (from the authority when the app sent none) and an origin-form URI.
fn plain_form(parts: &mut http::request::Parts) -> Result<(), http::Error> {
    if !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    parts.uri = crate::http::origin_form(std::mem::take(&mut parts.uri))?;
    Ok(())
}

async fn upgrade(
    outbound: &Outbound,
    upstream: &Upstream,
    resolved: &Resolved,
    route: Option<(usize, &Route)>,
    req: Request<Incoming>,
    grpc: bool,
) -> Done {
    let Some((backend, endpoint)) = pick(upstream, resolved, route, None) else {
        return no_endpoints(upstream, grpc);
    };
    let rsp = match forward_upgrade(outbound, &endpoint, req).await {
        Ok(rsp) => rsp,
        Err(error) => failure_response(upstream, &endpoint, &error, grpc),
    };
    Done {
        rsp,
        backend: Some(backend),
        endpoint: Some(endpoint),
        resends: 0,
    }
}

/// Turns the app's request into the HTTP/2 request sent to the peer. An
/// HTTP/1 request travels as HTTP/2 with `weft-orig-proto: HTTP/1.1`, so that
/// the peer's proxy gives the app HTTP/1.1 again.
pub(crate) fn to_peer(
    target: &str,
    parts: &mut http::request::Parts,
) -> Result<bool, ForwardError> {
    let from_http1 = parts.version != Version::HTTP_2;
    if from_http1 {
        // One copy of the authority; the path keeps the request's own bytes,
        // so that a retry's clone of the URI only counts references.
        let authority = match parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
        {
            Some(host) => Bytes::copy_from_slice(host.as_bytes()),
            None => Bytes::copy_from_slice(
                parts
                    .uri
                    .authority()
                    .map_or(target, |a| a.as_str())
                    .as_bytes(),
            ),
        };
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        parts.headers.insert(
            ORIG_PROTO_HEADER,
            HeaderValue::from_static(if parts.version == Version::HTTP_10 {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            }),
        );
        let failed = |authority: &[u8], reason: String| ForwardError::Uri {
            authority: String::from_utf8_lossy(authority).into_owned(),
            reason,
        };
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.authority = Some(
            Authority::from_maybe_shared(authority.clone())
                .map_err(|e| failed(&authority, e.to_string()))?,
        );
        uri.scheme = Some(Scheme::HTTP);
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        parts.uri = Uri::from_parts(uri).map_err(|e| failed(&authority, e.to_string()))?;
        parts.version = Version::HTTP_2;
    }
    Ok(from_http1)
}

/// Sends a request over the peer's multiplexed HTTP/2 connection.
pub async fn forward(
    outbound: &Outbound,
    target: &str,
    endpoint: &Endpoint,
    req: Request<Body>,
    connect_timeout: std::time::Duration,
) -> Result<Response<Body>, ForwardError> {
    let (mut parts, body) = req.into_parts();
    let from_http1 = to_peer(target, &mut parts)?;
    send(
        outbound,
        endpoint,
        None,
        Request::from_parts(parts, body),
        from_http1,
        connect_timeout,
    )
    .await
}

/// Sends a request already in its peer form (see [`to_peer`]) on `conn`, the
/// connection the caller already took from the pool for it, or else on the
/// pool's. A request the connection closed before writing is sent once more
/// on a new connection.
pub(crate) async fn send(
    outbound: &Outbound,
    endpoint: &Endpoint,
    mut conn: Option<pool::Conn>,
    mut req: Request<Body>,
    from_http1: bool,
    connect_timeout: std::time::Duration,
) -> Result<Response<Body>, ForwardError> {
    let mut attempts = 0;
    let rsp = loop {
        attempts += 1;
        let mut conn = match conn.take() {
            Some(conn) => conn,
            None => peer_connection(outbound, endpoint, connect_timeout).await?,
        };
        // The pool hands out a clone: this one is the request's own.
        match conn.tx.try_send_request(req).await {
            Ok(rsp) => break rsp,
            Err(mut e) => {
                if let Some(alert) = Box::pin(conn.tls_failure(TLS_FAILURE_WAIT)).await {
                    return Err(ForwardError::PeerTls {
                        peer: endpoint.addr.to_string(),
                        alert,
                    });
                }
                // The connection closed before the request was written: it is
                // safe to send it once more on a fresh connection.
                match e.take_message() {
                    Some(unsent) if attempts == 1 => req = unsent,
                    _ => return Err(ForwardError::peer(endpoint, e.into_error(), false)),
                }
            }
        }
    };
    let (mut parts, body) = rsp.into_parts();
    if from_http1 {
        parts.version = Version::HTTP_11;
    }
    Ok(Response::from_parts(parts, incoming(body)))
}

/// How long a failed request waits for its connection to report a TLS cause.
const TLS_FAILURE_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

pub(crate) async fn peer_connection(
    outbound: &Outbound,
    endpoint: &Endpoint,
    connect_timeout: std::time::Duration,
) -> Result<pool::Conn, ForwardError> {
    outbound
        .pool
        .get(endpoint, || async {
            let io = connect_mesh(
                &outbound.tls,
                &outbound.metrics,
                endpoint,
                alpn::H2,
                connect_timeout,
            )
            .await?;
            pool::handshake(io)
                .await
                .map_err(|source| ForwardError::peer(endpoint, source, true))
        })
        .await
}

/// Sends a request that upgrades the connection (WebSocket) over a
/// connection of its own, HTTP/1.1 over mTLS to a meshed endpoint or in
/// plaintext to one outside the mesh, and splices the two upgraded
/// connections together once the server answers 101.
async fn forward_upgrade(
    outbound: &Outbound,
    endpoint: &EndpointRuntime,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ForwardError> {
    let downstream = hyper::upgrade::on(&mut req);
    let mut rsp = match endpoint.mesh.as_ref() {
        Some(mesh) => {
            let io = connect_mesh(
                &outbound.tls,
                &outbound.metrics,
                mesh,
                alpn::HTTP1,
                outbound.connect_timeout,
            )
            .await?;
            let mut tx = pool::handshake_http1(io)
                .await
                .map_err(|source| ForwardError::peer(mesh, source, true))?;
            tx.send_request(req.map(incoming))
                .await
                .map_err(|source| ForwardError::Send {
                    peer: mesh.addr.to_string(),
                    source,
                })?
                .map(incoming)
        }
        // On an HTTP/1.1 connection of the plaintext pool, which keeps no
        // connection that a 101 handed over.
        None => {
            send_plain(
                outbound,
                endpoint.addr(),
                req.map(incoming),
                outbound.connect_timeout,
            )
            .await?
        }
    };
    if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut rsp);
        crate::http::splice_upgrade(downstream, upstream);
    }
    Ok(rsp)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Args = (&'static Outbound, &'static Upstream, Request<Incoming>);

    /// The size of the future `f` returns, without calling it.
    fn future_size<T, F: FnOnce(Args) -> T>(_: F) -> usize {
        std::mem::size_of::<T>()
    }

    /// Every request allocates its future (`outbound::handle_connection`
    /// boxes it) and the data path moves it: connecting, upgrades and the
    /// TLS-failure wait are boxed inside it so that it stays small (it was
    /// 8.8 KB with them inline).
    fn peer_form(req: http::Request<()>) -> http::request::Parts {
        let (mut parts, ()) = req.into_parts();
        to_peer("checkout", &mut parts).expect("peer form");
        parts
    }

    #[test]
    fn the_peer_form_takes_the_host_then_the_uri_then_the_target() {
        let parts = peer_form(
            Request::get("/cart?id=7")
                .header(header::HOST, "shop:8080")
                .header(header::CONNECTION, "close")
                .body(())
                .unwrap(),
        );
        assert_eq!(parts.uri, "http://shop:8080/cart?id=7");
        assert_eq!(parts.version, Version::HTTP_2);
        assert!(parts.headers.get(header::HOST).is_none());
        assert!(parts.headers.get(header::CONNECTION).is_none());
        assert_eq!(parts.headers[ORIG_PROTO_HEADER], "HTTP/1.1");

        let parts = peer_form(Request::get("http://web:80").body(()).unwrap());
        assert_eq!(parts.uri.authority().map(|a| a.as_str()), Some("web:80"));
        assert_eq!(parts.uri.path(), "/");

        let parts = peer_form(
            Request::get("/")
                .version(Version::HTTP_10)
                .body(())
                .unwrap(),
        );
        assert_eq!(parts.uri, "http://checkout/");
        assert_eq!(parts.headers[ORIG_PROTO_HEADER], "HTTP/1.0");

        let (mut parts, ()) = Request::get("/")
            .header(header::HOST, "bad host")
            .body(())
            .unwrap()
            .into_parts();
        assert!(matches!(
            to_peer("checkout", &mut parts),
            Err(ForwardError::Uri { authority, .. }) if authority == "bad host"
        ));
    }

    #[test]
    fn the_request_future_stays_small() {
        let handle = future_size(|(o, u, r)| handle(o, u, r));
        assert!(handle <= 3 * 1024, "the request future is {handle} bytes");
    }
}
