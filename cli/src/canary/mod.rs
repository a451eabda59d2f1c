//! `weft canary`: shift a service's traffic between its backends (the weights
//! of its HTTPRoute's `backendRefs`), watch each backend, promote or roll back.
//!
//! On Kubernetes the route is changed with server-side apply (field manager
//! `weft`); in local mode (`--policy-dir`) the route's YAML document is
//! rewritten in the directory the local controller reloads. Either way the
//! controller pushes the new weights to every proxy that sends to the service.
//! [`weights`] holds the decision (what to write, or why not), [`store`] the
//! two places a route lives.

pub mod store;
pub mod weights;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::demo::scrape::{Sample, Scraper};
use crate::demo::stats::quantile;
use crate::output::OutputFormat;
use store::Store;
use weights::Weight;

#[derive(clap::Args, Debug)]
pub struct CanaryArgs {
    #[command(subcommand)]
    pub command: CanaryCommand,
    /// The service's namespace (default: `default`; `demo` for the running
    /// `weft demo`).
    #[arg(long, short, global = true)]
    pub namespace: Option<String>,
    /// Local mode: the controller's policy directory. Without it (and without
    /// `--kubeconfig`), the `weft demo` running in the default state
    /// directory if there is one, else the Kubernetes cluster of the
    /// kubeconfig.
    #[arg(long, global = true)]
    pub policy_dir: Option<PathBuf>,
    /// The kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    #[arg(long, short, value_enum, global = true, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(clap::Subcommand, Debug)]
pub enum CanaryCommand {
    /// Sets the share of each backend, in percent (they must add up to 100).
    Set {
        service: String,
        /// BACKEND=PERCENT, once per backend (e.g. --weight checkout-v2=10).
        #[arg(long = "weight", required = true)]
        weights: Vec<Weight>,
    },
    /// The weights now, and each backend's request rate, success rate and
    /// latency from the proxies' metrics.
    Status {
        service: String,
        /// A proxy's admin address to read metrics from (repeatable; local
        /// mode: `weft demo` prints them). None: weights only.
        #[arg(long = "proxy-admin")]
        proxies: Vec<SocketAddr>,
        /// How long to watch the metrics for rates.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        window: Duration,
    },
    /// Sends all traffic to one backend.
    Promote { service: String, backend: String },
    /// Sends all traffic back to the stable backend (the one that carried the
    /// most before the first `set`).
    Rollback { service: String },
}

pub async fn run(args: CanaryArgs) -> anyhow::Result<()> {
    let demo = if args.policy_dir.is_none() && args.kubeconfig.is_none() {
        crate::demo::running::RunningDemo::find_default()
    } else {
        None
    };
    let (store, default_ns, demo_proxies) = match (&args.policy_dir, demo) {
        (Some(dir), _) => (Store::Local { dir: dir.clone() }, "default", Vec::new()),
        (None, Some(demo)) => {
            eprintln!(
                "weft canary: using the weft demo running as pid {} (policy in {}); pass --kubeconfig for a cluster",
                demo.pid,
                demo.policy_dir.display()
            );
            (
                Store::Local {
                    dir: demo.policy_dir,
                },
                crate::demo::NAMESPACE,
                demo.proxies,
            )
        }
        (None, None) => (
            Store::Kube {
                client: crate::install::kube_client::client(args.kubeconfig.as_deref()).await?,
            },
            "default",
            Vec::new(),
        ),
    };
    let ns = args.namespace.as_deref().unwrap_or(default_ns);
    match args.command {
        CanaryCommand::Set { service, weights } => {
            change(&store, ns, &service, args.output, |_| Ok(weights)).await
        }
        CanaryCommand::Promote { service, backend } => {
            change(&store, ns, &service, args.output, |route| {
                Ok(weights::promote(&service, route, &backend)?)
            })
            .await
        }
        CanaryCommand::Rollback { service } => {
            change(&store, ns, &service, args.output, |route| {
                Ok(weights::rollback(&service, route)?)
            })
            .await
        }
        CanaryCommand::Status {
            service,
            proxies,
            window,
        } => {
            // The demo's proxies unless others are named.
            let proxies = if proxies.is_empty() {
                demo_proxies
            } else {
                proxies
            };
            status(&store, ns, &service, &proxies, window, args.output).await
        }
    }
}

#[derive(Serialize)]
struct Changed {
    service: String,
    namespace: String,
    written: String,
    weights: Vec<BackendShare>,
}

#[derive(Serialize)]
struct BackendShare {
    backend: String,
    percent: f64,
}

async fn change(
    store: &Store,
    namespace: &str,
    service: &str,
    output: OutputFormat,
    weights_for: impl FnOnce(Option<&weft_api::crd::HttpRoute>) -> anyhow::Result<Vec<Weight>>,
) -> anyhow::Result<()> {
    let loaded = store.load(namespace, service).await?;
    let weights = weights_for(loaded.route.as_ref())?;
    let route = weights::set(
        service,
        namespace,
        loaded.route.as_ref(),
        &weights,
        &weights::Known(&loaded.known),
    )?;
    let written = store.save(&route).await?;
    let changed = Changed {
        service: service.to_owned(),
        namespace: namespace.to_owned(),
        written,
        weights: weights::current(&route)
            .into_iter()
            .map(|(backend, percent)| BackendShare { backend, percent })
            .collect(),
    };
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&changed)?),
        OutputFormat::Table => {
            println!(
                "{service}: {} (written to {})",
                changed
                    .weights
                    .iter()
                    .map(|w| format!("{} {:.0}%", w.backend, w.percent))
                    .collect::<Vec<_>>()
                    .join(", "),
                changed.written
            );
        }
    }
    Ok(())
}

/// What `status` reports of one backend.
#[derive(Serialize, Debug, Default, PartialEq)]
pub struct BackendStatus {
    pub backend: String,
    pub weight_percent: f64,
    /// Requests per second over the window (all proxies).
    pub rps: Option<f64>,
    /// Share of responses that were not 5xx.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

async fn status(
    store: &Store,
    namespace: &str,
    service: &str,
    proxies: &[SocketAddr],
    window: Duration,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let loaded = store.load(namespace, service).await?;
    let shares = loaded
        .route
        .as_ref()
        .map(weights::current)
        .unwrap_or_else(|| vec![(service.to_owned(), 100.0)]);
    let mut rows: Vec<BackendStatus> = shares
        .into_iter()
        .map(|(backend, weight_percent)| BackendStatus {
            backend,
            weight_percent,
            ..BackendStatus::default()
        })
        .collect();
    if !proxies.is_empty() {
        let scraper = Scraper::default();
        let before = scrape_all(&scraper, proxies).await;
        tokio::time::sleep(window).await;
        let after = scrape_all(&scraper, proxies).await;
        if after.is_empty() {
            anyhow::bail!(
                "no proxy answered at {}; pass the admin addresses `weft demo` prints",
                proxies
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        fill(&mut rows, &before, &after, window);
    }
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&rows).context("encode")?),
        OutputFormat::Table => print!("{}", table(service, &rows, std::io::stdout().is_terminal())),
    }
    Ok(())
}

async fn scrape_all(scraper: &Scraper, proxies: &[SocketAddr]) -> Vec<Sample> {
    let mut all = Vec::new();
    for p in proxies {
        if let Some(samples) = scraper.scrape(*p).await {
            all.extend(samples);
        }
    }
    all
}

/// Outbound requests and latency buckets by backend, summed over proxies.
#[derive(Default)]
struct Totals {
    requests: f64,
    errors: f64,
    buckets: BTreeMap<String, f64>,
}

fn totals(samples: &[Sample]) -> BTreeMap<String, Totals> {
    let mut out: BTreeMap<String, Totals> = BTreeMap::new();
    for s in samples {
        if s.label("direction") != "outbound" || s.label("backend").is_empty() {
            continue;
        }
        let t = out.entry(s.label("backend").to_owned()).or_default();
        match s.name.as_str() {
            "weft_requests_total" => {
                t.requests += s.value;
                if s.label("status_code").starts_with('5') {
                    t.errors += s.value;
                }
            }
            "weft_response_latency_seconds_bucket" => {
                *t.buckets.entry(s.label("le").to_owned()).or_default() += s.value;
            }
            _ => {}
        }
    }
    out
}

/// Fills each row's rate, success and latency from two scrapes `window` apart.
fn fill(rows: &mut [BackendStatus], before: &[Sample], after: &[Sample], window: Duration) {
    let (before, after) = (totals(before), totals(after));
    for row in rows {
        let Some(now) = after.get(&row.backend) else {
            continue;
        };
        let empty = Totals::default();
        let then = before.get(&row.backend).unwrap_or(&empty);
        let requests = (now.requests - then.requests).max(0.0);
        let errors = (now.errors - then.errors).max(0.0);
        row.rps = Some(requests / window.as_secs_f64().max(0.001));
        if requests > 0.0 {
            row.success_rate = Some(1.0 - errors / requests);
        }
        let mut buckets: Vec<(f64, f64)> = now
            .buckets
            .iter()
            .filter_map(|(le, count)| {
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                let old = then.buckets.get(&le_key(le)).copied().unwrap_or(0.0);
                Some((le, (count - old).max(0.0)))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        row.p50_ms = quantile(&buckets, 0.5).map(|s| s * 1000.0);
        row.p99_ms = quantile(&buckets, 0.99).map(|s| s * 1000.0);
    }
}

fn le_key(le: f64) -> String {
    if le.is_infinite() {
        "+Inf".into()
    } else {
        le.to_string()
    }
}

fn table(service: &str, rows: &[BackendStatus], colour: bool) -> String {
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or_else(|| "-".to_owned(), f);
    let mut out = format!(
        "{service}\n  {:<24} {:>7} {:>9} {:>9} {:>9} {:>9}\n",
        "BACKEND", "WEIGHT", "RPS", "SUCCESS", "P50", "P99"
    );
    for r in rows {
        let success = opt(r.success_rate, &|s| format!("{:.2}%", s * 100.0));
        let success = match (colour, r.success_rate) {
            (true, Some(s)) if s < 0.99 => format!("\x1b[31m{success:>9}\x1b[0m"),
            (true, Some(_)) => format!("\x1b[32m{success:>9}\x1b[0m"),
            _ => format!("{success:>9}"),
        };
        out.push_str(&format!(
            "  {:<24} {:>6.0}% {:>9} {} {:>9} {:>9}\n",
            r.backend,
            r.weight_percent,
            opt(r.rps, &|v| format!("{v:.1}")),
            success,
            opt(r.p50_ms, &|v| format!("{v:.1}ms")),
            opt(r.p99_ms, &|v| format!("{v:.1}ms")),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::scrape::parse;

    #[test]
    fn status_reports_rate_success_and_latency_per_backend() {
        let at = |v1: u32, v1_err: u32, v2: u32| {
            parse(&format!(
                r#"weft_requests_total{{direction="outbound",status_code="200",backend="checkout-v1",route=""}} {v1}
weft_requests_total{{direction="outbound",status_code="503",backend="checkout-v1",route=""}} {v1_err}
weft_requests_total{{direction="outbound",status_code="200",backend="checkout-v2",route=""}} {v2}
weft_requests_total{{direction="inbound",status_code="200"}} 999
weft_response_latency_seconds_bucket{{direction="outbound",backend="checkout-v1",le="0.001"}} {v1}
weft_response_latency_seconds_bucket{{direction="outbound",backend="checkout-v1",le="0.01"}} {all}
weft_response_latency_seconds_bucket{{direction="outbound",backend="checkout-v1",le="+Inf"}} {all}
"#,
                all = v1 + v1_err
            ))
        };
        let mut rows = vec![
            BackendStatus {
                backend: "checkout-v1".into(),
                weight_percent: 90.0,
                ..BackendStatus::default()
            },
            BackendStatus {
                backend: "checkout-v2".into(),
                weight_percent: 10.0,
                ..BackendStatus::default()
            },
        ];
        fill(
            &mut rows,
            &at(100, 0, 10),
            &at(280, 20, 30),
            Duration::from_secs(2),
        );
        assert_eq!(rows[0].rps, Some(100.0));
        assert_eq!(rows[0].success_rate, Some(0.9));
        let p50 = rows[0].p50_ms.expect("p50");
        assert!(p50 > 0.0 && p50 <= 1.0, "{p50}");
        assert_eq!(rows[1].rps, Some(10.0));
        assert_eq!(rows[1].success_rate, Some(1.0));
        let text = table("checkout", &rows, false);
        assert!(
            text.contains("checkout-v1") && text.contains("90.00%"),
            "{text}"
        );
    }
}
