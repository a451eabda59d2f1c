//! CPU time and memory of the processes under test, read from `/proc`.
//!
//! A system is a set of root processes (both proxies of a pair); each root's
//! descendants (nginx workers) are counted with it.

use std::fs;
use std::sync::OnceLock;

/// CPU and memory of a set of processes at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// utime + stime of every process, in microseconds.
    pub cpu_us: u64,
    /// Sum of VmRSS, in KiB.
    pub rss_kb: u64,
    /// Sum of VmHWM (peak RSS), in KiB.
    pub hwm_kb: u64,
    /// VmRSS of the largest root (with its descendants), in KiB.
    pub largest_rss_kb: u64,
    /// VmHWM of the root (with its descendants) with the highest peak, in KiB.
    pub largest_hwm_kb: u64,
    /// Processes found alive.
    pub processes: usize,
}

/// Samples `roots` and all their descendants.
pub fn sample(roots: &[u32]) -> Sample {
    let all = all_processes();
    let mut total = Sample::default();
    for &root in roots {
        let pids = tree(&all, root);
        let one = sample_pids(&pids);
        total.cpu_us += one.cpu_us;
        total.rss_kb += one.rss_kb;
        total.hwm_kb += one.hwm_kb;
        total.largest_rss_kb = total.largest_rss_kb.max(one.rss_kb);
        total.largest_hwm_kb = total.largest_hwm_kb.max(one.hwm_kb);
        total.processes += one.processes;
    }
    total
}

/// Every process descended from `root` (children, their children...), not
/// `root` itself.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut pids = tree(&all_processes(), root);
    pids.remove(0);
    pids
}

/// `root` and its descendants, `root` first.
fn tree(all: &[(u32, u32)], root: u32) -> Vec<u32> {
    let mut pids = vec![root];
    let mut i = 0;
    while i < pids.len() {
        let parent = pids[i];
        pids.extend(
            all.iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    pids
}

fn sample_pids(pids: &[u32]) -> Sample {
    let mut total = Sample::default();
    for pid in pids {
        let Some(stat) = fs::read_to_string(format!("/proc/{pid}/stat")).ok() else {
            continue;
        };
        let Some(fields) = parse_stat(&stat) else {
            continue;
        };
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        total.cpu_us += (fields.utime + fields.stime) * 1_000_000 / clock_ticks();
        total.rss_kb += status_kb(&status, "VmRSS:");
        total.hwm_kb += status_kb(&status, "VmHWM:");
        total.processes += 1;
    }
    total
}

struct StatFields {
    ppid: u32,
    utime: u64,
    stime: u64,
}

/// Parses `/proc/<pid>/stat`; the command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<StatFields> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    Some(StatFields {
        ppid: fields.get(1)?.parse().ok()?,
        utime: fields.get(11)?.parse().ok()?,
        stime: fields.get(12)?.parse().ok()?,
    })
}

fn status_kb(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn all_processes() -> Vec<(u32, u32)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some((pid, parse_stat(&stat)?.ppid))
    })
    .collect()
}

fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|t| u64::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let stat = "42 (a (b) c) S 7 42 42 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 1 0 5 1000 200";
        let f = parse_stat(stat).expect("parses");
        assert_eq!((f.ppid, f.utime, f.stime), (7, 250, 30));
    }

    #[test]
    fn samples_this_process_and_its_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep runs");
        // Burn a little CPU so utime is visible.
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let me = sample(&[std::process::id()]);
        let _ = child.kill();
        let _ = child.wait();
        assert!(me.processes >= 2, "this process and sleep: {me:?} ({x})");
        assert!(me.rss_kb > 0 && me.hwm_kb >= me.rss_kb / 2, "{me:?}");
        assert_eq!(me.largest_rss_kb, me.rss_kb, "one root: {me:?}");
        assert!(me.cpu_us > 0, "{me:?}");
    }
}
