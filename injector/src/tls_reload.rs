//! The webhook's serving certificate, read from files and swapped in when they
//! change: every TLS handshake asks [`ServingCert`] (a rustls certificate
//! resolver over an `ArcSwap`) for the pair in use, so a rotation needs no
//! restart and connections already open keep theirs. A new pair that does not
//! load (half-written, key not matching) is logged and the current one kept.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::reload;

/// Why a certificate and key pair cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum ServingCertError {
    #[error("{file}: {reason}; it must hold the PEM certificate chain, leaf first")]
    Chain { file: PathBuf, reason: String },
    #[error("{file}: {reason}; it must hold one PEM private key (PKCS#8, SEC1 or PKCS#1)")]
    Key { file: PathBuf, reason: String },
    #[error(
        "the key in {key} does not belong to the certificate in {cert} ({reason}); write both from the same Secret"
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot read the serving certificate: {0}")]
    Read(String),
}

/// A loaded pair.
#[derive(Debug)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub not_after: SystemTime,
}

/// The serving certificate in use (none until a pair loads), and where it is read from.
#[derive(Debug)]
pub struct ServingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwapOption<Loaded>,
    metrics: Arc<Metrics>,
}

impl ServingCert {
    /// Reads the pair now; when it cannot be loaded the error is returned and the
    /// resolver holds nothing until [`ServingCert::watch`] sees a good pair.
    pub fn new(
        cert_file: PathBuf,
        key_file: PathBuf,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, Result<(), ServingCertError>) {
        let serving = Arc::new(Self {
            cert_file,
            key_file,
            current: ArcSwapOption::empty(),
            metrics,
        });
        let loaded = serving.reload();
        (serving, loaded)
    }

    /// Reads the files and installs the pair they hold.
    pub fn reload(&self) -> Result<(), ServingCertError> {
        let contents = reload::read_all(&self.paths()).map_err(ServingCertError::Read)?;
        self.install(&contents)
    }

    /// The notAfter of the pair in use, if one is loaded.
    pub fn not_after(&self) -> Option<SystemTime> {
        self.current.load().as_ref().map(|l| l.not_after)
    }

    /// The pair in use.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.current.load_full()
    }

    /// A rustls server configuration that asks this resolver at every
    /// handshake. TLS 1.3 with the mesh's provider (the API server speaks it);
    /// ALPN h2 and http/1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(weft_api::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Polls the files every `interval` until `shutdown` and installs a pair that
    /// changed; a pair that does not load is counted, logged, and the current one kept.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let initial = reload::read_all(&self.paths()).ok();
        let this = self.clone();
        reload::watch_files(
            "serving certificate",
            self.paths(),
            interval,
            initial,
            shutdown,
            move |contents| {
                let result = this.install(contents);
                this.metrics.serving_cert_reload(result.is_ok());
                result.map_err(|e| e.to_string())
            },
        )
        .await;
    }

    fn paths(&self) -> Vec<PathBuf> {
        vec![self.cert_file.clone(), self.key_file.clone()]
    }

    fn install(&self, contents: &reload::Contents) -> Result<(), ServingCertError> {
        let [cert_pem, key_pem] = contents.as_slice() else {
            return Err(ServingCertError::Read("expected two files".into()));
        };
        let loaded = self.parse(cert_pem, key_pem)?;
        tracing::info!(
            cert = %self.cert_file.display(),
            not_after = ?loaded.not_after,
            "serving certificate installed"
        );
        self.metrics.set_serving_cert_expiry(loaded.not_after);
        self.current.store(Some(Arc::new(loaded)));
        Ok(())
    }

    fn parse(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<Loaded, ServingCertError> {
        let chain = weft_api::tls::certs_from_pem(cert_pem, "the serving certificate chain")
            .map_err(|e| ServingCertError::Chain {
                file: self.cert_file.clone(),
                reason: e.to_string(),
            })?;
        let key_error = |reason: String| ServingCertError::Key {
            file: self.key_file.clone(),
            reason,
        };
        let key = rustls_pemfile::private_key(&mut &*key_pem)
            .map_err(|e| key_error(e.to_string()))?
            .ok_or_else(|| key_error("no private key found".into()))?;
        let not_after =
            weft_api::tls::not_after(&chain[0]).map_err(|e| ServingCertError::Chain {
                file: self.cert_file.clone(),
                reason: e.to_string(),
            })?;
        let certified = CertifiedKey::from_der(chain, key, &weft_api::tls::crypto_provider())
            .map_err(|e| ServingCertError::Mismatch {
                cert: self.cert_file.clone(),
                key: self.key_file.clone(),
                reason: e.to_string(),
            })?;
        Ok(Loaded {
            key: Arc::new(certified),
            not_after,
        })
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|l| l.key.clone())
    }
}
