//! [`InstallOptions`]: everything an installation can vary, with the defaults
//! that `deploy/` is rendered with, checked all at once.

use std::time::Duration;

use weft_api::consts::{self, install as names};
use weft_injector::config::InjectConfig;

pub use weft_api::policy::InboundMode;

/// `--default-inbound-mode`: parsed by the policy model's own parser.
pub fn parse_inbound_mode(text: &str) -> Result<InboundMode, String> {
    text.parse::<InboundMode>().map_err(|e| e.to_string())
}

/// What the API server does when the webhook cannot be reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FailurePolicy {
    /// Refuse the pod (the default: no pod of an opted-in namespace runs unmeshed).
    #[default]
    Fail,
    /// Admit the pod without a proxy.
    Ignore,
}

impl FailurePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "Fail",
            Self::Ignore => "Ignore",
        }
    }
}

/// The options of an installation. [`Default`] is what `deploy/` holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallOptions {
    /// The mesh namespace.
    pub namespace: String,
    pub trust_domain: String,
    /// Workload certificate lifetime, as the controller's `--cert-lifetime` takes it.
    pub cert_lifetime: String,
    pub controller_replicas: i32,
    pub injector_replicas: i32,
    pub native_sidecars: bool,
    /// When set, the API server calls the webhook at this URL instead of the Service.
    pub webhook_url: Option<String>,
    pub failure_policy: FailurePolicy,
    pub default_inbound_mode: InboundMode,
    pub controller_image: String,
    pub injector_image: String,
    pub proxy_image: String,
    pub init_image: String,
    /// Size of each controller replica's audit volume.
    pub audit_volume_size: String,
    /// Where injected proxies send spans (OTLP/gRPC URL; empty: tracing off).
    pub otlp_endpoint: String,
    /// The share of new traces the proxies sample, 0 to 1.
    pub trace_sample_ratio: String,
}

impl Default for InstallOptions {
    fn default() -> Self {
        let inject = InjectConfig::default();
        let version = env!("CARGO_PKG_VERSION");
        Self {
            namespace: consts::MESH_NAMESPACE.to_owned(),
            trust_domain: inject.trust_domain,
            cert_lifetime: "24h".to_owned(),
            controller_replicas: 2,
            injector_replicas: 2,
            native_sidecars: inject.native_sidecars,
            webhook_url: None,
            failure_policy: FailurePolicy::default(),
            default_inbound_mode: InboundMode::default(),
            controller_image: format!("weft/weft-controller:{version}"),
            injector_image: format!("weft/weft-injector:{version}"),
            proxy_image: inject.proxy_image,
            init_image: inject.init_image,
            audit_volume_size: "1Gi".to_owned(),
            otlp_endpoint: inject.otlp_endpoint,
            trace_sample_ratio: inject.trace_sample_ratio,
        }
    }
}

/// Every problem found in the options, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid install options:\n  {}", .0.join("\n  "))]
pub struct OptionErrors(pub Vec<String>);

impl InstallOptions {
    /// Checks every option, reporting all problems at once, each naming its flag.
    pub fn check(&self) -> Result<(), OptionErrors> {
        let mut errors = Vec::new();
        if !is_dns_label(&self.namespace) {
            errors.push(format!(
                "--namespace {:?}: must be a DNS label (lowercase letters, digits, '-')",
                self.namespace
            ));
        }
        if let Err(e) = weft_api::control::controller_identity(&self.trust_domain) {
            errors.push(format!("--trust-domain {:?}: {e}", self.trust_domain));
        }
        match weft_controller::config::parse_duration(&self.cert_lifetime) {
            Ok(d) if d < Duration::from_secs(2) => errors.push(format!(
                "--cert-lifetime {:?}: must be at least 2s",
                self.cert_lifetime
            )),
            Ok(_) => {}
            Err(e) => errors.push(format!("--cert-lifetime {:?}: {e}", self.cert_lifetime)),
        }
        for (flag, n) in [
            ("--controller-replicas", self.controller_replicas),
            ("--injector-replicas", self.injector_replicas),
        ] {
            if n < 1 {
                errors.push(format!("{flag} {n}: must be at least 1"));
            }
        }
        if let Some(url) = &self.webhook_url
            && let Err(e) = webhook_url_host(url)
        {
            errors.push(format!("--webhook-url {url:?}: {e}"));
        }
        for (flag, image) in [
            ("--controller-image", &self.controller_image),
            ("--injector-image", &self.injector_image),
            ("--proxy-image", &self.proxy_image),
            ("--init-image", &self.init_image),
        ] {
            if image.is_empty() || image.contains(char::is_whitespace) {
                errors.push(format!("{flag} {image:?}: must be an image reference"));
            }
        }
        if let Err(problem) = weft_injector::mutate::check_config(&self.inject_config()) {
            // The injector names its configuration key; say the flag.
            let problem = problem
                .replace(
                    "the injector's configuration key otlpEndpoint",
                    "--otlp-endpoint",
                )
                .replace(
                    "the injector's configuration key traceSampleRatio",
                    "--trace-sample-ratio",
                );
            errors.push(problem);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(OptionErrors(errors))
        }
    }

    /// The injector's Service host, as the API server names it.
    pub fn injector_service_host(&self) -> String {
        format!("{}.{}.svc", names::INJECTOR_NAME, self.namespace)
    }

    /// The names the webhook's serving certificate must carry: the Service's,
    /// and the URL's host when `--webhook-url` is given.
    pub fn serving_cert_hosts(&self) -> Vec<String> {
        let service = self.injector_service_host();
        let mut hosts = vec![service.clone(), format!("{service}.cluster.local")];
        if let Some(host) = self
            .webhook_url
            .as_deref()
            .and_then(|url| webhook_url_host(url).ok())
            && !hosts.contains(&host)
        {
            hosts.push(host);
        }
        hosts
    }

    /// The injector's configuration for this installation.
    pub fn inject_config(&self) -> InjectConfig {
        InjectConfig {
            proxy_image: self.proxy_image.clone(),
            init_image: self.init_image.clone(),
            trust_domain: self.trust_domain.clone(),
            mesh_namespace: self.namespace.clone(),
            controller_addr: format!(
                "{}.{}.svc:{}",
                consts::CONTROLLER_SERVICE_ACCOUNT,
                self.namespace,
                consts::CONTROLLER_GRPC_PORT
            ),
            native_sidecars: self.native_sidecars,
            default_inbound_policy: self.default_inbound_mode.as_str().to_owned(),
            otlp_endpoint: self.otlp_endpoint.clone(),
            trace_sample_ratio: self.trace_sample_ratio.clone(),
            ..InjectConfig::default()
        }
    }

    /// The namespaces whose pods never reach the webhook.
    pub fn never_injected_namespaces(&self) -> Vec<String> {
        consts::inject::PROTECTED_NAMESPACES
            .iter()
            .map(|ns| (*ns).to_owned())
            .chain([self.namespace.clone()])
            .collect()
    }
}

/// The host of an `https://` webhook URL (an IP address without brackets).
pub fn webhook_url_host(url: &str) -> Result<String, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}); e.g. https://127.0.0.1:9443/inject"))?;
    if uri.scheme_str() != Some("https") {
        return Err("the API server calls webhooks over https only: use https://".into());
    }
    let host = uri.host().ok_or("the URL names no host")?;
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_every_bad_option_is_reported() {
        InstallOptions::default().check().unwrap();
        let bad = InstallOptions {
            namespace: "Weft_System".into(),
            trust_domain: "Bad Domain".into(),
            cert_lifetime: "1s".into(),
            controller_replicas: 0,
            injector_replicas: -1,
            webhook_url: Some("http://127.0.0.1:9443/inject".into()),
            proxy_image: String::new(),
            ..InstallOptions::default()
        };
        let errors = bad.check().unwrap_err().0;
        assert_eq!(errors.len(), 7, "{errors:#?}");
        let tracing = InstallOptions {
            otlp_endpoint: "collector:4317".into(),
            ..InstallOptions::default()
        };
        let errors = tracing.check().unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].starts_with("--otlp-endpoint (default of annotation")
                && errors[0]
                    .contains("\"collector:4317\" is not valid: it has no http:// or https://"),
            "{errors:#?}"
        );
        let ratio = InstallOptions {
            trace_sample_ratio: "1.5".into(),
            ..InstallOptions::default()
        };
        let errors = ratio.check().unwrap_err().0;
        assert!(
            errors[0].starts_with("--trace-sample-ratio (default of annotation")
                && errors[0].contains("\"1.5\" is not valid: it is outside 0 to 1"),
            "{errors:#?}"
        );
        InstallOptions {
            otlp_endpoint: "http://otel-collector.observability:4317".into(),
            trace_sample_ratio: "1".into(),
            ..InstallOptions::default()
        }
        .check()
        .unwrap();
    }

    #[test]
    fn the_serving_certificate_names_the_service_and_the_url_host() {
        let opts = InstallOptions {
            webhook_url: Some("https://[::1]:9443/inject".into()),
            ..InstallOptions::default()
        };
        assert_eq!(
            opts.serving_cert_hosts(),
            [
                "weft-injector.weft-system.svc",
                "weft-injector.weft-system.svc.cluster.local",
                "::1"
            ]
        );
    }
}
