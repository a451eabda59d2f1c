//! `--output html`: one self-contained page for any [`Report`]: inline CSS,
//! an inline SVG service graph (green edges mTLS, red dashed plaintext,
//! labelled by policy, denials marked), the tables and the findings. No
//! script, and a Content-Security-Policy that forbids fetching anything.

use std::f64::consts::PI;
use std::fmt::Write;

use super::report::{Graph, Report, severity_str};
use super::table::{Table, Tone};

const STYLE: &str = "body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px;color:#1b1f24;background:#fff}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:24px 0 8px}\
.source{color:#57606a;margin-bottom:12px}.note{color:#57606a;font-style:italic}\
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left}\
th{background:#f6f8fa}tr.good td:first-child{border-left:4px solid #1a7f37}\
tr.warn{background:#fff8c5}tr.bad{background:#ffebe9}tr.bad td{color:#a40e26}\
.sev-high{color:#fff;background:#cf222e;padding:1px 6px;border-radius:3px}\
.sev-medium{color:#1b1f24;background:#d4a72c;padding:1px 6px;border-radius:3px}\
.sev-low{color:#fff;background:#57606a;padding:1px 6px;border-radius:3px}\
svg{border:1px solid #d0d7de;background:#fbfcfd}.legend{font-size:13px;color:#57606a}";

/// The whole page.
pub fn render(report: &Report) -> String {
    let mut page = String::with_capacity(16 * 1024);
    let title = escape(&report.title);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>weft audit: {title}</title><style>{STYLE}</style></head><body>\n\
         <h1>weft audit: {title}</h1><div class=\"source\">{}</div>\n",
        escape(&report.source)
    );
    for note in &report.notes {
        let _ = writeln!(page, "<p class=\"note\">{}</p>", escape(note));
    }
    if let Some(graph) = report.graph.as_ref().filter(|g| !g.nodes.is_empty()) {
        page.push_str("<h2>Service graph</h2>\n");
        page.push_str(&svg(graph));
        page.push_str(
            "<p class=\"legend\"><span style=\"color:#1a7f37\">&#9472;&#9472; mTLS</span> &nbsp; \
             <span style=\"color:#cf222e\">- - plaintext</span> &nbsp; &#10005; calls denied</p>\n",
        );
    }
    for (name, table) in &report.tables {
        let _ = writeln!(page, "<h2>{}</h2>", escape(name));
        page.push_str(&html_table(table));
    }
    page.push_str("<h2>Findings</h2>\n");
    if report.findings.is_empty() {
        page.push_str("<p>None.</p>\n");
    } else {
        page.push_str(
            "<table><tr><th>Severity</th><th>Finding</th><th>Object</th><th>Detail</th></tr>\n",
        );
        for f in &report.findings {
            let sev = severity_str(f.severity);
            let _ = writeln!(
                page,
                "<tr><td><span class=\"sev-{sev}\">{sev}</span></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&f.kind),
                escape(&f.object),
                escape(&f.message)
            );
        }
        page.push_str("</table>\n");
    }
    let _ = writeln!(page, "<p class=\"source\">{}</p>", escape(&report.summary));
    page.push_str("</body></html>\n");
    page
}

fn html_table(table: &Table) -> String {
    let mut out = String::from("<table><tr>");
    for h in &table.header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>\n");
    for (tone, row) in &table.rows {
        let class = match tone {
            Tone::Plain => "plain",
            Tone::Good => "good",
            Tone::Warn => "warn",
            Tone::Bad => "bad",
        };
        let _ = write!(out, "<tr class=\"{class}\">");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

/// The graph, nodes on a circle, each edge a curve (so that both directions
/// of a pair stay apart) with an arrow and its label at the middle.
fn svg(graph: &Graph) -> String {
    let (w, h) = (960.0_f64, 560.0_f64);
    let (cx, cy) = (w / 2.0, h / 2.0);
    let radius = if graph.nodes.len() == 1 { 0.0 } else { 210.0 };
    let pos = |i: usize| {
        let a = 2.0 * PI * i as f64 / graph.nodes.len() as f64 - PI / 2.0;
        (cx + radius * 1.6 * a.cos(), cy + radius * a.sin())
    };
    let index = |id: &str| graph.nodes.iter().position(|n| n.id == id);
    let half_width = |i: usize| node_width(&graph.nodes[i].label) / 2.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\">\
         <defs>\
         <marker id=\"a-ok\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" orient=\"auto\"><path d=\"M0,0L10,5L0,10z\" fill=\"#1a7f37\"/></marker>\
         <marker id=\"a-bad\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" orient=\"auto\"><path d=\"M0,0L10,5L0,10z\" fill=\"#cf222e\"/></marker>\
         </defs>"
    );
    for e in &graph.edges {
        let (Some(a), Some(b)) = (index(&e.from), index(&e.to)) else {
            continue;
        };
        let (colour, dash, marker) = if e.mtls {
            ("#1a7f37", "", "a-ok")
        } else {
            ("#cf222e", " stroke-dasharray=\"8 5\"", "a-bad")
        };
        let (x1, y1) = pos(a);
        let (x2, y2) = pos(b);
        let (path, lx, ly) = if a == b {
            // A workload calling itself: a loop above its node.
            (
                format!(
                    "M{:.1},{:.1} C{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}",
                    x1 - 20.0,
                    y1 - 16.0,
                    x1 - 60.0,
                    y1 - 90.0,
                    x1 + 60.0,
                    y1 - 90.0,
                    x1 + 20.0,
                    y1 - 16.0
                ),
                x1,
                y1 - 80.0,
            )
        } else {
            let (dx, dy) = (x2 - x1, y2 - y1);
            let len = dx.hypot(dy).max(1.0);
            // Stop short of the node boxes, bend to the right of the direction.
            let (ux, uy) = (dx / len, dy / len);
            let (s, e) = (
                to_border(half_width(a), ux, uy),
                to_border(half_width(b), ux, uy),
            );
            let (sx, sy) = (x1 + ux * s, y1 + uy * s);
            let (ex, ey) = (x2 - ux * e, y2 - uy * e);
            let (qx, qy) = ((sx + ex) / 2.0 - uy * 40.0, (sy + ey) / 2.0 + ux * 40.0);
            (
                format!("M{sx:.1},{sy:.1} Q{qx:.1},{qy:.1} {ex:.1},{ey:.1}"),
                0.25 * sx + 0.5 * qx + 0.25 * ex,
                0.25 * sy + 0.5 * qy + 0.25 * ey,
            )
        };
        let _ = writeln!(
            out,
            "<path d=\"{path}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2.5\"{dash} marker-end=\"url(#{marker})\"/>"
        );
        let mut label = escape(&e.label);
        if e.denied > 0 {
            let _ = write!(label, " &#10005; {} denied", e.denied);
        }
        let _ = writeln!(
            out,
            "<text x=\"{lx:.1}\" y=\"{ly:.1}\" font-size=\"12\" text-anchor=\"middle\" fill=\"{}\">{label}</text>",
            if e.denied > 0 { "#a40e26" } else { "#1b1f24" }
        );
    }
    for (i, n) in graph.nodes.iter().enumerate() {
        let (x, y) = pos(i);
        let label = escape(&n.label);
        let width = node_width(&n.label);
        let (fill, stroke) = if n.plaintext {
            ("#ffebe9", "#cf222e")
        } else {
            ("#ddf4ff", "#0969da")
        };
        let _ = writeln!(
            out,
            "<g><title>{}</title><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{width:.1}\" height=\"30\" rx=\"8\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"2\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"13\" text-anchor=\"middle\">{label}</text></g>",
            escape(&n.id),
            x - width / 2.0,
            y - 15.0,
            y + 5.0
        );
    }
    out.push_str("</svg>\n");
    out
}

fn node_width(label: &str) -> f64 {
    (label.chars().count() as f64 * 7.5 + 24.0).max(60.0)
}

/// How far from a node's centre, along (ux, uy), its box ends (plus a gap
/// for the arrow head).
fn to_border(half_width: f64, ux: f64, uy: f64) -> f64 {
    let across = if ux.abs() > 1e-6 {
        half_width / ux.abs()
    } else {
        f64::MAX
    };
    let down = if uy.abs() > 1e-6 {
        15.0 / uy.abs()
    } else {
        f64::MAX
    };
    across.min(down) + 4.0
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::report::{Edge, Finding, Severity};

    #[test]
    fn a_page_with_no_fetch_no_script_and_escaped_text() {
        let mut report = Report::new("Who called whom", "proxies <a>");
        let mut graph = Graph::default();
        graph.node("plain", "plaintext", true);
        graph.node("spiffe://x/ns/a/sa/b", "a/b", false);
        graph.edges.push(Edge {
            from: "plain".into(),
            to: "spiffe://x/ns/a/sa/b".into(),
            mtls: false,
            label: "default:allow-all".into(),
            denied: 2,
        });
        report.graph = Some(graph);
        report.findings.push(Finding {
            severity: Severity::High,
            kind: "Plaintext".into(),
            object: "x".into(),
            message: "m".into(),
        });
        let page = render(&report);
        assert!(page.contains("proxies &lt;a&gt;"), "{page}");
        assert!(page.contains("stroke-dasharray"), "{page}");
        assert!(page.contains("&#10005; 2 denied"), "{page}");
        assert!(page.contains("sev-high"), "{page}");
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("src="), "{page}");
        assert!(!page.contains("href="), "{page}");
    }
}
