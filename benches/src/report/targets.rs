//! weft against the targets of the benchmark issue, as ratios in the same run.
//! Reported, never asserted.

use serde::Serialize;

use crate::figures::{ControlPlaneFigure, Report, SystemFigures};
use crate::systems::SystemKind;

/// Bytes in a MB, as the targets count them.
pub(super) const MB: f64 = 1_000_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Outcome {
    Met,
    NotMet,
    NotMeasured,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub target: String,
    pub outcome: Outcome,
    pub detail: String,
}

fn verdict(target: String, met: Option<bool>, detail: String) -> Verdict {
    let outcome = match met {
        Some(true) => Outcome::Met,
        Some(false) => Outcome::NotMet,
        None => Outcome::NotMeasured,
    };
    Verdict {
        target,
        outcome,
        detail,
    }
}

/// The best peer by `figure` (lowest when `lower_is_better`), with its value.
fn best_peer(
    report: &Report,
    lower_is_better: bool,
    figure: impl Fn(&SystemFigures) -> Option<f64>,
) -> Option<(SystemKind, f64)> {
    report
        .systems
        .iter()
        .filter(|s| s.system.is_peer())
        .filter_map(|s| {
            report
                .system(s.system)
                .and_then(|s| Some((s.system, figure(s)?)))
        })
        .min_by(|a, b| {
            if lower_is_better {
                a.1.total_cmp(&b.1)
            } else {
                b.1.total_cmp(&a.1)
            }
        })
}

/// Latency a system adds over the direct call in one scenario, in µs.
pub(super) fn added(report: &Report, system: &SystemFigures, id: &str, p99: bool) -> Option<f64> {
    let direct = report.system(SystemKind::Direct)?.scenario(id)?;
    let own = system.scenario(id)?;
    let pick = |l: &crate::load::Latency| if p99 { l.p99 } else { l.p50 };
    Some(pick(&own.latency_us) - pick(&direct.latency_us))
}

fn mb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / MB
}

pub fn evaluate(report: &Report) -> Vec<Verdict> {
    let mut out = Vec::new();
    let Some(weft) = report.system(SystemKind::Weft) else {
        out.push(verdict(
            "every target".into(),
            None,
            "weft did not run in this report, so no target was measured".into(),
        ));
        return out;
    };

    for sc in &weft.scenarios {
        if !sc.scenario.is_open_loop() {
            continue;
        }
        for (p99, name) in [(false, "p50"), (true, "p99")] {
            let target = format!("added {name} below every peer, {}", sc.title);
            let own = added(report, weft, &sc.id, p99);
            let best = best_peer(report, true, |s| added(report, s, &sc.id, p99));
            out.push(match (own, best) {
                (Some(own), Some((peer, best))) => verdict(
                    target,
                    Some(own < best),
                    format!("weft adds {own:.0} µs; best peer {peer} adds {best:.0} µs"),
                ),
                _ => verdict(target, None, "weft, direct or every peer is missing".into()),
            });
        }
    }

    let target = format!(
        "maximum req/s per proxy CPU-second at least 1.3x the best peer's ({} worker(s) each)",
        report.workers
    );
    out.push(
        match (
            weft.max_rps_per_cpu_second,
            best_peer(report, false, |s| s.max_rps_per_cpu_second),
        ) {
            (Some(own), Some((peer, best))) if best > 0.0 => verdict(
                target,
                Some(own >= 1.3 * best),
                format!(
                    "weft {own:.0} req/CPU-s; best peer {peer} {best:.0} req/CPU-s ({:.2}x)",
                    own / best
                ),
            ),
            _ => verdict(
                target,
                None,
                "no closed-loop CPU figure for weft or the peers".into(),
            ),
        },
    );

    let target = format!(
        "maximum req/s at least 1.3x the best peer's ({} worker(s) each)",
        report.workers
    );
    out.push(
        match (weft.max_rps, best_peer(report, false, |s| s.max_rps)) {
            (Some(own), Some((peer, best))) if best > 0.0 => verdict(
                target,
                Some(own >= 1.3 * best),
                format!(
                    "weft {own:.0} req/s; best peer {peer} {best:.0} req/s ({:.2}x)",
                    own / best
                ),
            ),
            _ => verdict(
                target,
                None,
                "no closed-loop figure for weft or the peers".into(),
            ),
        },
    );

    let target = format!(
        "proxy CPU per request (both sides) at most 0.8x the best peer's ({})",
        report.cpu_reference
    );
    out.push(
        match (
            weft.proxy_cpu_us_per_request,
            best_peer(report, true, |s| s.proxy_cpu_us_per_request),
        ) {
            (Some(own), Some((peer, best))) if best > 0.0 => verdict(
                target,
                Some(own <= 0.8 * best),
                format!(
                    "weft {own:.1} µs/req; best peer {peer} {best:.1} µs/req ({:.2}x)",
                    own / best
                ),
            ),
            _ => verdict(target, None, "CPU figure missing".into()),
        },
    );

    let target = format!(
        "traffic policy (a two-backend split, retries, a budget, circuit breaking) adds under 5 % CPU per request to the weft pair ({})",
        report.cpu_reference
    );
    let policy = report.system(SystemKind::WeftPolicy);
    out.push(
        match (
            weft.proxy_cpu_us_per_request,
            policy.and_then(|p| p.proxy_cpu_us_per_request),
        ) {
            (Some(plain), Some(with)) if plain > 0.0 => {
                let max_rps = match (weft.max_rps, policy.and_then(|p| p.max_rps)) {
                    (Some(a), Some(b)) if a > 0.0 => {
                        format!(
                            "; closed-loop maximum {b:.0} vs {a:.0} req/s ({:.2}x)",
                            b / a
                        )
                    }
                    _ => String::new(),
                };
                verdict(
                    target,
                    Some(with <= 1.05 * plain),
                    format!(
                        "weft-policy {with:.1} µs/req; weft {plain:.1} µs/req ({:+.1} %){max_rps}",
                        (with / plain - 1.0) * 100.0
                    ),
                )
            }
            _ => verdict(
                target,
                None,
                "weft or weft-policy has no CPU figure in this run".into(),
            ),
        },
    );

    // Tracing's cost: CPU per request and added latency beside the untraced pair.
    for (kind, percent, aim) in [
        (SystemKind::WeftTrace100, 100, 25.0),
        (SystemKind::WeftTrace1, 1, 5.0),
    ] {
        let target = format!(
            "tracing at {percent} % sampling adds under {aim:.0} % CPU per request to the weft pair ({})",
            report.cpu_reference
        );
        let traced = report.system(kind);
        let latency = traced
            .map(|t| {
                t.scenarios
                    .iter()
                    .filter(|sc| sc.scenario.is_open_loop())
                    .filter_map(|sc| {
                        let plain = added(report, weft, &sc.id, false)?;
                        let with = added(report, t, &sc.id, false)?;
                        Some(format!("{} {:+.0} µs", sc.id, with - plain))
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let latency = if latency.is_empty() {
            String::new()
        } else {
            format!("; added p50 beside weft: {}", latency.join(", "))
        };
        out.push(
            match (
                weft.proxy_cpu_us_per_request,
                traced.and_then(|t| t.proxy_cpu_us_per_request),
            ) {
                (Some(plain), Some(with)) if plain > 0.0 => verdict(
                    target,
                    Some(with <= (1.0 + aim / 100.0) * plain),
                    format!(
                        "{kind} {with:.1} µs/req; weft {plain:.1} µs/req ({:+.1} %, {:+.1} µs){latency}",
                        (with / plain - 1.0) * 100.0,
                        with - plain
                    ),
                ),
                _ => verdict(
                    target,
                    None,
                    format!("weft or {kind} has no CPU figure in this run"),
                ),
            },
        );
    }

    let at_rate = match weft.rss_load_rate {
        Some(r) => format!("RSS at the low rate ({r} req/s) at most 15 MB per proxy"),
        None => "RSS at the low rate at most 15 MB per proxy".to_string(),
    };
    let mem_targets = [
        (
            "RSS idle at most 10 MB per proxy".to_string(),
            weft.rss_idle,
            10.0,
        ),
        (at_rate, weft.rss_load_low, 15.0),
    ];
    for (target, mem, limit) in mem_targets {
        out.push(match mem {
            Some(m) => verdict(
                target,
                Some(mb(m.largest_kb) <= limit),
                format!(
                    "largest proxy {:.1} MB (pair {:.1} MB)",
                    mb(m.largest_kb),
                    mb(m.pair_kb)
                ),
            ),
            None => verdict(target, None, "not sampled".into()),
        });
    }

    let target =
        "RSS with 10,000 idle connections: the larger proxy below the best peer's".to_string();
    let opened = weft.idle.iter().map(|i| i.opened).max().unwrap_or(0);
    let best = best_peer(report, true, |s| {
        s.rss_idle_connections.map(|m| mb(m.largest_kb))
    });
    out.push(match (weft.rss_idle_connections, best) {
        (Some(m), Some((peer, best)))
            if report.idle_connections >= 10_000 && opened >= 10_000 =>
        {
            verdict(
                target,
                Some(mb(m.largest_kb) < best),
                format!(
                    "weft's largest proxy {:.1} MB (pair {:.1} MB); best peer {peer} {best:.1} MB ({:.2}x)",
                    mb(m.largest_kb),
                    mb(m.pair_kb),
                    mb(m.largest_kb) / best
                ),
            )
        }
        (None, _) => verdict(target, None, "not sampled".into()),
        (_, None) => verdict(target, None, "no peer was sampled".into()),
        (Some(m), Some(_)) => verdict(
            target,
            None,
            format!(
                "only {opened} of {} connections were held (largest proxy {:.1} MB)",
                report.idle_connections,
                mb(m.largest_kb)
            ),
        ),
    });

    let target = "certificates signed per second through Certify at least 5,000".to_string();
    out.push(match &report.certificates_per_second {
        ControlPlaneFigure::Measured { per_second, .. } => verdict(
            target,
            Some(*per_second >= 5_000.0),
            format!("{per_second:.0}/s"),
        ),
        ControlPlaneFigure::NotMeasured { reason } => verdict(target, None, reason.clone()),
    });

    let target = "webhook p99 under 5 ms at 500 admissions per second".to_string();
    out.push(match &report.webhook {
        crate::webhook::WebhookFigure::Measured {
            latency_us, errors, ..
        } => verdict(
            target,
            Some(latency_us.p99 < 5_000.0 && *errors == 0),
            format!("p99 {:.2} ms, {errors} errors", latency_us.p99 / 1e3),
        ),
        crate::webhook::WebhookFigure::NotMeasured { reason } => {
            verdict(target, None, reason.clone())
        }
    });
    out
}
