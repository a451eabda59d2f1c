//! `weft-injector`: the mutating admission webhook. Flags: see `settings.rs`
//! (`weft-injector --help`).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use weft_injector::injector::{self, Parts};
use weft_injector::metrics::Metrics;
use weft_injector::namespaces::{self, NamespaceIndex};
use weft_injector::server::mutate_decision;
use weft_injector::settings::{Args, Settings};

fn main() -> ExitCode {
    let settings = match Args::parse().settings() {
        Ok(settings) => settings,
        Err(errors) => {
            eprintln!("weft-injector: invalid flags:\n{errors}");
            return ExitCode::from(2);
        }
    };
    init_logs(&settings);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("weft-injector: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("weft-injector: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let client = kube_client(&settings).await?;
    let metrics = Arc::new(Metrics::new());
    let index = Arc::new(NamespaceIndex::new(metrics.clone()));
    let watch = tokio::spawn(namespaces::watch(client.clone(), index.clone()));
    let running = injector::start(Parts {
        decide: mutate_decision(),
        config: settings.inject,
        cert_file: settings.cert_file,
        key_file: settings.key_file,
        trust_anchors_file: Some(settings.trust_anchors_file),
        reload_interval: settings.reload_interval,
        namespaces: index,
        client: Some(client),
        metrics,
        listen: settings.listen,
        admin_addr: settings.admin_addr,
    })
    .await?;
    shutdown_signal().await?;
    tracing::info!("shutting down: finishing the requests in flight");
    watch.abort();
    running.shutdown().await;
    Ok(())
}

async fn kube_client(settings: &Settings) -> anyhow::Result<kube::Client> {
    let config = match &settings.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("read --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("use --kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration: not in a cluster, and neither KUBECONFIG nor \
             ~/.kube/config is usable; pass --kubeconfig",
        )?,
    };
    kube::Client::try_from(config).context("build the Kubernetes client")
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listen for SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("listen for Ctrl-C")?,
    }
    Ok(())
}

fn init_logs(settings: &Settings) {
    // The filter was checked with the other flags.
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if settings.json_logs {
        builder.json().init();
    } else {
        builder.init();
    }
}
