//! `weft check`: is the cluster ready for the mesh (`--pre`), and is the mesh
//! healthy. Each check is one line (✓/✗) with a hint when it fails; the exit
//! status is non-zero when any fails; `--output json` for machines.
//!
//! - `eval.rs`: the pure part, objects in, [`eval::CheckResult`] out (tested
//!   without an API server).
//! - `gather.rs`: reads those objects from the API server.

pub mod eval;
mod gather;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use eval::CheckResult;

use crate::output::OutputFormat;

/// `weft check` flags.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Only the checks that make sense before `weft install`.
    #[arg(long)]
    pub pre: bool,
    /// The mesh namespace.
    #[arg(long, default_value = weft_api::consts::MESH_NAMESPACE)]
    pub namespace: String,
    /// The kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

pub fn run(args: &CheckArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("weft check: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let results = runtime.block_on(gather::run_checks(args));
    print_results(&results, args.output);
    if results.iter().all(|r| r.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_results(results: &[CheckResult], format: OutputFormat) {
    match format {
        OutputFormat::Json => {
            let ok = results.iter().all(|r| r.ok);
            let value = serde_json::json!({ "ok": ok, "checks": results });
            println!("{value}");
        }
        OutputFormat::Table => {
            print!("{}", table(results, std::io::stdout().is_terminal()));
        }
    }
}

/// One line per check, a hint line under each failure; coloured when `colour`.
pub fn table(results: &[CheckResult], colour: bool) -> String {
    let paint = |code: &str, text: &str| {
        if colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    };
    let mut out = String::new();
    for r in results {
        let mark = if r.ok {
            paint("32", "✓")
        } else {
            paint("31", "✗")
        };
        out.push_str(&format!("{mark} {}: {}\n", r.name, r.detail));
        if let Some(hint) = &r.hint {
            out.push_str(&format!("    {} {hint}\n", paint("33", "hint:")));
        }
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed == 0 {
        out.push_str(&format!("{} checks passed\n", results.len()));
    } else {
        out.push_str(&format!("{failed} of {} checks failed\n", results.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_carries_its_hint_and_colour_only_on_a_terminal() {
        let results = [
            CheckResult::pass(eval::API_SERVER, "Kubernetes v1.33.0"),
            CheckResult::fail(eval::WEFT_CRDS, "missing: x", "run weft install"),
        ];
        let plain = table(&results, false);
        assert_eq!(
            plain,
            "✓ API server reachable: Kubernetes v1.33.0\n\
             ✗ weft CRDs: missing: x\n    hint: run weft install\n\
             1 of 2 checks failed\n"
        );
        assert!(!plain.contains('\x1b'));
        assert!(table(&results, true).contains("\x1b[31m✗\x1b[0m"));
    }
}
