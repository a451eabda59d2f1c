//! Showing the demo: a table redrawn in place on a terminal, periodic plain
//! lines otherwise, or JSON lines for machines.

use std::fmt::Write as _;
use std::io::Write as _;

use super::stats::{BackendRow, DenialRow, EdgeRow, ServiceRow, Tick};
use super::traces::{Waterfall, WaterfallRow};

/// How output is rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Redrawn in place, with colours.
    Terminal,
    /// One block of plain lines per tick.
    Plain,
    /// One JSON object per line.
    Json,
}

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RED: &str = "\x1b[31m";

/// Writes `text` to stdout, ignoring a closed pipe (the reader went away).
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn fmt_opt(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}{unit}"))
}

fn fmt_rate(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

fn paint(mode: Mode, colour: &str, text: &str) -> String {
    if mode == Mode::Terminal {
        format!("{colour}{text}{RESET}")
    } else {
        text.to_owned()
    }
}

fn rate_colour(v: Option<f64>) -> &'static str {
    match v {
        Some(r) if r >= 0.999 => GREEN,
        Some(r) if r >= 0.95 => YELLOW,
        Some(_) => RED,
        None => DIM,
    }
}

/// Renders one tick as text (for `Terminal` and `Plain`).
pub fn render(tick: &Tick, mode: Mode, header: &str) -> String {
    let mut s = String::new();
    if mode == Mode::Terminal {
        // Home the cursor and clear the screen: the table is redrawn in place.
        s.push_str("\x1b[H\x1b[2J");
    }
    let _ = writeln!(
        s,
        "{} {}",
        paint(mode, BOLD, &format!("weft demo  t={:.0}s", tick.elapsed_s)),
        header
    );
    let _ = writeln!(
        s,
        "
{:<12} {:>4} {:>8} {:>8} {:>9} {:>9} {:>10} {:>8}  IDENTITY",
        "SERVICE", "PODS", "RPS", "SUCCESS", "P50", "P99", "CERT TTL", "RENEWED"
    );
    for row in &tick.services {
        s.push_str(&service_line(row, mode));
    }
    let _ = writeln!(
        s,
        "
{:<12} {:<10} {:>6} {:>6} {:>8} {:>8} {:>9} {:>9} {:>9}  EJECTED",
        "BACKEND", "SERVICE", "WEIGHT", "SHARE", "RPS", "SUCCESS", "P50", "P99", "RETRIES/S"
    );
    for row in &tick.backends {
        s.push_str(&backend_line(row, mode));
    }
    let _ = writeln!(
        s,
        "
{:<12}    {:<10} {:>8} {:>8} {:>7} {:>6}  IDENTITIES (client -> server)",
        "FROM", "TO", "RPS", "SUCCESS", "TOTAL", "MTLS"
    );
    for edge in &tick.edges {
        s.push_str(&edge_line(edge, mode));
    }
    if !tick.denials.is_empty() {
        let _ = writeln!(
            s,
            "\n{:<12}    {:<10} {:>8} {:>7}  {:<9} POLICY",
            "REFUSED", "BY", "RPS", "TOTAL", "DECISION"
        );
        for row in &tick.denials {
            s.push_str(&denial_line(row, mode));
        }
    }
    if let Some(trace) = &tick.slowest_trace {
        s.push_str(&waterfall(trace, mode));
    }
    if !tick.events.is_empty() {
        let _ = writeln!(s, "\ncircuit breaker:");
        for event in &tick.events {
            let colour = if event.contains("ejected") {
                YELLOW
            } else {
                GREEN
            };
            let _ = writeln!(s, "  {}", paint(mode, colour, event));
        }
    }
    if !tick.unreachable.is_empty() {
        let _ = writeln!(
            s,
            "\n{}",
            paint(
                mode,
                YELLOW,
                &format!("not answering: {}", tick.unreachable.join(", "))
            )
        );
    }
    if mode == Mode::Plain {
        s.push('\n');
    }
    s
}

fn service_line(row: &ServiceRow, mode: Mode) -> String {
    let success = fmt_rate(row.success_rate);
    format!(
        "{:<12} {:>4} {:>8.1} {} {:>9} {:>9} {:>10} {:>8}  {}\n",
        row.service,
        row.replicas,
        row.rps,
        paint(
            mode,
            rate_colour(row.success_rate),
            &format!("{success:>8}")
        ),
        fmt_opt(row.p50_ms, 2, "ms"),
        fmt_opt(row.p99_ms, 2, "ms"),
        fmt_opt(row.cert_expires_in_s, 0, "s"),
        row.renewals,
        row.identity,
    )
}

fn backend_line(row: &BackendRow, mode: Mode) -> String {
    let success = fmt_rate(row.success_rate);
    let ejected = if row.ejected.is_empty() {
        paint(mode, DIM, "-")
    } else {
        paint(mode, YELLOW, &row.ejected.join(", "))
    };
    format!(
        "{:<12} {:<10} {:>6} {:>6} {:>8.1} {} {:>9} {:>9} {:>9.1}  {} ({} ejections)\n",
        row.backend,
        row.service,
        row.weight_percent
            .map_or_else(|| "-".to_owned(), |w| format!("{w:.0}%")),
        row.share
            .map_or_else(|| "-".to_owned(), |v| format!("{:.0}%", v * 100.0)),
        row.rps,
        paint(
            mode,
            rate_colour(row.success_rate),
            &format!("{success:>8}")
        ),
        fmt_opt(row.p50_ms, 2, "ms"),
        fmt_opt(row.p99_ms, 2, "ms"),
        row.retries_per_s,
        ejected,
        row.ejections_total,
    )
}

fn edge_line(edge: &EdgeRow, mode: Mode) -> String {
    let mtls = if edge.mtls {
        paint(mode, GREEN, &format!("{:>6}", "yes"))
    } else {
        paint(mode, RED, &format!("{:>6}", "NO"))
    };
    let success = fmt_rate(edge.success_rate);
    format!(
        "{:<12} -> {:<10} {:>8.1} {} {:>7} {}  {} -> {}\n",
        edge.from,
        edge.to,
        edge.rps,
        paint(
            mode,
            rate_colour(edge.success_rate),
            &format!("{success:>8}")
        ),
        edge.total,
        mtls,
        edge.from_identity,
        edge.to_identity,
    )
}

fn denial_line(row: &DenialRow, mode: Mode) -> String {
    let colour = if row.decision == "denied" {
        RED
    } else {
        YELLOW
    };
    format!(
        "{:<12} -> {:<10} {:>8.1} {:>7}  {} {}  {}\n",
        row.from,
        row.to,
        row.per_s,
        row.total,
        paint(mode, colour, &format!("{:<9}", row.decision)),
        row.policy,
        if row.from_identity.is_empty() {
            "no mesh identity"
        } else {
            &row.from_identity
        },
    )
}

/// Width of the waterfall's timeline column, in characters.
const TIMELINE: usize = 32;

/// The slowest trace of the tick: one line per span, indented under its
/// parent, with a bar placing it in the trace's time.
fn waterfall(trace: &Waterfall, mode: Mode) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{}  {}  {}  ({} traces this tick)",
        paint(mode, BOLD, "SLOWEST TRACE"),
        trace.trace_id,
        fmt_opt(Some(trace.duration_ms), 2, "ms"),
        trace.traces_seen
    );
    let _ = writeln!(
        s,
        "{:<22} {:<6} {:<30} {:>9} {:>9} {:<6} {:<TIMELINE$}  IDENTITY",
        "SERVICE", "KIND", "SPAN", "START", "DURATION", "STATUS", "TIMELINE"
    );
    for row in &trace.rows {
        s.push_str(&waterfall_line(row, trace.duration_ms, mode));
    }
    s
}

fn waterfall_line(row: &WaterfallRow, total_ms: f64, mode: Mode) -> String {
    let scale = |ms: f64| {
        if total_ms > 0.0 {
            ((ms / total_ms) * TIMELINE as f64).round() as usize
        } else {
            0
        }
    };
    let lead = scale(row.offset_ms).min(TIMELINE - 1);
    let len = scale(row.duration_ms).clamp(1, TIMELINE - lead);
    let bar = format!(
        "{}{}{}",
        " ".repeat(lead),
        "=".repeat(len),
        " ".repeat(TIMELINE - lead - len)
    );
    let service = format!("{}{}", "  ".repeat(row.depth), row.service);
    let status = match row.status_code {
        Some(code) => code.to_string(),
        None => row.status.to_owned(),
    };
    let colour = if row.status == "error" { RED } else { GREEN };
    format!(
        "{:<22} {:<6} {:<30} {:>9} {:>9} {} {}  {}\n",
        service,
        row.kind,
        row.name,
        fmt_opt(Some(row.offset_ms), 2, "ms"),
        fmt_opt(Some(row.duration_ms), 2, "ms"),
        paint(mode, colour, &format!("{status:<6}")),
        paint(mode, colour, &bar),
        row.identity,
    )
}
