//! `weft audit identities`: every workload identity in use, the workloads
//! (pods, or proxies by admin address) holding it, and the certificate each
//! serves with: serial, expiry, when it was last renewed. Read from the
//! proxies' `weft_identity_certificate{identity,serial}` (value: expiry) and
//! `weft_identity_certificate_renewed_timestamp_seconds` gauges.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::report::{Finding, Report, Severity};
use super::source::{self, Query, Scraped, Source};
use super::table::{Table, Tone};

pub const CERTIFICATE: &str = "weft_identity_certificate";
const RENEWED: &str = "weft_identity_certificate_renewed_timestamp_seconds";

/// The proxies renew at 70 % of a certificate's lifetime (with jitter); one
/// still in use past this share of it was not renewed when it should have been.
const OVERDUE_AT: f64 = 0.8;

const QUERIES: [Query; 2] = [
    Query {
        name: CERTIFICATE,
        selector: "",
        counter: false,
    },
    Query {
        name: RENEWED,
        selector: "",
        counter: false,
    },
];

/// One identity and who holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdentityEntry {
    pub identity: String,
    pub workloads: Vec<Holder>,
}

/// One workload's certificate for an identity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Holder {
    pub workload: String,
    pub serial: String,
    /// RFC 3339, UTC.
    pub not_after: String,
    pub not_after_unix: u64,
    /// When the proxy installed the certificate (RFC 3339, UTC), if known.
    pub renewed_at: Option<String>,
    pub renewed_at_unix: Option<u64>,
    /// Negative once expired.
    pub expires_in_seconds: i64,
    /// `ok`, `renewal-overdue` or `expired`.
    pub state: &'static str,
}

pub async fn report(source: &Source) -> anyhow::Result<Report> {
    let scraped = source.read(&QUERIES, None).await?;
    Ok(build(source, &scraped, SystemTime::now()))
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

fn unix(value: f64) -> u64 {
    // Gauges of Unix seconds: whole, non-negative numbers.
    value.max(0.0).round() as u64
}

/// The identities in `scraped`, by identity then workload.
pub fn entries(scraped: &Scraped, now: SystemTime) -> Vec<IdentityEntry> {
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let renewed: BTreeMap<(String, String, String), u64> = scraped
        .samples
        .iter()
        .filter(|s| s.name == RENEWED)
        .map(|s| {
            (
                (
                    source::workload(s),
                    s.label("identity").to_owned(),
                    s.label("serial").to_owned(),
                ),
                unix(s.value),
            )
        })
        .collect();
    let mut by_identity: BTreeMap<String, Vec<Holder>> = BTreeMap::new();
    for s in scraped.samples.iter().filter(|s| s.name == CERTIFICATE) {
        let workload = source::workload(s);
        let identity = s.label("identity").to_owned();
        let serial = s.label("serial").to_owned();
        let not_after = unix(s.value);
        let renewed_at = renewed
            .get(&(workload.clone(), identity.clone(), serial.clone()))
            .copied();
        let expires_in =
            i64::try_from(not_after).unwrap_or(i64::MAX) - i64::try_from(now).unwrap_or(i64::MAX);
        let state = if not_after <= now {
            "expired"
        } else if renewed_at.is_some_and(|r| {
            r < not_after && (now - r.min(now)) as f64 > OVERDUE_AT * (not_after - r) as f64
        }) {
            "renewal-overdue"
        } else {
            "ok"
        };
        by_identity.entry(identity).or_default().push(Holder {
            workload,
            serial,
            not_after: rfc3339(not_after),
            not_after_unix: not_after,
            renewed_at: renewed_at.map(rfc3339),
            renewed_at_unix: renewed_at,
            expires_in_seconds: expires_in,
            state,
        });
    }
    by_identity
        .into_iter()
        .map(|(identity, mut workloads)| {
            workloads.sort_by(|a, b| a.workload.cmp(&b.workload));
            IdentityEntry {
                identity,
                workloads,
            }
        })
        .collect()
}

/// The findings every source can have: proxies that did not answer, or
/// answered without a certificate.
pub fn reach_findings(scraped: &Scraped) -> Vec<Finding> {
    let mut findings: Vec<Finding> = scraped
        .unreachable
        .iter()
        .map(|p| Finding {
            severity: Severity::Medium,
            kind: "Unreachable".into(),
            object: p.to_string(),
            message: "the proxy's admin server did not answer within a second; its traffic and certificate are not in this report".into(),
        })
        .collect();
    for p in &scraped.reached {
        let instance = p.to_string();
        if !scraped
            .samples
            .iter()
            .any(|s| s.name == CERTIFICATE && s.label("instance") == instance)
        {
            findings.push(Finding {
                severity: Severity::Medium,
                kind: "NoCertificate".into(),
                object: instance,
                message: "the proxy reports no workload certificate (not ready, or older than weft_identity_certificate)".into(),
            });
        }
    }
    findings
}

fn build(source: &Source, scraped: &Scraped, now: SystemTime) -> Report {
    let entries = entries(scraped, now);
    let mut report = Report::new("Workload identities", source.to_string());
    let mut table = Table::new(&[
        "IDENTITY",
        "WORKLOAD",
        "SERIAL",
        "NOT AFTER",
        "RENEWED",
        "EXPIRES IN",
    ]);
    let mut findings = Vec::new();
    for e in &entries {
        for h in &e.workloads {
            let tone = match h.state {
                "expired" => Tone::Bad,
                "renewal-overdue" => Tone::Warn,
                _ => Tone::Good,
            };
            table.push(
                tone,
                vec![
                    e.identity.clone(),
                    h.workload.clone(),
                    h.serial.clone(),
                    h.not_after.clone(),
                    h.renewed_at.clone().unwrap_or_else(|| "-".into()),
                    expires_in(h.expires_in_seconds),
                ],
            );
            match h.state {
                "expired" => findings.push(Finding {
                    severity: Severity::High,
                    kind: "Expired".into(),
                    object: format!("{} ({})", e.identity, h.workload),
                    message: format!(
                        "the certificate {} expired at {}; its peers refuse it",
                        h.serial, h.not_after
                    ),
                }),
                "renewal-overdue" => findings.push(Finding {
                    severity: Severity::Medium,
                    kind: "RenewalOverdue".into(),
                    object: format!("{} ({})", e.identity, h.workload),
                    message: format!(
                        "the certificate {} is past 80 % of its lifetime and was not renewed; check the proxy can reach the controller",
                        h.serial
                    ),
                }),
                _ => {}
            }
        }
    }
    findings.extend(reach_findings(scraped));
    let holders: usize = entries.iter().map(|e| e.workloads.len()).sum();
    report.summary = format!("{} identities held by {holders} workloads", entries.len());
    report.tables.push(("Identities".into(), table));
    report.json = serde_json::json!({
        "source": source.to_string(),
        "identities": entries,
        "unreachable": scraped.unreachable,
        "findings": findings,
    });
    report.findings = findings;
    report
}

fn expires_in(seconds: i64) -> String {
    if seconds <= 0 {
        return "expired".into();
    }
    let s = seconds.unsigned_abs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is the failure report

    use super::*;
    use crate::demo::scrape::Sample;

    fn sample(name: &str, instance: &str, serial: &str, value: f64) -> Sample {
        Sample {
            name: name.into(),
            labels: [
                ("identity", "spiffe://cluster.local/ns/shop/sa/web"),
                ("serial", serial),
                ("instance", instance),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            value,
        }
    }

    #[test]
    fn groups_holders_by_identity_and_flags_expired_and_overdue_certificates() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        let scraped = Scraped {
            samples: vec![
                sample(CERTIFICATE, "a:1", "01", 20_000.0),
                sample(RENEWED, "a:1", "01", 9_000.0),
                sample(CERTIFICATE, "b:1", "02", 10_500.0),
                sample(RENEWED, "b:1", "02", 500.0),
                sample(CERTIFICATE, "c:1", "03", 9_999.0),
            ],
            ..Scraped::default()
        };
        let report = build(&Source::Proxies(Vec::new()), &scraped, now);
        let e = &report.json["identities"][0];
        assert_eq!(e["workloads"].as_array().unwrap().len(), 3, "{e}");
        assert_eq!(e["workloads"][0]["state"], "ok");
        assert_eq!(e["workloads"][0]["renewed_at"], "1970-01-01T02:30:00Z");
        assert_eq!(e["workloads"][1]["state"], "renewal-overdue");
        assert_eq!(e["workloads"][2]["state"], "expired");
        let kinds: Vec<&str> = report.findings.iter().map(|f| f.kind.as_str()).collect();
        assert_eq!(kinds, ["RenewalOverdue", "Expired"]);
        assert_eq!(report.summary, "1 identities held by 3 workloads");
    }
}
