//! `weft audit edges`: who called whom, as the serving proxies saw it. The
//! caller is the inbound `peer_identity` (none: a plaintext, unauthenticated
//! caller), the callee the serving proxy's own identity; each edge carries its
//! requests (`weft_requests_total`), connections (`weft_tcp_open_total`),
//! whether it was mTLS, and the policies that decided its calls
//! (`weft_inbound_authz_total`: allowed, denied, audited).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use super::identities::{self, CERTIFICATE};
use super::report::{Edge as GraphEdge, Finding, Graph, Report, Severity};
use super::source::{self, Query, Scraped, Source};
use super::table::{Table, Tone};

/// How a plaintext caller is named.
pub const PLAINTEXT: &str = "plaintext (unauthenticated)";

const REQUESTS: &str = "weft_requests_total";
const CONNECTIONS: &str = "weft_tcp_open_total";
const AUTHZ: &str = "weft_inbound_authz_total";

const QUERIES: [Query; 4] = [
    Query {
        name: REQUESTS,
        selector: "direction=\"inbound\"",
        counter: true,
    },
    Query {
        name: CONNECTIONS,
        selector: "direction=\"inbound\"",
        counter: true,
    },
    Query {
        name: AUTHZ,
        selector: "",
        counter: true,
    },
    Query {
        name: CERTIFICATE,
        selector: "",
        counter: false,
    },
];

/// Calls one policy decided on an edge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicyCount {
    pub policy: String,
    pub allowed: u64,
    pub denied: u64,
    pub audited: u64,
}

/// One caller -> callee edge, mTLS or not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditEdge {
    /// The caller's identity, or [`PLAINTEXT`].
    pub caller: String,
    pub caller_identity: Option<String>,
    /// The serving proxy's identity (or `unknown (<workload>)`).
    pub callee: String,
    /// The workloads that served it.
    pub workloads: Vec<String>,
    pub mtls: bool,
    pub requests: u64,
    pub connections: u64,
    pub policies: Vec<PolicyCount>,
    pub allowed: u64,
    pub denied: u64,
    pub audited: u64,
}

pub async fn report(source: &Source, window: Option<Duration>) -> anyhow::Result<Report> {
    if window.is_some() && matches!(source, Source::Proxies(_)) {
        anyhow::bail!(
            "--window needs --prometheus: a proxy's admin server has its counters since it started, not their history"
        );
    }
    let scraped = source.read(&QUERIES, window).await?;
    Ok(build(source, window, &scraped))
}

fn count(value: f64) -> u64 {
    // Counters and rounded increases: whole, non-negative numbers.
    value.max(0.0).round() as u64
}

/// The edges in `scraped`, by callee, caller, then mTLS first.
pub fn edges(scraped: &Scraped) -> Vec<AuditEdge> {
    let identity_of: BTreeMap<String, String> = scraped
        .samples
        .iter()
        .filter(|s| s.name == CERTIFICATE)
        .map(|s| (source::workload(s), s.label("identity").to_owned()))
        .collect();
    let mut edges: BTreeMap<(String, String, bool), AuditEdge> = BTreeMap::new();
    let mut workloads: BTreeMap<(String, String, bool), BTreeSet<String>> = BTreeMap::new();
    let mut policies: BTreeMap<(String, String, bool), BTreeMap<String, PolicyCount>> =
        BTreeMap::new();
    for s in &scraped.samples {
        if ![REQUESTS, CONNECTIONS, AUTHZ].contains(&s.name.as_str()) {
            continue;
        }
        let n = count(s.value);
        if n == 0 {
            continue;
        }
        let workload = source::workload(s);
        let callee = identity_of
            .get(&workload)
            .cloned()
            .unwrap_or_else(|| format!("unknown ({workload})"));
        let peer = s.label("peer_identity");
        let caller = if peer.is_empty() { PLAINTEXT } else { peer };
        let mtls = s.label("tls") == "true";
        let key = (callee.clone(), caller.to_owned(), mtls);
        let edge = edges.entry(key.clone()).or_insert_with(|| AuditEdge {
            caller: caller.to_owned(),
            caller_identity: (!peer.is_empty()).then(|| peer.to_owned()),
            callee,
            mtls,
            ..AuditEdge::default()
        });
        workloads.entry(key.clone()).or_default().insert(workload);
        match s.name.as_str() {
            REQUESTS => edge.requests += n,
            CONNECTIONS => edge.connections += n,
            _ => {
                let p = policies
                    .entry(key)
                    .or_default()
                    .entry(s.label("policy").to_owned())
                    .or_insert_with(|| PolicyCount {
                        policy: s.label("policy").to_owned(),
                        ..PolicyCount::default()
                    });
                match s.label("decision") {
                    "allowed" => {
                        p.allowed += n;
                        edge.allowed += n;
                    }
                    "denied" => {
                        p.denied += n;
                        edge.denied += n;
                    }
                    "audited" => {
                        p.audited += n;
                        edge.audited += n;
                    }
                    _ => {}
                }
            }
        }
    }
    let mut out: Vec<AuditEdge> = edges
        .into_iter()
        .map(|(key, mut edge)| {
            edge.workloads = workloads
                .remove(&key)
                .unwrap_or_default()
                .into_iter()
                .collect();
            edge.policies = policies
                .remove(&key)
                .unwrap_or_default()
                .into_values()
                .collect();
            edge
        })
        .collect();
    out.sort_by(|a, b| (&a.callee, &a.caller, !a.mtls).cmp(&(&b.callee, &b.caller, !b.mtls)));
    out
}

/// A short node label: `ns/sa` for a SPIFFE identity.
pub fn short(identity: &str) -> String {
    identity
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .map_or(identity, |(_, path)| path)
        .replace("ns/", "")
        .replace("/sa/", "/")
}

fn policy_cell(edge: &AuditEdge) -> String {
    if edge.policies.is_empty() {
        return "-".into();
    }
    edge.policies
        .iter()
        .map(|p| p.policy.clone())
        .collect::<Vec<_>>()
        .join(", ")
}

fn build(source: &Source, window: Option<Duration>, scraped: &Scraped) -> Report {
    let edges = edges(scraped);
    let over = match window {
        Some(w) => format!(
            "over the last {} (Prometheus increase, rounded)",
            humantime::format_duration(w)
        ),
        None => "since each proxy started".to_owned(),
    };
    let mut report = Report::new("Who called whom", format!("{source}, {over}"));
    if window.is_none() {
        report.notes.push(format!(
            "counts are the proxies' counters {over} (a restarted proxy starts again from zero){}",
            if matches!(source, Source::Prometheus(_)) {
                "; pass --window for a time window"
            } else {
                ""
            }
        ));
    }
    let mut table = Table::new(&[
        "CALLER",
        "CALLEE",
        "MTLS",
        "REQUESTS",
        "CONNECTIONS",
        "POLICY",
        "ALLOWED",
        "DENIED",
        "AUDITED",
    ]);
    let mut graph = Graph::default();
    let mut findings = Vec::new();
    for e in &edges {
        let tone = match (e.mtls, e.denied > 0) {
            (false, _) => Tone::Bad,
            (true, true) => Tone::Warn,
            (true, false) => Tone::Good,
        };
        table.push(
            tone,
            vec![
                e.caller.clone(),
                e.callee.clone(),
                if e.mtls { "yes" } else { "NO" }.into(),
                e.requests.to_string(),
                e.connections.to_string(),
                policy_cell(e),
                e.allowed.to_string(),
                e.denied.to_string(),
                e.audited.to_string(),
            ],
        );
        graph.node(&e.caller, &short(&e.caller), e.caller_identity.is_none());
        graph.node(&e.callee, &short(&e.callee), false);
        graph.edges.push(GraphEdge {
            from: e.caller.clone(),
            to: e.callee.clone(),
            mtls: e.mtls,
            label: policy_cell(e),
            denied: e.denied,
        });
        let object = format!("{} -> {}", e.caller, e.callee);
        if !e.mtls && e.allowed + e.audited + e.requests > 0 {
            findings.push(Finding {
                severity: Severity::High,
                kind: "Plaintext".into(),
                object: object.clone(),
                message: format!(
                    "{} requests and {} connections reached {} without mTLS (allowed by {}); set the default inbound mode to mesh-only or an AuthorizationPolicy that refuses plaintext",
                    e.requests,
                    e.connections,
                    e.workloads.join(", "),
                    policy_cell(e)
                ),
            });
        }
        if e.denied > 0 {
            findings.push(Finding {
                severity: Severity::Medium,
                kind: "Denied".into(),
                object: object.clone(),
                message: format!("{} calls were refused by {}", e.denied, policy_cell(e)),
            });
        }
        if e.audited > 0 {
            findings.push(Finding {
                severity: Severity::Low,
                kind: "Audited".into(),
                object,
                message: format!(
                    "{} calls were let through by the audit mode that a deny would refuse",
                    e.audited
                ),
            });
        }
    }
    findings.extend(identities::reach_findings(scraped));
    let plaintext = edges.iter().filter(|e| !e.mtls).count();
    report.summary = format!("{} edges, {plaintext} plaintext, {over}", edges.len());
    report.tables.push(("Edges".into(), table));
    report.graph = Some(graph);
    report.json = serde_json::json!({
        "source": source.to_string(),
        "window": window.map(|w| humantime::format_duration(w).to_string()),
        "counted": over,
        "edges": edges,
        "unreachable": scraped.unreachable,
        "findings": findings,
    });
    report.findings = findings;
    report
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is the failure report

    use super::*;
    use crate::demo::scrape::Sample;

    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
    const CHECKOUT: &str = "spiffe://cluster.local/ns/shop/sa/checkout";

    fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            name: name.into(),
            labels: labels
                .iter()
                .chain(&[("instance", "127.0.0.1:1")])
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value,
        }
    }

    #[test]
    fn one_edge_per_caller_callee_and_mtls_with_its_policies() {
        let scraped = Scraped {
            samples: vec![
                sample(
                    CERTIFICATE,
                    &[("identity", CHECKOUT), ("serial", "01")],
                    1e9,
                ),
                sample(
                    REQUESTS,
                    &[
                        ("status_code", "200"),
                        ("tls", "true"),
                        ("peer_identity", WEB),
                    ],
                    7.0,
                ),
                sample(
                    REQUESTS,
                    &[
                        ("status_code", "503"),
                        ("tls", "true"),
                        ("peer_identity", WEB),
                    ],
                    3.0,
                ),
                sample(
                    REQUESTS,
                    &[
                        ("status_code", "200"),
                        ("tls", "false"),
                        ("peer_identity", ""),
                    ],
                    4.0,
                ),
                sample(CONNECTIONS, &[("tls", "true"), ("peer_identity", WEB)], 1.0),
                sample(
                    AUTHZ,
                    &[
                        ("decision", "allowed"),
                        ("policy", "web-to-checkout"),
                        ("tls", "true"),
                        ("peer_identity", WEB),
                    ],
                    8.0,
                ),
                sample(
                    AUTHZ,
                    &[
                        ("decision", "denied"),
                        ("policy", "default:deny"),
                        ("tls", "true"),
                        ("peer_identity", WEB),
                    ],
                    2.0,
                ),
                sample(
                    AUTHZ,
                    &[
                        ("decision", "allowed"),
                        ("policy", "default:allow-all"),
                        ("tls", "false"),
                        ("peer_identity", ""),
                    ],
                    4.0,
                ),
            ],
            ..Scraped::default()
        };
        let edges = edges(&scraped);
        assert_eq!(edges.len(), 2, "{edges:#?}");
        let plain = &edges[0];
        assert_eq!(plain.caller, PLAINTEXT);
        assert!(!plain.mtls);
        assert_eq!((plain.requests, plain.allowed), (4, 4));
        let mesh = &edges[1];
        assert_eq!(mesh.caller, WEB);
        assert_eq!(mesh.callee, CHECKOUT);
        assert_eq!((mesh.requests, mesh.connections), (10, 1));
        assert_eq!((mesh.allowed, mesh.denied), (8, 2));
        assert_eq!(mesh.workloads, ["127.0.0.1:1"]);
        assert_eq!(
            mesh.policies
                .iter()
                .map(|p| p.policy.as_str())
                .collect::<Vec<_>>(),
            ["default:deny", "web-to-checkout"]
        );
        let report = build(&Source::Proxies(Vec::new()), None, &scraped);
        let kinds: Vec<&str> = report.findings.iter().map(|f| f.kind.as_str()).collect();
        assert_eq!(kinds, ["Plaintext", "Denied"]);
        assert_eq!(short(CHECKOUT), "shop/checkout");
    }
}
