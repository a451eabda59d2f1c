//! `TryFrom` the CRD types into the policy model; each error names the field
//! in the object (`spec.retryBudget.ratio: ...`).

use k8s_openapi::apimachinery::pkg::{apis::meta::v1, util::intstr::IntOrString};

use super::{
    AuthorizationPolicy, AuthorizationPolicySpec, LoadBalancerAlgorithm, ResiliencePolicySpec,
    RetrySpec, ServiceRef,
};
use crate::policy::{
    self, Backoff, CircuitBreaker, FieldPath, LoadBalancer, PolicyError, Problem, Resilience,
    RetryBudget, RetryCondition, RetryOn, RetryPolicy,
    authz::{
        Authorization, HttpMatch, IdentityPattern, LabelExpression, LabelSelector, PolicyTarget,
        PortRef, Principal,
    },
};

/// Parses a duration string, naming `path` when it does not parse.
fn parse_duration(path: &FieldPath, text: &str) -> Result<std::time::Duration, PolicyError> {
    policy::duration::parse(text).map_err(|e| path.error(Problem::Duration(e)))
}

fn spec() -> FieldPath {
    FieldPath::root("spec")
}

fn duration_or(
    path: &FieldPath,
    text: &Option<String>,
    default: std::time::Duration,
) -> Result<std::time::Duration, PolicyError> {
    match text {
        Some(text) => parse_duration(path, text),
        None => Ok(default),
    }
}

fn optional_duration(
    path: &FieldPath,
    text: &Option<String>,
) -> Result<Option<std::time::Duration>, PolicyError> {
    text.as_deref().map(|t| parse_duration(path, t)).transpose()
}

fn service_name(path: &FieldPath, target: &ServiceRef) -> Result<String, PolicyError> {
    if !target.group.is_empty() || target.kind != "Service" {
        return Err(path.error(Problem::Invalid {
            value: format!("{}/{}", target.group, target.kind),
            expected: "a Service; set group \"\" and kind Service".into(),
        }));
    }
    if target.name.is_empty() {
        return Err(path.field("name").error(Problem::Missing {
            hint: "name the Service in this namespace".into(),
        }));
    }
    Ok(target.name.clone())
}

impl TryFrom<&ResiliencePolicySpec> for Resilience {
    type Error = PolicyError;

    fn try_from(spec_: &ResiliencePolicySpec) -> Result<Self, Self::Error> {
        let root = spec();
        let service = service_name(&root.field("targetRef"), &spec_.target_ref)?;
        let retry_budget = spec_
            .retry_budget
            .as_ref()
            .map(|b| {
                let path = root.field("retryBudget");
                let defaults = RetryBudget::default();
                let budget = RetryBudget {
                    ratio: b.ratio.unwrap_or(defaults.ratio),
                    min_per_second: b.min_retries_per_second.unwrap_or(defaults.min_per_second),
                    window: duration_or(&path.field("window"), &b.window, defaults.window)?,
                };
                budget.validate(&path).map(|()| budget)
            })
            .transpose()?;
        let (default_retry, per_try_timeout) = match &spec_.default_retry {
            Some(retry) => {
                let path = root.field("defaultRetry");
                let policy = retry_policy(&path, retry)?;
                let per_try =
                    optional_duration(&path.field("perTryTimeout"), &retry.per_try_timeout)?;
                (Some(policy), per_try)
            }
            None => (None, None),
        };
        let circuit_breaker = spec_
            .circuit_breaker
            .as_ref()
            .map(|c| {
                let path = root.field("circuitBreaker");
                let d = CircuitBreaker::default();
                let breaker = CircuitBreaker {
                    consecutive_failures: c.consecutive_failures.unwrap_or(d.consecutive_failures),
                    base_ejection_time: duration_or(
                        &path.field("baseEjectionTime"),
                        &c.base_ejection_time,
                        d.base_ejection_time,
                    )?,
                    max_ejection_time: duration_or(
                        &path.field("maxEjectionTime"),
                        &c.max_ejection_time,
                        d.max_ejection_time,
                    )?,
                    max_ejected_percent: c.max_ejected_percent.unwrap_or(d.max_ejected_percent),
                };
                breaker.validate(&path).map(|()| breaker)
            })
            .transpose()?;
        let timeouts = root.field("timeouts");
        let (connect_timeout, request_timeout) = match &spec_.timeouts {
            Some(t) => (
                optional_duration(&timeouts.field("connect"), &t.connect)?,
                optional_duration(&timeouts.field("request"), &t.request)?,
            ),
            None => (None, None),
        };
        for (name, value) in [("connect", connect_timeout), ("request", request_timeout)] {
            if let Some(value) = value {
                policy::error::check_nonzero(&timeouts.field(name), value)?;
            }
        }
        let load_balancer = spec_
            .load_balancer
            .as_ref()
            .map(|lb| {
                let path = root.field("loadBalancer");
                let balancer = match lb.algorithm.unwrap_or(LoadBalancerAlgorithm::PeakEwma) {
                    LoadBalancerAlgorithm::RoundRobin => LoadBalancer::RoundRobin,
                    LoadBalancerAlgorithm::PeakEwma => LoadBalancer::PeakEwma {
                        decay: duration_or(
                            &path.field("decay"),
                            &lb.decay,
                            LoadBalancer::DEFAULT_DECAY,
                        )?,
                        default_rtt: duration_or(
                            &path.field("defaultRtt"),
                            &lb.default_rtt,
                            LoadBalancer::DEFAULT_RTT,
                        )?,
                    },
                };
                balancer.validate(&path).map(|()| balancer)
            })
            .transpose()?;
        Ok(Resilience {
            service,
            retry_budget,
            default_retry,
            per_try_timeout,
            circuit_breaker,
            connect_timeout,
            request_timeout,
            load_balancer,
        })
    }
}

fn retry_policy(path: &FieldPath, retry: &RetrySpec) -> Result<RetryPolicy, PolicyError> {
    let conditions = retry
        .conditions
        .iter()
        .enumerate()
        .map(|(i, name)| {
            name.parse::<RetryCondition>()
                .map_err(|p| path.field("conditions").index(i).error(p))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let on = if conditions.is_empty() && retry.codes.is_empty() {
        default_retry_on()
    } else {
        RetryOn::new(conditions, &retry.codes)
    };
    let d = Backoff::default();
    let backoff = match &retry.backoff {
        Some(b) => {
            let base = duration_or(&path.field("backoff").field("base"), &b.base, d.base)?;
            let max = duration_or(&path.field("backoff").field("max"), &b.max, base * 10)?;
            Backoff { base, max }
        }
        None => d,
    };
    let policy = RetryPolicy {
        attempts: retry.attempts.unwrap_or(RetryPolicy::DEFAULT_ATTEMPTS),
        on,
        backoff,
    };
    policy.validate(path)?;
    Ok(policy)
}

/// What a retry policy that names no failure retries: connect failures,
/// resets, gRPC `unavailable` and HTTP 503.
pub(super) fn default_retry_on() -> RetryOn {
    RetryOn::new(
        [
            RetryCondition::ConnectFailure,
            RetryCondition::Reset,
            RetryCondition::Grpc(policy::GrpcCode::Unavailable),
        ],
        &[503],
    )
}

impl TryFrom<&AuthorizationPolicy> for policy::AuthorizationPolicy {
    type Error = PolicyError;

    fn try_from(object: &AuthorizationPolicy) -> Result<Self, Self::Error> {
        let namespace = object.metadata.namespace.clone().ok_or_else(|| {
            FieldPath::root("metadata.namespace").error(Problem::Missing {
                hint: "an AuthorizationPolicy is namespaced".into(),
            })
        })?;
        let name = object.metadata.name.clone().ok_or_else(|| {
            FieldPath::root("metadata.name").error(Problem::Missing {
                hint: "name the policy".into(),
            })
        })?;
        let spec_: &AuthorizationPolicySpec = &object.spec;
        let root = spec();
        let target = match (&spec_.target_ref, &spec_.pod_selector) {
            (Some(target), None) => {
                PolicyTarget::Service(service_name(&root.field("targetRef"), target)?)
            }
            (None, Some(selector)) => {
                PolicyTarget::Pods(label_selector(&root.field("podSelector"), selector)?)
            }
            _ => {
                return Err(root.error(Problem::Conflict(
                    "set exactly one of targetRef and podSelector".into(),
                )));
            }
        };
        let ports = spec_
            .ports
            .iter()
            .enumerate()
            .map(|(i, port)| port_ref(&root.field("ports").index(i), port))
            .collect::<Result<_, _>>()?;
        let mut authorizations = Vec::new();
        for (i, rule) in spec_.rules.iter().enumerate() {
            let path = root.field("rules").index(i);
            let mut from = Vec::new();
            if let Some(spec_from) = &rule.from {
                let from_path = path.field("from");
                for (j, id) in spec_from.identities.iter().enumerate() {
                    let pattern: IdentityPattern = id
                        .parse()
                        .map_err(|p| from_path.field("identities").index(j).error(p))?;
                    from.push(Principal::Identity(pattern));
                }
                for ns in &spec_from.namespaces {
                    from.push(Principal::Namespace(ns.clone()));
                }
                for sa in &spec_from.service_accounts {
                    from.push(Principal::ServiceAccount {
                        namespace: sa.namespace.clone().unwrap_or_else(|| namespace.clone()),
                        name: sa.name.clone(),
                    });
                }
                if from.is_empty() {
                    return Err(from_path.error(Problem::Missing {
                        hint: "list identities, namespaces or serviceAccounts, or leave `from` \
                               out to allow any mesh identity"
                            .into(),
                    }));
                }
            }
            let http = rule
                .http
                .iter()
                .enumerate()
                .map(|(j, m)| {
                    let matched = HttpMatch {
                        methods: m.methods.clone(),
                        path_prefixes: m.path_prefixes.clone(),
                    };
                    matched
                        .validate(&path.field("http").index(j))
                        .map(|()| matched)
                })
                .collect::<Result<_, _>>()?;
            authorizations.push(Authorization {
                name: name.clone(),
                from,
                http,
                allow_plaintext: spec_.allow_plaintext,
            });
        }
        if spec_.rules.is_empty() && spec_.allow_plaintext {
            authorizations.push(Authorization {
                name: name.clone(),
                from: Vec::new(),
                http: Vec::new(),
                allow_plaintext: true,
            });
        }
        Ok(policy::AuthorizationPolicy {
            namespace,
            name,
            target,
            ports,
            authorizations,
        })
    }
}

fn port_ref(path: &FieldPath, port: &IntOrString) -> Result<PortRef, PolicyError> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|n| *n > 0)
            .map(PortRef::Number)
            .ok_or_else(|| {
                path.error(Problem::OutOfRange {
                    value: n.to_string(),
                    min: "1".into(),
                    max: "65535".into(),
                })
            }),
        IntOrString::String(s) if s.is_empty() => Err(path.error(Problem::Missing {
            hint: "give a port number or a container port name".into(),
        })),
        IntOrString::String(s) => Ok(match s.parse::<u16>() {
            Ok(n) if n > 0 => PortRef::Number(n),
            _ => PortRef::Name(s.clone()),
        }),
    }
}

fn label_selector(
    path: &FieldPath,
    selector: &v1::LabelSelector,
) -> Result<LabelSelector, PolicyError> {
    let mut out = LabelSelector {
        match_labels: selector.match_labels.clone().unwrap_or_default(),
        match_expressions: Vec::new(),
    };
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let values = e.values.clone().unwrap_or_default();
        let key = e.key.clone();
        out.match_expressions.push(match e.operator.as_str() {
            "In" => LabelExpression::In(key, values),
            "NotIn" => LabelExpression::NotIn(key, values),
            "Exists" => LabelExpression::Exists(key),
            "DoesNotExist" => LabelExpression::DoesNotExist(key),
            other => {
                return Err(path
                    .field("matchExpressions")
                    .index(i)
                    .field("operator")
                    .error(Problem::Invalid {
                        value: other.to_owned(),
                        expected: "an operator; use In, NotIn, Exists or DoesNotExist".into(),
                    }));
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{
        AuthorizationPolicySpec, AuthorizationRule, FromSpec, HttpMatchSpec, ResiliencePolicy,
        RetryBudgetSpec,
    };
    use std::time::Duration;

    fn resilience(yaml_spec: serde_json::Value) -> Result<Resilience, PolicyError> {
        let object: ResiliencePolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "policy.weft.io/v1alpha1",
            "kind": "ResiliencePolicy",
            "metadata": { "name": "checkout", "namespace": "shop" },
            "spec": yaml_spec,
        }))
        .expect("a ResiliencePolicy");
        Resilience::try_from(&object.spec)
    }

    #[test]
    fn a_full_resilience_policy_converts_with_defaults_filled_in() {
        let r = resilience(serde_json::json!({
            "targetRef": { "group": "", "kind": "Service", "name": "checkout" },
            "retryBudget": { "ratio": 0.25, "window": "20s" },
            "defaultRetry": { "attempts": 3, "conditions": ["5xx", "unavailable"],
                              "backoff": { "base": "10ms" }, "perTryTimeout": "200ms" },
            "circuitBreaker": { "consecutiveFailures": 3 },
            "timeouts": { "connect": "1s", "request": "500ms" },
            "loadBalancer": { "algorithm": "peak-ewma", "decay": "5s" },
        }))
        .expect("valid");
        assert_eq!(r.service, "checkout");
        let budget = r.retry_budget.expect("budget");
        assert_eq!((budget.ratio, budget.min_per_second), (0.25, 10));
        assert_eq!(budget.window, Duration::from_secs(20));
        let retry = r.default_retry.expect("retry");
        assert_eq!(retry.attempts, 3);
        assert!(retry.on.retries_status(500));
        assert!(retry.on.retries_grpc(policy::GrpcCode::Unavailable));
        assert_eq!(retry.backoff.max, Duration::from_millis(100));
        assert_eq!(r.per_try_timeout, Some(Duration::from_millis(200)));
        assert_eq!(r.circuit_breaker.expect("cb").consecutive_failures, 3);
        assert_eq!(r.request_timeout, Some(Duration::from_millis(500)));
        assert!(matches!(
            r.load_balancer,
            Some(LoadBalancer::PeakEwma { decay, .. }) if decay == Duration::from_secs(5)
        ));
    }

    #[test]
    fn bad_resilience_fields_are_named() {
        let target = serde_json::json!({ "kind": "Service", "name": "checkout" });
        let cases = [
            (
                serde_json::json!({ "targetRef": target, "retryBudget": { "ratio": -0.1 } }),
                "spec.retryBudget.ratio: -0.1 is negative; use a value between 0 and 1",
            ),
            (
                serde_json::json!({ "targetRef": target, "defaultRetry": { "conditions": ["teapot"] } }),
                "spec.defaultRetry.conditions[0]: \"teapot\" is not a retry condition",
            ),
            (
                serde_json::json!({ "targetRef": target, "timeouts": { "request": "5 s" } }),
                "spec.timeouts.request: \"5 s\" is not a duration",
            ),
            (
                serde_json::json!({ "targetRef": target, "circuitBreaker": { "maxEjectionTime": "1s" } }),
                "spec.circuitBreaker.maxEjectionTime: 1s is shorter than baseEjectionTime (10s)",
            ),
            (
                serde_json::json!({ "targetRef": { "kind": "Pod", "name": "x" } }),
                "spec.targetRef: \"/Pod\" is not a Service",
            ),
        ];
        for (spec_, want) in cases {
            let err = resilience(spec_).expect_err(want);
            assert!(
                err.to_string().starts_with(want),
                "{err} does not start with {want}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_refused_when_parsing() {
        let err = serde_json::from_value::<RetryBudgetSpec>(serde_json::json!({ "ratoi": 0.1 }))
            .expect_err("unknown field");
        assert!(err.to_string().contains("ratoi"), "{err}");
    }

    fn authz(spec_: AuthorizationPolicySpec) -> Result<policy::AuthorizationPolicy, PolicyError> {
        let mut object = AuthorizationPolicy::new("checkout-from-web", spec_);
        object.metadata.namespace = Some("shop".into());
        policy::AuthorizationPolicy::try_from(&object)
    }

    #[test]
    fn an_authorization_policy_converts_to_authorizations() {
        let policy = authz(AuthorizationPolicySpec {
            target_ref: Some(ServiceRef::service("checkout")),
            pod_selector: None,
            ports: vec![IntOrString::Int(8080), IntOrString::String("http".into())],
            rules: vec![AuthorizationRule {
                from: Some(FromSpec {
                    identities: vec!["spiffe://cluster.local/ns/shop/sa/*".into()],
                    namespaces: vec!["ops".into()],
                    service_accounts: vec![super::super::ServiceAccountRef {
                        name: "web".into(),
                        namespace: None,
                    }],
                }),
                http: vec![HttpMatchSpec {
                    methods: vec!["GET".into()],
                    path_prefixes: vec!["/cart".into()],
                }],
            }],
            allow_plaintext: false,
        })
        .expect("valid");
        assert_eq!(policy.target, PolicyTarget::Service("checkout".into()));
        assert_eq!(
            policy.ports,
            [PortRef::Number(8080), PortRef::Name("http".into())]
        );
        let [authz] = policy.authorizations.as_slice() else {
            panic!("one authorization");
        };
        assert_eq!(authz.name, "checkout-from-web");
        assert_eq!(authz.from.len(), 3);
        assert_eq!(
            authz.from[2],
            Principal::ServiceAccount {
                namespace: "shop".into(),
                name: "web".into()
            }
        );
        let web: crate::Identity = "spiffe://cluster.local/ns/shop/sa/web".parse().expect("id");
        assert!(authz.allows(Some(&web), Some(("GET", "/cart/1"))));
        assert!(!authz.allows(None, Some(("GET", "/cart/1"))));
    }

    #[test]
    fn bad_authorization_fields_are_named() {
        let both = authz(AuthorizationPolicySpec {
            target_ref: Some(ServiceRef::service("checkout")),
            pod_selector: Some(v1::LabelSelector::default()),
            ports: vec![],
            rules: vec![],
            allow_plaintext: false,
        })
        .expect_err("both targets");
        assert_eq!(
            both.to_string(),
            "spec: set exactly one of targetRef and podSelector"
        );
        let bad_id = authz(AuthorizationPolicySpec {
            target_ref: Some(ServiceRef::service("checkout")),
            pod_selector: None,
            ports: vec![IntOrString::Int(70000)],
            rules: vec![],
            allow_plaintext: false,
        })
        .expect_err("bad port");
        assert_eq!(bad_id.field, "spec.ports[0]");
        let bad_pattern = authz(AuthorizationPolicySpec {
            target_ref: Some(ServiceRef::service("checkout")),
            pod_selector: None,
            ports: vec![],
            rules: vec![AuthorizationRule {
                from: Some(FromSpec {
                    identities: vec!["spiffe://cluster.local/ns/shop/sa/we*".into()],
                    ..FromSpec::default()
                }),
                http: vec![],
            }],
            allow_plaintext: false,
        })
        .expect_err("bad pattern");
        assert_eq!(bad_pattern.field, "spec.rules[0].from.identities[0]");
    }
}
