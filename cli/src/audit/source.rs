//! Where `weft audit identities` and `edges` read the proxies' metrics: their
//! admin servers (`--proxy`, or the running `weft demo`'s), or a Prometheus
//! server that scrapes them (`--prometheus`, instant queries of its HTTP API).
//! Either way the result is [`Sample`]s (the one parser of the metrics text
//! is `demo::scrape`), each tagged with the workload it came from.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::demo::running::RunningDemo;
use crate::demo::scrape::{Sample, Scraper};

/// How long a Prometheus query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug, Clone)]
pub struct SourceArgs {
    /// A proxy's admin address to read `/metrics` from (repeatable). Without
    /// it and without --prometheus: the proxies of the `weft demo` running in
    /// the default state directory.
    #[arg(long = "proxy", value_name = "ADDR")]
    pub proxies: Vec<SocketAddr>,
    /// A Prometheus server scraping the proxies (`http://host:port`, with
    /// its path prefix if it has one): instant queries through its HTTP API.
    /// Workloads are named by the series' `namespace`/`pod` labels, else
    /// `instance`.
    #[arg(long, value_name = "URL", conflicts_with = "proxies")]
    pub prometheus: Option<String>,
}

/// The place metrics are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Proxies(Vec<SocketAddr>),
    Prometheus(String),
}

impl SourceArgs {
    pub fn resolve(&self) -> anyhow::Result<Source> {
        if let Some(url) = &self.prometheus {
            let url = url.trim_end_matches('/');
            anyhow::ensure!(
                url.starts_with("http://"),
                "--prometheus {url}: give an http:// URL (weft audit does not speak HTTPS to Prometheus yet; use a port-forward)"
            );
            return Ok(Source::Prometheus(url.to_owned()));
        }
        if !self.proxies.is_empty() {
            return Ok(Source::Proxies(self.proxies.clone()));
        }
        match RunningDemo::find_default() {
            Some(demo) => {
                eprintln!(
                    "weft audit: reading the {} proxies of the weft demo running as pid {}",
                    demo.proxies.len(),
                    demo.pid
                );
                Ok(Source::Proxies(demo.proxies))
            }
            None => anyhow::bail!(
                "no proxies to read: pass --proxy ADDR (a proxy's admin address, repeatable) or --prometheus URL, or start `weft demo`"
            ),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Proxies(p) => write!(
                f,
                "the admin servers of {} proxies ({})",
                p.len(),
                p.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Self::Prometheus(url) => write!(f, "Prometheus at {url}"),
        }
    }
}

/// A metric to read: its name and a label selector (`direction="inbound"`).
#[derive(Debug, Clone, Copy)]
pub struct Query {
    pub name: &'static str,
    pub selector: &'static str,
    /// A counter: over `window` when one is given (Prometheus only).
    pub counter: bool,
}

/// What was read: the samples, the proxies that answered (admin servers
/// only) and those that did not.
#[derive(Debug, Default)]
pub struct Scraped {
    pub samples: Vec<Sample>,
    pub reached: Vec<SocketAddr>,
    pub unreachable: Vec<SocketAddr>,
}

/// The workload a sample came from: `namespace/pod` where Prometheus labels
/// its series so, else the scraped `instance` (a proxy's admin address).
pub fn workload(sample: &Sample) -> String {
    match (sample.label("namespace"), sample.label("pod")) {
        (_, "") => sample.label("instance").to_owned(),
        ("", pod) => pod.to_owned(),
        (ns, pod) => format!("{ns}/{pod}"),
    }
}

impl Source {
    /// Reads `queries`; counters over `window` (Prometheus: `increase`,
    /// rounded), or as they are (since each proxy started) without one.
    pub async fn read(
        &self,
        queries: &[Query],
        window: Option<Duration>,
    ) -> anyhow::Result<Scraped> {
        match self {
            Self::Proxies(proxies) => Ok(scrape(proxies, queries).await),
            Self::Prometheus(url) => {
                let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
                let mut out = Scraped::default();
                for q in queries {
                    let promql = promql(q, window);
                    let mut samples = query(&client, url, &promql).await?;
                    for s in &mut samples {
                        q.name.clone_into(&mut s.name);
                    }
                    out.samples.extend(samples);
                }
                Ok(out)
            }
        }
    }
}

async fn scrape(proxies: &[SocketAddr], queries: &[Query]) -> Scraped {
    let scraper = Scraper::default();
    let mut out = Scraped::default();
    for &proxy in proxies {
        let Some(samples) = scraper.scrape(proxy).await else {
            tracing::warn!(%proxy, "the proxy's admin server did not answer");
            out.unreachable.push(proxy);
            continue;
        };
        out.reached.push(proxy);
        for mut s in samples {
            if queries
                .iter()
                .any(|q| q.name == s.name && matches(&s, q.selector))
            {
                s.labels.insert("instance".into(), proxy.to_string());
                out.samples.push(s);
            }
        }
    }
    out
}

/// Whether `sample` has the labels of `selector` (`a="x",b="y"`, no escapes).
fn matches(sample: &Sample, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|p| !p.is_empty())
        .all(|pair| match pair.split_once('=') {
            Some((k, v)) => sample.label(k.trim()) == v.trim().trim_matches('"'),
            None => false,
        })
}

fn promql(q: &Query, window: Option<Duration>) -> String {
    let series = format!("{}{{{}}}", q.name, q.selector);
    match window {
        Some(w) if q.counter => format!("round(increase({series}[{}s]))", w.as_secs().max(1)),
        _ => series,
    }
}

async fn query(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    base: &str,
    promql: &str,
) -> anyhow::Result<Vec<Sample>> {
    let uri = format!("{base}/api/v1/query?query={}", percent_encode(promql));
    let uri: http::Uri = uri
        .parse()
        .with_context(|| format!("{base} is not a usable URL"))?;
    let fetch = async {
        let rsp = client
            .get(uri)
            .await
            .with_context(|| format!("cannot reach Prometheus at {base}"))?;
        let status = rsp.status();
        let body = rsp
            .into_body()
            .collect()
            .await
            .context("Prometheus's answer broke off")?
            .to_bytes();
        anyhow::Ok((status, body))
    };
    let (status, body) = tokio::time::timeout(QUERY_TIMEOUT, fetch)
        .await
        .with_context(|| {
            format!("Prometheus at {base} did not answer within {QUERY_TIMEOUT:?}")
        })??;
    let answer: serde_json::Value = serde_json::from_slice(&body).with_context(|| {
        format!("Prometheus at {base} answered {status} with no JSON; is it Prometheus?")
    })?;
    parse_vector(&answer).with_context(|| format!("the query {promql} failed"))
}

/// The samples of an instant-query answer (`resultType` vector).
fn parse_vector(answer: &serde_json::Value) -> anyhow::Result<Vec<Sample>> {
    if answer["status"] != "success" {
        anyhow::bail!(
            "Prometheus answered {}: {}",
            answer["errorType"].as_str().unwrap_or("an error"),
            answer["error"].as_str().unwrap_or("no message")
        );
    }
    let data = &answer["data"];
    anyhow::ensure!(
        data["resultType"] == "vector",
        "Prometheus answered a {} where a vector was expected",
        data["resultType"]
    );
    let mut out = Vec::new();
    for series in data["result"].as_array().into_iter().flatten() {
        let labels = series["metric"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect();
        let Some(value) = series["value"][1].as_str().and_then(|v| v.parse().ok()) else {
            continue;
        };
        out.push(Sample {
            name: series["metric"]["__name__"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is the failure report

    use super::*;

    #[test]
    fn counters_over_a_window_are_rounded_increases() {
        let q = Query {
            name: "weft_requests_total",
            selector: "direction=\"inbound\"",
            counter: true,
        };
        assert_eq!(
            promql(&q, Some(Duration::from_secs(300))),
            "round(increase(weft_requests_total{direction=\"inbound\"}[300s]))"
        );
        assert_eq!(
            promql(&q, None),
            "weft_requests_total{direction=\"inbound\"}"
        );
        assert_eq!(
            percent_encode("a{b=\"c\"}[5s]"),
            "a%7Bb%3D%22c%22%7D%5B5s%5D"
        );
    }

    #[test]
    fn reads_an_instant_vector_and_names_workloads() {
        let answer = serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"__name__": "weft_identity_certificate", "identity": "spiffe://cluster.local/ns/shop/sa/web", "instance": "10.0.0.1:15191", "namespace": "shop", "pod": "web-1"}, "value": [1.0, "1700000000"]},
            {"metric": {"instance": "127.0.0.1:4000"}, "value": [1.0, "3"]},
        ]}});
        let samples = parse_vector(&answer).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].value, 1_700_000_000.0);
        assert_eq!(workload(&samples[0]), "shop/web-1");
        assert_eq!(workload(&samples[1]), "127.0.0.1:4000");
        let error =
            serde_json::json!({"status": "error", "errorType": "bad_data", "error": "parse error"});
        let message = parse_vector(&error).unwrap_err().to_string();
        assert!(message.contains("bad_data: parse error"), "{message}");
    }
}
