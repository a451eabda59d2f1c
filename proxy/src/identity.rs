//! The proxy's workload identity: a key generated in memory (never written
//! anywhere), a certificate from the controller's `Identity.Certify`, renewed
//! at 70 % of its lifetime (with jitter, and with backoff while the controller
//! is unreachable), and trust anchors reloaded when their file changes.
//!
//! Every new certificate is swapped into [`MeshTls`]: connections made before
//! keep theirs, new handshakes use the new one, nothing is dropped. While the
//! controller is unreachable the proxy keeps serving with the certificate it
//! has for as long as that one is valid.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio_util::sync::CancellationToken;
use weft_api::Identity;
use weft_api::certify::{CertifyRequest, IdentityToken, new_key_and_csr};
use weft_api::control::{ControlClient, ControlError};
use weft_api::tls::{Credentials, MeshTls, TrustAnchors};

use crate::metrics::Metrics;

/// Where the proxy's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertifyConfig {
    /// The controller's gRPC address, `host:port`.
    pub controller_addr: String,
    /// The identity the controller must prove.
    pub controller_identity: Identity,
    /// The identity this workload asks for (and its token proves).
    pub identity: Identity,
    /// The token file: a projected ServiceAccount token in Kubernetes, a
    /// bootstrap token in local mode. Read again before every request, since
    /// the kubelet rotates projected tokens.
    pub token_file: PathBuf,
}

/// Renew at this share of the certificate's remaining lifetime...
const RENEW_AT: f64 = 0.7;
/// ...minus up to this share, at random, so replicas do not renew in step.
const JITTER: f64 = 0.1;
/// Backoff between failed attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why one certification attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error("cannot read the identity token {path}: {source}; check that the token is mounted")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the identity token {path} is unusable: {reason}")]
    BadToken { path: PathBuf, reason: String },
    #[error("cannot generate a key and CSR for {identity}: {reason}")]
    Csr { identity: Identity, reason: String },
    #[error(transparent)]
    Controller(#[from] ControlError),
    #[error("the certificate the controller sent is unusable: {0}")]
    Unusable(#[from] weft_api::tls::TlsError),
    #[error("the controller certified {got} but this workload asked for {want}")]
    WrongIdentity { want: Identity, got: Identity },
}

/// Obtains and renews the workload certificate until `shutdown`.
pub async fn run(
    config: CertifyConfig,
    tls: Arc<MeshTls>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let client = match ControlClient::new(
        &config.controller_addr,
        tls.clone(),
        config.controller_identity.clone(),
    ) {
        Ok(client) => client,
        Err(error) => {
            // The address was validated with the configuration; this cannot
            // happen, but a proxy without identity must say so loudly.
            tracing::error!(%error, "cannot create the controller client; the proxy stays not ready");
            return;
        }
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        let wait = match certify_once(&config, &client, &tls).await {
            Ok(credentials) => {
                metrics.certified(true);
                // Its serial, expiry and the renewal time, as it goes in.
                metrics.observe_credentials(Some(&credentials));
                backoff = BACKOFF_MIN;
                let wait = renew_after(credentials.not_after(), SystemTime::now());
                tracing::info!(
                    identity = %credentials.identity(),
                    valid_for_s = credentials
                        .not_after()
                        .duration_since(SystemTime::now())
                        .map_or(0, |d| d.as_secs()),
                    renew_in_s = wait.as_secs_f64(),
                    "installed a new workload certificate"
                );
                wait
            }
            Err(error) => {
                metrics.certified(false);
                let current = tls.credentials();
                let valid = current
                    .as_ref()
                    .is_some_and(|c| c.not_after() > SystemTime::now());
                tracing::warn!(
                    %error,
                    retry_in_s = backoff.as_secs_f64(),
                    serving_with_current_certificate = valid,
                    "could not obtain a workload certificate"
                );
                let wait = jittered(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                wait
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn certify_once(
    config: &CertifyConfig,
    client: &ControlClient,
    tls: &MeshTls,
) -> Result<Credentials, CertifyError> {
    let token = tokio::fs::read_to_string(&config.token_file)
        .await
        .map_err(|source| CertifyError::Token {
            path: config.token_file.clone(),
            source,
        })?;
    let token = IdentityToken::new(token).map_err(|e| CertifyError::BadToken {
        path: config.token_file.clone(),
        reason: e.to_string(),
    })?;
    let (key, csr) = new_key_and_csr(&config.identity).map_err(|e| CertifyError::Csr {
        identity: config.identity.clone(),
        reason: e.to_string(),
    })?;
    let certified = client.certify(CertifyRequest { token, csr }).await?;
    let credentials = Credentials::from_der(certified.full_chain(), key)?;
    if credentials.identity() != &config.identity {
        return Err(CertifyError::WrongIdentity {
            want: config.identity.clone(),
            got: credentials.identity().clone(),
        });
    }
    tls.set_credentials(credentials.clone());
    Ok(credentials)
}

/// When to renew a certificate valid until `not_after`: at 70 % of its
/// remaining lifetime, up to 10 % earlier at random.
fn renew_after(not_after: SystemTime, now: SystemTime) -> Duration {
    let remaining = not_after.duration_since(now).unwrap_or(Duration::ZERO);
    let jitter = rand::rng().random_range(0.0..JITTER);
    remaining
        .mul_f64(RENEW_AT - jitter)
        .max(Duration::from_millis(100))
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// Reloads the trust anchor bundle at `path` when its contents change. A
/// bundle that does not parse is reported and the last good one stays.
pub async fn watch_trust_anchors(
    path: PathBuf,
    tls: Arc<MeshTls>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut last = tokio::fs::read(&path).await.ok();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let current = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the trust anchors; keeping the current ones");
                continue;
            }
        };
        if last.as_deref() == Some(current.as_slice()) {
            continue;
        }
        match TrustAnchors::from_pem(&current) {
            Ok(anchors) => {
                tracing::info!(path = %path.display(), roots = anchors.len(), "trust anchors changed; reloaded");
                tls.set_trust_anchors(anchors);
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "the new trust anchors are invalid; keeping the current ones");
            }
        }
        last = Some(current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_between_60_and_70_percent_of_the_remaining_lifetime() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for _ in 0..1000 {
            let wait = renew_after(now + Duration::from_secs(100), now);
            assert!(
                wait >= Duration::from_secs(60) && wait <= Duration::from_secs(70),
                "{wait:?}"
            );
        }
        assert_eq!(renew_after(now, now), Duration::from_millis(100));
    }
}
