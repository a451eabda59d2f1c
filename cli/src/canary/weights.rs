//! The canary's one decision, without I/O: given a service's HTTPRoute (or
//! none yet) and the weights asked for, the route to write, or why not.
//!
//! Weights are percentages: they must add up to 100, and every backend named
//! must be a Service that exists ([`Known`]). The rules changed are those that
//! already send to one of the named backends (a header-matched rule that sends
//! elsewhere is left alone); with no such rule, the route's catch-all rule is
//! used, and with no route at all one is made (`<service>-canary`, one rule).
//! Backends a changed rule lists but the request does not name get weight 0.

use std::collections::BTreeMap;
use std::fmt;

use weft_api::crd::{BackendReference, HttpRoute, HttpRouteRule, HttpRouteSpec, ParentReference};

/// The annotation that remembers the stable backend: the one that carried
/// the most traffic before the first `set`, where `rollback` returns to.
pub const STABLE_ANNOTATION: &str = "weft.io/canary-stable";

/// One `--weight BACKEND=PERCENT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Weight {
    pub backend: String,
    pub percent: u32,
}

impl std::str::FromStr for Weight {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "`{s}` is not BACKEND=PERCENT; write e.g. checkout-v2=10 (a whole number from 0 to 100)"
            )
        };
        let (backend, percent) = s.split_once('=').ok_or_else(bad)?;
        let percent = percent.trim().trim_end_matches('%');
        let percent: u32 = percent.parse().map_err(|_| bad())?;
        if backend.is_empty() || percent > 100 {
            return Err(bad());
        }
        Ok(Self {
            backend: backend.to_owned(),
            percent,
        })
    }
}

/// Why a change was refused; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanaryError {
    #[error(
        "the weights add up to {sum}%, not 100%; give every backend its share (e.g. --weight {example}=90 --weight other=10)"
    )]
    NotHundred { sum: u32, example: String },
    #[error("backend {backend:?} is listed twice")]
    Twice { backend: String },
    #[error(
        "backend {backend:?} does not exist in namespace {namespace:?}; known services: {known}"
    )]
    UnknownBackend {
        backend: String,
        namespace: String,
        known: String,
    },
    #[error(
        "service {service:?} has no HTTPRoute; set weights first (weft canary set {service} --weight ...)"
    )]
    NoRoute { service: String },
    #[error("backend {backend:?} is not a backend of {service:?}'s route (its backends: {known})")]
    NotInRoute {
        service: String,
        backend: String,
        known: String,
    },
    #[error(
        "{service:?}'s route names no stable backend to roll back to; use `weft canary set` with explicit weights"
    )]
    NoStable { service: String },
}

/// The Services that exist in the route's namespace (backend names are
/// checked against them).
pub struct Known<'a>(pub &'a [String]);

/// The weights the route gives now: the backends of its first rule that
/// splits traffic (a rule with backendRefs), in percent of that rule.
pub fn current(route: &HttpRoute) -> Vec<(String, f64)> {
    let Some(rule) = route.spec.rules.iter().find(|r| !r.backend_refs.is_empty()) else {
        return Vec::new();
    };
    let total: f64 = rule
        .backend_refs
        .iter()
        .map(|b| f64::from(b.weight().max(0)))
        .sum();
    rule.backend_refs
        .iter()
        .map(|b| {
            let share = if total > 0.0 {
                100.0 * f64::from(b.weight().max(0)) / total
            } else {
                0.0
            };
            (b.name.clone(), share)
        })
        .collect()
}

/// Checks `weights` and returns the route to write for `service` in
/// `namespace` (`existing`: its HTTPRoute, if it has one).
pub fn set(
    service: &str,
    namespace: &str,
    existing: Option<&HttpRoute>,
    weights: &[Weight],
    known: &Known<'_>,
) -> Result<HttpRoute, CanaryError> {
    let mut seen = BTreeMap::new();
    for w in weights {
        if seen.insert(w.backend.as_str(), w.percent).is_some() {
            return Err(CanaryError::Twice {
                backend: w.backend.clone(),
            });
        }
    }
    let sum: u32 = weights.iter().map(|w| w.percent).sum();
    if sum != 100 {
        return Err(CanaryError::NotHundred {
            sum,
            example: weights
                .first()
                .map_or_else(|| service.to_owned(), |w| w.backend.clone()),
        });
    }
    for w in weights {
        if !known.0.iter().any(|k| k == &w.backend) {
            return Err(CanaryError::UnknownBackend {
                backend: w.backend.clone(),
                namespace: namespace.to_owned(),
                known: known.0.join(", "),
            });
        }
    }
    let mut route = existing
        .cloned()
        .unwrap_or_else(|| new_route(service, namespace));
    if route
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(STABLE_ANNOTATION))
        .is_none()
    {
        // The stable backend is the one that carried the most before this
        // first change (the service itself when there was no route).
        let stable = current(&route)
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or_else(|| service.to_owned(), |(name, _)| name);
        route
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(STABLE_ANNOTATION.to_owned(), stable);
    }
    let named = |rule: &HttpRouteRule| {
        rule.backend_refs
            .iter()
            .any(|b| seen.contains_key(b.name.as_str()))
    };
    let mut targets: Vec<usize> = (0..route.spec.rules.len())
        .filter(|&i| named(&route.spec.rules[i]))
        .collect();
    if targets.is_empty() {
        match route.spec.rules.iter().position(|r| r.matches.is_empty()) {
            Some(i) => targets.push(i),
            None => {
                route.spec.rules.push(HttpRouteRule::default());
                targets.push(route.spec.rules.len() - 1);
            }
        }
    }
    for i in targets {
        let rule = &mut route.spec.rules[i];
        for b in &mut rule.backend_refs {
            b.weight = Some(seen.get(b.name.as_str()).map_or(0, |p| *p as i32));
        }
        let port = rule.backend_refs.first().and_then(|b| b.port);
        for w in weights {
            if !rule.backend_refs.iter().any(|b| b.name == w.backend) {
                rule.backend_refs.push(BackendReference {
                    name: w.backend.clone(),
                    port,
                    weight: Some(w.percent as i32),
                    ..BackendReference::default()
                });
            }
        }
    }
    Ok(route)
}

/// The weights that send everything to `backend`, which must be one of the
/// route's backends.
pub fn promote(
    service: &str,
    route: Option<&HttpRoute>,
    backend: &str,
) -> Result<Vec<Weight>, CanaryError> {
    let route = route.ok_or_else(|| CanaryError::NoRoute {
        service: service.to_owned(),
    })?;
    let backends = current(route);
    if !backends.iter().any(|(b, _)| b == backend) {
        return Err(CanaryError::NotInRoute {
            service: service.to_owned(),
            backend: backend.to_owned(),
            known: backends
                .iter()
                .map(|(b, _)| b.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(backends
        .into_iter()
        .map(|(b, _)| Weight {
            percent: if b == backend { 100 } else { 0 },
            backend: b,
        })
        .collect())
}

/// The weights that send everything back to the stable backend.
pub fn rollback(service: &str, route: Option<&HttpRoute>) -> Result<Vec<Weight>, CanaryError> {
    let r = route.ok_or_else(|| CanaryError::NoRoute {
        service: service.to_owned(),
    })?;
    let stable = r
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(STABLE_ANNOTATION))
        .cloned()
        .or_else(|| current(r).first().map(|(b, _)| b.clone()))
        .ok_or_else(|| CanaryError::NoStable {
            service: service.to_owned(),
        })?;
    promote(service, route, &stable)
}

fn new_route(service: &str, namespace: &str) -> HttpRoute {
    let mut route = HttpRoute::new(
        &format!("{service}-canary"),
        HttpRouteSpec {
            parent_refs: vec![ParentReference::service(service)],
            ..HttpRouteSpec::default()
        },
    );
    route.metadata.namespace = Some(namespace.to_owned());
    route
}

/// Whether `route` attaches to the Service `service` (any port).
pub fn attaches(route: &HttpRoute, service: &str) -> bool {
    route
        .spec
        .parent_refs
        .iter()
        .any(|p| p.is_service() && p.name == service)
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.backend, self.percent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Weight {
        s.parse().expect("weight")
    }

    fn known() -> Vec<String> {
        ["checkout", "checkout-v1", "checkout-v2"]
            .map(String::from)
            .to_vec()
    }

    fn split(v1: i32, v2: i32) -> HttpRoute {
        let mut route = new_route("checkout", "shop");
        route.spec.rules.push(HttpRouteRule {
            backend_refs: ["checkout-v1", "checkout-v2"]
                .iter()
                .zip([v1, v2])
                .map(|(name, weight)| BackendReference {
                    name: (*name).into(),
                    port: Some(8080),
                    weight: Some(weight),
                    ..BackendReference::default()
                })
                .collect(),
            ..HttpRouteRule::default()
        });
        route
    }

    #[test]
    fn weights_parse_and_bad_ones_say_what_to_write() {
        assert_eq!(
            w("checkout-v2=10"),
            Weight {
                backend: "checkout-v2".into(),
                percent: 10
            }
        );
        assert_eq!(w("v2=10%").percent, 10);
        for bad in ["v2", "v2=", "=10", "v2=101", "v2=-1", "v2=ten"] {
            let err = bad.parse::<Weight>().expect_err(bad);
            assert!(err.contains("BACKEND=PERCENT"), "{err}");
        }
    }

    #[test]
    fn set_changes_the_split_and_remembers_the_stable_backend() {
        let known = known();
        let route = set(
            "checkout",
            "shop",
            Some(&split(90, 10)),
            &[w("checkout-v1=50"), w("checkout-v2=50")],
            &Known(&known),
        )
        .expect("set");
        assert_eq!(
            current(&route),
            vec![("checkout-v1".into(), 50.0), ("checkout-v2".into(), 50.0)]
        );
        assert_eq!(route.spec.rules[0].backend_refs[1].port, Some(8080));
        let stable = route.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(stable[STABLE_ANNOTATION], "checkout-v1");
        let back = rollback("checkout", Some(&route)).expect("rollback");
        assert_eq!(back, vec![w("checkout-v1=100"), w("checkout-v2=0")]);
        let up = promote("checkout", Some(&route), "checkout-v2").expect("promote");
        assert_eq!(up, vec![w("checkout-v1=0"), w("checkout-v2=100")]);
    }

    #[test]
    fn a_service_without_a_route_gets_one() {
        let known = known();
        let route = set(
            "checkout",
            "shop",
            None,
            &[w("checkout-v1=90"), w("checkout-v2=10")],
            &Known(&known),
        )
        .expect("set");
        assert!(attaches(&route, "checkout"));
        assert_eq!(route.metadata.name.as_deref(), Some("checkout-canary"));
        assert_eq!(route.spec.rules.len(), 1);
        assert_eq!(current(&route)[1], ("checkout-v2".into(), 10.0));
    }

    #[test]
    fn bad_weights_change_nothing_and_say_why() {
        let known = known();
        let route = split(90, 10);
        let err = |weights: &[Weight]| {
            set("checkout", "shop", Some(&route), weights, &Known(&known))
                .expect_err("refused")
                .to_string()
        };
        assert!(err(&[w("checkout-v1=50"), w("checkout-v2=40")]).contains("add up to 90%"));
        assert!(err(&[w("checkout-v1=50"), w("checkout-v3=50")]).contains("checkout-v3"));
        assert!(err(&[w("checkout-v1=50"), w("checkout-v1=50")]).contains("twice"));
        let not_in = promote("checkout", Some(&route), "checkout-v9").expect_err("unknown");
        assert!(not_in.to_string().contains("checkout-v1, checkout-v2"));
        assert!(matches!(
            rollback("checkout", None),
            Err(CanaryError::NoRoute { .. })
        ));
    }

    #[test]
    fn rules_sending_elsewhere_are_left_alone() {
        let known = known();
        let mut route = split(90, 10);
        route.spec.rules.insert(
            0,
            HttpRouteRule {
                matches: vec![Default::default()],
                backend_refs: vec![BackendReference {
                    name: "checkout".into(),
                    ..BackendReference::default()
                }],
                ..HttpRouteRule::default()
            },
        );
        let out = set(
            "checkout",
            "shop",
            Some(&route),
            &[w("checkout-v1=0"), w("checkout-v2=100")],
            &Known(&known),
        )
        .expect("set");
        assert_eq!(out.spec.rules[0], route.spec.rules[0]);
        assert_eq!(out.spec.rules[1].backend_refs[0].weight, Some(0));
    }
}
