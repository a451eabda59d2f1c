//! Proof of identity: turns the token a workload presents into the identity it
//! proves. Two backends implement [`TokenVerifier`]:
//!
//! - [`crate::bootstrap::BootstrapTokens`] (local mode): random tokens that the
//!   local controller issues for named workloads.
//! - [`crate::token_review::TokenReviewer`] (Kubernetes): a TokenReview of a
//!   projected ServiceAccount token with audience `identity.weft.io`.

use futures::future::BoxFuture;
use weft_api::Identity;
use weft_api::certify::{IdentityToken, Refusal, RefusalReason};

/// Why a token proves nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("the token has expired: {0}")]
    Expired(String),
    #[error("the token was not issued for audience {expected}: {detail}")]
    WrongAudience {
        expected: &'static str,
        detail: String,
    },
    /// The verifier itself could not answer (the API server is unreachable);
    /// this is no verdict on the token, and the caller should retry.
    #[error("the token could not be checked: {0}")]
    Unavailable(String),
}

impl TokenError {
    /// The refusal to answer the caller with, or `None` when the token could not
    /// be checked at all.
    pub fn refusal(&self) -> Option<Refusal> {
        let reason = match self {
            Self::Invalid(_) => RefusalReason::TokenInvalid,
            Self::Expired(_) => RefusalReason::TokenExpired,
            Self::WrongAudience { .. } => RefusalReason::WrongAudience,
            Self::Unavailable(_) => return None,
        };
        Some(Refusal::new(reason, self.to_string()))
    }
}

/// Verifies a token and returns the identity it proves.
pub trait TokenVerifier: Send + Sync + 'static {
    fn verify<'a>(
        &'a self,
        token: &'a IdentityToken,
    ) -> BoxFuture<'a, Result<Identity, TokenError>>;
}
