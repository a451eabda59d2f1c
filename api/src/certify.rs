//! `Identity.Certify` as domain types.
//!
//! The wire types of [`crate::proto::weft_v1`] are converted here, at the edge
//! (`TryFrom`), so that the controller and the proxy never handle them: a
//! [`CertifyRequest`] always has a token and a CSR, a [`Certified`] always has a
//! leaf and an expiry, and a refusal is a typed [`Refusal`] on both sides of the
//! connection (it travels in the details of the gRPC status).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use prost::Message;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};

use crate::proto::weft_v1 as wire;

/// The proof of identity a workload presents: a projected ServiceAccount token
/// in Kubernetes, a bootstrap token in local mode. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityToken(String);

impl IdentityToken {
    /// Wraps a token, trimming the whitespace a token file usually ends with.
    pub fn new(token: impl Into<String>) -> Result<Self, ProtoError> {
        let token = token.into();
        let trimmed = token.trim();
        if trimmed.is_empty() {
            return Err(ProtoError::EmptyToken);
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdentityToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityToken({} bytes, redacted)", self.0.len())
    }
}

/// A request for a workload certificate.
#[derive(Clone, Debug)]
pub struct CertifyRequest {
    pub token: IdentityToken,
    /// PKCS#10, DER.
    pub csr: CertificateSigningRequestDer<'static>,
}

/// A signed workload certificate and the intermediates that lead to a trust anchor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certified {
    pub leaf: CertificateDer<'static>,
    /// Intermediates, the leaf's issuer first; no trust anchor.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's notAfter.
    pub valid_until: SystemTime,
}

impl Certified {
    /// The leaf followed by the intermediates, as TLS presents them.
    pub fn full_chain(&self) -> Vec<CertificateDer<'static>> {
        let mut chain = Vec::with_capacity(1 + self.chain.len());
        chain.push(self.leaf.clone());
        chain.extend(self.chain.iter().cloned());
        chain
    }
}

/// Why the controller refused to sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalReason {
    /// The token is unknown, malformed, or was rejected by the token reviewer.
    TokenInvalid,
    /// The token was valid once but has expired.
    TokenExpired,
    /// The token was issued for another audience than `identity.weft.io`.
    WrongAudience,
    /// The CSR names another identity than the one the token proves.
    OtherIdentity,
    /// The CSR carries SANs besides its one URI SAN.
    ExtraSans,
    /// The CSR's signature does not verify with its own key.
    BadSignature,
    /// The issuer certificate has expired or is not yet valid.
    IssuerExpired,
    /// The CSR is not DER PKCS#10, or its key is not ECDSA P-256.
    BadCsr,
}

impl RefusalReason {
    pub const ALL: [Self; 8] = [
        Self::TokenInvalid,
        Self::TokenExpired,
        Self::WrongAudience,
        Self::OtherIdentity,
        Self::ExtraSans,
        Self::BadSignature,
        Self::IssuerExpired,
        Self::BadCsr,
    ];

    /// A stable name, used in errors, metrics labels and the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenInvalid => "token-invalid",
            Self::TokenExpired => "token-expired",
            Self::WrongAudience => "wrong-audience",
            Self::OtherIdentity => "other-identity",
            Self::ExtraSans => "extra-sans",
            Self::BadSignature => "bad-signature",
            Self::IssuerExpired => "issuer-expired",
            Self::BadCsr => "bad-csr",
        }
    }

    /// The gRPC code a refusal travels with.
    pub fn code(self) -> tonic::Code {
        match self {
            Self::TokenInvalid | Self::TokenExpired | Self::WrongAudience => {
                tonic::Code::Unauthenticated
            }
            Self::OtherIdentity | Self::ExtraSans => tonic::Code::PermissionDenied,
            Self::BadSignature | Self::BadCsr => tonic::Code::InvalidArgument,
            Self::IssuerExpired => tonic::Code::Unavailable,
        }
    }

    fn to_wire(self) -> wire::RefusalReason {
        match self {
            Self::TokenInvalid => wire::RefusalReason::TokenInvalid,
            Self::TokenExpired => wire::RefusalReason::TokenExpired,
            Self::WrongAudience => wire::RefusalReason::WrongAudience,
            Self::OtherIdentity => wire::RefusalReason::OtherIdentity,
            Self::ExtraSans => wire::RefusalReason::ExtraSans,
            Self::BadSignature => wire::RefusalReason::BadSignature,
            Self::IssuerExpired => wire::RefusalReason::IssuerExpired,
            Self::BadCsr => wire::RefusalReason::BadCsr,
        }
    }

    fn from_wire(reason: wire::RefusalReason) -> Option<Self> {
        Some(match reason {
            wire::RefusalReason::Unspecified => return None,
            wire::RefusalReason::TokenInvalid => Self::TokenInvalid,
            wire::RefusalReason::TokenExpired => Self::TokenExpired,
            wire::RefusalReason::WrongAudience => Self::WrongAudience,
            wire::RefusalReason::OtherIdentity => Self::OtherIdentity,
            wire::RefusalReason::ExtraSans => Self::ExtraSans,
            wire::RefusalReason::BadSignature => Self::BadSignature,
            wire::RefusalReason::IssuerExpired => Self::IssuerExpired,
            wire::RefusalReason::BadCsr => Self::BadCsr,
        })
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RefusalReason {
    type Err = ProtoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| ProtoError::UnknownReason(s.to_owned()))
    }
}

/// A refusal to sign, with its reason and an explanation naming what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("certificate refused ({reason}): {detail}")]
pub struct Refusal {
    pub reason: RefusalReason,
    pub detail: String,
}

impl Refusal {
    pub fn new(reason: RefusalReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }

    /// Reads the refusal carried by a gRPC status, if it carries one.
    pub fn from_status(status: &tonic::Status) -> Option<Self> {
        let refusal = wire::CertifyRefusal::decode(status.details()).ok()?;
        let reason = wire::RefusalReason::try_from(refusal.reason).ok()?;
        Some(Self {
            reason: RefusalReason::from_wire(reason)?,
            detail: refusal.detail,
        })
    }
}

impl From<Refusal> for tonic::Status {
    fn from(refusal: Refusal) -> Self {
        let details = wire::CertifyRefusal {
            reason: refusal.reason.to_wire().into(),
            detail: refusal.detail.clone(),
        }
        .encode_to_vec();
        tonic::Status::with_details(refusal.reason.code(), refusal.to_string(), details.into())
    }
}

/// A wire message that does not make a valid domain value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("the request carries no token; send the workload's identity token")]
    EmptyToken,
    #[error("the request carries no CSR; send a DER PKCS#10 certificate signing request")]
    EmptyCsr,
    #[error("the response carries no leaf certificate")]
    EmptyLeaf,
    #[error("intermediate {0} of the response's chain is empty")]
    EmptyIntermediate(usize),
    #[error("the response carries no valid_until")]
    MissingValidUntil,
    #[error("the response's valid_until {seconds}s {nanos}ns is not a time after 1970")]
    InvalidTimestamp { seconds: i64, nanos: i32 },
    #[error("unknown refusal reason {0:?}")]
    UnknownReason(String),
}

impl ProtoError {
    /// The refusal a controller answers a malformed request with.
    pub fn refusal(&self) -> Refusal {
        let reason = match self {
            Self::EmptyToken => RefusalReason::TokenInvalid,
            _ => RefusalReason::BadCsr,
        };
        Refusal::new(reason, self.to_string())
    }
}

impl TryFrom<wire::CertifyRequest> for CertifyRequest {
    type Error = ProtoError;

    fn try_from(request: wire::CertifyRequest) -> Result<Self, Self::Error> {
        let token = IdentityToken::new(request.token)?;
        if request.csr.is_empty() {
            return Err(ProtoError::EmptyCsr);
        }
        Ok(Self {
            token,
            csr: CertificateSigningRequestDer::from(request.csr),
        })
    }
}

impl From<CertifyRequest> for wire::CertifyRequest {
    fn from(request: CertifyRequest) -> Self {
        Self {
            token: request.token.0,
            csr: request.csr.as_ref().to_vec(),
        }
    }
}

impl TryFrom<wire::CertifyResponse> for Certified {
    type Error = ProtoError;

    fn try_from(response: wire::CertifyResponse) -> Result<Self, Self::Error> {
        if response.leaf.is_empty() {
            return Err(ProtoError::EmptyLeaf);
        }
        if let Some(i) = response.chain.iter().position(Vec::is_empty) {
            return Err(ProtoError::EmptyIntermediate(i));
        }
        let ts = response.valid_until.ok_or(ProtoError::MissingValidUntil)?;
        let invalid = ProtoError::InvalidTimestamp {
            seconds: ts.seconds,
            nanos: ts.nanos,
        };
        let seconds = u64::try_from(ts.seconds).map_err(|_| invalid.clone())?;
        let nanos = u32::try_from(ts.nanos)
            .ok()
            .filter(|n| *n < 1_000_000_000)
            .ok_or(invalid)?;
        Ok(Self {
            leaf: CertificateDer::from(response.leaf),
            chain: response
                .chain
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
            valid_until: SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos),
        })
    }
}

impl From<Certified> for wire::CertifyResponse {
    fn from(certified: Certified) -> Self {
        let since_epoch = certified
            .valid_until
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            leaf: certified.leaf.as_ref().to_vec(),
            chain: certified
                .chain
                .iter()
                .map(|c| c.as_ref().to_vec())
                .collect(),
            valid_until: Some(prost_types::Timestamp {
                seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(since_epoch.subsec_nanos())
                    .expect("sub-second nanoseconds fit in i32"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_rejects_empty_fields() {
        let request = CertifyRequest {
            token: IdentityToken::new("secret\n").unwrap(),
            csr: CertificateSigningRequestDer::from(vec![1, 2, 3]),
        };
        assert_eq!(request.token.as_str(), "secret");
        assert!(!format!("{request:?}").contains("secret"));
        let back = CertifyRequest::try_from(wire::CertifyRequest::from(request)).unwrap();
        assert_eq!(back.csr.as_ref(), &[1, 2, 3]);

        let empty_token = wire::CertifyRequest {
            token: " ".into(),
            csr: vec![1],
        };
        let err = CertifyRequest::try_from(empty_token).unwrap_err();
        assert_eq!(err, ProtoError::EmptyToken);
        assert_eq!(err.refusal().reason, RefusalReason::TokenInvalid);
        let empty_csr = wire::CertifyRequest {
            token: "t".into(),
            csr: vec![],
        };
        let err = CertifyRequest::try_from(empty_csr).unwrap_err();
        assert_eq!(err.refusal().reason, RefusalReason::BadCsr);
    }

    #[test]
    fn response_round_trips_with_subsecond_expiry() {
        let certified = Certified {
            leaf: CertificateDer::from(vec![9]),
            chain: vec![CertificateDer::from(vec![8]), CertificateDer::from(vec![7])],
            valid_until: SystemTime::UNIX_EPOCH + Duration::new(1_800_000_000, 5),
        };
        let back = Certified::try_from(wire::CertifyResponse::from(certified.clone())).unwrap();
        assert_eq!(back, certified);
        assert_eq!(back.full_chain().len(), 3);
    }

    #[test]
    fn response_without_leaf_or_expiry_is_refused() {
        let ok = wire::CertifyResponse::from(Certified {
            leaf: CertificateDer::from(vec![9]),
            chain: vec![],
            valid_until: SystemTime::UNIX_EPOCH,
        });
        let mut no_leaf = ok.clone();
        no_leaf.leaf.clear();
        assert_eq!(Certified::try_from(no_leaf), Err(ProtoError::EmptyLeaf));
        let mut no_expiry = ok.clone();
        no_expiry.valid_until = None;
        assert_eq!(
            Certified::try_from(no_expiry),
            Err(ProtoError::MissingValidUntil)
        );
        let mut negative = ok;
        negative.valid_until = Some(prost_types::Timestamp {
            seconds: -1,
            nanos: 0,
        });
        assert!(matches!(
            Certified::try_from(negative),
            Err(ProtoError::InvalidTimestamp { .. })
        ));
    }

    #[test]
    fn refusal_travels_in_the_status() {
        for reason in RefusalReason::ALL {
            let refusal = Refusal::new(reason, "because");
            let status = tonic::Status::from(refusal.clone());
            assert_eq!(status.code(), reason.code());
            assert!(status.message().contains(reason.as_str()), "{status:?}");
            assert_eq!(Refusal::from_status(&status), Some(refusal));
            assert_eq!(reason.as_str().parse::<RefusalReason>(), Ok(reason));
        }
        assert_eq!(
            Refusal::from_status(&tonic::Status::unavailable("down")),
            None
        );
    }
}
