//! `ResiliencePolicy`: retries, retry budget, circuit breaking, timeouts and
//! load balancing for the traffic to one Service.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{PolicyStatus, ServiceRef, schema};

/// How proxies send requests to a Service: a retry budget, the retry policy of
/// routes that set none, per-endpoint circuit breaking, timeouts and load
/// balancing. Durations are written as in the Gateway API (`500ms`, `10s`).
// Each `printcolumn(...)` repeats `type_ = "string"`, which clippy takes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policy.weft.io",
    version = "v1alpha1",
    kind = "ResiliencePolicy",
    plural = "resiliencepolicies",
    shortname = "respol",
    category = "weft",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    doc = "Retries, retry budget, circuit breaking, timeouts and load balancing for the traffic to a Service.",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResiliencePolicySpec {
    /// The Service, in this namespace, whose callers apply this policy.
    pub target_ref: ServiceRef,
    /// How many retries callers may add to the Service's traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudgetSpec>,
    /// The retry policy of routes (HTTPRoute, GRPCRoute) that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_retry: Option<RetrySpec>,
    /// Per-endpoint circuit breaking (outlier ejection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerSpec>,
    /// Connect and request timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsSpec>,
    /// How an endpoint is picked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSpec>,
}

/// At most `ratio` retries per request over `window`, plus
/// `minRetriesPerSecond` whatever the ratio.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudgetSpec {
    /// Retries per original request, between 0 and 1 (0.2 allows 20 % more
    /// requests). Default 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub ratio: Option<f64>,
    /// Retries allowed each second even when the ratio allows none. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub min_retries_per_second: Option<u32>,
    /// How long requests count towards the ratio, at most `1m`. Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub window: Option<String>,
}

/// Which failed requests are sent again, how often, and how long to wait.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// Retries after the first try, 0 to 10. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub attempts: Option<u32>,
    /// HTTP response statuses that are retried, e.g. `[503]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 100, max = 599)))]
    pub codes: Vec<u16>,
    /// Named failures that are retried: `5xx`, `gateway-error` (502, 503, 504),
    /// `connect-failure`, `reset`, and gRPC statuses in kebab case
    /// (`unavailable`, `resource-exhausted`, ...). When neither `codes` nor
    /// `conditions` is set: `connect-failure`, `reset`, `unavailable` and 503.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::retry_conditions")]
    pub conditions: Vec<String>,
    /// The wait between tries (jittered, doubling). Default `25ms` up to `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSpec>,
    /// The time allowed for each try. Default: no limit but the request timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub per_try_timeout: Option<String>,
}

/// Jittered exponential backoff.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackoffSpec {
    /// The wait before the first retry. Default `25ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub base: Option<String>,
    /// The longest wait. Default ten times `base`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub max: Option<String>,
}

/// After `consecutiveFailures` failures in a row an endpoint is ejected for
/// `baseEjectionTime`, doubling up to `maxEjectionTime`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakerSpec {
    /// Failures in a row (5xx, connect failures, resets) that eject an
    /// endpoint. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: Option<u32>,
    /// The first ejection's length. Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub base_ejection_time: Option<String>,
    /// The longest ejection. Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub max_ejection_time: Option<String>,
    /// The largest share of a backend's endpoints ejected at once. Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejected_percent: Option<u32>,
}

/// Timeouts of the requests to the Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// The time allowed to connect to an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub connect: Option<String>,
    /// The time allowed for a whole request, retries included, on routes that
    /// set none (answered with 504 when it runs out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub request: Option<String>,
}

/// How an endpoint of a backend is picked.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSpec {
    /// `peak-ewma` (power of two choices over peak-EWMA latency, the default)
    /// or `round-robin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<LoadBalancerAlgorithm>,
    /// `peak-ewma`: how fast old latencies are forgotten. Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub decay: Option<String>,
    /// `peak-ewma`: the latency assumed before an endpoint's first response.
    /// Default `30ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub default_rtt: Option<String>,
}

/// A load-balancing algorithm.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancerAlgorithm {
    PeakEwma,
    RoundRobin,
}
