//! The discovery index with no API server (Linkerd's policy-controller
//! pattern): apply, delete and reset Kubernetes objects and assert what a
//! subscriber receives.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_api::{
    Identity,
    crd::{GrpcRoute, HttpRoute, ResiliencePolicy, condition},
    policy::{DestinationState, RouteMatch, Target},
};
use weft_controller::discovery::{
    Index, IndexSettings, Kind, NotInMesh, ObjectRef, Resource, SharedIndex,
};

fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

fn service(ns: &str, name: &str, cluster_ip: &str) -> Resource {
    Resource::Service(from(json!({
        "metadata": { "namespace": ns, "name": name },
        "spec": { "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                  "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] },
    })))
}

/// An EndpointSlice of `svc` with port `http` 8080 and one endpoint per
/// `(ip, pod, ready)`.
fn slice(ns: &str, svc: &str, endpoints: &[(&str, &str, bool)]) -> Resource {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, pod, ready)| {
            json!({ "addresses": [ip], "conditions": { "ready": ready },
                    "targetRef": { "kind": "Pod", "namespace": ns, "name": pod },
                    "zone": "zone-a" })
        })
        .collect();
    Resource::EndpointSlice(from(json!({
        "metadata": { "namespace": ns, "name": format!("{svc}-abcde"),
                      "labels": { "kubernetes.io/service-name": svc } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        "endpoints": endpoints,
    })))
}

fn pod(ns: &str, name: &str, sa: &str, ip: &str, injected: bool) -> Resource {
    let annotations = if injected {
        json!({ "weft.io/injected-by": "0.1.0" })
    } else {
        json!({})
    };
    Resource::Pod(from(json!({
        "metadata": { "namespace": ns, "name": name, "annotations": annotations },
        "spec": { "serviceAccountName": sa, "containers": [{ "name": "app" }] },
        "status": { "podIP": ip, "podIPs": [{ "ip": ip }] },
    })))
}

fn split(v1: i64, v2: i64, generation: i64) -> Resource {
    Resource::HttpRoute(from::<HttpRoute>(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "namespace": "shop", "name": "checkout-split", "generation": generation,
                      "creationTimestamp": "2026-01-01T00:00:00Z" },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "checkout", "port": 80 }],
            "rules": [{ "backendRefs": [
                { "name": "checkout-v1", "port": 80, "weight": v1 },
                { "name": "checkout-v2", "port": 80, "weight": v2 },
            ] }],
        },
    })))
}

fn route_ref() -> ObjectRef {
    ObjectRef {
        kind: Kind::HttpRoute,
        namespace: "shop".into(),
        name: "checkout-split".into(),
    }
}

fn caller(ns: &str) -> Identity {
    Identity::new("cluster.local", ns, "web").expect("identity")
}

fn target(s: &str) -> Target {
    s.parse().expect("target")
}

/// checkout (the parent), checkout-v1 (two pods, one not ready), checkout-v2
/// (one pod), all meshed.
fn shop() -> Index {
    let mut index = Index::new(IndexSettings::default());
    for r in [
        service("shop", "checkout", "10.96.0.10"),
        service("shop", "checkout-v1", "10.96.0.11"),
        service("shop", "checkout-v2", "10.96.0.12"),
        slice(
            "shop",
            "checkout",
            &[("10.0.0.1", "v1-a", true), ("10.0.0.3", "v2-a", true)],
        ),
        slice(
            "shop",
            "checkout-v1",
            &[("10.0.0.1", "v1-a", true), ("10.0.0.2", "v1-b", false)],
        ),
        slice("shop", "checkout-v2", &[("10.0.0.3", "v2-a", true)]),
        pod("shop", "v1-a", "checkout", "10.0.0.1", true),
        pod("shop", "v1-b", "checkout", "10.0.0.2", true),
        pod("shop", "v2-a", "checkout", "10.0.0.3", true),
    ] {
        index.apply(r);
    }
    index
}

fn weights(state: &DestinationState) -> Vec<(String, u32)> {
    state.routes[0]
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.weight))
        .collect()
}

fn fresh(rx: &mut watch::Receiver<Arc<DestinationState>>) -> Option<Arc<DestinationState>> {
    rx.has_changed()
        .expect("sender alive")
        .then(|| rx.borrow_and_update().clone())
}

#[test]
fn a_90_10_split_with_identities_then_a_weight_change() {
    let mut index = shop();
    index.apply(split(90, 10, 1));
    index.publish();
    let mut rx = index
        .subscribe(
            &target("checkout.shop.svc.cluster.local:80"),
            &caller("shop"),
        )
        .expect("in mesh");
    let state = rx.borrow_and_update().clone();
    state.validate().expect("a valid snapshot");
    assert_eq!(
        weights(&state),
        [("checkout-v1".into(), 90), ("checkout-v2".into(), 10)]
    );
    // The route takes every request: the parent itself is no backend.
    let names: Vec<&str> = state.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["checkout-v1", "checkout-v2"]);
    let v1 = state.backend("checkout-v1").expect("v1");
    assert_eq!(v1.endpoints.len(), 1, "the unready endpoint is left out");
    assert_eq!(v1.endpoints[0].addr, "10.0.0.1:8080".parse().expect("addr"));
    assert_eq!(
        v1.endpoints[0].identity.as_ref().map(|i| i.to_string()),
        Some("spiffe://cluster.local/ns/shop/sa/checkout".into())
    );
    assert_eq!(v1.endpoints[0].zone.as_deref(), Some("zone-a"));

    // Nothing changed: no new snapshot.
    index.apply(split(90, 10, 1));
    index.publish();
    assert!(fresh(&mut rx).is_none());

    index.apply(split(50, 50, 2));
    index.publish();
    let next = fresh(&mut rx).expect("a new snapshot");
    assert!(next.version > state.version);
    assert_eq!(
        weights(&next),
        [("checkout-v1".into(), 50), ("checkout-v2".into(), 50)]
    );

    // The route gone: back to the Service itself, weight 1.
    index.delete(&route_ref());
    index.publish();
    let plain = fresh(&mut rx).expect("a new snapshot");
    assert!(plain.routes.is_empty());
    assert_eq!(plain.backends.len(), 1);
    assert_eq!(
        (plain.backends[0].name.as_str(), plain.backends[0].weight),
        ("checkout", 1)
    );
    assert_eq!(plain.backends[0].endpoints.len(), 2);
}

#[test]
fn a_bad_route_keeps_the_last_good_one_and_says_which_field() {
    let mut index = shop();
    index.apply(split(90, 10, 1));
    let mut rx = index
        .subscribe(&target("checkout:80"), &caller("shop"))
        .expect("in mesh");
    rx.borrow_and_update();
    index.publish();
    let mut statuses_changed = index.statuses_changed();
    statuses_changed.borrow_and_update();
    index.apply(split(90, -5, 2));
    index.publish();
    assert!(
        statuses_changed.has_changed().expect("alive"),
        "a status to write"
    );
    assert!(
        fresh(&mut rx).is_none(),
        "the last good route stays in force"
    );
    assert_eq!(
        weights(&rx.borrow()),
        [("checkout-v1".into(), 90), ("checkout-v2".into(), 10)]
    );
    let statuses = index.statuses();
    let status = statuses
        .iter()
        .find(|s| s.object == route_ref())
        .expect("a status");
    assert_eq!(status.generation, Some(2));
    assert_eq!(status.parents.len(), 1);
    let accepted = &status.conditions[0];
    assert_eq!(
        (accepted.type_, accepted.status, accepted.reason),
        (condition::ACCEPTED, false, condition::REASON_INVALID)
    );
    assert!(
        accepted
            .message
            .starts_with("spec.rules[0].backendRefs[1].weight: -5 is negative"),
        "{}",
        accepted.message
    );
    // Fixed: accepted again.
    index.apply(split(80, 20, 3));
    index.publish();
    assert!(fresh(&mut rx).is_some());
    let statuses = index.statuses();
    assert!(statuses[0].conditions.iter().all(|c| c.status));
}

#[test]
fn a_missing_backend_is_reported_and_the_route_stays() {
    let mut index = shop();
    index.apply(Resource::HttpRoute(from(json!({
        "metadata": { "namespace": "shop", "name": "checkout-split", "generation": 1 },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "checkout" }],
            "rules": [{ "backendRefs": [
                { "name": "checkout-v1", "port": 80, "weight": 90 },
                { "name": "checkout-v3", "port": 80, "weight": 10 },
            ] }],
        },
    }))));
    let rx = index
        .subscribe(&target("checkout:80"), &caller("shop"))
        .expect("in mesh");
    let state = rx.borrow().clone();
    assert_eq!(weights(&state)[1], ("checkout-v3".into(), 10));
    assert!(
        state
            .backend("checkout-v3")
            .expect("v3")
            .endpoints
            .is_empty()
    );
    let statuses = index.statuses();
    let resolved = &statuses[0].conditions[1];
    assert_eq!(
        (resolved.type_, resolved.status, resolved.reason),
        (
            condition::RESOLVED_REFS,
            false,
            condition::REASON_BACKEND_NOT_FOUND
        )
    );
    assert!(
        resolved
            .message
            .contains("spec.rules[0].backendRefs[1].name: \"checkout-v3\""),
        "{}",
        resolved.message
    );
    assert!(statuses[0].conditions[0].status, "still accepted");
}

#[test]
fn addresses_and_names_resolve_or_are_not_in_the_mesh() {
    let mut index = shop();
    let by_ip = index
        .subscribe(&target("10.96.0.11:80"), &caller("other"))
        .expect("a cluster IP");
    assert_eq!(by_ip.borrow().backends[0].name, "checkout-v1");
    assert_eq!(by_ip.borrow().backends[0].endpoints.len(), 1);

    let by_pod = index
        .subscribe(&target("10.0.0.3:8080"), &caller("other"))
        .expect("a pod IP");
    let state = by_pod.borrow().clone();
    assert_eq!(state.backends.len(), 1);
    let [endpoint] = state.backends[0].endpoints.as_slice() else {
        panic!("one endpoint");
    };
    assert_eq!(endpoint.addr, "10.0.0.3:8080".parse().expect("addr"));
    assert_eq!(
        endpoint.identity.as_ref().map(|i| i.service_account()),
        Some("checkout")
    );

    for outside in ["192.0.2.1:443", "api.example.com:443"] {
        assert_eq!(
            index.subscribe(&target(outside), &caller("shop")).err(),
            Some(NotInMesh {
                target: target(outside)
            })
        );
    }

    // Short names resolve in the caller's namespace.
    for name in [
        "checkout-v2:80",
        "checkout-v2.shop:80",
        "checkout-v2.shop.svc:80",
    ] {
        let rx = index.subscribe(&target(name), &caller("shop")).expect(name);
        assert_eq!(rx.borrow().backends[0].endpoints.len(), 1, "{name}");
    }
    // The same short name from another namespace is another (unknown) Service:
    // no backends, until it appears.
    let mut elsewhere = index
        .subscribe(&target("checkout-v2:80"), &caller("billing"))
        .expect("a service name");
    assert!(elsewhere.borrow_and_update().backends.is_empty());
    index.apply(service("billing", "checkout-v2", "10.96.1.1"));
    index.apply(slice("billing", "checkout-v2", &[("10.0.1.1", "b", true)]));
    index.publish();
    let filled = fresh(&mut elsewhere).expect("filled in");
    let endpoint = &filled.backends[0].endpoints[0];
    assert_eq!(endpoint.addr, "10.0.1.1:8080".parse().expect("addr"));
    assert_eq!(endpoint.identity, None, "no pod known: not meshed");
}

#[test]
fn a_resilience_policy_fills_in_and_a_bad_one_keeps_the_last_good() {
    let policy = |ratio: f64, generation: i64| {
        Resource::Resilience(from::<ResiliencePolicy>(json!({
            "apiVersion": "policy.weft.io/v1alpha1", "kind": "ResiliencePolicy",
            "metadata": { "namespace": "shop", "name": "checkout", "generation": generation },
            "spec": {
                "targetRef": { "group": "", "kind": "Service", "name": "checkout" },
                "retryBudget": { "ratio": ratio },
                "defaultRetry": { "attempts": 3, "codes": [503] },
                "circuitBreaker": { "consecutiveFailures": 3 },
                "timeouts": { "connect": "1s", "request": "500ms" },
                "loadBalancer": { "algorithm": "round-robin" },
            },
        })))
    };
    let mut index = shop();
    let mut rx = index
        .subscribe(&target("checkout:80"), &caller("shop"))
        .expect("in mesh");
    rx.borrow_and_update();
    index.apply(policy(0.3, 1));
    index.publish();
    let state = fresh(&mut rx).expect("a new snapshot");
    state.validate().expect("valid");
    assert_eq!(state.retry_budget.ratio, 0.3);
    assert_eq!(
        state.circuit_breaker.map(|c| c.consecutive_failures),
        Some(3)
    );
    assert_eq!(state.connect_timeout, Some(Duration::from_secs(1)));
    // No route: a catch-all carries the default retry and timeout.
    let [route] = state.routes.as_slice() else {
        panic!("one default route");
    };
    assert_eq!(route.name, "shop/checkout/default");
    assert_eq!(route.retry.as_ref().map(|r| r.attempts), Some(3));
    assert_eq!(route.timeouts.request, Some(Duration::from_millis(500)));

    // A route without retry gets the default one.
    index.apply(split(90, 10, 1));
    index.publish();
    let state = fresh(&mut rx).expect("a new snapshot");
    assert_eq!(state.routes.len(), 1, "the split takes every request");
    assert_eq!(state.routes[0].retry.as_ref().map(|r| r.attempts), Some(3));

    index.apply(policy(-0.1, 2));
    index.publish();
    assert!(fresh(&mut rx).is_none(), "the last good policy stays");
    let statuses = index.statuses();
    let status = statuses
        .iter()
        .find(|s| s.object.kind == Kind::Resilience)
        .expect("a status");
    assert_eq!(status.generation, Some(2));
    assert!(!status.conditions[0].status);
    assert!(
        status.conditions[0]
            .message
            .starts_with("spec.retryBudget.ratio: -0.1 is negative"),
        "{}",
        status.conditions[0].message
    );
}

#[test]
fn grpc_routes_and_resets() {
    let mut index = shop();
    index.apply(Resource::GrpcRoute(from::<GrpcRoute>(json!({
        "metadata": { "namespace": "shop", "name": "checkout-grpc" },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "checkout" }],
            "rules": [{
                "matches": [{ "method": { "service": "shop.v1.Checkout", "method": "PlaceOrder" } }],
                "backendRefs": [{ "name": "checkout-v2", "port": 80 }],
            }],
        },
    }))));
    let mut rx = index
        .subscribe(&target("checkout:80"), &caller("shop"))
        .expect("in mesh");
    let state = rx.borrow_and_update().clone();
    assert!(matches!(&state.routes[0].matches[0], RouteMatch::Grpc(m)
        if m.service.as_deref() == Some("shop.v1.Checkout")));
    // The method match can fall through: the parent stays a backend, weight 1.
    assert_eq!(state.backends[0].name, "checkout");
    assert_eq!(state.backends[0].weight, 1);
    assert_eq!(state.backend("checkout-v2").expect("v2").weight, 0);

    // A relist without the route and without checkout-v2's slice.
    index.reset(Kind::GrpcRoute, vec![]);
    index.reset(
        Kind::EndpointSlice,
        vec![
            slice("shop", "checkout", &[("10.0.0.1", "v1-a", true)]),
            slice("shop", "checkout-v1", &[("10.0.0.1", "v1-a", true)]),
        ],
    );
    index.publish();
    let state = fresh(&mut rx).expect("a new snapshot");
    assert!(state.routes.is_empty());
    assert_eq!(state.backends[0].endpoints.len(), 1);
    assert!(index.objects(Kind::GrpcRoute).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_changes_is_one_snapshot_75ms_later() {
    let cancel = CancellationToken::new();
    let index = SharedIndex::new(IndexSettings::default(), cancel.clone());
    for r in [
        service("shop", "checkout", "10.96.0.10"),
        service("shop", "checkout-v1", "10.96.0.11"),
        service("shop", "checkout-v2", "10.96.0.12"),
    ] {
        index.apply(r);
    }
    index.publish_now();
    let mut rx = index
        .subscribe(&target("checkout:80"), &caller("shop"))
        .expect("in mesh");
    rx.borrow_and_update();
    let start = tokio::time::Instant::now();
    for i in 0..50 {
        index.apply(split(100 - i, i, i + 1));
        tokio::time::advance(Duration::from_micros(400)).await;
    }
    rx.changed().await.expect("a snapshot");
    let elapsed = start.elapsed();
    assert!(
        (Duration::from_millis(75)..Duration::from_millis(80)).contains(&elapsed),
        "{elapsed:?}"
    );
    let state = rx.borrow_and_update().clone();
    assert_eq!(
        weights(&state),
        [("checkout-v1".into(), 51), ("checkout-v2".into(), 49)]
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(1), rx.changed())
            .await
            .is_err(),
        "one snapshot for the burst"
    );
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_thousand_subscribers_all_get_the_change() {
    let index = SharedIndex::new(IndexSettings::default(), CancellationToken::new());
    let mut objects = vec![];
    for i in 0..100 {
        objects.push(service(
            "shop",
            &format!("svc-{i}"),
            &format!("10.96.2.{i}"),
        ));
        objects.push(slice(
            "shop",
            &format!("svc-{i}"),
            &[("10.0.3.1", "p", true)],
        ));
    }
    objects.push(service("shop", "checkout", "10.96.0.10"));
    objects.push(service("shop", "checkout-v1", "10.96.0.11"));
    objects.push(service("shop", "checkout-v2", "10.96.0.12"));
    index.reset(Kind::Service, objects);
    index.apply(split(90, 10, 1));
    index.publish_now();
    let mut receivers = Vec::new();
    for i in 0..1000 {
        let name = match i % 4 {
            0 => "checkout:80",
            1 => "checkout.shop:80",
            2 => "checkout.shop.svc.cluster.local:80",
            _ => "10.96.0.10:80",
        };
        receivers.push(index.subscribe(&target(name), &caller("shop")).expect(name));
    }
    // And 100 other targets that do not change.
    let mut others: Vec<_> = (0..100)
        .map(|i| {
            index
                .subscribe(&target(&format!("svc-{i}:80")), &caller("shop"))
                .expect("in mesh")
        })
        .collect();
    index.apply(split(50, 50, 2));
    for rx in &mut receivers {
        rx.changed().await.expect("a snapshot");
        assert_eq!(weights(&rx.borrow())[1], ("checkout-v2".into(), 50));
    }
    for rx in &mut others {
        assert!(!rx.has_changed().expect("alive"));
    }
    assert_eq!(index.with(Index::subscriptions), 104);
}

/// An HTTPRoute in shop attached to checkout, created at `created`, with one
/// rule per entry of `rules` (each a list of matches) sending to checkout-v1.
fn matched_route(name: &str, created: &str, rules: Value) -> Resource {
    let rules: Vec<Value> = rules
        .as_array()
        .expect("rules")
        .iter()
        .map(|matches| json!({ "matches": matches, "backendRefs": [{ "name": "checkout-v1", "port": 80 }] }))
        .collect();
    Resource::HttpRoute(from::<HttpRoute>(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "namespace": "shop", "name": name, "creationTimestamp": created },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "checkout" }],
            "rules": rules,
        },
    })))
}

/// Each route of the snapshot as `name path-match`.
fn order(state: &DestinationState) -> Vec<String> {
    state
        .routes
        .iter()
        .map(|r| {
            let m = match r.matches.first() {
                Some(RouteMatch::Http(h)) => {
                    format!("{:?} {:?} headers={}", h.path, h.method, h.headers.len())
                }
                Some(RouteMatch::Grpc(g)) => format!("grpc {:?}/{:?}", g.service, g.method),
                None => "all".into(),
            };
            format!("{} {m}", r.name)
        })
        .collect()
}

#[test]
fn routes_are_ordered_by_match_precedence_across_routes_and_rules() {
    let mut index = shop();
    // The older route has a catch-all prefix and a method match; the newer
    // an exact path, a long prefix and a header match on a short one.
    index.apply(matched_route(
        "old",
        "2026-01-01T00:00:00Z",
        json!([
            [{ "path": { "type": "PathPrefix", "value": "/" } }],
            [{ "path": { "type": "PathPrefix", "value": "/api" }, "method": "POST" },
             { "path": { "type": "PathPrefix", "value": "/api/v2/" } }],
        ]),
    ));
    index.apply(matched_route(
        "new",
        "2026-02-01T00:00:00Z",
        json!([
            [{ "path": { "type": "Exact", "value": "/cart" } }],
            [{ "path": { "type": "PathPrefix", "value": "/api" },
               "headers": [{ "name": "x-canary", "value": "1" }] }],
            [{ "path": { "type": "PathPrefix", "value": "/api" } }],
        ]),
    ));
    let mut rx = index
        .subscribe(&target("checkout:80"), &caller("shop"))
        .expect("in mesh");
    let state = rx.borrow_and_update().clone();
    state.validate().expect("valid");
    let names: Vec<&str> = state.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "shop/new/0", // Exact /cart
            "shop/old/1", // PathPrefix /api/v2/ (longest prefix; the rule's second match)
            "shop/old/1", // PathPrefix /api + method (older than the header match's route)
            "shop/new/1", // PathPrefix /api + a header
            "shop/new/2", // PathPrefix /api
            "shop/old/0", // PathPrefix /
        ],
        "{:#?}",
        order(&state)
    );
    // Each (rule, match) is its own route with one match.
    assert!(
        state.routes.iter().all(|r| r.matches.len() == 1),
        "{:#?}",
        order(&state)
    );

    // Equal matches: the older route first, then by name.
    let mut index = shop();
    index.apply(matched_route(
        "b-newer",
        "2026-03-01T00:00:00Z",
        json!([[{ "path": { "type": "PathPrefix", "value": "/x" } }]]),
    ));
    index.apply(matched_route(
        "z-older",
        "2026-01-01T00:00:00Z",
        json!([[{ "path": { "type": "PathPrefix", "value": "/x" } }]]),
    ));
    index.apply(matched_route(
        "a-older",
        "2026-01-01T00:00:00Z",
        json!([[{ "path": { "type": "PathPrefix", "value": "/x" } }]]),
    ));
    let mut rx = index
        .subscribe(&target("checkout:80"), &caller("shop"))
        .expect("in mesh");
    let state = rx.borrow_and_update().clone();
    let names: Vec<&str> = state.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["shop/a-older/0", "shop/z-older/0", "shop/b-newer/0"]
    );
}

#[test]
fn grpc_matches_are_ordered_by_service_then_method() {
    let mut index = shop();
    index.apply(Resource::GrpcRoute(from::<GrpcRoute>(json!({
        "metadata": { "namespace": "shop", "name": "checkout-grpc",
                      "creationTimestamp": "2026-01-01T00:00:00Z" },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "checkout" }],
            "rules": [
                { "matches": [{ "method": { "service": "shop.v1.Checkout" } }],
                  "backendRefs": [{ "name": "checkout-v1", "port": 80 }] },
                { "matches": [{ "method": { "service": "shop.v1.Checkout", "method": "PlaceOrder" } }],
                  "backendRefs": [{ "name": "checkout-v2", "port": 80 }] },
            ],
        },
    }))));
    let mut rx = index
        .subscribe(&target("checkout:80"), &caller("shop"))
        .expect("in mesh");
    let state = rx.borrow_and_update().clone();
    assert_eq!(
        order(&state),
        [
            "shop/checkout-grpc/1 grpc Some(\"shop.v1.Checkout\")/Some(\"PlaceOrder\")",
            "shop/checkout-grpc/0 grpc Some(\"shop.v1.Checkout\")/None",
        ]
    );
}

#[test]
fn of_two_resilience_policies_on_one_service_the_older_is_in_force_and_the_other_conflicted() {
    let policy = |name: &str, created: &str, attempts: u32| {
        Resource::Resilience(from::<ResiliencePolicy>(json!({
            "apiVersion": "policy.weft.io/v1alpha1", "kind": "ResiliencePolicy",
            "metadata": { "namespace": "shop", "name": name, "creationTimestamp": created },
            "spec": {
                "targetRef": { "group": "", "kind": "Service", "name": "checkout" },
                "defaultRetry": { "attempts": attempts, "codes": [503] },
            },
        })))
    };
    let accepted = |index: &Index, name: &str| {
        let statuses = index.statuses();
        let status = statuses
            .iter()
            .find(|s| s.object.kind == Kind::Resilience && s.object.name == name)
            .expect("a status");
        status.conditions[0].clone()
    };
    let mut index = shop();
    let mut rx = index
        .subscribe(&target("checkout:80"), &caller("shop"))
        .expect("in mesh");
    index.apply(policy("newer", "2026-02-01T00:00:00Z", 5));
    index.apply(policy("older", "2026-01-01T00:00:00Z", 2));
    index.publish();
    let state = rx.borrow_and_update().clone();
    assert_eq!(state.routes[0].retry.as_ref().map(|r| r.attempts), Some(2));
    assert!(accepted(&index, "older").status);
    let conflicted = accepted(&index, "newer");
    assert!(!conflicted.status);
    assert_eq!(conflicted.reason, condition::REASON_CONFLICTED);
    assert!(
        conflicted.message.contains("shop/older") && conflicted.message.contains("checkout"),
        "{}",
        conflicted.message
    );

    // The older one goes: the newer one is in force and accepted.
    index.delete(&ObjectRef {
        kind: Kind::Resilience,
        namespace: "shop".into(),
        name: "older".into(),
    });
    index.publish();
    let state = fresh(&mut rx).expect("a new snapshot");
    assert_eq!(state.routes[0].retry.as_ref().map(|r| r.attempts), Some(5));
    assert!(accepted(&index, "newer").status);
}

#[test]
fn a_parent_service_that_does_not_exist_or_lacks_the_port_is_not_accepted_for_that_parent() {
    let mut index = shop();
    index.apply(Resource::HttpRoute(from::<HttpRoute>(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "namespace": "shop", "name": "three-parents" },
        "spec": {
            "parentRefs": [
                { "group": "", "kind": "Service", "name": "checkout", "port": 80 },
                { "group": "", "kind": "Service", "name": "checkout", "port": 9090 },
                { "group": "", "kind": "Service", "name": "ghost" },
            ],
            "rules": [{ "backendRefs": [{ "name": "checkout-v1", "port": 80 }] }],
        },
    }))));
    index.publish();
    let statuses = index.statuses();
    let status = statuses
        .iter()
        .find(|s| s.object.name == "three-parents")
        .expect("a status");
    assert_eq!(status.parents.len(), 3);
    assert!(status.conditions[0].status, "the route itself is valid");
    let accepted: Vec<(bool, &str, &str)> = status
        .parent_conditions
        .iter()
        .map(|c| (c[0].status, c[0].reason, c[0].message.as_str()))
        .collect();
    assert!(accepted[0].0, "{accepted:?}");
    assert_eq!(accepted[1].1, condition::REASON_NO_MATCHING_PARENT);
    assert!(
        accepted[1].2.contains("9090") && accepted[1].2.contains("80"),
        "{accepted:?}"
    );
    assert_eq!(accepted[2].1, condition::REASON_NO_MATCHING_PARENT);
    assert!(
        accepted[2].2.contains("shop/ghost does not exist"),
        "{accepted:?}"
    );
    // ResolvedRefs is the route's, for every parent.
    assert!(status.parent_conditions.iter().all(|c| c[1].status));
}
