//! The proxy's Prometheus metrics (OpenMetrics text on the admin server).
//!
//! Every benchmark measures the proxy with these on.

use std::collections::{HashMap, HashSet};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::{Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Which side of the proxy traffic passed through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Labels of a request: direction, status, whether the peer hop was mTLS, and
/// the peer's identity (the server's for outbound, the client's for inbound;
/// empty when there is none).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    pub status_code: u16,
    pub tls: bool,
    pub peer_identity: Arc<str>,
}

/// Labels of an inbound authorization decision.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AuthzLabels {
    /// `allowed`, `denied` or `audited`.
    pub decision: &'static str,
    /// The authorization's policy name, or `default:<mode>`.
    pub policy: Arc<str>,
    pub tls: bool,
    pub peer_identity: Arc<str>,
    /// The app port the caller asked for.
    pub port: u16,
}

/// The labels outbound requests add: the backend that served the request and
/// the route it took (empty for the target's default route). Inbound
/// requests have neither, and encode no label for them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct RouteLabels {
    pub outbound: Option<(Arc<str>, Arc<str>)>,
}

impl EncodeLabelSet for RouteLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> std::fmt::Result {
        match &self.outbound {
            Some((backend, route)) => [("backend", &**backend), ("route", &**route)]
                .as_slice()
                .encode(encoder),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RetryLabels {
    target: Arc<str>,
    backend: Arc<str>,
    reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TargetLabels {
    target: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BackendLabels {
    target: Arc<str>,
    backend: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabels {
    target: Arc<str>,
    backend: Arc<str>,
    endpoint: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: Direction,
    pub tls: bool,
    pub peer_identity: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandshakeLabels {
    direction: Direction,
    kx_group: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    direction: Direction,
    reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IdentityLabels {
    identity: String,
}

/// The certificate in use: its identity and serial (lowercase hex).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CertificateLabels {
    identity: String,
    serial: String,
}

/// The certificate the gauges describe, and when the proxy first saw it in use.
#[derive(Debug)]
struct InUse {
    leaf: Vec<u8>,
    labels: CertificateLabels,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DetectLabels {
    direction: Direction,
    protocol: &'static str,
    timed_out: bool,
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Latency buckets, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The default cap on distinct peer identities in label values.
pub const DEFAULT_MAX_IDENTITIES: usize = 100;

/// The label value of identities seen once the cap is reached.
pub const OVERFLOW: &str = "overflow";

/// The default time after which the series of a peer identity not seen
/// (and with no open connection) are removed.
pub const DEFAULT_IDLE_EXPIRY: Duration = Duration::from_secs(600);

/// The longest time between two sweeps for idle series.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The peer identities label values may name: the first `max` seen; any
/// other is labelled [`OVERFLOW`], so a caller spraying identities cannot
/// grow the series without bound. Each admitted identity remembers when it
/// was last seen and the label sets that name it, so that
/// [`Metrics::expire_idle`] can remove them and free its slot.
#[derive(Debug)]
struct Identities {
    max: usize,
    seen: RwLock<HashMap<Arc<str>, Mutex<Peer>>>,
    overflow: Arc<str>,
}

/// One admitted peer identity.
#[derive(Debug)]
struct Peer {
    last_seen: Instant,
    requests: HashSet<(RequestLabels, RouteLabels)>,
    authz: HashSet<AuthzLabels>,
    tcp: HashSet<TcpLabels>,
}

impl Peer {
    fn new(now: Instant) -> Self {
        Self {
            last_seen: now,
            requests: HashSet::new(),
            authz: HashSet::new(),
            tcp: HashSet::new(),
        }
    }
}

impl Identities {
    fn new(max: usize) -> Self {
        Self {
            max,
            seen: RwLock::new(HashMap::new()),
            overflow: Arc::from(OVERFLOW),
        }
    }

    /// Calls `record` with the label value for `id` (itself while under the
    /// cap or already admitted, `overflow` otherwise; empty, plaintext, stays
    /// empty) and, for an admitted identity, its [`Peer`], stamped seen now.
    ///
    /// `record` runs while the identity cannot expire, so the series it
    /// creates are always remembered by the peer that a sweep removes.
    fn with_label<R>(
        &self,
        id: &Arc<str>,
        record: impl FnOnce(Arc<str>, Option<&mut Peer>) -> R,
    ) -> R {
        if id.is_empty() {
            return record(id.clone(), None);
        }
        let now = Instant::now();
        {
            // A poisoned lock only means a panic elsewhere; the map is still whole.
            let seen = self
                .seen
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(peer) = seen.get(id) {
                let mut peer = crate::lock(peer);
                peer.last_seen = now;
                return record(id.clone(), Some(&mut peer));
            }
        }
        let mut seen = self
            .seen
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !seen.contains_key(id) && seen.len() >= self.max {
            return record(self.overflow.clone(), None);
        }
        let peer = seen
            .entry(id.clone())
            .or_insert_with(|| Mutex::new(Peer::new(now)))
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        peer.last_seen = now;
        record(id.clone(), Some(peer))
    }
}

/// All metric families of one proxy.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<(RequestLabels, RouteLabels), Counter>,
    latency: Family<(RequestLabels, RouteLabels), Histogram, fn() -> Histogram>,
    retries: Family<RetryLabels, Counter>,
    budget_exhausted: Family<TargetLabels, Counter>,
    ejected: Family<EndpointLabels, Gauge>,
    ejections: Family<BackendLabels, Counter>,
    tcp_open: Family<TcpLabels, Counter>,
    tcp_close: Family<TcpLabels, Counter>,
    tcp_active: Family<TcpLabels, Gauge>,
    tcp_read_bytes: Family<TcpLabels, Counter>,
    tcp_write_bytes: Family<TcpLabels, Counter>,
    handshakes: Family<HandshakeLabels, Counter>,
    handshake_errors: Family<ReasonLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    authz: Family<AuthzLabels, Counter>,
    detect: Family<DetectLabels, Counter>,
    outbound_refused: Family<ReasonLabels, Counter>,
    cert_expiry: Family<IdentityLabels, Gauge>,
    certificate: Family<CertificateLabels, Gauge>,
    renewed: Family<CertificateLabels, Gauge>,
    in_use: Mutex<Option<InUse>>,
    certify: Family<ResultLabels, Counter>,
    spans_exported: Counter,
    spans_dropped: Family<SpanDropLabels, Counter>,
    streams_open: Family<StreamLabels, Gauge>,
    stream_retries: Family<StreamLabels, Counter>,
    policy_updates: Family<StreamLabels, Counter>,
    policy_updated: Family<StreamLabels, Gauge>,
    series_expired: Counter,
    destination_version: Family<TargetLabels, Gauge>,
    identities: Identities,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SpanDropLabels {
    /// `queue_full` or `export_failed`.
    reason: &'static str,
}

/// Which control-plane stream: `discovery` (a `Discovery.Watch` per target)
/// or `inbound` (an `Inbound.Watch` per inbound port).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StreamLabels {
    stream: &'static str,
}

/// The `weft_proxy_destination_version` series of one target, set to the
/// version of each snapshot put in force; removed when dropped (the target's
/// discovery watch ended).
#[derive(Debug)]
pub struct DestinationVersion {
    family: Family<TargetLabels, Gauge>,
    labels: TargetLabels,
}

impl DestinationVersion {
    /// Records that the snapshot of `version` is in force.
    pub fn set(&self, version: u64) {
        self.family
            .get_or_create(&self.labels)
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }
}

impl Drop for DestinationVersion {
    fn drop(&mut self) {
        self.family.remove(&self.labels);
    }
}

/// Counts a control stream as open until dropped.
#[derive(Debug)]
pub struct StreamOpen(Gauge);

impl Drop for StreamOpen {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_max_identities(DEFAULT_MAX_IDENTITIES)
    }

    /// Metrics whose `peer_identity` labels name at most `max` identities.
    pub fn with_max_identities(max: usize) -> Self {
        let mut root = Registry::default();
        weft_api::process::register(&mut root);
        let registry = root.sub_registry_with_prefix("weft");
        let requests = Family::default();
        let latency: Family<(RequestLabels, RouteLabels), Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let retries = Family::default();
        let budget_exhausted = Family::default();
        let ejected = Family::default();
        let ejections = Family::default();
        registry.register(
            "proxy_retries",
            "Outbound retries by target, backend of the failed try, and reason",
            retries.clone(),
        );
        registry.register(
            "proxy_retry_budget_exhausted",
            "Outbound retries not made because the target's retry budget was spent",
            budget_exhausted.clone(),
        );
        registry.register(
            "proxy_endpoint_ejected",
            "1 while the circuit breaker keeps an endpoint out of load balancing",
            ejected.clone(),
        );
        registry.register(
            "proxy_ejections",
            "Endpoints ejected by the circuit breaker, by target and backend",
            ejections.clone(),
        );
        let tcp_open = Family::default();
        let tcp_close = Family::default();
        let tcp_active = Family::default();
        let tcp_read_bytes = Family::default();
        let tcp_write_bytes = Family::default();
        let handshakes = Family::default();
        let handshake_errors = Family::default();
        let refused = Family::default();
        let authz = Family::default();
        let detect = Family::default();
        let outbound_refused = Family::default();
        let cert_expiry = Family::default();
        let certificate = Family::default();
        let renewed = Family::default();
        let certify = Family::default();
        registry.register(
            "identity_certify",
            "Certificate requests to the controller, by result (ok or error)",
            certify.clone(),
        );
        let streams_open = Family::default();
        let stream_retries = Family::default();
        let policy_updates = Family::default();
        let policy_updated = Family::default();
        registry.register(
            "proxy_control_streams_open",
            "Open control-plane watch streams, by stream (discovery: one per target; inbound: \
             one per inbound port)",
            streams_open.clone(),
        );
        registry.register(
            "proxy_control_stream_retries",
            "Control-plane watch streams opened again after they ended, broke or were refused",
            stream_retries.clone(),
        );
        registry.register(
            "proxy_policy_updates",
            "Valid snapshots (discovery) and inbound policies (inbound) received and put in force",
            policy_updates.clone(),
        );
        registry.register(
            "proxy_policy_last_update_timestamp_seconds",
            "When the last valid snapshot or inbound policy of the stream was put in force (Unix time)",
            policy_updated.clone(),
        );
        registry.register(
            "requests",
            "HTTP requests by direction, status code, mTLS and peer identity",
            requests.clone(),
        );
        registry.register(
            "response_latency_seconds",
            "Time from receiving a request to sending its response headers",
            latency.clone(),
        );
        registry.register("tcp_open", "TCP connections opened", tcp_open.clone());
        registry.register("tcp_close", "TCP connections closed", tcp_close.clone());
        registry.register(
            "tcp_open_connections",
            "TCP connections currently open",
            tcp_active.clone(),
        );
        registry.register(
            "tcp_read_bytes",
            "Bytes read from TCP connections",
            tcp_read_bytes.clone(),
        );
        registry.register(
            "tcp_write_bytes",
            "Bytes written to TCP connections",
            tcp_write_bytes.clone(),
        );
        registry.register(
            "tls_handshakes",
            "Completed mesh TLS handshakes by negotiated key exchange group",
            handshakes.clone(),
        );
        registry.register(
            "tls_handshake_errors",
            "Failed mesh TLS handshakes by reason",
            handshake_errors.clone(),
        );
        registry.register(
            "inbound_refused",
            "Inbound connections refused before reaching the app, by reason",
            refused.clone(),
        );
        registry.register(
            "inbound_authz",
            "Inbound authorization decisions (requests, and opaque connections): allowed, \
             denied, or audited (let through by the audit mode, which deny would refuse), by the \
             policy that decided (`default:<mode>` when no authorization did), whether the \
             caller was mTLS and its identity (empty for plaintext)",
            authz.clone(),
        );
        registry.register(
            "protocol_detect",
            "Protocol detection results, including fallbacks to opaque after the timeout",
            detect.clone(),
        );
        registry.register(
            "outbound_refused",
            "Outbound connections from the app refused by the proxy, by reason (e.g. loop)",
            outbound_refused.clone(),
        );
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "When the workload certificate in use expires (Unix time), by identity",
            cert_expiry.clone(),
        );
        registry.register(
            "identity_certificate",
            "The workload certificate in use, by identity and serial (lowercase hex); the value \
             is when it expires (Unix time). One series: the previous certificate's goes at renewal",
            certificate.clone(),
        );
        registry.register(
            "identity_certificate_renewed_timestamp_seconds",
            "When the proxy installed the workload certificate in use (Unix time), by identity and \
             serial; for a certificate read from files, when the proxy first reported it",
            renewed.clone(),
        );
        let destination_version = Family::default();
        registry.register(
            "proxy_destination_version",
            "The version of the discovery snapshot in force, by target",
            destination_version.clone(),
        );
        let series_expired = Counter::default();
        registry.register(
            "proxy_metrics_series_expired",
            "Label sets of the request, latency, tcp and authz families removed because their \
             peer identity was not seen for WEFT_PROXY_METRICS_IDLE_EXPIRY",
            series_expired.clone(),
        );
        let spans_exported = Counter::default();
        let spans_dropped = Family::default();
        registry.register(
            "proxy_spans_exported",
            "Spans the collector accepted",
            spans_exported.clone(),
        );
        registry.register(
            "proxy_spans_dropped",
            "Spans dropped, by reason: queue_full (the export queue was full), export_failed \
             (the collector refused or did not answer in time)",
            spans_dropped.clone(),
        );
        Self {
            registry: root,
            requests,
            latency,
            retries,
            budget_exhausted,
            ejected,
            ejections,
            tcp_open,
            tcp_close,
            tcp_active,
            tcp_read_bytes,
            tcp_write_bytes,
            handshakes,
            handshake_errors,
            refused,
            authz,
            detect,
            outbound_refused,
            cert_expiry,
            certificate,
            renewed,
            in_use: Mutex::new(None),
            certify,
            spans_exported,
            spans_dropped,
            streams_open,
            stream_retries,
            policy_updates,
            policy_updated,
            series_expired,
            destination_version,
            identities: Identities::new(max),
        }
    }

    /// Counts spans the collector accepted.
    pub fn spans_exported(&self, n: u64) {
        self.spans_exported.inc_by(n);
    }

    /// Counts spans dropped for `reason` (`queue_full`, `export_failed`).
    pub fn spans_dropped(&self, reason: &'static str, n: u64) {
        self.spans_dropped
            .get_or_create(&SpanDropLabels { reason })
            .inc_by(n);
    }

    /// Counts a control stream of kind `stream` as open until the guard drops.
    pub fn control_stream_open(&self, stream: &'static str) -> StreamOpen {
        let gauge = self
            .streams_open
            .get_or_create_owned(&StreamLabels { stream });
        gauge.inc();
        StreamOpen(gauge)
    }

    /// The version gauge of `target`'s snapshots; no series until the first
    /// [`DestinationVersion::set`].
    pub fn destination_version(&self, target: &str) -> DestinationVersion {
        DestinationVersion {
            family: self.destination_version.clone(),
            labels: TargetLabels {
                target: Arc::from(target),
            },
        }
    }

    /// Counts a control stream about to be opened again.
    pub fn control_stream_retry(&self, stream: &'static str) {
        self.stream_retries
            .get_or_create(&StreamLabels { stream })
            .inc();
    }

    /// Records that a snapshot or policy of `stream` was put in force now.
    pub fn policy_update(&self, stream: &'static str) {
        self.policy_update_at(stream, SystemTime::now());
    }

    fn policy_update_at(&self, stream: &'static str, now: SystemTime) {
        let labels = StreamLabels { stream };
        self.policy_updates.get_or_create(&labels).inc();
        self.policy_updated
            .get_or_create(&labels)
            .set(unix_seconds(now));
    }

    /// Counts a certificate request to the controller.
    pub fn certified(&self, ok: bool) {
        self.certify
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// Records the identity, serial and expiry of the certificate in use, and,
    /// when it is not the one recorded last, that it was installed now (the
    /// identity task calls this as it installs each certificate; `/metrics`
    /// before every encoding).
    pub fn observe_credentials(&self, credentials: Option<&weft_api::tls::Credentials>) {
        self.observe_credentials_at(credentials, SystemTime::now());
    }

    fn observe_credentials_at(
        &self,
        credentials: Option<&weft_api::tls::Credentials>,
        now: SystemTime,
    ) {
        let Some(c) = credentials else { return };
        let expiry = unix_seconds(c.not_after());
        self.cert_expiry
            .get_or_create(&IdentityLabels {
                identity: c.identity().to_string(),
            })
            .set(expiry);
        let Some(leaf) = c.chain().first() else {
            return;
        };
        let mut in_use = crate::lock(&self.in_use);
        if in_use.as_ref().is_none_or(|u| u.leaf != leaf.as_ref()) {
            let labels = CertificateLabels {
                identity: c.identity().to_string(),
                serial: weft_api::tls::serial_hex(leaf).unwrap_or_default(),
            };
            if let Some(old) = in_use.take() {
                self.certificate.remove(&old.labels);
                self.renewed.remove(&old.labels);
            }
            self.renewed.get_or_create(&labels).set(unix_seconds(now));
            *in_use = Some(InUse {
                leaf: leaf.as_ref().to_vec(),
                labels,
            });
        }
        if let Some(u) = in_use.as_ref() {
            self.certificate.get_or_create(&u.labels).set(expiry);
        }
    }

    /// Records one request and the latency of its response.
    pub fn request(&self, labels: &RequestLabels, latency: Duration) {
        self.record_request((labels.clone(), RouteLabels::default()), latency);
    }

    /// Records one outbound request, with the backend and route that served it.
    pub fn outbound_request(
        &self,
        labels: RequestLabels,
        backend: Arc<str>,
        route: Arc<str>,
        latency: Duration,
    ) {
        let labels = (
            labels,
            RouteLabels {
                outbound: Some((backend, route)),
            },
        );
        self.record_request(labels, latency);
    }

    fn record_request(&self, mut labels: (RequestLabels, RouteLabels), latency: Duration) {
        let id = labels.0.peer_identity.clone();
        self.identities.with_label(&id, |label, peer| {
            labels.0.peer_identity = label;
            if let Some(peer) = peer
                && !peer.requests.contains(&labels)
            {
                peer.requests.insert(labels.clone());
            }
            self.requests.get_or_create(&labels).inc();
            self.latency
                .get_or_create(&labels)
                .observe(latency.as_secs_f64());
        });
    }

    /// Counts a retry of a try to `backend` that failed for `reason`.
    pub fn retried(&self, target: &Arc<str>, backend: &Arc<str>, reason: &'static str) {
        self.retries
            .get_or_create(&RetryLabels {
                target: target.clone(),
                backend: backend.clone(),
                reason,
            })
            .inc();
    }

    /// Counts a retry the budget did not allow.
    pub fn retry_budget_exhausted(&self, target: &Arc<str>) {
        self.budget_exhausted
            .get_or_create(&TargetLabels {
                target: target.clone(),
            })
            .inc();
    }

    /// The ejection gauge of one endpoint.
    pub fn endpoint_ejected(&self, target: &str, backend: &str, endpoint: &str) -> Gauge {
        self.ejected
            .get_or_create(&EndpointLabels {
                target: Arc::from(target),
                backend: Arc::from(backend),
                endpoint: endpoint.to_owned(),
            })
            .clone()
    }

    /// Counts an ejection.
    pub fn ejected(&self, target: &str, backend: &str) {
        self.ejections
            .get_or_create(&BackendLabels {
                target: Arc::from(target),
                backend: Arc::from(backend),
            })
            .inc();
    }

    /// Records a completed TLS handshake.
    pub fn handshake(
        &self,
        direction: Direction,
        kx: Option<&'static dyn rustls::crypto::SupportedKxGroup>,
    ) {
        let kx_group = kx
            .map(|g| g.name().as_str().unwrap_or("unknown"))
            .unwrap_or("none");
        self.handshakes
            .get_or_create(&HandshakeLabels {
                direction,
                kx_group,
            })
            .inc();
    }

    pub fn handshake_failed(&self, direction: Direction, reason: &'static str) {
        self.handshake_errors
            .get_or_create(&ReasonLabels { direction, reason })
            .inc();
    }

    pub fn inbound_refused(&self, reason: &'static str) {
        self.refused
            .get_or_create(&ReasonLabels {
                direction: Direction::Inbound,
                reason,
            })
            .inc();
    }

    /// Counts one inbound authorization decision.
    pub fn authz(&self, mut labels: AuthzLabels) {
        let id = labels.peer_identity.clone();
        self.identities.with_label(&id, |label, peer| {
            labels.peer_identity = label;
            if let Some(peer) = peer
                && !peer.authz.contains(&labels)
            {
                peer.authz.insert(labels.clone());
            }
            self.authz.get_or_create(&labels).inc();
        });
    }

    pub fn outbound_refused(&self, reason: &'static str) {
        self.outbound_refused
            .get_or_create(&ReasonLabels {
                direction: Direction::Outbound,
                reason,
            })
            .inc();
    }

    pub fn detected(&self, direction: Direction, protocol: &'static str, timed_out: bool) {
        self.detect
            .get_or_create(&DetectLabels {
                direction,
                protocol,
                timed_out,
            })
            .inc();
    }

    /// Counts a connection as open until the returned guard drops, and wraps
    /// `io` to count its bytes.
    pub fn tcp<I>(&self, mut labels: TcpLabels, io: I) -> Counted<I> {
        let id = labels.peer_identity.clone();
        let (read, written, close) = self.identities.with_label(&id, |label, peer| {
            labels.peer_identity = label;
            if let Some(peer) = peer
                && !peer.tcp.contains(&labels)
            {
                peer.tcp.insert(labels.clone());
            }
            self.tcp_open.get_or_create(&labels).inc();
            // Incremented before the identity can expire: a sweep keeps the
            // series of an identity with an open connection.
            let active = self.tcp_active.get_or_create_owned(&labels);
            active.inc();
            (
                self.tcp_read_bytes.get_or_create_owned(&labels),
                self.tcp_write_bytes.get_or_create_owned(&labels),
                (self.tcp_close.get_or_create_owned(&labels), active),
            )
        });
        Counted {
            io,
            read,
            written,
            close: Some(close),
        }
    }

    /// Removes every label set (requests, latency, tcp, authz) of the peer
    /// identities last seen more than `expiry` before `now` that have no
    /// open connection, and frees their slots under the identity cap. An
    /// identity with an open connection counts as seen at `now`. Returns the
    /// number of label sets removed.
    pub fn expire_idle(&self, now: Instant, expiry: Duration) -> u64 {
        let mut removed = 0u64;
        let mut count = |gone: bool| removed += u64::from(gone);
        // A poisoned lock only means a panic elsewhere; the map is still whole.
        let mut seen = self
            .identities
            .seen
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = seen.len();
        seen.retain(|_, peer| {
            let peer = peer
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let open = peer
                .tcp
                .iter()
                .any(|l| self.tcp_active.get(l).is_some_and(|g| g.get() > 0));
            if open {
                peer.last_seen = now;
                return true;
            }
            if now.saturating_duration_since(peer.last_seen) <= expiry {
                return true;
            }
            for l in &peer.requests {
                count(self.requests.remove(l));
                count(self.latency.remove(l));
            }
            for l in &peer.authz {
                count(self.authz.remove(l));
            }
            for l in &peer.tcp {
                count(self.tcp_open.remove(l));
                count(self.tcp_close.remove(l));
                count(self.tcp_active.remove(l));
                count(self.tcp_read_bytes.remove(l));
                count(self.tcp_write_bytes.remove(l));
            }
            false
        });
        let identities = before - seen.len();
        drop(seen);
        if removed > 0 {
            self.series_expired.inc_by(removed);
        }
        if identities > 0 {
            tracing::debug!(
                identities,
                series = removed,
                "expired the metrics of idle peers"
            );
        }
        removed
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Every `min(expiry / 4, 60 s)`, removes the series of peer identities idle
/// for `expiry` ([`Metrics::expire_idle`]), until `shutdown`.
pub async fn expire_idle_series(
    metrics: Arc<Metrics>,
    expiry: Duration,
    shutdown: CancellationToken,
) {
    let period = (expiry / 4).clamp(Duration::from_millis(1), MAX_SWEEP_INTERVAL);
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {
                metrics.expire_idle(Instant::now(), expiry);
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// An I/O that counts the bytes read and written through it, and counts
    /// the connection as closed when dropped.
    pub struct Counted<I> {
        #[pin]
        io: I,
        read: Counter,
        written: Counter,
        close: Option<(Counter, Gauge)>,
    }

    impl<I> PinnedDrop for Counted<I> {
        fn drop(this: Pin<&mut Self>) {
            if let Some((closed, active)) = this.project().close.take() {
                closed.inc();
                active.dec();
            }
        }
    }
}

impl<I> Counted<I> {
    pub fn get_ref(&self) -> &I {
        &self.io
    }
}

impl<I: AsyncRead> AsyncRead for Counted<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let poll = this.io.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read.inc_by(n as u64);
        }
        poll
    }
}

impl<I: AsyncWrite> AsyncWrite for Counted<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.io.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            this.written.inc_by(*n as u64);
        }
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.io.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &poll {
            this.written.inc_by(*n as u64);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is the failure report

    use super::*;
    use weft_tests::pki::TestCa;

    fn lines_with(text: &str, prefix: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_certificate_in_use_is_one_series_renewed_when_it_changes() {
        let ca = TestCa::new("weft test");
        let id = "spiffe://cluster.local/ns/shop/sa/web";
        let first = ca.issue(id).credentials();
        let second = ca.issue(id).credentials();
        let serial =
            |c: &weft_api::tls::Credentials| weft_api::tls::serial_hex(&c.chain()[0]).unwrap();
        let expiry = unix_seconds(first.not_after());
        let at = |s| std::time::UNIX_EPOCH + Duration::from_secs(s);
        let metrics = Metrics::new();
        metrics.observe_credentials_at(Some(&first), at(100));
        metrics.observe_credentials_at(Some(&first), at(200));
        let text = metrics.encode().unwrap();
        assert_eq!(
            lines_with(&text, "weft_identity_certificate{"),
            [format!(
                "weft_identity_certificate{{identity=\"{id}\",serial=\"{}\"}} {expiry}",
                serial(&first)
            )],
            "{text}"
        );
        assert_eq!(
            lines_with(
                &text,
                "weft_identity_certificate_renewed_timestamp_seconds{"
            ),
            [format!(
                "weft_identity_certificate_renewed_timestamp_seconds{{identity=\"{id}\",serial=\"{}\"}} 100",
                serial(&first)
            )],
            "the same certificate seen again is not a renewal: {text}"
        );

        metrics.observe_credentials_at(Some(&second), at(300));
        let text = metrics.encode().unwrap();
        let renewed = lines_with(
            &text,
            "weft_identity_certificate_renewed_timestamp_seconds{",
        );
        assert_eq!(renewed.len(), 1, "{text}");
        assert!(renewed[0].contains(&serial(&second)), "{text}");
        assert!(renewed[0].ends_with(" 300"), "{text}");
        assert_eq!(
            lines_with(&text, "weft_identity_certificate{").len(),
            1,
            "{text}"
        );
        assert_ne!(serial(&first), serial(&second));
    }

    /// Records one sample in every family (the destination version's while
    /// the returned guard lives).
    fn one_of_everything(metrics: &Metrics) -> DestinationVersion {
        let id: Arc<str> = Arc::from("spiffe://cluster.local/ns/shop/sa/web");
        let labels = RequestLabels {
            direction: Direction::Inbound,
            status_code: 200,
            tls: true,
            peer_identity: id.clone(),
        };
        metrics.request(&labels, Duration::from_millis(1));
        let target: Arc<str> = Arc::from("checkout");
        let backend: Arc<str> = Arc::from("checkout-v2");
        metrics.outbound_request(
            labels.clone(),
            backend.clone(),
            Arc::from(""),
            Duration::from_millis(1),
        );
        metrics.retried(&target, &backend, "5xx");
        metrics.retry_budget_exhausted(&target);
        metrics
            .endpoint_ejected("checkout", "checkout-v2", "127.0.0.1:80")
            .set(1);
        metrics.ejected("checkout", "checkout-v2");
        let tcp = TcpLabels {
            direction: Direction::Outbound,
            tls: true,
            peer_identity: id.clone(),
        };
        drop(metrics.tcp(tcp, ()));
        metrics.handshake(Direction::Inbound, None);
        metrics.handshake_failed(Direction::Outbound, "timeout");
        metrics.inbound_refused("plaintext");
        metrics.outbound_refused("loop");
        metrics.authz(AuthzLabels {
            decision: "allowed",
            policy: Arc::from("default:all-authenticated"),
            tls: true,
            peer_identity: id,
            port: 8080,
        });
        metrics.detected(Direction::Inbound, "opaque", true);
        metrics.certified(true);
        drop(metrics.control_stream_open("discovery"));
        metrics.control_stream_retry("inbound");
        metrics.policy_update("inbound");
        let ca = TestCa::new("weft test");
        let credentials = ca
            .issue("spiffe://cluster.local/ns/shop/sa/web")
            .credentials();
        metrics.observe_credentials(Some(&credentials));
        let version = metrics.destination_version("checkout:80");
        version.set(3);
        version
    }

    #[test]
    fn every_family_is_documented() {
        let metrics = Metrics::new();
        let _version = one_of_everything(&metrics);
        let text = metrics.encode().unwrap();
        let doc = include_str!("../../docs/metrics.md");
        let families = weft_tests::prometheus::family_names(&text);
        assert!(families.len() >= 20, "{text}");
        let missing = weft_tests::prometheus::undocumented(&text, doc);
        assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
    }

    #[test]
    fn identities_past_the_cap_are_labelled_overflow() {
        let metrics = Metrics::with_max_identities(2);
        let request = |id: &str| {
            metrics.request(
                &RequestLabels {
                    direction: Direction::Inbound,
                    status_code: 200,
                    tls: !id.is_empty(),
                    peer_identity: Arc::from(id),
                },
                Duration::from_millis(1),
            );
        };
        let ids = [
            "spiffe://a/ns/x/sa/1",
            "spiffe://a/ns/x/sa/2",
            "spiffe://a/ns/x/sa/3",
        ];
        for id in ids {
            request(id);
        }
        request(ids[0]);
        request(ids[2]);
        request("");
        drop(metrics.tcp(
            TcpLabels {
                direction: Direction::Inbound,
                tls: true,
                peer_identity: Arc::from("spiffe://a/ns/x/sa/4"),
            },
            (),
        ));
        let text = metrics.encode().unwrap();
        let requests = lines_with(&text, "weft_requests_total{");
        let count = |id: &str| {
            requests
                .iter()
                .find(|l| l.contains(&format!("peer_identity=\"{id}\"")))
                .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        };
        assert_eq!(count(ids[0]).as_deref(), Some("2"), "{text}");
        assert_eq!(count(ids[1]).as_deref(), Some("1"), "{text}");
        assert_eq!(count(ids[2]), None, "{text}");
        assert_eq!(count(OVERFLOW).as_deref(), Some("2"), "{text}");
        assert_eq!(
            count("").as_deref(),
            Some("1"),
            "plaintext is not capped: {text}"
        );
        assert!(
            text.contains("weft_tcp_open_total{direction=\"inbound\",tls=\"true\",peer_identity=\"overflow\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn control_streams_count_while_open_and_updates_stamp_the_time() {
        let metrics = Metrics::new();
        let open = metrics.control_stream_open("discovery");
        let _other = metrics.control_stream_open("discovery");
        metrics.control_stream_retry("discovery");
        metrics.policy_update_at("inbound", std::time::UNIX_EPOCH + Duration::from_secs(42));
        let text = metrics.encode().unwrap();
        for line in [
            "weft_proxy_control_streams_open{stream=\"discovery\"} 2",
            "weft_proxy_control_stream_retries_total{stream=\"discovery\"} 1",
            "weft_proxy_policy_updates_total{stream=\"inbound\"} 1",
            "weft_proxy_policy_last_update_timestamp_seconds{stream=\"inbound\"} 42",
        ] {
            assert!(text.contains(line), "missing {line}:\n{text}");
        }
        drop(open);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("weft_proxy_control_streams_open{stream=\"discovery\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn the_destination_version_is_the_snapshot_in_force_until_the_watch_ends() {
        let metrics = Metrics::new();
        let version = metrics.destination_version("checkout.shop:80");
        let line =
            |v: u64| format!("weft_proxy_destination_version{{target=\"checkout.shop:80\"}} {v}");
        assert!(
            !metrics
                .encode()
                .unwrap()
                .contains("weft_proxy_destination_version{"),
            "no series before a snapshot is in force"
        );
        version.set(7);
        assert!(metrics.encode().unwrap().contains(&line(7)));
        version.set(12);
        let text = metrics.encode().unwrap();
        assert!(text.contains(&line(12)), "{text}");
        assert_eq!(
            lines_with(&text, "weft_proxy_destination_version{").len(),
            1,
            "{text}"
        );
        drop(version);
        let text = metrics.encode().unwrap();
        assert!(!text.contains("weft_proxy_destination_version{"), "{text}");
    }

    fn inbound_request(metrics: &Metrics, id: &str) {
        metrics.request(
            &RequestLabels {
                direction: Direction::Inbound,
                status_code: 200,
                tls: true,
                peer_identity: Arc::from(id),
            },
            Duration::from_millis(1),
        );
    }

    fn tcp_labels(id: &str) -> TcpLabels {
        TcpLabels {
            direction: Direction::Inbound,
            tls: true,
            peer_identity: Arc::from(id),
        }
    }

    fn series_of(text: &str, id: &str) -> Vec<String> {
        let label = format!("peer_identity=\"{id}\"");
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&label))
            .map(str::to_owned)
            .collect()
    }

    const EXPIRY: Duration = Duration::from_secs(600);

    #[tokio::test(start_paused = true)]
    async fn series_of_idle_peers_expire_and_recent_ones_stay() {
        let metrics = Metrics::new();
        let (idle, recent) = ("spiffe://a/ns/x/sa/idle", "spiffe://a/ns/x/sa/recent");
        inbound_request(&metrics, idle);
        drop(metrics.tcp(tcp_labels(idle), ()));
        metrics.authz(AuthzLabels {
            decision: "allowed",
            policy: Arc::from("default:all-authenticated"),
            tls: true,
            peer_identity: Arc::from(idle),
            port: 8080,
        });
        tokio::time::advance(EXPIRY).await;
        inbound_request(&metrics, recent);
        tokio::time::advance(Duration::from_secs(1)).await;

        let text = metrics.encode().unwrap();
        assert!(series_of(&text, idle).len() >= 8, "{text}");
        // requests, latency (_count), authz, 5 tcp families.
        let removed = metrics.expire_idle(Instant::now(), EXPIRY);
        assert_eq!(removed, 8);
        let text = metrics.encode().unwrap();
        assert_eq!(series_of(&text, idle), Vec::<String>::new(), "{text}");
        assert!(
            text.contains(&format!(
                "weft_requests_total{{direction=\"inbound\",status_code=\"200\",tls=\"true\",peer_identity=\"{recent}\"}} 1"
            )),
            "a peer seen within the expiry stays: {text}"
        );
        assert!(
            text.contains("weft_proxy_metrics_series_expired_total 8"),
            "{text}"
        );

        // The idle peer comes back: counted from zero again.
        inbound_request(&metrics, idle);
        let text = metrics.encode().unwrap();
        assert_eq!(
            lines_with(&text, "weft_requests_total{")
                .iter()
                .filter(|l| l.contains(idle))
                .count(),
            1,
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_with_an_open_connection_keeps_its_series() {
        let metrics = Metrics::new();
        let id = "spiffe://a/ns/x/sa/long-lived";
        inbound_request(&metrics, id);
        let connection = metrics.tcp(tcp_labels(id), ());
        tokio::time::advance(EXPIRY * 3).await;
        assert_eq!(metrics.expire_idle(Instant::now(), EXPIRY), 0);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(&format!(
                "weft_tcp_open_connections{{direction=\"inbound\",tls=\"true\",peer_identity=\"{id}\"}} 1"
            )),
            "{text}"
        );
        assert_eq!(lines_with(&text, "weft_requests_total{").len(), 1, "{text}");

        // Closed: seen last at the sweep that found it open, gone one expiry later.
        drop(connection);
        tokio::time::advance(EXPIRY).await;
        assert_eq!(metrics.expire_idle(Instant::now(), EXPIRY), 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(metrics.expire_idle(Instant::now(), EXPIRY) > 0);
        let text = metrics.encode().unwrap();
        assert_eq!(series_of(&text, id), Vec::<String>::new(), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_identity_frees_its_slot_under_the_cap() {
        let metrics = Metrics::with_max_identities(1);
        let (first, second) = ("spiffe://a/ns/x/sa/1", "spiffe://a/ns/x/sa/2");
        inbound_request(&metrics, first);
        inbound_request(&metrics, second);
        let text = metrics.encode().unwrap();
        assert_eq!(series_of(&text, second), Vec::<String>::new(), "{text}");
        assert!(
            text.contains("weft_requests_total{direction=\"inbound\",status_code=\"200\",tls=\"true\",peer_identity=\"overflow\"} 1"),
            "{text}"
        );

        tokio::time::advance(EXPIRY + Duration::from_secs(1)).await;
        metrics.expire_idle(Instant::now(), EXPIRY);
        inbound_request(&metrics, second);
        let text = metrics.encode().unwrap();
        assert_eq!(series_of(&text, first), Vec::<String>::new(), "{text}");
        assert!(
            text.contains(&format!(
                "weft_requests_total{{direction=\"inbound\",status_code=\"200\",tls=\"true\",peer_identity=\"{second}\"}} 1"
            )),
            "the freed slot goes to the next identity: {text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweep_task_expires_idle_series_until_shutdown() {
        let metrics = Arc::new(Metrics::new());
        let start = Instant::now();
        inbound_request(&metrics, "spiffe://a/ns/x/sa/1");
        let shutdown = CancellationToken::new();
        let sweep = tokio::spawn(expire_idle_series(
            metrics.clone(),
            Duration::from_secs(8),
            shutdown.clone(),
        ));
        // The paused clock jumps to each tick while the test waits.
        while metrics.series_expired.get() == 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let waited = start.elapsed();
        assert!(
            waited > Duration::from_secs(8) && waited <= Duration::from_secs(12),
            "expired after {waited:?}: an expiry of 8 s swept every 2 s"
        );
        shutdown.cancel();
        sweep.await.unwrap();
    }
}
