//! The pure half of `weft check`: each function turns what was read from the
//! API server into one [`CheckResult`]. Tested with objects, no API server.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::version::Info;
use serde::Serialize;
use weft_api::consts::{self, install as names};
use weft_controller::ca::{self, Issuer, IssuerPem};

/// The oldest Kubernetes minor version weft supports (1.28).
pub const MIN_MINOR: u32 = 28;
/// Fewer days left than this is reported (still a pass).
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// One line of `weft check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl CheckResult {
    pub fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            ok: true,
            detail: detail.into(),
            hint: None,
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            name,
            ok: false,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
}

pub const API_SERVER: &str = "API server reachable";
pub const VERSION: &str = "Kubernetes version supported";
pub const NATIVE_SIDECARS: &str = "native sidecars";
pub const GATEWAY_CRDS: &str = "Gateway API CRDs";
pub const WEFT_CRDS: &str = "weft CRDs";
pub const WEBHOOK: &str = "webhook configured";
pub const CONTROLLER: &str = "controller ready";
pub const INJECTOR: &str = "injector ready";
pub const ISSUER: &str = "issuer valid";
pub const ANCHORS: &str = "trust anchors valid";
pub const NAMESPACES: &str = "namespaces injected";

pub fn api_server(info: Result<&Info, &str>) -> CheckResult {
    match info {
        Ok(info) => CheckResult::pass(API_SERVER, format!("Kubernetes {}", info.git_version)),
        Err(e) => CheckResult::fail(
            API_SERVER,
            e.to_owned(),
            "check KUBECONFIG (or --kubeconfig), the current context and that the API server is up",
        ),
    }
}

pub fn version(info: &Info) -> CheckResult {
    let number = |s: &str| s.trim_end_matches('+').parse::<u32>().ok();
    match (number(&info.major), number(&info.minor)) {
        (Some(1), Some(minor)) if minor >= MIN_MINOR => {
            CheckResult::pass(VERSION, format!("1.{minor} (>= 1.{MIN_MINOR})"))
        }
        (Some(major), Some(minor)) if major > 1 => {
            CheckResult::pass(VERSION, format!("{major}.{minor}"))
        }
        (Some(major), Some(minor)) => CheckResult::fail(
            VERSION,
            format!("{major}.{minor} is older than 1.{MIN_MINOR}"),
            format!("weft needs Kubernetes 1.{MIN_MINOR} or newer"),
        ),
        _ => CheckResult::fail(
            VERSION,
            format!(
                "the API server reports no version number (major {:?}, minor {:?}, gitVersion {:?})",
                info.major, info.minor, info.git_version
            ),
            format!(
                "weft needs Kubernetes 1.{MIN_MINOR} or newer; a server built without its version \
                 stamped in (go build without -ldflags) cannot say which it is"
            ),
        ),
    }
}

/// `returned` is the Pod the API server returned from a dry-run create of a
/// Pod whose first init container has `restartPolicy: Always`; the field
/// survives only where native sidecars are supported. `native_configured`
/// is the injector's `nativeSidecars` (None before install).
pub fn native_sidecars(
    returned: Result<&Pod, &str>,
    native_configured: Option<bool>,
) -> CheckResult {
    let pod = match returned {
        Ok(pod) => pod,
        Err(e) => {
            return CheckResult::fail(
                NATIVE_SIDECARS,
                format!("the dry-run Pod was refused: {e}"),
                "the check creates a Pod with dryRun=All; give `weft check` the right to create pods",
            );
        }
    };
    let supported = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.restart_policy.as_deref())
        == Some("Always");
    match (supported, native_configured) {
        (true, Some(false)) => CheckResult::pass(
            NATIVE_SIDECARS,
            "supported; the injector is configured for classic sidecars (--native-sidecars=false)",
        ),
        (true, _) => CheckResult::pass(NATIVE_SIDECARS, "supported"),
        (false, Some(false)) => CheckResult::pass(
            NATIVE_SIDECARS,
            "not supported; the injector uses classic sidecars",
        ),
        (false, _) => CheckResult::fail(
            NATIVE_SIDECARS,
            "not supported (the API server dropped restartPolicy: Always from an init container)",
            "install with `weft install --native-sidecars=false` (classic sidecars), or upgrade to \
             Kubernetes 1.29+ (SidecarContainers)",
        ),
    }
}

/// Whether every CRD of `required` is among `present`.
pub fn crds(
    name: &'static str,
    required: &[String],
    present: &[String],
    hint: &str,
) -> CheckResult {
    let missing: Vec<&String> = required.iter().filter(|r| !present.contains(r)).collect();
    if missing.is_empty() {
        CheckResult::pass(name, required.join(", "))
    } else {
        CheckResult::fail(
            name,
            format!(
                "missing: {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            hint,
        )
    }
}

/// The CRD names weft needs of its own.
pub fn weft_crd_names() -> Vec<String> {
    names::CRD_PLURALS
        .iter()
        .map(|p| format!("{p}.{}", consts::CRD_GROUP))
        .collect()
}

/// The webhook configuration exists, and each entry's caBundle verifies the
/// serving certificate of the `weft-injector-tls` Secret for the host the API
/// server calls.
pub fn webhook(
    config: Option<&MutatingWebhookConfiguration>,
    serving: Option<&Secret>,
    now: SystemTime,
) -> CheckResult {
    let reinstall = "run `weft install | kubectl apply -f -` (it renders the configuration, \
                     the serving certificate and its CA bundle together)";
    let Some(config) = config else {
        return CheckResult::fail(
            WEBHOOK,
            format!(
                "MutatingWebhookConfiguration {} not found",
                names::WEBHOOK_CONFIGURATION
            ),
            reinstall,
        );
    };
    let Some(cert) = serving.and_then(|s| secret_text(s, "tls.crt")) else {
        return CheckResult::fail(
            WEBHOOK,
            format!("Secret {} (tls.crt) not found", names::INJECTOR_TLS_SECRET),
            reinstall,
        );
    };
    let entries = config.webhooks.as_deref().unwrap_or_default();
    if entries.is_empty() {
        return CheckResult::fail(WEBHOOK, "the configuration has no webhooks", reinstall);
    }
    let mut problems = Vec::new();
    for entry in entries {
        let bundle = entry
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default();
        let host = client_host(&entry.client_config);
        if bundle.trim().is_empty() {
            problems.push(format!("{}: empty caBundle", entry.name));
        } else if let Err(e) = ca::verify_serving_cert(&bundle, &cert, &host, now) {
            problems.push(format!(
                "{}: caBundle does not verify the serving certificate for {host}: {e}",
                entry.name
            ));
        }
    }
    if problems.is_empty() {
        let mut hosts: Vec<String> = entries
            .iter()
            .map(|e| client_host(&e.client_config))
            .collect();
        hosts.dedup();
        CheckResult::pass(
            WEBHOOK,
            format!(
                "{} entries; caBundle verifies the serving certificate for {}",
                entries.len(),
                hosts.join(", ")
            ),
        )
    } else {
        CheckResult::fail(WEBHOOK, problems.join("; "), reinstall)
    }
}

/// The host the API server calls for a webhook entry.
fn client_host(config: &WebhookClientConfig) -> String {
    if let Some(url) = &config.url {
        return crate::install::options::webhook_url_host(url).unwrap_or_else(|_| url.clone());
    }
    config
        .service
        .as_ref()
        .map(|s| format!("{}.{}.svc", s.name, s.namespace))
        .unwrap_or_default()
}

/// A component is ready when as many of its pods are Ready as it wants replicas.
pub fn ready(name: &'static str, what: &str, desired: Option<i32>, pods: &[Pod]) -> CheckResult {
    let Some(desired) = desired else {
        return CheckResult::fail(
            name,
            format!("{what} not found"),
            "run `weft install | kubectl apply -f -`",
        );
    };
    let ready = pods.iter().filter(|p| pod_ready(p)).count();
    let detail = format!("{what}: {ready}/{desired} pods ready");
    if ready >= usize::try_from(desired).unwrap_or(0) && ready > 0 {
        CheckResult::pass(name, detail)
    } else {
        CheckResult::fail(
            name,
            detail,
            format!("see `kubectl describe {what}` and the pods' logs"),
        )
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The `weft-issuer` Secret holds an issuer that loads (key matches, chains to
/// its anchors) and has not expired.
pub fn issuer(secret: Option<&Secret>, now: SystemTime) -> CheckResult {
    let hint = "create Secret weft-issuer (tls.crt, tls.key, ca.crt): `weft install` generates one, \
                or pass your own with `weft install --issuer-dir`";
    let Some(secret) = secret else {
        return CheckResult::fail(
            ISSUER,
            format!("Secret {} not found", names::ISSUER_SECRET),
            hint,
        );
    };
    let field = |key| secret_text(secret, key).unwrap_or_default();
    let pem = IssuerPem {
        cert: field(ca::ISSUER_CERT_FILE),
        key: field(ca::ISSUER_KEY_FILE),
        anchors: field(ca::TRUST_ANCHORS_FILE),
    };
    match Issuer::from_pem(pem) {
        Ok(issuer) => expiry(ISSUER, issuer.subject(), issuer.not_after(), now, hint),
        Err(e) => CheckResult::fail(
            ISSUER,
            format!("Secret {}: {e}", names::ISSUER_SECRET),
            hint,
        ),
    }
}

/// The `weft-trust-anchors` ConfigMap parses, none of its anchors has expired,
/// and it holds the issuer's anchors (else proxies would not trust the certificates).
pub fn anchors(
    configmap: Option<&ConfigMap>,
    issuer: Option<&Secret>,
    now: SystemTime,
) -> CheckResult {
    let hint = format!(
        "ConfigMap {} ({}) must hold the issuer's trust anchors (the Secret's ca.crt)",
        names::TRUST_ANCHORS_CONFIGMAP,
        names::TRUST_ANCHORS_KEY
    );
    let Some(bundle) = configmap
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get(names::TRUST_ANCHORS_KEY))
    else {
        return CheckResult::fail(
            ANCHORS,
            format!(
                "ConfigMap {} ({}) not found",
                names::TRUST_ANCHORS_CONFIGMAP,
                names::TRUST_ANCHORS_KEY
            ),
            hint,
        );
    };
    let certs = match ca::pem_validity(bundle, "the trust anchors") {
        Ok(certs) => certs,
        Err(e) => return CheckResult::fail(ANCHORS, e.to_string(), hint),
    };
    if let Some(issuer_anchors) = issuer.and_then(|s| secret_text(s, ca::TRUST_ANCHORS_FILE)) {
        let der = |pem: &str| {
            weft_api::tls::certs_from_pem(pem.as_bytes(), "anchors").unwrap_or_default()
        };
        let held = der(bundle);
        if !der(&issuer_anchors).iter().all(|a| held.contains(a)) {
            return CheckResult::fail(
                ANCHORS,
                "the bundle lacks the issuer's trust anchor: proxies would reject the mesh's certificates",
                hint,
            );
        }
    }
    // Every anchor must be valid; the first to expire decides.
    match certs.iter().min_by_key(|c| c.not_after) {
        Some(first) => {
            let mut result = expiry(ANCHORS, &first.subject, first.not_after, now, &hint);
            result.detail = format!("{} anchor(s); {}", certs.len(), result.detail);
            result
        }
        None => CheckResult::fail(ANCHORS, "no certificates", hint),
    }
}

fn expiry(
    name: &'static str,
    subject: &str,
    not_after: SystemTime,
    now: SystemTime,
    hint: &str,
) -> CheckResult {
    let days = days_between(now, not_after);
    if not_after <= now {
        CheckResult::fail(
            name,
            format!("{subject} expired on {}", ca::rfc3339(not_after)),
            hint,
        )
    } else if days < EXPIRY_WARNING_DAYS {
        CheckResult::pass(name, format!("{subject}: {days} days left (rotate soon)"))
    } else {
        CheckResult::pass(name, format!("{subject}: {days} days left"))
    }
}

fn days_between(now: SystemTime, then: SystemTime) -> i64 {
    match then.duration_since(now) {
        Ok(d) => i64::try_from(d.as_secs() / 86_400).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs() / 86_400).unwrap_or(i64::MAX),
    }
}

fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .cloned()
        })
}

/// The opted-in namespaces and how many of their pods carry the injected
/// marker; pods that cannot or must not be injected (hostNetwork, opted out)
/// do not count. Also counts pods that opted in themselves elsewhere.
pub fn namespaces(namespaces: &[Namespace], pods: &[Pod]) -> CheckResult {
    let opted_in: Vec<&str> = namespaces
        .iter()
        .filter(|ns| label(&ns.metadata.labels, consts::INJECT_KEY) == Some(consts::INJECT_ENABLED))
        .filter_map(|ns| ns.metadata.name.as_deref())
        .collect();
    let mut counts: BTreeMap<&str, (usize, usize)> =
        opted_in.iter().map(|ns| (*ns, (0, 0))).collect();
    let mut self_opted = (0, 0);
    for pod in pods {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let injected = label(&pod.metadata.annotations, consts::INJECTED_BY_ANNOTATION).is_some();
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let opted_out = label(&pod.metadata.annotations, consts::INJECT_KEY)
            == Some(consts::INJECT_DISABLED)
            || label(&pod.metadata.labels, consts::INJECT_KEY) == Some(consts::INJECT_DISABLED);
        if host_network || opted_out {
            continue;
        }
        let slot = match counts.get_mut(ns) {
            Some(slot) => slot,
            None if label(&pod.metadata.labels, consts::INJECT_KEY)
                == Some(consts::INJECT_ENABLED) =>
            {
                &mut self_opted
            }
            None => continue,
        };
        slot.0 += 1;
        if injected {
            slot.1 += 1;
        }
    }
    if opted_in.is_empty() && self_opted.0 == 0 {
        return CheckResult::pass(
            NAMESPACES,
            "no namespace opted in yet (kubectl label namespace <ns> weft.io/inject=enabled)",
        );
    }
    let mut parts: Vec<String> = counts
        .iter()
        .map(|(ns, (total, injected))| format!("{ns} {injected}/{total}"))
        .collect();
    if self_opted.0 > 0 {
        parts.push(format!(
            "pods opted in by label {}/{}",
            self_opted.1, self_opted.0
        ));
    }
    let lagging: Vec<&str> = counts
        .iter()
        .filter(|(_, (total, injected))| injected < total)
        .map(|(ns, _)| *ns)
        .collect();
    let detail = format!("pods injected: {}", parts.join(", "));
    if lagging.is_empty() && self_opted.1 == self_opted.0 {
        CheckResult::pass(NAMESPACES, detail)
    } else {
        CheckResult::fail(
            NAMESPACES,
            detail,
            format!(
                "pods created before their namespace opted in (or before the injector ran) have no proxy: \
                 restart them, e.g. `kubectl rollout restart deployment -n {}`",
                lagging.first().copied().unwrap_or("<namespace>")
            ),
        )
    }
}

fn label<'a>(map: &'a Option<BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    map.as_ref().and_then(|m| m.get(key)).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::install::options::InstallOptions;
    use crate::install::secrets::Pki;
    use crate::install::{self, render::Document};

    fn info(major: &str, minor: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            git_version: format!("v{major}.{minor}.0"),
            ..Info::default()
        }
    }

    #[test]
    fn versions_from_1_28_pass() {
        assert!(version(&info("1", "28")).ok);
        assert!(version(&info("1", "33+")).ok);
        let old = version(&info("1", "27"));
        assert!(!old.ok && old.hint.is_some());
        let unknown = version(&Info {
            git_version: "v0.0.0-master+$Format:%H$".into(),
            ..info("", "")
        });
        assert!(!unknown.ok);
        assert!(
            unknown.detail.contains("reports no version number"),
            "{}",
            unknown.detail
        );
        assert!(api_server(Ok(&info("1", "33"))).detail.contains("v1.33.0"));
        assert!(!api_server(Err("connection refused")).ok);
    }

    fn probe_pod(restart_policy: Option<&str>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                init_containers: Some(vec![Container {
                    name: "sidecar".into(),
                    restart_policy: restart_policy.map(Into::into),
                    ..Container::default()
                }]),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn native_sidecars_are_supported_iff_the_field_survives() {
        assert!(native_sidecars(Ok(&probe_pod(Some("Always"))), None).ok);
        let dropped = native_sidecars(Ok(&probe_pod(None)), None);
        assert!(!dropped.ok);
        assert!(dropped.hint.unwrap().contains("--native-sidecars=false"));
        // Classic sidecars configured: fine either way.
        assert!(native_sidecars(Ok(&probe_pod(None)), Some(false)).ok);
        assert!(!native_sidecars(Err("forbidden"), None).ok);
    }

    #[test]
    fn missing_crds_are_named() {
        let required = weft_crd_names();
        let all = crds(WEFT_CRDS, &required, &required, "install");
        assert!(all.ok);
        let some = crds(WEFT_CRDS, &required, &required[..1], "install");
        assert!(!some.ok);
        assert!(some.detail.contains(&required[1]), "{}", some.detail);
    }

    /// The objects `weft install` renders, typed.
    fn installed(opts: &InstallOptions) -> (Vec<Document>, Pki) {
        let pki = Pki::generate(opts, None).unwrap();
        (install::install_documents(opts, &pki).unwrap(), pki)
    }

    fn object<T: serde::de::DeserializeOwned>(docs: &[Document], kind: &str, name: &str) -> T {
        let doc = docs
            .iter()
            .find(|d| d.kind() == kind && d.name() == name)
            .unwrap_or_else(|| panic!("{kind}/{name}"));
        serde_yaml::from_value(doc.body.clone()).unwrap()
    }

    #[test]
    fn the_webhook_check_verifies_the_bundle_against_the_serving_certificate() {
        let now = SystemTime::now();
        for url in [None, Some("https://127.0.0.1:9443/inject".to_owned())] {
            let opts = InstallOptions {
                webhook_url: url,
                ..InstallOptions::default()
            };
            let (docs, _) = installed(&opts);
            let config: MutatingWebhookConfiguration = object(
                &docs,
                "MutatingWebhookConfiguration",
                names::WEBHOOK_CONFIGURATION,
            );
            let serving: Secret = object(&docs, "Secret", names::INJECTOR_TLS_SECRET);
            let result = webhook(Some(&config), Some(&serving), now);
            assert!(result.ok, "{result:?}");
            // Another installation's certificate does not verify.
            let (other, _) = installed(&opts);
            let stranger: Secret = object(&other, "Secret", names::INJECTOR_TLS_SECRET);
            let result = webhook(Some(&config), Some(&stranger), now);
            assert!(
                !result.ok && result.detail.contains("does not verify"),
                "{result:?}"
            );
            // An empty bundle (the kustomize base) is reported.
            let mut empty = config.clone();
            for entry in empty.webhooks.as_mut().unwrap() {
                entry.client_config.ca_bundle = None;
            }
            assert!(
                webhook(Some(&empty), Some(&serving), now)
                    .detail
                    .contains("empty caBundle")
            );
            assert!(!webhook(None, Some(&serving), now).ok);
            assert!(!webhook(Some(&config), None, now).ok);
        }
    }

    #[test]
    fn issuer_and_anchors_report_days_left_and_expiry() {
        let opts = InstallOptions::default();
        let (docs, _) = installed(&opts);
        let issuer_secret: Secret = object(&docs, "Secret", names::ISSUER_SECRET);
        let anchors_map: ConfigMap = object(&docs, "ConfigMap", names::TRUST_ANCHORS_CONFIGMAP);
        let now = SystemTime::now();
        let result = issuer(Some(&issuer_secret), now);
        assert!(
            result.ok && result.detail.contains("364 days left"),
            "{result:?}"
        );
        let result = anchors(Some(&anchors_map), Some(&issuer_secret), now);
        assert!(
            result.ok && result.detail.contains("1 anchor(s)"),
            "{result:?}"
        );
        // Two years on, the issuer has expired; the anchor has not.
        let later = now + Duration::from_secs(2 * 365 * 86_400);
        let expired = issuer(Some(&issuer_secret), later);
        assert!(
            !expired.ok && expired.detail.contains("expired"),
            "{expired:?}"
        );
        assert!(anchors(Some(&anchors_map), Some(&issuer_secret), later).ok);
        // A key that does not belong to the certificate.
        let (other, _) = installed(&opts);
        let other_secret: Secret = object(&other, "Secret", names::ISSUER_SECRET);
        let mut mixed = issuer_secret.clone();
        let key = other_secret.data.as_ref().unwrap()["tls.key"].clone();
        mixed.data.as_mut().unwrap().insert("tls.key".into(), key);
        assert!(!issuer(Some(&mixed), now).ok);
        // Anchors of another installation: proxies would not trust the issuer.
        let other_anchors: ConfigMap = object(&other, "ConfigMap", names::TRUST_ANCHORS_CONFIGMAP);
        let result = anchors(Some(&other_anchors), Some(&issuer_secret), now);
        assert!(!result.ok && result.detail.contains("lacks"), "{result:?}");
        assert!(!issuer(None, now).ok);
        assert!(!anchors(None, None, now).ok);
        let garbage = ConfigMap {
            data: Some(BTreeMap::from([(
                names::TRUST_ANCHORS_KEY.into(),
                "nope".into(),
            )])),
            ..ConfigMap::default()
        };
        assert!(!anchors(Some(&garbage), None, now).ok);
        let _ = ByteString(Vec::new());
    }

    fn ready_pod(ready: bool) -> Pod {
        Pod {
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn a_component_is_ready_when_enough_pods_are() {
        let what = "statefulset/weft-controller";
        assert!(
            ready(
                CONTROLLER,
                what,
                Some(2),
                &[ready_pod(true), ready_pod(true)]
            )
            .ok
        );
        let one = ready(
            CONTROLLER,
            what,
            Some(2),
            &[ready_pod(true), ready_pod(false)],
        );
        assert!(!one.ok && one.detail.contains("1/2"), "{one:?}");
        assert!(!ready(CONTROLLER, what, Some(1), &[]).ok);
        assert!(!ready(CONTROLLER, what, None, &[]).ok);
    }

    fn ns(name: &str, label: Option<&str>) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: label.map(|v| BTreeMap::from([(consts::INJECT_KEY.into(), v.into())])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }

    fn pod(namespace: &str, injected: bool, label: Option<&str>, host_network: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                labels: label.map(|v| BTreeMap::from([(consts::INJECT_KEY.into(), v.into())])),
                annotations: injected.then(|| {
                    BTreeMap::from([(consts::INJECTED_BY_ANNOTATION.into(), "0.1.0".into())])
                }),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                host_network: Some(host_network),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn namespaces_count_injected_pods() {
        let namespaces = [ns("shop", Some("enabled")), ns("other", None)];
        let pods = [
            pod("shop", true, None, false),
            pod("shop", true, None, false),
            pod("shop", false, None, true), // hostNetwork: skipped
            pod("shop", false, Some("disabled"), false), // opted out
            pod("other", false, None, false), // not opted in
            pod("other", true, Some("enabled"), false), // opted in by label
        ];
        let result = namespaces_check(&namespaces, &pods);
        assert!(result.ok, "{result:?}");
        assert!(result.detail.contains("shop 2/2"), "{}", result.detail);
        assert!(
            result.detail.contains("opted in by label 1/1"),
            "{}",
            result.detail
        );
        let mut lagging = pods.to_vec();
        lagging.push(pod("shop", false, None, false));
        let result = namespaces_check(&namespaces, &lagging);
        assert!(
            !result.ok && result.detail.contains("shop 2/3"),
            "{result:?}"
        );
        assert!(
            result
                .hint
                .unwrap()
                .contains("rollout restart deployment -n shop")
        );
        assert!(
            namespaces_check(&[ns("other", None)], &[])
                .detail
                .contains("no namespace")
        );
    }

    fn namespaces_check(ns: &[Namespace], pods: &[Pod]) -> CheckResult {
        namespaces(ns, pods)
    }
}
