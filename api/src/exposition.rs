//! The text format a `/metrics` answer is written in, chosen from the
//! request's `Accept` header.
//!
//! Every registry encodes OpenMetrics 1.0 (`prometheus_client`). A client
//! that asks for OpenMetrics (Prometheus does, in its scrape `Accept`) gets
//! that text unchanged. Any other client (curl, `promtool check metrics`,
//! which reads only the Prometheus text format 0.0.4) gets the same samples
//! in the Prometheus text format: a counter's `# HELP`/`# TYPE` name the
//! `_total` samples, and there is no `# EOF` or `# UNIT` line. Sample lines
//! are the same in both formats.
//!
//! [`parse`] reads either format back into samples (the CLI's live views and the
//! tests read `/metrics` with it) and [`select`] picks the samples a selector names.

use std::collections::BTreeMap;

/// The content type of OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `openmetrics` in the format `accept` asks for, and its content type.
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (String, &'static str) {
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (openmetrics, OPENMETRICS)
    } else {
        (prometheus_text(&openmetrics), PROMETHEUS_TEXT)
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4.
pub fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len() + 256);
    let mut lines = openmetrics.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            // The TYPE line follows the HELP line of the same family.
            let name = rest.split(' ').next().unwrap_or_default();
            let counter = lines
                .peek()
                .is_some_and(|next| *next == format!("# TYPE {name} counter"));
            if counter {
                out.push_str("# HELP ");
                out.push_str(name);
                out.push_str("_total");
                out.push_str(&rest[name.len()..]);
                out.push('\n');
                out.push_str("# TYPE ");
                out.push_str(name);
                out.push_str("_total counter\n");
                lines.next();
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

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

/// The samples of `text` that `selector` names: a sample name, optionally with
/// labels in braces (`weft_requests_total{direction="inbound",status_code="200"}`).
/// A sample matches when its name is the selector's and it has every label of
/// the selector with the same value (label order does not matter; labels the
/// selector does not name may have any value). `None` when the selector does
/// not parse.
pub fn select<'t>(samples: &'t [Sample], selector: &str) -> Option<Vec<&'t Sample>> {
    // A selector is a sample line without its value.
    let want = parse_line(&format!("{selector} 0"))?;
    Some(
        samples
            .iter()
            .filter(|s| {
                s.name == want.name
                    && want
                        .labels
                        .iter()
                        .all(|(k, v)| s.labels.get(k).is_some_and(|have| have == v))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const OM: &str = "# HELP weft_requests HTTP requests.\n# TYPE weft_requests counter\nweft_requests_total{a=\"b\"} 3\n# HELP weft_open Open.\n# TYPE weft_open gauge\nweft_open 1\n# EOF\n";

    #[test]
    fn counters_are_named_by_their_samples_without_eof() {
        assert_eq!(
            prometheus_text(OM),
            "# HELP weft_requests_total HTTP requests.\n# TYPE weft_requests_total counter\nweft_requests_total{a=\"b\"} 3\n# HELP weft_open Open.\n# TYPE weft_open gauge\nweft_open 1\n"
        );
    }

    #[test]
    fn openmetrics_only_when_asked() {
        let prom_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            negotiate(Some(prom_accept), OM.into()),
            (OM.into(), OPENMETRICS)
        );
        for accept in [None, Some("*/*"), Some("text/plain")] {
            let (body, kind) = negotiate(accept, OM.into());
            assert_eq!(kind, PROMETHEUS_TEXT);
            assert!(!body.contains("# EOF"), "{body}");
        }
    }

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

    #[test]
    fn a_selector_matches_every_label_it_names_in_any_order() {
        let samples = parse(
            "weft_requests_total{direction=\"inbound\",status_code=\"200\"} 1\n\
             weft_requests_total{direction=\"inbound\",status_code=\"503\"} 2\n\
             weft_requests_total_other{direction=\"inbound\"} 3\n",
        );
        let values = |sel: &str| -> Vec<f64> {
            select(&samples, sel)
                .expect("a selector")
                .iter()
                .map(|s| s.value)
                .collect()
        };
        assert_eq!(values("weft_requests_total"), [1.0, 2.0]);
        assert_eq!(
            values("weft_requests_total{status_code=\"503\",direction=\"inbound\"}"),
            [2.0]
        );
        assert_eq!(values("weft_requests_total{status_code=\"404\"}"), [0.0; 0]);
        assert!(select(&samples, "weft_requests_total{direction=").is_none());
    }
}
