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

/// Sums each backend's requests per second over `ticks`: (checkout-v1, checkout-v2).
fn checkout_split(ticks: &[&Value]) -> (f64, f64) {
    let mut v1 = 0.0;
    let mut v2 = 0.0;
    for t in ticks {
        for b in t["tick"]["backends"].as_array().unwrap() {
            let rps = b["rps"].as_f64().unwrap();
            match b["backend"].as_str().unwrap() {
                "checkout-v1" => v1 += rps,
                "checkout-v2" => v2 += rps,
                _ => {}
            }
        }
    }
    (v1, v2)
}

fn weight(tick: &Value, backend: &str) -> Option<f64> {
    tick["tick"]["backends"]
        .as_array()?
        .iter()
        .find(|b| b["backend"] == backend)?["weight_percent"]
        .as_f64()
}

/// The whole demo as a user sees it: every edge mTLS, certificates renewed,
/// checkout split 90/10 until `weft canary set` from "a second terminal"
/// (which finds the running demo by itself) moves it to 50/50, inventory's
/// flaky replica ejected while retries keep every request successful, the
/// load generator's stray calls to inventory refused by inventory's
/// AuthorizationPolicy, and nothing left running.
#[test]
fn demo_runs_a_meshed_app_with_mtls_everywhere_renews_and_leaves_nothing() {
    let xdg = temp_state("run");
    let mut child = Command::new(WEFT)
        .args([
            "demo",
            "--duration",
            "20s",
            "--output",
            "json",
            "--cert-ttl",
            "5s",
            "--stray-calls",
            "2",
        ])
        // The default state directory, as `weft canary` looks for it.
        .env("XDG_STATE_HOME", &xdg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let event =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    let mut events: Vec<Value> = Vec::new();
    // Three ticks with checkout traffic at 90/10, then the canary is shifted.
    let mut with_traffic = 0;
    while with_traffic < 3 {
        let event = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the demo went quiet before its first ticks");
        if event["type"] == "tick" && checkout_split(&[&event]).0 > 0.0 {
            with_traffic += 1;
        }
        events.push(event);
    }
    let canary = Command::new(WEFT)
        .args([
            "canary",
            "set",
            "checkout",
            "--weight",
            "checkout-v1=50",
            "--weight",
            "checkout-v2=50",
        ])
        .env("XDG_STATE_HOME", &xdg)
        .output()
        .unwrap();
    let canary_err = String::from_utf8_lossy(&canary.stderr);
    assert!(
        canary.status.success(),
        "weft canary set failed: {canary_err}"
    );
    assert!(
        canary_err.contains("using the weft demo running"),
        "weft canary found the demo by itself: {canary_err}"
    );
    let changed_at = events.len();
    events.extend(rx.iter());
    reader.join().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weft demo failed: {stderr}");

    let start = events
        .iter()
        .find(|e| e["type"] == "start")
        .expect("a start event");
    let workloads = start["workloads"].as_array().unwrap();
    assert_eq!(workloads.len(), 8, "{start}");
    let summary = events
        .iter()
        .find(|e| e["type"] == "summary")
        .expect("a summary");

    // Load flowed and everything succeeded, the flaky replica notwithstanding.
    let sent = summary["requests"]["sent"].as_u64().unwrap();
    assert!(sent > 100, "too little load: {summary}");
    assert_eq!(summary["requests"]["failed"], 0, "{summary}");
    assert_eq!(summary["success_rate"], 1.0, "{summary}");

    // 90/10 before the change; 50/50 once the new weight is in force.
    let ticks: Vec<&Value> = events.iter().filter(|e| e["type"] == "tick").collect();
    let before: Vec<&Value> = events[..changed_at]
        .iter()
        .filter(|e| e["type"] == "tick" && weight(e, "checkout-v2") == Some(10.0))
        .collect();
    assert!(!before.is_empty(), "no tick showed the 90/10 split");
    assert_eq!(weight(before[0], "checkout-v1"), Some(90.0));
    let (v1, v2) = checkout_split(&before);
    assert!(
        v2 / (v1 + v2) < 0.3,
        "checkout-v2 had {v2} of {} rps at 10 %",
        v1 + v2
    );
    // The tick the change lands in is mixed; count those after it.
    let after: Vec<&Value> = events[changed_at..]
        .iter()
        .filter(|e| e["type"] == "tick" && weight(e, "checkout-v2") == Some(50.0))
        .skip(1)
        .collect();
    assert!(after.len() >= 5, "too few ticks at 50/50: {}", after.len());
    let (v1, v2) = checkout_split(&after);
    let share = v2 / (v1 + v2);
    assert!(
        (0.3..=0.7).contains(&share),
        "checkout-v2 had {share:.2} of checkout's requests at 50 %"
    );

    // The flaky inventory replica was ejected, and retries hid its failures.
    let inventory = summary["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == "inventory")
        .unwrap_or_else(|| panic!("no inventory backend row: {summary}"));
    assert!(
        inventory["retries_total"].as_u64().unwrap() > 0,
        "{inventory}"
    );
    assert!(
        inventory["ejections_total"].as_u64().unwrap() >= 1,
        "{inventory}"
    );
    assert!(
        ticks.iter().any(|t| t["tick"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().contains("inventory-2 ejected"))),
        "no tick showed inventory-2's ejection"
    );

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
        // The stray calls: mTLS too, and refused by inventory's policy.
        (id("loadgen"), id("inventory")),
        (id("web"), id("checkout")),
        (id("web"), id("inventory")),
    ];
    expected.sort();
    assert_eq!(seen, expected, "{summary}");

    // Zero trust: inventory refused the stray calls by its policy, and
    // nothing else was refused (checkout and inventory accept web).
    let denials = summary["denials"].as_array().unwrap();
    assert_eq!(denials.len(), 1, "{summary}");
    let stray = &denials[0];
    assert_eq!(stray["from"], "loadgen", "{stray}");
    assert_eq!(stray["to"], "inventory", "{stray}");
    assert_eq!(stray["decision"], "denied", "{stray}");
    assert_eq!(stray["policy"], "default:deny", "{stray}");
    assert!(stray["total"].as_u64().unwrap() >= 10, "{stray}");

    // Traces: the demo's receiver got every hop's spans, and a tick showed
    // a whole request as a waterfall: loadgen's client span, web's server
    // span under it, web's two calls under that, each answered by a server
    // span of checkout and of inventory.
    let whole = ticks.iter().find_map(|t| {
        let rows = t["tick"]["slowest_trace"]["rows"].as_array()?;
        let has = |service: &str, kind: &str, depth: u64| {
            rows.iter().any(|r| {
                r["service"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(service))
                    && r["kind"] == kind
                    && r["depth"] == depth
            })
        };
        (has("loadgen", "client", 0)
            && has("web", "server", 1)
            && has("web", "client", 2)
            && has("checkout-v", "server", 3)
            && has("inventory", "server", 3)
            // Not one with a retried failure of the flaky replica.
            && rows.iter().all(|r| r["status"] == "ok"))
        .then_some(rows)
    });
    let rows = whole.unwrap_or_else(|| {
        panic!(
            "no tick showed a whole trace: {:#?}",
            ticks
                .iter()
                .map(|t| &t["tick"]["slowest_trace"])
                .collect::<Vec<_>>()
        )
    });
    for row in rows {
        let identity = row["identity"].as_str().unwrap();
        let service = row["service"].as_str().unwrap();
        let account = if service.starts_with("checkout") {
            "checkout"
        } else {
            service
        };
        assert_eq!(identity, id(account), "{row}");
    }

    // With 5 s certificates, renewals happened during the 20 s run.
    let renewals: u64 = summary["renewals"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(renewals >= 1, "no renewal seen: {summary}");

    // Nothing is left running, and `weft canary` no longer finds a demo.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !children_of(pid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        children_of(pid),
        Vec::<u32>::new(),
        "demo processes left behind"
    );
    let after_demo = Command::new(WEFT)
        .args(["canary", "status", "checkout"])
        .env("XDG_STATE_HOME", &xdg)
        .env("KUBECONFIG", xdg.join("no-such-kubeconfig"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&after_demo.stderr);
    assert_eq!(after_demo.status.code(), Some(1), "{err}");
    assert!(!err.contains("using the weft demo"), "{err}");
    let _ = std::fs::remove_dir_all(&xdg);
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
    // The second demo fails (exit 1) naming the first; the first, interrupted,
    // stops its processes and exits 0.
    assert_eq!(second.status.code(), Some(1), "{:?}", second.status);
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already running"), "{err}");
    assert!(
        err.contains(&first.id().to_string()),
        "names the running demo: {err}"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "the interrupted demo exits 0: {status:?}"
    );
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
