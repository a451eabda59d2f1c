//! `weft audit policy`: for each Service port, who may call it, and the
//! controller's findings (no policy, allows plaintext, a policy matching
//! nothing, an invalid policy). Local mode: the policy directory loaded as
//! the local controller loads it, into an index whose `policy_audit()` is the
//! controller's own view.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use weft_controller::discovery::local::LocalPolicy;
use weft_controller::discovery::{IndexSettings, PolicyAudit, SharedIndex};

use super::edges::short;
use super::report::{Edge, Finding, Graph, Report, Severity};
use super::table::{Table, Tone};

/// The directory to audit: `--policy-dir`, else the running demo's.
pub fn resolve_dir(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = dir {
        return Ok(dir.to_owned());
    }
    match crate::demo::running::RunningDemo::find_default() {
        Some(demo) => {
            eprintln!(
                "weft audit: reading the policy directory {} of the weft demo running as pid {}",
                demo.policy_dir.display(),
                demo.pid
            );
            Ok(demo.policy_dir)
        }
        None => anyhow::bail!(
            "no policy to read: pass --policy-dir DIR or --kubeconfig FILE, or start `weft demo`"
        ),
    }
}

pub async fn report(dir: &Path) -> anyhow::Result<Report> {
    let cancel = CancellationToken::new();
    let index = SharedIndex::new(IndexSettings::default(), cancel.clone());
    let local = LocalPolicy::load(dir, index.clone())
        .with_context(|| format!("cannot load the policy directory {}", dir.display()))?;
    let audit = index.policy_audit();
    cancel.cancel();
    let mut report = build(&audit, &format!("policy directory {}", dir.display()));
    let refused = local.report();
    if refused["refused"].as_array().is_some_and(|r| !r.is_empty()) {
        report.notes.push(format!(
            "documents refused by the loader: {}",
            refused["refused"]
        ));
    }
    Ok(report)
}

/// The cluster's Services, Pods, Namespaces and AuthorizationPolicies (all
/// namespaces), put into an index as the controller's watchers would.
pub async fn report_kube(kubeconfig: Option<&Path>) -> anyhow::Result<Report> {
    use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
    use kube::api::{Api, ListParams};
    use weft_controller::discovery::{Index, Resource};

    let client = crate::install::kube_client::client(kubeconfig).await?;
    let params = ListParams::default();
    let mut index = Index::new(IndexSettings::default());
    let services = Api::<Service>::all(client.clone())
        .list(&params)
        .await
        .context("cannot list Services")?;
    let pods = Api::<Pod>::all(client.clone())
        .list(&params)
        .await
        .context("cannot list Pods")?;
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&params)
        .await
        .context("cannot list Namespaces")?;
    let policies = Api::<weft_api::crd::AuthorizationPolicy>::all(client)
        .list(&params)
        .await
        .context("cannot list AuthorizationPolicies (is the policy.weft.io CRD installed? `weft install`)")?;
    for s in services {
        index.apply(Resource::Service(s));
    }
    for p in pods {
        index.apply(Resource::Pod(p));
    }
    for n in namespaces {
        index.apply(Resource::Namespace(n));
    }
    for a in policies {
        index.apply(Resource::AuthorizationPolicy(a));
    }
    Ok(build(
        &index.policy_audit(),
        "the Kubernetes cluster of the kubeconfig",
    ))
}

fn build(audit: &PolicyAudit, source: &str) -> Report {
    let mut report = Report::new("Who may call each service", source);
    let mut table = Table::new(&["SERVICE", "PORT", "DEFAULT", "POLICIES", "ALLOWED CALLERS"]);
    let mut graph = Graph::default();
    for s in &audit.services {
        let service = format!("{}/{}", s.namespace, s.name);
        graph.node(&service, &service, false);
        for p in &s.ports {
            let tone = if p.plaintext_allowed {
                Tone::Bad
            } else if p.policies.is_empty() {
                Tone::Warn
            } else {
                Tone::Good
            };
            table.push(
                tone,
                vec![
                    service.clone(),
                    p.port.to_string(),
                    p.default_mode.to_string(),
                    if p.policies.is_empty() {
                        "-".into()
                    } else {
                        p.policies.join(", ")
                    },
                    p.allowed.join(", "),
                ],
            );
            let label = if p.policies.is_empty() {
                format!("default:{}", p.default_mode)
            } else {
                p.policies.join(", ")
            };
            for caller in &p.allowed {
                let plaintext = caller.starts_with("plaintext");
                graph.node(caller, &short(caller), plaintext);
                graph.edges.push(Edge {
                    from: caller.clone(),
                    to: service.clone(),
                    mtls: !plaintext,
                    label: format!(":{} {label}", p.port),
                    denied: 0,
                });
            }
        }
    }
    report.findings = audit
        .findings
        .iter()
        .map(|f| Finding {
            severity: f.severity,
            kind: format!("{:?}", f.kind),
            object: f.object.clone(),
            message: f.message.clone(),
        })
        .collect();
    let high = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::High)
        .count();
    report.summary = format!(
        "{} services, {} findings ({high} high)",
        audit.services.len(),
        report.findings.len()
    );
    report.tables.push(("Services".into(), table));
    report.graph = Some(graph);
    report.json = serde_json::to_value(audit).unwrap_or_default();
    report.json["source"] = serde_json::Value::String(source.to_owned());
    report
}
