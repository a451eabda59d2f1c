//! The demo's trace view: of the spans the demo's own OTLP receiver got in
//! the last interval, the slowest trace, as a waterfall (each span's service,
//! identity, name, start, duration and status, children under their parent).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// What the waterfall needs of one received span.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanView {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub name: String,
    /// `client` or `server`.
    pub kind: &'static str,
    /// The `service.name` of the proxy that made it.
    pub service: String,
    /// The identity of the proxy's workload: the client's for a client span,
    /// the server's for a server span.
    pub identity: String,
    /// The other end's identity.
    pub peer_identity: String,
    /// Unix nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
    pub error: bool,
    /// `http.response.status_code`, when there is one.
    pub status_code: Option<u16>,
}

/// One row of the waterfall.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WaterfallRow {
    /// Nesting depth: 0 for the trace's root (or a span whose parent was not
    /// received).
    pub depth: usize,
    pub service: String,
    pub identity: String,
    pub peer_identity: String,
    pub kind: &'static str,
    pub name: String,
    /// From the trace's first span's start, in milliseconds.
    pub offset_ms: f64,
    pub duration_ms: f64,
    /// `ok` or `error`.
    pub status: &'static str,
    pub status_code: Option<u16>,
}

/// The slowest trace of an interval.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Waterfall {
    pub trace_id: String,
    /// From its first span's start to its last span's end.
    pub duration_ms: f64,
    /// Traces whose spans arrived in the interval (this one included).
    pub traces_seen: usize,
    pub rows: Vec<WaterfallRow>,
}

impl SpanView {
    /// A span of the demo's receiver; `None` for kinds the proxies never make.
    pub fn from_received(span: &weft_api::otlp::ReceivedSpan) -> Option<Self> {
        use weft_api::otlp::{SpanKind, StatusCode};
        let attr = |key: &str| span.attribute(key).unwrap_or("").to_owned();
        let (kind, identity, peer_identity) = match span.kind {
            SpanKind::Client => (
                "client",
                attr("weft.client.identity"),
                attr("weft.server.identity"),
            ),
            SpanKind::Server => (
                "server",
                attr("weft.server.identity"),
                attr("weft.client.identity"),
            ),
            _ => return None,
        };
        Some(Self {
            trace_id: span.trace_id.clone(),
            span_id: span.span_id.clone(),
            parent_span_id: span.parent_span_id.clone(),
            name: span.name.clone(),
            kind,
            service: span.service_name.clone(),
            identity,
            peer_identity,
            start_ns: span.start_unix_ns,
            end_ns: span.end_unix_ns,
            error: span.status == StatusCode::Error,
            status_code: span
                .attribute("http.response.status_code")
                .and_then(|c| c.parse().ok()),
        })
    }
}

/// Spans across ticks: a trace's spans come from several proxies, each
/// exporting on its own schedule, so a tick shows the slowest of the traces
/// first seen the tick before, with whatever of them arrived since.
#[derive(Debug, Default)]
pub struct Window {
    previous: Vec<SpanView>,
}

impl Window {
    /// Adds this tick's spans; returns the slowest trace of those first seen
    /// last tick.
    pub fn tick(&mut self, new: Vec<SpanView>) -> Option<Waterfall> {
        let ready: std::collections::HashSet<String> =
            self.previous.iter().map(|s| s.trace_id.clone()).collect();
        let (late, fresh): (Vec<SpanView>, Vec<SpanView>) =
            new.into_iter().partition(|s| ready.contains(&s.trace_id));
        let mut spans = std::mem::replace(&mut self.previous, fresh);
        spans.extend(late);
        slowest(&spans)
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The trace of `spans` that took longest (first start to last end), as a
/// waterfall; `None` without spans.
pub fn slowest(spans: &[SpanView]) -> Option<Waterfall> {
    let mut traces: BTreeMap<&str, Vec<&SpanView>> = BTreeMap::new();
    for span in spans {
        traces.entry(&span.trace_id).or_default().push(span);
    }
    let traces_seen = traces.len();
    let extent = |spans: &[&SpanView]| {
        let start = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
        let end = spans.iter().map(|s| s.end_ns).max().unwrap_or(0);
        (start, end.saturating_sub(start))
    };
    let (trace_id, members) = traces
        .into_iter()
        .max_by_key(|(id, spans)| (extent(spans).1, std::cmp::Reverse(*id)))?;
    let (start, duration) = extent(&members);
    let ids: HashMap<&str, &SpanView> = members.iter().map(|s| (&*s.span_id, *s)).collect();
    let mut children: HashMap<&str, Vec<&SpanView>> = HashMap::new();
    let mut roots = Vec::new();
    for span in &members {
        match span
            .parent_span_id
            .as_deref()
            .filter(|p| ids.contains_key(p))
        {
            Some(parent) => children.entry(parent).or_default().push(span),
            None => roots.push(*span),
        }
    }
    let by_start =
        |a: &&SpanView, b: &&SpanView| (a.start_ns, &a.span_id).cmp(&(b.start_ns, &b.span_id));
    roots.sort_by(by_start);
    for list in children.values_mut() {
        list.sort_by(by_start);
    }
    let mut rows = Vec::with_capacity(members.len());
    // Depth first, children in start order; the stack holds (span, depth).
    let mut stack: Vec<(&SpanView, usize)> = roots.into_iter().rev().map(|s| (s, 0)).collect();
    while let Some((span, depth)) = stack.pop() {
        rows.push(WaterfallRow {
            depth,
            service: span.service.clone(),
            identity: span.identity.clone(),
            peer_identity: span.peer_identity.clone(),
            kind: span.kind,
            name: span.name.clone(),
            offset_ms: ms(span.start_ns.saturating_sub(start)),
            duration_ms: ms(span.end_ns.saturating_sub(span.start_ns)),
            status: if span.error { "error" } else { "ok" },
            status_code: span.status_code,
        });
        if let Some(list) = children.get(&*span.span_id) {
            stack.extend(list.iter().rev().map(|c| (*c, depth + 1)));
        }
    }
    Some(Waterfall {
        trace_id: trace_id.to_owned(),
        duration_ms: ms(duration),
        traces_seen,
        rows,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is the failure report

    use super::*;

    fn span(trace: &str, id: &str, parent: Option<&str>, start: u64, end: u64) -> SpanView {
        SpanView {
            trace_id: trace.into(),
            span_id: id.into(),
            parent_span_id: parent.map(Into::into),
            name: format!("GET {id}"),
            kind: if id.ends_with('s') {
                "server"
            } else {
                "client"
            },
            service: id.trim_end_matches(['c', 's']).into(),
            identity: format!("spiffe://cluster.local/ns/demo/sa/{id}"),
            peer_identity: String::new(),
            start_ns: start,
            end_ns: end,
            error: false,
            status_code: Some(200),
        }
    }

    #[test]
    fn the_slowest_trace_is_nested_by_parent_in_start_order() {
        let spans = vec![
            // A fast trace.
            span("aa", "xc", None, 0, 1_000_000),
            // The slow one, received out of order, one parent missing.
            span("bb", "webs", Some("loadgenc"), 200_000, 9_000_000),
            span("bb", "inventoryc", Some("webs"), 500_000, 3_000_000),
            span("bb", "checkoutc", Some("webs"), 400_000, 8_000_000),
            span("bb", "loadgenc", None, 100_000, 9_100_000),
            span("bb", "checkouts", Some("checkoutc"), 600_000, 7_000_000),
            span("bb", "orphans", Some("gone"), 700_000, 800_000),
        ];
        let w = slowest(&spans).unwrap();
        assert_eq!(w.trace_id, "bb");
        assert_eq!(w.traces_seen, 2);
        assert!((w.duration_ms - 9.0).abs() < 1e-9, "{w:?}");
        let order: Vec<(usize, &str)> = w.rows.iter().map(|r| (r.depth, &*r.name)).collect();
        assert_eq!(
            order,
            [
                (0, "GET loadgenc"),
                (1, "GET webs"),
                (2, "GET checkoutc"),
                (3, "GET checkouts"),
                (2, "GET inventoryc"),
                (0, "GET orphans"),
            ]
        );
        assert!((w.rows[1].offset_ms - 0.1).abs() < 1e-9);
        assert!((w.rows[1].duration_ms - 8.8).abs() < 1e-9);
        assert_eq!(slowest(&[]), None);
    }

    #[test]
    fn a_trace_is_shown_a_tick_later_with_its_late_spans() {
        let mut window = Window::default();
        assert_eq!(
            window.tick(vec![span("bb", "webs", Some("loadgenc"), 2, 9)]),
            None
        );
        let w = window
            .tick(vec![
                span("bb", "loadgenc", None, 1, 10),
                span("cc", "xc", None, 0, 100),
            ])
            .unwrap();
        assert_eq!(w.trace_id, "bb", "cc waits for its own late spans");
        assert_eq!(w.rows.len(), 2);
        assert_eq!(window.tick(Vec::new()).unwrap().trace_id, "cc");
    }
}
