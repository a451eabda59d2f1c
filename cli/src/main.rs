//! `weft`: the command line of the mesh.
//!
//! One binary: the user-facing commands, plus hidden ones (`__proxy`,
//! `__demo-app`) with which `weft demo` runs the mesh's programs from this
//! same executable, so that a newcomer builds one thing.
//!
//! - `demo/`: `weft demo`, a whole mesh on one machine.
//! - `audit/`: `weft audit certs`, `identities`, `edges`, `policy`: evidence for
//!   security teams, as tables, JSON or one self-contained HTML page.
//! - `install/`: `weft install`, the mesh's Kubernetes objects (and `deploy/`).
//! - `check/`: `weft check`, is the cluster ready for the mesh, is the mesh healthy.
//! - `inject.rs`: `weft inject` / `weft uninject`, the injection applied to manifests.
//! - `output.rs`: `--output table|json`.

// A binary: `pub` inside it marks what a module offers to its siblings.
#![allow(unreachable_pub)]

mod audit;
mod canary;
mod check;
mod demo;
mod inject;
mod install;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// weft: a sidecar service mesh for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a whole mesh on this machine (no Kubernetes, no root): a local
    /// controller, demo services with their sidecars, live traffic, and a live
    /// view of identities, mTLS, success rates and latency.
    Demo(demo::DemoArgs),
    /// Renders the mesh's Kubernetes objects with fresh key material
    /// (`weft install | kubectl apply -f -`), or applies them (`--apply`).
    Install(Box<install::InstallArgs>),
    /// Checks that the cluster can run the mesh (`--pre`) and that it is healthy.
    Check(check::CheckArgs),
    /// Shifts a service's traffic between its backends (its HTTPRoute's
    /// weights), shows each backend's health, promotes or rolls back.
    Canary(canary::CanaryArgs),
    /// Audit what the mesh did.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Writes the default rendering of the manifests (the kustomize base) into a
    /// directory: how `deploy/` is generated.
    #[command(name = "__write-deploy", hide = true)]
    WriteDeploy { dir: std::path::PathBuf },
    /// Adds the weft proxy to the pods and pod templates of a manifest
    /// (multi-document YAML in, on stdout out), as the injector would.
    Inject(inject::InjectArgs),
    /// Removes what `weft inject` added from a manifest.
    Uninject(inject::UninjectArgs),
    /// Runs the weft proxy, configured by environment (WEFT_PROXY_*).
    #[command(name = "__proxy", hide = true)]
    Proxy,
    /// Runs one service of the demo application.
    #[command(name = "__demo-app", hide = true)]
    DemoApp(demo::AppArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::demo(args),
        Command::Audit(command) => match audit::run(&command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weft: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Install(args) => match install::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weft install: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Check(args) => check::run(&args),
        Command::Canary(args) => {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(canary::run(args)));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("weft canary: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::WriteDeploy { dir } => match install::write_deploy(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weft: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Inject(args) => inject::inject(&args),
        Command::Uninject(args) => inject::uninject(&args),
        Command::Proxy => {
            demo::procs::exit_with_parent();
            weft_proxy::run::main_with_args(Vec::new())
        }
        Command::DemoApp(args) => demo::run_app(args),
    }
}
