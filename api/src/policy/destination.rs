//! What discovery tells a proxy about one target: a full, versioned snapshot
//! of its routes, weighted backends and their endpoints, and the resilience
//! settings that apply to its traffic.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use super::{
    error::{FieldPath, PolicyError, Problem},
    resilience::{CircuitBreaker, LoadBalancer, RetryBudget},
    route::Route,
};
use crate::Identity;

/// What a proxy asks `Discovery.Watch` about: a target, and who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryRequest {
    pub target: Target,
    pub caller: Identity,
}

/// A target's state. Each snapshot replaces the previous one whole; `version`
/// grows with every change the controller makes.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationState {
    pub version: u64,
    pub target: Target,
    /// Tried in order; the first whose matches match a request serves it. When
    /// none matches, the request goes to `backends` by their weights.
    pub routes: Vec<Route>,
    pub backends: Vec<Backend>,
    pub retry_budget: RetryBudget,
    /// `None`: endpoints are never ejected.
    pub circuit_breaker: Option<CircuitBreaker>,
    pub load_balancer: LoadBalancer,
    /// The time allowed to connect to an endpoint; `None`: the proxy's default.
    pub connect_timeout: Option<Duration>,
}

impl DestinationState {
    /// Checks every part, and that every route's backend refs name a backend.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let root = FieldPath::root("");
        self.retry_budget.validate(&root.field("retryBudget"))?;
        if let Some(breaker) = &self.circuit_breaker {
            breaker.validate(&root.field("circuitBreaker"))?;
        }
        self.load_balancer.validate(&root.field("loadBalancer"))?;
        for (i, backend) in self.backends.iter().enumerate() {
            let path = root.field("backends").index(i);
            if backend.name.is_empty() {
                return Err(path.field("name").error(Problem::Missing {
                    hint: "name the backend (its Service)".into(),
                }));
            }
            if self.backends[..i].iter().any(|b| b.name == backend.name) {
                return Err(path.field("name").error(Problem::Conflict(format!(
                    "backend {:?} is listed twice",
                    backend.name
                ))));
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            route.validate(&root.field("routes").index(i), &self.backends)?;
        }
        Ok(())
    }

    /// The backend with this name.
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }
}

/// What a proxy asks discovery about: a name and port (`checkout.shop.svc.cluster.local:80`,
/// `checkout:8080` in local mode) or an address (`10.96.0.12:80`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Authority { host: String, port: u16 },
    Addr(SocketAddr),
}

impl FromStr for Target {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self::Addr(addr));
        }
        let invalid = || Problem::Invalid {
            value: s.to_owned(),
            expected: "a target; write host:port (checkout.shop.svc.cluster.local:80) or ip:port"
                .into(),
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(invalid)?;
        let port = port.parse::<u16>().map_err(|_| invalid())?;
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !host_ok || port == 0 {
            return Err(invalid());
        }
        Ok(Self::Authority {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Authority { host, port } => write!(f, "{host}:{port}"),
            Self::Addr(addr) => write!(f, "{addr}"),
        }
    }
}

/// A set of endpoints traffic is split to: a Service (`checkout-v2`).
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub name: String,
    /// The backend's share when no route names backends (weights are relative;
    /// 0 sends nothing).
    pub weight: u32,
    pub endpoints: Vec<Endpoint>,
}

/// One replica of a backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The identity the endpoint must prove over mTLS; `None`: not meshed,
    /// reached in plaintext.
    pub identity: Option<Identity>,
    /// The endpoint's zone (`topology.kubernetes.io/zone`), when known.
    pub zone: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::route::{BackendRef, RouteTimeouts};

    #[test]
    fn targets_parse_as_authorities_or_addresses() {
        assert_eq!(
            "Checkout.shop.svc.cluster.local:80".parse::<Target>(),
            Ok(Target::Authority {
                host: "checkout.shop.svc.cluster.local".into(),
                port: 80
            })
        );
        assert_eq!(
            "[::1]:8080".parse::<Target>(),
            Ok(Target::Addr("[::1]:8080".parse().expect("addr")))
        );
        for bad in [
            "checkout",
            "checkout:",
            "checkout:0",
            ":80",
            "a b:80",
            "x:99999",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
        assert_eq!(
            "checkout:8080"
                .parse::<Target>()
                .expect("target")
                .to_string(),
            "checkout:8080"
        );
    }

    #[test]
    fn a_route_naming_a_missing_backend_is_refused() {
        let state = DestinationState {
            version: 1,
            target: "checkout:80".parse().expect("target"),
            routes: vec![Route {
                name: "split".into(),
                matches: vec![],
                backends: vec![BackendRef {
                    name: "checkout-v3".into(),
                    weight: 10,
                }],
                timeouts: RouteTimeouts::default(),
                retry: None,
            }],
            backends: vec![Backend {
                name: "checkout-v1".into(),
                weight: 1,
                endpoints: vec![],
            }],
            retry_budget: RetryBudget::default(),
            circuit_breaker: None,
            load_balancer: LoadBalancer::default(),
            connect_timeout: None,
        };
        let err = state.validate().expect_err("unknown backend");
        assert_eq!(err.field, "routes[0].backendRefs[0].name");
        assert!(err.to_string().contains("checkout-v1"), "{err}");
    }
}
