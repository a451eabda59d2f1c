//! `weft audit certs` as a user runs it: the real binary on a trail written by
//! the controller's audit log.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failed setup panics
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use weft_api::Identity;
use weft_api::certify::{Certified, Refusal, RefusalReason};
use weft_controller::audit::{AuditEvent, AuditLog};
use weft_controller::ca::Issued;

fn write_trail(path: &Path) {
    let log = AuditLog::open(path).unwrap();
    let web = Identity::new("cluster.local", "shop", "web").unwrap();
    let now = SystemTime::now();
    for serial in ["4a01", "4a02"] {
        let issued = Issued {
            identity: web.clone(),
            certified: Certified {
                leaf: vec![1].into(),
                chain: vec![],
                valid_until: now + Duration::from_secs(3600),
            },
            serial: serial.into(),
            not_before: now,
        };
        log.append(
            &AuditEvent::Issued(&issued),
            Some("127.0.0.1:4000".parse().unwrap()),
        )
        .unwrap();
    }
    let refusal = Refusal::new(RefusalReason::OtherIdentity, "asked for payments");
    log.append(
        &AuditEvent::Refused {
            identity: Some(&web),
            refusal: &refusal,
        },
        None,
    )
    .unwrap();
}

fn weft(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn lists_issuances_and_refusals_as_a_table_and_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("audit.log");
    write_trail(&trail);
    let file = trail.to_str().unwrap();

    let (code, stdout, stderr) = weft(&["audit", "certs", "--file", file]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("spiffe://cluster.local/ns/shop/sa/web"),
        "{stdout}"
    );
    assert!(
        stdout.contains("4a01") && stdout.contains("4a02"),
        "{stdout}"
    );
    assert!(stdout.contains("other-identity"), "{stdout}");
    assert!(
        stdout.contains("3 records, 2 issued, 1 refused; hash chain verified"),
        "{stdout}"
    );
    assert!(!stdout.contains('\x1b'), "no colours when not a terminal");

    let (code, stdout, stderr) = weft(&["audit", "certs", "--file", file, "--output", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["chain"], "verified");
    let records = report["records"].as_array().unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["serial"], "4a01");
    assert_eq!(records[0]["peer"], "127.0.0.1:4000");
    assert!(records[0]["not_after"].is_string());
    assert_eq!(records[2]["event"], "refused");
    assert_eq!(records[2]["reason"], "other-identity");
}

#[test]
fn an_edited_or_deleted_line_fails_and_is_named() {
    type Tamper = fn(&mut Vec<String>);
    let cases: [(&str, Tamper, &str); 3] = [
        (
            "edit line 2",
            |l| l[1] = l[1].replace("4a02", "4a99"),
            "line 2",
        ),
        ("delete line 2", |l| drop(l.remove(1)), "line 2"),
        ("delete the last line", |l| drop(l.pop()), "line 3"),
    ];
    for (what, tamper, named) in cases {
        let dir = tempfile::tempdir().unwrap();
        let trail = dir.path().join("audit.log");
        write_trail(&trail);
        let mut lines: Vec<String> = std::fs::read_to_string(&trail)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        tamper(&mut lines);
        std::fs::write(&trail, lines.join("\n") + "\n").unwrap();
        for output in ["table", "json"] {
            let (code, stdout, stderr) = weft(&[
                "audit",
                "certs",
                "--file",
                trail.to_str().unwrap(),
                "--output",
                output,
            ]);
            assert_ne!(code, 0, "{what}: accepted:\n{stdout}");
            assert!(stderr.contains(named), "{what}: {stderr}");
            assert!(
                stdout.is_empty(),
                "{what}: nothing listed from a broken trail"
            );
        }
    }
}

#[test]
fn a_missing_trail_is_an_error_naming_the_file() {
    let (code, _, stderr) = weft(&["audit", "certs", "--file", "/nonexistent/audit.log"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("/nonexistent/audit.log"), "{stderr}");
}
