//! `weft audit`: evidence for security teams.
//!
//! - `certs`: the controller's issuance audit trail, its hash chain verified;
//! - `identities`: every workload identity, who holds it, the certificate in use;
//! - `edges`: who called whom, over mTLS or not, allowed by which policy;
//! - `policy`: who may call each service, and what to fix.
//!
//! Each builds a [`report::Report`], written as a table (coloured on a
//! terminal), `--output json`, or `--output html` (one self-contained page).

mod certs;
mod edges;
mod html;
mod identities;
mod policy;
mod report;
mod source;
mod table;

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use report::AuditFormat;
use source::SourceArgs;

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// List certificate issuances and refusals after verifying the trail.
    Certs {
        /// The audit trail (the controller's --audit-log).
        #[arg(long, default_value = ".weft/audit.log")]
        file: PathBuf,
        #[arg(long, short, value_enum, default_value_t = AuditFormat::Table)]
        output: AuditFormat,
    },
    /// Every workload identity, the workloads holding it, and the serial,
    /// expiry and renewal time of the certificate each serves with.
    Identities {
        #[command(flatten)]
        source: SourceArgs,
        #[arg(long, short, value_enum, default_value_t = AuditFormat::Table)]
        output: AuditFormat,
    },
    /// Who called whom, with request and connection counts, whether each
    /// edge was mTLS, and which policy allowed (or refused) it.
    Edges {
        #[command(flatten)]
        source: SourceArgs,
        /// With --prometheus: the window to count over (for example 5m, 1h;
        /// Prometheus's `increase`, rounded). Without it: the counters since
        /// each proxy started (the only choice for --proxy).
        #[arg(long, value_parser = humantime::parse_duration)]
        window: Option<Duration>,
        #[arg(long, short, value_enum, default_value_t = AuditFormat::Table)]
        output: AuditFormat,
    },
    /// For each service: who may call it, and a finding for each service
    /// without a policy, each that allows plaintext, and each policy that
    /// matches nothing or is invalid.
    Policy {
        /// The local policy directory. Default: the running `weft demo`'s.
        #[arg(long, conflicts_with = "kubeconfig")]
        policy_dir: Option<PathBuf>,
        /// Read the cluster of this kubeconfig instead (Services, Pods,
        /// Namespaces, AuthorizationPolicies in every namespace).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        #[arg(long, short, value_enum, default_value_t = AuditFormat::Table)]
        output: AuditFormat,
    },
}

pub(crate) fn run(command: &AuditCommand) -> anyhow::Result<()> {
    let (report, format) = match command {
        AuditCommand::Certs { file, output } => (certs::report(file)?, *output),
        AuditCommand::Identities { source, output } => {
            let source = source.resolve()?;
            (runtime()?.block_on(identities::report(&source))?, *output)
        }
        AuditCommand::Edges {
            source,
            window,
            output,
        } => {
            let source = source.resolve()?;
            (
                runtime()?.block_on(edges::report(&source, *window))?,
                *output,
            )
        }
        AuditCommand::Policy {
            policy_dir,
            kubeconfig,
            output,
        } => {
            let report = match kubeconfig {
                Some(file) => runtime()?.block_on(policy::report_kube(Some(file)))?,
                None => {
                    let dir = policy::resolve_dir(policy_dir.as_deref())?;
                    runtime()?.block_on(policy::report(&dir))?
                }
            };
            (report, *output)
        }
    };
    let colour = table::colour_stdout();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    report::write(&mut out, &report, format, colour)?;
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
