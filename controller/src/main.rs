//! `weft-controller`: runs the controller (`serve`) or issues a local bootstrap
//! token (`issue-token`). Flags are documented in `config.rs`.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use weft_controller::Controller;
use weft_controller::bootstrap::BootstrapTokens;
use weft_controller::config::{Args, Command, Mode};
use weft_controller::token::TokenVerifier;
use weft_controller::token_review::TokenReviewer;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Command::Serve(serve) => {
            let config = serve.settings()?;
            let logs = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log))
                .with_ansi(std::io::stdout().is_terminal());
            if config.json_logs {
                logs.json().init();
            } else {
                logs.init();
            }
            // kube's HTTPS client picks the process-wide provider.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let stop = tokio_util::sync::CancellationToken::new();
            let settings = weft_controller::discovery::IndexSettings {
                trust_domain: config.settings.trust_domain.clone(),
                default_inbound_mode: config.default_inbound_mode,
                ..Default::default()
            };
            let (verifier, discovery): (Arc<dyn TokenVerifier>, _) = match config.mode {
                Mode::Local => {
                    let discovery = match &config.policy_dir {
                        Some(dir) => Some(
                            weft_controller::discovery::local::discovery(
                                dir,
                                settings,
                                stop.clone(),
                            )?
                            .0,
                        ),
                        None => None,
                    };
                    (Arc::new(BootstrapTokens::new(&config.state_dir)), discovery)
                }
                Mode::Kubernetes => {
                    let client = kube::Client::try_default().await.context(
                        "could not configure the Kubernetes client (in-cluster config or KUBECONFIG)",
                    )?;
                    // Services, EndpointSlices, Pods, routes and policies
                    // from the API server feed the index.
                    // The status Lease lives in the controller's own
                    // namespace (in a pod: its ServiceAccount's).
                    let lease = weft_controller::discovery::lease::LeaseSettings::new(
                        client.default_namespace(),
                    );
                    let index = weft_controller::discovery::kube::start(
                        client.clone(),
                        settings,
                        lease,
                        stop.clone(),
                    );
                    let report = {
                        let index = index.clone();
                        Arc::new(move || {
                            serde_json::json!({
                                "source": "kubernetes",
                                "statuses": weft_controller::discovery::local::statuses_json(&index),
                            })
                        })
                    };
                    let discovery = weft_controller::controller::Discovery {
                        index: Arc::new(index),
                        report,
                    };
                    (
                        Arc::new(TokenReviewer::new(client, &config.settings.trust_domain)),
                        Some(discovery),
                    )
                }
            };
            let controller = Controller::start_with_discovery(
                config.settings,
                verifier,
                config.audit_echo,
                discovery,
            )
            .await?;
            shutdown_signal().await?;
            stop.cancel();
            controller.shutdown().await;
            Ok(())
        }
        Command::IssueToken(issue) => {
            let (identity, ttl) = issue.check()?;
            std::fs::create_dir_all(&issue.state_dir).with_context(|| {
                format!(
                    "could not create the state directory {}",
                    issue.state_dir.display()
                )
            })?;
            let token = BootstrapTokens::new(&issue.state_dir).issue(&identity, ttl)?;
            println!("{}", token.as_str());
            Ok(())
        }
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("could not listen for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("could not listen for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
