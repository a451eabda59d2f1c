//! `weft-init`: installs the pod's interception rules (see `weft_proxy::iptables`).

use std::collections::HashMap;
use std::process::ExitCode;

use weft_proxy::iptables::{self, ConfigError, InitConfig, Plan};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_INIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let env: HashMap<String, String> = std::env::vars().collect();
    let config = match InitConfig::from_args_and_env(std::env::args_os(), &env) {
        Ok(config) => config,
        Err(ConfigError::Usage(e)) => e.exit(),
        Err(e) => {
            eprintln!("weft-init: {e}");
            return ExitCode::from(2);
        }
    };
    let plan = Plan::new(&config);
    if config.dry_run {
        print!("{}", plan.dry_run());
        return ExitCode::SUCCESS;
    }
    match iptables::apply(&plan) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-init: {e}");
            ExitCode::FAILURE
        }
    }
}
