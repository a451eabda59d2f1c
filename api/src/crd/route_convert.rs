//! `TryFrom` an `HTTPRoute` or `GRPCRoute` into a [`MeshRoute`]: the Services
//! it attaches to and its rules as [`policy::Route`]s, each with the Services
//! its backendRefs name. Errors name the field (`spec.rules[0].backendRefs[1].weight: ...`).

use std::time::Duration;

use super::{
    BackendReference, GrpcRoute, HeaderMatch, HttpRoute, HttpRouteRetry, HttpRouteTimeouts,
    ParentReference, convert::default_retry_on,
};
use crate::policy::{
    self, Backoff, FieldPath, GrpcRouteMatch, HttpRouteMatch, PathMatch, PolicyError, Problem,
    RetryCondition, RetryOn, RetryPolicy, Route, RouteMatch, RouteTimeouts,
};

/// The largest backendRef weight the Gateway API allows.
pub const MAX_WEIGHT: i32 = 1_000_000;

/// A route converted: the Services it attaches to (parentRefs of other kinds,
/// Gateways, are not the mesh's and are left out) and its rules in order.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshRoute {
    pub namespace: String,
    pub name: String,
    pub parents: Vec<ServiceParent>,
    pub rules: Vec<MeshRule>,
}

/// A Service a route attaches to; `port: None`: every port of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceParent {
    pub namespace: String,
    pub name: String,
    pub port: Option<u16>,
}

/// One rule: the route (backend refs named by [`ServiceBackend::key`]) and,
/// in the same order as `route.backends`, the Services they name.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshRule {
    pub route: Route,
    pub backends: Vec<ServiceBackend>,
}

/// A Service a backendRef names; `port: None`: the port the caller asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceBackend {
    pub namespace: String,
    pub name: String,
    pub port: Option<u16>,
}

impl ServiceBackend {
    /// The backend's name in a snapshot of a target in `namespace`: the
    /// Service's name, with `.namespace` when it lives elsewhere.
    pub fn key(&self, namespace: &str) -> String {
        if self.namespace == namespace {
            self.name.clone()
        } else {
            format!("{}.{}", self.name, self.namespace)
        }
    }
}

impl MeshRoute {
    /// Whether some rule takes every request (no matches, or a match of path
    /// prefix `/` alone): then nothing falls through to the parent Service.
    pub fn catches_all(&self) -> bool {
        self.rules.iter().any(|rule| {
            rule.route.matches.is_empty()
                || rule.route.matches.iter().any(|m| match m {
                    RouteMatch::Http(h) => {
                        h.method.is_none()
                            && h.headers.is_empty()
                            && h.path
                                .as_ref()
                                .is_none_or(|p| *p == PathMatch::Prefix("/".into()))
                    }
                    RouteMatch::Grpc(g) => {
                        g.service.is_none() && g.method.is_none() && g.headers.is_empty()
                    }
                })
        })
    }

    /// Whether the route attaches to port `port` of Service `namespace/name`.
    pub fn attaches_to(&self, namespace: &str, name: &str, port: u16) -> bool {
        self.parents
            .iter()
            .any(|p| p.namespace == namespace && p.name == name && p.port.is_none_or(|p| p == port))
    }
}

fn metadata(meta: &kube::api::ObjectMeta) -> Result<(String, String), PolicyError> {
    let namespace = meta.namespace.clone().ok_or_else(|| {
        FieldPath::root("metadata.namespace").error(Problem::Missing {
            hint: "a route is namespaced".into(),
        })
    })?;
    let name = meta.name.clone().ok_or_else(|| {
        FieldPath::root("metadata.name").error(Problem::Missing {
            hint: "name the route".into(),
        })
    })?;
    Ok((namespace, name))
}

impl TryFrom<&HttpRoute> for MeshRoute {
    type Error = PolicyError;

    fn try_from(object: &HttpRoute) -> Result<Self, Self::Error> {
        let (namespace, name) = metadata(&object.metadata)?;
        let spec = FieldPath::root("spec");
        let parents = parents(
            &spec.field("parentRefs"),
            &namespace,
            &object.spec.parent_refs,
        )?;
        let mut rules = Vec::new();
        for (i, rule) in object.spec.rules.iter().enumerate() {
            let path = spec.field("rules").index(i);
            no_filters(&path.field("filters"), &rule.filters)?;
            let matches = rule
                .matches
                .iter()
                .enumerate()
                .map(|(j, m)| http_match(&path.field("matches").index(j), m))
                .collect::<Result<Vec<_>, _>>()?;
            let (backend_refs, backends) =
                backend_refs(&path.field("backendRefs"), &namespace, &rule.backend_refs)?;
            let timeouts = timeouts(&path.field("timeouts"), rule.timeouts.as_ref())?;
            let retry = rule
                .retry
                .as_ref()
                .map(|r| retry(&path.field("retry"), r))
                .transpose()?;
            rules.push(MeshRule {
                route: Route {
                    name: rule_name(&namespace, &name, i, rule.name.as_deref()),
                    matches,
                    backends: backend_refs,
                    timeouts,
                    retry,
                },
                backends,
            });
        }
        Ok(Self {
            namespace,
            name,
            parents,
            rules,
        })
    }
}

impl TryFrom<&GrpcRoute> for MeshRoute {
    type Error = PolicyError;

    fn try_from(object: &GrpcRoute) -> Result<Self, Self::Error> {
        let (namespace, name) = metadata(&object.metadata)?;
        let spec = FieldPath::root("spec");
        let parents = parents(
            &spec.field("parentRefs"),
            &namespace,
            &object.spec.parent_refs,
        )?;
        let mut rules = Vec::new();
        for (i, rule) in object.spec.rules.iter().enumerate() {
            let path = spec.field("rules").index(i);
            no_filters(&path.field("filters"), &rule.filters)?;
            let mut matches = Vec::new();
            for (j, m) in rule.matches.iter().enumerate() {
                let mpath = path.field("matches").index(j);
                let (service, method) = match &m.method {
                    Some(method) => {
                        exact_only(&mpath.field("method").field("type"), &method.type_)?;
                        if method.service.is_none() && method.method.is_none() {
                            return Err(mpath.field("method").error(Problem::Missing {
                                hint: "set service, method or both".into(),
                            }));
                        }
                        (method.service.clone(), method.method.clone())
                    }
                    None => (None, None),
                };
                matches.push(RouteMatch::Grpc(GrpcRouteMatch {
                    service,
                    method,
                    headers: headers(&mpath.field("headers"), &m.headers)?,
                }));
            }
            let (backend_refs, backends) =
                backend_refs(&path.field("backendRefs"), &namespace, &rule.backend_refs)?;
            rules.push(MeshRule {
                route: Route {
                    name: rule_name(&namespace, &name, i, rule.name.as_deref()),
                    matches,
                    backends: backend_refs,
                    timeouts: RouteTimeouts::default(),
                    retry: None,
                },
                backends,
            });
        }
        Ok(Self {
            namespace,
            name,
            parents,
            rules,
        })
    }
}

/// `shop/checkout-split/0`, or the rule's own name in place of its index.
fn rule_name(namespace: &str, name: &str, index: usize, rule: Option<&str>) -> String {
    match rule {
        Some(rule) => format!("{namespace}/{name}/{rule}"),
        None => format!("{namespace}/{name}/{index}"),
    }
}

fn port(path: &FieldPath, port: Option<i32>) -> Result<Option<u16>, PolicyError> {
    port.map(|p| {
        u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| {
            let (value, min, max) = (p.to_string(), "1".into(), "65535".into());
            path.error(if p < 0 {
                Problem::Negative { value, min, max }
            } else {
                Problem::OutOfRange { value, min, max }
            })
        })
    })
    .transpose()
}

fn parents(
    path: &FieldPath,
    namespace: &str,
    refs: &[ParentReference],
) -> Result<Vec<ServiceParent>, PolicyError> {
    let mut out = Vec::new();
    for (i, parent) in refs.iter().enumerate() {
        if !parent.is_service() {
            continue;
        }
        let path = path.index(i);
        if parent.name.is_empty() {
            return Err(path.field("name").error(Problem::Missing {
                hint: "name the Service the route attaches to".into(),
            }));
        }
        out.push(ServiceParent {
            namespace: parent
                .namespace
                .clone()
                .unwrap_or_else(|| namespace.to_owned()),
            name: parent.name.clone(),
            port: port(&path.field("port"), parent.port)?,
        });
    }
    Ok(out)
}

fn backend_refs(
    path: &FieldPath,
    namespace: &str,
    refs: &[BackendReference],
) -> Result<(Vec<policy::BackendRef>, Vec<ServiceBackend>), PolicyError> {
    let mut names = Vec::new();
    let mut backends = Vec::new();
    for (i, backend) in refs.iter().enumerate() {
        let path = path.index(i);
        let group = backend.group.as_deref().unwrap_or("");
        let kind = backend.kind.as_deref().unwrap_or("Service");
        if !matches!(group, "" | "core") || kind != "Service" {
            return Err(path.error(Problem::Invalid {
                value: format!("{group}/{kind}"),
                expected: "a Service; leave group and kind out or set group \"\" and kind Service"
                    .into(),
            }));
        }
        if backend.name.is_empty() {
            return Err(path.field("name").error(Problem::Missing {
                hint: "name the backend Service".into(),
            }));
        }
        no_filters(&path.field("filters"), &backend.filters)?;
        let weight = backend.weight();
        if !(0..=MAX_WEIGHT).contains(&weight) {
            let (value, min, max) = (weight.to_string(), "0".into(), MAX_WEIGHT.to_string());
            return Err(path.field("weight").error(if weight < 0 {
                Problem::Negative { value, min, max }
            } else {
                Problem::OutOfRange { value, min, max }
            }));
        }
        let service = ServiceBackend {
            namespace: backend
                .namespace
                .clone()
                .unwrap_or_else(|| namespace.to_owned()),
            name: backend.name.clone(),
            port: port(&path.field("port"), backend.port)?,
        };
        let key = service.key(namespace);
        if backends
            .iter()
            .any(|b: &ServiceBackend| b.key(namespace) == key)
        {
            return Err(path.field("name").error(Problem::Conflict(format!(
                "backend {key:?} is listed twice in this rule; give it one weight"
            ))));
        }
        names.push(policy::BackendRef {
            name: key,
            // In 0..=1_000_000, checked above.
            weight: weight.unsigned_abs(),
        });
        backends.push(service);
    }
    Ok((names, backends))
}

fn exact_only(path: &FieldPath, type_: &Option<String>) -> Result<(), PolicyError> {
    match type_.as_deref() {
        None | Some("Exact") => Ok(()),
        Some(other) => Err(path.error(Problem::Invalid {
            value: other.to_owned(),
            expected: "a match type weft supports; use Exact".into(),
        })),
    }
}

fn headers(
    path: &FieldPath,
    headers: &[HeaderMatch],
) -> Result<Vec<policy::HeaderMatch>, PolicyError> {
    headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let path = path.index(i);
            exact_only(&path.field("type"), &h.type_)?;
            if h.name.is_empty() {
                return Err(path.field("name").error(Problem::Missing {
                    hint: "name the header".into(),
                }));
            }
            Ok(policy::HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                value: h.value.clone(),
            })
        })
        .collect()
}

/// Filters are refused: weft applies none yet, and dropping one would send
/// requests unchanged (or to the wrong place) without a word.
fn no_filters(path: &FieldPath, filters: &[serde_json::Value]) -> Result<(), PolicyError> {
    match filters.first() {
        None => Ok(()),
        Some(filter) => Err(path.index(0).error(Problem::Unsupported {
            what: format!(
                "the filter {}",
                filter["type"].as_str().unwrap_or("(without a type)")
            ),
            hint: "weft applies no HTTPRoute or GRPCRoute filter (header modifiers, redirects, \
                   rewrites, mirrors); remove the filters"
                .into(),
        })),
    }
}

fn http_match(path: &FieldPath, m: &super::HttpRouteMatch) -> Result<RouteMatch, PolicyError> {
    if !m.query_params.is_empty() {
        return Err(path.field("queryParams").error(Problem::Unsupported {
            what: "matching on query parameters".into(),
            hint: "match on the path, method or headers instead".into(),
        }));
    }
    let path_match = match &m.path {
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".to_owned());
            if !value.starts_with('/') {
                return Err(path.field("path").field("value").error(Problem::Invalid {
                    value,
                    expected: "a path; start it with /".into(),
                }));
            }
            Some(match p.type_.as_deref() {
                None | Some("PathPrefix") => PathMatch::Prefix(value),
                Some("Exact") => PathMatch::Exact(value),
                Some(other) => {
                    return Err(path.field("path").field("type").error(Problem::Invalid {
                        value: other.to_owned(),
                        expected: "a path match type weft supports; use Exact or PathPrefix".into(),
                    }));
                }
            })
        }
        None => None,
    };
    if let Some(method) = &m.method
        && (method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()))
    {
        return Err(path.field("method").error(Problem::Invalid {
            value: method.clone(),
            expected: "an HTTP method in capitals, such as GET".into(),
        }));
    }
    Ok(RouteMatch::Http(HttpRouteMatch {
        path: path_match,
        method: m.method.clone(),
        headers: headers(&path.field("headers"), &m.headers)?,
    }))
}

fn duration(path: &FieldPath, text: &Option<String>) -> Result<Option<Duration>, PolicyError> {
    text.as_deref()
        .map(|t| {
            let d = policy::duration::parse(t).map_err(|e| path.error(Problem::Duration(e)))?;
            if d.is_zero() {
                // Gateway API: a zero timeout disables it.
                return Ok(None);
            }
            Ok(Some(d))
        })
        .transpose()
        .map(Option::flatten)
}

fn timeouts(path: &FieldPath, t: Option<&HttpRouteTimeouts>) -> Result<RouteTimeouts, PolicyError> {
    let Some(t) = t else {
        return Ok(RouteTimeouts::default());
    };
    let request = duration(&path.field("request"), &t.request)?;
    let backend_request = duration(&path.field("backendRequest"), &t.backend_request)?;
    if let (Some(request), Some(backend)) = (request, backend_request)
        && backend > request
    {
        return Err(path
            .field("backendRequest")
            .error(Problem::Conflict(format!(
                "{} is longer than request ({}); make it at most as long",
                policy::duration::format(backend),
                policy::duration::format(request)
            ))));
    }
    Ok(RouteTimeouts {
        request,
        backend_request,
    })
}

/// `retry {attempts, codes, backoff}`: codes (none: the mesh's default set)
/// plus connect failures and resets, which never reached the application;
/// `backoff` is the first wait, doubling up to ten times it.
fn retry(path: &FieldPath, r: &HttpRouteRetry) -> Result<RetryPolicy, PolicyError> {
    let attempts = match r.attempts {
        None => RetryPolicy::DEFAULT_ATTEMPTS,
        Some(n) => {
            let max = RetryPolicy::MAX_ATTEMPTS;
            u32::try_from(n).ok().filter(|n| *n <= max).ok_or_else(|| {
                let (value, min, max) = (n.to_string(), "0".into(), max.to_string());
                path.field("attempts").error(if n < 0 {
                    Problem::Negative { value, min, max }
                } else {
                    Problem::OutOfRange { value, min, max }
                })
            })?
        }
    };
    let mut codes = Vec::new();
    for (i, code) in r.codes.iter().enumerate() {
        let ok = u16::try_from(*code)
            .ok()
            .filter(|c| (100..=599).contains(c));
        let Some(code) = ok else {
            return Err(path.field("codes").index(i).error(Problem::OutOfRange {
                value: code.to_string(),
                min: "100".into(),
                max: "599".into(),
            }));
        };
        codes.push(code);
    }
    let on = if codes.is_empty() {
        default_retry_on()
    } else {
        RetryOn::new(
            [RetryCondition::ConnectFailure, RetryCondition::Reset],
            &codes,
        )
    };
    let backoff = match duration(&path.field("backoff"), &r.backoff)? {
        Some(base) => Backoff {
            base,
            max: base * 10,
        },
        None => Backoff::default(),
    };
    let policy = RetryPolicy {
        attempts,
        on,
        backoff,
    };
    policy.validate(path)?;
    Ok(policy)
}
