//! The injector's metrics (OpenMetrics text, on the admin port):
//!
//! - `weft_injector_admissions_total{outcome, reason}`: every answered review.
//!   `outcome` is `injected`, `skipped`, `denied` or `error`; `reason` is the
//!   [`SkipReason`] label for skips, `none` for injections, `pod-spec` for
//!   denials, `not-pod-create` for requests that are not a pod CREATE, and the
//!   [`ErrorReason`] for errors.
//! - `weft_injector_admission_duration_seconds{outcome}`: from the body read to
//!   the answer written into the response (histogram, 50 µs to 2.5 s).
//! - `weft_injector_serving_cert_expiry_timestamp_seconds`: notAfter of the
//!   serving certificate in use (0 until one is loaded).
//! - `weft_injector_serving_cert_reloads_total{result}`,
//!   `weft_injector_trust_anchors_reloads_total{result}`: changes of the files
//!   seen, `ok` (installed) or `error` (kept the previous one).
//! - `weft_injector_namespace_lookups_total{result}`: namespaces the index did
//!   not know, asked from the API server (`found`, `not-found`, `failed`).
//! - `weft_injector_namespaces`: namespaces in the index.

use std::sync::atomic::AtomicI64;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::mutate::SkipReason;

type Labels = Vec<(&'static str, &'static str)>;

/// What became of one admission review, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped(&'static str),
    Denied,
    Error(ErrorReason),
}

impl Outcome {
    pub fn skipped(reason: &SkipReason) -> Self {
        Self::Skipped(reason.label())
    }

    /// The `outcome` label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped(_) => "skipped",
            Self::Denied => "denied",
            Self::Error(_) => "error",
        }
    }

    /// The `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Injected => "none",
            Self::Skipped(reason) => reason,
            Self::Denied => "pod-spec",
            Self::Error(reason) => reason.label(),
        }
    }
}

/// Why a review was not answered with a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorReason {
    /// The body is not an AdmissionReview v1 (answered 400).
    BadRequest,
    /// The pod's namespace is neither in the index nor readable from the API
    /// server (answered 503, so the webhook's failure policy applies).
    NamespaceUnknown,
    /// The patch could not be encoded (answered 500).
    Internal,
}

impl ErrorReason {
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::NamespaceUnknown => "namespace-unknown",
            Self::Internal => "internal",
        }
    }
}

/// The injector's metrics and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    admissions: Family<Labels, Counter>,
    duration: Family<Labels, Histogram>,
    serving_cert_expiry: Gauge<i64, AtomicI64>,
    serving_cert_reloads: Family<Labels, Counter>,
    trust_anchors_reloads: Family<Labels, Counter>,
    namespace_lookups: Family<Labels, Counter>,
    namespaces: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Histogram buckets of the admission duration, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    2.5,
];

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        weft_api::process::register(&mut registry);
        let admissions = Family::<Labels, Counter>::default();
        let duration = Family::<Labels, Histogram>::new_with_constructor(
            (|| Histogram::new(DURATION_BUCKETS)) as fn() -> Histogram,
        );
        let serving_cert_expiry = Gauge::<i64, AtomicI64>::default();
        let serving_cert_reloads = Family::<Labels, Counter>::default();
        let trust_anchors_reloads = Family::<Labels, Counter>::default();
        let namespace_lookups = Family::<Labels, Counter>::default();
        let namespaces = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "weft_injector_admissions",
            "Admission reviews answered, by outcome and reason",
            admissions.clone(),
        );
        registry.register(
            "weft_injector_admission_duration_seconds",
            "Time to answer an admission review, by outcome",
            duration.clone(),
        );
        registry.register(
            "weft_injector_serving_cert_expiry_timestamp_seconds",
            "The notAfter of the webhook serving certificate in use, as a Unix timestamp",
            serving_cert_expiry.clone(),
        );
        registry.register(
            "weft_injector_serving_cert_reloads",
            "Changes of the serving certificate files, installed (ok) or refused (error)",
            serving_cert_reloads.clone(),
        );
        registry.register(
            "weft_injector_trust_anchors_reloads",
            "Changes of the trust anchors file, installed (ok) or refused (error)",
            trust_anchors_reloads.clone(),
        );
        registry.register(
            "weft_injector_namespace_lookups",
            "Namespaces missing from the index, asked from the API server",
            namespace_lookups.clone(),
        );
        registry.register(
            "weft_injector_namespaces",
            "Namespaces in the index",
            namespaces.clone(),
        );
        for result in ["ok", "error"] {
            let _ = serving_cert_reloads.get_or_create(&vec![("result", result)]);
            let _ = trust_anchors_reloads.get_or_create(&vec![("result", result)]);
        }
        Self {
            registry,
            admissions,
            duration,
            serving_cert_expiry,
            serving_cert_reloads,
            trust_anchors_reloads,
            namespace_lookups,
            namespaces,
        }
    }

    /// Counts one answered review and how long it took.
    pub fn admission(&self, outcome: Outcome, took: Duration) {
        self.admissions
            .get_or_create(&vec![
                ("outcome", outcome.label()),
                ("reason", outcome.reason()),
            ])
            .inc();
        self.duration
            .get_or_create(&vec![("outcome", outcome.label())])
            .observe(took.as_secs_f64());
    }

    pub fn serving_cert_reload(&self, ok: bool) {
        self.serving_cert_reloads
            .get_or_create(&vec![("result", if ok { "ok" } else { "error" })])
            .inc();
    }

    pub fn trust_anchors_reload(&self, ok: bool) {
        self.trust_anchors_reloads
            .get_or_create(&vec![("result", if ok { "ok" } else { "error" })])
            .inc();
    }

    pub fn namespace_lookup(&self, result: &'static str) {
        self.namespace_lookups
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    pub fn set_namespaces(&self, count: usize) {
        self.namespaces
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn set_serving_cert_expiry(&self, not_after: SystemTime) {
        let secs = not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.serving_cert_expiry.set(secs);
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outcomes_with_reasons_and_reports_expiry() {
        let metrics = Metrics::new();
        metrics.admission(Outcome::Injected, Duration::from_micros(300));
        metrics.admission(
            Outcome::skipped(&SkipReason::HostNetwork),
            Duration::from_micros(100),
        );
        metrics.admission(
            Outcome::Error(ErrorReason::BadRequest),
            Duration::from_micros(10),
        );
        metrics.set_serving_cert_expiry(SystemTime::UNIX_EPOCH + Duration::from_secs(99));
        let text = metrics.encode();
        for line in [
            r#"weft_injector_admissions_total{outcome="injected",reason="none"} 1"#,
            r#"weft_injector_admissions_total{outcome="skipped",reason="host-network"} 1"#,
            r#"weft_injector_admissions_total{outcome="error",reason="bad-request"} 1"#,
            r#"weft_injector_admission_duration_seconds_count{outcome="injected"} 1"#,
            "weft_injector_serving_cert_expiry_timestamp_seconds 99",
            r#"weft_injector_serving_cert_reloads_total{result="error"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn every_family_is_documented() {
        let metrics = Metrics::new();
        metrics.admission(Outcome::Denied, Duration::from_micros(10));
        metrics.serving_cert_reload(true);
        metrics.trust_anchors_reload(false);
        metrics.namespace_lookup("found");
        metrics.set_namespaces(2);
        metrics.set_serving_cert_expiry(SystemTime::UNIX_EPOCH);
        let text = metrics.encode();
        assert!(
            weft_tests::prometheus::family_names(&text).len() >= 7,
            "{text}"
        );
        let missing =
            weft_tests::prometheus::undocumented(&text, include_str!("../../docs/metrics.md"));
        assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
    }
}
