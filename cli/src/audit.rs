//! `weft audit certs`: reads the controller's issuance audit trail, verifies its
//! hash chain, and lists identities, serials, validity and refusals, as a table
//! (coloured on a terminal unless `NO_COLOR` is set) or as JSON. A broken chain
//! (a line edited or deleted) fails the command, naming the line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use weft_controller::audit::{self, AuditEventKind, AuditRecord};

use crate::output::OutputFormat;

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// List certificate issuances and refusals after verifying the trail.
    Certs {
        /// The audit trail (the controller's --audit-log).
        #[arg(long, default_value = ".weft/audit.log")]
        file: PathBuf,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

pub(crate) fn run(command: &AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Certs { file, output } => {
            let records = audit::verify(file).with_context(|| {
                format!("the audit trail {} failed verification", file.display())
            })?;
            let stdout = std::io::stdout();
            let colour = stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let mut out = stdout.lock();
            match output {
                OutputFormat::Table => write_table(&mut out, &records, colour)?,
                OutputFormat::Json => {
                    let report = serde_json::json!({
                        "file": file,
                        "chain": "verified",
                        "records": records,
                    });
                    serde_json::to_writer_pretty(&mut out, &report)?;
                    writeln!(out)?;
                }
            }
            Ok(())
        }
    }
}

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

fn write_table(out: &mut impl Write, records: &[AuditRecord], colour: bool) -> std::io::Result<()> {
    let header = [
        "SEQ",
        "TIME",
        "EVENT",
        "IDENTITY",
        "SERIAL / REASON",
        "NOT BEFORE",
        "NOT AFTER",
    ];
    let rows: Vec<[String; 7]> = records
        .iter()
        .map(|r| {
            let dash = || "-".to_owned();
            let event = match r.event {
                AuditEventKind::Issued => "issued",
                AuditEventKind::Refused => "refused",
            };
            let serial_or_reason = match r.event {
                AuditEventKind::Issued => r.serial.clone().unwrap_or_else(dash),
                AuditEventKind::Refused => r.reason.clone().unwrap_or_else(dash),
            };
            [
                r.seq.to_string(),
                r.time.clone(),
                event.to_owned(),
                r.identity.clone().unwrap_or_else(dash),
                serial_or_reason,
                r.not_before.clone().unwrap_or_else(dash),
                r.not_after.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let header_line = line(&header.map(str::to_owned));
    if colour {
        writeln!(out, "{DIM}{header_line}{RESET}")?;
    } else {
        writeln!(out, "{header_line}")?;
    }
    for (row, record) in rows.iter().zip(records) {
        let text = line(row);
        match (colour, record.event) {
            (true, AuditEventKind::Issued) => writeln!(out, "{GREEN}{text}{RESET}")?,
            (true, AuditEventKind::Refused) => writeln!(out, "{RED}{text}{RESET}")?,
            (false, _) => writeln!(out, "{text}")?,
        }
    }
    let issued = records
        .iter()
        .filter(|r| r.event == AuditEventKind::Issued)
        .count();
    writeln!(
        out,
        "{} records, {issued} issued, {} refused; hash chain verified",
        records.len(),
        records.len() - issued
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, event: AuditEventKind) -> AuditRecord {
        AuditRecord {
            seq,
            time: "2026-01-01T00:00:00Z".into(),
            event,
            identity: Some("spiffe://cluster.local/ns/shop/sa/web".into()),
            serial: (event == AuditEventKind::Issued).then(|| "4abc".into()),
            not_before: (event == AuditEventKind::Issued).then(|| "2026-01-01T00:00:00Z".into()),
            not_after: (event == AuditEventKind::Issued).then(|| "2026-01-02T00:00:00Z".into()),
            reason: (event == AuditEventKind::Refused).then(|| "other-identity".into()),
            detail: None,
            peer: None,
            prev: audit::GENESIS.into(),
        }
    }

    #[test]
    fn table_aligns_and_colours_only_when_asked() {
        let records = [
            record(1, AuditEventKind::Issued),
            record(2, AuditEventKind::Refused),
        ];
        let mut plain = Vec::new();
        write_table(&mut plain, &records, false).unwrap();
        let plain = String::from_utf8(plain).unwrap();
        assert!(!plain.contains('\x1b'), "{plain}");
        let lines: Vec<&str> = plain.lines().collect();
        assert!(lines[0].starts_with("SEQ  TIME"), "{plain}");
        let column = lines[0].find("SERIAL / REASON").unwrap();
        assert_eq!(&lines[1][column..column + 4], "4abc", "{plain}");
        assert_eq!(&lines[2][column..column + 14], "other-identity", "{plain}");
        assert!(
            lines[3].contains("2 records, 1 issued, 1 refused"),
            "{plain}"
        );

        let mut coloured = Vec::new();
        write_table(&mut coloured, &records, true).unwrap();
        let coloured = String::from_utf8(coloured).unwrap();
        assert!(coloured.contains(&format!("{GREEN}1 ")), "{coloured}");
        assert!(coloured.contains(&format!("{RED}2 ")), "{coloured}");
    }
}
