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
}
