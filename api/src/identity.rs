//! SPIFFE workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

const SCHEME: &str = "spiffe://";

/// A workload identity.
///
/// Always valid once constructed: the trust domain follows the SPIFFE rules,
/// the namespace is a DNS-1123 label and the service account a DNS-1123
/// subdomain, as Kubernetes requires of them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: String,
    namespace: String,
    service_account: String,
    /// The URI form, made once: metrics label every request with it.
    uri: Arc<str>,
}

/// Why a string is not a weft identity. Each variant names the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "identity {input:?} does not start with \"spiffe://\"; expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    Scheme { input: String },
    #[error("identity {input:?} has an invalid trust domain {value:?}: {reason}")]
    TrustDomain {
        input: String,
        value: String,
        reason: &'static str,
    },
    #[error("identity {input:?} has path {path:?}; expected /ns/<namespace>/sa/<service-account>")]
    Path { input: String, path: String },
    #[error(
        "identity {input:?} has an invalid namespace {value:?}: {reason} (a namespace is a DNS-1123 label)"
    )]
    Namespace {
        input: String,
        value: String,
        reason: &'static str,
    },
    #[error(
        "identity {input:?} has an invalid service account {value:?}: {reason} (a service account name is a DNS-1123 subdomain)"
    )]
    ServiceAccount {
        input: String,
        value: String,
        reason: &'static str,
    },
}

impl Identity {
    /// Builds an identity from its parts, validating each of them.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        let input = || format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}");
        check_trust_domain(trust_domain).map_err(|reason| IdentityError::TrustDomain {
            input: input(),
            value: trust_domain.to_owned(),
            reason,
        })?;
        check_dns_label(namespace).map_err(|reason| IdentityError::Namespace {
            input: input(),
            value: namespace.to_owned(),
            reason,
        })?;
        check_dns_subdomain(service_account).map_err(|reason| IdentityError::ServiceAccount {
            input: input(),
            value: service_account.to_owned(),
            reason,
        })?;
        Ok(Self::from_valid_parts(
            trust_domain,
            namespace,
            service_account,
        ))
    }

    fn from_valid_parts(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            uri: Arc::from(format!(
                "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
            )),
        }
    }

    /// The identity as a URI, `spiffe://<td>/ns/<ns>/sa/<sa>`, shared: cloning
    /// it costs a reference count, not an allocation.
    pub fn uri(&self) -> Arc<str> {
        self.uri.clone()
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdentityError::Scheme {
                input: input.to_owned(),
            })?;
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        check_trust_domain(trust_domain).map_err(|reason| IdentityError::TrustDomain {
            input: input.to_owned(),
            value: trust_domain.to_owned(),
            reason,
        })?;
        let segments: Vec<&str> = path.split('/').collect();
        let (namespace, service_account) = match segments.as_slice() {
            ["", "ns", ns, "sa", sa] => (*ns, *sa),
            _ => {
                return Err(IdentityError::Path {
                    input: input.to_owned(),
                    path: path.to_owned(),
                });
            }
        };
        check_dns_label(namespace).map_err(|reason| IdentityError::Namespace {
            input: input.to_owned(),
            value: namespace.to_owned(),
            reason,
        })?;
        check_dns_subdomain(service_account).map_err(|reason| IdentityError::ServiceAccount {
            input: input.to_owned(),
            value: service_account.to_owned(),
            reason,
        })?;
        Ok(Self::from_valid_parts(
            trust_domain,
            namespace,
            service_account,
        ))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// SPIFFE trust domain: lowercase letters, digits, dots, dashes and underscores.
fn check_trust_domain(td: &str) -> Result<(), &'static str> {
    if td.is_empty() {
        return Err("it is empty");
    }
    if td.len() > 255 {
        return Err("it is longer than 255 characters");
    }
    if td.contains(':') {
        return Err("a port is not allowed in a trust domain");
    }
    if td.contains('@') {
        return Err("user info is not allowed in a trust domain");
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return Err("only lowercase letters, digits, '.', '-' and '_' are allowed");
    }
    Ok(())
}

fn check_dns_label(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("it is empty");
    }
    if s.len() > 63 {
        return Err("it is longer than 63 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only lowercase letters, digits and '-' are allowed");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("it must start and end with a letter or digit");
    }
    Ok(())
}

fn check_dns_subdomain(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("it is empty");
    }
    if s.len() > 253 {
        return Err("it is longer than 253 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err("only lowercase letters, digits, '-' and '.' are allowed");
    }
    for label in s.split('.') {
        if label.is_empty() {
            return Err("it has an empty segment between dots");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("each dot-separated part must start and end with a letter or digit");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let s = "spiffe://cluster.local/ns/shop/sa/checkout-v2";
        let id: Identity = s.parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "checkout-v2");
        assert_eq!(id.to_string(), s);
        assert_eq!(
            Identity::new("cluster.local", "shop", "checkout-v2").unwrap(),
            id
        );
    }

    #[test]
    fn service_account_may_have_dots() {
        let id: Identity = "spiffe://example.org/ns/a/sa/b.c".parse().unwrap();
        assert_eq!(id.service_account(), "b.c");
    }

    #[test]
    fn each_part_is_named_when_wrong() {
        type Check = fn(&IdentityError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("https://cluster.local/ns/a/sa/b", |e| {
                matches!(e, IdentityError::Scheme { .. })
            }),
            ("spiffe:///ns/a/sa/b", |e| {
                matches!(e, IdentityError::TrustDomain { .. })
            }),
            ("spiffe://Cluster.Local/ns/a/sa/b", |e| {
                matches!(e, IdentityError::TrustDomain { .. })
            }),
            ("spiffe://cluster.local:8080/ns/a/sa/b", |e| {
                matches!(e, IdentityError::TrustDomain { .. })
            }),
            ("spiffe://cluster.local", |e| {
                matches!(e, IdentityError::Path { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b/extra", |e| {
                matches!(e, IdentityError::Path { .. })
            }),
            ("spiffe://cluster.local/namespace/a/sa/b", |e| {
                matches!(e, IdentityError::Path { .. })
            }),
            ("spiffe://cluster.local/ns/A/sa/b", |e| {
                matches!(e, IdentityError::Namespace { .. })
            }),
            ("spiffe://cluster.local/ns/-a/sa/b", |e| {
                matches!(e, IdentityError::Namespace { .. })
            }),
            ("spiffe://cluster.local/ns//sa/b", |e| {
                matches!(e, IdentityError::Namespace { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/", |e| {
                matches!(e, IdentityError::ServiceAccount { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b..c", |e| {
                matches!(e, IdentityError::ServiceAccount { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b_c", |e| {
                matches!(e, IdentityError::ServiceAccount { .. })
            }),
        ];
        for (input, check) in cases {
            let err = input.parse::<Identity>().unwrap_err();
            assert!(check(&err), "{input}: unexpected error {err:?}");
            assert!(
                err.to_string().contains(input),
                "{err} should quote the input"
            );
        }
    }

    #[test]
    fn long_namespace_is_refused_with_reason() {
        let ns = "a".repeat(64);
        let err = Identity::new("cluster.local", &ns, "sa").unwrap_err();
        assert!(err.to_string().contains("longer than 63"), "{err}");
    }
}
