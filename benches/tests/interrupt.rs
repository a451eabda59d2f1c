//! The harness, interrupted mid-run, stops every process it started.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use weft_benches::procs;

/// Alive, and not a zombie waiting to be reaped.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

#[test]
fn sigterm_stops_the_backend_the_systems_and_the_load_generator() {
    let out = tempfile::tempdir().unwrap();
    let mut harness = Command::new(env!("CARGO_BIN_EXE_weft-benches"))
        .args([
            "all",
            "--quick",
            "--systems",
            "direct,haproxy-http",
            "--out",
        ])
        .arg(out.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let harness_pid = harness.id();
    // Wait until HAProxy runs and a load run goes through it.
    let mut stderr = BufReader::new(harness.stderr.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let started = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the harness ended early:\n{seen}"
        );
        seen.push_str(&line);
        if line.contains("haproxy-http") && line.contains("req/s") {
            let started = procs::descendants(harness_pid);
            if started.len() >= 3 {
                break started;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no haproxy-http load run:\n{seen}"
        );
    };
    // backend, two HAProxy processes (the pair), and whatever else ran.
    assert!(started.iter().all(|&pid| running(pid)), "{started:?}");

    kill(Pid::from_raw(harness_pid as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = harness.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the harness did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
    assert_eq!(status.code(), Some(128 + 15), "{seen}{rest}");
    assert!(rest.contains("interrupted (SIGTERM)"), "{rest}");
    // Orphans are reaped by init; wait for that, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    while started.iter().any(|&pid| running(pid)) {
        assert!(
            Instant::now() < deadline,
            "still running after the harness exited: {:?}",
            started.iter().filter(|&&p| running(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
