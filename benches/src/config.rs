//! Command line of the harness: `all` (the benchmark), and the worker
//! subcommands it runs as separate processes (`backend`, `load`, `idle`,
//! `handshake`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::scenario::{self, Scenario};
use crate::systems::SystemKind;

#[derive(Debug, Parser)]
#[command(
    name = "weft-benches",
    about = "weft against a direct call and real peers, in one run"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every system through every scenario and write the report.
    All(AllArgs),
    /// (worker) Serve the fixed backend; prints `listening <addr>`.
    Backend {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// (worker) Run one load described by a JSON `LoadSpec`; prints a JSON `LoadResult`.
    Load {
        #[arg(long)]
        spec: String,
    },
    /// (worker) Open idle HTTP/1.1 connections and hold them until stdin closes.
    Idle {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        count: usize,
        /// Upper bound on how long the connections are held, in seconds.
        #[arg(long, default_value_t = 120)]
        hold_secs: u64,
    },
    /// Only the webhook latency at 500 admissions per second; prints the figure as JSON.
    Webhook {
        /// Brief run (2 s).
        #[arg(long)]
        quick: bool,
    },
    /// Only `weft canary set` timed to real proxies (release binaries, built
    /// first under cargo); prints the figure as JSON.
    Canary {
        /// How many proxies.
        #[arg(long, default_value_t = crate::run::CANARY_PROXIES)]
        proxies: usize,
        /// A `weft-proxy` binary other than the release build.
        #[arg(long)]
        weft_proxy: Option<std::path::PathBuf>,
    },
    /// (worker) Measure mTLS handshakes per second from a JSON `HandshakeSpec`.
    Handshake {
        #[arg(long)]
        spec: String,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct AllArgs {
    /// Short run (under 2 minutes) that proves every system runs and produces
    /// figures; speeds from it mean little.
    #[arg(long)]
    pub quick: bool,
    /// Times each system goes through every scenario (interleaved); figures are
    /// medians. Default 3, quick 1.
    #[arg(long)]
    pub repeats: Option<usize>,
    /// Recorded seconds of each load run. Default 5, quick 1.
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// Unrecorded warm-up seconds before each load run. Default 1, quick 0.3.
    #[arg(long)]
    pub warmup_secs: Option<f64>,
    /// Idle connections held for the memory figure. Default 10000, quick 1000.
    #[arg(long)]
    pub idle_connections: Option<usize>,
    /// Where report.md, report.json and latency.png go.
    #[arg(long, default_value = "target/weft-bench")]
    pub out: PathBuf,
    /// Only these systems (comma separated: direct, weft, haproxy-http,
    /// haproxy-tcp, nginx). Default: all.
    #[arg(long, value_delimiter = ',', value_parser = parse_system)]
    pub systems: Vec<SystemKind>,
    /// The weft-proxy binary; default: built with cargo and found beside the harness.
    #[arg(long)]
    pub weft_proxy: Option<PathBuf>,
    /// Threads (weft, HAProxy's nbthread) or worker processes (nginx) of
    /// every proxy in the headline tables. Default 1.
    #[arg(long)]
    pub workers: Option<usize>,
    /// The worker count of the second, closed-loop-only table; 0 leaves it
    /// out. Default 2.
    #[arg(long)]
    pub second_workers: Option<usize>,
}

fn parse_system(s: &str) -> Result<SystemKind, String> {
    SystemKind::ALL
        .into_iter()
        .find(|k| k.name() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = SystemKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown system `{s}`; expected one of {}", names.join(", "))
        })
}

/// The settings of one `all` run, with the quick-mode defaults applied.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub repeats: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub idle_connections: usize,
    pub handshake_duration: Duration,
    pub handshake_concurrency: usize,
    pub scenarios: Vec<Scenario>,
    pub systems: Vec<SystemKind>,
    pub out: PathBuf,
    pub weft_proxy: Option<PathBuf>,
    pub workers: usize,
    /// `None`: no second table.
    pub second_workers: Option<usize>,
}

impl Settings {
    pub fn from_args(args: &AllArgs) -> Result<Self, String> {
        let q = args.quick;
        let secs = |v: Option<f64>, full: f64, quick: f64, what: &str| {
            let v = v.unwrap_or(if q { quick } else { full });
            if v.is_finite() && (0.0..=600.0).contains(&v) {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(format!(
                    "--{what} must be between 0 and 600 seconds, got {v}"
                ))
            }
        };
        let repeats = args.repeats.unwrap_or(if q { 1 } else { 3 });
        if !(1..=20).contains(&repeats) {
            return Err(format!("--repeats must be 1 to 20, got {repeats}"));
        }
        let duration = secs(args.duration_secs, 5.0, 1.0, "duration-secs")?;
        if duration.is_zero() {
            return Err("--duration-secs must be above 0".to_string());
        }
        let idle_connections = args
            .idle_connections
            .unwrap_or(if q { 1_000 } else { 10_000 });
        if idle_connections > 30_000 {
            return Err(format!(
                "--idle-connections must be at most 30000, got {idle_connections}"
            ));
        }
        let workers = args.workers.unwrap_or(1);
        if !(1..=64).contains(&workers) {
            return Err(format!("--workers must be 1 to 64, got {workers}"));
        }
        let second_workers = match args.second_workers.unwrap_or(2) {
            0 => None,
            n if n > 64 => {
                return Err(format!("--second-workers must be 0 to 64, got {n}"));
            }
            n if n == workers => None,
            n => Some(n),
        };
        let mut systems = if args.systems.is_empty() {
            SystemKind::ALL.to_vec()
        } else {
            args.systems.clone()
        };
        systems.sort();
        systems.dedup();
        Ok(Self {
            quick: q,
            repeats,
            warmup: secs(args.warmup_secs, 1.0, 0.3, "warmup-secs")?,
            duration,
            idle_connections,
            handshake_duration: Duration::from_secs(if q { 1 } else { 3 }),
            handshake_concurrency: 16,
            scenarios: if q {
                scenario::quick()
            } else {
                scenario::full()
            },
            systems,
            out: args.out.clone(),
            weft_proxy: args.weft_proxy.clone(),
            workers,
            second_workers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let cli = Cli::try_parse_from(["weft-benches", "all"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        match cli.command {
            Command::All(all) => Settings::from_args(&all),
            other => Err(format!("parsed {other:?}")),
        }
    }

    #[test]
    fn quick_mode_is_short_and_complete() {
        let s = parse(&["--quick"]).expect("valid");
        assert_eq!(s.repeats, 1);
        assert_eq!(s.systems, SystemKind::ALL.to_vec());
        let per_system = s.scenarios.len() as f64 * (s.warmup + s.duration).as_secs_f64();
        assert!(per_system * 5.0 < 60.0, "{per_system}");
    }

    #[test]
    fn bad_values_are_reported() {
        assert!(
            parse(&["--repeats", "0"])
                .unwrap_err()
                .contains("--repeats")
        );
        assert!(
            parse(&["--duration-secs=-1"])
                .unwrap_err()
                .contains("--duration-secs")
        );
        assert!(
            parse(&["--systems", "envoy"])
                .unwrap_err()
                .contains("unknown system")
        );
        let s = parse(&["--systems", "nginx,direct"]).expect("valid");
        assert_eq!(s.systems, vec![SystemKind::Direct, SystemKind::Nginx]);
        assert!(
            parse(&["--workers", "0"])
                .unwrap_err()
                .contains("--workers")
        );
        let s = parse(&[]).expect("valid");
        assert_eq!((s.workers, s.second_workers), (1, Some(2)));
        let s = parse(&["--second-workers", "0"]).expect("valid");
        assert_eq!(s.second_workers, None);
    }
}
