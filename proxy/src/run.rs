//! The `weft-proxy` program: configured by environment (`weft_api::consts::env`),
//! credentials from PEM files, drained on SIGTERM or `POST /shutdown`. Shared by the
//! `weft-proxy` binary and by `weft` (which runs proxies for `weft demo`).

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::admin::{Extras, LogLevel};
use crate::config::{IdentitySource, TrustAnchorsSource};
use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use weft_api::tls::{Credentials, MeshTls, TrustAnchors};

/// Runs the proxy until it is stopped; the exit code says how it ended.
///
/// `weft-proxy --wait-ready [SECONDS]` instead waits until the proxy of this
/// pod is ready (see [`wait_ready`]): the classic sidecar's postStart hook,
/// since the image has no shell.
pub fn main() -> ExitCode {
    main_with_args(std::env::args().skip(1).collect())
}

/// [`main`] with the arguments given (those after the program name): a
/// program that embeds the proxy under a subcommand of its own (`weft __proxy`)
/// passes what follows its subcommand.
pub fn main_with_args(args: Vec<String>) -> ExitCode {
    if let Some(first) = args.first() {
        if first != weft_api::consts::inject::WAIT_READY_FLAG || args.len() > 2 {
            eprintln!(
                "usage: weft-proxy (configured by WEFT_PROXY_* variables), or weft-proxy {} [SECONDS]",
                weft_api::consts::inject::WAIT_READY_FLAG
            );
            return ExitCode::from(2);
        }
        let timeout = match args.get(1).map(|s| s.parse::<u64>()) {
            None => DEFAULT_WAIT_READY,
            Some(Ok(secs)) => std::time::Duration::from_secs(secs),
            Some(Err(_)) => {
                eprintln!("weft-proxy: {:?} is not a number of seconds", args[1]);
                return ExitCode::from(2);
            }
        };
        return wait_ready(&std::env::vars().collect(), timeout);
    }
    let mut config = match Config::from_process_env() {
        Ok(config) => config,
        Err(errors) => {
            eprint!("weft-proxy: {errors}");
            return ExitCode::from(2);
        }
    };
    config.proxy.admin = Extras {
        log_level: Some(init_tracing(&config)),
        settings: process_settings(&config),
    };
    crate::proxy::raise_fd_limit();
    // One thread by default: every task of the proxy on one thread, without
    // the wake-ups and hand-offs between threads that cost latency and CPU.
    let mut builder = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.worker_threads);
        b
    };
    let runtime = match builder.enable_all().build() {
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
    let anchors = match &config.trust_anchors {
        TrustAnchorsSource::File(path) => TrustAnchors::from_pem(&read(path, "trust anchors")?)
            .with_context(|| format!("in {}", path.display()))?,
        TrustAnchorsSource::Inline(pem) => TrustAnchors::from_pem(pem.as_bytes())
            .with_context(|| format!("in {}", weft_api::consts::env::TRUST_ANCHORS))?,
    };
    let tls = MeshTls::new(anchors);
    match &config.identity {
        IdentitySource::Files {
            cert_file,
            key_file,
        } => {
            let credentials = Credentials::from_pem(
                &read(cert_file, "certificate chain")?,
                &read(key_file, "private key")?,
            )
            .with_context(|| format!("in {} and {}", cert_file.display(), key_file.display()))?;
            tracing::info!(identity = %credentials.identity(), "loaded workload certificate from files");
            tls.set_credentials(credentials);
        }
        IdentitySource::Controller(certify) => {
            tracing::info!(
                identity = %certify.identity,
                controller = %certify.controller_addr,
                "asking the controller for a workload certificate; not ready until it arrives"
            );
        }
    }

    let background = CancellationToken::new();
    let anchors_path = match &config.trust_anchors {
        TrustAnchorsSource::File(path) => Some(path.clone()),
        TrustAnchorsSource::Inline(_) => None,
    };
    let anchors_every = config.trust_anchors_reload;
    let grace = config.proxy.shutdown_grace;
    let proxy = crate::start(config.proxy, tls.clone()).await?;
    if let IdentitySource::Controller(certify) = config.identity {
        tokio::spawn(crate::identity::run(
            certify,
            tls.clone(),
            proxy.metrics.clone(),
            background.clone(),
        ));
    }
    if let Some(anchors_path) = anchors_path {
        tokio::spawn(crate::identity::watch_trust_anchors(
            anchors_path,
            tls,
            anchors_every,
            background.clone(),
        ));
    }
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; draining"),
        _ = int.recv() => tracing::info!("SIGINT received; draining"),
        _ = proxy.shutdown_requested() => tracing::info!("draining"),
    }
    background.cancel();
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

/// Installs the log subscriber; the returned handle changes its filter
/// (`/log-level`).
fn init_tracing(config: &Config) -> LogLevel {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, reload};
    let (filter, initial) = match EnvFilter::try_new(&config.log) {
        Ok(filter) => (filter, config.log.clone()),
        Err(error) => {
            eprintln!(
                "weft-proxy: invalid log filter {:?} ({error}); using \"info\"",
                config.log
            );
            (EnvFilter::new("info"), "info".to_owned())
        }
    };
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = if config.log_json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    LogLevel::new(&initial, move |f| {
        let filter = EnvFilter::try_new(f).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

/// The program's settings `/config` shows beside the proxy's own.
fn process_settings(config: &Config) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::json;
    let identity_source = match &config.identity {
        IdentitySource::Controller(certify) => json!({
            "source": "controller",
            "identity": certify.identity.to_string(),
            "controller": certify.controller_addr,
            "token_file": certify.token_file.display().to_string(),
        }),
        IdentitySource::Files {
            cert_file,
            key_file,
        } => json!({
            "source": "files",
            "cert_file": cert_file.display().to_string(),
            "key_file": key_file.display().to_string(),
        }),
    };
    [
        ("identity_source", identity_source),
        (
            "trust_anchors",
            match &config.trust_anchors {
                TrustAnchorsSource::File(path) => json!({"file": path.display().to_string()}),
                TrustAnchorsSource::Inline(pem) => json!({"inline_bytes": pem.len()}),
            },
        ),
        (
            "trust_anchors_reload_seconds",
            json!(config.trust_anchors_reload.as_secs_f64()),
        ),
        ("worker_threads", json!(config.worker_threads)),
        (
            "log_format",
            json!(if config.log_json { "json" } else { "plain" }),
        ),
        ("version", json!(env!("CARGO_PKG_VERSION"))),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

/// How long `--wait-ready` waits by default.
const DEFAULT_WAIT_READY: std::time::Duration = std::time::Duration::from_secs(120);

/// Polls `http://127.0.0.1:<admin port>/ready` (the port of
/// `WEFT_PROXY_ADMIN_ADDR` in `vars`, default 15191) every 200 ms until it
/// answers 200 or `timeout` passes. Exit code 0: ready; 1: not ready in time.
pub fn wait_ready(
    vars: &std::collections::HashMap<String, String>,
    timeout: std::time::Duration,
) -> ExitCode {
    let port = vars
        .get(weft_api::consts::env::ADMIN_ADDR)
        .and_then(|a| a.trim().parse::<std::net::SocketAddr>().ok())
        .map_or(weft_api::consts::PROXY_ADMIN_PORT, |a| a.port());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + timeout;
    let mut last: String;
    loop {
        match ready_status(addr) {
            Ok(200) => {
                eprintln!("weft-proxy: the proxy on {addr} is ready");
                return ExitCode::SUCCESS;
            }
            Ok(status) => last = format!("/ready answered {status}"),
            Err(error) => last = format!("cannot reach {addr}: {error}"),
        }
        if std::time::Instant::now() >= deadline {
            eprintln!(
                "weft-proxy: the proxy was not ready within {} s ({last}); see the weft-proxy container's log",
                timeout.as_secs()
            );
            return ExitCode::FAILURE;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// One `GET /ready` over HTTP/1.0: the status code.
fn ready_status(addr: std::net::SocketAddr) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let step = std::time::Duration::from_secs(1);
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, step)?;
    tcp.set_read_timeout(Some(step))?;
    tcp.set_write_timeout(Some(step))?;
    tcp.write_all(b"GET /ready HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut head = [0u8; 16];
    let mut read = 0;
    while read < head.len() {
        match tcp.read(&mut head[read..])? {
            0 => break,
            n => read += n,
        }
    }
    // "HTTP/1.1 200 OK": the status is the second word.
    std::str::from_utf8(&head[..read])
        .ok()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))
}
