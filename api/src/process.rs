//! The metrics of the process itself, for every `/metrics` endpoint of weft:
//! memory, CPU, threads and file descriptors (read from `/proc/self`, named as
//! Prometheus' client libraries name them) and the tokio tasks alive.
//!
//! Read on every scrape: a leak of memory, descriptors or tasks shows as a
//! series that does not come back down, and the fault suites count them
//! before and after.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Registers [`ProcessCollector`] at the top of `registry` (its names carry
/// no prefix, so register it on an unprefixed registry).
pub fn register(registry: &mut Registry) {
    registry.register_collector(Box::new(ProcessCollector));
}

/// A snapshot of the process, from `/proc/self` (Linux); `None` where the
/// figure cannot be read on this system.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub resident_memory_bytes: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub threads: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

impl Snapshot {
    /// The current figures of this process.
    pub fn now() -> Self {
        let mut snap = Self {
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                // The directory handle itself is one of the entries.
                .map(|dir| (dir.count() as u64).saturating_sub(1)),
            max_fds: nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .ok()
                .map(|(soft, _)| soft),
            ..Self::default()
        };
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            snap.read_stat(&stat, clock_ticks(), page_size(), boot_time());
        }
        snap
    }

    /// Fills the figures of a `/proc/<pid>/stat` line in.
    fn read_stat(&mut self, stat: &str, ticks: Option<f64>, page: Option<u64>, boot: Option<f64>) {
        // The command name (field 2) is in parentheses and may hold spaces:
        // the fields after it start after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return;
        };
        // `rest` starts with field 3 (state): field n is at index n - 3.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        if let (Some(utime), Some(stime), Some(ticks)) = (field(14), field(15), ticks) {
            self.cpu_seconds = Some((utime + stime) as f64 / ticks);
        }
        self.threads = field(20);
        if let (Some(start), Some(ticks), Some(boot)) = (field(22), ticks, boot) {
            self.start_time_seconds = Some(boot + start as f64 / ticks);
        }
        self.virtual_memory_bytes = field(23);
        if let (Some(pages), Some(page)) = (field(24), page) {
            self.resident_memory_bytes = Some(pages * page);
        }
    }
}

fn clock_ticks() -> Option<f64> {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .map(|t| t as f64)
}

fn page_size() -> Option<u64> {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
}

/// The boot time in seconds since the epoch (`btime` of `/proc/stat`).
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

/// The process and tokio-runtime metrics, read on every scrape:
/// `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
/// `process_cpu_seconds_total`, `process_threads`, `process_open_fds`,
/// `process_max_fds`, `process_start_time_seconds`, and
/// `weft_runtime_alive_tasks` and `weft_runtime_workers` when scraped on a
/// tokio runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let snap = Snapshot::now();
        let gauges: [(&str, &str, Option<u64>); 5] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                snap.resident_memory_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                snap.virtual_memory_bytes,
            ),
            ("process_threads", "OS threads of the process", snap.threads),
            ("process_open_fds", "Open file descriptors", snap.open_fds),
            (
                "process_max_fds",
                "The limit of open file descriptors (soft RLIMIT_NOFILE)",
                snap.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        if let Some(cpu) = snap.cpu_seconds {
            let counter = ConstCounter::new(cpu);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                None,
                counter.metric_type(),
            )?)?;
        }
        if let Some(start) = snap.start_time_seconds {
            let gauge = ConstGauge::new(start);
            gauge.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds",
                None,
                gauge.metric_type(),
            )?)?;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let metrics = runtime.metrics();
            let runtime_gauges = [
                (
                    "weft_runtime_alive_tasks",
                    "Tokio tasks alive (spawned and not yet finished) on the runtime that serves /metrics",
                    metrics.num_alive_tasks(),
                ),
                (
                    "weft_runtime_workers",
                    "Worker threads of the runtime that serves /metrics",
                    metrics.num_workers(),
                ),
            ];
            for (name, help, value) in runtime_gauges {
                let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_spaces_in_the_name_is_read() {
        // /proc/<pid>/stat of a process named "weft proxy)": fields 14, 15
        // (250 + 50 ticks), 20 (3 threads), 22 (start 1000 ticks), 23, 24.
        let line = "42 (weft proxy)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 123456789 300 18446744073709551615";
        let mut snap = Snapshot::default();
        snap.read_stat(line, Some(100.0), Some(4096), Some(1_700_000_000.0));
        assert_eq!(snap.cpu_seconds, Some(3.0));
        assert_eq!(snap.threads, Some(3));
        assert_eq!(snap.start_time_seconds, Some(1_700_000_010.0));
        assert_eq!(snap.virtual_memory_bytes, Some(123_456_789));
        assert_eq!(snap.resident_memory_bytes, Some(300 * 4096));
    }

    #[tokio::test]
    async fn every_family_is_exposed_for_this_process() {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for family in [
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_threads ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
            "weft_runtime_alive_tasks ",
            "weft_runtime_workers ",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(family)),
                "{family}missing in\n{text}"
            );
        }
        let rss: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse().ok())
            .expect("a value");
        assert!(
            rss > 1_000_000.0,
            "a test process holds more than 1 MB: {rss}"
        );
    }
}
