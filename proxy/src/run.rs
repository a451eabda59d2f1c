//! The `weft-proxy` program: configured by environment (`weft_api::consts::env`),
//! credentials from PEM files, drained on SIGTERM or `POST /shutdown`. Shared by the
//! `weft-proxy` binary and by `weft` (which runs proxies for `weft demo`).

use std::process::ExitCode;

use crate::Config;
use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use weft_api::tls::{Credentials, MeshTls, TrustAnchors};

/// Runs the proxy until it is stopped; the exit code says how it ended.
pub fn main() -> ExitCode {
    let config = match Config::from_process_env() {
        Ok(config) => config,
        Err(errors) => {
            eprint!("weft-proxy: {errors}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);
    crate::proxy::raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("weft-proxy: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("weft-proxy: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
    };
    let anchors = TrustAnchors::from_pem(&read(&config.trust_anchors_file, "trust anchors")?)
        .with_context(|| format!("in {}", config.trust_anchors_file.display()))?;
    let credentials = Credentials::from_pem(
        &read(&config.cert_file, "certificate chain")?,
        &read(&config.key_file, "private key")?,
    )
    .with_context(|| {
        format!(
            "in {} and {}",
            config.cert_file.display(),
            config.key_file.display()
        )
    })?;
    tracing::info!(identity = %credentials.identity(), "loaded workload certificate");
    let tls = MeshTls::new(anchors);
    tls.set_credentials(credentials);

    let grace = config.proxy.shutdown_grace;
    let proxy = crate::start(config.proxy, tls).await?;
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; draining"),
        _ = int.recv() => tracing::info!("SIGINT received; draining"),
        _ = proxy.shutdown_requested() => tracing::info!("draining"),
    }
    let drained = proxy.shutdown(grace).await;
    if drained {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!(
            grace_seconds = grace.as_secs_f64(),
            "grace period over; exiting with work in flight"
        );
    }
    Ok(())
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|error| {
        eprintln!(
            "weft-proxy: invalid log filter {:?} ({error}); using \"info\"",
            config.log
        );
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}
