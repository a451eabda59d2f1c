//! The inbound side: what a workload's proxy allows on a port. Default inbound
//! modes, callers by identity pattern, namespace or service account, HTTP
//! matches, and plaintext.

use std::{collections::BTreeMap, fmt, str::FromStr};

use super::error::{FieldPath, PolicyError, Problem};
use super::route::prefix_matches;
use crate::Identity;

/// What a workload's proxy asks `Inbound.Watch` about: one port of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundRequest {
    /// `<namespace>/<pod name>` in Kubernetes, the workload's name in local mode.
    pub workload: String,
    pub port: u16,
}

/// A workload port's inbound policy, as `Inbound.Watch` pushes it.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundPolicy {
    pub protocol: ProtocolHint,
    /// What happens to a request no authorization allows.
    pub default_mode: InboundMode,
    pub authorizations: Vec<Authorization>,
}

impl InboundPolicy {
    /// Who allows this caller's request: `Allowed(Some(name))` by an
    /// authorization, `Allowed(None)` by the default mode, or `Denied`. Under
    /// [`InboundMode::Audit`] a would-be denial is `Audited` (let through).
    pub fn decide(&self, caller: Option<&Identity>, request: Option<(&str, &str)>) -> Decision<'_> {
        if let Some(authz) = self
            .authorizations
            .iter()
            .find(|a| a.allows(caller, request))
        {
            return Decision::Allowed(Some(&authz.name));
        }
        match self.default_mode {
            InboundMode::AllowAll => Decision::Allowed(None),
            InboundMode::MeshOnly if caller.is_some() => Decision::Allowed(None),
            InboundMode::Audit => Decision::Audited,
            InboundMode::MeshOnly | InboundMode::Deny => Decision::Denied,
        }
    }
}

/// The outcome of [`InboundPolicy::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Allowed by the named authorization, or by the default mode (`None`).
    Allowed(Option<&'a str>),
    /// `deny` would refuse it; `audit` lets it through and counts it.
    Audited,
    Denied,
}

/// What the proxy should expect on a port, when the controller knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProtocolHint {
    /// Detect the protocol (the default).
    #[default]
    Unknown,
    Http1,
    Http2,
    /// Relay bytes without detection (server-speaks-first protocols).
    Opaque,
}

/// The inbound mode of requests no authorization allows (mesh-wide install
/// option, namespace and pod annotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InboundMode {
    /// `allow-all`: everything, plaintext too (the default, so that opting a
    /// namespace in never breaks its unmeshed callers).
    #[default]
    AllowAll,
    /// `mesh-only`: any authenticated mesh identity.
    MeshOnly,
    /// `deny`: only what an authorization allows.
    Deny,
    /// `audit`: allow, but log and count what `deny` would refuse.
    Audit,
}

impl InboundMode {
    pub const ALL: [InboundMode; 4] = [Self::AllowAll, Self::MeshOnly, Self::Deny, Self::Audit];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllowAll => "allow-all",
            Self::MeshOnly => "mesh-only",
            Self::Deny => "deny",
            Self::Audit => "audit",
        }
    }
}

impl FromStr for InboundMode {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| Problem::Invalid {
                value: s.to_owned(),
                expected: "an inbound mode; use allow-all, mesh-only, deny or audit".into(),
            })
    }
}

impl fmt::Display for InboundMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One allowed set of callers and requests (one rule of an AuthorizationPolicy).
#[derive(Debug, Clone, PartialEq)]
pub struct Authorization {
    /// The policy it comes from, for metrics and logs (e.g. `checkout-from-web`).
    pub name: String,
    /// Authenticated callers allowed; empty: any mesh identity.
    pub from: Vec<Principal>,
    /// Requests allowed; empty: every request and opaque connection.
    pub http: Vec<HttpMatch>,
    /// Whether callers with no mesh identity are allowed (for the same requests).
    pub allow_plaintext: bool,
}

impl Authorization {
    /// Whether this authorization allows a caller (`None`: plaintext) to make a
    /// request (`(method, path)`; `None`: an opaque connection, which only an
    /// authorization without HTTP matches allows).
    pub fn allows(&self, caller: Option<&Identity>, request: Option<(&str, &str)>) -> bool {
        let caller_ok = match caller {
            None => self.allow_plaintext,
            Some(id) => self.from.is_empty() || self.from.iter().any(|p| p.matches(id)),
        };
        let request_ok = self.http.is_empty()
            || request
                .is_some_and(|(method, path)| self.http.iter().any(|m| m.matches(method, path)));
        caller_ok && request_ok
    }
}

/// An allowed caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An identity, exact or with `*` segments.
    Identity(IdentityPattern),
    /// Every workload in a namespace.
    Namespace(String),
    /// The workloads of one service account.
    ServiceAccount { namespace: String, name: String },
}

impl Principal {
    pub fn matches(&self, id: &Identity) -> bool {
        match self {
            Self::Identity(pattern) => pattern.matches(id),
            Self::Namespace(ns) => id.namespace() == ns,
            Self::ServiceAccount { namespace, name } => {
                id.namespace() == namespace && id.service_account() == name
            }
        }
    }
}

/// A SPIFFE id where `*` stands for one whole segment:
/// `spiffe://cluster.local/ns/shop/sa/*` matches every service account of `shop`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPattern {
    /// The segments after `spiffe://` (trust domain first); `None` is `*`.
    segments: Vec<Option<String>>,
}

impl IdentityPattern {
    pub fn matches(&self, id: &Identity) -> bool {
        let uri = id.uri();
        let Some(rest) = uri.strip_prefix("spiffe://") else {
            return false;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        parts.len() == self.segments.len()
            && parts
                .iter()
                .zip(&self.segments)
                .all(|(part, want)| want.as_deref().is_none_or(|w| w == *part))
    }
}

impl FromStr for IdentityPattern {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| Problem::Invalid {
            value: s.to_owned(),
            expected: format!(
                "an identity pattern ({why}); write spiffe://<trust-domain>/ns/<namespace>/sa/<name>, \
                 with * for a whole segment"
            ),
        };
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| invalid("it must start with spiffe://"))?;
        let mut segments = Vec::new();
        for part in rest.split('/') {
            match part {
                "" => return Err(invalid("a segment is empty")),
                "*" => segments.push(None),
                p if p.contains('*') => {
                    return Err(invalid("* must be a whole segment"));
                }
                p => segments.push(Some(p.to_owned())),
            }
        }
        Ok(Self { segments })
    }
}

impl fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("spiffe://")?;
        for (i, segment) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            f.write_str(segment.as_deref().unwrap_or("*"))?;
        }
        Ok(())
    }
}

/// Requests an authorization allows: any of `methods` (empty: any) on any of
/// `path_prefixes` (empty: any; whole segments).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpMatch {
    pub methods: Vec<String>,
    pub path_prefixes: Vec<String>,
}

impl HttpMatch {
    pub fn matches(&self, method: &str, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && (self.path_prefixes.is_empty()
                || self.path_prefixes.iter().any(|p| prefix_matches(p, path)))
    }

    pub fn validate(&self, path: &FieldPath) -> Result<(), PolicyError> {
        for (i, method) in self.methods.iter().enumerate() {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(path.field("methods").index(i).error(Problem::Invalid {
                    value: method.clone(),
                    expected: "an HTTP method in capitals, such as GET".into(),
                }));
            }
        }
        for (i, prefix) in self.path_prefixes.iter().enumerate() {
            if !prefix.starts_with('/') {
                return Err(path.field("pathPrefixes").index(i).error(Problem::Invalid {
                    value: prefix.clone(),
                    expected: "a path prefix; start it with /".into(),
                }));
            }
        }
        Ok(())
    }
}

/// An AuthorizationPolicy as the controller indexes it: what it protects and
/// the authorizations it grants there.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizationPolicy {
    pub namespace: String,
    pub name: String,
    pub target: PolicyTarget,
    /// Ports protected; empty: all.
    pub ports: Vec<PortRef>,
    pub authorizations: Vec<Authorization>,
}

/// What an AuthorizationPolicy protects (in its own namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyTarget {
    /// The pods behind this Service.
    Service(String),
    /// The pods this selector picks.
    Pods(LabelSelector),
}

/// A port by number or by container port name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// A Kubernetes label selector, as the policy model reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<LabelExpression>,
}

impl LabelSelector {
    /// Whether labels satisfy every label and expression (an empty selector
    /// selects everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| e.matches(labels))
    }
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelExpression {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl LabelExpression {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Self::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Self::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Self::Exists(key) => labels.contains_key(key),
            Self::DoesNotExist(key) => !labels.contains_key(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        s.parse().expect("identity")
    }

    #[test]
    fn identity_patterns_match_whole_segments() {
        let any_sa: IdentityPattern = "spiffe://cluster.local/ns/shop/sa/*".parse().expect("p");
        assert!(any_sa.matches(&id("spiffe://cluster.local/ns/shop/sa/web")));
        assert!(!any_sa.matches(&id("spiffe://cluster.local/ns/other/sa/web")));
        assert!(!any_sa.matches(&id("spiffe://example.org/ns/shop/sa/web")));
        let any_ns: IdentityPattern = "spiffe://cluster.local/ns/*/sa/web".parse().expect("p");
        assert!(any_ns.matches(&id("spiffe://cluster.local/ns/a/sa/web")));
        assert!(!any_ns.matches(&id("spiffe://cluster.local/ns/a/sa/webx")));
        let exact: IdentityPattern = "spiffe://cluster.local/ns/shop/sa/web".parse().expect("p");
        assert!(exact.matches(&id("spiffe://cluster.local/ns/shop/sa/web")));
        assert_eq!(exact.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(any_sa.to_string(), "spiffe://cluster.local/ns/shop/sa/*");
        for bad in [
            "cluster.local/ns/shop/sa/web",
            "spiffe://cluster.local/ns/shop/sa/we*",
            "spiffe://cluster.local//sa/web",
        ] {
            assert!(bad.parse::<IdentityPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn inbound_modes_parse_and_print() {
        for mode in InboundMode::ALL {
            assert_eq!(mode.to_string().parse::<InboundMode>(), Ok(mode));
        }
        assert_eq!(
            "allow-all".parse::<InboundMode>(),
            Ok(InboundMode::AllowAll)
        );
        assert!("allow".parse::<InboundMode>().is_err());
        assert_eq!(InboundMode::default(), InboundMode::AllowAll);
    }

    #[test]
    fn decisions_follow_authorizations_then_the_default_mode() {
        let web = id("spiffe://cluster.local/ns/shop/sa/web");
        let other = id("spiffe://cluster.local/ns/shop/sa/loadgen");
        let mut policy = InboundPolicy {
            protocol: ProtocolHint::Unknown,
            default_mode: InboundMode::Deny,
            authorizations: vec![Authorization {
                name: "checkout-from-web".into(),
                from: vec![Principal::ServiceAccount {
                    namespace: "shop".into(),
                    name: "web".into(),
                }],
                http: vec![HttpMatch {
                    methods: vec!["POST".into()],
                    path_prefixes: vec!["/cart".into()],
                }],
                allow_plaintext: false,
            }],
        };
        let cart = Some(("POST", "/cart/add"));
        assert_eq!(
            policy.decide(Some(&web), cart),
            Decision::Allowed(Some("checkout-from-web"))
        );
        assert_eq!(
            policy.decide(Some(&web), Some(("GET", "/cart"))),
            Decision::Denied
        );
        assert_eq!(policy.decide(Some(&web), None), Decision::Denied);
        assert_eq!(policy.decide(Some(&other), cart), Decision::Denied);
        assert_eq!(policy.decide(None, cart), Decision::Denied);
        policy.default_mode = InboundMode::MeshOnly;
        assert_eq!(policy.decide(Some(&other), cart), Decision::Allowed(None));
        assert_eq!(policy.decide(None, cart), Decision::Denied);
        policy.default_mode = InboundMode::Audit;
        assert_eq!(policy.decide(None, cart), Decision::Audited);
        policy.default_mode = InboundMode::AllowAll;
        assert_eq!(policy.decide(None, None), Decision::Allowed(None));
        policy.authorizations[0].allow_plaintext = true;
        policy.default_mode = InboundMode::Deny;
        assert_eq!(
            policy.decide(None, cart),
            Decision::Allowed(Some("checkout-from-web"))
        );
    }

    #[test]
    fn label_selectors_match_labels_and_expressions() {
        let labels: BTreeMap<String, String> = [
            ("app".to_owned(), "web".to_owned()),
            ("tier".to_owned(), "front".to_owned()),
        ]
        .into();
        let selector = LabelSelector {
            match_labels: [("app".to_owned(), "web".to_owned())].into(),
            match_expressions: vec![
                LabelExpression::In("tier".into(), vec!["front".into()]),
                LabelExpression::DoesNotExist("canary".into()),
            ],
        };
        assert!(selector.matches(&labels));
        assert!(!selector.matches(&BTreeMap::new()));
        assert!(LabelSelector::default().matches(&BTreeMap::new()));
        assert!(LabelExpression::NotIn("tier".into(), vec!["back".into()]).matches(&labels));
    }
}
