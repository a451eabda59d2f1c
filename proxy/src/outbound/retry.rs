//! The path of requests whose route has retries or timeouts: the request
//! timeout around all tries, the per-try timeout around each, retries on the
//! route's conditions with jittered exponential backoff inside the target's
//! retry budget, and the request body kept (up to the retry buffer) so that
//! it can be sent again.
//!
//! A request is only retried when its body can be sent again: it was empty,
//! or it was read to its end within the buffer limit before the try failed.
//! A try that failed to connect never consumed the body, and is always
//! retryable.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use rand::Rng;
use weft_api::consts::ORIG_PROTO_HEADER;
use weft_api::policy::{Backoff, GrpcCode, RetryPolicy, Route};

use super::Outbound;
use super::http::{
    Done, ForwardError, PlainConn, failure_response, no_endpoints, peer_connection, pick,
    plain_connection, record, send, send_plain_on, to_peer,
};
use super::upstream::{Resolved, Upstream};
use crate::http::{Body, BoxError, ProxyError, error_response, full, incoming};
use crate::lock;

/// One request on a route with retries or timeouts.
pub(crate) async fn resilient(
    outbound: &Outbound,
    upstream: &Upstream,
    resolved: &Resolved,
    route: Option<(usize, &Route)>,
    req: Request<Incoming>,
    grpc: bool,
) -> Done {
    let Some(route) = route else {
        return no_endpoints(upstream, grpc);
    };
    let mut last = Last::default();
    let tries = tries(outbound, upstream, resolved, route, req, grpc, &mut last);
    match route.1.timeouts.request {
        Some(limit) => match tokio::time::timeout(limit, tries).await {
            Ok(done) => done,
            Err(_) => {
                let mut done = Done::error(
                    ProxyError::Timeout,
                    &format!(
                        "request to {} took longer than its {limit:?} timeout",
                        upstream.name
                    ),
                    grpc,
                );
                done.backend = last.backend;
                done.endpoint = last.endpoint.take();
                done
            }
        },
        None => tries.await,
    }
}

/// The last try's backend and endpoint, for the metrics of a request that
/// timed out.
#[derive(Default)]
struct Last {
    backend: Option<usize>,
    endpoint: Option<Arc<super::upstream::EndpointRuntime>>,
}

/// Why a try is retried (the `reason` label).
fn status_reason(policy: &RetryPolicy, rsp: &Response<Body>, grpc: bool) -> Option<&'static str> {
    let status = rsp.status().as_u16();
    if policy.on.retries_status(status) {
        return Some(if status >= 500 { "5xx" } else { "status" });
    }
    if grpc && !policy.on.grpc.is_empty() {
        let code = rsp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .and_then(GrpcCode::from_code);
        if code.is_some_and(|c| policy.on.retries_grpc(c)) {
            return Some("grpc");
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
async fn tries(
    outbound: &Outbound,
    upstream: &Upstream,
    resolved: &Resolved,
    (route_index, route): (usize, &Route),
    req: Request<Incoming>,
    grpc: bool,
    last: &mut Last,
) -> Done {
    let state = &resolved.state;
    let policy = route.retry.as_ref().filter(|p| p.attempts > 0);
    let runtime = upstream.runtime();
    let connect_timeout = state.connect_timeout.unwrap_or(outbound.connect_timeout);
    if policy.is_some() {
        runtime.deposit(&state.retry_budget);
    }
    let (mut parts, body) = req.into_parts();
    let from_http1 = match to_peer(&upstream.name, &mut parts) {
        Ok(f) => f,
        Err(error) => {
            return Done::error(error.kind(), &error.to_string(), grpc);
        }
    };
    // The body as the first try sends it, and the copy kept for the others.
    let mut first: Option<Body> = None;
    let mut copy: Option<Arc<Mutex<Copy>>> = None;
    let empty = hyper::body::Body::is_end_stream(&body);
    let limit = outbound.retry_buffer;
    if empty {
        first = Some(crate::http::empty());
    } else if policy.is_some()
        && hyper::body::Body::size_hint(&body)
            .upper()
            .is_none_or(|u| u <= limit as u64)
    {
        let shared = Arc::new(Mutex::new(Copy::default()));
        first = Some(incoming(Tee {
            inner: body,
            copy: shared.clone(),
            limit,
        }));
        copy = Some(shared);
    } else {
        first = first.or(Some(incoming(body)));
    }
    let mut retries = 0u32;
    let mut avoid = None;
    loop {
        let Some((backend, endpoint)) = pick(
            upstream,
            resolved,
            Some((route_index, route)),
            avoid.as_ref(),
        ) else {
            return no_endpoints(upstream, grpc);
        };
        last.backend = Some(backend);
        last.endpoint = Some(endpoint.clone());
        let mesh = endpoint.mesh.as_ref();
        // No try follows this one (no retry policy, or its last retry): it
        // takes the request's parts instead of a copy.
        let final_try = policy.is_none_or(|p| retries >= p.attempts);
        let flight = endpoint.start();
        let sent = Instant::now();
        // Connect first, over mTLS or in plaintext: a try that cannot
        // connect never took the body, and can always go again.
        let attempt = async {
            // The connection made (or found) here is the one the try is sent
            // on: the pool is not asked twice.
            let conn = match mesh {
                Some(mesh) => TryConn::Mesh(
                    mesh,
                    peer_connection(outbound, mesh, connect_timeout).await?,
                ),
                None => {
                    let version = if from_http1 {
                        http::Version::HTTP_11
                    } else {
                        parts.version
                    };
                    let plain =
                        plain_connection(outbound, endpoint.addr(), version, connect_timeout);
                    TryConn::Plain(plain.await?)
                }
            };
            let body = match first.take() {
                Some(body) => body,
                None => match copy.as_ref().and_then(|c| lock(c).replay()) {
                    Some(body) => body,
                    None if empty => crate::http::empty(),
                    // Checked before retrying: cannot happen.
                    None => crate::http::empty(),
                },
            };
            let mut req = Request::new(body);
            *req.version_mut() = parts.version;
            if final_try {
                *req.method_mut() = std::mem::take(&mut parts.method);
                *req.uri_mut() = std::mem::take(&mut parts.uri);
                *req.headers_mut() = std::mem::take(&mut parts.headers);
            } else {
                *req.method_mut() = parts.method.clone();
                *req.uri_mut() = parts.uri.clone();
                *req.headers_mut() = parts.headers.clone();
            }
            match conn {
                TryConn::Mesh(mesh, conn) => {
                    send(outbound, mesh, Some(conn), req, from_http1, connect_timeout).await
                }
                TryConn::Plain(plain) => {
                    // Back from the peer form: the server is not a proxy.
                    if from_http1 {
                        req.headers_mut().remove(ORIG_PROTO_HEADER);
                        *req.version_mut() = http::Version::HTTP_11;
                    }
                    send_plain_on(outbound, endpoint.addr(), plain, req).await
                }
            }
        };
        let result = match route.timeouts.backend_request {
            Some(limit) => match tokio::time::timeout(limit, attempt).await {
                Ok(r) => Ok(r),
                Err(_) => Err(limit),
            },
            None => Ok(attempt.await),
        };
        let rtt = sent.elapsed();
        let sent_body = first.is_none();
        let (reason, done): (Option<&'static str>, Done) = match result {
            Ok(Ok(rsp)) => {
                let failed = rsp.status().is_server_error();
                record(
                    outbound, upstream, resolved, backend, &endpoint, rtt, failed,
                );
                let reason = policy.and_then(|p| status_reason(p, &rsp, grpc));
                (
                    reason,
                    Done {
                        rsp,
                        backend: Some(backend),
                        endpoint: Some(endpoint.clone()),
                        resends: retries,
                    },
                )
            }
            Ok(Err(error)) => {
                record(outbound, upstream, resolved, backend, &endpoint, rtt, true);
                let connect = matches!(
                    error,
                    ForwardError::Connect(_)
                        | ForwardError::Handshake { .. }
                        | ForwardError::Plain { connect: true, .. }
                );
                let reason = policy.and_then(|p| {
                    if connect && p.on.connect_failure {
                        Some("connect-failure")
                    } else if !connect && p.on.reset {
                        Some("reset")
                    } else if p.on.retries_status(error.kind().status().as_u16()) {
                        Some(if connect { "connect-failure" } else { "reset" })
                    } else {
                        None
                    }
                });
                let rsp = failure_response(upstream, &endpoint, &error, grpc);
                (
                    reason,
                    Done {
                        rsp,
                        backend: Some(backend),
                        endpoint: Some(endpoint.clone()),
                        resends: retries,
                    },
                )
            }
            Err(limit) => {
                record(outbound, upstream, resolved, backend, &endpoint, rtt, true);
                let reason = policy
                    .filter(|p| p.on.retries_status(504) || p.on.reset)
                    .map(|_| "timeout");
                let rsp = error_response(
                    ProxyError::Timeout,
                    &format!(
                        "a try to {} ({}) took longer than its {limit:?} timeout",
                        upstream.name,
                        endpoint.addr()
                    ),
                    grpc,
                );
                (
                    reason,
                    Done {
                        rsp,
                        backend: Some(backend),
                        endpoint: Some(endpoint.clone()),
                        resends: retries,
                    },
                )
            }
        };
        // After the outcome is recorded: a probe's failure must be seen as
        // the probe's (the guard's drop ends the probe).
        drop(flight);
        let (Some(reason), Some(policy)) = (reason, policy) else {
            return done;
        };
        if retries >= policy.attempts {
            return done;
        }
        // The body went out: it can go again only from a complete copy.
        let replayable = !sent_body || empty || copy.as_ref().is_some_and(|c| lock(c).replayable());
        if !replayable {
            tracing::debug!(target = %upstream.name, "not retrying: the request body was not kept");
            return done;
        }
        if !runtime.withdraw(&state.retry_budget) {
            outbound.metrics.retry_budget_exhausted(runtime.target());
            return done;
        }
        let backend_name = resolved
            .backend_names
            .get(backend)
            .cloned()
            .unwrap_or_else(|| Arc::from(""));
        outbound
            .metrics
            .retried(runtime.target(), &backend_name, reason);
        retries += 1;
        drop(done);
        tokio::time::sleep(backoff(&policy.backoff, retries)).await;
        avoid = Some(endpoint);
    }
}

/// The connection a try is sent on, made before its body is touched.
enum TryConn<'a> {
    /// Over mesh mTLS to the endpoint's proxy.
    Mesh(&'a crate::config::Endpoint, super::pool::Conn),
    /// In plaintext to an endpoint outside the mesh.
    Plain(PlainConn),
}

/// The wait before retry `n` (1-based): base doubling up to max, with "equal
/// jitter" (between half and all of it).
fn backoff(b: &Backoff, n: u32) -> Duration {
    let exp = b
        .base
        .saturating_mul(1u32 << (n - 1).min(16))
        .min(b.max)
        .as_nanos() as u64;
    let half = exp / 2;
    Duration::from_nanos(half + rand::rng().random_range(0..=exp - half))
}

/// A request body as it went out, kept so that it can be sent again.
#[derive(Default)]
struct Copy {
    chunks: Vec<Bytes>,
    len: usize,
    /// Too large, or with trailers: not kept.
    dropped: bool,
    complete: bool,
}

impl Copy {
    fn replayable(&self) -> bool {
        self.complete && !self.dropped
    }

    fn replay(&self) -> Option<Body> {
        if !self.replayable() {
            return None;
        }
        let mut all = bytes::BytesMut::with_capacity(self.len);
        for c in &self.chunks {
            all.extend_from_slice(c);
        }
        Some(full(all.freeze()))
    }
}

/// Streams the app's body to the first try while copying it (up to `limit`).
struct Tee {
    inner: Incoming,
    copy: Arc<Mutex<Copy>>,
    limit: usize,
}

impl hyper::body::Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let limit = self.limit;
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let mut c = lock(&self.copy);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !c.dropped {
                        if c.len + data.len() > limit {
                            c.dropped = true;
                            c.chunks.clear();
                        } else {
                            c.len += data.len();
                            c.chunks.push(data.clone());
                        }
                    }
                } else {
                    // Trailers are not kept.
                    c.dropped = true;
                }
                if self.inner.is_end_stream() {
                    c.complete = true;
                }
            }
            Poll::Ready(None) => c.complete = true,
            Poll::Ready(Some(Err(_))) => c.dropped = true,
            Poll::Pending => {}
        }
        drop(c);
        polled.map(|o| o.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_max() {
        let b = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(40),
        };
        for _ in 0..100 {
            let first = backoff(&b, 1);
            assert!(first >= Duration::from_millis(5) && first <= Duration::from_millis(10));
            let third = backoff(&b, 3);
            assert!(third >= Duration::from_millis(20) && third <= Duration::from_millis(40));
            let tenth = backoff(&b, 10);
            assert!(tenth <= Duration::from_millis(40));
        }
    }
}
