//! Every figure of a run, as written to `report.json`, and the medians the
//! Markdown report and the plot are made from.

use serde::Serialize;

use crate::handshake::HandshakeResult;
use crate::load::{Latency, LoadResult};
use crate::scenario::{Pace, Rates, Scenario};
use crate::systems::SystemKind;

/// Resident memory of a proxy pair, in KiB: both sides together, and the
/// larger of the two (the per-proxy figure the targets speak of).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Mem {
    pub pair_kb: u64,
    pub largest_kb: u64,
}

impl Mem {
    pub fn rss(s: &crate::procs::Sample) -> Self {
        Self {
            pair_kb: s.rss_kb,
            largest_kb: s.largest_rss_kb,
        }
    }

    pub fn hwm(s: &crate::procs::Sample) -> Self {
        Self {
            pair_kb: s.hwm_kb,
            largest_kb: s.largest_hwm_kb,
        }
    }

    pub fn max(self, other: Self) -> Self {
        Self {
            pair_kb: self.pair_kb.max(other.pair_kb),
            largest_kb: self.largest_kb.max(other.largest_kb),
        }
    }

    fn median(values: &[Mem]) -> Option<Mem> {
        Some(Mem {
            pair_kb: median_u64(&values.iter().map(|m| m.pair_kb).collect::<Vec<_>>())?,
            largest_kb: median_u64(&values.iter().map(|m| m.largest_kb).collect::<Vec<_>>())?,
        })
    }
}

/// One load run of one system in one repeat.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioRun {
    pub repeat: usize,
    pub load: LoadResult,
    /// utime + stime of both proxies over the run, in microseconds.
    pub proxy_cpu_us: Option<u64>,
    /// `proxy_cpu_us` divided by every request answered (warm-up included).
    pub proxy_cpu_us_per_request: Option<f64>,
    /// Highest RSS sampled during the run.
    pub proxy_rss_max: Option<Mem>,
}

impl ScenarioRun {
    /// Requests answered per second of the pair's CPU time (warm-up included
    /// on both sides of the division).
    pub fn requests_per_cpu_second(&self) -> Option<f64> {
        self.proxy_cpu_us_per_request
            .filter(|c| *c > 0.0)
            .map(|c| 1e6 / c)
    }
}

/// The lowest and highest value over the repeats, beside a median.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Range {
    pub min: f64,
    pub max: f64,
}

impl Range {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Range> {
        values
            .into_iter()
            .filter(|v| v.is_finite())
            .fold(None, |r: Option<Range>, v| {
                Some(match r {
                    None => Range { min: v, max: v },
                    Some(r) => Range {
                        min: r.min.min(v),
                        max: r.max.max(v),
                    },
                })
            })
    }
}

/// The spread over the repeats of a scenario's headline figures.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub p50: Option<Range>,
    pub p99: Option<Range>,
    pub rps: Option<Range>,
    pub proxy_cpu_us_per_request: Option<Range>,
    pub requests_per_cpu_second: Option<Range>,
}

/// Medians over the repeats of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioFigures {
    pub id: String,
    pub title: String,
    pub scenario: Scenario,
    /// The open-loop rate (derived from the run's maxima); none when closed loop.
    pub rate: Option<u64>,
    pub latency_us: Latency,
    pub rps: f64,
    pub errors: u64,
    pub proxy_cpu_us_per_request: Option<f64>,
    /// Requests answered per second of the pair's CPU time.
    pub requests_per_cpu_second: Option<f64>,
    pub proxy_rss_max: Option<Mem>,
    /// Lowest and highest over the repeats.
    pub spread: Spread,
    pub runs: Vec<ScenarioRun>,
}

/// The idle-connection memory figure of one repeat.
#[derive(Debug, Clone, Serialize)]
pub struct IdleFigures {
    pub repeat: usize,
    pub requested: usize,
    pub opened: usize,
    pub failed: usize,
    /// RSS while the connections were held.
    pub proxy_rss: Mem,
}

/// Whether a system ran.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Status {
    Ran,
    Skipped { reason: String },
    Failed { errors: Vec<String> },
}

/// A control-plane figure that joins the harness later, with the reason.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum ControlPlaneFigure {
    Measured {
        /// Certify end to end, with `concurrency` callers.
        per_second: f64,
        /// The CA alone, one thread.
        sign_per_second: f64,
        p50_ms: f64,
        p99_ms: f64,
        failed: u64,
        concurrency: usize,
    },
    NotMeasured {
        reason: String,
    },
}

/// Everything measured for one system.
#[derive(Debug, Clone, Serialize)]
pub struct SystemFigures {
    pub system: SystemKind,
    pub description: String,
    pub status: Status,
    pub scenarios: Vec<ScenarioFigures>,
    /// Median RSS, started and idle.
    pub rss_idle: Option<Mem>,
    /// Median of the highest RSS sampled during the low-rate HTTP/1.1
    /// scenario with 16 connections (`rss_load_rate`, req/s).
    pub rss_load_low: Option<Mem>,
    pub rss_load_rate: Option<u64>,
    /// Highest VmHWM (peak RSS) seen at the end of a repeat.
    pub rss_peak: Option<Mem>,
    pub idle: Vec<IdleFigures>,
    /// Median RSS with the idle connections held.
    pub rss_idle_connections: Option<Mem>,
    pub handshakes: Vec<HandshakeResult>,
    /// Median mTLS handshakes per second against the server-side proxy.
    pub handshakes_per_second: Option<f64>,
    /// Best median requests per second over the closed-loop scenarios.
    pub max_rps: Option<f64>,
    /// Best median requests per proxy CPU-second over the closed-loop scenarios.
    pub max_rps_per_cpu_second: Option<f64>,
    /// CPU per request in the reference scenario (see `cpu_reference`).
    pub proxy_cpu_us_per_request: Option<f64>,
}

impl SystemFigures {
    pub fn scenario(&self, id: &str) -> Option<&ScenarioFigures> {
        self.scenarios.iter().find(|s| s.id == id)
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub started_at: String,
    pub host: Host,
    pub quick: bool,
    pub repeats: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub idle_connections: usize,
    /// The scenario whose CPU per request is the headline figure.
    pub cpu_reference: String,
    /// Threads or worker processes of every proxy in the headline tables.
    pub workers: usize,
    /// The open-loop rates, derived from the closed-loop maxima of this run.
    pub rates: Rates,
    pub systems: Vec<SystemFigures>,
    /// The closed-loop scenarios again with `second_workers` workers per
    /// proxy (empty when not run).
    pub second_workers: usize,
    pub second: Vec<SystemFigures>,
    /// Certificates signed per second through Certify: joins with the identity issue.
    pub certificates_per_second: ControlPlaneFigure,
    /// Webhook latency at 500 admissions per second.
    pub webhook: crate::webhook::WebhookFigure,
    /// A policy change's propagation to 100 and 1,000 subscribers.
    pub propagation: Vec<crate::propagation::PropagationFigure>,
    /// `weft canary set` to 100 proxies, start to the last one enforcing it
    /// (`None`: the run had no weft-proxy binary).
    pub canary: Option<crate::canary::CanaryFigure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub cpus: usize,
    pub kernel: String,
    pub haproxy: String,
    pub nginx: String,
}

impl Report {
    pub fn system(&self, kind: SystemKind) -> Option<&SystemFigures> {
        self.systems
            .iter()
            .find(|s| s.system == kind && matches!(s.status, Status::Ran))
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

fn median_u64(values: &[u64]) -> Option<u64> {
    let f: Vec<f64> = values.iter().map(|v| *v as f64).collect();
    median(&f).map(|m| m.round() as u64)
}

/// Folds the repeats of one scenario into medians.
pub fn scenario_figures(
    scenario: Scenario,
    rates: &Rates,
    runs: Vec<ScenarioRun>,
) -> ScenarioFigures {
    let pick = |f: fn(&Latency) -> f64| {
        median(
            &runs
                .iter()
                .map(|r| f(&r.load.latency_us))
                .collect::<Vec<_>>(),
        )
        .unwrap_or(0.0)
    };
    let latency_us = Latency {
        p50: pick(|l| l.p50),
        p90: pick(|l| l.p90),
        p99: pick(|l| l.p99),
        p999: pick(|l| l.p999),
        max: pick(|l| l.max),
        mean: pick(|l| l.mean),
    };
    let cpu: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.proxy_cpu_us_per_request)
        .collect();
    let per_cpu_s: Vec<f64> = runs
        .iter()
        .filter_map(ScenarioRun::requests_per_cpu_second)
        .collect();
    let rss: Vec<Mem> = runs.iter().filter_map(|r| r.proxy_rss_max).collect();
    let spread = Spread {
        p50: Range::of(runs.iter().map(|r| r.load.latency_us.p50)),
        p99: Range::of(runs.iter().map(|r| r.load.latency_us.p99)),
        rps: Range::of(runs.iter().map(|r| r.load.rps)),
        proxy_cpu_us_per_request: Range::of(cpu.iter().copied()),
        requests_per_cpu_second: Range::of(per_cpu_s.iter().copied()),
    };
    ScenarioFigures {
        id: scenario.id(),
        title: scenario.title(rates),
        scenario,
        rate: rates.rate(&scenario),
        latency_us,
        rps: median(&runs.iter().map(|r| r.load.rps).collect::<Vec<_>>()).unwrap_or(0.0),
        errors: runs.iter().map(|r| r.load.errors).sum(),
        proxy_cpu_us_per_request: median(&cpu),
        requests_per_cpu_second: median(&per_cpu_s),
        proxy_rss_max: Mem::median(&rss),
        spread,
        runs,
    }
}

/// What one system gathered over all repeats, before folding.
#[derive(Debug, Default)]
pub struct Gathered {
    pub runs: Vec<(Scenario, ScenarioRun)>,
    pub rss_idle: Vec<Mem>,
    pub rss_peak: Vec<Mem>,
    pub idle: Vec<IdleFigures>,
    pub handshakes: Vec<HandshakeResult>,
    pub errors: Vec<String>,
}

/// Folds everything gathered for `system` into its figures.
pub fn system_figures(
    system: SystemKind,
    scenarios: &[Scenario],
    rates: &Rates,
    cpu_reference: &str,
    skipped: Option<String>,
    gathered: Gathered,
) -> SystemFigures {
    let folded: Vec<ScenarioFigures> = scenarios
        .iter()
        .filter_map(|scenario| {
            let runs: Vec<ScenarioRun> = gathered
                .runs
                .iter()
                .filter(|(s, _)| s == scenario)
                .map(|(_, r)| r.clone())
                .collect();
            (!runs.is_empty()).then(|| scenario_figures(*scenario, rates, runs))
        })
        .collect();
    let status = match (skipped, gathered.errors.is_empty()) {
        (Some(reason), _) => Status::Skipped { reason },
        (None, true) => Status::Ran,
        (None, false) => Status::Failed {
            errors: gathered.errors.clone(),
        },
    };
    let closed = || folded.iter().filter(|s| s.scenario.pace == Pace::Max);
    let max_rps = closed().map(|s| s.rps).max_by(f64::total_cmp);
    let max_rps_per_cpu_second = closed()
        .filter_map(|s| s.requests_per_cpu_second)
        .max_by(f64::total_cmp);
    let low = folded.iter().find(|s| {
        s.scenario.pace == Pace::Low
            && s.scenario.protocol == crate::client::Protocol::Http1
            && s.scenario.connections == 16
    });
    let rss_load_low = low.and_then(|s| s.proxy_rss_max);
    let rss_load_rate = low.and_then(|s| s.rate);
    let proxy_cpu_us_per_request = folded
        .iter()
        .find(|s| s.id == cpu_reference)
        .and_then(|s| s.proxy_cpu_us_per_request);
    let idle_rss: Vec<Mem> = gathered.idle.iter().map(|i| i.proxy_rss).collect();
    let hs: Vec<f64> = gathered.handshakes.iter().map(|h| h.per_second).collect();
    SystemFigures {
        system,
        description: system.description().to_string(),
        status,
        scenarios: folded,
        rss_idle: Mem::median(&gathered.rss_idle),
        rss_load_low,
        rss_load_rate,
        rss_peak: gathered.rss_peak.iter().copied().reduce(Mem::max),
        rss_idle_connections: Mem::median(&idle_rss),
        idle: gathered.idle,
        handshakes_per_second: median(&hs),
        handshakes: gathered.handshakes,
        max_rps,
        max_rps_per_cpu_second,
        proxy_cpu_us_per_request,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN]), None);
    }
}
