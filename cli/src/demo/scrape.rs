//! Reading a proxy's `/metrics`: fetch it and parse the OpenMetrics text into
//! samples the live view can add up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Parses the OpenMetrics (or Prometheus) text exposition, skipping comments.
/// Lines that do not parse are skipped too: a scrape is best effort.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = find_label_end(line, open)?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let space = line.find(' ')?;
            (&line[..space], BTreeMap::new(), &line[space..])
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The index of the `}` closing the label set that opens at `open`, skipping
/// braces inside quoted values.
fn find_label_end(line: &str, open: usize) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in line[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(open + i),
            _ => {}
        }
    }
    None
}

fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_owned();
        let after = rest[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key, value);
        rest = after[end + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    Some(labels)
}

/// Fetches metrics over HTTP/1.1 with keep-alive.
#[derive(Clone, Debug)]
pub struct Scraper {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Scraper {
    fn default() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Scraper {
    /// The samples of the proxy whose admin server is at `admin`, or `None`
    /// when it does not answer within a second.
    pub async fn scrape(&self, admin: SocketAddr) -> Option<Vec<Sample>> {
        let uri = format!("http://{admin}/metrics").parse().ok()?;
        let fetch = async {
            let rsp = self.client.get(uri).await.ok()?;
            let body = rsp.into_body().collect().await.ok()?.to_bytes();
            Some(parse(std::str::from_utf8(&body).ok()?))
        };
        tokio::time::timeout(Duration::from_secs(1), fetch)
            .await
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openmetrics_lines() {
        let text = r#"# HELP weft_requests HTTP requests
# TYPE weft_requests counter
weft_requests_total{direction="inbound",status_code="200",tls="true",peer_identity="spiffe://cluster.local/ns/demo/sa/web"} 42
weft_response_latency_seconds_bucket{direction="inbound",le="+Inf"} 7
weft_plain 3.5
weft_odd{v="a \"quoted\" } brace"} 1
# EOF
"#;
        let samples = parse(text);
        assert_eq!(samples.len(), 4);
        assert_eq!(samples[0].name, "weft_requests_total");
        assert_eq!(
            samples[0].label("peer_identity"),
            "spiffe://cluster.local/ns/demo/sa/web"
        );
        assert_eq!(samples[0].value, 42.0);
        assert_eq!(samples[1].label("le"), "+Inf");
        assert_eq!(samples[2].value, 3.5);
        assert_eq!(samples[3].label("v"), "a \"quoted\" } brace");
    }
}
