//! The access log (`WEFT_PROXY_ACCESS_LOG=on`, off by default): one line per
//! HTTP request either side of the proxy handled, refused ones included (with
//! the `weft-proxy-error` kind as the reason), as a `tracing` event of target
//! `weft_proxy::access` at level info, so that it follows the log format
//! (`WEFT_PROXY_LOG_FORMAT=json` makes each line one JSON object) and the log
//! filter (the default `info` lets it through).

use std::time::Duration;

use crate::metrics::Direction;
use crate::trace::Outcome;

/// Writes one request's line.
pub fn log(direction: Direction, o: &Outcome<'_>, elapsed: Duration, trace_id: Option<&str>) {
    tracing::info!(
        target: "weft_proxy::access",
        direction = direction.as_str(),
        method = o.method,
        authority = o.authority.unwrap_or(""),
        path = o.path,
        protocol = o.protocol,
        status = o.status,
        grpc_status = o.grpc_status,
        duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        client_identity = o.client_identity,
        server_identity = o.server_identity,
        mtls = o.mtls,
        route = o.route,
        backend = o.backend,
        endpoint = o.endpoint.map(|e| e.to_string()),
        retries = o.resend_count,
        proxy_error = o.proxy_error,
        trace_id,
        "request"
    );
}
