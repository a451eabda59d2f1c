//! The `weft-controller` command line, parsed in one place.
//!
//! Flags are read as text and checked together by [`ServeArgs::settings`] and
//! [`IssueTokenArgs::check`], so that every bad value is reported at once, each
//! naming its flag. Tests feed argument lists to [`Args::try_parse_from`].
//!
//! `weft-controller serve` flags (defaults in parentheses):
//! - `--mode local|kubernetes` (default local): local mode keeps its state in
//!   `--state-dir` and proves identities with bootstrap tokens; kubernetes mode
//!   reads the issuer from the mounted `weft-issuer` Secret and proves
//!   identities with TokenReviews (in-cluster config or `KUBECONFIG`).
//! - `--state-dir` (default .weft): local mode's issuer (`issuer/`), bootstrap tokens
//!   and audit trail.
//! - `--issuer-dir` (default local: `<state-dir>/issuer`; kubernetes: `/var/run/weft/issuer`).
//! - `--audit-log` (default local: `<state-dir>/audit.log`; kubernetes: `/var/lib/weft/audit.log`).
//! - `--audit-stdout true|false` (default local: false; kubernetes: true): also
//!   write each audit record as one JSON line on stdout, for the cluster's log pipeline.
//! - `--trust-domain` (default cluster.local).
//! - `--grpc-addr` (default local: 127.0.0.1:8090; kubernetes: 0.0.0.0:8090).
//! - `--admin-addr` (default local: 127.0.0.1:9990; kubernetes: 0.0.0.0:9990).
//! - `--cert-lifetime` (default 24h): workload certificate lifetime; `90s`, `15m`, `24h`,
//!   `7d` or plain seconds.
//! - `--issuer-poll` (default 5s): how often the issuer files are checked for changes.
//! - `--policy-dir DIR` (local mode; default none): serve `weft.v1.Discovery` from the
//!   HTTPRoute, GRPCRoute, ResiliencePolicy and Workloads documents of DIR's `*.yaml`
//!   files, reloaded when they change (`discovery::local`).
//! - `--log` (default info): log filter (`tracing_subscriber::EnvFilter` syntax).
//! - `--log-format` (default plain): `plain`, or `json` for one JSON object per line.
//!
//! `weft-controller issue-token --identity <spiffe id> [--ttl 30d] [--state-dir .weft]`
//! prints a bootstrap token for a local workload.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use weft_api::Identity;
use weft_api::consts::{CONTROL_PLANE_ADMIN_PORT, CONTROLLER_GRPC_PORT};
use weft_api::identity::DEFAULT_TRUST_DOMAIN;

use crate::controller::{AuditEcho, Settings};

/// The weft controller: the mesh CA and the gRPC API the proxies use.
#[derive(Debug, Parser)]
#[command(name = "weft-controller", version, about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller.
    Serve(Box<ServeArgs>),
    /// Issue a bootstrap token for a local workload and print it.
    IssueToken(IssueTokenArgs),
}

#[derive(Debug, Clone, ClapArgs)]
pub struct ServeArgs {
    /// `local` or `kubernetes`.
    #[arg(long, default_value = "local")]
    pub mode: String,
    /// Local mode's state directory.
    #[arg(long, default_value = ".weft")]
    pub state_dir: PathBuf,
    /// Directory holding tls.crt, tls.key and ca.crt.
    #[arg(long)]
    pub issuer_dir: Option<PathBuf>,
    /// The issuance audit trail (JSON lines).
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Also write each audit record as a JSON line on stdout.
    #[arg(long)]
    pub audit_stdout: Option<bool>,
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// gRPC listen address.
    #[arg(long)]
    pub grpc_addr: Option<String>,
    /// Admin (metrics, probes) listen address.
    #[arg(long)]
    pub admin_addr: Option<String>,
    /// Workload certificate lifetime.
    #[arg(long, default_value = "24h")]
    pub cert_lifetime: String,
    /// How often the issuer files are checked for changes.
    #[arg(long, default_value = "5s")]
    pub issuer_poll: String,
    /// Local mode: the directory of policy and Workloads YAML that discovery serves.
    #[arg(long)]
    pub policy_dir: Option<PathBuf>,
    /// Log filter.
    #[arg(long, default_value = "info")]
    pub log: String,
    /// Log format: `plain` or `json` (one JSON object per line).
    #[arg(long, default_value = "plain")]
    pub log_format: String,
    /// The mesh's default inbound mode (`allow-all`, `mesh-only`, `deny` or
    /// `audit`) for ports of pods and namespaces without a
    /// `config.weft.io/default-inbound-policy` annotation.
    #[arg(long, default_value = "allow-all")]
    pub default_inbound_mode: String,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct IssueTokenArgs {
    /// The identity the token proves, `spiffe://<td>/ns/<ns>/sa/<sa>`.
    #[arg(long)]
    pub identity: String,
    /// How long the token is valid.
    #[arg(long, default_value = "30d")]
    pub ttl: String,
    /// The local controller's state directory.
    #[arg(long, default_value = ".weft")]
    pub state_dir: PathBuf,
}

/// How the controller proves identities and finds its issuer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Local,
    Kubernetes,
}

/// A checked `serve` configuration.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub mode: Mode,
    pub state_dir: PathBuf,
    pub settings: Settings,
    pub audit_echo: AuditEcho,
    pub log: String,
    /// One JSON object per log line (`--log-format json`).
    pub json_logs: bool,
    /// Local mode's policy directory, when discovery is served from one.
    pub policy_dir: Option<PathBuf>,
    pub default_inbound_mode: weft_api::policy::InboundMode,
}

/// Every problem found in the flags, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);

impl ServeArgs {
    /// Checks every flag and builds the controller's settings.
    pub fn settings(&self) -> Result<ServeConfig, ConfigErrors> {
        let mut errors = Vec::new();
        let mode = match self.mode.as_str() {
            "local" => Mode::Local,
            "kubernetes" => Mode::Kubernetes,
            other => {
                errors.push(format!(
                    "--mode {other:?}: expected `local` or `kubernetes`"
                ));
                Mode::Local
            }
        };
        let default_ip = match mode {
            Mode::Local => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Mode::Kubernetes => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        if let Err(e) = weft_api::control::controller_identity(&self.trust_domain) {
            errors.push(format!("--trust-domain {:?}: {e}", self.trust_domain));
        }
        let mut addr = |flag: &str, value: &Option<String>, port: u16| match value {
            None => SocketAddr::new(default_ip, port),
            Some(text) => text.parse().unwrap_or_else(|e| {
                errors.push(format!(
                    "{flag} {text:?}: {e}; expected ip:port, e.g. 127.0.0.1:{port}"
                ));
                SocketAddr::new(default_ip, port)
            }),
        };
        let grpc_addr = addr("--grpc-addr", &self.grpc_addr, CONTROLLER_GRPC_PORT);
        let admin_addr = addr("--admin-addr", &self.admin_addr, CONTROL_PLANE_ADMIN_PORT);
        let cert_lifetime = duration_flag("--cert-lifetime", &self.cert_lifetime, &mut errors);
        if cert_lifetime.is_some_and(|d| d < Duration::from_secs(2)) {
            errors.push(format!(
                "--cert-lifetime {:?}: must be at least 2s",
                self.cert_lifetime
            ));
        }
        let issuer_poll = duration_flag("--issuer-poll", &self.issuer_poll, &mut errors);
        if issuer_poll == Some(Duration::ZERO) {
            errors.push("--issuer-poll: must be more than 0s".into());
        }
        if let Some(dir) = &self.policy_dir {
            if mode != Mode::Local {
                errors.push(format!(
                    "--policy-dir {}: only in local mode; on Kubernetes policy comes from the API server",
                    dir.display()
                ));
            } else if !dir.is_dir() {
                errors.push(format!(
                    "--policy-dir {}: not a directory; create it (it may be empty) or fix the path",
                    dir.display()
                ));
            }
        }
        let default_inbound_mode = self
            .default_inbound_mode
            .parse::<weft_api::policy::InboundMode>()
            .unwrap_or_else(|problem| {
                errors.push(format!("--default-inbound-mode: {problem}"));
                weft_api::policy::InboundMode::default()
            });
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            errors.push(format!("--log {:?}: {e}", self.log));
        }
        let json_logs = match self.log_format.as_str() {
            "plain" => false,
            "json" => true,
            other => {
                errors.push(format!(
                    "--log-format {other:?}: not a log format; use plain or json"
                ));
                false
            }
        };
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let (issuer_dir, audit_path) = match mode {
            Mode::Local => (
                self.issuer_dir
                    .clone()
                    .unwrap_or_else(|| self.state_dir.join("issuer")),
                self.audit_log
                    .clone()
                    .unwrap_or_else(|| self.state_dir.join("audit.log")),
            ),
            Mode::Kubernetes => (
                self.issuer_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/var/run/weft/issuer")),
                self.audit_log
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/var/lib/weft/audit.log")),
            ),
        };
        let audit_echo = match self.audit_stdout.unwrap_or(mode == Mode::Kubernetes) {
            true => AuditEcho::Stdout,
            false => AuditEcho::Off,
        };
        Ok(ServeConfig {
            mode,
            audit_echo,
            state_dir: self.state_dir.clone(),
            log: self.log.clone(),
            json_logs,
            policy_dir: self.policy_dir.clone(),
            default_inbound_mode,
            settings: Settings {
                trust_domain: self.trust_domain.clone(),
                issuer_dir,
                generate_issuer: mode == Mode::Local,
                issuer_poll: issuer_poll.unwrap_or_default(),
                cert_lifetime: cert_lifetime.unwrap_or_default(),
                grpc_addr,
                admin_addr,
                audit_path,
            },
        })
    }
}

impl IssueTokenArgs {
    /// Checks the flags: the identity and the validity of the token.
    pub fn check(&self) -> Result<(Identity, Duration), ConfigErrors> {
        let mut errors = Vec::new();
        let identity = self
            .identity
            .parse::<Identity>()
            .map_err(|e| errors.push(format!("--identity: {e}")))
            .ok();
        let ttl = duration_flag("--ttl", &self.ttl, &mut errors);
        match (identity, ttl) {
            (Some(identity), Some(ttl)) if errors.is_empty() => Ok((identity, ttl)),
            _ => Err(ConfigErrors(errors)),
        }
    }
}

fn duration_flag(flag: &str, text: &str, errors: &mut Vec<String>) -> Option<Duration> {
    parse_duration(text)
        .map_err(|e| errors.push(format!("{flag} {text:?}: {e}")))
        .ok()
}

/// Parses `90`, `90s`, `15m`, `24h` or `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| "expected a whole number followed by s, m, h or d (e.g. 24h)".to_owned())?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit {other:?}; use s, m, h or d")),
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| "too large".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<ServeConfig, ConfigErrors> {
        let mut argv = vec!["weft-controller", "serve"];
        argv.extend_from_slice(args);
        match Args::try_parse_from(argv).unwrap().command {
            Command::Serve(serve) => serve.settings(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults_follow_the_mode() {
        let local = serve(&[]).unwrap();
        assert_eq!(local.mode, Mode::Local);
        assert_eq!(local.settings.grpc_addr, "127.0.0.1:8090".parse().unwrap());
        assert_eq!(local.settings.admin_addr, "127.0.0.1:9990".parse().unwrap());
        assert_eq!(local.settings.cert_lifetime, Duration::from_secs(86_400));
        assert_eq!(local.settings.issuer_dir, PathBuf::from(".weft/issuer"));
        assert!(local.settings.generate_issuer);
        let kube = serve(&["--mode", "kubernetes", "--cert-lifetime", "10s"]).unwrap();
        assert_eq!(kube.settings.grpc_addr, "0.0.0.0:8090".parse().unwrap());
        assert_eq!(
            kube.settings.issuer_dir,
            PathBuf::from("/var/run/weft/issuer")
        );
        assert_eq!(kube.settings.cert_lifetime, Duration::from_secs(10));
        assert!(!kube.settings.generate_issuer);
        assert_eq!(local.audit_echo, AuditEcho::Off);
        assert_eq!(kube.audit_echo, AuditEcho::Stdout);
        let quiet = serve(&["--mode", "kubernetes", "--audit-stdout", "false"]).unwrap();
        assert_eq!(quiet.audit_echo, AuditEcho::Off);
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let err = serve(&[
            "--mode",
            "cloud",
            "--grpc-addr",
            "nowhere",
            "--admin-addr",
            "1.2.3.4",
            "--cert-lifetime",
            "1s",
            "--issuer-poll",
            "5 parsecs",
            "--trust-domain",
            "Bad.Domain",
            "--log-format",
            "xml",
        ])
        .unwrap_err();
        let text = err.to_string();
        for flag in [
            "--mode",
            "--grpc-addr",
            "--admin-addr",
            "--cert-lifetime",
            "--issuer-poll",
            "--trust-domain",
            "--log-format",
        ] {
            assert!(text.contains(flag), "{flag} missing from:\n{text}");
        }
        assert_eq!(err.0.len(), 7, "{text}");
        assert!(serve(&["--log-format", "json"]).unwrap().json_logs);
        assert!(!serve(&[]).unwrap().json_logs);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("3w").is_err());
    }

    #[test]
    fn issue_token_checks_identity_and_ttl() {
        let args = IssueTokenArgs {
            identity: "spiffe://cluster.local/ns/shop/sa/web".into(),
            ttl: "1h".into(),
            state_dir: ".weft".into(),
        };
        let (identity, ttl) = args.check().unwrap();
        assert_eq!(identity.service_account(), "web");
        assert_eq!(ttl, Duration::from_secs(3600));
        let bad = IssueTokenArgs {
            identity: "web".into(),
            ttl: "soon".into(),
            state_dir: ".weft".into(),
        };
        assert_eq!(bad.check().unwrap_err().0.len(), 2);
    }
}
