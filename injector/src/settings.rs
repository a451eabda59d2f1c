//! The `weft-injector` command line, parsed in one place. Flags are read as text
//! and checked together by [`Args::settings`], so every bad value is reported
//! at once, each naming its flag; tests feed argument lists to
//! [`Args::try_parse_from`](clap::Parser::try_parse_from).
//!
//! Flags (defaults in parentheses):
//! - `--listen` (0.0.0.0:9443): the webhook's HTTPS address; AdmissionReviews
//!   are POSTed to `/inject`.
//! - `--admin-addr` (0.0.0.0:9990): `/live`, `/ready`, `/metrics` (plain HTTP).
//! - `--cert-file` (/var/run/weft/webhook/tls.crt), `--key-file`
//!   (/var/run/weft/webhook/tls.key): the serving certificate chain and key (PEM),
//!   re-read every `--reload-interval` and swapped in when they change.
//! - `--config` (none: every default of `InjectConfig`): what injected pods get,
//!   a YAML or JSON file with camelCase keys (`proxyImage`, `initImage`,
//!   `trustDomain`, `meshNamespace`, `controllerAddr`, `nativeSidecars`, ...).
//! - `--trust-anchors-file` (/var/run/weft/anchors/ca-bundle.crt): the PEM bundle
//!   of the mounted `weft-trust-anchors` ConfigMap (key `ca-bundle.crt`), given to
//!   every injected proxy; re-read like the certificate.
//! - `--reload-interval` (5s): how often those files are read for changes.
//! - `--kubeconfig` (none: in-cluster configuration, else `KUBECONFIG` or
//!   `~/.kube/config`): how to reach the API server (namespace watch).
//! - `--log` (info): log filter, `tracing_subscriber::EnvFilter` syntax.
//! - `--log-format` (plain): `plain` or `json`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use weft_api::consts::injector::{SERVING_CERT_FILE, SERVING_KEY_FILE, TRUST_ANCHORS_FILE};

use crate::config::InjectConfig;

/// The weft injector: the mutating admission webhook that adds the weft proxy to pods.
#[derive(Debug, Clone, Parser)]
#[command(name = "weft-injector", version, about)]
pub struct Args {
    /// HTTPS address of the webhook (AdmissionReviews are POSTed to /inject).
    #[arg(long, default_value = "0.0.0.0:9443")]
    pub listen: String,
    /// Address of the admin server: /live, /ready, /metrics.
    #[arg(long, default_value = "0.0.0.0:9990")]
    pub admin_addr: String,
    /// Serving certificate chain, PEM, leaf first (reloaded when it changes).
    #[arg(long, default_value = SERVING_CERT_FILE)]
    pub cert_file: PathBuf,
    /// Serving private key, PEM (reloaded when it changes).
    #[arg(long, default_value = SERVING_KEY_FILE)]
    pub key_file: PathBuf,
    /// What injected pods get: a YAML or JSON InjectConfig; default: built-in defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Trust anchors (PEM bundle) given to injected proxies (reloaded when it changes).
    #[arg(long, default_value = TRUST_ANCHORS_FILE)]
    pub trust_anchors_file: PathBuf,
    /// How often the certificate, key and anchors files are read for changes (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s")]
    pub reload_interval: String,
    /// Kubeconfig file; default: in-cluster configuration, else KUBECONFIG or ~/.kube/config.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, default_value = "info")]
    pub log: String,
    /// Log format: plain or json.
    #[arg(long, default_value = "plain")]
    pub log_format: String,
}

/// Checked settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_addr: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub inject: InjectConfig,
    pub trust_anchors_file: PathBuf,
    pub reload_interval: Duration,
    pub kubeconfig: Option<PathBuf>,
    pub log: String,
    pub json_logs: bool,
}

/// Every problem found in the flags, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct SettingsErrors(pub Vec<String>);

impl Args {
    /// Checks every flag; all problems are reported together.
    pub fn settings(&self) -> Result<Settings, SettingsErrors> {
        let mut errors = Vec::new();
        let mut addr = |flag: &str, text: &str| {
            text.parse::<SocketAddr>()
                .map_err(|e| errors.push(format!("{flag} {text:?}: {e}; expected IP:PORT")))
                .ok()
        };
        let listen = addr("--listen", &self.listen);
        let admin_addr = addr("--admin-addr", &self.admin_addr);
        let reload_interval = match humantime::parse_duration(&self.reload_interval) {
            Ok(d) if d.is_zero() => {
                errors.push("--reload-interval: must be more than 0s".into());
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                errors.push(format!(
                    "--reload-interval {:?}: {e} (e.g. 5s, 500ms)",
                    self.reload_interval
                ));
                None
            }
        };
        let inject = match &self.config {
            None => Some(InjectConfig::default()),
            Some(path) => read_config(path).map_err(|e| errors.push(e)).ok(),
        };
        if tracing_subscriber::EnvFilter::try_new(&self.log).is_err() {
            errors.push(format!(
                "--log {:?}: not a valid filter (e.g. info, weft_injector=debug)",
                self.log
            ));
        }
        let json_logs = match self.log_format.as_str() {
            "plain" => false,
            "json" => true,
            other => {
                errors.push(format!("--log-format {other:?}: expected plain or json"));
                false
            }
        };
        match (listen, admin_addr, reload_interval, inject) {
            (Some(listen), Some(admin_addr), Some(reload_interval), Some(inject))
                if errors.is_empty() =>
            {
                Ok(Settings {
                    listen,
                    admin_addr,
                    cert_file: self.cert_file.clone(),
                    key_file: self.key_file.clone(),
                    inject,
                    trust_anchors_file: self.trust_anchors_file.clone(),
                    reload_interval,
                    kubeconfig: self.kubeconfig.clone(),
                    log: self.log.clone(),
                    json_logs,
                })
            }
            _ => Err(SettingsErrors(errors)),
        }
    }
}

/// Reads an [`InjectConfig`] from a YAML or JSON file (JSON is YAML).
fn read_config(path: &std::path::Path) -> Result<InjectConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--config {}: cannot read it: {e}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(InjectConfig::default());
    }
    serde_yaml::from_str(&text).map_err(|e| {
        format!(
            "--config {}: not an injector configuration: {e}",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, SettingsErrors> {
        let mut argv = vec!["weft-injector"];
        argv.extend_from_slice(args);
        Args::try_parse_from(argv).expect("flags parse").settings()
    }

    #[test]
    fn defaults_are_the_deployment_paths() {
        let s = parse(&[]).expect("defaults are valid");
        assert_eq!(s.listen, "0.0.0.0:9443".parse().expect("addr"));
        assert_eq!(s.listen.port(), weft_api::consts::INJECTOR_WEBHOOK_PORT);
        assert_eq!(
            s.admin_addr.port(),
            weft_api::consts::CONTROL_PLANE_ADMIN_PORT
        );
        assert_eq!(s.cert_file, PathBuf::from("/var/run/weft/webhook/tls.crt"));
        assert_eq!(s.key_file, PathBuf::from("/var/run/weft/webhook/tls.key"));
        assert_eq!(
            s.trust_anchors_file,
            PathBuf::from("/var/run/weft/anchors/ca-bundle.crt")
        );
        assert_eq!(s.reload_interval, Duration::from_secs(5));
        assert_eq!(s.inject, InjectConfig::default());
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, "proxyImage: [not, a, string]\n").expect("write");
        let errors = parse(&[
            "--listen",
            "nowhere",
            "--admin-addr",
            "1.2.3.4",
            "--reload-interval",
            "0s",
            "--config",
            config.to_str().expect("utf-8 path"),
            "--log-format",
            "xml",
        ])
        .expect_err("all bad")
        .0;
        assert_eq!(errors.len(), 5, "{errors:#?}");
        for flag in [
            "--listen",
            "--admin-addr",
            "--reload-interval",
            "--config",
            "--log-format",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(flag)),
                "{flag}: {errors:#?}"
            );
        }
    }

    #[test]
    fn reads_a_yaml_or_json_config() {
        let dir = tempfile::tempdir().expect("temp dir");
        let yaml = dir.path().join("c.yaml");
        std::fs::write(&yaml, "proxyImage: reg/proxy:1\nnativeSidecars: false\n").expect("write");
        let s = parse(&["--config", yaml.to_str().expect("utf-8")]).expect("valid");
        assert_eq!(s.inject.proxy_image, "reg/proxy:1");
        assert!(!s.inject.native_sidecars);
        let json = dir.path().join("c.json");
        std::fs::write(&json, r#"{"trustDomain": "example.org"}"#).expect("write");
        let s = parse(&["--config", json.to_str().expect("utf-8")]).expect("valid");
        assert_eq!(s.inject.trust_domain, "example.org");
    }
}
