//! Conversions between the policy model and the `weft.v1` messages of
//! `Discovery.Watch` and `Inbound.Watch`. Model to wire cannot fail; wire to
//! model checks everything and names the field (`routes[0].backends[1].name`).

use std::time::Duration;

use super::{
    authz::{
        Authorization, HttpMatch, IdentityPattern, InboundMode, InboundPolicy, InboundRequest,
        Principal, ProtocolHint,
    },
    destination::{Backend, DestinationState, DiscoveryRequest, Endpoint, Target},
    error::{FieldPath, PolicyError, Problem},
    resilience::{
        Backoff, CircuitBreaker, GrpcCode, LoadBalancer, RetryBudget, RetryCondition, RetryOn,
        RetryPolicy,
    },
    route::{
        BackendRef, GrpcRouteMatch, HeaderMatch, HttpRouteMatch, PathMatch, Route, RouteMatch,
        RouteTimeouts,
    },
};
use crate::{Identity, proto::weft_v1 as pb};

// --- Durations ---------------------------------------------------------------

fn to_pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Below one billion, so it fits.
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn from_pb_duration(path: &FieldPath, d: prost_types::Duration) -> Result<Duration, PolicyError> {
    Duration::try_from(d).map_err(|_| {
        path.error(Problem::Invalid {
            value: format!("{}s {}ns", d.seconds, d.nanos),
            expected: "a duration of zero or more".into(),
        })
    })
}

fn optional_duration(
    path: &FieldPath,
    d: Option<prost_types::Duration>,
) -> Result<Option<Duration>, PolicyError> {
    d.map(|d| from_pb_duration(path, d)).transpose()
}

fn required_duration(
    path: &FieldPath,
    d: Option<prost_types::Duration>,
) -> Result<Duration, PolicyError> {
    let d = d.ok_or_else(|| {
        path.error(Problem::Missing {
            hint: "set the duration".into(),
        })
    })?;
    from_pb_duration(path, d)
}

// --- Requests ----------------------------------------------------------------

impl From<&DiscoveryRequest> for pb::DiscoveryRequest {
    fn from(r: &DiscoveryRequest) -> Self {
        Self {
            target: r.target.to_string(),
            caller_identity: r.caller.uri().to_string(),
        }
    }
}

impl TryFrom<pb::DiscoveryRequest> for DiscoveryRequest {
    type Error = PolicyError;

    fn try_from(r: pb::DiscoveryRequest) -> Result<Self, Self::Error> {
        let target = r
            .target
            .parse::<Target>()
            .map_err(|p| FieldPath::root("target").error(p))?;
        let caller = identity(&FieldPath::root("caller_identity"), &r.caller_identity)?;
        Ok(Self { target, caller })
    }
}

impl From<&InboundRequest> for pb::InboundRequest {
    fn from(r: &InboundRequest) -> Self {
        Self {
            workload: r.workload.clone(),
            port: u32::from(r.port),
        }
    }
}

impl TryFrom<pb::InboundRequest> for InboundRequest {
    type Error = PolicyError;

    fn try_from(r: pb::InboundRequest) -> Result<Self, Self::Error> {
        if r.workload.is_empty() {
            return Err(FieldPath::root("workload").error(Problem::Missing {
                hint: "name the workload (<namespace>/<pod>, or its local name)".into(),
            }));
        }
        let port = u16::try_from(r.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                FieldPath::root("port").error(Problem::OutOfRange {
                    value: r.port.to_string(),
                    min: "1".into(),
                    max: "65535".into(),
                })
            })?;
        Ok(Self {
            workload: r.workload,
            port,
        })
    }
}

fn identity(path: &FieldPath, text: &str) -> Result<Identity, PolicyError> {
    text.parse::<Identity>().map_err(|e| {
        path.error(Problem::Invalid {
            value: text.to_owned(),
            expected: format!("a SPIFFE identity ({e})"),
        })
    })
}

// --- DestinationState --------------------------------------------------------

impl From<&DestinationState> for pb::DestinationState {
    fn from(s: &DestinationState) -> Self {
        Self {
            version: s.version,
            target: s.target.to_string(),
            routes: s.routes.iter().map(route_to_pb).collect(),
            backends: s.backends.iter().map(backend_to_pb).collect(),
            retry_budget: Some(pb::RetryBudget {
                ratio: s.retry_budget.ratio,
                min_per_second: s.retry_budget.min_per_second,
                window: Some(to_pb_duration(s.retry_budget.window)),
            }),
            circuit_breaker: s.circuit_breaker.as_ref().map(|c| pb::CircuitBreaker {
                consecutive_failures: c.consecutive_failures,
                base_ejection_time: Some(to_pb_duration(c.base_ejection_time)),
                max_ejection_time: Some(to_pb_duration(c.max_ejection_time)),
                max_ejected_percent: c.max_ejected_percent,
            }),
            load_balancer: Some(load_balancer_to_pb(&s.load_balancer)),
            connect_timeout: s.connect_timeout.map(to_pb_duration),
        }
    }
}

impl TryFrom<pb::DestinationState> for DestinationState {
    type Error = PolicyError;

    /// Converts and validates ([`DestinationState::validate`]). An unset retry
    /// budget or load balancer is the default one.
    fn try_from(s: pb::DestinationState) -> Result<Self, Self::Error> {
        let root = FieldPath::root("");
        let target = s
            .target
            .parse::<Target>()
            .map_err(|p| root.field("target").error(p))?;
        let routes = s
            .routes
            .into_iter()
            .enumerate()
            .map(|(i, r)| route_from_pb(&root.field("routes").index(i), r))
            .collect::<Result<_, _>>()?;
        let backends = s
            .backends
            .into_iter()
            .enumerate()
            .map(|(i, b)| backend_from_pb(&root.field("backends").index(i), b))
            .collect::<Result<_, _>>()?;
        let retry_budget = match s.retry_budget {
            Some(b) => RetryBudget {
                ratio: b.ratio,
                min_per_second: b.min_per_second,
                window: required_duration(&root.field("retryBudget").field("window"), b.window)?,
            },
            None => RetryBudget::default(),
        };
        let circuit_breaker = s
            .circuit_breaker
            .map(|c| {
                let path = root.field("circuitBreaker");
                Ok::<_, PolicyError>(CircuitBreaker {
                    consecutive_failures: c.consecutive_failures,
                    base_ejection_time: required_duration(
                        &path.field("baseEjectionTime"),
                        c.base_ejection_time,
                    )?,
                    max_ejection_time: required_duration(
                        &path.field("maxEjectionTime"),
                        c.max_ejection_time,
                    )?,
                    max_ejected_percent: c.max_ejected_percent,
                })
            })
            .transpose()?;
        let load_balancer = match s.load_balancer.and_then(|lb| lb.kind) {
            None => LoadBalancer::default(),
            Some(pb::load_balancer::Kind::RoundRobin(_)) => LoadBalancer::RoundRobin,
            Some(pb::load_balancer::Kind::PeakEwma(p)) => {
                let path = root.field("loadBalancer");
                LoadBalancer::PeakEwma {
                    decay: optional_duration(&path.field("decay"), p.decay)?
                        .unwrap_or(LoadBalancer::DEFAULT_DECAY),
                    default_rtt: optional_duration(&path.field("defaultRtt"), p.default_rtt)?
                        .unwrap_or(LoadBalancer::DEFAULT_RTT),
                }
            }
        };
        let state = DestinationState {
            version: s.version,
            target,
            routes,
            backends,
            retry_budget,
            circuit_breaker,
            load_balancer,
            connect_timeout: optional_duration(&root.field("connectTimeout"), s.connect_timeout)?,
        };
        state.validate()?;
        Ok(state)
    }
}

fn load_balancer_to_pb(lb: &LoadBalancer) -> pb::LoadBalancer {
    let kind = match lb {
        LoadBalancer::PeakEwma { decay, default_rtt } => {
            pb::load_balancer::Kind::PeakEwma(pb::PeakEwma {
                decay: Some(to_pb_duration(*decay)),
                default_rtt: Some(to_pb_duration(*default_rtt)),
            })
        }
        LoadBalancer::RoundRobin => pb::load_balancer::Kind::RoundRobin(pb::RoundRobin {}),
    };
    pb::LoadBalancer { kind: Some(kind) }
}

fn backend_to_pb(b: &Backend) -> pb::Backend {
    pb::Backend {
        name: b.name.clone(),
        weight: b.weight,
        endpoints: b
            .endpoints
            .iter()
            .map(|e| pb::Endpoint {
                address: e.addr.to_string(),
                identity: e
                    .identity
                    .as_ref()
                    .map(|i| i.uri().to_string())
                    .unwrap_or_default(),
                zone: e.zone.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

fn backend_from_pb(path: &FieldPath, b: pb::Backend) -> Result<Backend, PolicyError> {
    let endpoints = b
        .endpoints
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let path = path.field("endpoints").index(i);
            let addr = e.address.parse().map_err(|_| {
                path.field("address").error(Problem::Invalid {
                    value: e.address.clone(),
                    expected: "an endpoint address; write ip:port".into(),
                })
            })?;
            let identity = match e.identity.as_str() {
                "" => None,
                text => Some(identity(&path.field("identity"), text)?),
            };
            let zone = Some(e.zone).filter(|z| !z.is_empty());
            Ok(Endpoint {
                addr,
                identity,
                zone,
            })
        })
        .collect::<Result<_, PolicyError>>()?;
    Ok(Backend {
        name: b.name,
        weight: b.weight,
        endpoints,
    })
}

fn route_to_pb(r: &Route) -> pb::Route {
    pb::Route {
        name: r.name.clone(),
        matches: r.matches.iter().map(route_match_to_pb).collect(),
        backends: r
            .backends
            .iter()
            .map(|b| pb::BackendRef {
                name: b.name.clone(),
                weight: b.weight,
            })
            .collect(),
        request_timeout: r.timeouts.request.map(to_pb_duration),
        backend_request_timeout: r.timeouts.backend_request.map(to_pb_duration),
        retry: r.retry.as_ref().map(retry_to_pb),
    }
}

fn route_from_pb(path: &FieldPath, r: pb::Route) -> Result<Route, PolicyError> {
    let matches = r
        .matches
        .into_iter()
        .enumerate()
        .map(|(i, m)| route_match_from_pb(&path.field("matches").index(i), m))
        .collect::<Result<_, _>>()?;
    Ok(Route {
        name: r.name,
        matches,
        backends: r
            .backends
            .into_iter()
            .map(|b| BackendRef {
                name: b.name,
                weight: b.weight,
            })
            .collect(),
        timeouts: RouteTimeouts {
            request: optional_duration(&path.field("requestTimeout"), r.request_timeout)?,
            backend_request: optional_duration(
                &path.field("backendRequestTimeout"),
                r.backend_request_timeout,
            )?,
        },
        retry: r
            .retry
            .map(|retry| retry_from_pb(&path.field("retry"), retry))
            .transpose()?,
    })
}

fn headers_to_pb(headers: &[HeaderMatch]) -> Vec<pb::HeaderMatch> {
    headers
        .iter()
        .map(|h| pb::HeaderMatch {
            name: h.name.clone(),
            value: h.value.clone(),
        })
        .collect()
}

fn headers_from_pb(headers: Vec<pb::HeaderMatch>) -> Vec<HeaderMatch> {
    headers
        .into_iter()
        .map(|h| HeaderMatch {
            name: h.name.to_ascii_lowercase(),
            value: h.value,
        })
        .collect()
}

fn route_match_to_pb(m: &RouteMatch) -> pb::RouteMatch {
    let kind = match m {
        RouteMatch::Http(h) => pb::route_match::Kind::Http(pb::HttpRouteMatch {
            path: h.path.as_ref().map(|p| match p {
                PathMatch::Exact(p) => pb::http_route_match::Path::PathExact(p.clone()),
                PathMatch::Prefix(p) => pb::http_route_match::Path::PathPrefix(p.clone()),
            }),
            method: h.method.clone().unwrap_or_default(),
            headers: headers_to_pb(&h.headers),
        }),
        RouteMatch::Grpc(g) => pb::route_match::Kind::Grpc(pb::GrpcRouteMatch {
            service: g.service.clone().unwrap_or_default(),
            method: g.method.clone().unwrap_or_default(),
            headers: headers_to_pb(&g.headers),
        }),
    };
    pb::RouteMatch { kind: Some(kind) }
}

fn route_match_from_pb(path: &FieldPath, m: pb::RouteMatch) -> Result<RouteMatch, PolicyError> {
    let non_empty = |s: String| Some(s).filter(|s| !s.is_empty());
    match m.kind {
        Some(pb::route_match::Kind::Http(h)) => Ok(RouteMatch::Http(HttpRouteMatch {
            path: h.path.map(|p| match p {
                pb::http_route_match::Path::PathExact(p) => PathMatch::Exact(p),
                pb::http_route_match::Path::PathPrefix(p) => PathMatch::Prefix(p),
            }),
            method: non_empty(h.method),
            headers: headers_from_pb(h.headers),
        })),
        Some(pb::route_match::Kind::Grpc(g)) => Ok(RouteMatch::Grpc(GrpcRouteMatch {
            service: non_empty(g.service),
            method: non_empty(g.method),
            headers: headers_from_pb(g.headers),
        })),
        None => Err(path.error(Problem::Missing {
            hint: "set http or grpc".into(),
        })),
    }
}

fn retry_to_pb(r: &RetryPolicy) -> pb::RetryPolicy {
    pb::RetryPolicy {
        attempts: r.attempts,
        statuses: r.on.statuses.iter().map(|s| u32::from(*s)).collect(),
        conditions: r
            .on
            .conditions()
            .into_iter()
            .filter(|c| !matches!(c, RetryCondition::Grpc(_)))
            .map(|c| c.to_string())
            .collect(),
        grpc_codes: r.on.grpc.iter().map(|c| c.code()).collect(),
        backoff_base: Some(to_pb_duration(r.backoff.base)),
        backoff_max: Some(to_pb_duration(r.backoff.max)),
    }
}

fn retry_from_pb(path: &FieldPath, r: pb::RetryPolicy) -> Result<RetryPolicy, PolicyError> {
    let mut conditions = Vec::new();
    for (i, name) in r.conditions.iter().enumerate() {
        let condition = name
            .parse::<RetryCondition>()
            .map_err(|p| path.field("conditions").index(i).error(p))?;
        conditions.push(condition);
    }
    for (i, code) in r.grpc_codes.iter().enumerate() {
        let code = GrpcCode::from_code(*code).ok_or_else(|| {
            path.field("grpcCodes").index(i).error(Problem::OutOfRange {
                value: code.to_string(),
                min: "1".into(),
                max: "16".into(),
            })
        })?;
        conditions.push(RetryCondition::Grpc(code));
    }
    let mut statuses = Vec::new();
    for (i, status) in r.statuses.iter().enumerate() {
        let status = u16::try_from(*status).map_err(|_| {
            path.field("codes").index(i).error(Problem::OutOfRange {
                value: status.to_string(),
                min: "100".into(),
                max: "599".into(),
            })
        })?;
        statuses.push(status);
    }
    let defaults = Backoff::default();
    Ok(RetryPolicy {
        attempts: r.attempts,
        on: RetryOn::new(conditions, &statuses),
        backoff: Backoff {
            base: optional_duration(&path.field("backoff").field("base"), r.backoff_base)?
                .unwrap_or(defaults.base),
            max: optional_duration(&path.field("backoff").field("max"), r.backoff_max)?
                .unwrap_or(defaults.max),
        },
    })
}

// --- InboundPolicy -----------------------------------------------------------

impl From<&InboundPolicy> for pb::InboundPolicy {
    fn from(p: &InboundPolicy) -> Self {
        let protocol = match p.protocol {
            ProtocolHint::Unknown => pb::ProtocolHint::Unknown,
            ProtocolHint::Http1 => pb::ProtocolHint::Http1,
            ProtocolHint::Http2 => pb::ProtocolHint::Http2,
            ProtocolHint::Opaque => pb::ProtocolHint::Opaque,
        };
        let mode = match p.default_mode {
            InboundMode::AllowAll => pb::InboundMode::AllowAll,
            InboundMode::MeshOnly => pb::InboundMode::MeshOnly,
            InboundMode::Deny => pb::InboundMode::Deny,
            InboundMode::Audit => pb::InboundMode::Audit,
        };
        Self {
            protocol: protocol.into(),
            default_mode: mode.into(),
            authorizations: p.authorizations.iter().map(authorization_to_pb).collect(),
        }
    }
}

impl TryFrom<pb::InboundPolicy> for InboundPolicy {
    type Error = PolicyError;

    fn try_from(p: pb::InboundPolicy) -> Result<Self, Self::Error> {
        let root = FieldPath::root("");
        let protocol = match pb::ProtocolHint::try_from(p.protocol) {
            Ok(pb::ProtocolHint::Unknown) => ProtocolHint::Unknown,
            Ok(pb::ProtocolHint::Http1) => ProtocolHint::Http1,
            Ok(pb::ProtocolHint::Http2) => ProtocolHint::Http2,
            Ok(pb::ProtocolHint::Opaque) => ProtocolHint::Opaque,
            Err(_) => {
                return Err(root.field("protocol").error(Problem::Invalid {
                    value: p.protocol.to_string(),
                    expected: "a protocol hint (0 to 3)".into(),
                }));
            }
        };
        let default_mode = match pb::InboundMode::try_from(p.default_mode) {
            Ok(pb::InboundMode::Unspecified | pb::InboundMode::AllowAll) => InboundMode::AllowAll,
            Ok(pb::InboundMode::MeshOnly) => InboundMode::MeshOnly,
            Ok(pb::InboundMode::Deny) => InboundMode::Deny,
            Ok(pb::InboundMode::Audit) => InboundMode::Audit,
            Err(_) => {
                return Err(root.field("defaultMode").error(Problem::Invalid {
                    value: p.default_mode.to_string(),
                    expected: "an inbound mode (0 to 4)".into(),
                }));
            }
        };
        let authorizations = p
            .authorizations
            .into_iter()
            .enumerate()
            .map(|(i, a)| authorization_from_pb(&root.field("authorizations").index(i), a))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            protocol,
            default_mode,
            authorizations,
        })
    }
}

fn authorization_to_pb(a: &Authorization) -> pb::Authorization {
    pb::Authorization {
        name: a.name.clone(),
        from: a
            .from
            .iter()
            .map(|p| pb::Principal {
                kind: Some(match p {
                    Principal::Identity(pattern) => {
                        pb::principal::Kind::Identity(pattern.to_string())
                    }
                    Principal::Namespace(ns) => pb::principal::Kind::Namespace(ns.clone()),
                    Principal::ServiceAccount { namespace, name } => {
                        pb::principal::Kind::ServiceAccount(pb::ServiceAccount {
                            namespace: namespace.clone(),
                            name: name.clone(),
                        })
                    }
                }),
            })
            .collect(),
        http: a
            .http
            .iter()
            .map(|m| pb::HttpMatch {
                methods: m.methods.clone(),
                path_prefixes: m.path_prefixes.clone(),
            })
            .collect(),
        allow_plaintext: a.allow_plaintext,
    }
}

fn authorization_from_pb(
    path: &FieldPath,
    a: pb::Authorization,
) -> Result<Authorization, PolicyError> {
    let mut from = Vec::new();
    for (i, p) in a.from.into_iter().enumerate() {
        let path = path.field("from").index(i);
        from.push(match p.kind {
            Some(pb::principal::Kind::Identity(text)) => Principal::Identity(
                text.parse::<IdentityPattern>()
                    .map_err(|e| path.field("identity").error(e))?,
            ),
            Some(pb::principal::Kind::Namespace(ns)) => Principal::Namespace(ns),
            Some(pb::principal::Kind::ServiceAccount(sa)) => Principal::ServiceAccount {
                namespace: sa.namespace,
                name: sa.name,
            },
            None => {
                return Err(path.error(Problem::Missing {
                    hint: "set identity, namespace or serviceAccount".into(),
                }));
            }
        });
    }
    let mut http = Vec::new();
    for (i, m) in a.http.into_iter().enumerate() {
        let matched = HttpMatch {
            methods: m.methods,
            path_prefixes: m.path_prefixes,
        };
        matched.validate(&path.field("http").index(i))?;
        http.push(matched);
    }
    Ok(Authorization {
        name: a.name,
        from,
        http,
        allow_plaintext: a.allow_plaintext,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        s.parse().expect("identity")
    }

    fn sample_state() -> DestinationState {
        DestinationState {
            version: 7,
            target: "checkout.shop.svc.cluster.local:80"
                .parse()
                .expect("target"),
            routes: vec![Route {
                name: "shop/checkout-split/0".into(),
                matches: vec![
                    RouteMatch::Http(HttpRouteMatch {
                        path: Some(PathMatch::Prefix("/cart".into())),
                        method: Some("POST".into()),
                        headers: vec![HeaderMatch {
                            name: "x-canary".into(),
                            value: "1".into(),
                        }],
                    }),
                    RouteMatch::Grpc(GrpcRouteMatch {
                        service: Some("shop.v1.Checkout".into()),
                        method: None,
                        headers: vec![],
                    }),
                ],
                backends: vec![
                    BackendRef {
                        name: "checkout-v1".into(),
                        weight: 90,
                    },
                    BackendRef {
                        name: "checkout-v2".into(),
                        weight: 10,
                    },
                ],
                timeouts: RouteTimeouts {
                    request: Some(Duration::from_millis(500)),
                    backend_request: Some(Duration::from_millis(150)),
                },
                retry: Some(RetryPolicy {
                    attempts: 2,
                    on: RetryOn::new(
                        [
                            RetryCondition::ServerError,
                            RetryCondition::ConnectFailure,
                            RetryCondition::Grpc(GrpcCode::Unavailable),
                        ],
                        &[409],
                    ),
                    backoff: Backoff::default(),
                }),
            }],
            backends: ["checkout-v1", "checkout-v2"]
                .into_iter()
                .enumerate()
                .map(|(i, name)| Backend {
                    name: name.into(),
                    weight: 1,
                    endpoints: vec![Endpoint {
                        addr: format!("10.0.0.{}:8080", i + 1).parse().expect("addr"),
                        identity: Some(id("spiffe://cluster.local/ns/shop/sa/checkout")),
                        zone: (i == 0).then(|| "zone-a".to_owned()),
                    }],
                })
                .collect(),
            retry_budget: RetryBudget::default(),
            circuit_breaker: Some(CircuitBreaker::default()),
            load_balancer: LoadBalancer::default(),
            connect_timeout: Some(Duration::from_secs(1)),
        }
    }

    #[test]
    fn destination_state_round_trips_through_the_wire() {
        let state = sample_state();
        let wire = pb::DestinationState::from(&state);
        assert_eq!(DestinationState::try_from(wire), Ok(state.clone()));
        let mut plain = state;
        plain.circuit_breaker = None;
        plain.load_balancer = LoadBalancer::RoundRobin;
        plain.backends[0].endpoints[0].identity = None;
        let wire = pb::DestinationState::from(&plain);
        assert_eq!(DestinationState::try_from(wire), Ok(plain));
    }

    #[test]
    fn bad_wire_destination_fields_are_named() {
        let mut wire = pb::DestinationState::from(&sample_state());
        wire.backends[1].endpoints[0].address = "nowhere".into();
        let err = DestinationState::try_from(wire).expect_err("bad address");
        assert_eq!(err.field, "backends[1].endpoints[0].address");

        let mut wire = pb::DestinationState::from(&sample_state());
        wire.routes[0].backends[1].name = "checkout-v3".into();
        let err = DestinationState::try_from(wire).expect_err("unknown backend");
        assert_eq!(err.field, "routes[0].backendRefs[1].name");

        let mut wire = pb::DestinationState::from(&sample_state());
        if let Some(b) = wire.retry_budget.as_mut() {
            b.ratio = -0.1;
        }
        let err = DestinationState::try_from(wire).expect_err("negative ratio");
        assert_eq!(
            err.to_string(),
            "retryBudget.ratio: -0.1 is negative; use a value between 0 and 1"
        );

        let mut wire = pb::DestinationState::from(&sample_state());
        if let Some(r) = wire.routes[0].retry.as_mut() {
            r.grpc_codes.push(0);
        }
        let err = DestinationState::try_from(wire).expect_err("grpc OK");
        assert!(err.field.starts_with("routes[0].retry.grpcCodes["), "{err}");
    }

    #[test]
    fn inbound_policy_round_trips_through_the_wire() {
        let policy = InboundPolicy {
            protocol: ProtocolHint::Http2,
            default_mode: InboundMode::Audit,
            authorizations: vec![Authorization {
                name: "checkout-from-web".into(),
                from: vec![
                    Principal::Identity("spiffe://cluster.local/ns/*/sa/web".parse().expect("p")),
                    Principal::Namespace("ops".into()),
                    Principal::ServiceAccount {
                        namespace: "shop".into(),
                        name: "web".into(),
                    },
                ],
                http: vec![HttpMatch {
                    methods: vec!["GET".into()],
                    path_prefixes: vec!["/cart".into()],
                }],
                allow_plaintext: true,
            }],
        };
        let wire = pb::InboundPolicy::from(&policy);
        assert_eq!(InboundPolicy::try_from(wire), Ok(policy));
        let unset = pb::InboundPolicy::default();
        let policy = InboundPolicy::try_from(unset).expect("defaults");
        assert_eq!(policy.default_mode, InboundMode::AllowAll);
        let bad = pb::InboundPolicy {
            default_mode: 9,
            ..pb::InboundPolicy::default()
        };
        let err = InboundPolicy::try_from(bad).expect_err("mode 9");
        assert_eq!(err.field, "defaultMode");
    }

    #[test]
    fn requests_round_trip_and_bad_ones_are_named() {
        let request = DiscoveryRequest {
            target: "10.96.0.12:80".parse().expect("target"),
            caller: id("spiffe://cluster.local/ns/shop/sa/web"),
        };
        let wire = pb::DiscoveryRequest::from(&request);
        assert_eq!(DiscoveryRequest::try_from(wire), Ok(request));
        let err = DiscoveryRequest::try_from(pb::DiscoveryRequest {
            target: "checkout:80".into(),
            caller_identity: "web".into(),
        })
        .expect_err("bad identity");
        assert_eq!(err.field, "caller_identity");
        let inbound = InboundRequest {
            workload: "shop/checkout-5d9c".into(),
            port: 8080,
        };
        let wire = pb::InboundRequest::from(&inbound);
        assert_eq!(InboundRequest::try_from(wire), Ok(inbound));
        let err = InboundRequest::try_from(pb::InboundRequest {
            workload: "x".into(),
            port: 70000,
        })
        .expect_err("bad port");
        assert_eq!(err.field, "port");
    }
}
