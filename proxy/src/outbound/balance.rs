//! Choosing where a request goes: a backend by weight (the traffic split), then
//! an endpoint of that backend.

use rand::Rng;

use crate::config::{Endpoint, Target};

/// Picks a backend with probability proportional to its weight, then one of
/// its endpoints uniformly. `None` when no backend with weight has endpoints.
pub fn pick(target: &Target) -> Option<&Endpoint> {
    let mut rng = rand::rng();
    let live = || {
        target
            .backends
            .iter()
            .filter(|b| b.weight > 0 && !b.endpoints.is_empty())
    };
    let total: u64 = live().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut ticket = rng.random_range(0..total);
    let backend = live().find(|b| {
        let w = u64::from(b.weight);
        if ticket < w {
            true
        } else {
            ticket -= w;
            false
        }
    })?;
    let i = rng.random_range(0..backend.endpoints.len());
    backend.endpoints.get(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backend;

    fn ep(port: u16) -> Endpoint {
        Endpoint {
            addr: ([127, 0, 0, 1], port).into(),
            identity: "spiffe://cluster.local/ns/a/sa/b".parse().unwrap(),
        }
    }

    #[test]
    fn follows_weights() {
        let target = Target {
            name: "checkout".into(),
            opaque: false,
            backends: vec![
                Backend {
                    name: "v1".into(),
                    weight: 90,
                    endpoints: vec![ep(1)],
                },
                Backend {
                    name: "v2".into(),
                    weight: 10,
                    endpoints: vec![ep(2)],
                },
                Backend {
                    name: "v3".into(),
                    weight: 0,
                    endpoints: vec![ep(3)],
                },
                Backend {
                    name: "v4".into(),
                    weight: 50,
                    endpoints: vec![],
                },
            ],
        };
        let mut counts = [0u32; 4];
        for _ in 0..20_000 {
            counts[pick(&target).unwrap().addr.port() as usize - 1] += 1;
        }
        assert_eq!(counts[2] + counts[3], 0);
        let share = f64::from(counts[1]) / 20_000.0;
        assert!((0.08..0.12).contains(&share), "v2 share {share}");
    }

    #[test]
    fn no_endpoints_gives_none() {
        let target = Target {
            name: "x".into(),
            opaque: false,
            backends: vec![],
        };
        assert!(pick(&target).is_none());
    }
}
