//! `weft`: the command line of the mesh.
//!
//! - `audit.rs`: `weft audit certs`, the issuance audit trail as a table or JSON.

mod audit;

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
    /// Audit what the mesh did.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Audit(command) => audit::run(&command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e:#}");
            ExitCode::FAILURE
        }
    }
}
