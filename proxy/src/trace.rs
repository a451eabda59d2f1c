//! OpenTelemetry traces: a CLIENT span per request the outbound side sends,
//! a SERVER span per request the inbound side serves, W3C Trace Context
//! propagation (B3 accepted and converted), parent-based ratio sampling, and
//! export in batches by `opentelemetry-otlp` (OTLP/gRPC, TLS for an
//! `https://` collector) from a bounded queue off the request path
//! ([`export`]).
//!
//! A span ends when the response's head is ready, except a gRPC response
//! whose head carries no `grpc-status`: its span ends with the response body,
//! when the trailers give the status ([`Pending`]).
//!
//! With tracing off (no `OTEL_EXPORTER_OTLP_ENDPOINT`) the proxies hold no
//! [`Tracer`]: no header is read or written and no span is built.

mod body;
mod export;

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use tokio::sync::mpsc;
use weft_api::consts::otel_env;

use crate::metrics::Metrics;

pub use body::TracedBody;

/// Finished spans waiting for export; past this, spans are dropped (counted).
pub const QUEUE_CAPACITY: usize = 2048;
/// The most spans one export carries.
pub const BATCH_MAX: usize = 512;
/// How long spans wait for a batch to fill.
pub const BATCH_INTERVAL: Duration = Duration::from_secs(1);
/// How long one export may take before its batch is dropped.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which new traces are sampled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    /// A request with a trace context follows its sampled flag.
    pub parent_based: bool,
    /// The share of traces sampled otherwise, 0 to 1.
    pub ratio: f64,
}

impl Sampler {
    /// The trace-id-ratio rule: the trace id's last 8 bytes, as a number,
    /// below `ratio` × 2^64 (so every hop decides a trace alike).
    fn by_ratio(&self, trace_id: &[u8; 16]) -> bool {
        if self.ratio >= 1.0 {
            return true;
        }
        if self.ratio <= 0.0 {
            return false;
        }
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        (u64::from_be_bytes(low) as f64) < self.ratio * 2f64.powi(64)
    }

    fn decide(&self, trace_id: &[u8; 16], parent_sampled: Option<bool>) -> bool {
        match parent_sampled {
            Some(sampled) if self.parent_based => sampled,
            _ => self.by_ratio(trace_id),
        }
    }
}

/// Tracing settings, from the OpenTelemetry SDK's environment variables.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceConfig {
    /// The collector, `http://host:port` or `https://host:port` (OTLP over
    /// gRPC; TLS for `https`).
    pub endpoint: String,
    /// The PEM CA bundle that verifies an `https://` collector
    /// (`OTEL_EXPORTER_OTLP_CERTIFICATE`); `None`: the web PKI roots.
    pub ca_file: Option<PathBuf>,
    pub sampler: Sampler,
    /// `service.name` of the spans' resource.
    pub service_name: String,
    /// The other resource attributes (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource: Vec<(String, String)>,
    /// The export queue's capacity: [`QUEUE_CAPACITY`] unless a test wants
    /// less.
    pub queue_capacity: usize,
}

impl TraceConfig {
    /// A configuration sending to `endpoint`, every trace sampled.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            ca_file: None,
            sampler: Sampler {
                parent_based: true,
                ratio: 1.0,
            },
            service_name: "weft-proxy".to_owned(),
            resource: Vec::new(),
            queue_capacity: QUEUE_CAPACITY,
        }
    }

    /// Reads the variables; `Ok(None)` when tracing is off. Problems are
    /// (variable, what is wrong and what is accepted).
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        if get(otel_env::TRACES_EXPORTER).as_deref() == Some("none") {
            return Ok(None);
        }
        if let Some(other) = get(otel_env::TRACES_EXPORTER).filter(|e| e != "otlp") {
            problems.push((
                otel_env::TRACES_EXPORTER,
                format!("{other:?} is not an exporter; use \"otlp\" or \"none\""),
            ));
        }
        let (var, endpoint) = match get(otel_env::EXPORTER_OTLP_TRACES_ENDPOINT) {
            Some(e) => (otel_env::EXPORTER_OTLP_TRACES_ENDPOINT, e),
            None => match get(otel_env::EXPORTER_OTLP_ENDPOINT) {
                Some(e) => (otel_env::EXPORTER_OTLP_ENDPOINT, e),
                None => return Ok(None),
            },
        };
        match endpoint.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
            _ => problems.push((
                var,
                format!(
                    "{endpoint:?} is not a URL; use http://host:port (OTLP over gRPC) or \
                     https://host:port (over TLS)"
                ),
            )),
        }
        let ca_file = match get(otel_env::EXPORTER_OTLP_TRACES_CERTIFICATE) {
            Some(path) => Some((otel_env::EXPORTER_OTLP_TRACES_CERTIFICATE, path)),
            None => get(otel_env::EXPORTER_OTLP_CERTIFICATE)
                .map(|path| (otel_env::EXPORTER_OTLP_CERTIFICATE, path)),
        }
        .filter(|(_, path)| !path.is_empty())
        .and_then(|(ca_var, path)| match export::read_ca(path.as_ref()) {
            Ok(_) => Some(PathBuf::from(path)),
            Err(reason) => {
                problems.push((ca_var, format!("{path:?}: {reason}")));
                None
            }
        });
        let sampler_name =
            get(otel_env::TRACES_SAMPLER).unwrap_or_else(|| "parentbased_always_on".to_owned());
        let arg = get(otel_env::TRACES_SAMPLER_ARG);
        let ratio_arg = |problems: &mut Vec<_>| match arg.as_deref() {
            None => 1.0,
            Some(a) => match a.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => r,
                _ => {
                    problems.push((
                        otel_env::TRACES_SAMPLER_ARG,
                        format!("{a:?} is not a ratio; use a number from 0 to 1"),
                    ));
                    1.0
                }
            },
        };
        let sampler = match sampler_name.as_str() {
            "always_on" => Sampler {
                parent_based: false,
                ratio: 1.0,
            },
            "always_off" => Sampler {
                parent_based: false,
                ratio: 0.0,
            },
            "traceidratio" => Sampler {
                parent_based: false,
                ratio: ratio_arg(&mut problems),
            },
            "parentbased_always_on" => Sampler {
                parent_based: true,
                ratio: 1.0,
            },
            "parentbased_always_off" => Sampler {
                parent_based: true,
                ratio: 0.0,
            },
            "parentbased_traceidratio" => Sampler {
                parent_based: true,
                ratio: ratio_arg(&mut problems),
            },
            other => {
                problems.push((
                    otel_env::TRACES_SAMPLER,
                    format!(
                        "{other:?} is not a sampler; use always_on, always_off, traceidratio, \
                         parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                    ),
                ));
                Sampler {
                    parent_based: true,
                    ratio: 1.0,
                }
            }
        };
        let mut resource = Vec::new();
        for pair in get(otel_env::RESOURCE_ATTRIBUTES)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            match pair.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    resource.push((percent_decode(k.trim()), percent_decode(v.trim())));
                }
                _ => problems.push((
                    otel_env::RESOURCE_ATTRIBUTES,
                    format!("{pair:?} is not key=value; use a comma-separated list of key=value"),
                )),
            }
        }
        let service_name = get(otel_env::SERVICE_NAME)
            .or_else(|| {
                resource
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| "weft-proxy".to_owned());
        resource.retain(|(k, _)| k != "service.name");
        if problems.is_empty() {
            Ok(Some(Self {
                endpoint,
                ca_file,
                sampler,
                service_name,
                resource,
                queue_capacity: QUEUE_CAPACITY,
            }))
        } else {
            Err(problems)
        }
    }
}

/// `%xx` escapes decoded (W3C Baggage octets, as `OTEL_RESOURCE_ATTRIBUTES`
/// takes them); a malformed escape is kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A trace context received with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// `None`: the caller deferred the decision (B3 without a sampling flag).
    pub sampled: Option<bool>,
}

// Header names as constants: a lookup by `&str` parses the name each time.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
const B3_MULTI: [HeaderName; 5] = [
    B3_TRACE_ID,
    B3_SPAN_ID,
    HeaderName::from_static("x-b3-parentspanid"),
    B3_SAMPLED,
    B3_FLAGS,
];

fn hex_to<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    // An all-zero id is invalid in both W3C and B3.
    out.iter().any(|b| *b != 0).then_some(out)
}

/// A 16-byte trace id from 32 hex digits, or 16 (B3's 64-bit ids, padded).
fn trace_id(text: &str) -> Option<[u8; 16]> {
    match text.len() {
        32 => hex_to::<16>(text),
        16 => {
            let low = hex_to::<8>(text)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            Some(id)
        }
        _ => None,
    }
}

/// W3C `traceparent`: `version-traceid-parentid-flags`; version `ff` is
/// invalid, a later version is read by its first four fields.
pub fn parse_traceparent(value: &str) -> Option<Parent> {
    let value = value.trim();
    let mut parts = value.split('-');
    let version = parts.next()?;
    if version.len() != 2 || version.eq_ignore_ascii_case("ff") {
        return None;
    }
    u8::from_str_radix(version, 16).ok()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    if version == "00" && (parts.next().is_some() || value.len() != 55) {
        return None;
    }
    if trace.len() != 32 || flags.len() != 2 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Parent {
        trace_id: hex_to::<16>(trace)?,
        span_id: hex_to::<8>(span)?,
        sampled: Some(flags & 1 == 1),
    })
}

fn b3_sampled(text: &str) -> Option<Option<bool>> {
    match text {
        "1" | "d" | "true" => Some(Some(true)),
        "0" | "false" => Some(Some(false)),
        _ => None,
    }
}

/// B3 single: `traceid-spanid[-sampled[-parentspanid]]`.
pub fn parse_b3_single(value: &str) -> Option<Parent> {
    let mut parts = value.trim().split('-');
    let trace_id = trace_id(parts.next()?)?;
    let span_id = hex_to::<8>(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some(s) => b3_sampled(s)?,
    };
    Some(Parent {
        trace_id,
        span_id,
        sampled,
    })
}

fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// B3 multi: `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`, `X-B3-Flags`.
fn parse_b3_multi(headers: &HeaderMap) -> Option<Parent> {
    let trace_id = trace_id(header(headers, &B3_TRACE_ID)?.trim())?;
    let span_id = hex_to::<8>(header(headers, &B3_SPAN_ID)?.trim())?;
    let sampled = if header(headers, &B3_FLAGS).map(str::trim) == Some("1") {
        Some(true)
    } else {
        match header(headers, &B3_SAMPLED) {
            None => None,
            Some(s) => b3_sampled(s.trim())?,
        }
    };
    Some(Parent {
        trace_id,
        span_id,
        sampled,
    })
}

/// The request's trace context: `traceparent`, else B3 (single, then multi).
/// An invalid `traceparent` starts a new trace, as the W3C specification says.
pub fn extract(headers: &HeaderMap) -> Option<Parent> {
    if let Some(tp) = headers.get(&TRACEPARENT) {
        return tp.to_str().ok().and_then(parse_traceparent);
    }
    if let Some(single) = header(headers, &B3) {
        return parse_b3_single(single);
    }
    parse_b3_multi(headers)
}

fn hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// `00-<trace>-<span>-<flags>`.
fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> HeaderValue {
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex(trace_id, &mut text[3..35]);
    hex(span_id, &mut text[36..52]);
    if sampled {
        text[54] = b'1';
    }
    // Hex digits and dashes only: always a valid header value.
    let mut value = HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static(""));
    // A value new on every request: HPACK must not index it, or each one
    // would evict useful entries from the HTTP/2 connection's table.
    value.set_sensitive(true);
    value
}

/// A span in progress: what the request's end needs to finish it.
#[derive(Debug)]
pub struct ActiveSpan {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    start: SystemTime,
}

impl ActiveSpan {
    /// The trace id, as 32 hex digits (for logs).
    pub fn trace_id(&self) -> String {
        let mut out = [0u8; 32];
        hex(&self.trace_id, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A span's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Client,
    Server,
}

/// How a finished request went, for its span.
#[derive(Debug, Default)]
pub struct Outcome<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// `http` or `https` as the app asked.
    pub scheme: &'a str,
    /// `1.1` or `2`.
    pub protocol: &'static str,
    pub authority: Option<&'a str>,
    pub status: u16,
    /// `grpc-status`, when the response headers carry it.
    pub grpc_status: Option<i64>,
    pub grpc: bool,
    pub client_identity: &'a str,
    pub server_identity: &'a str,
    pub mtls: bool,
    pub route: &'a str,
    pub backend: &'a str,
    /// The endpoint the request was sent to (outbound) or the app (inbound).
    pub endpoint: Option<std::net::SocketAddr>,
    pub resend_count: u32,
    /// The `weft-proxy-error` kind when the proxy answered itself.
    pub proxy_error: Option<&'a str>,
}

/// What a span needs of its request, kept from its start (the request
/// itself moves on).
#[derive(Debug)]
pub struct SpanRequest {
    method: http::Method,
    path: String,
    scheme: &'static str,
    protocol: &'static str,
    authority: Option<String>,
}

impl SpanRequest {
    pub fn of<B>(req: &http::Request<B>) -> Self {
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            });
        Self {
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            scheme: if req.uri().scheme_str() == Some("https") {
                "https"
            } else {
                "http"
            },
            protocol: match req.version() {
                http::Version::HTTP_2 => "2",
                http::Version::HTTP_10 => "1.0",
                _ => "1.1",
            },
            authority,
        }
    }

    /// The request's part of its span's outcome, and the response's status,
    /// `grpc-status` and `weft-proxy-error`.
    pub fn outcome<'a, B>(&'a self, rsp: &'a http::Response<B>, grpc: bool) -> Outcome<'a> {
        let header = |name: &str| rsp.headers().get(name).and_then(|v| v.to_str().ok());
        Outcome {
            method: self.method.as_str(),
            path: &self.path,
            scheme: self.scheme,
            protocol: self.protocol,
            authority: self.authority.as_deref(),
            status: rsp.status().as_u16(),
            grpc_status: header("grpc-status").and_then(|v| v.parse().ok()),
            grpc,
            proxy_error: header(weft_api::consts::PROXY_ERROR_HEADER),
            ..Outcome::default()
        }
    }
}

/// Why the tracer could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{var}={path}: {reason}")]
    CaFile {
        var: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot build the OTLP exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// The proxy's tracer: decides, propagates, and queues finished spans.
#[derive(Debug)]
pub struct Tracer {
    sampler: Sampler,
    queue: mpsc::Sender<SpanData>,
    metrics: Arc<Metrics>,
    scope: InstrumentationScope,
}

impl Tracer {
    /// Builds the exporter, starts the export task (on the current runtime)
    /// and returns the tracer the request paths use.
    pub fn start(config: &TraceConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, TraceError> {
        let exporter = export::exporter(config)?;
        let (queue, rx) = mpsc::channel(config.queue_capacity.max(1));
        tokio::spawn(export::export_loop(
            exporter,
            rx,
            metrics.clone(),
            config.endpoint.clone(),
        ));
        tracing::info!(
            endpoint = %config.endpoint,
            tls = config.endpoint.starts_with("https://"),
            ca_file = ?config.ca_file,
            sampler = ?config.sampler,
            "tracing on"
        );
        Ok(Arc::new(Self::with_queue(config.sampler, queue, metrics)))
    }

    fn with_queue(sampler: Sampler, queue: mpsc::Sender<SpanData>, metrics: Arc<Metrics>) -> Self {
        Self {
            sampler,
            queue,
            metrics,
            scope: InstrumentationScope::builder("weft-proxy")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }
    }

    /// At a request's start: reads its trace context, decides whether it is
    /// sampled, and rewrites the headers for the next hop (`traceparent`
    /// naming this span, or the caller's context unsampled; B3 headers
    /// converted and removed). `Some` when the span is to be recorded.
    pub fn begin(&self, headers: &mut HeaderMap) -> Option<ActiveSpan> {
        let parent = extract(headers);
        for name in std::iter::once(B3).chain(B3_MULTI) {
            headers.remove(name);
        }
        let trace_id = parent
            .as_ref()
            .map_or_else(rand::random::<[u8; 16]>, |p| p.trace_id);
        let sampled = self
            .sampler
            .decide(&trace_id, parent.as_ref().and_then(|p| p.sampled));
        let span_id = random_span_id();
        headers.insert(TRACEPARENT, traceparent(&trace_id, &span_id, sampled));
        if !sampled {
            return None;
        }
        Some(ActiveSpan {
            trace_id,
            span_id,
            parent: parent.map(|p| p.span_id),
            start: SystemTime::now(),
        })
    }

    /// When the response's head is ready: builds the span and queues it
    /// without waiting (a full queue drops it, counted). A gRPC response
    /// whose head has no `grpc-status` carries it in its trailers: then the
    /// span is returned unfinished, to end with the body
    /// ([`Pending::end_with`]).
    #[must_use = "a pending span ends with the response body: pass the response to Pending::end_with"]
    pub fn finish(&self, active: ActiveSpan, kind: Kind, outcome: &Outcome<'_>) -> Option<Pending> {
        let span = build_span(&self.scope, active, kind, outcome, SystemTime::now());
        let pending = Pending {
            span: Some(Box::new(span)),
            kind,
            queue: self.queue.clone(),
            metrics: self.metrics.clone(),
        };
        if outcome.grpc && outcome.grpc_status.is_none() && outcome.proxy_error.is_none() {
            Some(pending)
        } else {
            // Dropped: queued now.
            None
        }
    }
}

/// A built span waiting for its gRPC status: queued when [`TracedBody`]
/// sees the trailers, the body ends or fails, or the response is dropped
/// (whichever comes first).
#[derive(Debug)]
pub struct Pending {
    span: Option<Box<SpanData>>,
    kind: Kind,
    queue: mpsc::Sender<SpanData>,
    metrics: Arc<Metrics>,
}

impl Pending {
    /// The response, its body wrapped to end the span.
    pub fn end_with(
        self,
        rsp: http::Response<crate::http::Body>,
    ) -> http::Response<crate::http::Body> {
        rsp.map(|body| http_body_util::BodyExt::boxed_unsync(TracedBody::new(body, self)))
    }

    /// The trailers' `grpc-status`, or none (the body ended without one);
    /// the span ends now.
    fn end(mut self, trailers: Option<&HeaderMap>) {
        let code = trailers
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok());
        if let Some(span) = self.span.as_deref_mut() {
            span.end_time = SystemTime::now().max(span.start_time);
            if let Some(code) = code {
                span.attributes
                    .push(KeyValue::new("rpc.grpc.status_code", code));
                if grpc_error(self.kind, code) {
                    mark_error(span, code.to_string());
                }
            }
        }
    }

    /// The body failed: the span ends now, an error.
    fn fail(mut self) {
        if let Some(span) = self.span.as_deref_mut() {
            span.end_time = SystemTime::now().max(span.start_time);
            mark_error(span, "response_body".to_owned());
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(span) = self.span.take()
            && self.queue.try_send(*span).is_err()
        {
            self.metrics.spans_dropped("queue_full", 1);
        }
    }
}

fn random_span_id() -> [u8; 8] {
    loop {
        let id = rand::random::<[u8; 8]>();
        if id != [0; 8] {
            return id;
        }
    }
}

/// `/pkg.Service/Method` as (`pkg.Service`, `Method`).
fn rpc_parts(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// Whether a gRPC status code makes the span an error, as the OpenTelemetry
/// RPC conventions say: every code but OK on a CLIENT span; on a SERVER span
/// only UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and
/// DATA_LOSS (the others are the caller's doing).
fn grpc_error(kind: Kind, code: i64) -> bool {
    match kind {
        Kind::Client => code != 0,
        Kind::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    }
}

/// Status ERROR and `error.type`, once.
fn mark_error(span: &mut SpanData, error_type: String) {
    if matches!(span.status, Status::Error { .. }) {
        return;
    }
    span.attributes
        .push(KeyValue::new("error.type", error_type.clone()));
    span.status = Status::error(error_type);
}

fn build_span(
    scope: &InstrumentationScope,
    active: ActiveSpan,
    kind: Kind,
    o: &Outcome<'_>,
    end: SystemTime,
) -> SpanData {
    let rpc = if o.grpc { rpc_parts(o.path) } else { None };
    let name: Cow<'static, str> = match (rpc, o.route) {
        (Some((service, method)), _) => format!("{service}/{method}").into(),
        (None, "") => o.method.to_owned().into(),
        (None, route) => format!("{} {route}", o.method).into(),
    };
    let mut attributes = Vec::with_capacity(24);
    attributes.extend([
        KeyValue::new("http.request.method", o.method.to_owned()),
        KeyValue::new("url.path", o.path.to_owned()),
        KeyValue::new("url.scheme", o.scheme.to_owned()),
        KeyValue::new("network.protocol.version", o.protocol),
        KeyValue::new("http.response.status_code", i64::from(o.status)),
        KeyValue::new(
            "weft.direction",
            match kind {
                Kind::Client => "outbound",
                Kind::Server => "inbound",
            },
        ),
        KeyValue::new("weft.client.identity", o.client_identity.to_owned()),
        KeyValue::new("weft.server.identity", o.server_identity.to_owned()),
        KeyValue::new("weft.mtls", o.mtls),
    ]);
    if let Some(authority) = o.authority {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse::<i64>().ok()),
            _ => (authority, None),
        };
        attributes.push(KeyValue::new("server.address", host.to_owned()));
        if let Some(port) = port {
            attributes.push(KeyValue::new("server.port", port));
        }
    }
    if !o.route.is_empty() {
        attributes.push(KeyValue::new("http.route", o.route.to_owned()));
        attributes.push(KeyValue::new("weft.route", o.route.to_owned()));
    }
    if !o.backend.is_empty() {
        attributes.push(KeyValue::new("weft.backend", o.backend.to_owned()));
    }
    if let Some(endpoint) = o.endpoint {
        attributes.push(KeyValue::new("weft.endpoint", endpoint.to_string()));
        attributes.push(KeyValue::new(
            "network.peer.address",
            endpoint.ip().to_string(),
        ));
        attributes.push(KeyValue::new(
            "network.peer.port",
            i64::from(endpoint.port()),
        ));
    }
    if o.resend_count > 0 {
        attributes.push(KeyValue::new(
            "http.request.resend_count",
            i64::from(o.resend_count),
        ));
    }
    if let Some((service, method)) = rpc {
        attributes.push(KeyValue::new("rpc.system", "grpc"));
        attributes.push(KeyValue::new("rpc.service", service.to_owned()));
        attributes.push(KeyValue::new("rpc.method", method.to_owned()));
        if let Some(code) = o.grpc_status {
            attributes.push(KeyValue::new("rpc.grpc.status_code", code));
        }
    }
    if let Some(kind) = o.proxy_error {
        attributes.push(KeyValue::new("weft.proxy_error", kind.to_owned()));
    }
    let mut span = SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(active.trace_id),
            SpanId::from_bytes(active.span_id),
            TraceFlags::SAMPLED,
            false,
            Default::default(),
        ),
        parent_span_id: active.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: active.parent.is_some(),
        span_kind: match kind {
            Kind::Client => SpanKind::Client,
            Kind::Server => SpanKind::Server,
        },
        name,
        start_time: active.start,
        end_time: end.max(active.start),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: scope.clone(),
    };
    let http_error = match kind {
        Kind::Client => o.status >= 400,
        Kind::Server => o.status >= 500,
    };
    let grpc_code = o.grpc_status.filter(|_| o.grpc);
    if let Some(error_type) = o.proxy_error {
        mark_error(&mut span, error_type.to_owned());
    } else if http_error {
        mark_error(&mut span, o.status.to_string());
    } else if let Some(code) = grpc_code.filter(|c| grpc_error(kind, *c)) {
        mark_error(&mut span, code.to_string());
    }
    span
}

/// The spans' resource: `service.name`, the proxy's version, then
/// `OTEL_RESOURCE_ATTRIBUTES` (the first of a repeated key counts).
fn resource(config: &TraceConfig) -> opentelemetry_sdk::Resource {
    let mut seen = HashSet::new();
    let mut attributes = vec![
        KeyValue::new("service.name", config.service_name.clone()),
        KeyValue::new("weft.proxy.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("telemetry.sdk.name", "weft-proxy"),
    ];
    for (k, v) in &config.resource {
        if seen.insert(k.as_str())
            && !matches!(k.as_str(), "weft.proxy.version" | "telemetry.sdk.name")
        {
            attributes.push(KeyValue::new(k.clone(), v.clone()));
        }
    }
    opentelemetry_sdk::Resource::builder_empty()
        .with_attributes(attributes)
        .build()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is the failure report

    use std::collections::HashMap;

    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_is_read_and_written() {
        let p = parse_traceparent(TP).unwrap();
        assert_eq!(p.sampled, Some(true));
        assert_eq!(traceparent(&p.trace_id, &p.span_id, true), TP);
        let unsampled = parse_traceparent(&TP.replace("-01", "-00")).unwrap();
        assert_eq!(unsampled.sampled, Some(false));
        // A later version: its first four fields.
        assert!(parse_traceparent(&format!("{}-extra", TP.replacen("00", "cc", 1))).is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            &TP.replacen("00", "ff", 1),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            &format!("{TP}-extra"),
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn b3_single_and_multi_are_read() {
        let single =
            parse_b3_single("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1").unwrap();
        assert_eq!(single.sampled, Some(true));
        assert_eq!(single.span_id, hex_to::<8>("e457b5a2e4d86bd1").unwrap());
        let short = parse_b3_single("64fe8b2a57d3eff7-e457b5a2e4d86bd1").unwrap();
        assert_eq!(short.trace_id[..8], [0; 8]);
        assert_eq!(short.sampled, None);
        assert_eq!(
            parse_b3_single("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0-05e3ac9a4f6e3b90")
                .unwrap()
                .sampled,
            Some(false)
        );
        assert_eq!(parse_b3_single("0"), None);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-b3-traceid",
            "80f198ee56343ba864fe8b2a57d3eff7".parse().unwrap(),
        );
        headers.insert("x-b3-spanid", "e457b5a2e4d86bd1".parse().unwrap());
        headers.insert("x-b3-sampled", "1".parse().unwrap());
        let multi = extract(&headers).unwrap();
        assert_eq!(multi, single);
        headers.insert(TRACEPARENT, TP.parse().unwrap());
        assert_eq!(extract(&headers), parse_traceparent(TP), "traceparent wins");
    }

    #[test]
    fn sampling_is_parent_based_then_by_trace_id() {
        let on = Sampler {
            parent_based: true,
            ratio: 1.0,
        };
        let off = Sampler {
            parent_based: true,
            ratio: 0.0,
        };
        let id = [7u8; 16];
        assert!(on.decide(&id, None));
        assert!(!on.decide(&id, Some(false)));
        assert!(off.decide(&id, Some(true)));
        assert!(!off.decide(&id, None));
        let tenth = Sampler {
            parent_based: false,
            ratio: 0.1,
        };
        let sampled = (0..10_000u32)
            .filter(|i| {
                let mut id = [0u8; 16];
                id[8..12].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
                tenth.decide(&id, Some(true))
            })
            .count();
        assert!((800..1200).contains(&sampled), "{sampled}");
    }

    #[test]
    fn begin_rewrites_the_context_for_the_next_hop() {
        let metrics = Arc::new(Metrics::new());
        let (queue, _rx) = mpsc::channel(1);
        let tracer = Tracer::with_queue(
            Sampler {
                parent_based: true,
                ratio: 1.0,
            },
            queue,
            metrics,
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            B3,
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
                .parse()
                .unwrap(),
        );
        headers.insert("tracestate", "vendor=x".parse().unwrap());
        let span = tracer.begin(&mut headers).unwrap();
        assert!(headers.get(B3).is_none());
        assert_eq!(headers.get("tracestate").unwrap(), "vendor=x");
        let next = parse_traceparent(headers.get(TRACEPARENT).unwrap().to_str().unwrap()).unwrap();
        assert_eq!(next.trace_id, span.trace_id);
        assert_eq!(next.span_id, span.span_id);
        assert_eq!(span.parent, hex_to::<8>("e457b5a2e4d86bd1"));
        // Unsampled: no span, the decision passed on.
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, TP.replace("-01", "-00").parse().unwrap());
        assert!(tracer.begin(&mut headers).is_none());
        assert!(
            headers
                .get(TRACEPARENT)
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with("-00")
        );
    }

    #[test]
    fn the_environment_is_read_with_clear_errors() {
        let env = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            move |k: &str| map.get(k).cloned()
        };
        assert_eq!(TraceConfig::from_env(env(&[])), Ok(None));
        let c = TraceConfig::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_SERVICE_NAME", "checkout"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.pod.name=checkout-1,team=a%2Cb",
            ),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            c.sampler,
            Sampler {
                parent_based: true,
                ratio: 0.25
            }
        );
        assert_eq!(c.service_name, "checkout");
        assert_eq!(c.resource[1], ("team".to_owned(), "a,b".to_owned()));
        let errors = TraceConfig::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_RESOURCE_ATTRIBUTES", "nokey"),
        ]))
        .unwrap_err();
        let vars: Vec<&str> = errors.iter().map(|(v, _)| *v).collect();
        assert_eq!(
            vars,
            [
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_TRACES_SAMPLER",
                "OTEL_RESOURCE_ATTRIBUTES"
            ]
        );
        assert_eq!(
            TraceConfig::from_env(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_TRACES_EXPORTER", "none")
            ])),
            Ok(None)
        );
    }

    #[test]
    fn https_takes_a_ca_file_named_in_its_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let ca_text = weft_tests::pki::TestCa::new("collector")
            .anchors_pem()
            .to_owned();
        std::fs::write(&ca, ca_text).unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let env = |pairs: Vec<(&'static str, String)>| {
            let map: HashMap<&str, String> = pairs.into_iter().collect();
            move |k: &str| map.get(k).cloned()
        };
        let c = TraceConfig::from_env(env(vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://ignored:4317".to_owned(),
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://collector:4317".to_owned(),
            ),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.display().to_string()),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            c.endpoint, "https://collector:4317",
            "the traces variable wins"
        );
        assert_eq!(c.ca_file.as_deref(), Some(ca.as_path()));
        let without = TraceConfig::from_env(env(vec![(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://collector:4317".to_owned(),
        )]))
        .unwrap()
        .unwrap();
        assert_eq!(without.ca_file, None, "the web PKI roots");
        for (path, says) in [
            (dir.path().join("missing.pem"), "cannot read"),
            (junk, "holds no certificate"),
        ] {
            let errors = TraceConfig::from_env(env(vec![
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "https://collector:4317".to_owned(),
                ),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", path.display().to_string()),
            ]))
            .unwrap_err();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].0, "OTEL_EXPORTER_OTLP_CERTIFICATE");
            assert!(errors[0].1.contains(says), "{errors:?}");
        }
    }

    fn outcome<'a>(grpc: bool, status: u16, grpc_status: Option<i64>) -> Outcome<'a> {
        Outcome {
            method: "POST",
            path: "/shop.Cart/Add",
            scheme: "http",
            protocol: "2",
            authority: Some("cart:8080"),
            status,
            grpc_status,
            grpc,
            client_identity: "spiffe://a",
            server_identity: "spiffe://b",
            ..Outcome::default()
        }
    }

    fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a opentelemetry::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    fn active() -> ActiveSpan {
        ActiveSpan {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: Some([3; 8]),
            start: SystemTime::now(),
        }
    }

    #[test]
    fn spans_carry_the_conventions_attributes_and_status() {
        let scope = InstrumentationScope::builder("weft-proxy").build();
        let span = build_span(
            &scope,
            active(),
            Kind::Client,
            &outcome(true, 200, Some(5)),
            SystemTime::now(),
        );
        assert_eq!(span.name, "shop.Cart/Add");
        assert_eq!(span.span_kind, SpanKind::Client);
        assert_eq!(span.parent_span_id, SpanId::from_bytes([3; 8]));
        assert_eq!(attr(&span, "rpc.system").unwrap().as_str(), "grpc");
        assert_eq!(attr(&span, "rpc.service").unwrap().as_str(), "shop.Cart");
        assert_eq!(attr(&span, "rpc.method").unwrap().as_str(), "Add");
        assert_eq!(attr(&span, "rpc.grpc.status_code"), Some(&5i64.into()));
        assert_eq!(attr(&span, "server.port"), Some(&8080i64.into()));
        assert_eq!(span.status, Status::error("5"), "NOT_FOUND fails a client");
        let server = build_span(
            &scope,
            active(),
            Kind::Server,
            &outcome(true, 200, Some(5)),
            SystemTime::now(),
        );
        assert_eq!(server.status, Status::Unset, "but not a server");
        let http = build_span(
            &scope,
            active(),
            Kind::Server,
            &outcome(false, 503, None),
            SystemTime::now(),
        );
        assert_eq!(http.name, "POST");
        assert!(attr(&http, "rpc.system").is_none());
        assert_eq!(attr(&http, "error.type").unwrap().as_str(), "503");
        assert_eq!(http.status, Status::error("503"));
    }

    #[test]
    fn a_grpc_span_without_a_status_in_the_head_ends_with_the_trailers() {
        let metrics = Arc::new(Metrics::new());
        let (queue, mut rx) = mpsc::channel(4);
        let tracer = Tracer::with_queue(
            Sampler {
                parent_based: true,
                ratio: 1.0,
            },
            queue,
            metrics,
        );
        // The status in the head (trailers-only): queued at once.
        assert!(
            tracer
                .finish(active(), Kind::Server, &outcome(true, 200, Some(12)))
                .is_none()
        );
        let span = rx.try_recv().unwrap();
        assert_eq!(attr(&span, "rpc.grpc.status_code"), Some(&12i64.into()));
        assert_eq!(span.status, Status::error("12"));
        // Plain HTTP: at once too.
        assert!(
            tracer
                .finish(active(), Kind::Client, &outcome(false, 200, None))
                .is_none()
        );
        rx.try_recv().unwrap();

        // In the trailers: queued when they pass.
        let pending = tracer
            .finish(active(), Kind::Client, &outcome(true, 200, None))
            .unwrap();
        assert!(rx.try_recv().is_err(), "not before the trailers");
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("13"));
        let body = http_body_util::StreamBody::new(futures::stream::iter([
            Ok::<_, crate::http::BoxError>(http_body::Frame::data(bytes::Bytes::from_static(b"x"))),
            Ok(http_body::Frame::trailers(trailers)),
        ]));
        let rsp = pending.end_with(http::Response::new(http_body_util::BodyExt::boxed_unsync(
            body,
        )));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let collected = runtime
            .block_on(http_body_util::BodyExt::collect(rsp.into_body()))
            .unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "13");
        let span = rx.try_recv().unwrap();
        assert_eq!(attr(&span, "rpc.grpc.status_code"), Some(&13i64.into()));
        assert_eq!(span.status, Status::error("13"));

        // Dropped before the trailers (the caller went away): queued, no code.
        drop(
            tracer
                .finish(active(), Kind::Client, &outcome(true, 200, None))
                .unwrap(),
        );
        let span = rx.try_recv().unwrap();
        assert!(attr(&span, "rpc.grpc.status_code").is_none());
    }
}
