//! `weft`: the command line of the mesh.

use clap::Parser;

/// weft: a sidecar service mesh for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
