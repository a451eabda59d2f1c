//! Load generation: an open-loop constant-rate mode that corrects coordinated
//! omission, and a closed-loop maximum-throughput mode.
//!
//! Runs in its own process (`weft-benches load --spec JSON`), so that the harness
//! measures only the systems under test, and prints one [`LoadResult`] as JSON.
//!
//! Constant rate (wrk2-style): connection `i` of `n` sends its `k`-th request at
//! the intended time `start + (i + k·n) / rate`, one request at a time. When the
//! connection is still busy with the previous request at that time (the system
//! is slow), the request is sent as soon as it is free and its latency counts
//! from the *intended* time, so queueing caused by the system is never hidden.
//! When the connection was idle, latency counts from the actual send, so the
//! generator's own timer granularity (about 1 ms in tokio) is not charged to the
//! system. Every run is bounded: requests still unsent [`DRAIN`] after the end
//! count as errors, recorded with the wait they had so far.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::client::{Connection, Protocol};

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Open loop: this many requests per second in total, whatever the latency.
    #[serde(rename = "rate")]
    Rate(u64),
    /// Closed loop: each connection sends its next request as soon as the
    /// previous one is answered.
    #[serde(rename = "max")]
    Max,
}

/// One load run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub mode: Mode,
    pub connections: usize,
    /// Requests in this first part are sent but not recorded.
    pub warmup_ms: u64,
    /// The recorded part.
    pub duration_ms: u64,
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub(crate) fn from_histogram(h: &Histogram<u64>) -> Self {
        let q = |q: f64| h.value_at_quantile(q) as f64;
        Self {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: h.max() as f64,
            mean: h.mean(),
        }
    }

    /// The percentiles in plotting order, with their labels.
    pub fn points(&self) -> [(&'static str, f64); 5] {
        [
            ("p50", self.p50),
            ("p90", self.p90),
            ("p99", self.p99),
            ("p99.9", self.p999),
            ("max", self.max),
        ]
    }
}

/// What one load run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadResult {
    /// Requests answered with 200 in the recorded part.
    pub requests: u64,
    /// Requests answered with 200 over the whole run, warm-up included (the
    /// divisor of CPU per request).
    pub completed: u64,
    /// Failed requests and connections (whole run).
    pub errors: u64,
    /// The first error seen, to tell the operator what went wrong.
    pub first_error: Option<String>,
    /// Length of the recorded part, in seconds.
    pub seconds: f64,
    /// Answered requests per second in the recorded part.
    pub rps: f64,
    pub latency_us: Latency,
}

impl LoadResult {
    fn unsent_error(n: u64) -> String {
        format!(
            "{n} requests not sent before the run's time limit (the system is slower than the rate)"
        )
    }
}

/// Longest a single request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long past the end of the recorded part a constant-rate run may go on
/// sending requests that were due before the end. Requests still unsent then
/// count as errors and are recorded with their wait so far (a lower bound),
/// so a slow system neither stretches the run nor hides its queue.
const DRAIN: Duration = Duration::from_secs(2);
/// Highest latency the histograms record (µs); larger values are clamped.
const HIGHEST_US: u64 = 60_000_000;

struct ConnStats {
    histogram: Histogram<u64>,
    /// Answered in the recorded part.
    answered: u64,
    completed: u64,
    errors: u64,
    first_error: Option<String>,
}

impl ConnStats {
    fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, HIGHEST_US, 3)
                .expect("static histogram bounds are valid"),
            answered: 0,
            completed: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, error: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }

    fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(HIGHEST_US);
        self.histogram.saturating_record(us.clamp(1, HIGHEST_US));
    }
}

/// Runs one load and returns its figures. Bounded by warmup + duration plus at
/// most one request timeout.
pub async fn run(spec: &LoadSpec) -> LoadResult {
    let connections = spec.connections.max(1);
    // Open every connection before the clock starts.
    let mut opened = Vec::with_capacity(connections);
    let mut setup = ConnStats::new();
    for _ in 0..connections {
        match tokio::time::timeout(REQUEST_TIMEOUT, Connection::open(spec.addr, spec.protocol))
            .await
        {
            Ok(Ok(conn)) => opened.push(Some(conn)),
            Ok(Err(error)) => {
                setup.error(error);
                opened.push(None);
            }
            Err(_) => {
                setup.error("connect timed out");
                opened.push(None);
            }
        }
    }

    let start = Instant::now() + Duration::from_millis(20);
    let record_from = start + Duration::from_millis(spec.warmup_ms);
    let end = record_from + Duration::from_millis(spec.duration_ms);
    let mut tasks = Vec::with_capacity(connections);
    for (index, conn) in opened.into_iter().enumerate() {
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            let schedule = Schedule {
                start,
                record_from,
                end,
                index,
                connections,
            };
            drive(conn, &spec, schedule).await
        }));
    }
    let mut total = setup;
    for task in tasks {
        match task.await {
            Ok(stats) => {
                total
                    .histogram
                    .add(&stats.histogram)
                    .expect("histograms share their bounds");
                total.errors += stats.errors;
                total.completed += stats.completed;
                total.answered += stats.answered;
                if total.first_error.is_none() {
                    total.first_error = stats.first_error;
                }
            }
            Err(error) => total.error(format!("load task failed: {error}")),
        }
    }
    let seconds = Duration::from_millis(spec.duration_ms).as_secs_f64();
    let requests = total.answered;
    LoadResult {
        requests,
        completed: total.completed,
        errors: total.errors,
        first_error: total.first_error,
        seconds,
        rps: requests as f64 / seconds,
        latency_us: Latency::from_histogram(&total.histogram),
    }
}

#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    record_from: Instant,
    end: Instant,
    index: usize,
    connections: usize,
}

impl Schedule {
    /// The intended send time of this connection's `k`-th request at `rate`/s.
    fn intended(&self, rate: u64, k: u64) -> Instant {
        let slot = self.index as u64 + k * self.connections as u64;
        self.start + Duration::from_nanos(slot.saturating_mul(1_000_000_000) / rate.max(1))
    }
}

async fn drive(mut conn: Option<Connection>, spec: &LoadSpec, s: Schedule) -> ConnStats {
    let mut stats = ConnStats::new();
    let mut k = 0u64;
    loop {
        let (measure_from, recorded) = match spec.mode {
            Mode::Rate(rate) => {
                let intended = s.intended(rate, k);
                k += 1;
                if intended >= s.end {
                    break;
                }
                let now = Instant::now();
                if now >= s.end + DRAIN {
                    // Give up on the rest of the schedule, charging its wait.
                    let mut unsent = 0;
                    let mut late = intended;
                    while late < s.end {
                        if late >= s.record_from {
                            stats.record(now - late);
                        }
                        unsent += 1;
                        late = s.intended(rate, k);
                        k += 1;
                    }
                    stats.errors += unsent;
                    stats
                        .first_error
                        .get_or_insert_with(|| LoadResult::unsent_error(unsent));
                    break;
                }
                if Instant::now() < intended {
                    tokio::time::sleep_until(intended.into()).await;
                    (Instant::now(), intended >= s.record_from)
                } else {
                    // Still busy at the intended time: the wait is the system's.
                    (intended, intended >= s.record_from)
                }
            }
            Mode::Max => {
                let now = Instant::now();
                if now >= s.end {
                    break;
                }
                if now < s.start {
                    tokio::time::sleep_until(s.start.into()).await;
                }
                let now = Instant::now();
                (now, now >= s.record_from)
            }
        };
        let Some(c) = conn.as_mut() else {
            // Reconnect after a failure, pausing so a dead system is not spun on.
            tokio::time::sleep(Duration::from_millis(10)).await;
            match tokio::time::timeout(REQUEST_TIMEOUT, Connection::open(spec.addr, spec.protocol))
                .await
            {
                Ok(Ok(new)) => conn = Some(new),
                Ok(Err(error)) => stats.error(error),
                Err(_) => stats.error("connect timed out"),
            }
            continue;
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, c.get()).await {
            Ok(Ok(())) => {
                stats.completed += 1;
                if recorded {
                    stats.answered += 1;
                    stats.record(measure_from.elapsed());
                }
            }
            Ok(Err(error)) => {
                stats.error(error);
                conn = None;
            }
            Err(_) => {
                stats.error("request timed out");
                conn = None;
            }
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(connections: usize, index: usize) -> Schedule {
        let start = Instant::now();
        Schedule {
            start,
            record_from: start,
            end: start + Duration::from_secs(1),
            index,
            connections,
        }
    }

    #[test]
    fn connections_interleave_to_the_total_rate() {
        let s0 = schedule(4, 0);
        let s3 = Schedule { index: 3, ..s0 };
        // 1,000/s over 4 connections: each sends every 4 ms, offset by 1 ms.
        assert_eq!(s0.intended(1_000, 1) - s0.start, Duration::from_millis(4));
        assert_eq!(s3.intended(1_000, 0) - s3.start, Duration::from_millis(3));
        assert_eq!(s3.intended(1_000, 2) - s3.start, Duration::from_millis(11));
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut stats = ConnStats::new();
        for us in 1..=1000u64 {
            stats.record(Duration::from_micros(us));
        }
        let l = Latency::from_histogram(&stats.histogram);
        assert!((l.p50 - 500.0).abs() <= 1.0, "{l:?}");
        assert!((l.p99 - 990.0).abs() <= 1.0, "{l:?}");
        assert!((l.max - 1000.0).abs() <= 1.0, "{l:?}");
    }
}
