//! `weft install`: renders the mesh's Kubernetes objects, with freshly
//! generated key material, as YAML or JSON, or applies them.
//!
//! - `options.rs`: [`InstallOptions`], checked all at once; its default is `deploy/`.
//! - `manifests.rs`: namespace, controller, injector (typed k8s-openapi objects).
//! - `rbac.rs`: service accounts, cluster roles (each verb justified), bindings.
//! - `webhook.rs`: the MutatingWebhookConfiguration (selectors, failure policy).
//! - `secrets.rs`: trust anchor, issuer, webhook serving certificate.
//! - `render.rs`: documents with comments; YAML, JSON, the files of `deploy/`.
//! - `apply.rs`: server-side apply (field manager `weft`).
//!
//! `deploy/` is the default rendering without key material or CRDs (those
//! come from `deploy/crds/`); a test fails when it is stale
//! (`WEFT_UPDATE_DEPLOY=1 cargo test -p weft-cli deploy_files` rewrites it).

mod apply;
pub mod kube_client;
pub mod manifests;
pub mod options;
pub mod rbac;
pub mod render;
pub mod secrets;
pub mod webhook;

use std::path::PathBuf;

use anyhow::Context;
pub use options::InstallOptions;
use options::{FailurePolicy, InboundMode};
use render::{DeployFile, Document, RenderError};
use secrets::Pki;

mod crds {
    include!(concat!(env!("OUT_DIR"), "/crds.rs"));
}

/// `weft install` flags.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The mesh namespace.
    #[arg(long, default_value = weft_api::consts::MESH_NAMESPACE)]
    pub namespace: String,
    /// Trust domain of workload identities.
    #[arg(long, default_value = weft_api::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Workload certificate lifetime (`90s`, `15m`, `24h`, `7d`).
    #[arg(long, default_value = "24h")]
    pub cert_lifetime: String,
    /// Controller replicas.
    #[arg(long, default_value_t = 2)]
    pub controller_replicas: i32,
    /// Injector replicas.
    #[arg(long, default_value_t = 2)]
    pub injector_replicas: i32,
    /// Inject the proxy as a native sidecar (`true`, for Kubernetes >= 1.29) or
    /// as a classic sidecar (`false`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub native_sidecars: bool,
    /// The API server calls the webhook at this URL (`https://host:port/inject`)
    /// instead of the injector's Service: for an injector outside the cluster.
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// What the API server does when the injector does not answer.
    #[arg(long, value_enum, default_value_t = FailurePolicy::Fail)]
    pub failure_policy: FailurePolicy,
    /// The mesh-wide default inbound mode.
    /// `allow-all` (default), `mesh-only`, `deny` or `audit`.
    #[arg(long, value_parser = options::parse_inbound_mode, default_value = "allow-all")]
    pub default_inbound_mode: InboundMode,
    /// Injected proxies send their spans to this OpenTelemetry collector,
    /// OTLP over gRPC (`http://otel-collector.observability:4317`, `https://`
    /// for TLS). Default: tracing off.
    #[arg(long, default_value = "")]
    pub otlp_endpoint: String,
    /// The share of new traces the proxies sample, 0 to 1; requests that
    /// arrive with a trace context follow the caller's decision.
    #[arg(long, default_value = "0.01")]
    pub trace_sample_ratio: String,
    /// Use the issuer in this directory (`tls.crt`, `tls.key`, `ca.crt`)
    /// instead of generating a trust anchor and an issuer.
    #[arg(long)]
    pub issuer_dir: Option<PathBuf>,
    #[arg(long)]
    pub controller_image: Option<String>,
    #[arg(long)]
    pub injector_image: Option<String>,
    #[arg(long)]
    pub proxy_image: Option<String>,
    #[arg(long)]
    pub init_image: Option<String>,
    /// `yaml` (multi-document) or `json` (a v1 List).
    #[arg(long, short, value_enum, default_value_t = ManifestFormat::Yaml)]
    pub output: ManifestFormat,
    /// Apply to the cluster (server-side apply) instead of printing.
    #[arg(long)]
    pub apply: bool,
    /// The kubeconfig for `--apply` (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ManifestFormat {
    Yaml,
    Json,
}

impl InstallArgs {
    pub fn options(&self) -> InstallOptions {
        let defaults = InstallOptions::default();
        InstallOptions {
            namespace: self.namespace.clone(),
            trust_domain: self.trust_domain.clone(),
            cert_lifetime: self.cert_lifetime.clone(),
            controller_replicas: self.controller_replicas,
            injector_replicas: self.injector_replicas,
            native_sidecars: self.native_sidecars,
            webhook_url: self.webhook_url.clone(),
            failure_policy: self.failure_policy,
            default_inbound_mode: self.default_inbound_mode,
            otlp_endpoint: self.otlp_endpoint.clone(),
            trace_sample_ratio: self.trace_sample_ratio.clone(),
            controller_image: self
                .controller_image
                .clone()
                .unwrap_or(defaults.controller_image),
            injector_image: self
                .injector_image
                .clone()
                .unwrap_or(defaults.injector_image),
            proxy_image: self.proxy_image.clone().unwrap_or(defaults.proxy_image),
            init_image: self.init_image.clone().unwrap_or(defaults.init_image),
            audit_volume_size: defaults.audit_volume_size,
        }
    }
}

/// Runs `weft install`.
pub fn run(args: &InstallArgs) -> anyhow::Result<()> {
    let opts = args.options();
    opts.check()?;
    let pki = Pki::generate(&opts, args.issuer_dir.as_deref())
        .context("could not prepare the key material")?;
    let docs = install_documents(&opts, &pki)?;
    if args.apply {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")?;
        return runtime.block_on(async {
            let client = kube_client::client(args.kubeconfig.as_deref()).await?;
            apply::apply_all(&client, &docs).await
        });
    }
    let text = match args.output {
        ManifestFormat::Yaml => render::to_yaml(&docs),
        ManifestFormat::Json => serde_json::to_string_pretty(&render::to_json(&docs))? + "\n",
    };
    print!("{text}");
    Ok(())
}

/// Writes the default rendering into `dir` (`deploy/`): `weft __write-deploy deploy`.
pub fn write_deploy(dir: &std::path::Path) -> anyhow::Result<()> {
    let docs = base_documents(&InstallOptions::default())?;
    for (name, text) in render::deploy_files(&docs) {
        let path = dir.join(&name);
        std::fs::write(&path, text)
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    Ok(())
}

/// The objects of `deploy/`: everything but key material and CRDs.
pub fn base_documents(opts: &InstallOptions) -> Result<Vec<Document>, RenderError> {
    let mut docs = vec![manifests::namespace(opts)?];
    docs.extend(rbac::documents(opts)?);
    docs.extend(manifests::controller(opts)?);
    docs.extend(manifests::injector(opts)?);
    docs.push(webhook::configuration(opts, None)?);
    Ok(docs)
}

/// Everything `weft install` renders, in the order it is applied: the
/// namespace and CRDs first, the webhook configuration last (so that pods
/// reach it only once the rest exists).
pub fn install_documents(opts: &InstallOptions, pki: &Pki) -> anyhow::Result<Vec<Document>> {
    let mut docs = vec![manifests::namespace(opts)?];
    docs.extend(crd_documents()?);
    docs.extend(rbac::documents(opts)?);
    docs.extend(pki.documents(opts)?);
    docs.extend(manifests::controller(opts)?);
    docs.extend(manifests::injector(opts)?);
    docs.push(webhook::configuration(opts, Some(&pki.serving.ca))?);
    Ok(docs)
}

/// The CRDs of `deploy/crds/`, embedded at build time.
fn crd_documents() -> anyhow::Result<Vec<Document>> {
    let mut docs = Vec::new();
    for (file, text) in crds::CRD_FILES {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let body = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
                .with_context(|| format!("deploy/crds/{file} is not valid YAML"))?;
            if !body.is_null() {
                docs.push(Document::from_value(
                    DeployFile::InstallOnly,
                    format!("From deploy/crds/{file} (generated from the Rust types)."),
                    body,
                ));
            }
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn deploy_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
    }

    /// `deploy/` is the default rendering; regenerate it with
    /// `WEFT_UPDATE_DEPLOY=1 cargo test -p weft-cli deploy_files`.
    #[test]
    fn deploy_files_are_current() {
        let docs = base_documents(&InstallOptions::default()).unwrap();
        let files = render::deploy_files(&docs);
        let dir = deploy_dir();
        if std::env::var_os("WEFT_UPDATE_DEPLOY").is_some() {
            write_deploy(&dir).unwrap();
            eprintln!("rewrote {} files in {}", files.len(), dir.display());
            return;
        }
        let mut stale = Vec::new();
        for (name, text) in &files {
            match std::fs::read_to_string(dir.join(name)) {
                Ok(current) if current == *text => {}
                Ok(_) => stale.push(format!("{name} differs")),
                Err(e) => stale.push(format!("{name}: {e}")),
            }
        }
        assert!(
            stale.is_empty(),
            "deploy/ is stale ({}); run `WEFT_UPDATE_DEPLOY=1 cargo test -p weft-cli deploy_files`",
            stale.join(", ")
        );
    }

    #[test]
    fn every_rbac_rule_carries_its_reason() {
        let docs = rbac::documents(&InstallOptions::default()).unwrap();
        for doc in docs.iter().filter(|d| d.kind() == "ClusterRole") {
            let rules = doc.body["rules"].as_sequence().unwrap();
            assert_eq!(rules.len(), doc.rule_comments.len(), "{}", doc.name());
            let yaml = doc.to_yaml();
            let mut commented = 0;
            let mut previous = "";
            for line in yaml.lines() {
                if line.starts_with("- apiGroups:") {
                    assert!(previous.starts_with("# "), "uncommented rule in:\n{yaml}");
                    commented += 1;
                }
                previous = line;
            }
            assert_eq!(commented, rules.len(), "{yaml}");
        }
    }

    #[test]
    fn the_webhook_url_replaces_the_service_and_the_bundle_is_filled() {
        let opts = InstallOptions {
            webhook_url: Some("https://127.0.0.1:9443/inject".into()),
            ..InstallOptions::default()
        };
        let pki = Pki::generate(&opts, None).unwrap();
        let docs = install_documents(&opts, &pki).unwrap();
        let webhook = docs
            .iter()
            .find(|d| d.kind() == "MutatingWebhookConfiguration")
            .unwrap();
        for entry in webhook.body["webhooks"].as_sequence().unwrap() {
            let client = &entry["clientConfig"];
            assert_eq!(
                client["url"].as_str(),
                Some("https://127.0.0.1:9443/inject")
            );
            assert!(client["service"].is_null());
            assert!(!client["caBundle"].as_str().unwrap().is_empty());
        }
        weft_controller::ca::verify_serving_cert(
            &pki.serving.ca,
            &pki.serving.cert,
            "127.0.0.1",
            std::time::SystemTime::now(),
        )
        .unwrap();
        weft_controller::ca::verify_serving_cert(
            &pki.serving.ca,
            &pki.serving.cert,
            "weft-injector.weft-system.svc",
            std::time::SystemTime::now(),
        )
        .unwrap();
        assert!(
            weft_controller::ca::verify_serving_cert(
                &pki.serving.ca,
                &pki.serving.cert,
                "other.weft-system.svc",
                std::time::SystemTime::now(),
            )
            .is_err()
        );
    }
}
