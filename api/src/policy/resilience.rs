//! Retries, the retry budget, circuit breaking, timeouts and load balancing:
//! what a proxy applies to the requests it sends to a target.

use std::{fmt, str::FromStr, time::Duration};

use super::error::{FieldPath, PolicyError, Problem, check_nonzero, check_range};

/// How a failed request is sent again.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try (0: never retry). At most [`RetryPolicy::MAX_ATTEMPTS`].
    pub attempts: u32,
    /// Which failures are retried.
    pub on: RetryOn,
    pub backoff: Backoff,
}

impl RetryPolicy {
    pub const MAX_ATTEMPTS: u32 = 10;
    pub const DEFAULT_ATTEMPTS: u32 = 2;

    /// Checks the limits; `path` names the policy in the user's object.
    pub fn validate(&self, path: &FieldPath) -> Result<(), PolicyError> {
        check_range(
            &path.field("attempts"),
            self.attempts,
            0,
            Self::MAX_ATTEMPTS,
        )?;
        for (i, code) in self.on.statuses.iter().enumerate() {
            check_range(&path.field("codes").index(i), *code, 100, 599)?;
        }
        self.backoff.validate(&path.field("backoff"))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: Self::DEFAULT_ATTEMPTS,
            on: RetryOn::default(),
            backoff: Backoff::default(),
        }
    }
}

/// The failures a retry policy retries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetryOn {
    /// HTTP response statuses retried, sorted, without duplicates.
    pub statuses: Vec<u16>,
    /// Every 5xx response.
    pub server_errors: bool,
    /// 502, 503 and 504.
    pub gateway_errors: bool,
    /// The connection to the endpoint could not be made (the request never
    /// reached the server).
    pub connect_failure: bool,
    /// The connection or stream was reset before a response arrived.
    pub reset: bool,
    /// gRPC statuses retried (from `grpc-status`), sorted, without duplicates.
    pub grpc: Vec<GrpcCode>,
}

impl RetryOn {
    /// Builds the set from named conditions and HTTP statuses.
    pub fn new(conditions: impl IntoIterator<Item = RetryCondition>, statuses: &[u16]) -> Self {
        let mut on = RetryOn {
            statuses: statuses.to_vec(),
            ..RetryOn::default()
        };
        for condition in conditions {
            on.insert(condition);
        }
        on.statuses.sort_unstable();
        on.statuses.dedup();
        on.grpc.sort_unstable();
        on.grpc.dedup();
        on
    }

    fn insert(&mut self, condition: RetryCondition) {
        match condition {
            RetryCondition::ServerError => self.server_errors = true,
            RetryCondition::GatewayError => self.gateway_errors = true,
            RetryCondition::ConnectFailure => self.connect_failure = true,
            RetryCondition::Reset => self.reset = true,
            RetryCondition::Grpc(code) => self.grpc.push(code),
        }
    }

    /// The named conditions of this set (its statuses aside), in a stable order.
    pub fn conditions(&self) -> Vec<RetryCondition> {
        let mut out = Vec::new();
        let flags = [
            (self.server_errors, RetryCondition::ServerError),
            (self.gateway_errors, RetryCondition::GatewayError),
            (self.connect_failure, RetryCondition::ConnectFailure),
            (self.reset, RetryCondition::Reset),
        ];
        out.extend(flags.into_iter().filter(|(on, _)| *on).map(|(_, c)| c));
        out.extend(self.grpc.iter().copied().map(RetryCondition::Grpc));
        out
    }

    /// Whether an HTTP response with this status is retried.
    pub fn retries_status(&self, status: u16) -> bool {
        (self.server_errors && (500..600).contains(&status))
            || (self.gateway_errors && matches!(status, 502..=504))
            || self.statuses.binary_search(&status).is_ok()
    }

    /// Whether a gRPC response with this status is retried.
    pub fn retries_grpc(&self, code: GrpcCode) -> bool {
        self.grpc.binary_search(&code).is_ok()
    }
}

/// A named kind of failure a retry policy may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryCondition {
    /// `5xx`: any 5xx response.
    ServerError,
    /// `gateway-error`: 502, 503 or 504.
    GatewayError,
    /// `connect-failure`: the connection could not be made.
    ConnectFailure,
    /// `reset`: the connection or stream was reset before a response.
    Reset,
    /// A gRPC status, by its name in kebab case (`unavailable`, `resource-exhausted`).
    Grpc(GrpcCode),
}

impl RetryCondition {
    /// Every name a condition can be written with, for schemas and messages.
    pub fn names() -> Vec<&'static str> {
        let mut names = vec!["5xx", "gateway-error", "connect-failure", "reset"];
        names.extend(GrpcCode::ALL.iter().map(|c| c.name()));
        names
    }
}

impl FromStr for RetryCondition {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "5xx" => Self::ServerError,
            "gateway-error" => Self::GatewayError,
            "connect-failure" => Self::ConnectFailure,
            "reset" => Self::Reset,
            other => match GrpcCode::ALL.iter().find(|c| c.name() == other) {
                Some(code) => Self::Grpc(*code),
                None => {
                    return Err(Problem::Invalid {
                        value: s.to_owned(),
                        expected: format!(
                            "a retry condition; use one of: {}",
                            Self::names().join(", ")
                        ),
                    });
                }
            },
        })
    }
}

impl fmt::Display for RetryCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ServerError => "5xx",
            Self::GatewayError => "gateway-error",
            Self::ConnectFailure => "connect-failure",
            Self::Reset => "reset",
            Self::Grpc(code) => code.name(),
        })
    }
}

/// The gRPC status codes other than OK (the ones a retry may be for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GrpcCode {
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    pub const ALL: [GrpcCode; 16] = [
        Self::Cancelled,
        Self::Unknown,
        Self::InvalidArgument,
        Self::DeadlineExceeded,
        Self::NotFound,
        Self::AlreadyExists,
        Self::PermissionDenied,
        Self::ResourceExhausted,
        Self::FailedPrecondition,
        Self::Aborted,
        Self::OutOfRange,
        Self::Unimplemented,
        Self::Internal,
        Self::Unavailable,
        Self::DataLoss,
        Self::Unauthenticated,
    ];

    /// The code's number in `grpc-status`.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The code with this number, if it is one of [`GrpcCode::ALL`].
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.code() == code)
    }

    /// The code's name in kebab case, as policies write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::Unknown => "unknown",
            Self::InvalidArgument => "invalid-argument",
            Self::DeadlineExceeded => "deadline-exceeded",
            Self::NotFound => "not-found",
            Self::AlreadyExists => "already-exists",
            Self::PermissionDenied => "permission-denied",
            Self::ResourceExhausted => "resource-exhausted",
            Self::FailedPrecondition => "failed-precondition",
            Self::Aborted => "aborted",
            Self::OutOfRange => "out-of-range",
            Self::Unimplemented => "unimplemented",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
            Self::DataLoss => "data-loss",
            Self::Unauthenticated => "unauthenticated",
        }
    }
}

/// Jittered exponential backoff between retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait before the first retry (before jitter).
    pub base: Duration,
    /// The longest wait between retries.
    pub max: Duration,
}

impl Backoff {
    pub fn validate(&self, path: &FieldPath) -> Result<(), PolicyError> {
        check_nonzero(&path.field("base"), self.base)?;
        check_at_least(&path.field("max"), self.max, "base", self.base)
    }
}

impl Default for Backoff {
    /// 25 ms doubling up to 250 ms.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

/// How many retries a proxy may add to a target's traffic: at most `ratio`
/// retries per request over `window`, plus `min_per_second` whatever the ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// Retries per original request, between 0 and 1 (0.2: 20 % more requests).
    pub ratio: f64,
    /// Retries allowed each second even when the ratio allows none.
    pub min_per_second: u32,
    /// How long requests are remembered for the ratio.
    pub window: Duration,
}

impl RetryBudget {
    pub const MAX_MIN_PER_SECOND: u32 = 10_000;
    pub const MAX_WINDOW: Duration = Duration::from_secs(60);

    pub fn validate(&self, path: &FieldPath) -> Result<(), PolicyError> {
        if self.ratio.is_nan() {
            return Err(path.field("ratio").error(Problem::Invalid {
                value: "NaN".into(),
                expected: "a number between 0 and 1".into(),
            }));
        }
        check_range(&path.field("ratio"), self.ratio, 0.0, 1.0)?;
        check_range(
            &path.field("minRetriesPerSecond"),
            self.min_per_second,
            0,
            Self::MAX_MIN_PER_SECOND,
        )?;
        let window = path.field("window");
        check_nonzero(&window, self.window)?;
        if self.window > Self::MAX_WINDOW {
            return Err(window.error(Problem::OutOfRange {
                value: super::duration::format(self.window),
                min: "1ms".into(),
                max: "1m".into(),
            }));
        }
        Ok(())
    }
}

impl Default for RetryBudget {
    /// 20 % of requests, at least 10 retries a second, over 10 s (as Linkerd).
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// Per-endpoint circuit breaking: after `consecutive_failures` failures in a
/// row (5xx, connect failures, resets) an endpoint is ejected for
/// `base_ejection_time`, doubling on each further ejection up to
/// `max_ejection_time`; never more than `max_ejected_percent` of a backend's
/// endpoints are ejected at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreaker {
    pub consecutive_failures: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejected_percent: u32,
}

impl CircuitBreaker {
    pub const MAX_CONSECUTIVE_FAILURES: u32 = 1000;

    pub fn validate(&self, path: &FieldPath) -> Result<(), PolicyError> {
        check_range(
            &path.field("consecutiveFailures"),
            self.consecutive_failures,
            1,
            Self::MAX_CONSECUTIVE_FAILURES,
        )?;
        check_nonzero(&path.field("baseEjectionTime"), self.base_ejection_time)?;
        check_at_least(
            &path.field("maxEjectionTime"),
            self.max_ejection_time,
            "baseEjectionTime",
            self.base_ejection_time,
        )?;
        check_range(
            &path.field("maxEjectedPercent"),
            self.max_ejected_percent,
            0,
            100,
        )?;
        Ok(())
    }
}

impl Default for CircuitBreaker {
    /// 5 failures in a row; 10 s doubling up to 5 min; at most half the endpoints.
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// How a proxy picks an endpoint of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency (the default): two endpoints
    /// drawn at random, the one with the lower load-weighted latency wins.
    PeakEwma {
        /// How fast old latencies are forgotten.
        decay: Duration,
        /// The latency assumed for an endpoint before its first response.
        default_rtt: Duration,
    },
    /// Each endpoint in turn.
    RoundRobin,
}

impl LoadBalancer {
    /// The default peak-EWMA decay.
    pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);
    /// The default latency assumed before an endpoint's first response.
    pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

    pub fn validate(&self, path: &FieldPath) -> Result<(), PolicyError> {
        match self {
            Self::PeakEwma { decay, default_rtt } => {
                check_nonzero(&path.field("decay"), *decay)?;
                check_nonzero(&path.field("defaultRtt"), *default_rtt)?;
                Ok(())
            }
            Self::RoundRobin => Ok(()),
        }
    }
}

impl Default for LoadBalancer {
    /// Peak EWMA with a 10 s decay and 30 ms assumed latency (as Linkerd).
    fn default() -> Self {
        Self::PeakEwma {
            decay: Self::DEFAULT_DECAY,
            default_rtt: Self::DEFAULT_RTT,
        }
    }
}

/// A target's resilience settings as a `ResiliencePolicy` gives them: each
/// part left out keeps the mesh's default.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resilience {
    /// The Service (in the policy's namespace) the policy applies to.
    pub service: String,
    pub retry_budget: Option<RetryBudget>,
    /// The retry policy of routes that set none.
    pub default_retry: Option<RetryPolicy>,
    /// The per-try timeout of routes that set none.
    pub per_try_timeout: Option<Duration>,
    pub circuit_breaker: Option<CircuitBreaker>,
    /// The time allowed to connect to an endpoint.
    pub connect_timeout: Option<Duration>,
    /// The request timeout of routes that set none.
    pub request_timeout: Option<Duration>,
    pub load_balancer: Option<LoadBalancer>,
}

fn check_at_least(
    path: &FieldPath,
    value: Duration,
    other: &str,
    other_value: Duration,
) -> Result<(), PolicyError> {
    if value < other_value {
        return Err(path.error(Problem::ShorterThan {
            value: super::duration::format(value),
            other: other.to_owned(),
            other_value: super::duration::format(other_value),
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_conditions_parse_and_print_by_name() {
        for name in RetryCondition::names() {
            let condition: RetryCondition = name.parse().expect(name);
            assert_eq!(condition.to_string(), name);
        }
        let err = "teapot".parse::<RetryCondition>().expect_err("unknown");
        assert!(err.to_string().contains("connect-failure"), "{err}");
        assert_eq!(GrpcCode::from_code(14), Some(GrpcCode::Unavailable));
        assert_eq!(GrpcCode::from_code(0), None);
    }

    #[test]
    fn retry_on_answers_for_statuses_and_grpc_codes() {
        let on = RetryOn::new(
            [
                RetryCondition::GatewayError,
                RetryCondition::Grpc(GrpcCode::Unavailable),
            ],
            &[409, 409],
        );
        assert_eq!(on.statuses, vec![409]);
        assert!(on.retries_status(503) && on.retries_status(409));
        assert!(!on.retries_status(500) && !on.retries_status(200));
        assert!(on.retries_grpc(GrpcCode::Unavailable));
        assert!(!on.retries_grpc(GrpcCode::Internal));
        let all = RetryOn::new([RetryCondition::ServerError], &[]);
        assert!(all.retries_status(500) && all.retries_status(599) && !all.retries_status(404));
    }

    #[test]
    fn validation_names_the_field() {
        let budget = RetryBudget {
            ratio: -0.1,
            ..RetryBudget::default()
        };
        let err = budget
            .validate(&FieldPath::root("spec").field("retryBudget"))
            .expect_err("negative ratio");
        assert_eq!(
            err.to_string(),
            "spec.retryBudget.ratio: -0.1 is negative; use a value between 0 and 1"
        );
        let breaker = CircuitBreaker {
            max_ejection_time: Duration::from_secs(1),
            ..CircuitBreaker::default()
        };
        let err = breaker
            .validate(&FieldPath::root("cb"))
            .expect_err("max below base");
        assert_eq!(err.field, "cb.maxEjectionTime");
        let retry = RetryPolicy {
            attempts: 11,
            ..RetryPolicy::default()
        };
        let err = retry.validate(&FieldPath::root("r")).expect_err("attempts");
        assert_eq!(err.field, "r.attempts");
        assert!(
            RetryPolicy::default()
                .validate(&FieldPath::root("r"))
                .is_ok()
        );
        assert!(
            CircuitBreaker::default()
                .validate(&FieldPath::root("c"))
                .is_ok()
        );
        assert!(
            RetryBudget::default()
                .validate(&FieldPath::root("b"))
                .is_ok()
        );
        assert!(
            LoadBalancer::default()
                .validate(&FieldPath::root("l"))
                .is_ok()
        );
    }
}
