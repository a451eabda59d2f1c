//! `weft-benches`: see `benches/README.md`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use weft_benches::config::{Cli, Command, Settings};
use weft_benches::handshake::HandshakeSpec;
use weft_benches::load::LoadSpec;
use weft_benches::{backend, handshake, idle, load, report, run};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_BENCH_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::All(args) => {
            let settings = Settings::from_args(&args).map_err(anyhow::Error::msg)?;
            weft_benches::interrupt::install().context("catch SIGTERM, SIGINT and SIGHUP")?;
            all(&settings)
        }
        Command::Backend { listen } => runtime()?.block_on(async {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("bind {listen}"))?;
            println!("listening {}", listener.local_addr()?);
            backend::serve(listener).await;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Load { spec } => {
            let spec: LoadSpec = serde_json::from_str(&spec).context("parse --spec")?;
            let result = runtime()?.block_on(load::run(&spec));
            println!("{}", serde_json::to_string(&result)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Idle {
            addr,
            count,
            hold_secs,
        } => {
            runtime()?.block_on(idle::hold(addr, count, Duration::from_secs(hold_secs)));
            Ok(ExitCode::SUCCESS)
        }
        Command::Webhook { quick } => {
            let args = weft_benches::config::AllArgs {
                quick,
                repeats: None,
                duration_secs: None,
                warmup_secs: None,
                idle_connections: None,
                out: "target/weft-bench".into(),
                systems: Vec::new(),
                weft_proxy: None,
                workers: None,
                second_workers: None,
            };
            let settings = Settings::from_args(&args).map_err(anyhow::Error::msg)?;
            let figure = run::webhook(&settings);
            println!("{}", serde_json::to_string_pretty(&figure)?);
            Ok(match figure {
                weft_benches::webhook::WebhookFigure::Measured { .. } => ExitCode::SUCCESS,
                weft_benches::webhook::WebhookFigure::NotMeasured { .. } => ExitCode::FAILURE,
            })
        }
        Command::Canary {
            proxies,
            weft_proxy,
        } => {
            let proxy = weft_benches::systems::find_weft_proxy(weft_proxy.as_deref())
                .map_err(anyhow::Error::msg)?;
            let weft = weft_benches::canary::find_weft().map_err(anyhow::Error::msg)?;
            let figure = weft_benches::canary::measure(&proxy.path, &weft, proxies);
            println!("{}", serde_json::to_string_pretty(&figure)?);
            Ok(match figure {
                weft_benches::canary::CanaryFigure::Measured { .. } => ExitCode::SUCCESS,
                weft_benches::canary::CanaryFigure::NotMeasured { .. } => ExitCode::FAILURE,
            })
        }
        Command::Handshake { spec } => {
            let spec: HandshakeSpec = serde_json::from_str(&spec).context("parse --spec")?;
            let result = runtime()?.block_on(handshake::run(&spec))?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn all(settings: &Settings) -> anyhow::Result<ExitCode> {
    let report = run::all(settings)?;
    let written = report::write(&report, &settings.out)?;
    eprintln!(
        "\nwrote {}, {} and {}",
        written.markdown.display(),
        written.json.display(),
        written.png.display()
    );
    if cfg!(debug_assertions) {
        eprintln!(
            "a debug build of the harness, so of the proxies and the weft CLI too: the figures \
             and the verdicts below say nothing of speed (figures: `cargo run -p weft-benches \
             --release -- all`)"
        );
    }
    for v in report::targets(&report) {
        if v.outcome == report::Outcome::NotMet {
            eprintln!("weft falls short: {}: {}", v.target, v.detail);
        }
    }
    // weft may be skipped only while the workspace has no weft-proxy binary.
    let missing = report::missing(&report, weft_proxy_declared());
    if missing.is_empty() {
        eprintln!("every system ran and produced figures");
        Ok(ExitCode::SUCCESS)
    } else {
        for m in &missing {
            eprintln!("missing: {m}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// Whether the workspace this harness was built from declares the
/// `weft-proxy` binary (then the weft pair must run).
fn weft_proxy_declared() -> bool {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../proxy/src/bin/weft-proxy.rs")
        .is_file()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")
}
