//! The inbound side of the index with no API server: apply Services, Pods,
//! Namespaces and AuthorizationPolicies, and assert what an `Inbound.Watch`
//! subscriber receives and what `policy_audit` reports.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::watch;
use weft_api::{
    crd::condition,
    policy::{InboundMode, InboundPolicy, InboundRequest, Principal},
};
use weft_controller::discovery::{
    FindingKind, Index, IndexSettings, Kind, ObjectRef, Resource, Severity, UnknownWorkload,
};

fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

/// Service `checkout` of `shop`: port 80 (`http`) -> container port `web`,
/// port 9090 (`admin`) -> 9090; selector `app: checkout`.
fn checkout_service() -> Resource {
    Resource::Service(from(json!({
        "metadata": { "namespace": "shop", "name": "checkout" },
        "spec": { "clusterIP": "10.96.0.10", "selector": { "app": "checkout" },
                  "ports": [{ "name": "http", "port": 80, "targetPort": "web" },
                            { "name": "admin", "port": 9090 }] },
    })))
}

/// A checkout pod: container ports `web` 8080 and 9090.
fn checkout_pod(name: &str, annotations: Value) -> Resource {
    Resource::Pod(from(json!({
        "metadata": { "namespace": "shop", "name": name, "labels": { "app": "checkout" },
                      "annotations": annotations },
        "spec": { "serviceAccountName": "checkout", "containers": [{
            "name": "app",
            "ports": [{ "name": "web", "containerPort": 8080 }, { "containerPort": 9090 }],
        }] },
        "status": { "podIP": "10.0.0.1", "podIPs": [{ "ip": "10.0.0.1" }] },
    })))
}

fn namespace(name: &str, mode: Option<&str>) -> Resource {
    let annotations = match mode {
        Some(m) => json!({ "config.weft.io/default-inbound-policy": m }),
        None => json!({}),
    };
    Resource::Namespace(from(json!({
        "metadata": { "name": name, "annotations": annotations },
    })))
}

fn authz(name: &str, spec: Value) -> Resource {
    Resource::AuthorizationPolicy(from(json!({
        "apiVersion": "policy.weft.io/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": { "namespace": "shop", "name": name, "generation": 1,
                      "creationTimestamp": "2026-01-01T00:00:00Z" },
        "spec": spec,
    })))
}

fn from_web(ports: Value) -> Value {
    json!({
        "targetRef": { "group": "", "kind": "Service", "name": "checkout" },
        "ports": ports,
        "rules": [{ "from": { "serviceAccounts": [{ "name": "web" }] } }],
    })
}

fn request(pod: &str, port: u16) -> InboundRequest {
    InboundRequest {
        workload: format!("shop/{pod}"),
        port,
    }
}

fn shop(settings: IndexSettings) -> Index {
    let mut index = Index::new(settings);
    index.apply(namespace("shop", None));
    index.apply(checkout_service());
    index.apply(checkout_pod("checkout-0", json!({})));
    index
}

fn fresh(rx: &mut watch::Receiver<Arc<InboundPolicy>>) -> Option<Arc<InboundPolicy>> {
    rx.has_changed()
        .expect("sender alive")
        .then(|| rx.borrow_and_update().clone())
}

fn names(policy: &InboundPolicy) -> Vec<&str> {
    policy
        .authorizations
        .iter()
        .map(|a| a.name.as_str())
        .collect()
}

#[test]
fn an_unknown_workload_is_refused() {
    let mut index = shop(IndexSettings::default());
    for workload in ["shop/nope", "checkout-0", "shop/", "/checkout-0", "a/b/c"] {
        let request = InboundRequest {
            workload: workload.into(),
            port: 8080,
        };
        assert_eq!(
            index.subscribe_inbound(&request).err(),
            Some(UnknownWorkload {
                workload: workload.into()
            })
        );
    }
    assert_eq!(
        index
            .workload_identity("shop/checkout-0")
            .expect("known")
            .to_string(),
        "spiffe://cluster.local/ns/shop/sa/checkout"
    );
}

#[test]
fn a_service_port_by_number_protects_its_target_port_and_denies_the_rest() {
    let mut index = shop(IndexSettings::default());
    let mut web = index
        .subscribe_inbound(&request("checkout-0", 8080))
        .expect("known pod");
    let mut admin = index
        .subscribe_inbound(&request("checkout-0", 9090))
        .expect("known pod");
    // No policy: the mesh default, no authorizations.
    assert_eq!(web.borrow().default_mode, InboundMode::AllowAll);
    assert!(web.borrow().authorizations.is_empty());

    // Service port 80 -> targetPort `web` -> container port 8080.
    index.apply(authz("checkout-from-web", from_web(json!([80]))));
    index.publish();
    let policy = fresh(&mut web).expect("the policy reaches the receiver");
    assert_eq!(policy.default_mode, InboundMode::Deny);
    assert_eq!(names(&policy), ["checkout-from-web"]);
    assert_eq!(
        policy.authorizations[0].from,
        [Principal::ServiceAccount {
            namespace: "shop".into(),
            name: "web".into()
        }]
    );
    // The admin port is not protected: unchanged, nothing sent.
    assert!(fresh(&mut admin).is_none());
    assert_eq!(admin.borrow().default_mode, InboundMode::AllowAll);

    // An unrelated change sends nothing.
    index.apply(namespace("other", Some("deny")));
    index.publish();
    assert!(fresh(&mut web).is_none());
}

#[test]
fn ports_by_name_and_empty_ports() {
    let mut index = shop(IndexSettings::default());
    // A container port name.
    index.apply(authz("by-container-name", from_web(json!(["web"]))));
    // A Service port name: `admin` -> targetPort 9090.
    index.apply(authz("by-service-name", from_web(json!(["admin"]))));
    // Pods by selector, every port.
    index.apply(authz(
        "all-ports",
        json!({ "podSelector": { "matchLabels": { "app": "checkout" } },
                "rules": [{ "from": { "namespaces": ["ops"] } }] }),
    ));
    // Selects another app: not applied.
    index.apply(authz(
        "other-app",
        json!({ "podSelector": { "matchLabels": { "app": "web" } }, "rules": [{}] }),
    ));
    let web = index
        .subscribe_inbound(&request("checkout-0", 8080))
        .expect("known pod");
    assert_eq!(names(&web.borrow()), ["all-ports", "by-container-name"]);
    let admin = index
        .subscribe_inbound(&request("checkout-0", 9090))
        .expect("known pod");
    assert_eq!(names(&admin.borrow()), ["all-ports", "by-service-name"]);
    let other = index
        .subscribe_inbound(&request("checkout-0", 7000))
        .expect("known pod");
    assert_eq!(names(&other.borrow()), ["all-ports"]);
    assert_eq!(other.borrow().default_mode, InboundMode::Deny);
}

#[test]
fn the_mode_comes_from_the_pod_then_the_namespace_then_the_mesh_and_audit_stays() {
    let mut index = shop(IndexSettings {
        default_inbound_mode: InboundMode::MeshOnly,
        ..IndexSettings::default()
    });
    let mut rx = index
        .subscribe_inbound(&request("checkout-0", 9090))
        .expect("known pod");
    assert_eq!(rx.borrow().default_mode, InboundMode::MeshOnly);
    index.apply(namespace("shop", Some("allow-all")));
    index.publish();
    assert_eq!(
        fresh(&mut rx).expect("changed").default_mode,
        InboundMode::AllowAll
    );
    index.apply(checkout_pod(
        "checkout-0",
        json!({ "config.weft.io/default-inbound-policy": "audit" }),
    ));
    index.publish();
    assert_eq!(
        fresh(&mut rx).expect("changed").default_mode,
        InboundMode::Audit
    );
    // A policy protecting the port: audit stays audit.
    index.apply(authz("checkout-from-web", from_web(json!([]))));
    index.publish();
    let policy = fresh(&mut rx).expect("changed");
    assert_eq!(policy.default_mode, InboundMode::Audit);
    assert_eq!(names(&policy), ["checkout-from-web"]);
    // A value that names no mode is ignored: the namespace's applies, and
    // the policy escalates it to deny.
    index.apply(checkout_pod(
        "checkout-0",
        json!({ "config.weft.io/default-inbound-policy": "open" }),
    ));
    index.publish();
    assert_eq!(
        fresh(&mut rx).expect("changed").default_mode,
        InboundMode::Deny
    );
    // Deleting the policy returns to the namespace's mode.
    index.delete(&ObjectRef {
        kind: Kind::AuthorizationPolicy,
        namespace: "shop".into(),
        name: "checkout-from-web".into(),
    });
    index.publish();
    let policy = fresh(&mut rx).expect("changed");
    assert_eq!(policy.default_mode, InboundMode::AllowAll);
    assert!(policy.authorizations.is_empty());
}

#[test]
fn a_malformed_policy_keeps_its_last_good_version_and_says_why() {
    let mut index = shop(IndexSettings::default());
    index.apply(authz("checkout-from-web", from_web(json!([80]))));
    let mut rx = index
        .subscribe_inbound(&request("checkout-0", 8080))
        .expect("known pod");
    assert_eq!(names(&rx.borrow()), ["checkout-from-web"]);
    index.apply(authz(
        "checkout-from-web",
        json!({
            "targetRef": { "group": "", "kind": "Service", "name": "checkout" },
            "rules": [{ "from": { "identities": ["spiffe://cluster.local/ns/x/sa/we*"] } }],
        }),
    ));
    index.publish();
    assert!(fresh(&mut rx).is_none(), "the last good version stays");
    let status = index
        .statuses()
        .into_iter()
        .find(|s| s.object.kind == Kind::AuthorizationPolicy)
        .expect("a status");
    let accepted = &status.conditions[0];
    assert_eq!(accepted.type_, condition::ACCEPTED);
    assert!(!accepted.status);
    assert_eq!(accepted.reason, condition::REASON_INVALID);
    assert!(
        accepted
            .message
            .starts_with("spec.rules[0].from.identities[0]: "),
        "{}",
        accepted.message
    );
    assert!(
        accepted.message.contains("last good version stays"),
        "{}",
        accepted.message
    );
    let audit = index.policy_audit();
    let invalid = audit
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::Invalid)
        .expect("an Invalid finding");
    assert_eq!(invalid.severity, Severity::High);
    assert_eq!(invalid.object, "AuthorizationPolicy shop/checkout-from-web");
    assert!(invalid.message.contains("spec.rules[0].from.identities[0]"));

    // Fixed: in force, and the live receiver gets it.
    index.apply(authz(
        "checkout-from-web",
        json!({
            "targetRef": { "group": "", "kind": "Service", "name": "checkout" },
            "rules": [{ "from": { "namespaces": ["front"] } }],
        }),
    ));
    index.publish();
    let policy = fresh(&mut rx).expect("the fix reaches the receiver");
    assert_eq!(
        policy.authorizations[0].from,
        [Principal::Namespace("front".into())]
    );
    assert!(index.statuses().iter().all(|s| s.conditions[0].status));
}

#[test]
fn a_missing_target_service_is_reported_and_protects_nothing() {
    let mut index = shop(IndexSettings::default());
    index.apply(authz(
        "ghost",
        json!({ "targetRef": { "group": "", "kind": "Service", "name": "ghost" }, "rules": [{}] }),
    ));
    let rx = index
        .subscribe_inbound(&request("checkout-0", 8080))
        .expect("known pod");
    assert!(rx.borrow().authorizations.is_empty());
    let status = index
        .statuses()
        .into_iter()
        .find(|s| s.object.name == "ghost")
        .expect("a status");
    assert!(status.conditions[0].status, "accepted");
    assert_eq!(
        status.conditions[1].reason,
        condition::REASON_TARGET_NOT_FOUND
    );
}

#[test]
fn the_audit_shows_who_gets_in_and_what_to_fix() {
    let mut index = shop(IndexSettings::default());
    // A Service with no policy: High (allow-all lets plaintext in).
    index.apply(Resource::Service(from(json!({
        "metadata": { "namespace": "shop", "name": "cart" },
        "spec": { "selector": { "app": "cart" }, "ports": [{ "port": 80 }] },
    }))));
    // checkout's port 80 protected, plaintext allowed for GETs on /health.
    index.apply(authz(
        "checkout-from-web",
        json!({
            "targetRef": { "group": "", "kind": "Service", "name": "checkout" },
            "ports": [80],
            "rules": [{ "from": { "serviceAccounts": [{ "name": "web" }],
                                  "identities": ["spiffe://cluster.local/ns/ops/sa/*"] },
                        "http": [{ "methods": ["GET"], "pathPrefixes": ["/health"] }] }],
            "allowPlaintext": true,
        }),
    ));
    // Selects nothing; names a port nobody has.
    index.apply(authz(
        "nobody",
        json!({ "podSelector": { "matchLabels": { "app": "nobody" } }, "rules": [{}] }),
    ));
    index.apply(authz(
        "wrong-port",
        json!({ "podSelector": { "matchLabels": { "app": "checkout" } },
                "ports": ["grpc"], "rules": [{}] }),
    ));
    let audit = index.policy_audit();
    let json = serde_json::to_value(&audit).expect("serializes");
    assert_eq!(json["services"][1]["name"], "checkout");
    let port80 = &json["services"][1]["ports"][0];
    assert_eq!(port80["port"], 80);
    assert_eq!(port80["defaultMode"], "deny");
    assert_eq!(port80["policies"], json!(["checkout-from-web"]));
    assert_eq!(port80["plaintextAllowed"], true);
    assert_eq!(
        port80["allowed"],
        json!([
            "plaintext (HTTP: GET /health)",
            "service account shop/web (HTTP: GET /health)",
            "spiffe://cluster.local/ns/ops/sa/* (HTTP: GET /health)",
        ])
    );
    let port9090 = &json["services"][1]["ports"][1];
    assert_eq!(port9090["defaultMode"], "allow-all");
    assert_eq!(
        port9090["allowed"],
        json!(["any mesh identity", "plaintext"])
    );

    let found: Vec<(Severity, FindingKind, &str)> = audit
        .findings
        .iter()
        .map(|f| (f.severity, f.kind, f.object.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (Severity::High, FindingKind::NoPolicy, "Service shop/cart"),
            (
                Severity::High,
                FindingKind::AllowsPlaintext,
                "Service shop/checkout"
            ),
            (
                Severity::Medium,
                FindingKind::AllowsPlaintext,
                "AuthorizationPolicy shop/checkout-from-web"
            ),
            (
                Severity::Medium,
                FindingKind::MatchesNothing,
                "AuthorizationPolicy shop/nobody"
            ),
            (
                Severity::Medium,
                FindingKind::MatchesNothing,
                "AuthorizationPolicy shop/wrong-port"
            ),
        ]
    );
    let wrong = &audit.findings[4].message;
    assert!(wrong.starts_with("spec.ports[0]: \"grpc\""), "{wrong}");
    assert!(audit.findings[1].message.contains("port 9090"));
}

/// A Service with no pods of its own that a route splits (a canary's parent)
/// gets no finding: its traffic reaches the route's backends, audited
/// themselves. Without the route it is flagged as any unprotected Service.
#[test]
fn a_route_parent_without_pods_is_not_flagged() {
    let mut index = shop(IndexSettings::default());
    index.apply(Resource::Service(from(json!({
        "metadata": { "namespace": "shop", "name": "cart" },
        "spec": { "selector": { "app": "cart" }, "ports": [{ "port": 80 }] },
    }))));
    let flagged = |index: &Index| {
        index
            .policy_audit()
            .findings
            .iter()
            .any(|f| f.object == "Service shop/cart")
    };
    assert!(flagged(&index));
    index.apply(Resource::HttpRoute(from(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "namespace": "shop", "name": "cart-split" },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "cart", "port": 80 }],
            "rules": [{ "backendRefs": [{ "name": "checkout", "port": 80 }] }],
        },
    }))));
    assert!(!flagged(&index), "{:#?}", index.policy_audit().findings);
}
