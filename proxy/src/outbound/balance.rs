//! Choosing where a request goes: the route it matches, a backend by weight
//! (the traffic split), then an endpoint of that backend by power of two
//! choices over peak-EWMA latency (or round robin), among endpoints the
//! circuit breaker has not ejected.

use std::sync::Arc;
use std::time::Instant;

use rand::Rng;
use weft_api::policy::{LoadBalancer, Route};

use super::upstream::{EndpointRuntime, Resolved, Runtime};

/// The route a request takes: the first whose matches match (a route with no
/// matches takes every request). `None`: the target's backends by weight.
pub fn route<'a>(
    routes: &'a [Route],
    method: &str,
    path: &str,
    headers: &http::HeaderMap,
) -> Option<(usize, &'a Route)> {
    if routes.is_empty() {
        return None;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    routes.iter().enumerate().find(|(_, r)| {
        r.matches.is_empty() || r.matches.iter().any(|m| m.matches(method, path, header))
    })
}

/// Picks a backend (an index into the snapshot's backends) with probability
/// proportional to its weight: the route's backend refs when it has some,
/// else the target's backends. Backends with no endpoints are skipped.
/// `route` is the route and its index in the snapshot's routes (the index of
/// its refs' backends, [`Resolved::route_backends`]).
pub(crate) fn backend(resolved: &Resolved, route: Option<(usize, &Route)>) -> Option<usize> {
    let state = &resolved.state;
    let has_endpoints = |i: usize| resolved.backends.get(i).is_some_and(|e| !e.is_empty());
    let mut rng = rand::rng();
    match route.filter(|(_, r)| !r.backends.is_empty()) {
        Some((index, _)) => {
            let refs = resolved
                .route_backends
                .get(index)
                .map_or(&[][..], Vec::as_slice);
            let live = || {
                refs.iter()
                    .copied()
                    .filter(|&(i, weight)| weight > 0 && has_endpoints(i))
            };
            weighted(&mut rng, live)
        }
        None => {
            let live = || {
                state
                    .backends
                    .iter()
                    .enumerate()
                    .filter(|(i, b)| b.weight > 0 && has_endpoints(*i))
                    .map(|(i, b)| (i, b.weight))
            };
            weighted(&mut rng, live)
        }
    }
}

fn weighted<I: Iterator<Item = (usize, u32)>>(
    rng: &mut impl Rng,
    live: impl Fn() -> I,
) -> Option<usize> {
    let total: u64 = live().map(|(_, w)| u64::from(w)).sum();
    if total == 0 {
        return None;
    }
    let mut ticket = rng.random_range(0..total);
    live()
        .find(|(_, w)| {
            let w = u64::from(*w);
            if ticket < w {
                true
            } else {
                ticket -= w;
                false
            }
        })
        .map(|(i, _)| i)
}

/// Picks an endpoint of `endpoints` not ejected (all of them when every one
/// is ejected: the breaker never leaves a backend with nothing).
pub(crate) fn endpoint(
    runtime: &Runtime,
    endpoints: &[Arc<EndpointRuntime>],
    lb: &LoadBalancer,
    avoid: Option<&Arc<EndpointRuntime>>,
) -> Option<Arc<EndpointRuntime>> {
    match endpoints.len() {
        0 => return None,
        1 => return endpoints.first().cloned(),
        _ => {}
    }
    let now = Instant::now();
    let usable =
        |e: &&Arc<EndpointRuntime>| e.available(now) && avoid.is_none_or(|a| !Arc::ptr_eq(a, e));
    if let LoadBalancer::RoundRobin = lb {
        let start = runtime.next_round_robin();
        let n = endpoints.len();
        return (0..n)
            .map(|k| &endpoints[(start + k) % n])
            .find(usable)
            .or_else(|| endpoints.get(start % n))
            .cloned();
    }
    let mut rng = rand::rng();
    let n = endpoints.len();
    let a = &endpoints[rng.random_range(0..n)];
    let mut b = &endpoints[rng.random_range(0..n - 1)];
    if Arc::ptr_eq(a, b) {
        b = &endpoints[n - 1];
    }
    match (usable(&a), usable(&b)) {
        (true, true) => Some(if a.cost(lb) <= b.cost(lb) { a } else { b }.clone()),
        (true, false) => Some(a.clone()),
        (false, true) => Some(b.clone()),
        // Both drawn are out: the least loaded of those usable, if any.
        (false, false) => endpoints
            .iter()
            .filter(usable)
            .min_by(|x, y| x.cost(lb).total_cmp(&y.cost(lb)))
            .or_else(|| {
                endpoints
                    .iter()
                    .find(|e| e.available(now))
                    .or(endpoints.first())
            })
            .cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, Endpoint, Target};
    use crate::outbound::upstream::Upstream;

    fn ep(port: u16) -> Endpoint {
        Endpoint {
            addr: ([127, 0, 0, 1], port).into(),
            identity: "spiffe://cluster.local/ns/a/sa/b".parse().unwrap(),
        }
    }

    #[test]
    fn follows_weights() {
        let target = Target {
            name: "checkout".into(),
            opaque: false,
            backends: vec![
                Backend {
                    name: "v1".into(),
                    weight: 90,
                    endpoints: vec![ep(1)],
                },
                Backend {
                    name: "v2".into(),
                    weight: 10,
                    endpoints: vec![ep(2)],
                },
                Backend {
                    name: "v3".into(),
                    weight: 0,
                    endpoints: vec![ep(3)],
                },
                Backend {
                    name: "v4".into(),
                    weight: 50,
                    endpoints: vec![],
                },
            ],
        };
        let upstream = Upstream::fixed("checkout", false, target.to_state());
        let resolved = upstream.resolve();
        let mut counts = [0u32; 4];
        for _ in 0..20_000 {
            counts[backend(&resolved, None).unwrap()] += 1;
        }
        assert_eq!(counts[2] + counts[3], 0);
        let share = f64::from(counts[1]) / 20_000.0;
        assert!((0.08..0.12).contains(&share), "v2 share {share}");
    }

    #[test]
    fn a_route_splits_between_its_refs_by_weight() {
        let target = Target {
            name: "checkout".into(),
            opaque: false,
            backends: vec![
                Backend {
                    name: "v1".into(),
                    weight: 1,
                    endpoints: vec![ep(1)],
                },
                Backend {
                    name: "v2".into(),
                    weight: 1,
                    endpoints: vec![ep(2)],
                },
                Backend {
                    name: "v3".into(),
                    weight: 1,
                    endpoints: vec![ep(3)],
                },
            ],
        };
        let refs = |refs: &[(&str, u32)]| {
            refs.iter()
                .map(|(name, weight)| weft_api::policy::BackendRef {
                    name: (*name).into(),
                    weight: *weight,
                })
                .collect()
        };
        let route = |name: &str, backends| Route {
            name: name.into(),
            matches: vec![],
            backends,
            timeouts: Default::default(),
            retry: None,
        };
        let mut state = target.to_state();
        state.routes = vec![
            route("none", refs(&[("gone", 5)])),
            route(
                "split",
                refs(&[("v3", 90), ("gone", 50), ("v1", 0), ("v2", 10)]),
            ),
        ];
        let upstream = Upstream::fixed("checkout", false, state);
        let resolved = upstream.resolve();
        let none = (0, &resolved.state.routes[0]);
        assert_eq!(backend(&resolved, Some(none)), None);
        let split = (1, &resolved.state.routes[1]);
        let mut counts = [0u32; 3];
        for _ in 0..20_000 {
            counts[backend(&resolved, Some(split)).unwrap()] += 1;
        }
        assert_eq!(counts[0], 0, "a ref of weight 0 takes nothing");
        let share = f64::from(counts[1]) / 20_000.0;
        assert!((0.08..0.12).contains(&share), "v2 share {share}");
    }

    #[test]
    fn no_endpoints_gives_none() {
        let target = Target {
            name: "x".into(),
            opaque: false,
            backends: vec![],
        };
        let upstream = Upstream::fixed("x", false, target.to_state());
        assert!(backend(&upstream.resolve(), None).is_none());
    }

    #[test]
    fn power_of_two_choices_prefers_the_faster_endpoint() {
        let target = Target {
            name: "x".into(),
            opaque: false,
            backends: vec![Backend {
                name: "x".into(),
                weight: 1,
                endpoints: vec![ep(1), ep(2)],
            }],
        };
        let upstream = Upstream::fixed("x", false, target.to_state());
        let resolved = upstream.resolve();
        let lb = LoadBalancer::default();
        let metrics = crate::metrics::Metrics::new();
        let ctx = super::super::upstream::BreakerContext {
            breaker: None,
            siblings: &resolved.backends[0],
            metrics: &metrics,
            target: "x",
            backend: "x",
        };
        let eps = &resolved.backends[0];
        eps[0].record(
            std::time::Duration::from_millis(100),
            super::super::upstream::Outcome::Success,
            &lb,
            &ctx,
        );
        eps[1].record(
            std::time::Duration::from_millis(1),
            super::super::upstream::Outcome::Success,
            &lb,
            &ctx,
        );
        let fast = (0..1000)
            .filter(|_| {
                endpoint(upstream.runtime(), eps, &lb, None)
                    .unwrap()
                    .addr()
                    .port()
                    == 2
            })
            .count();
        assert_eq!(fast, 1000, "with two endpoints both are always compared");
    }
}
