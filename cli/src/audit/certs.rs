//! `weft audit certs`: reads the controller's issuance audit trail, verifies its
//! hash chain, and lists identities, serials, validity and refusals. A broken
//! chain (a line edited or deleted) fails the command, naming the line.

use std::path::Path;

use anyhow::Context;
use weft_controller::audit::{self, AuditEventKind, AuditRecord};

use super::report::{Finding, Report, Severity};
use super::table::{Table, Tone};

/// The verified trail as a report.
pub fn report(file: &Path) -> anyhow::Result<Report> {
    let records = audit::verify(file)
        .with_context(|| format!("the audit trail {} failed verification", file.display()))?;
    let issued = records
        .iter()
        .filter(|r| r.event == AuditEventKind::Issued)
        .count();
    let mut report = Report::new(
        "Certificate issuances",
        format!("audit trail {} (hash chain verified)", file.display()),
    );
    report.summary = format!(
        "{} records, {issued} issued, {} refused; hash chain verified",
        records.len(),
        records.len() - issued
    );
    for r in records
        .iter()
        .filter(|r| r.event == AuditEventKind::Refused)
    {
        report.findings.push(Finding {
            severity: Severity::Medium,
            kind: "Refused".into(),
            object: r.identity.clone().unwrap_or_else(|| "-".into()),
            message: format!(
                "record {}: a certificate was refused: {}",
                r.seq,
                r.reason.as_deref().unwrap_or("no reason recorded")
            ),
        });
    }
    report.tables.push(("Records".into(), table(&records)));
    report.json = serde_json::json!({
        "file": file,
        "chain": "verified",
        "records": records,
    });
    Ok(report)
}

fn table(records: &[AuditRecord]) -> Table {
    let mut table = Table::new(&[
        "SEQ",
        "TIME",
        "EVENT",
        "IDENTITY",
        "SERIAL / REASON",
        "NOT BEFORE",
        "NOT AFTER",
    ]);
    for r in records {
        let dash = || "-".to_owned();
        let (event, tone, serial_or_reason) = match r.event {
            AuditEventKind::Issued => ("issued", Tone::Good, r.serial.clone()),
            AuditEventKind::Refused => ("refused", Tone::Bad, r.reason.clone()),
        };
        table.push(
            tone,
            vec![
                r.seq.to_string(),
                r.time.clone(),
                event.to_owned(),
                r.identity.clone().unwrap_or_else(dash),
                serial_or_reason.unwrap_or_else(dash),
                r.not_before.clone().unwrap_or_else(dash),
                r.not_after.clone().unwrap_or_else(dash),
            ],
        );
    }
    table
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is the failure report

    use super::*;
    use crate::audit::table::write_text;

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
    fn the_serial_or_the_reason_lines_up_in_one_column() {
        let records = [
            record(1, AuditEventKind::Issued),
            record(2, AuditEventKind::Refused),
        ];
        let mut plain = Vec::new();
        write_text(&mut plain, &table(&records), false).unwrap();
        let plain = String::from_utf8(plain).unwrap();
        let lines: Vec<&str> = plain.lines().collect();
        assert!(lines[0].starts_with("SEQ  TIME"), "{plain}");
        let column = lines[0].find("SERIAL / REASON").unwrap();
        assert_eq!(&lines[1][column..column + 4], "4abc", "{plain}");
        assert_eq!(&lines[2][column..column + 14], "other-identity", "{plain}");
    }
}
