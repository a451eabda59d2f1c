//! The Markdown report: the run's settings, a summary table, weft against the
//! targets, and one table per scenario with ratios to the direct call and to
//! the best peer.

use std::fmt::Write;

use super::targets::{self, MB, Outcome};
use crate::figures::{ControlPlaneFigure, Report, Status, SystemFigures};
use crate::systems::SystemKind;

pub fn render(r: &Report) -> String {
    let mut md = String::new();
    let command = if r.quick {
        "cargo run -p weft-benches --release -- all --quick"
    } else {
        "cargo run -p weft-benches --release -- all"
    };
    let _ = writeln!(md, "# weft benchmark report\n");
    let _ = writeln!(
        md,
        "Run {} on {} CPUs (Linux {}), `{command}`: {} repeat(s), each load {:.1} s recorded after {:.1} s warm-up; \
         figures are medians over repeats. {}; {}.\n",
        r.started_at,
        r.host.cpus,
        r.host.kernel,
        r.repeats,
        r.duration_s,
        r.warmup_s,
        r.host.haproxy,
        r.host.nginx,
    );
    if r.quick {
        let _ = writeln!(
            md,
            "**Quick mode**: proves every system runs and produces figures; its speeds mean little.\n"
        );
    }
    let _ = writeln!(
        md,
        "Every proxy runs with {} worker(s): weft {} runtime thread(s), HAProxy `nbthread {}`, nginx \
         `worker_processes {}`; the load generator and the backend are the same processes for all. \
         Latency in µs, measured from each request's intended send time (coordinated omission corrected). \
         CPU is utime+stime of both proxies of a pair per answered request; req/CPU-s is answered requests \
         per second of that CPU time. Memory in MB (10^6 bytes): pair = both proxies, largest = the larger \
         one. Medians over interleaved repeats; `a–b` is the lowest and highest repeat.\n",
        r.workers, r.workers, r.workers, r.workers
    );
    rates_section(&mut md, r);

    systems_table(&mut md, r);
    summary_table(&mut md, r);
    targets_section(&mut md, r);
    second_table(&mut md, r);
    for (id, title) in scenario_ids(r) {
        scenario_table(&mut md, r, &id, &title);
    }
    let _ = writeln!(md, "## Control plane\n");
    match &r.certificates_per_second {
        ControlPlaneFigure::Measured {
            per_second,
            sign_per_second,
            p50_ms,
            p99_ms,
            failed,
            concurrency,
        } => {
            let _ = writeln!(
                md,
                "Certificates signed per second through `Identity.Certify` end to end (gRPC over TLS, \
                 token check, signing, audit record; {concurrency} concurrent callers): \
                 **{per_second:.0}/s** (p50 {p50_ms:.2} ms, p99 {p99_ms:.2} ms, {failed} failed). \
                 The CA alone, one thread: {sign_per_second:.0}/s.\n"
            );
        }
        ControlPlaneFigure::NotMeasured { reason } => {
            let _ = writeln!(
                md,
                "Certificates signed per second (Certify): not measured ({reason}).\n"
            );
        }
    }
    webhook_section(&mut md, &r.webhook);
    propagation_section(&mut md, &r.propagation);
    if let Some(canary) = &r.canary {
        canary_section(&mut md, canary);
    }
    md
}

fn canary_section(md: &mut String, figure: &crate::canary::CanaryFigure) {
    use crate::canary::CanaryFigure;
    let _ = writeln!(
        md,
        "\n`weft canary set` to real proxies (`src/canary.rs`): the release `weft` binary sets checkout from 90/10 to \
         50/50 in a local controller's policy directory; each release `weft-proxy` holds its own Discovery.Watch stream, \
         and a proxy counts when it has swapped in the new snapshot (its next request routes by it; every proxy's \
         `/config` is checked after). Timed from the command's start, the directory poll and the debounce inside; \
         medians over {} changes (90/10 to 50/50 and back), and the slowest change's last proxy:\n\n\
         | proxies | command | first | p50 | last (target < 1 s) | slowest last | poll, debounce |\n|---:|---:|---:|---:|---:|---:|---:|",
        crate::canary::CHANGES
    );
    match figure {
        CanaryFigure::Measured {
            proxies,
            command_ms,
            first_ms,
            p50_ms,
            last_ms,
            worst_last_ms,
            poll_ms,
            debounce_ms,
            ..
        } => {
            let _ = writeln!(
                md,
                "| {proxies} | {command_ms:.0} ms | {first_ms:.1} ms | {p50_ms:.1} ms | **{last_ms:.1} ms** | {worst_last_ms:.1} ms | {poll_ms:.0} ms, {debounce_ms:.0} ms |"
            );
        }
        CanaryFigure::NotMeasured { proxies, reason } => {
            let _ = writeln!(md, "| {proxies} | not measured: {reason} | | | | | |");
        }
    }
}

fn propagation_section(md: &mut String, figures: &[crate::propagation::PropagationFigure]) {
    use crate::propagation::PropagationFigure;
    let _ = writeln!(
        md,
        "Policy propagation (`src/propagation.rs`): one HTTPRoute weight change (90/10 to 50/50) applied to a real \
         controller's index, timed to its arrival on every `Discovery.Watch` stream (each its own TLS connection, as \
         proxies hold them), the index's debounce included:\n\n\
         | subscribers | first | p50 | last | of which debounce |\n|---:|---:|---:|---:|---:|"
    );
    for f in figures {
        match f {
            PropagationFigure::Measured {
                subscribers,
                first_ms,
                p50_ms,
                last_ms,
                debounce_ms,
            } => {
                let _ = writeln!(
                    md,
                    "| {subscribers} | {first_ms:.1} ms | {p50_ms:.1} ms | **{last_ms:.1} ms** | {debounce_ms:.0} ms |"
                );
            }
            PropagationFigure::NotMeasured {
                subscribers,
                reason,
            } => {
                let _ = writeln!(md, "| {subscribers} | not measured: {reason} | | | |");
            }
        }
    }
    md.push('\n');
}

fn webhook_section(md: &mut String, figure: &crate::webhook::WebhookFigure) {
    match figure {
        crate::webhook::WebhookFigure::Measured {
            rate,
            connections,
            duration_s,
            answered,
            errors,
            latency_us: l,
            outcome,
            ..
        } => {
            let _ = writeln!(
                md,
                "Webhook latency (`src/webhook.rs`): `weft-injector` answering AdmissionReviews of an injectable pod \
                 over HTTPS (TLS 1.3, {connections} keep-alive connections) at {rate:.0}/s open loop for {duration_s:.0} s \
                 ({outcome}): p50 **{:.2} ms**, p99 **{:.2} ms**, p99.9 **{:.2} ms**, max {:.2} ms; \
                 {answered} answered, {errors} errors.\n",
                l.p50 / 1e3,
                l.p99 / 1e3,
                l.p999 / 1e3,
                l.max / 1e3,
            );
        }
        crate::webhook::WebhookFigure::NotMeasured { reason } => {
            let _ = writeln!(md, "Webhook latency: not measured ({reason}).\n");
        }
    }
}

fn rates_section(md: &mut String, r: &Report) {
    if r.rates.derived.is_empty() {
        let _ = writeln!(
            md,
            "No open-loop rate was derived (no closed-loop maximum was measured).\n"
        );
        return;
    }
    let _ = writeln!(
        md,
        "Open-loop rates, derived from this run's closed-loop maxima (run first): {:.0} % and {:.0} % \
         of the weakest proxy's median maximum, so that every system is below saturation.\n\n\
         | protocol | connections | low | high | from |\n|---|---:|---:|---:|---|",
        crate::scenario::LOW_SHARE * 100.0,
        crate::scenario::HIGH_SHARE * 100.0
    );
    for d in &r.rates.derived {
        let _ = writeln!(
            md,
            "| {} | {} | {} req/s | {} req/s | {} in {}: {:.0} req/s |",
            d.protocol.label(),
            d.connections,
            d.low,
            d.high,
            d.weakest,
            d.from,
            d.weakest_max_rps
        );
    }
    md.push('\n');
}

/// The closed-loop scenarios again with the second worker count.
fn second_table(md: &mut String, r: &Report) {
    if r.second.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## {} workers per proxy (closed loop)\n\n\
         The closed-loop scenarios again, every proxy with {} workers (weft runtime threads, HAProxy \
         `nbthread`, nginx `worker_processes`). On this {}-CPU machine the load generator and the \
         backend share the CPUs with both proxies of the pair.\n\n\
         | system | scenario | req/s | req/CPU-s | CPU µs/req | errors |\n|---|---|---:|---:|---:|---:|",
        r.second_workers, r.second_workers, r.host.cpus
    );
    for s in &r.second {
        for sc in &s.scenarios {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                s.system,
                sc.id,
                with_range(sc.rps, sc.spread.rps, 0),
                per_cpu_cell(sc),
                cpu_cell(sc),
                sc.errors
            );
        }
        if let Status::Failed { errors } = &s.status {
            let _ = writeln!(
                md,
                "| {} | FAILED: {} | | | | |",
                s.system,
                errors.join("; ").replace('|', "/")
            );
        }
    }
    md.push('\n');
}

/// `median (min–max)` with `digits` decimals; the range only when it is one.
fn with_range(median: f64, range: Option<crate::figures::Range>, digits: usize) -> String {
    match range {
        Some(r) if r.max > r.min => {
            format!("{median:.digits$} ({:.digits$}–{:.digits$})", r.min, r.max)
        }
        _ => format!("{median:.digits$}"),
    }
}

/// A scenario's req/CPU-s cell, with its range.
fn per_cpu_cell(sc: &crate::figures::ScenarioFigures) -> String {
    opt_with_range(
        sc.requests_per_cpu_second,
        sc.spread.requests_per_cpu_second,
        0,
    )
}

/// A scenario's CPU µs/req cell, with its range.
fn cpu_cell(sc: &crate::figures::ScenarioFigures) -> String {
    opt_with_range(
        sc.proxy_cpu_us_per_request,
        sc.spread.proxy_cpu_us_per_request,
        1,
    )
}

fn opt_with_range(
    median: Option<f64>,
    range: Option<crate::figures::Range>,
    digits: usize,
) -> String {
    median
        .map(|m| with_range(m, range, digits))
        .unwrap_or_else(|| "-".into())
}

fn systems_table(md: &mut String, r: &Report) {
    let _ = writeln!(
        md,
        "## Systems\n\n| system | what it is | status |\n|---|---|---|"
    );
    for s in &r.systems {
        let status = match &s.status {
            Status::Ran => "ran".to_string(),
            Status::Skipped { reason } => format!("skipped: {reason}"),
            Status::Failed { errors } => format!("FAILED: {}", errors.join("; ")),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            s.system,
            s.description,
            status.replace('|', "/").replace('\n', " ")
        );
    }
    md.push('\n');
}

fn summary_table(md: &mut String, r: &Report) {
    let ref_ids: Vec<(String, String)> = ["http1-c16-low", "http1-c16-high"]
        .iter()
        .filter(|id| r.systems.iter().any(|s| s.scenario(id).is_some()))
        .map(|id| {
            let label = if id.ends_with("low") { "low" } else { "high" };
            (id.to_string(), label.to_string())
        })
        .collect();
    let _ = write!(md, "## Summary\n\n| system |");
    for (_, label) in &ref_ids {
        let _ = write!(md, " +p50 @{label} | +p99 @{label} |");
    }
    let _ = writeln!(
        md,
        " max req/s | max req/CPU-s | CPU µs/req ({}) | RSS idle | RSS @low | RSS peak | RSS {} idle conns | mTLS handshakes/s |",
        r.cpu_reference, r.idle_connections
    );
    let _ = write!(md, "|---|");
    for _ in &ref_ids {
        md.push_str("---:|---:|");
    }
    let _ = writeln!(md, "---:|---:|---:|---:|---:|---:|---:|---:|");
    let best_rps = best_peer_value(r, |s| s.max_rps, false);
    let best_per_cpu = best_peer_value(r, |s| s.max_rps_per_cpu_second, false);
    let best_cpu = best_peer_value(r, |s| s.proxy_cpu_us_per_request, true);
    for s in r.systems.iter().filter(|s| matches!(s.status, Status::Ran)) {
        let _ = write!(md, "| {} |", s.system);
        for (id, _) in &ref_ids {
            for p99 in [false, true] {
                let cell = match (s.system, targets::added(r, s, id, p99)) {
                    (SystemKind::Direct, _) => "0".to_string(),
                    (_, Some(v)) => format!("{v:.0}"),
                    (_, None) => "-".to_string(),
                };
                let _ = write!(md, " {cell} |");
            }
        }
        let rps = s
            .max_rps
            .map(|v| format!("{v:.0}{}", ratio(v, best_rps, s.system)))
            .unwrap_or_else(|| "-".into());
        let per_cpu = s
            .max_rps_per_cpu_second
            .map(|v| format!("{v:.0}{}", ratio(v, best_per_cpu, s.system)))
            .unwrap_or_else(|| "-".into());
        let cpu = s
            .proxy_cpu_us_per_request
            .map(|v| format!("{v:.1}{}", ratio(v, best_cpu, s.system)))
            .unwrap_or_else(|| "-".into());
        let mem = |m: Option<crate::figures::Mem>| {
            m.map(|m| {
                format!(
                    "{:.1} ({:.1})",
                    m.pair_kb as f64 * 1024.0 / MB,
                    m.largest_kb as f64 * 1024.0 / MB
                )
            })
            .unwrap_or_else(|| "-".into())
        };
        let hs = s
            .handshakes_per_second
            .map(|v| format!("{v:.0}"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            md,
            " {rps} | {per_cpu} | {cpu} | {} | {} | {} | {} | {hs} |",
            mem(s.rss_idle),
            mem(s.rss_load_low),
            mem(s.rss_peak),
            mem(s.rss_idle_connections),
        );
    }
    let _ = writeln!(
        md,
        "\n+p50/+p99: latency added over direct (µs), HTTP/1.1, 16 connections, at the low and the high \
         open-loop rate. RSS: pair (largest proxy), MB; @low: during the low-rate HTTP/1.1 scenario. \
         `(0.80x)` after weft's figure: its ratio to the best peer.\n"
    );
}

/// ` (1.23x)` after weft's figure when a best peer exists.
fn ratio(own: f64, best: Option<f64>, system: SystemKind) -> String {
    match best {
        Some(b) if system == SystemKind::Weft && b > 0.0 => format!(" ({:.2}x)", own / b),
        _ => String::new(),
    }
}

fn best_peer_value(
    r: &Report,
    f: impl Fn(&SystemFigures) -> Option<f64>,
    lower_is_better: bool,
) -> Option<f64> {
    let values = r
        .systems
        .iter()
        .filter(|s| s.system.is_peer() && matches!(s.status, Status::Ran))
        .filter_map(f);
    if lower_is_better {
        values.min_by(f64::total_cmp)
    } else {
        values.max_by(f64::total_cmp)
    }
}

fn targets_section(md: &mut String, r: &Report) {
    let verdicts = targets::evaluate(r);
    let short: Vec<&targets::Verdict> = verdicts
        .iter()
        .filter(|v| v.outcome == Outcome::NotMet)
        .collect();
    let _ = writeln!(md, "## weft against the targets\n");
    if r.quick {
        let _ = writeln!(md, "(Quick mode: these verdicts are not meaningful.)\n");
    }
    if short.is_empty() {
        let _ = writeln!(md, "weft falls short of no measured target in this run.\n");
    } else {
        let _ = writeln!(
            md,
            "weft falls short of {} target(s) in this run:\n",
            short.len()
        );
        for v in &short {
            let _ = writeln!(md, "- **Not met**: {}: {}.", v.target, v.detail);
        }
        md.push('\n');
    }
    let _ = writeln!(md, "| target | verdict | figures |\n|---|---|---|");
    for v in &verdicts {
        let outcome = match v.outcome {
            Outcome::Met => "met",
            Outcome::NotMet => "**NOT MET**",
            Outcome::NotMeasured => "not measured",
        };
        let _ = writeln!(md, "| {} | {outcome} | {} |", v.target, v.detail);
    }
    md.push('\n');
}

fn scenario_ids(r: &Report) -> Vec<(String, String)> {
    let mut ids: Vec<(String, String)> = Vec::new();
    for s in &r.systems {
        for sc in &s.scenarios {
            if !ids.iter().any(|(id, _)| *id == sc.id) {
                ids.push((sc.id.clone(), sc.title.clone()));
            }
        }
    }
    ids
}

fn scenario_table(md: &mut String, r: &Report, id: &str, title: &str) {
    let _ = writeln!(
        md,
        "### {title}\n\n| system | p50 | p90 | p99 | p99.9 | max | +p50 | +p99 | p99 vs direct | p99 vs best peer | req/s | req/CPU-s | CPU µs/req | RSS max | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let direct = r
        .system(SystemKind::Direct)
        .and_then(|d| d.scenario(id))
        .map(|d| d.latency_us);
    let best_peer_p99 = r
        .systems
        .iter()
        .filter(|s| s.system.is_peer() && matches!(s.status, Status::Ran))
        .filter_map(|s| s.scenario(id).map(|sc| sc.latency_us.p99))
        .min_by(f64::total_cmp);
    for s in &r.systems {
        let Some(sc) = s.scenario(id) else {
            continue;
        };
        let l = sc.latency_us;
        let (add50, add99, vs_direct) = match direct {
            Some(d) => (
                format!("{:.0}", l.p50 - d.p50),
                format!("{:.0}", l.p99 - d.p99),
                format!("{:.2}x", l.p99 / d.p99.max(1.0)),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let vs_peer = best_peer_p99
            .map(|b| format!("{:.2}x", l.p99 / b.max(1.0)))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} | {:.0} | {:.0} | {add50} | {add99} | {vs_direct} | {vs_peer} | {} | {} | {} | {} | {} |",
            s.system,
            with_range(l.p50, sc.spread.p50, 0),
            l.p90,
            with_range(l.p99, sc.spread.p99, 0),
            l.p999,
            l.max,
            with_range(sc.rps, sc.spread.rps, 0),
            per_cpu_cell(sc),
            cpu_cell(sc),
            sc.proxy_rss_max
                .map(|m| format!("{:.1}", m.pair_kb as f64 * 1024.0 / MB))
                .unwrap_or_else(|| "-".into()),
            sc.errors,
        );
    }
    md.push('\n');
}
