//! The scenarios every system runs: protocol x connections x pacing.

use serde::{Deserialize, Serialize};

use crate::client::Protocol;
use crate::load::Mode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    pub protocol: Protocol,
    pub connections: usize,
    pub mode: Mode,
}

impl Scenario {
    /// A stable identifier, for example `http1-c16-rate1000`.
    pub fn id(&self) -> String {
        let proto = match self.protocol {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        };
        let mode = match self.mode {
            Mode::Rate(r) => format!("rate{r}"),
            Mode::Max => "max".to_string(),
        };
        format!("{proto}-c{}-{mode}", self.connections)
    }

    /// A title for people, for example `HTTP/1.1, 16 connections, 1000 req/s`.
    pub fn title(&self) -> String {
        let mode = match self.mode {
            Mode::Rate(r) => format!("{r} req/s (open loop)"),
            Mode::Max => "maximum throughput (closed loop)".to_string(),
        };
        format!(
            "{}, {} connections, {mode}",
            self.protocol.label(),
            self.connections
        )
    }

    pub fn rate(&self) -> Option<u64> {
        match self.mode {
            Mode::Rate(r) => Some(r),
            Mode::Max => None,
        }
    }
}

/// The full set: HTTP/1.1 and HTTP/2, 16 and 256 connections, 1,000 and
/// 10,000 req/s and maximum throughput.
pub fn full() -> Vec<Scenario> {
    let mut all = Vec::new();
    for protocol in [Protocol::Http1, Protocol::Http2] {
        for connections in [16, 256] {
            for mode in [Mode::Rate(1_000), Mode::Rate(10_000), Mode::Max] {
                all.push(Scenario {
                    protocol,
                    connections,
                    mode,
                });
            }
        }
    }
    all
}

/// The quick set: one of each kind, enough to prove every part works.
pub fn quick() -> Vec<Scenario> {
    let s = |protocol, connections, mode| Scenario {
        protocol,
        connections,
        mode,
    };
    vec![
        s(Protocol::Http1, 16, Mode::Rate(1_000)),
        s(Protocol::Http1, 16, Mode::Rate(10_000)),
        s(Protocol::Http1, 256, Mode::Max),
        s(Protocol::Http2, 16, Mode::Rate(1_000)),
        s(Protocol::Http2, 256, Mode::Max),
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
        assert!(ids.contains(&"http2-c256-rate10000".to_string()));
        assert!(quick().iter().all(|q| all.contains(q)));
    }
}
