//! Kubernetes' proof of identity: a TokenReview of the projected ServiceAccount
//! token a proxy presents, with audience `identity.weft.io`.
//!
//! The kube edge is the one `create` call; what the review answer means is
//! decided by [`identity_from_review`], a pure function tested without an API
//! server. The controller's ServiceAccount needs `create` on
//! `tokenreviews.authentication.k8s.io`.

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use weft_api::Identity;
use weft_api::certify::IdentityToken;
use weft_api::consts::IDENTITY_TOKEN_AUDIENCE;

use crate::token::{TokenError, TokenVerifier};

const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Verifies tokens with TokenReviews against the API server.
#[derive(Clone)]
pub struct TokenReviewer {
    api: Api<TokenReview>,
    trust_domain: String,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    pub fn new(client: kube::Client, trust_domain: &str) -> Self {
        Self {
            api: Api::all(client),
            trust_domain: trust_domain.to_owned(),
        }
    }

    async fn review(&self, token: &IdentityToken) -> Result<Identity, TokenError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.as_str().to_owned()),
                audiences: Some(vec![IDENTITY_TOKEN_AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                TokenError::Unavailable(format!(
                    "the TokenReview failed: {e}; check that the API server is reachable and that \
                     the controller's ServiceAccount may create tokenreviews"
                ))
            })?;
        identity_from_review(answer.status.as_ref(), &self.trust_domain)
    }
}

impl TokenVerifier for TokenReviewer {
    fn verify<'a>(
        &'a self,
        token: &'a IdentityToken,
    ) -> BoxFuture<'a, Result<Identity, TokenError>> {
        Box::pin(self.review(token))
    }
}

/// What a TokenReview's answer proves: the identity of the ServiceAccount
/// whose token was reviewed, or why it proves nothing.
pub fn identity_from_review(
    status: Option<&TokenReviewStatus>,
    trust_domain: &str,
) -> Result<Identity, TokenError> {
    let status =
        status.ok_or_else(|| TokenError::Invalid("the TokenReview has no status".into()))?;
    if status.authenticated != Some(true) {
        let error = status
            .error
            .clone()
            .unwrap_or_else(|| "the API server did not authenticate it".into());
        let lower = error.to_lowercase();
        return Err(if lower.contains("audience") {
            TokenError::WrongAudience {
                expected: IDENTITY_TOKEN_AUDIENCE,
                detail: format!(
                    "{error}; mount a projected ServiceAccount token with audience {IDENTITY_TOKEN_AUDIENCE}"
                ),
            }
        } else if lower.contains("expired") {
            TokenError::Expired(error)
        } else {
            TokenError::Invalid(error)
        });
    }
    if let Some(audiences) = &status.audiences
        && !audiences.iter().any(|a| a == IDENTITY_TOKEN_AUDIENCE)
    {
        return Err(TokenError::WrongAudience {
            expected: IDENTITY_TOKEN_AUDIENCE,
            detail: format!("the token is valid for {audiences:?}"),
        });
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or_default();
    let rest = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .ok_or_else(|| {
            TokenError::Invalid(format!(
                "it authenticates {username:?}, not a ServiceAccount; present the pod's projected \
             ServiceAccount token"
            ))
        })?;
    let (namespace, service_account) = rest.split_once(':').ok_or_else(|| {
        TokenError::Invalid(format!("unexpected ServiceAccount user name {username:?}"))
    })?;
    Identity::new(trust_domain, namespace, service_account)
        .map_err(|e| TokenError::Invalid(format!("the ServiceAccount makes no identity: {e}")))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn authenticated(username: &str, audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(username.into()),
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    fn refused(error: &str) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(false),
            error: Some(error.into()),
            ..TokenReviewStatus::default()
        }
    }

    #[test]
    fn service_account_becomes_identity() {
        let status = authenticated(
            "system:serviceaccount:shop:checkout",
            &[IDENTITY_TOKEN_AUDIENCE],
        );
        let id = identity_from_review(Some(&status), "cluster.local").unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/checkout");
    }

    #[test]
    fn refusals_are_classified_from_the_api_server_error() {
        // The texts kube-apiserver answers with.
        let audience = refused(
            r#"[invalid bearer token, token audiences ["api"] is invalid for the target audiences ["identity.weft.io"], unknown]"#,
        );
        assert!(matches!(
            identity_from_review(Some(&audience), "cluster.local"),
            Err(TokenError::WrongAudience { .. })
        ));
        let expired = refused(
            "[invalid bearer token, square/go-jose/jwt: validation failed, token is expired (exp)]",
        );
        assert!(matches!(
            identity_from_review(Some(&expired), "cluster.local"),
            Err(TokenError::Expired(_))
        ));
        let invalid =
            refused("[invalid bearer token, square/go-jose: error in cryptographic primitive]");
        assert!(matches!(
            identity_from_review(Some(&invalid), "cluster.local"),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            identity_from_review(None, "cluster.local"),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn other_audience_or_user_is_refused() {
        let status = authenticated("system:serviceaccount:shop:checkout", &["api"]);
        assert!(matches!(
            identity_from_review(Some(&status), "cluster.local"),
            Err(TokenError::WrongAudience { .. })
        ));
        let user = authenticated("alice", &[IDENTITY_TOKEN_AUDIENCE]);
        let err = identity_from_review(Some(&user), "cluster.local").unwrap_err();
        assert!(err.to_string().contains("alice"), "{err}");
    }
}
