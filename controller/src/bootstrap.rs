//! Local mode's proof of identity: bootstrap tokens that the local controller
//! issues for named workloads.
//!
//! A token is 32 random bytes (hex, prefixed `weft-bootstrap.`), bound to one
//! identity, one audience and an expiry. Only its SHA-256 is stored, in
//! `bootstrap-tokens.json` in the state directory, so the file does not hold
//! usable secrets. The file is read at each verification, so tokens issued by
//! another process (`weft-controller issue-token`) are valid at once. A token
//! may be presented many times until it expires: a proxy renews with it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use weft_api::Identity;
use weft_api::certify::IdentityToken;
use weft_api::consts::IDENTITY_TOKEN_AUDIENCE;

use crate::token::{TokenError, TokenVerifier};

/// The file in the state directory that holds the token hashes.
pub const TOKENS_FILE: &str = "bootstrap-tokens.json";
/// Every bootstrap token starts with this.
pub const TOKEN_PREFIX: &str = "weft-bootstrap.";
/// Expired tokens are forgotten this long after their expiry.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Errors issuing a bootstrap token.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("could not read the bootstrap tokens {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the bootstrap tokens file {path} is corrupt ({source}); remove it and issue new tokens"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Write(#[from] crate::ca::CaError),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    /// By SHA-256 of the token, hex.
    tokens: BTreeMap<String, StoredToken>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredToken {
    identity: String,
    audience: String,
    issued_at: u64,
    expires_at: u64,
}

/// The bootstrap tokens of one local controller.
#[derive(Debug)]
pub struct BootstrapTokens {
    path: PathBuf,
    write: Mutex<()>,
}

impl BootstrapTokens {
    /// The tokens stored in `state_dir` (the file is created on first issue).
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(TOKENS_FILE),
            write: Mutex::new(()),
        }
    }

    /// Issues a token proving `identity` to the controller, valid for `ttl`.
    pub fn issue(
        &self,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<IdentityToken, BootstrapError> {
        self.issue_for_audience(identity, IDENTITY_TOKEN_AUDIENCE, ttl)
    }

    /// Issues a token for another audience. The controller refuses such a
    /// token for certificates; this exists to exercise that refusal.
    pub fn issue_for_audience(
        &self,
        identity: &Identity,
        audience: &str,
        ttl: Duration,
    ) -> Result<IdentityToken, BootstrapError> {
        let secret: [u8; 32] = rand::random();
        let token = format!("{TOKEN_PREFIX}{}", hex(&secret));
        let now = unix_now();
        let _guard = self
            .write
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut file = self.read()?;
        file.tokens
            .retain(|_, t| t.expires_at.saturating_add(FORGET_AFTER.as_secs()) > now);
        file.tokens.insert(
            hash(&token),
            StoredToken {
                identity: identity.to_string(),
                audience: audience.to_owned(),
                issued_at: now,
                expires_at: now.saturating_add(ttl.as_secs()),
            },
        );
        let json = serde_json::to_vec_pretty(&file).expect("the token file serializes");
        crate::ca::write_atomic(&self.path, &json, 0o600)?;
        tracing::info!(%identity, audience, ttl = ?ttl, "bootstrap token issued");
        Ok(IdentityToken::new(token).expect("a generated token is not empty"))
    }

    fn read(&self) -> Result<TokenFile, BootstrapError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| BootstrapError::Corrupt {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
            Err(source) => Err(BootstrapError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn check(&self, token: &IdentityToken) -> Result<Identity, TokenError> {
        if !token.as_str().starts_with(TOKEN_PREFIX) {
            return Err(TokenError::Invalid(format!(
                "it is not a bootstrap token (they start with {TOKEN_PREFIX:?}); issue one with \
                 `weft-controller issue-token`"
            )));
        }
        let file = self
            .read()
            .map_err(|e| TokenError::Unavailable(e.to_string()))?;
        let stored = file.tokens.get(&hash(token.as_str())).ok_or_else(|| {
            TokenError::Invalid(
                "this controller never issued it (or forgot it long after it expired)".into(),
            )
        })?;
        if stored.audience != IDENTITY_TOKEN_AUDIENCE {
            return Err(TokenError::WrongAudience {
                expected: IDENTITY_TOKEN_AUDIENCE,
                detail: format!("it was issued for audience {:?}", stored.audience),
            });
        }
        if unix_now() >= stored.expires_at {
            return Err(TokenError::Expired(format!(
                "the bootstrap token for {} expired {}s ago; issue a new one",
                stored.identity,
                unix_now() - stored.expires_at
            )));
        }
        stored
            .identity
            .parse()
            .map_err(|e| TokenError::Invalid(format!("it is bound to an invalid identity: {e}")))
    }
}

impl TokenVerifier for BootstrapTokens {
    fn verify<'a>(
        &'a self,
        token: &'a IdentityToken,
    ) -> BoxFuture<'a, Result<Identity, TokenError>> {
        Box::pin(async move { self.check(token) })
    }
}

fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sa: &str) -> Identity {
        Identity::new("cluster.local", "shop", sa).unwrap()
    }

    #[tokio::test]
    async fn issued_token_proves_its_identity_and_is_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = BootstrapTokens::new(dir.path());
        let token = tokens
            .issue(&id("checkout"), Duration::from_secs(60))
            .unwrap();
        assert_eq!(tokens.verify(&token).await.unwrap(), id("checkout"));
        // Another instance (another process) reads the same file.
        let other = BootstrapTokens::new(dir.path());
        assert_eq!(other.verify(&token).await.unwrap(), id("checkout"));
        let stored = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        assert!(
            !stored.contains(token.as_str()),
            "the token itself is not stored"
        );
    }

    #[tokio::test]
    async fn unknown_expired_and_foreign_tokens_are_refused_by_reason() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = BootstrapTokens::new(dir.path());
        let unknown = IdentityToken::new(format!("{TOKEN_PREFIX}00")).unwrap();
        assert!(matches!(
            tokens.verify(&unknown).await,
            Err(TokenError::Invalid(_))
        ));
        let garbage = IdentityToken::new("eyJhbGciOi").unwrap();
        assert!(matches!(
            tokens.verify(&garbage).await,
            Err(TokenError::Invalid(_))
        ));
        let expired = tokens.issue(&id("a"), Duration::ZERO).unwrap();
        assert!(matches!(
            tokens.verify(&expired).await,
            Err(TokenError::Expired(_))
        ));
        let foreign = tokens
            .issue_for_audience(&id("a"), "vault", Duration::from_secs(60))
            .unwrap();
        let err = tokens.verify(&foreign).await.unwrap_err();
        assert!(matches!(err, TokenError::WrongAudience { .. }), "{err}");
        assert!(err.to_string().contains("vault"), "{err}");
    }
}
