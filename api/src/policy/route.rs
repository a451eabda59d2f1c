//! Routes: which requests they take (HTTP path, method, headers; gRPC service
//! and method), where they send them (weighted backends), and their timeouts
//! and retries.

use std::time::Duration;

use super::{
    destination::Backend,
    error::{FieldPath, PolicyError, Problem},
    resilience::RetryPolicy,
};

/// One route of a target (from an HTTPRoute or GRPCRoute rule).
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Names the route in metrics and `/config` (e.g. `shop/checkout-split/0`).
    pub name: String,
    /// The route takes a request when any match matches; empty: every request.
    pub matches: Vec<RouteMatch>,
    /// Where requests go, by relative weight; empty: the target's backends by
    /// their own weights.
    pub backends: Vec<BackendRef>,
    pub timeouts: RouteTimeouts,
    /// `None`: never retried.
    pub retry: Option<RetryPolicy>,
}

impl Route {
    /// Checks the route against the backends its target has.
    pub fn validate(&self, path: &FieldPath, backends: &[Backend]) -> Result<(), PolicyError> {
        for (i, backend_ref) in self.backends.iter().enumerate() {
            if !backends.iter().any(|b| b.name == backend_ref.name) {
                let known: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
                return Err(path.field("backendRefs").index(i).field("name").error(
                    Problem::UnknownRef {
                        name: backend_ref.name.clone(),
                        what: "backend of this target".into(),
                        known: known.join(", "),
                    },
                ));
            }
        }
        for (i, m) in self.matches.iter().enumerate() {
            m.validate(&path.field("matches").index(i))?;
        }
        if let Some(retry) = &self.retry {
            retry.validate(&path.field("retry"))?;
        }
        Ok(())
    }
}

/// A backend a route sends to, and its relative weight (0: none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRef {
    pub name: String,
    pub weight: u32,
}

/// The timeouts of a route (Gateway API `timeouts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteTimeouts {
    /// The whole request, retries included; answered with 504 when it runs out.
    pub request: Option<Duration>,
    /// Each try (Gateway API `backendRequest`).
    pub backend_request: Option<Duration>,
}

/// What a request must look like to take a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    Http(HttpRouteMatch),
    Grpc(GrpcRouteMatch),
}

impl RouteMatch {
    fn validate(&self, path: &FieldPath) -> Result<(), PolicyError> {
        match self {
            Self::Http(http) => match &http.path {
                Some(PathMatch::Exact(p) | PathMatch::Prefix(p)) if !p.starts_with('/') => {
                    Err(path.field("path").field("value").error(Problem::Invalid {
                        value: p.clone(),
                        expected: "a path; start it with /".into(),
                    }))
                }
                _ => Ok(()),
            },
            Self::Grpc(_) => Ok(()),
        }
    }

    /// Whether a request matches (HTTP path, method and headers; for gRPC, the
    /// path `/<service>/<method>`).
    pub fn matches(
        &self,
        method: &str,
        path: &str,
        header: impl Fn(&str) -> Option<String>,
    ) -> bool {
        match self {
            Self::Http(m) => {
                m.method.as_deref().is_none_or(|want| want == method)
                    && m.path.as_ref().is_none_or(|p| p.matches(path))
                    && m.headers
                        .iter()
                        .all(|h| header(&h.name).as_deref() == Some(h.value.as_str()))
            }
            Self::Grpc(m) => {
                let mut parts = path.trim_start_matches('/').splitn(2, '/');
                let (service, grpc_method) = (parts.next(), parts.next());
                m.service.as_deref().is_none_or(|s| Some(s) == service)
                    && m.method.as_deref().is_none_or(|s| Some(s) == grpc_method)
                    && m.headers
                        .iter()
                        .all(|h| header(&h.name).as_deref() == Some(h.value.as_str()))
            }
        }
    }
}

/// An HTTPRoute match: all given parts must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpRouteMatch {
    pub path: Option<PathMatch>,
    /// An HTTP method such as `GET`.
    pub method: Option<String>,
    pub headers: Vec<HeaderMatch>,
}

/// A GRPCRoute match: all given parts must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrpcRouteMatch {
    /// The fully qualified service, e.g. `shop.v1.Checkout`.
    pub service: Option<String>,
    /// The method, e.g. `PlaceOrder`.
    pub method: Option<String>,
    pub headers: Vec<HeaderMatch>,
}

/// A request path match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    /// Matches whole segments: `/api` matches `/api` and `/api/x`, not `/apix`.
    Prefix(String),
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(want) => path == want,
            Self::Prefix(prefix) => prefix_matches(prefix, path),
        }
    }
}

/// Whether `path` starts with `prefix` on a segment boundary.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

/// A header that must have exactly this value (names are lower case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: String,
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefixes_match_whole_segments() {
        let prefix = PathMatch::Prefix("/api/".into());
        assert!(prefix.matches("/api") && prefix.matches("/api/orders"));
        assert!(!prefix.matches("/apix") && !prefix.matches("/"));
        assert!(PathMatch::Prefix("/".into()).matches("/anything"));
        assert!(PathMatch::Exact("/x".into()).matches("/x"));
        assert!(!PathMatch::Exact("/x".into()).matches("/x/"));
    }

    #[test]
    fn http_and_grpc_matches() {
        let http = RouteMatch::Http(HttpRouteMatch {
            path: Some(PathMatch::Prefix("/cart".into())),
            method: Some("POST".into()),
            headers: vec![HeaderMatch {
                name: "x-canary".into(),
                value: "1".into(),
            }],
        });
        let canary = |name: &str| (name == "x-canary").then(|| "1".to_owned());
        assert!(http.matches("POST", "/cart/add", canary));
        assert!(!http.matches("GET", "/cart/add", canary));
        assert!(!http.matches("POST", "/cart/add", |_| None));
        let grpc = RouteMatch::Grpc(GrpcRouteMatch {
            service: Some("shop.v1.Checkout".into()),
            method: None,
            headers: vec![],
        });
        assert!(grpc.matches("POST", "/shop.v1.Checkout/PlaceOrder", |_| None));
        assert!(!grpc.matches("POST", "/shop.v1.Cart/Add", |_| None));
    }
}
