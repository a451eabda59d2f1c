//! `weft demo`: a whole mesh on one machine.

pub mod app;
mod identity;
mod loadgen;
mod lock;
pub mod procs;
mod run;
pub(crate) mod running;
pub(crate) mod scrape;
pub(crate) mod stats;
mod topology;
mod traces;
mod view;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::output::OutputFormat;

/// Arguments of `weft demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Requests per second the load generator sends to `web`.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Stop by itself after this long (for example 20s or 2m); without it the
    /// demo runs until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Lifetime of the workload certificates (for example 5s, to watch them
    /// renew). Default: 24h.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub cert_ttl: Option<Duration>,
    /// `table` for people (redrawn in place on a terminal), `json` for
    /// machines (one object per line).
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Where the local CA and tokens are kept (reused by later runs).
    /// Default: $XDG_STATE_HOME/weft/demo or ~/.local/state/weft/demo.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Also send this many requests per second from the load generator
    /// straight to inventory, which only web may call: the view shows them
    /// denied (403) by inventory's AuthorizationPolicy.
    #[arg(long, value_name = "RPS")]
    pub stray_calls: Option<f64>,
    /// Send the sidecars' spans to this OpenTelemetry collector (OTLP over
    /// gRPC: Jaeger, Tempo, an OpenTelemetry Collector; `http://127.0.0.1:4317`)
    /// instead of the demo's own receiver, whose slowest trace of each second
    /// the view shows.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// The share of requests traced, 0 to 1.
    #[arg(long, default_value_t = 1.0)]
    pub trace_sample_ratio: f64,
}

/// Runs `weft demo`.
pub fn demo(args: DemoArgs) -> ExitCode {
    if !(args.rate > 0.0 && args.rate <= 5_000.0) {
        eprintln!("weft demo: --rate must be between 0 and 5000 requests per second");
        return ExitCode::from(2);
    }
    if args.stray_calls.is_some_and(|r| !(r > 0.0 && r <= 5_000.0)) {
        eprintln!("weft demo: --stray-calls must be between 0 and 5000 requests per second");
        return ExitCode::from(2);
    }
    if !(0.0..=1.0).contains(&args.trace_sample_ratio) {
        eprintln!("weft demo: --trace-sample-ratio must be between 0 and 1");
        return ExitCode::from(2);
    }
    if let Some(url) = &args.otlp_endpoint
        && let Err(problem) = check_otlp_endpoint(url)
    {
        eprintln!("weft demo: --otlp-endpoint {url:?}: {problem}");
        return ExitCode::from(2);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("weft demo: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("weft demo: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// An OTLP/gRPC collector URL: `http://` or `https://`, a host, a port.
fn check_otlp_endpoint(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}); e.g. http://127.0.0.1:4317"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("use http:// or https:// (OTLP over gRPC)".into());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("the URL names no host".into());
    }
    Ok(())
}

/// The namespace of the demo's services and identities.
pub use topology::NAMESPACE;

/// Set on the demo's children: the pid of the demo, which they outlive never.
pub const PARENT_PID_ENV: &str = "WEFT_DEMO_PARENT_PID";

/// Arguments of the hidden `__demo-app` command.
#[derive(Debug, clap::Args)]
pub struct AppArgs {
    #[arg(long)]
    service: String,
    #[arg(long)]
    replica: String,
    #[arg(long)]
    listen: SocketAddr,
    /// `name=address` of an upstream listener of the app's sidecar.
    #[arg(long = "upstream", value_parser = parse_upstream)]
    upstreams: Vec<(String, SocketAddr)>,
    /// Fail now and then (503 to everything for a while).
    #[arg(long)]
    flaky: bool,
}

fn parse_upstream(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not name=address"))?;
    let addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an address (ip:port)"))?;
    Ok((name.to_owned(), addr))
}

/// Runs one demo service until stopped.
pub fn run_app(args: AppArgs) -> ExitCode {
    procs::exit_with_parent();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("info")
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("weft demo app: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let spec = app::AppSpec {
        service: args.service,
        replica: args.replica,
        listen: args.listen,
        upstreams: args.upstreams.into_iter().collect::<BTreeMap<_, _>>(),
        flaky: args.flaky,
    };
    match runtime.block_on(app::serve(spec)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("weft demo app: {error:#}");
            ExitCode::FAILURE
        }
    }
}
