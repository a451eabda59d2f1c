//! Running the demo: lock the state directory, start the local controller,
//! the apps and their sidecars, send load, show the live view, and stop
//! everything cleanly.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::loadgen::{self, LoadCounts};
use super::procs::Children;
use super::running::RunningDemo;
use super::scrape::Scraper;
use super::stats::{Split, Stats, Tick, Watched};
use super::topology::{self, Workload};
use super::traces::{self, SpanView};
use super::view::{self, Mode};
use super::{DemoArgs, identity};
use crate::output::OutputFormat;

/// How long the sidecars may take to get their first certificate.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the demo starts the mesh on new ports when another program took
/// one of them first.
const START_ATTEMPTS: u32 = 3;

/// A child could not bind the port the demo chose for it.
#[derive(Debug)]
struct PortTaken {
    child: String,
}

impl std::fmt::Display for PortTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} found its port taken by another program", self.child)
    }
}

impl std::error::Error for PortTaken {}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mode = match args.output {
        OutputFormat::Json => Mode::Json,
        OutputFormat::Table if std::io::stdout().is_terminal() => Mode::Terminal,
        OutputFormat::Table => Mode::Plain,
    };
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create the state directory {}", state_dir.display()))?;
    let _lock = super::lock::DemoLock::acquire(&state_dir)?;
    let run_dir = state_dir.join("run");
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;

    let exe = std::env::current_exe().context("cannot find the weft executable")?;
    let mut children = Children::default();
    // Ctrl-C or SIGTERM, at any moment, stops the demo cleanly.
    let interrupt = CancellationToken::new();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let on_signal = interrupt.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
        on_signal.cancel();
    });
    let mut attempt = 1;
    let result = loop {
        let result = run_mesh(
            &args,
            mode,
            &state_dir,
            &run_dir,
            &exe,
            &mut children,
            &interrupt,
        )
        .await;
        children.stop_all(Duration::from_secs(5)).await;
        match result {
            // Another program took a port between the demo choosing it and
            // the child binding it: start again on fresh ports.
            Err(error) if attempt < START_ATTEMPTS && error.is::<PortTaken>() => {
                attempt += 1;
                if mode != Mode::Json {
                    view::out(&format!(
                        "weft demo: {error:#}; starting again on new ports\n"
                    ));
                }
            }
            result => break result,
        }
    };
    if mode != Mode::Json {
        view::out(&format!(
            "stopped every demo process; logs are in {}\n",
            run_dir.display()
        ));
    }
    result
}

async fn run_mesh(
    args: &DemoArgs,
    mode: Mode,
    state_dir: &Path,
    run_dir: &Path,
    exe: &Path,
    children: &mut Children,
    interrupt: &CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut ports = topology::Ports::default();
    let workloads = topology::workloads(identity::TRUST_DOMAIN, &mut ports)?;
    if mode != Mode::Json {
        view::out(&format!(
            "weft demo: starting a local controller and {} workloads (state in {})\n",
            workloads.len(),
            state_dir.display()
        ));
    }

    // The policy directory: the services, checkout's 90/10 route and
    // inventory's retries and circuit breaker, which `weft canary` edits.
    let policy_dir = run_dir.join("policy");
    std::fs::create_dir_all(&policy_dir)
        .with_context(|| format!("cannot create {}", policy_dir.display()))?;
    for (name, text) in topology::policy_files(&workloads)? {
        let path = policy_dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }

    // The local controller, and credentials to prove each workload's identity.
    let mesh = identity::start_controller(args, state_dir, &policy_dir).await?;
    let proof = identity::bootstrap(&mesh, &workloads, run_dir)?;

    // The apps, then their sidecars, on the ports held until now.
    drop(ports);
    for w in &workloads {
        if let Some(app) = w.app {
            let mut app_args = vec![
                "__demo-app".to_owned(),
                "--service".to_owned(),
                w.service.to_owned(),
                "--replica".to_owned(),
                w.replica.clone(),
                "--listen".to_owned(),
                app.to_string(),
            ];
            for (name, listen) in &w.upstreams {
                app_args.push("--upstream".to_owned());
                app_args.push(format!("{name}={listen}"));
            }
            if w.flaky {
                app_args.push("--flaky".to_owned());
            }
            children.spawn(&format!("{}-app", w.replica), exe, &app_args, &[], run_dir)?;
        }
    }
    // Traces: to the user's collector, or to the demo's own receiver, whose
    // slowest trace of each tick the view shows.
    let receiver = match &args.otlp_endpoint {
        Some(_) => None,
        None => Some(
            weft_api::otlp::Receiver::start(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .context("cannot start the demo's trace receiver")?,
        ),
    };
    let otlp_endpoint = match (&args.otlp_endpoint, &receiver) {
        (Some(url), _) => url.clone(),
        (None, Some(r)) => r.endpoint(),
        // One of the two is always set.
        (None, None) => String::new(),
    };
    for w in &workloads {
        let mut env = sidecar_env(w, &proof);
        env.extend(trace_env(w, &otlp_endpoint, args.trace_sample_ratio));
        children.spawn(
            &format!("{}-proxy", w.replica),
            exe,
            &["__proxy".to_owned()],
            &env,
            run_dir,
        )?;
    }
    if !wait_ready(&workloads, children, run_dir, interrupt).await? {
        if mode != Mode::Json {
            view::out("interrupted while the mesh was starting\n");
        }
        return Ok(());
    }

    let watched: Vec<Watched> = workloads
        .iter()
        .map(|w| Watched {
            service: w.service.to_owned(),
            account: w.account.to_owned(),
            replica: w.replica.clone(),
            identity: w.identity.to_string(),
            admin: w.admin,
            inbound: w.inbound,
        })
        .collect();
    // Tell `weft canary` (from another terminal) where this demo's policy is.
    RunningDemo {
        pid: std::process::id(),
        policy_dir: policy_dir.clone(),
        namespace: topology::NAMESPACE.to_owned(),
        proxies: workloads.iter().map(|w| w.admin).collect(),
        controller_admin: mesh.admin_addr,
    }
    .write(run_dir)?;
    intro(mode, &mesh, &workloads, started.elapsed(), state_dir);

    // Load, through the load generator's sidecar.
    let entry = workloads
        .iter()
        .find(|w| w.service == "loadgen")
        .and_then(|w| w.upstreams.first())
        .map(|(_, addr)| *addr)
        .context("the demo topology has no load generator")?;
    let counts = Arc::new(LoadCounts::default());
    let stop = CancellationToken::new();
    let load = tokio::spawn(loadgen::run(entry, args.rate, counts.clone(), stop.clone()));
    // Stray calls: the load generator straight to inventory, which refuses it.
    let stray = match args.stray_calls {
        Some(rate) => {
            let target = workloads
                .iter()
                .find(|w| w.service == "loadgen")
                .and_then(|w| {
                    w.upstreams
                        .iter()
                        .find(|(service, _)| *service == topology::STRAY_TARGET)
                })
                .map(|(_, addr)| *addr)
                .context("the demo's load generator has no listener for inventory")?;
            let stray_counts = Arc::new(LoadCounts::default());
            Some(tokio::spawn(loadgen::run(
                target,
                rate,
                stray_counts,
                stop.clone(),
            )))
        }
        None => None,
    };

    let outcome = live_view(
        args,
        mode,
        watched,
        receiver.as_ref(),
        &policy_dir,
        children,
        run_dir,
        started,
        interrupt,
    )
    .await;
    stop.cancel();
    let _ = load.await;
    if let Some(stray) = stray {
        let _ = stray.await;
    }
    let (last, reason) = outcome?;
    summary(mode, &last, &counts, reason, started.elapsed());
    Ok(())
}

/// The environment of one sidecar.
fn sidecar_env(w: &Workload, proof: &identity::Proof) -> Vec<(String, String)> {
    use weft_api::consts::env;
    let mut vars = vec![
        (env::INBOUND_ADDR.to_owned(), w.inbound.to_string()),
        (env::ADMIN_ADDR.to_owned(), w.admin.to_string()),
        (
            env::APP_ADDR.to_owned(),
            // The load generator has no app: its inbound side is never called.
            w.app.unwrap_or(([127, 0, 0, 1], 9).into()).to_string(),
        ),
        (env::UPSTREAMS.to_owned(), topology::upstreams_env(w)),
        (env::SHUTDOWN_GRACE.to_owned(), "2".to_owned()),
        (env::LOG.to_owned(), "info".to_owned()),
        // As the controller's local mode names the replica's pod.
        (
            env::WORKLOAD.to_owned(),
            format!("{}/{}", topology::NAMESPACE, w.replica),
        ),
    ];
    vars.extend(proof.env(w));
    vars
}

/// The OpenTelemetry variables of one sidecar: its spans to `endpoint`,
/// named after its service, the replica as its pod.
fn trace_env(w: &Workload, endpoint: &str, ratio: f64) -> Vec<(String, String)> {
    use weft_api::consts::otel_env;
    let mut resource = format!(
        "k8s.namespace.name={},k8s.pod.name={}",
        topology::NAMESPACE,
        w.replica
    );
    if let Some(version) = w.version {
        resource.push_str(&format!(",service.version={version}"));
    }
    vec![
        (
            otel_env::EXPORTER_OTLP_ENDPOINT.to_owned(),
            endpoint.to_owned(),
        ),
        (
            otel_env::TRACES_SAMPLER.to_owned(),
            "parentbased_traceidratio".to_owned(),
        ),
        (otel_env::TRACES_SAMPLER_ARG.to_owned(), ratio.to_string()),
        (otel_env::SERVICE_NAME.to_owned(), w.service.to_owned()),
        (otel_env::RESOURCE_ATTRIBUTES.to_owned(), resource),
    ]
}

/// Waits until every sidecar is ready; `false` when interrupted first.
async fn wait_ready(
    workloads: &[Workload],
    children: &mut Children,
    run_dir: &Path,
    interrupt: &CancellationToken,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    for w in workloads {
        let uri: http::Uri = format!("http://{}/ready", w.admin).parse()?;
        loop {
            if interrupt.is_cancelled() {
                return Ok(false);
            }
            if let Some((name, status)) = children.exited() {
                let log = ChildLog::read(run_dir, &name);
                if log.contains("Address already in use") {
                    return Err(PortTaken { child: name }.into());
                }
                anyhow::bail!(
                    "{name} exited ({status}) while the mesh was starting; {}",
                    log.tail(10)
                );
            }
            let ready = tokio::time::timeout(Duration::from_secs(1), client.get(uri.clone()))
                .await
                .ok()
                .and_then(Result::ok)
                .is_some_and(|rsp| rsp.status().is_success());
            if ready {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the sidecar of {} was not ready after {}s (no certificate from the controller?); see {}",
                    w.replica,
                    READY_TIMEOUT.as_secs(),
                    run_dir.join(format!("{}-proxy.log", w.replica)).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(true)
}

/// A child's log, read once when it exited.
struct ChildLog {
    path: PathBuf,
    text: std::io::Result<String>,
}

impl ChildLog {
    fn read(run_dir: &Path, child: &str) -> Self {
        let path = run_dir.join(format!("{child}.log"));
        let text = std::fs::read_to_string(&path);
        Self { path, text }
    }

    fn contains(&self, needle: &str) -> bool {
        self.text.as_ref().is_ok_and(|t| t.contains(needle))
    }

    /// "the end of <path>:" and its last `lines` lines, indented, for an
    /// error message.
    fn tail(&self, lines: usize) -> String {
        let body = match &self.text {
            Err(error) => format!("    (cannot read it: {error})"),
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..]
                    .iter()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        };
        format!("the end of {}:\n{body}", self.path.display())
    }
}

fn intro(
    mode: Mode,
    mesh: &identity::LocalMesh,
    workloads: &[Workload],
    took: Duration,
    state_dir: &Path,
) {
    if mode == Mode::Json {
        let list: Vec<_> = workloads
            .iter()
            .map(|w| {
                json!({
                    "replica": w.replica,
                    "service": w.service,
                    "identity": w.identity.to_string(),
                    "admin": format!("http://{}", w.admin),
                })
            })
            .collect();
        view::out(&format!(
            "{}\n",
            json!({
                "type": "start",
                "state_dir": state_dir.display().to_string(),
                "controller": mesh.grpc_addr.to_string(),
                "controller_identity": mesh.identity.to_string(),
                "controller_admin": format!("http://{}", mesh.admin_addr),
                "policy_dir": mesh.policy_dir.display().to_string(),
                "workloads": list,
            })
        ));
        return;
    }
    let mut s = format!(
        "mesh ready in {:.1}s: controller {} ({}), every sidecar holds a certificate\n\nadmin endpoints (try /metrics, /ready and /config):\n",
        took.as_secs_f64(),
        mesh.grpc_addr,
        mesh.identity
    );
    for w in workloads {
        s.push_str(&format!("  {:<14} http://{}/metrics\n", w.replica, w.admin));
    }
    s.push_str(&format!(
        "\npolicy in {} (the controller reloads it; http://{}/config shows what is in force)\n\
         checkout is split 90/10 between checkout-v1 and checkout-v2; {} fails now and then.\n\
         from another terminal, try:\n  \
         weft canary set checkout --weight checkout-v1=50 --weight checkout-v2=50\n  \
         weft canary status checkout\n  \
         weft canary rollback checkout\n\n",
        mesh.policy_dir.display(),
        mesh.admin_addr,
        workloads
            .iter()
            .find(|w| w.flaky)
            .map_or("one replica", |w| w.replica.as_str()),
    ));
    view::out(&s);
    if mode == Mode::Terminal {
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Why the live view stopped.
#[derive(Clone, Copy, Debug)]
enum StopReason {
    Duration,
    Interrupted,
}

#[allow(clippy::too_many_arguments)] // one call site, each argument different
async fn live_view(
    args: &DemoArgs,
    mode: Mode,
    watched: Vec<Watched>,
    receiver: Option<&weft_api::otlp::Receiver>,
    policy_dir: &Path,
    children: &mut Children,
    run_dir: &Path,
    started: Instant,
    interrupt: &CancellationToken,
) -> anyhow::Result<(Tick, StopReason)> {
    let scraper = Scraper::default();
    let mut stats = Stats::new(watched);
    let store = crate::canary::store::Store::Local {
        dir: policy_dir.to_owned(),
    };
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let header = match args.duration {
        Some(d) => format!(
            "(stops after {}; Ctrl-C to stop now)",
            humantime::format_duration(d)
        ),
        None => "(Ctrl-C to stop)".to_owned(),
    };
    let mut last_at = Instant::now();
    let mut window = traces::Window::default();
    loop {
        let reason = tokio::select! {
            _ = interval.tick() => None,
            _ = interrupt.cancelled() => Some(StopReason::Interrupted),
            _ = sleep_until(deadline) => Some(StopReason::Duration),
        };
        if let Some((name, status)) = children.exited() {
            anyhow::bail!(
                "{name} exited unexpectedly ({status}); the demo stops; {}",
                ChildLog::read(run_dir, &name).tail(10)
            );
        }
        let scrapes =
            futures::future::join_all(stats.watched().iter().map(|w| scraper.scrape(w.admin)))
                .await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let splits = splits(&store).await;
        let mut tick = stats.tick(
            scrapes,
            last_at.elapsed().as_secs_f64(),
            now,
            started.elapsed().as_secs_f64(),
            &splits,
        );
        if let Some(receiver) = receiver {
            let spans: Vec<SpanView> = receiver
                .take()
                .iter()
                .filter_map(SpanView::from_received)
                .collect();
            tick.slowest_trace = window.tick(spans);
        }
        last_at = Instant::now();
        match mode {
            Mode::Json => view::out(&format!("{}\n", json!({"type": "tick", "tick": &tick}))),
            _ => view::out(&view::render(&tick, mode, &header)),
        }
        if let Some(reason) = reason {
            return Ok((tick, reason));
        }
    }
}

/// The canary's weights as the policy directory holds them now (none while
/// the route cannot be read, e.g. in the middle of an edit).
async fn splits(store: &crate::canary::store::Store) -> Vec<Split> {
    match store
        .load(topology::NAMESPACE, topology::CANARY_SERVICE)
        .await
    {
        Ok(loaded) => loaded
            .route
            .as_ref()
            .map(|route| Split {
                service: topology::CANARY_SERVICE.to_owned(),
                weights: crate::canary::weights::current(route),
            })
            .into_iter()
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn summary(mode: Mode, last: &Tick, counts: &LoadCounts, reason: StopReason, took: Duration) {
    let sent = counts.sent.load(Ordering::Relaxed);
    let ok = counts.ok.load(Ordering::Relaxed);
    let failed = counts.failed.load(Ordering::Relaxed);
    let done = ok + failed;
    let success_rate = if done > 0 {
        ok as f64 / done as f64
    } else {
        0.0
    };
    let renewals: serde_json::Map<String, serde_json::Value> = last
        .services
        .iter()
        .map(|s| (s.service.clone(), json!(s.renewals)))
        .collect();
    let reason = match reason {
        StopReason::Duration => "duration",
        StopReason::Interrupted => "interrupted",
    };
    if mode == Mode::Json {
        view::out(&format!(
            "{}\n",
            json!({
                "type": "summary",
                "stopped_by": reason,
                "elapsed_s": took.as_secs_f64(),
                "requests": {"sent": sent, "ok": ok, "failed": failed},
                "success_rate": success_rate,
                "edges": &last.edges,
                "services": &last.services,
                "backends": &last.backends,
                "denials": &last.denials,
                "events": &last.events,
                "renewals": renewals,
            })
        ));
        return;
    }
    let all_mtls = last.edges.iter().all(|e| e.mtls);
    let mut s = format!(
        "\nsummary after {:.0}s ({reason}): {ok} of {done} requests succeeded ({:.2}%), {} edges, {}\n",
        took.as_secs_f64(),
        success_rate * 100.0,
        last.edges.len(),
        if all_mtls {
            "all mTLS"
        } else {
            "SOME NOT mTLS"
        }
    );
    for svc in &last.services {
        s.push_str(&format!(
            "  {:<12} certificate renewals seen: {}\n",
            svc.service, svc.renewals
        ));
    }
    for b in &last.backends {
        let weight = b
            .weight_percent
            .map_or_else(String::new, |w| format!(", weight now {w:.0}%"));
        s.push_str(&format!(
            "  {:<12} backend of {}{weight}: {} retries, {} ejections\n",
            b.backend, b.service, b.retries_total, b.ejections_total
        ));
    }
    for d in &last.denials {
        s.push_str(&format!(
            "  {:<12} -> {}: {} {} ({})\n",
            d.from, d.to, d.total, d.decision, d.policy
        ));
    }
    view::out(&s);
}

/// `$XDG_STATE_HOME/weft/demo`, `~/.local/state/weft/demo`, or a folder in
/// the temporary directory.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("weft").join("demo");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/state/weft/demo");
    }
    std::env::temp_dir().join(format!("weft-demo-{}", nix::unistd::getuid()))
}
