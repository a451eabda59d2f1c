//! One outbound HTTP request: choose an endpoint, send it over mesh mTLS, and
//! record it.

use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use weft_api::consts::{ORIG_PROTO_HEADER, alpn};

use super::{Outbound, balance, pool};
use crate::config::{Endpoint, Target};
use crate::http::{Body, ProxyError, error_response, incoming, is_grpc, strip_hop_by_hop};
use crate::metrics::{Direction, RequestLabels};
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
}

impl ForwardError {
    fn kind(&self) -> ProxyError {
        match self {
            Self::Connect(e) => e.kind(),
            Self::PeerTls { .. } => ProxyError::TlsFailure,
            Self::Handshake { .. } | Self::Send { .. } | Self::Uri { .. } => {
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

/// Handles one request from the app to `target`. Never fails: errors become
/// responses naming the cause in `weft-proxy-error`.
pub async fn handle(
    outbound: &Outbound,
    target: &Target,
    req: Request<Incoming>,
) -> Response<Body> {
    let start = Instant::now();
    let grpc = is_grpc(&req);
    let Some(endpoint) = balance::pick(target) else {
        return error_response(
            ProxyError::NoEndpoints,
            &format!("service {} has no endpoints", target.name),
            grpc,
        );
    };
    let result = if req.version() != Version::HTTP_2 && crate::http::wants_upgrade(&req) {
        // Rare: boxed so that the future of every request stays small.
        Box::pin(forward_upgrade(outbound, endpoint, req)).await
    } else {
        forward(outbound, target, endpoint, req).await
    };
    let rsp = match result {
        Ok(rsp) => rsp,
        Err(error) => {
            tracing::warn!(
                target = %target.name,
                endpoint = %endpoint.addr,
                identity = %endpoint.identity,
                %error,
                "outbound request failed"
            );
            error_response(error.kind(), &error.to_string(), grpc)
        }
    };
    let elapsed = start.elapsed();
    outbound.metrics.request(
        &RequestLabels {
            direction: Direction::Outbound,
            status_code: rsp.status().as_u16(),
            tls: true,
            peer_identity: endpoint.identity.uri(),
        },
        elapsed,
    );
    tracing::debug!(
        target = %target.name,
        endpoint = %endpoint.addr,
        status = rsp.status().as_u16(),
        headers_us = elapsed.as_micros() as u64,
        "outbound request"
    );
    rsp
}

/// Sends a request over the peer's multiplexed HTTP/2 connection. An HTTP/1
/// request travels as HTTP/2 with `weft-orig-proto: HTTP/1.1`, so that the
/// peer's proxy gives the app HTTP/1.1 again.
pub async fn forward(
    outbound: &Outbound,
    target: &Target,
    endpoint: &Endpoint,
    req: Request<Incoming>,
) -> Result<Response<Body>, ForwardError> {
    let from_http1 = req.version() != Version::HTTP_2;
    let (mut parts, body) = req.into_parts();
    if from_http1 {
        let authority = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| target.name.clone());
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
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(path)
            .build()
            .map_err(|e| ForwardError::Uri {
                authority,
                reason: e.to_string(),
            })?;
        parts.version = Version::HTTP_2;
    }
    let mut req = Request::from_parts(parts, incoming(body));
    let mut attempts = 0;
    let rsp = loop {
        attempts += 1;
        let conn = peer_connection(outbound, endpoint).await?;
        let mut tx = conn.tx.clone();
        match tx.try_send_request(req).await {
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

async fn peer_connection(
    outbound: &Outbound,
    endpoint: &Endpoint,
) -> Result<pool::Conn, ForwardError> {
    outbound
        .pool
        .get(endpoint, || async {
            let io = connect_mesh(
                &outbound.tls,
                &outbound.metrics,
                endpoint,
                alpn::H2,
                outbound.connect_timeout,
            )
            .await?;
            pool::handshake(io)
                .await
                .map_err(|source| ForwardError::peer(endpoint, source, true))
        })
        .await
}

/// Sends a request that upgrades the connection over its own HTTP/1.1 mTLS
/// connection, and splices the two upgraded connections together.
async fn forward_upgrade(
    outbound: &Outbound,
    endpoint: &Endpoint,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ForwardError> {
    let downstream = hyper::upgrade::on(&mut req);
    let io = connect_mesh(
        &outbound.tls,
        &outbound.metrics,
        endpoint,
        alpn::HTTP1,
        outbound.connect_timeout,
    )
    .await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|source| ForwardError::peer(endpoint, source, true))?;
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            tracing::debug!(%error, "upgraded HTTP/1 connection to peer closed with an error");
        }
    });
    let mut rsp =
        tx.send_request(req.map(incoming))
            .await
            .map_err(|source| ForwardError::Send {
                peer: endpoint.addr.to_string(),
                source,
            })?;
    if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut rsp);
        crate::http::splice_upgrade(downstream, upstream);
    }
    Ok(rsp.map(incoming))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Args = (
        &'static Outbound,
        &'static Target,
        &'static Endpoint,
        Request<Incoming>,
    );

    /// The size of the future `f` returns, without calling it.
    fn future_size<T, F: FnOnce(Args) -> T>(_: F) -> usize {
        std::mem::size_of::<T>()
    }

    /// Every request allocates its future (`outbound::handle_connection`
    /// boxes it) and the data path moves it: connecting, upgrades and the
    /// TLS-failure wait are boxed inside it so that it stays small (it was
    /// 8.8 KB with them inline).
    #[test]
    fn the_request_future_stays_small() {
        let handle = future_size(|(o, t, _, r)| handle(o, t, r));
        assert!(handle <= 3 * 1024, "the request future is {handle} bytes");
    }
}
