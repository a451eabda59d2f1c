//! HTTP plumbing shared by the inbound and outbound sides: the body type,
//! hop-by-hop headers, connection upgrades, and responses the proxy generates
//! itself.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use weft_api::consts::PROXY_ERROR_HEADER;

use crate::head_timeout::{HeadClock, HeadIo, HeadTimer};

/// Errors carried through bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The one body type of the data path.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes a body received by hyper (or one wrapping it).
pub fn incoming<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A body with nothing in it. It is zero-sized, so boxing it allocates
/// nothing; it ends at once and says its size is exactly 0, as `full` of no
/// bytes does.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A request body as the data path sends it on: [`empty`] when hyper's body
/// is already at its end with an exact size of 0 (a GET without a body), so
/// that the request allocates no box for it; else boxed as [`incoming`] does.
/// Both say the same to the sender (`is_end_stream`, `size_hint`).
pub fn request_body(body: Incoming) -> Body {
    if hyper::body::Body::is_end_stream(&body)
        && hyper::body::Body::size_hint(&body).exact() == Some(0)
    {
        empty()
    } else {
        incoming(body)
    }
}

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Why the proxy answered a request itself. The header value names the cause,
/// so an app owner can tell "the mesh refused" from "the server failed".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// The peer presented another identity than discovery named.
    IdentityMismatch,
    /// The peer refused the TCP connection.
    ConnectRefused,
    /// The TCP connection or TLS handshake took too long.
    ConnectTimeout,
    /// The TLS handshake with the peer failed (untrusted chain, expired, ...).
    TlsFailure,
    /// The connection to the peer failed for another reason, or broke mid-request.
    PeerUnavailable,
    /// The app behind the inbound proxy could not be reached.
    AppUnavailable,
    /// The inbound policy does not allow this caller (or a plaintext caller)
    /// to make this request.
    Unauthorized,
    /// The target has no endpoint to send to.
    NoEndpoints,
    /// The route's request timeout, or its per-try timeout, ran out.
    Timeout,
}

impl ProxyError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IdentityMismatch => "identity-mismatch",
            Self::ConnectRefused => "connect-refused",
            Self::ConnectTimeout => "connect-timeout",
            Self::TlsFailure => "tls-failure",
            Self::PeerUnavailable => "peer-unavailable",
            Self::AppUnavailable => "app-unavailable",
            Self::Unauthorized => "unauthorized",
            Self::NoEndpoints => "no-endpoints",
            Self::Timeout => "timeout",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::FORBIDDEN,
            Self::ConnectTimeout | Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::NoEndpoints => StatusCode::SERVICE_UNAVAILABLE,
            Self::IdentityMismatch
            | Self::ConnectRefused
            | Self::TlsFailure
            | Self::PeerUnavailable
            | Self::AppUnavailable => StatusCode::BAD_GATEWAY,
        }
    }

    /// The gRPC status code for the same cause.
    fn grpc_status(self) -> u16 {
        match self {
            Self::Unauthorized => 7,                   // PERMISSION_DENIED
            Self::ConnectTimeout | Self::Timeout => 4, // DEADLINE_EXCEEDED
            _ => 14,                                   // UNAVAILABLE
        }
    }
}

/// The response the proxy sends for `error`. gRPC callers get a trailers-only
/// gRPC status instead of an HTTP error, as gRPC clients expect.
pub fn error_response(error: ProxyError, detail: &str, grpc: bool) -> Response<Body> {
    let mut rsp = if grpc {
        let mut rsp = Response::new(full(Bytes::new()));
        let h = rsp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(error.grpc_status()));
        if let Ok(v) = HeaderValue::from_str(&percent_encode_grpc_message(detail)) {
            h.insert("grpc-message", v);
        }
        rsp
    } else {
        let mut rsp = Response::new(full(format!("weft proxy: {detail}\n")));
        *rsp.status_mut() = error.status();
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        rsp
    };
    rsp.headers_mut()
        .insert(PROXY_ERROR_HEADER, HeaderValue::from_static(error.as_str()));
    rsp
}

fn percent_encode_grpc_message(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a request is gRPC (answered with gRPC statuses on errors).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Whether an HTTP/1 request asks to upgrade the connection (for example a
/// websocket) or is a CONNECT: such requests cannot be multiplexed over HTTP/2
/// and travel between proxies over their own HTTP/1.1 connection.
pub fn wants_upgrade<B>(req: &Request<B>) -> bool {
    if req.method() == http::Method::CONNECT {
        return true;
    }
    req.headers().contains_key(header::UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Removes the headers that belong to one HTTP/1 connection and must not be
/// forwarded (RFC 9110, 7.6.1), including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    // HTTP/2 allows only `te: trailers`.
    if headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes() != b"trailers")
    {
        headers.remove(header::TE);
    }
}

/// Joins the two halves of an upgraded connection (the downstream client's and
/// the upstream server's) once both complete, and relays bytes until either
/// side closes.
pub fn splice_upgrade(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::debug!(%error, "connection upgrade did not complete");
                return;
            }
        };
        let mut down = TokioIo::new(down);
        let mut up = TokioIo::new(up);
        match tokio::io::copy_bidirectional(&mut down, &mut up).await {
            Ok((to_server, to_client)) => {
                tracing::debug!(to_server, to_client, "upgraded connection closed");
            }
            Err(error) => tracing::debug!(%error, "upgraded connection failed"),
        }
    });
}

/// How long a client may take to send a request's head (request line and
/// headers), counted from its first byte: an idle keep-alive connection is
/// not timed out (see [`crate::head_timeout`]). The default of the
/// listeners' `header_timeout`, and the admin server's.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest HTTP/1 request head (request line and headers) the proxy
/// reads; a larger one gets 431 and the connection is closed, after at most
/// this much (plus one read) is buffered. hyper's default is its whole read
/// buffer, about 400 KB.
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// The most header lines in an HTTP/1 request: more get 431. hyper's
/// default, stated here but not set, since setting it moves hyper's header
/// array from the stack to the heap for every request.
pub const MAX_REQUEST_HEADERS: usize = 100;

/// Serves HTTP/1 on a connection (with upgrades) until it closes; on
/// `shutdown`, finishes the request in flight and closes.
///
/// `header_timeout` bounds the time from a request's first byte to the end
/// of its head ([`crate::head_timeout`]); an idle keep-alive connection stays
/// open as long as its client keeps it (closing it would race with the
/// client's next request).
pub async fn serve_http1<I, S>(
    io: I,
    svc: S,
    shutdown: &CancellationToken,
    header_timeout: Duration,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = Body>,
    S::Error: Into<BoxError>,
{
    let clock = HeadClock::new();
    let conn = http1::Builder::new()
        .timer(HeadTimer::new(clock.clone()))
        .header_read_timeout(header_timeout)
        .max_header_size(MAX_REQUEST_HEAD_BYTES)
        .serve_connection(TokioIo::new(HeadIo::new(io, clock)), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// Serves HTTP/2 on a connection until it closes; on `shutdown`, sends GOAWAY
/// and lets the streams in flight finish.
pub async fn serve_http2<I, S>(
    io: I,
    svc: S,
    shutdown: &CancellationToken,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = Body>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST_SIZE)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// HTTP/2 flow-control windows: large enough that one stream can carry a
/// multi-megabyte body at loopback speed without waiting on window updates.
pub const H2_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
pub const H2_CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// Streams one peer may have open on one connection.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 2_000;
/// The largest HTTP/2 header list (names and values plus 32 bytes a field,
/// RFC 9113 6.5.2) a peer may send: a larger one gets 431, a much larger one
/// GOAWAY. It also bounds a header block's CONTINUATION frames (h2 allows
/// a quarter more than the list size needs, at least 5; more is a
/// CONTINUATION flood, answered with GOAWAY `ENHANCE_YOUR_CALM`). hyper's
/// default, set here so that it stays.
pub const H2_MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Streams a peer may open and reset before the proxy has accepted them
/// (HTTP/2 rapid reset, CVE-2023-44487): one more and the connection gets
/// GOAWAY `ENHANCE_YOUR_CALM`. h2's default, set here so that it stays.
pub const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the proxy may reset on one connection for a peer's stream errors
/// (the peer making the proxy reset them, "MadeYouReset") before it sends
/// GOAWAY `ENHANCE_YOUR_CALM`. hyper's default, set here so that it stays.
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// `uri` in origin form (`/path?query`, `/` when it has no path), as an
/// HTTP/1.1 request to a server carries it.
pub(crate) fn origin_form(uri: http::Uri) -> Result<http::Uri, http::uri::InvalidUriParts> {
    let mut parts = uri.into_parts();
    parts.scheme = None;
    parts.authority = None;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    http::Uri::from_parts(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn error_responses_name_the_cause() {
        let rsp = error_response(ProxyError::IdentityMismatch, "expected a, got b", false);
        assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(rsp.headers()[PROXY_ERROR_HEADER], "identity-mismatch");
        let rsp = error_response(ProxyError::ConnectRefused, "refusé", true);
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["grpc-status"], "14");
        assert_eq!(rsp.headers()["grpc-message"], "refus%C3%A9");
    }
}
