//! The controller's metrics (Prometheus text format, on the admin port):
//!
//! - `weft_certificates_issued_total`
//! - `weft_certificates_refused_total{reason}`, one series per refusal reason
//! - `weft_issuer_expiry_timestamp_seconds`: the issuer's notAfter, Unix time
//! - `weft_issuer_reloads_total{result}`: changed issuer files installed
//!   (`loaded`) or refused and the current issuer kept (`refused`)
//! - `weft_discovery_subscribers`: open `Discovery.Watch` streams
//! - `weft_discovery_snapshots_sent_total`: snapshots sent on them
//! - `weft_inbound_subscribers`: open `Inbound.Watch` streams
//! - `weft_inbound_policies_sent_total`: inbound policies sent on them
//! - `weft_controller_push_latency_seconds{stream}`: from an index change to
//!   the update it caused being handed to a subscriber's stream

use std::sync::atomic::AtomicI64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::histogram::Histogram;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use weft_api::certify::RefusalReason;

type ReasonLabel = [(&'static str, &'static str); 1];

/// Which watch stream an update was pushed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PushStream {
    /// `Discovery.Watch`: a target's snapshots.
    Discovery,
    /// `Inbound.Watch`: a workload port's inbound policies.
    Inbound,
}

impl PushStream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Discovery => "discovery",
            Self::Inbound => "inbound",
        }
    }
}

impl EncodeLabelValue for PushStream {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PushLabels {
    stream: PushStream,
}

/// Push latency buckets, in seconds: 1 ms to 10 s (the index gathers a burst
/// of changes for 75 ms before it publishes).
const PUSH_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn push_histogram() -> Histogram {
    Histogram::new(PUSH_BUCKETS)
}

/// The controller's metrics and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    issued: Counter,
    refused: Family<ReasonLabel, Counter>,
    issuer_expiry: Gauge<i64, AtomicI64>,
    issuer_reloads: Family<[(&'static str, &'static str); 1], Counter>,
    discovery_subscribers: Gauge<i64, AtomicI64>,
    discovery_snapshots: Counter,
    inbound_subscribers: Gauge<i64, AtomicI64>,
    inbound_policies: Counter,
    push_latency: Family<PushLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        weft_api::process::register(&mut registry);
        let issued = Counter::default();
        let refused = Family::<ReasonLabel, Counter>::default();
        let issuer_expiry = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "weft_certificates_issued",
            "Workload certificates signed",
            issued.clone(),
        );
        registry.register(
            "weft_certificates_refused",
            "Certificate requests refused, by reason",
            refused.clone(),
        );
        registry.register(
            "weft_issuer_expiry_timestamp_seconds",
            "The notAfter of the current issuer certificate, as a Unix timestamp",
            issuer_expiry.clone(),
        );
        let issuer_reloads = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "weft_issuer_reloads",
            "Changes of the issuer files: installed (result=loaded) or refused, the current \
             issuer kept (result=refused)",
            issuer_reloads.clone(),
        );
        for result in ["loaded", "refused"] {
            let _ = issuer_reloads.get_or_create(&[("result", result)]);
        }
        let discovery_subscribers = Gauge::<i64, AtomicI64>::default();
        let discovery_snapshots = Counter::default();
        let inbound_subscribers = Gauge::<i64, AtomicI64>::default();
        let inbound_policies = Counter::default();
        registry.register(
            "weft_discovery_subscribers",
            "Open Discovery.Watch streams",
            discovery_subscribers.clone(),
        );
        registry.register(
            "weft_discovery_snapshots_sent",
            "Destination snapshots sent on Discovery.Watch streams",
            discovery_snapshots.clone(),
        );
        registry.register(
            "weft_inbound_subscribers",
            "Open Inbound.Watch streams",
            inbound_subscribers.clone(),
        );
        registry.register(
            "weft_inbound_policies_sent",
            "Inbound policies sent on Inbound.Watch streams",
            inbound_policies.clone(),
        );
        let push_latency: Family<PushLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(push_histogram);
        registry.register(
            "weft_controller_push_latency_seconds",
            "Time from the index change behind an update (the first change of the burst \
             published) to the update being handed to a subscriber's watch stream, by stream",
            push_latency.clone(),
        );
        for stream in [PushStream::Discovery, PushStream::Inbound] {
            // Both streams are present from the start, empty.
            let _ = push_latency.get_or_create(&PushLabels { stream });
        }
        for reason in RefusalReason::ALL {
            // Every reason is present from the start, at zero.
            let _ = refused.get_or_create(&[("reason", reason.as_str())]);
        }
        Self {
            registry,
            issued,
            refused,
            issuer_expiry,
            issuer_reloads,
            discovery_subscribers,
            discovery_snapshots,
            inbound_subscribers,
            inbound_policies,
            push_latency,
        }
    }

    /// Records an update handed to a subscriber of `stream`, `latency` after
    /// the index change behind it.
    pub fn pushed(&self, stream: PushStream, latency: Duration) {
        self.push_latency
            .get_or_create(&PushLabels { stream })
            .observe(latency.as_secs_f64());
    }

    /// A `Discovery.Watch` stream opened (`1`) or closed (`-1`).
    pub fn discovery_subscribed(&self, delta: i64) {
        self.discovery_subscribers.inc_by(delta);
    }

    /// The open `Discovery.Watch` streams.
    pub fn discovery_subscribers(&self) -> i64 {
        self.discovery_subscribers.get()
    }

    pub fn discovery_snapshot_sent(&self) {
        self.discovery_snapshots.inc();
    }

    /// An `Inbound.Watch` stream opened (`1`) or closed (`-1`).
    pub fn inbound_subscribed(&self, delta: i64) {
        self.inbound_subscribers.inc_by(delta);
    }

    pub fn inbound_policy_sent(&self) {
        self.inbound_policies.inc();
    }

    pub fn issued(&self) {
        self.issued.inc();
    }

    pub fn refused(&self, reason: RefusalReason) {
        self.refused
            .get_or_create(&[("reason", reason.as_str())])
            .inc();
    }

    /// Counts a change of the issuer files: installed (`loaded`) or not.
    pub fn issuer_reload(&self, loaded: bool) {
        let result = if loaded { "loaded" } else { "refused" };
        self.issuer_reloads
            .get_or_create(&[("result", result)])
            .inc();
    }

    pub fn set_issuer_expiry(&self, not_after: SystemTime) {
        let secs = not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.issuer_expiry.set(secs);
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason_and_reports_expiry() {
        let metrics = Metrics::new();
        metrics.issued();
        metrics.issued();
        metrics.refused(RefusalReason::WrongAudience);
        metrics.set_issuer_expiry(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1234));
        let text = metrics.encode();
        assert!(text.contains("weft_certificates_issued_total 2"), "{text}");
        assert!(
            text.contains(r#"weft_certificates_refused_total{reason="wrong-audience"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weft_certificates_refused_total{reason="bad-signature"} 0"#),
            "{text}"
        );
        assert!(
            text.contains("weft_issuer_expiry_timestamp_seconds 1234"),
            "{text}"
        );
    }

    #[test]
    fn every_family_is_documented() {
        let metrics = Metrics::new();
        metrics.issued();
        metrics.refused(RefusalReason::WrongAudience);
        metrics.set_issuer_expiry(SystemTime::UNIX_EPOCH);
        metrics.discovery_subscribed(1);
        metrics.discovery_snapshot_sent();
        metrics.inbound_subscribed(1);
        metrics.inbound_policy_sent();
        metrics.pushed(PushStream::Discovery, Duration::from_millis(80));
        let text = metrics.encode();
        assert!(
            weft_tests::prometheus::family_names(&text).len() >= 8,
            "{text}"
        );
        let missing =
            weft_tests::prometheus::undocumented(&text, include_str!("../../docs/metrics.md"));
        assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
    }
}
