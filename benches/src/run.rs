//! The `all` command: starts the backend, then, for each repeat, each system in
//! turn (interleaved, so that noise on this shared machine spreads over all of
//! them), runs every scenario, the handshake test and the idle-connection test,
//! and folds the figures into a [`Report`].

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::Settings;
use crate::figures::{
    self, ControlPlaneFigure, Gathered, Host, IdleFigures, Mem, Report, ScenarioRun,
};
use crate::handshake::HandshakeSpec;
use crate::load::{LoadSpec, Mode};
use crate::pki::{Pki, SERVER_ID};
use crate::procs;
use crate::scenario::{Pace, Rates, Scenario};
use crate::systems::{self, Running, StartEnv, SystemKind};
use crate::workers::Workers;

/// Runs the whole benchmark.
pub fn all(settings: &Settings) -> anyhow::Result<Report> {
    raise_nofile_limit();
    let started_at = now_utc();
    let work = tempfile::Builder::new()
        .prefix("weft-bench-")
        .tempdir()
        .context("create a temp dir")?;
    crate::interrupt::remove_on_interrupt(work.path().to_path_buf());
    let pki = Pki::generate(work.path())?;
    let workers = Workers::new()?;
    let backend = workers.backend()?;
    progress(format_args!(
        "backend listening on {} (pid {}); PKI in {}",
        backend.addr,
        backend.pid(),
        work.path().display()
    ));

    let mut skipped: BTreeMap<SystemKind, String> = BTreeMap::new();
    let wefts = [
        SystemKind::Weft,
        SystemKind::WeftPolicy,
        SystemKind::WeftTrace100,
        SystemKind::WeftTrace1,
    ];
    let weft_proxy = if wefts.iter().any(|w| settings.systems.contains(w)) {
        match systems::find_weft_proxy(settings.weft_proxy.as_deref()) {
            Ok(found) => {
                progress(format_args!("weft-proxy: {}", found.path.display()));
                Some(found)
            }
            Err(reason) => {
                for w in wefts {
                    if settings.systems.contains(&w) {
                        progress(format_args!("SKIPPING {w}: {reason}"));
                        skipped.insert(w, reason.clone());
                    }
                }
                None
            }
        }
    } else {
        None
    };
    let mut env = StartEnv {
        pki,
        backend: backend.addr,
        work_dir: work.path().to_path_buf(),
        weft_proxy,
        workers: settings.workers,
    };

    let systems: Vec<SystemKind> = settings
        .systems
        .iter()
        .copied()
        .filter(|s| !skipped.contains_key(s))
        .collect();
    let closed: Vec<Scenario> = settings
        .scenarios
        .iter()
        .copied()
        .filter(|s| !s.is_open_loop())
        .collect();
    let open: Vec<Scenario> = settings
        .scenarios
        .iter()
        .copied()
        .filter(Scenario::is_open_loop)
        .collect();
    // The second worker count: weft and the peers, closed loop (in quick mode,
    // the first closed-loop scenario only).
    let second: Vec<SystemKind> = systems
        .iter()
        .copied()
        .filter(|k| settings.second_workers.is_some() && (*k == SystemKind::Weft || k.is_peer()))
        .collect();
    let second_closed: Vec<Scenario> = if settings.quick {
        closed.iter().copied().take(1).collect()
    } else {
        closed.clone()
    };
    let mut step = Step {
        done: 0,
        total: settings.repeats
            * (systems.len() * (settings.scenarios.len() + 2) + second.len() * second_closed.len()),
        started: Instant::now(),
    };
    let mut gathered: BTreeMap<SystemKind, Gathered> = BTreeMap::new();
    let mut pass = |title: &str,
                    kinds: &[SystemKind],
                    scenarios: &[Scenario],
                    rates: &Rates,
                    extras: bool,
                    env: &StartEnv,
                    gathered: &mut BTreeMap<SystemKind, Gathered>| {
        progress(format_args!("\n=== {title}"));
        for repeat in 0..settings.repeats {
            for &kind in kinds {
                let g = gathered.entry(kind).or_default();
                let what = Pass {
                    scenarios,
                    rates,
                    extras,
                };
                if let Err(error) =
                    run_system(kind, repeat, settings, env, &workers, &what, g, &mut step)
                {
                    progress(format_args!("{kind}: FAILED: {error:#}"));
                    g.errors.push(format!("repeat {}: {error:#}", repeat + 1));
                }
            }
        }
    };

    // 1. Closed loop first: its maxima set the open-loop rates.
    pass(
        &format!(
            "closed loop, {} worker(s) per proxy, every system",
            settings.workers
        ),
        &systems,
        &closed,
        &Rates::default(),
        false,
        &env,
        &mut gathered,
    );
    let maxima: Vec<(SystemKind, Scenario, f64)> = gathered
        .iter()
        .flat_map(|(kind, g)| {
            closed.iter().filter_map(move |sc| {
                let rps: Vec<f64> = g
                    .runs
                    .iter()
                    .filter(|(s, _)| s == sc)
                    .map(|(_, r)| r.load.rps)
                    .collect();
                figures::median(&rps).map(|m| (*kind, *sc, m))
            })
        })
        .collect();
    let rates = Rates::derive(&settings.scenarios, &maxima);
    for d in &rates.derived {
        progress(format_args!(
            "open-loop rates, {} with {} connections: {} and {} req/s ({:.0} % and {:.0} % of {}'s median maximum, {:.0} req/s in {})",
            d.protocol.label(),
            d.connections,
            d.low,
            d.high,
            crate::scenario::LOW_SHARE * 100.0,
            crate::scenario::HIGH_SHARE * 100.0,
            d.weakest,
            d.weakest_max_rps,
            d.from
        ));
    }

    // 2. Open loop at those rates, the handshakes and the idle connections.
    pass(
        "open loop, handshakes, idle connections",
        &systems,
        &open,
        &rates,
        true,
        &env,
        &mut gathered,
    );

    // 3. Closed loop again with the second worker count.
    let mut second_gathered: BTreeMap<SystemKind, Gathered> = BTreeMap::new();
    if let Some(n) = settings.second_workers {
        env.workers = n;
        pass(
            &format!("closed loop, {n} workers per proxy, weft and the peers"),
            &second,
            &second_closed,
            &rates,
            false,
            &env,
            &mut second_gathered,
        );
    }
    drop(backend);

    let cpu_reference = cpu_reference(&settings.scenarios);
    let second = second
        .iter()
        .map(|&kind| {
            figures::system_figures(
                kind,
                &second_closed,
                &rates,
                &cpu_reference,
                None,
                second_gathered.remove(&kind).unwrap_or_default(),
            )
        })
        .collect();
    let systems = settings
        .systems
        .iter()
        .map(|&kind| {
            figures::system_figures(
                kind,
                &settings.scenarios,
                &rates,
                &cpu_reference,
                skipped.remove(&kind),
                gathered.remove(&kind).unwrap_or_default(),
            )
        })
        .collect();
    Ok(Report {
        started_at,
        host: host(),
        quick: settings.quick,
        repeats: settings.repeats,
        warmup_s: settings.warmup.as_secs_f64(),
        duration_s: settings.duration.as_secs_f64(),
        idle_connections: settings.idle_connections,
        cpu_reference,
        workers: settings.workers,
        rates,
        systems,
        second_workers: settings.second_workers.unwrap_or(0),
        second,
        certificates_per_second: certify(settings),
        webhook: webhook(settings),
        propagation: propagation(),
        canary: env.weft_proxy.as_ref().map(canary),
    })
}

/// How many proxies `weft canary set` is timed to.
pub const CANARY_PROXIES: usize = 100;

/// `weft canary set` from 90/10 to 50/50 with 100 subscribed proxies.
pub fn canary(weft_proxy: &systems::WeftProxy) -> crate::canary::CanaryFigure {
    use crate::canary::{self, CanaryFigure};
    let n = CANARY_PROXIES;
    eprintln!("control plane: `weft canary set` to {n} proxies");
    let figure = match canary::find_weft() {
        Err(reason) => CanaryFigure::NotMeasured { proxies: n, reason },
        Ok(weft) => canary::measure(&weft_proxy.path, &weft, n),
    };
    match &figure {
        CanaryFigure::Measured {
            command_ms,
            first_ms,
            p50_ms,
            last_ms,
            worst_last_ms,
            ..
        } => progress(format_args!(
            "canary set to {n} proxies (medians of {} changes): command {command_ms:.0} ms; enforced first {first_ms:.1} ms  p50 {p50_ms:.1} ms  last {last_ms:.1} ms (slowest change {worst_last_ms:.1} ms)",
            crate::canary::CHANGES
        )),
        CanaryFigure::NotMeasured { reason, .. } => progress(format_args!(
            "canary set to {n} proxies: NOT MEASURED: {reason}"
        )),
    }
    figure
}

/// A weight change's propagation to 100 and to 1,000 subscribed streams.
pub fn propagation() -> Vec<crate::propagation::PropagationFigure> {
    [100, 1_000]
        .into_iter()
        .map(|n| {
            eprintln!("control plane: a weight change's propagation to {n} Discovery.Watch subscribers");
            let figure = crate::propagation::measure(n);
            match &figure {
                crate::propagation::PropagationFigure::Measured {
                    first_ms,
                    p50_ms,
                    last_ms,
                    ..
                } => progress(format_args!(
                    "propagation to {n}: first {first_ms:.1} ms  p50 {p50_ms:.1} ms  last {last_ms:.1} ms"
                )),
                crate::propagation::PropagationFigure::NotMeasured { reason, .. } => {
                    progress(format_args!("propagation to {n}: NOT MEASURED: {reason}"))
                }
            }
            figure
        })
        .collect()
}

/// Certificates signed per second through Certify, with 16 concurrent callers.
fn certify(settings: &Settings) -> ControlPlaneFigure {
    eprintln!("control plane: certificates signed per second (Certify, 16 callers)");
    let duration = if settings.quick {
        Duration::from_secs(1)
    } else {
        settings.duration
    };
    match crate::certify::measure(duration, 16) {
        Ok(figure) => figure,
        Err(error) => ControlPlaneFigure::NotMeasured {
            reason: format!("the Certify benchmark failed: {error:#}"),
        },
    }
}

/// Webhook latency at 500 admissions per second (2 s in quick mode).
pub fn webhook(settings: &Settings) -> crate::webhook::WebhookFigure {
    eprintln!(
        "control plane: webhook latency at {} admissions/s over HTTPS",
        crate::webhook::RATE
    );
    let duration = if settings.quick {
        Duration::from_secs(2)
    } else {
        settings.duration.max(Duration::from_secs(10))
    };
    let figure = crate::webhook::measure(settings.warmup, duration);
    if let crate::webhook::WebhookFigure::Measured {
        latency_us: l,
        errors,
        ..
    } = &figure
    {
        progress(format_args!(
            "webhook: p50 {:.0}µs  p99 {:.0}µs  p99.9 {:.0}µs  errors {errors}",
            l.p50, l.p99, l.p999
        ));
    }
    figure
}

/// The scenario whose CPU per request is the headline: HTTP/1.1, 16
/// connections at the higher open-loop rate.
fn cpu_reference(scenarios: &[Scenario]) -> String {
    scenarios
        .iter()
        .filter(|s| s.is_open_loop())
        .max_by_key(|s| {
            (
                s.protocol == crate::client::Protocol::Http1,
                s.connections == 16,
                s.pace == Pace::High,
            )
        })
        .map(Scenario::id)
        .unwrap_or_default()
}

/// What one pass runs against each system.
struct Pass<'a> {
    scenarios: &'a [Scenario],
    rates: &'a Rates,
    /// Also the idle RSS, the handshakes and the idle connections.
    extras: bool,
}

struct Step {
    done: usize,
    total: usize,
    started: Instant,
}

impl Step {
    fn next(&mut self) -> String {
        self.done += 1;
        format!(
            "[{:>3}/{} {:>4}s]",
            self.done,
            self.total,
            self.started.elapsed().as_secs()
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn run_system(
    kind: SystemKind,
    repeat: usize,
    settings: &Settings,
    env: &StartEnv,
    workers: &Workers,
    pass: &Pass<'_>,
    g: &mut Gathered,
    step: &mut Step,
) -> anyhow::Result<()> {
    progress(format_args!(
        "== {kind} (repeat {}/{}, {} worker(s) per proxy): {}",
        repeat + 1,
        settings.repeats,
        env.workers,
        kind.description()
    ));
    let mut running = systems::start(kind, env)?;
    smoke(&running, workers)?;
    let pids = running.pids();
    if pass.extras && !pids.is_empty() {
        std::thread::sleep(Duration::from_millis(500));
        g.rss_idle.push(Mem::rss(&procs::sample(&pids)));
    }

    for scenario in pass.scenarios {
        let Some(mode) = pass.rates.mode(scenario) else {
            progress(format_args!(
                "{} {kind:<12} {:<22} not run: no closed-loop maximum to derive its rate from",
                step.next(),
                scenario.id()
            ));
            continue;
        };
        let addr = match scenario.protocol {
            crate::client::Protocol::Http1 => running.http1,
            crate::client::Protocol::Http2 => running.http2,
        };
        let spec = LoadSpec {
            addr,
            protocol: scenario.protocol,
            mode,
            connections: scenario.connections,
            warmup_ms: millis(settings.warmup),
            duration_ms: millis(settings.duration),
        };
        let m = workers.load(&spec, &pids)?;
        running.check_alive()?;
        let cpu = (!pids.is_empty()).then(|| m.after.cpu_us.saturating_sub(m.before.cpu_us));
        let run = ScenarioRun {
            repeat,
            proxy_cpu_us: cpu,
            proxy_cpu_us_per_request: cpu
                .filter(|_| m.load.completed > 0)
                .map(|c| c as f64 / m.load.completed as f64),
            proxy_rss_max: (!pids.is_empty()).then_some(m.rss_max),
            load: m.load,
        };
        let l = &run.load.latency_us;
        progress(format_args!(
            "{} {kind:<12} {:<22} {:>8.0} req/s  p50 {:>6.0}µs  p99 {:>6.0}µs  p99.9 {:>6.0}µs  cpu {}  errors {}{}",
            step.next(),
            scenario.id(),
            run.load.rps,
            l.p50,
            l.p99,
            l.p999,
            run.proxy_cpu_us_per_request
                .map(|c| format!("{c:.1}µs/req"))
                .unwrap_or_else(|| "-".into()),
            run.load.errors,
            run.load
                .first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
        ));
        g.runs.push((*scenario, run));
    }

    if !pass.extras {
        running.stop();
        return Ok(());
    }
    if let Some(tls) = running.tls {
        let spec = HandshakeSpec {
            addr: tls,
            concurrency: settings.handshake_concurrency,
            duration_ms: millis(settings.handshake_duration),
            client_chain: env.pki.client.chain.clone(),
            client_key: env.pki.client.key.clone(),
            anchors: env.pki.root.clone(),
            server_identity: SERVER_ID.to_string(),
        };
        let h = workers.handshake(&spec)?;
        progress(format_args!(
            "{} {kind:<12} mTLS handshakes        {:>8.0} /s  errors {}{}",
            step.next(),
            h.per_second,
            h.errors,
            h.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        ));
        if h.handshakes == 0 {
            anyhow::bail!(
                "no mTLS handshake succeeded against {tls}: {}",
                h.first_error.unwrap_or_default()
            );
        }
        g.handshakes.push(h);
    } else {
        step.next();
    }

    if !pids.is_empty() {
        let (opened, failed, sample) =
            workers.idle(running.http1, settings.idle_connections, &pids)?;
        progress(format_args!(
            "{} {kind:<12} {} idle connections   {:>8} open, RSS {:.1} MiB",
            step.next(),
            settings.idle_connections,
            opened,
            sample.rss_kb as f64 / 1024.0
        ));
        running.check_alive()?;
        g.idle.push(IdleFigures {
            repeat,
            requested: settings.idle_connections,
            opened,
            failed,
            proxy_rss: Mem::rss(&sample),
        });
        g.rss_peak.push(Mem::hwm(&procs::sample(&pids)));
    } else {
        step.next();
    }
    if let Some(spans) = running.spans_received() {
        // Proof that the traced pair traced: what its receiver got.
        progress(format_args!("{kind}: the OTLP receiver got {spans} spans"));
        if spans == 0 {
            anyhow::bail!("{kind} sent no span to its OTLP receiver");
        }
    }
    running.stop();
    Ok(())
}

/// One request of each protocol must pass before anything is measured.
fn smoke(running: &Running, workers: &Workers) -> anyhow::Result<()> {
    for (addr, protocol) in [
        (running.http1, crate::client::Protocol::Http1),
        (running.http2, crate::client::Protocol::Http2),
    ] {
        let spec = LoadSpec {
            addr,
            protocol,
            mode: Mode::Max,
            connections: 1,
            warmup_ms: 0,
            duration_ms: 200,
        };
        let m = workers.load(&spec, &[])?;
        if m.load.requests == 0 || m.load.errors > 0 {
            anyhow::bail!(
                "{} smoke test through {addr} failed: {} answered, {} errors (first: {})",
                protocol.label(),
                m.load.requests,
                m.load.errors,
                m.load.first_error.unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn progress(args: std::fmt::Arguments<'_>) {
    eprintln!("{args}");
}

/// Raises the open-files limit for the harness and everything it starts (the
/// idle-connection test needs tens of thousands): to 65536 when allowed (root),
/// else to the hard limit.
fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let want = 65_536.max(soft);
    if setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard)).is_err() {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) {
        progress(format_args!("open-files limit: {soft}"));
    }
}

fn now_utc() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn host() -> Host {
    let first_line = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                let mut text = String::from_utf8_lossy(&o.stdout).to_string();
                text.push_str(&String::from_utf8_lossy(&o.stderr));
                text.lines().next().unwrap_or_default().trim().to_string()
            })
            .unwrap_or_else(|| "not found".into())
    };
    Host {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: first_line("uname", "-r"),
        haproxy: first_line("haproxy", "-v"),
        nginx: first_line("nginx", "-v"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_reference_is_http1_16_connections_at_the_higher_rate() {
        assert_eq!(cpu_reference(&crate::scenario::full()), "http1-c16-high");
        assert_eq!(cpu_reference(&crate::scenario::quick()), "http1-c16-high");
    }
}
