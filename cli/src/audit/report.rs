//! What every `weft audit` subcommand produces: a [`Report`] (tables,
//! findings, a service graph, and the JSON form), written in the format asked
//! for by [`write`].

use std::io::Write;

use serde::Serialize;

use super::html;
use super::table::{self, Table, Tone};

/// `--output` of `weft audit`: the shared table and JSON, plus a
/// self-contained HTML page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditFormat {
    /// For people: aligned tables, coloured on a terminal unless NO_COLOR.
    #[default]
    Table,
    /// For machines: one JSON document.
    Json,
    /// For a report: one self-contained HTML page (inline CSS and SVG).
    Html,
}

/// How serious a finding is: the controller's scale, for the policy
/// findings and the traffic and certificate ones alike.
pub use weft_controller::discovery::Severity;

pub fn severity_str(s: Severity) -> &'static str {
    match s {
        Severity::High => "high",
        Severity::Medium => "medium",
        Severity::Low => "low",
    }
}

fn severity_tone(s: Severity) -> Tone {
    match s {
        Severity::High => Tone::Bad,
        Severity::Medium => Tone::Warn,
        Severity::Low => Tone::Plain,
    }
}

/// Something a security reviewer should look at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub kind: String,
    /// What it is about: an identity, an edge, a service, a file.
    pub object: String,
    pub message: String,
}

/// A node of the service graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub label: String,
    /// The plaintext (unauthenticated) caller, drawn apart.
    pub plaintext: bool,
}

/// An edge of the service graph: green for mTLS, red dashed for plaintext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub mtls: bool,
    /// The policies that allowed it (or may allow it).
    pub label: String,
    /// Calls refused on this edge.
    pub denied: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

impl Graph {
    /// Adds a node unless one with `id` is there.
    pub fn node(&mut self, id: &str, label: &str, plaintext: bool) {
        if !self.nodes.iter().any(|n| n.id == id) {
            self.nodes.push(Node {
                id: id.to_owned(),
                label: label.to_owned(),
                plaintext,
            });
        }
    }
}

/// One subcommand's result.
#[derive(Debug)]
pub struct Report {
    pub title: String,
    /// Where the data came from (and over what window).
    pub source: String,
    /// The last line of the table output.
    pub summary: String,
    /// Caveats shown with the data (e.g. counters since each proxy started).
    pub notes: Vec<String>,
    pub graph: Option<Graph>,
    pub tables: Vec<(String, Table)>,
    pub findings: Vec<Finding>,
    /// The `--output json` document.
    pub json: serde_json::Value,
}

impl Report {
    pub fn new(title: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            source: source.into(),
            summary: String::new(),
            notes: Vec::new(),
            graph: None,
            tables: Vec::new(),
            findings: Vec::new(),
            json: serde_json::Value::Null,
        }
    }
}

/// Writes `report` in `format`; `colour` applies to the table format.
pub fn write(
    out: &mut impl Write,
    report: &Report,
    format: AuditFormat,
    colour: bool,
) -> std::io::Result<()> {
    match format {
        AuditFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, &report.json)?;
            writeln!(out)
        }
        AuditFormat::Html => out.write_all(html::render(report).as_bytes()),
        AuditFormat::Table => write_text(out, report, colour),
    }
}

fn write_text(out: &mut impl Write, report: &Report, colour: bool) -> std::io::Result<()> {
    let several = report.tables.len() > 1;
    for (i, (title, t)) in report.tables.iter().enumerate() {
        if several {
            if i > 0 {
                writeln!(out)?;
            }
            writeln!(out, "{title}")?;
        }
        table::write_text(out, t, colour)?;
    }
    for note in &report.notes {
        writeln!(out, "note: {note}")?;
    }
    if !report.findings.is_empty() {
        writeln!(out)?;
        let mut findings = Table::new(&["SEVERITY", "FINDING", "OBJECT", "DETAIL"]);
        for f in &report.findings {
            findings.push(
                severity_tone(f.severity),
                vec![
                    severity_str(f.severity).to_owned(),
                    f.kind.clone(),
                    f.object.clone(),
                    f.message.clone(),
                ],
            );
        }
        table::write_text(out, &findings, colour)?;
    }
    if !report.summary.is_empty() {
        writeln!(out, "{}", report.summary)?;
    }
    Ok(())
}
