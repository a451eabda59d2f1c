//! Mesh TLS: the only place where weft configures rustls.
//!
//! - TLS 1.3 only, the aws-lc-rs provider, X25519MLKEM768 preferred.
//! - A workload's identity is the one URI SAN of its leaf certificate
//!   ([`peer_identity`]); a certificate without exactly one valid SPIFFE URI SAN is
//!   refused during the handshake.
//! - The client checks that the server presents the identity discovery named for the
//!   endpoint ([`MeshTls::client_config`]); the server requires a client certificate
//!   that chains to the trust anchors.
//! - Credentials and trust anchors live behind [`MeshTls`] and can be swapped at any
//!   time ([`MeshTls::set_credentials`], [`MeshTls::set_trust_anchors`]): every
//!   configuration handed out reads them at handshake time, so renewal drops no
//!   connection and needs no rebuild.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};

use crate::consts::alpn;
use crate::identity::{Identity, IdentityError};

/// Errors building mesh TLS material. Each names what was being read.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("could not read PEM {what}: {source}")]
    Pem {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} holds no certificate; expected at least one PEM CERTIFICATE block")]
    NoCertificates { what: &'static str },
    #[error("the private key PEM holds no PKCS#8, SEC1 or PKCS#1 private key")]
    NoPrivateKey,
    #[error("the private key is not usable: {0}")]
    Key(#[source] rustls::Error),
    #[error("the private key does not belong to the leaf certificate: {0}")]
    KeyMismatch(#[source] rustls::Error),
    #[error("the leaf certificate carries no usable workload identity: {0}")]
    LeafIdentity(#[source] PeerIdentityError),
    #[error("trust anchor {index} of the bundle is not a usable CA certificate: {source}")]
    BadAnchor {
        index: usize,
        #[source]
        source: rustls::Error,
    },
    #[error("could not build the client certificate verifier: {0}")]
    Verifier(String),
}

/// Why the identity of a peer certificate could not be established, or was not
/// the expected one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("peer certificate could not be parsed as X.509: {0}")]
    Parse(String),
    #[error(
        "peer certificate has no URI SAN; a mesh certificate carries exactly one spiffe:// URI SAN"
    )]
    NoUriSan,
    #[error(
        "peer certificate has {0} URI SANs; a mesh certificate carries exactly one spiffe:// URI SAN"
    )]
    MultipleUriSans(usize),
    #[error("peer certificate URI SAN is not a weft identity: {0}")]
    Invalid(#[from] IdentityError),
    #[error("server identity mismatch: expected {expected}, the server presented {presented}")]
    Mismatch {
        expected: Box<Identity>,
        presented: Box<Identity>,
    },
}

impl PeerIdentityError {
    /// Finds a `PeerIdentityError` carried inside a rustls error, as raised by
    /// the verifiers of this module.
    pub fn from_rustls(err: &rustls::Error) -> Option<&Self> {
        match err {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                other.0.downcast_ref::<Self>()
            }
            _ => None,
        }
    }
}

/// The crypto provider of the mesh: aws-lc-rs, TLS 1.3 suites only, hybrid
/// post-quantum key exchange preferred.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            use rustls::crypto::aws_lc_rs::{self as aws, cipher_suite, kx_group};
            Arc::new(CryptoProvider {
                cipher_suites: vec![
                    cipher_suite::TLS13_AES_128_GCM_SHA256,
                    cipher_suite::TLS13_AES_256_GCM_SHA384,
                    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
                ],
                kx_groups: vec![
                    kx_group::X25519MLKEM768,
                    kx_group::X25519,
                    kx_group::SECP256R1,
                ],
                ..aws::default_provider()
            })
        })
        .clone()
}

/// Reads the identity of a peer from its leaf certificate: exactly one URI SAN,
/// which must be a valid weft identity.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Result<Identity, PeerIdentityError> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| PeerIdentityError::Parse(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| PeerIdentityError::Parse(e.to_string()))?;
    let uris: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [] => Err(PeerIdentityError::NoUriSan),
        [one] => Ok(one.parse()?),
        many => Err(PeerIdentityError::MultipleUriSans(many.len())),
    }
}

/// The validity end of a certificate.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<SystemTime, PeerIdentityError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| PeerIdentityError::Parse(e.to_string()))?;
    let secs = parsed.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// The serial number of a certificate, as lowercase hex of its DER bytes (the
/// form the controller's audit trail records).
pub fn serial_hex(cert: &CertificateDer<'_>) -> Result<String, PeerIdentityError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| PeerIdentityError::Parse(e.to_string()))?;
    Ok(parsed
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Parses every certificate of a PEM bundle.
pub fn certs_from_pem(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut &*pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates { what });
    }
    Ok(certs)
}

/// The set of roots a workload trusts. May hold several during a rotation.
#[derive(Clone)]
pub struct TrustAnchors {
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl TrustAnchors {
    pub fn from_pem(pem: &[u8]) -> Result<Self, TlsError> {
        Self::from_der(certs_from_pem(pem, "trust anchor bundle")?)
    }

    pub fn from_der(certs: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        if certs.is_empty() {
            return Err(TlsError::NoCertificates {
                what: "trust anchor bundle",
            });
        }
        let mut roots = RootCertStore::empty();
        for (index, cert) in certs.into_iter().enumerate() {
            roots
                .add(cert)
                .map_err(|source| TlsError::BadAnchor { index, source })?;
        }
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), crypto_provider())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        Ok(Self {
            roots,
            client_verifier,
        })
    }

    pub fn len(&self) -> usize {
        self.roots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }
}

impl fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustAnchors")
            .field("roots", &self.roots.len())
            .finish()
    }
}

/// A workload's own certificate chain and key, with the identity it proves.
#[derive(Clone)]
pub struct Credentials {
    key: Arc<CertifiedKey>,
    identity: Identity,
    not_after: SystemTime,
}

impl Credentials {
    /// Builds credentials from a PEM chain (leaf first) and a PEM private key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let chain = certs_from_pem(chain_pem, "certificate chain")?;
        let key = rustls_pemfile::private_key(&mut &*key_pem)
            .map_err(|source| TlsError::Pem {
                what: "private key",
                source,
            })?
            .ok_or(TlsError::NoPrivateKey)?;
        Self::from_der(chain, key)
    }

    /// Builds credentials from a DER chain (leaf first) and a DER private key.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let leaf = chain.first().ok_or(TlsError::NoCertificates {
            what: "certificate chain",
        })?;
        let identity = peer_identity(leaf).map_err(TlsError::LeafIdentity)?;
        let not_after = not_after(leaf).map_err(TlsError::LeafIdentity)?;
        let signing_key = crypto_provider()
            .key_provider
            .load_private_key(key)
            .map_err(TlsError::Key)?;
        let certified = CertifiedKey::new(chain, signing_key);
        certified.keys_match().map_err(TlsError::KeyMismatch)?;
        Ok(Self {
            key: Arc::new(certified),
            identity,
            not_after,
        })
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.key.cert
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The shared, swappable TLS state of one workload.
pub struct MeshTls {
    state: Arc<State>,
    server: Arc<ServerConfig>,
    clients: Mutex<ClientConfigs>,
}

/// Client configurations by expected server identity and ALPN protocol.
type ClientConfigs = HashMap<(Identity, &'static [u8]), Arc<ClientConfig>>;

struct State {
    anchors: ArcSwap<TrustAnchors>,
    credentials: ArcSwapOption<Credentials>,
}

impl MeshTls {
    /// Creates the TLS state of a workload that trusts `anchors`. It cannot
    /// complete a handshake until [`MeshTls::set_credentials`] is called.
    pub fn new(anchors: TrustAnchors) -> Arc<Self> {
        let state = Arc::new(State {
            anchors: ArcSwap::from_pointee(anchors),
            credentials: ArcSwapOption::empty(),
        });
        let mut server = ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the aws-lc-rs provider supports TLS 1.3")
            .with_client_cert_verifier(Arc::new(MeshClientVerifier {
                state: state.clone(),
                mandatory: true,
            }))
            .with_cert_resolver(Arc::new(Resolver(state.clone())));
        server.alpn_protocols = vec![
            alpn::H2.to_vec(),
            alpn::HTTP1.to_vec(),
            alpn::OPAQUE.to_vec(),
        ];
        Arc::new(Self {
            state,
            server: Arc::new(server),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Swaps in a new certificate and key. Established connections keep
    /// theirs; every new handshake uses the new one.
    pub fn set_credentials(&self, credentials: Credentials) {
        tracing::debug!(identity = %credentials.identity, "installing workload certificate");
        self.state.credentials.store(Some(Arc::new(credentials)));
    }

    /// Swaps in a new trust anchor bundle.
    pub fn set_trust_anchors(&self, anchors: TrustAnchors) {
        tracing::debug!(roots = anchors.len(), "installing trust anchors");
        self.state.anchors.store(Arc::new(anchors));
    }

    /// The current credentials, if any have been installed.
    pub fn credentials(&self) -> Option<Arc<Credentials>> {
        self.state.credentials.load_full()
    }

    pub fn trust_anchors(&self) -> Arc<TrustAnchors> {
        self.state.anchors.load_full()
    }

    /// The server configuration: requires a client certificate from the mesh and
    /// offers ALPN `h2`, `http/1.1` and the opaque protocol.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// A client configuration that accepts only a server proving `expected`,
    /// offering the single ALPN protocol `alpn`.
    pub fn client_config(&self, expected: &Identity, alpn: &'static [u8]) -> Arc<ClientConfig> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(config) = clients.get(&(expected.clone(), alpn)) {
            return config.clone();
        }
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the aws-lc-rs provider supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(MeshServerVerifier {
                state: self.state.clone(),
                expected: expected.clone(),
            }))
            .with_client_cert_resolver(Arc::new(Resolver(self.state.clone())));
        config.alpn_protocols = vec![alpn.to_vec()];
        config.enable_sni = false;
        let config = Arc::new(config);
        clients.insert((expected.clone(), alpn), config.clone());
        config
    }
}

impl fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshTls")
            .field("identity", &self.credentials().map(|c| c.identity.clone()))
            .field("anchors", &self.state.anchors.load().len())
            .finish()
    }
}

/// Hands the current credentials to rustls at each handshake, on both sides.
#[derive(Debug)]
struct Resolver(Arc<State>);

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.credentials.load().as_ref().map(|c| c.key.clone())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.credentials.load().as_ref().map(|c| c.key.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.credentials.load().is_some()
    }
}

fn identity_error(e: PeerIdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &crypto_provider().signature_verification_algorithms,
    )
}

fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    // Unreachable in practice: every configuration here allows TLS 1.3 only.
    Err(rustls::Error::General(
        "TLS 1.2 is not accepted by the mesh".into(),
    ))
}

/// Client side: the server's chain must lead to a trust anchor, and its
/// identity must be the expected one.
#[derive(Debug)]
struct MeshServerVerifier {
    state: Arc<State>,
    expected: Identity,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        let anchors = self.state.anchors.load();
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &anchors.roots,
            intermediates,
            now,
            crypto_provider().signature_verification_algorithms.all,
        )?;
        let presented = peer_identity(end_entity).map_err(identity_error)?;
        if presented != self.expected {
            return Err(identity_error(PeerIdentityError::Mismatch {
                expected: Box::new(self.expected.clone()),
                presented: Box::new(presented),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Server side: a client certificate is mandatory (unless `mandatory` is
/// false), must chain to a trust anchor, and must carry exactly one identity.
#[derive(Debug)]
struct MeshClientVerifier {
    state: Arc<State>,
    mandatory: bool,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; mesh clients hold exactly one certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verifier = self.state.anchors.load().client_verifier.clone();
        verifier.verify_client_cert(end_entity, intermediates, now)?;
        peer_identity(end_entity).map_err(identity_error)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl MeshTls {
    /// A server configuration that presents this workload's certificate but asks
    /// the client for none, offering the single ALPN protocol `alpn`.
    ///
    /// For the controller's gRPC endpoint: a proxy calls `Identity.Certify`
    /// before it has a certificate. The server's certificate is read at each
    /// handshake, so [`MeshTls::set_credentials`] renews it in place.
    pub fn server_config_without_client_auth(&self, alpn: &'static [u8]) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the aws-lc-rs provider supports TLS 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.state.clone())));
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }

    /// A server configuration that presents this workload's certificate and
    /// asks the client for one without requiring it: a client that presents
    /// one must prove a mesh identity (checked like [`MeshTls::server_config`]),
    /// a client without one is let through and the service decides.
    ///
    /// For the controller's gRPC endpoint: `Identity.Certify` is called before
    /// the caller has a certificate, `Discovery.Watch` only with one.
    pub fn server_config_with_optional_client_auth(
        &self,
        alpn: &'static [u8],
    ) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the aws-lc-rs provider supports TLS 1.3")
            .with_client_cert_verifier(Arc::new(MeshClientVerifier {
                state: self.state.clone(),
                mandatory: false,
            }))
            .with_cert_resolver(Arc::new(Resolver(self.state.clone())));
        config.alpn_protocols = vec![alpn.to_vec()];
        // No resumption: a resumed session carries the client certificate of
        // the session it resumes, and a caller's first session (its
        // `Certify`) had none.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Arc::new(config)
    }
}
