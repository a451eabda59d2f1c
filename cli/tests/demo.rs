//! `weft demo` as a new user runs it, from the built binary.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// Processes whose environment names `parent` as the demo that started them.
fn children_of(parent: u32) -> Vec<u32> {
    let needle = format!("WEFT_DEMO_PARENT_PID={parent}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|&b| b == 0)
            .any(|var| var == needle.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

fn temp_state(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-demo-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn demo_runs_a_meshed_app_with_mtls_everywhere_renews_and_leaves_nothing() {
    let state = temp_state("run");
    let child = Command::new(WEFT)
        .args([
            "demo",
            "--duration",
            "20s",
            "--output",
            "json",
            "--cert-ttl",
            "5s",
        ])
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weft demo failed: {stderr}");
    let events = lines(&out.stdout);

    let start = events
        .iter()
        .find(|e| e["type"] == "start")
        .expect("a start event");
    let workloads = start["workloads"].as_array().unwrap();
    assert!(workloads.len() >= 4, "{start}");
    let summary = events
        .iter()
        .find(|e| e["type"] == "summary")
        .expect("a summary");

    // Load flowed and everything succeeded.
    let sent = summary["requests"]["sent"].as_u64().unwrap();
    assert!(sent > 100, "too little load: {summary}");
    assert_eq!(summary["requests"]["failed"], 0, "{summary}");
    assert_eq!(summary["success_rate"], 1.0, "{summary}");

    // Every edge is mTLS between the expected identities.
    let id = |sa: &str| format!("spiffe://cluster.local/ns/demo/sa/{sa}");
    let edges = summary["edges"].as_array().unwrap();
    let mut seen: Vec<(String, String)> = Vec::new();
    for e in edges {
        assert_eq!(e["mtls"], true, "edge not mTLS: {e}");
        assert!(e["total"].as_u64().unwrap() > 0, "{e}");
        seen.push((
            e["from_identity"].as_str().unwrap().to_owned(),
            e["to_identity"].as_str().unwrap().to_owned(),
        ));
    }
    seen.sort();
    let mut expected = vec![
        (id("loadgen"), id("web")),
        (id("web"), id("checkout")),
        (id("web"), id("inventory")),
    ];
    expected.sort();
    assert_eq!(seen, expected, "{summary}");

    // With 5 s certificates, renewals happened during the 20 s run.
    let renewals: u64 = summary["renewals"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(renewals >= 1, "no renewal seen: {summary}");

    // Nothing is left running.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !children_of(pid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        children_of(pid),
        Vec::<u32>::new(),
        "demo processes left behind"
    );
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn a_second_demo_on_the_same_state_says_one_is_running() {
    let state = temp_state("twice");
    let mut first = Command::new(WEFT)
        .args(["demo", "--duration", "30s", "--output", "json"])
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first demo holds its lock.
    let lock = state.join("demo.lock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lock_held(&lock) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = Command::new(WEFT)
        .args(["demo", "--duration", "5s"])
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let status = first.wait().unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already running"), "{err}");
    assert!(
        err.contains(&first.id().to_string()),
        "names the running demo: {err}"
    );
    assert!(status.success() || status.code().is_some(), "{status:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !children_of(first.id()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(children_of(first.id()), Vec::<u32>::new());
    let _ = std::fs::remove_dir_all(&state);
}

fn lock_held(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| !s.trim().is_empty())
}
