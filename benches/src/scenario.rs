//! The scenarios every system runs: protocol x connections x pace, and the
//! open-loop rates, derived from the run's own closed-loop maxima.

use serde::{Deserialize, Serialize};

use crate::client::Protocol;
use crate::load::Mode;
use crate::systems::SystemKind;

/// How a scenario's requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pace {
    /// Open loop at [`LOW_SHARE`] of the weakest system's closed-loop maximum.
    Low,
    /// Open loop at [`HIGH_SHARE`] of it.
    High,
    /// Closed loop: each connection sends its next request when the previous
    /// one is answered (maximum throughput).
    Max,
}

/// The open-loop rates as shares of the weakest system's maximum: below
/// saturation for every system, so that latency measures the systems and not
/// a queue.
pub const LOW_SHARE: f64 = 0.10;
pub const HIGH_SHARE: f64 = 0.50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    pub protocol: Protocol,
    pub connections: usize,
    pub pace: Pace,
}

impl Scenario {
    /// A stable identifier, for example `http1-c16-low`.
    pub fn id(&self) -> String {
        let proto = match self.protocol {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        };
        let pace = match self.pace {
            Pace::Low => "low",
            Pace::High => "high",
            Pace::Max => "max",
        };
        format!("{proto}-c{}-{pace}", self.connections)
    }

    /// A title for people, for example `HTTP/1.1, 16 connections, 1400 req/s
    /// (open loop, 10 % of the weakest maximum)`.
    pub fn title(&self, rates: &Rates) -> String {
        let pace = match (self.pace, rates.rate(self)) {
            (Pace::Max, _) => "maximum throughput (closed loop)".to_string(),
            (pace, Some(r)) => format!(
                "{r} req/s (open loop, {:.0} % of the weakest maximum)",
                100.0
                    * if pace == Pace::Low {
                        LOW_SHARE
                    } else {
                        HIGH_SHARE
                    }
            ),
            (_, None) => "open loop, no rate derived".to_string(),
        };
        format!(
            "{}, {} connections, {pace}",
            self.protocol.label(),
            self.connections
        )
    }

    pub fn is_open_loop(&self) -> bool {
        self.pace != Pace::Max
    }

    /// The closed-loop scenario whose maximum sets this one's rate.
    pub fn max_of(&self) -> Scenario {
        Scenario {
            pace: Pace::Max,
            ..*self
        }
    }
}

/// The rate of one protocol and connection count, from the weakest system.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DerivedRate {
    pub protocol: Protocol,
    pub connections: usize,
    /// The system with the lowest median maximum among weft and the peers
    /// (weft's variants, then `direct`, only when none of them ran).
    pub weakest: SystemKind,
    /// Its median closed-loop maximum, requests per second.
    pub weakest_max_rps: f64,
    /// The scenario that maximum was measured in.
    pub from: String,
    pub low: u64,
    pub high: u64,
}

/// The open-loop rates of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rates {
    pub derived: Vec<DerivedRate>,
}

impl Rates {
    /// Rates from the closed-loop maxima: `maxima` gives, for each system
    /// and closed-loop scenario, the median requests per second. The rate of
    /// (protocol, connections) comes from the weakest proxy's maximum in the
    /// same scenario, or else in any closed-loop scenario of the protocol.
    /// Only weft and the peers count (weft-policy and the traced pairs measure
    /// a cost beside weft), and `direct` only when no proxy ran.
    pub fn derive(scenarios: &[Scenario], maxima: &[(SystemKind, Scenario, f64)]) -> Rates {
        // The compared systems (weft and the peers); weft's variants (policy,
        // tracing) measure a cost beside weft and set no rate; `direct` only
        // when nothing else ran.
        let compared = |k: &SystemKind| *k == SystemKind::Weft || k.is_peer();
        let tier = if maxima.iter().any(|(k, _, _)| compared(k)) {
            2
        } else if maxima.iter().any(|(k, _, _)| *k != SystemKind::Direct) {
            1
        } else {
            0
        };
        let counted = |k: &SystemKind| match tier {
            2 => compared(k),
            1 => *k != SystemKind::Direct,
            _ => true,
        };
        let mut derived = Vec::new();
        for s in scenarios.iter().filter(|s| s.is_open_loop()) {
            if derived
                .iter()
                .any(|d: &DerivedRate| d.protocol == s.protocol && d.connections == s.connections)
            {
                continue;
            }
            let weakest = |same: &dyn Fn(&Scenario) -> bool| {
                maxima
                    .iter()
                    .filter(|(k, sc, rps)| counted(k) && same(sc) && *rps > 0.0)
                    .min_by(|a, b| a.2.total_cmp(&b.2))
                    .cloned()
            };
            let found = weakest(&|sc| *sc == s.max_of())
                .or_else(|| weakest(&|sc| sc.protocol == s.protocol));
            if let Some((kind, from, rps)) = found {
                derived.push(DerivedRate {
                    protocol: s.protocol,
                    connections: s.connections,
                    weakest: kind,
                    weakest_max_rps: rps,
                    from: from.id(),
                    low: round_rate(rps * LOW_SHARE),
                    high: round_rate(rps * HIGH_SHARE),
                });
            }
        }
        Rates { derived }
    }

    /// The load generator's mode for `s`; `None` for an open-loop scenario
    /// whose rate could not be derived (no system had a maximum): it is not
    /// run, rather than run at a made-up rate.
    pub fn mode(&self, s: &Scenario) -> Option<Mode> {
        if s.pace == Pace::Max {
            return Some(Mode::Max);
        }
        let d = self
            .derived
            .iter()
            .find(|d| d.protocol == s.protocol && d.connections == s.connections)?;
        Some(Mode::Rate(if s.pace == Pace::Low { d.low } else { d.high }))
    }

    pub fn rate(&self, s: &Scenario) -> Option<u64> {
        match self.mode(s)? {
            Mode::Rate(r) => Some(r),
            Mode::Max => None,
        }
    }
}

/// Two significant figures, at least 10 req/s.
fn round_rate(r: f64) -> u64 {
    if !r.is_finite() || r < 10.0 {
        return 10;
    }
    let magnitude = 10f64.powi(r.log10().floor() as i32 - 1);
    ((r / magnitude).round() * magnitude) as u64
}

/// The full set: HTTP/1.1 and HTTP/2, 16 and 256 connections, the two
/// open-loop rates and maximum throughput.
pub fn full() -> Vec<Scenario> {
    let mut all = Vec::new();
    for protocol in [Protocol::Http1, Protocol::Http2] {
        for connections in [16, 256] {
            for pace in [Pace::Low, Pace::High, Pace::Max] {
                all.push(Scenario {
                    protocol,
                    connections,
                    pace,
                });
            }
        }
    }
    all
}

/// The quick set: one of each kind, enough to prove every part works.
pub fn quick() -> Vec<Scenario> {
    let s = |protocol, connections, pace| Scenario {
        protocol,
        connections,
        pace,
    };
    vec![
        s(Protocol::Http1, 16, Pace::Low),
        s(Protocol::Http1, 16, Pace::High),
        s(Protocol::Http1, 256, Pace::Max),
        s(Protocol::Http2, 16, Pace::Low),
        s(Protocol::Http2, 256, Pace::Max),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_set_covers_every_combination_once() {
        let all = full();
        assert_eq!(all.len(), 12);
        let mut ids: Vec<String> = all.iter().map(Scenario::id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 12);
        assert!(ids.contains(&"http2-c256-high".to_string()));
        assert!(quick().iter().all(|q| all.contains(q)));
    }

    #[test]
    fn rates_come_from_the_weakest_proxy_in_the_same_scenario() {
        let all = full();
        let max = |protocol, connections| Scenario {
            protocol,
            connections,
            pace: Pace::Max,
        };
        let maxima = vec![
            (SystemKind::Direct, max(Protocol::Http1, 16), 900.0),
            (SystemKind::Weft, max(Protocol::Http1, 16), 14_000.0),
            (SystemKind::Nginx, max(Protocol::Http1, 16), 12_345.0),
            (SystemKind::Weft, max(Protocol::Http2, 256), 30_000.0),
            (SystemKind::WeftTrace100, max(Protocol::Http1, 16), 5_000.0),
        ];
        let rates = Rates::derive(&all, &maxima);
        let low = Scenario {
            protocol: Protocol::Http1,
            connections: 16,
            pace: Pace::Low,
        };
        // direct is no proxy and weft-trace-100 a variant: nginx is the weakest.
        assert_eq!(rates.mode(&low), Some(Mode::Rate(1_200)));
        assert_eq!(
            rates.mode(&Scenario {
                pace: Pace::High,
                ..low
            }),
            Some(Mode::Rate(6_200))
        );
        let d = &rates.derived[0];
        assert_eq!(
            (d.weakest, d.from.as_str()),
            (SystemKind::Nginx, "http1-c16-max")
        );
        // No maximum at HTTP/2 with 16 connections: the protocol's other one.
        let h2 = Scenario {
            protocol: Protocol::Http2,
            connections: 16,
            pace: Pace::Low,
        };
        assert_eq!(rates.mode(&h2), Some(Mode::Rate(3_000)));
        // HTTP/1.1 with 256: falls back to the 16-connection maximum.
        assert_eq!(
            rates.rate(&Scenario {
                connections: 256,
                ..low
            }),
            Some(1_200)
        );
        assert_eq!(rates.rate(&max(Protocol::Http1, 16)), None);
        // Nothing measured: not run, never at a made-up rate.
        assert_eq!(Rates::derive(&all, &[]).mode(&low), None);
    }

    #[test]
    fn rates_are_rounded_to_two_figures() {
        assert_eq!(round_rate(1234.5), 1_200);
        assert_eq!(round_rate(6172.5), 6_200);
        assert_eq!(round_rate(98.0), 98);
        assert_eq!(round_rate(3.0), 10);
        assert_eq!(round_rate(f64::NAN), 10);
    }
}
