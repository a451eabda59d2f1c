//! The MutatingWebhookConfiguration: which pods the API server sends to the
//! injector, and what it does when the injector cannot answer.
//!
//! A selector sees labels only, never annotations, so two entries (as Istio
//! has) decide which pods reach the webhook:
//! - `namespace.inject.weft.io`: pods of namespaces labelled
//!   `weft.io/inject=enabled`, except pods labelled `weft.io/inject=disabled`
//!   (the pod annotation `weft.io/inject: disabled` opts out too: the injector
//!   skips such pods);
//! - `pod.inject.weft.io`: pods labelled `weft.io/inject=enabled` themselves,
//!   in namespaces without the `weft.io/inject` label. The pod-level opt-in is a
//!   LABEL, since an annotation cannot be selected on.
//!
//! Both exclude `kube-system`, `kube-public`, `kube-node-lease` and the mesh
//! namespace by the name label the API server sets on every namespace.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use weft_api::consts::{self, install as names};

use super::manifests::{INJECTOR_SERVICE_PORT, meta};
use super::options::{FailurePolicy, InstallOptions};
use super::render::{DeployFile, Document, RenderError};

/// The names of the two webhook entries.
pub const NAMESPACE_WEBHOOK: &str = "namespace.inject.weft.io";
pub const POD_WEBHOOK: &str = "pod.inject.weft.io";
/// How long the API server waits for the injector (a mutation is pure and
/// takes well under a millisecond; the rest is the network).
pub const TIMEOUT_SECONDS: i32 = 10;

const FAILURE_POLICY_NOTE: &str = "\
failurePolicy Fail (the default; `weft install --failure-policy ignore` to change):
when no injector answers, a pod that should be meshed is refused rather than
started without its proxy, so \"every pod of an opted-in namespace is meshed\"
holds and no workload silently loses mTLS, identity and policy. This cannot lock
the cluster: kube-system, kube-public, kube-node-lease and the mesh namespace
never reach the webhook, so the injector itself always starts, and it runs two
replicas behind a PodDisruptionBudget. The cost: while both replicas are down,
new pods of opted-in namespaces wait (their controllers retry).
reinvocationPolicy Never: an injected pod is left unchanged by the injector, so
calling it again after later webhooks could add nothing.";

/// The webhook configuration; `ca_bundle` is the webhook CA's PEM (empty in
/// `deploy/`, filled by `weft install`).
pub fn configuration(
    opts: &InstallOptions,
    ca_bundle: Option<&str>,
) -> Result<Document, RenderError> {
    let client_config = WebhookClientConfig {
        ca_bundle: ca_bundle.map(|pem| ByteString(pem.as_bytes().to_vec())),
        service: opts.webhook_url.is_none().then(|| ServiceReference {
            name: names::INJECTOR_NAME.to_owned(),
            namespace: opts.namespace.clone(),
            path: Some(weft_api::consts::injector::INJECT_PATH.to_owned()),
            port: Some(INJECTOR_SERVICE_PORT),
        }),
        url: opts.webhook_url.clone(),
    };
    let never = requirement(
        names::NAMESPACE_NAME_LABEL,
        "NotIn",
        &opts.never_injected_namespaces(),
    );
    let enabled = [consts::INJECT_ENABLED.to_owned()];
    let entry = |name: &str, namespace: Vec<LabelSelectorRequirement>, object| MutatingWebhook {
        name: name.to_owned(),
        client_config: client_config.clone(),
        rules: Some(vec![RuleWithOperations {
            operations: Some(vec!["CREATE".to_owned()]),
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".to_owned()]),
            resources: Some(vec!["pods".to_owned()]),
            scope: Some("Namespaced".to_owned()),
        }]),
        namespace_selector: Some(LabelSelector {
            match_expressions: Some(namespace),
            ..LabelSelector::default()
        }),
        object_selector: Some(LabelSelector {
            match_expressions: Some(vec![object]),
            ..LabelSelector::default()
        }),
        side_effects: "None".to_owned(),
        admission_review_versions: vec!["v1".to_owned()],
        timeout_seconds: Some(TIMEOUT_SECONDS),
        failure_policy: Some(opts.failure_policy.as_str().to_owned()),
        reinvocation_policy: Some("Never".to_owned()),
        match_policy: Some("Equivalent".to_owned()),
        ..MutatingWebhook::default()
    };
    let webhooks = vec![
        entry(
            NAMESPACE_WEBHOOK,
            vec![
                requirement(consts::INJECT_KEY, "In", &enabled),
                never.clone(),
            ],
            requirement(
                consts::INJECT_KEY,
                "NotIn",
                &[consts::INJECT_DISABLED.to_owned()],
            ),
        ),
        entry(
            POD_WEBHOOK,
            vec![requirement(consts::INJECT_KEY, "DoesNotExist", &[]), never],
            requirement(consts::INJECT_KEY, "In", &enabled),
        ),
    ];
    let config = MutatingWebhookConfiguration {
        metadata: meta(names::WEBHOOK_CONFIGURATION, None),
        webhooks: Some(webhooks),
    };
    let target = match &opts.webhook_url {
        Some(url) => format!("the URL {url}"),
        None => format!(
            "Service {}/{} port {INJECTOR_SERVICE_PORT} path {}",
            opts.namespace,
            names::INJECTOR_NAME,
            weft_api::consts::injector::INJECT_PATH
        ),
    };
    let policy = match opts.failure_policy {
        FailurePolicy::Fail => FAILURE_POLICY_NOTE.to_owned(),
        FailurePolicy::Ignore => "failurePolicy Ignore (chosen at install): when no injector answers, \
             pods start without a proxy.\nreinvocationPolicy Never: an injected pod is left unchanged."
            .to_owned(),
    };
    Document::new(
        DeployFile::Webhook,
        format!(
            "Sends pod CREATEs to the injector ({target}).\n\
             {NAMESPACE_WEBHOOK}: pods of namespaces labelled weft.io/inject=enabled\n\
             (a pod labelled weft.io/inject=disabled never reaches it).\n\
             {POD_WEBHOOK}: pods labelled weft.io/inject=enabled in namespaces without\n\
             the weft.io/inject label (the pod-level opt-in is a label: selectors\n\
             cannot see annotations).\n\
             Neither: kube-system, kube-public, kube-node-lease, {}.\n\
             caBundle: the webhook CA (empty in deploy/; `weft install` fills it).\n{policy}",
            opts.namespace
        ),
        &config,
    )
}

fn requirement(key: &str, operator: &str, values: &[String]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_owned(),
        operator: operator.to_owned(),
        values: (!values.is_empty()).then(|| values.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// How the API server evaluates a label selector of matchExpressions.
    fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
        selector.match_expressions.iter().flatten().all(|r| {
            let value = labels.get(&r.key);
            let values = r.values.clone().unwrap_or_default();
            match r.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                other => panic!("operator {other}"),
            }
        })
    }

    /// The entries a pod with `pod_label` in namespace `ns` (labelled
    /// `ns_label`) is sent to.
    fn reached(ns: &str, ns_label: Option<&str>, pod_label: Option<&str>) -> Vec<String> {
        let doc = configuration(&InstallOptions::default(), None).unwrap();
        let config: MutatingWebhookConfiguration = serde_yaml::from_value(doc.body).unwrap();
        let mut ns_labels =
            BTreeMap::from([(names::NAMESPACE_NAME_LABEL.to_owned(), ns.to_owned())]);
        if let Some(v) = ns_label {
            ns_labels.insert(consts::INJECT_KEY.to_owned(), v.to_owned());
        }
        let pod_labels: BTreeMap<String, String> = pod_label
            .map(|v| (consts::INJECT_KEY.to_owned(), v.to_owned()))
            .into_iter()
            .collect();
        config
            .webhooks
            .unwrap()
            .into_iter()
            .filter(|w| {
                matches(w.namespace_selector.as_ref().unwrap(), &ns_labels)
                    && matches(w.object_selector.as_ref().unwrap(), &pod_labels)
            })
            .map(|w| w.name)
            .collect()
    }

    #[test]
    fn opted_in_pods_reach_exactly_one_entry_and_system_pods_none() {
        let ns = [NAMESPACE_WEBHOOK.to_owned()];
        let pod = [POD_WEBHOOK.to_owned()];
        let none: [String; 0] = [];
        assert_eq!(reached("shop", Some("enabled"), None), ns);
        assert_eq!(reached("shop", Some("enabled"), Some("enabled")), ns);
        assert_eq!(reached("shop", Some("enabled"), Some("disabled")), none);
        assert_eq!(reached("shop", None, Some("enabled")), pod);
        assert_eq!(reached("shop", None, None), none);
        assert_eq!(reached("shop", None, Some("disabled")), none);
        assert_eq!(reached("shop", Some("disabled"), Some("enabled")), none);
        for system in [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "weft-system",
        ] {
            assert_eq!(
                reached(system, Some("enabled"), Some("enabled")),
                none,
                "{system}"
            );
            assert_eq!(reached(system, None, Some("enabled")), none, "{system}");
        }
    }

    #[test]
    fn every_entry_is_side_effect_free_v1_and_bounded() {
        let doc = configuration(&InstallOptions::default(), Some("PEM")).unwrap();
        let config: MutatingWebhookConfiguration = serde_yaml::from_value(doc.body).unwrap();
        for w in config.webhooks.unwrap() {
            assert_eq!(w.side_effects, "None");
            assert_eq!(w.admission_review_versions, ["v1"]);
            assert_eq!(w.timeout_seconds, Some(TIMEOUT_SECONDS));
            assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
            let rules = w.rules.unwrap();
            assert_eq!(
                rules[0].operations.as_deref(),
                Some(&["CREATE".to_owned()][..])
            );
            assert_eq!(
                rules[0].resources.as_deref(),
                Some(&["pods".to_owned()][..])
            );
            let service = w.client_config.service.unwrap();
            assert_eq!(
                service.path.as_deref(),
                Some(weft_api::consts::injector::INJECT_PATH)
            );
            assert_eq!(w.client_config.ca_bundle.unwrap().0, b"PEM");
        }
        assert!(doc.comment.contains("failurePolicy Fail"));
    }
}
