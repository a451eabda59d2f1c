//! Writes the outputs of a run: `report.md`, `report.json` and `latency.png`,
//! and checks that every system ran and produced figures.

mod markdown;
mod plot;
mod targets;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::figures::{Report, Status};
use crate::systems::SystemKind;

pub use markdown::render as markdown;
pub use targets::{Outcome, Verdict, evaluate as targets};

/// The files written.
#[derive(Debug)]
pub struct Written {
    pub markdown: PathBuf,
    pub json: PathBuf,
    pub png: PathBuf,
}

pub fn write(report: &Report, out: &Path) -> anyhow::Result<Written> {
    fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let written = Written {
        markdown: out.join("report.md"),
        json: out.join("report.json"),
        png: out.join("latency.png"),
    };
    fs::write(&written.json, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("write {}", written.json.display()))?;
    fs::write(&written.markdown, markdown::render(report))
        .with_context(|| format!("write {}", written.markdown.display()))?;
    plot::draw(report, &written.png)?;
    Ok(written)
}

/// Everything missing from a run: a system that did not run (a skipped weft
/// is listed only when `weft_required`), or a figure that was not produced.
pub fn missing(report: &Report, weft_required: bool) -> Vec<String> {
    let mut missing = Vec::new();
    for s in &report.systems {
        let name = s.system;
        match &s.status {
            Status::Ran => {}
            Status::Skipped { reason } => {
                let weft = matches!(
                    s.system,
                    SystemKind::Weft
                        | SystemKind::WeftPolicy
                        | SystemKind::WeftTrace100
                        | SystemKind::WeftTrace1
                );
                if !weft || weft_required {
                    missing.push(format!("{name} was skipped: {reason}"));
                }
                continue;
            }
            Status::Failed { errors } => {
                missing.push(format!("{name} failed: {}", errors.join("; ")));
                continue;
            }
        }
        for sc in &s.scenarios {
            if sc.rps <= 0.0 || sc.latency_us.p50 <= 0.0 {
                missing.push(format!("{name} {}: no answered request", sc.id));
            }
        }
        if s.scenarios.is_empty() {
            missing.push(format!("{name}: no scenario ran"));
        }
        if name != SystemKind::Direct {
            let checks = [
                ("CPU per request", s.proxy_cpu_us_per_request.is_some()),
                ("idle RSS", s.rss_idle.is_some_and(|m| m.pair_kb > 0)),
                ("peak RSS", s.rss_peak.is_some_and(|m| m.pair_kb > 0)),
                (
                    "RSS with idle connections",
                    s.idle.iter().any(|i| i.opened > 0),
                ),
                (
                    "mTLS handshakes per second",
                    s.handshakes_per_second.is_some_and(|h| h > 0.0),
                ),
            ];
            for (what, ok) in checks {
                if !ok {
                    missing.push(format!("{name}: no {what}"));
                }
            }
        }
    }
    for f in &report.propagation {
        if let crate::propagation::PropagationFigure::NotMeasured {
            subscribers,
            reason,
        } = f
        {
            missing.push(format!(
                "policy propagation to {subscribers} subscribers: {reason}"
            ));
        }
    }
    if let Some(crate::canary::CanaryFigure::NotMeasured { proxies, reason }) = &report.canary {
        missing.push(format!("`weft canary set` to {proxies} proxies: {reason}"));
    }
    missing
}
