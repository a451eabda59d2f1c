//! The mesh CA: trust anchor (root) -> issuer (intermediate, held here) -> leaf.
//!
//! - [`Issuer`]: the issuer certificate and key, and the trust anchors, read
//!   from the files the `weft-issuer` Secret holds (`tls.crt`, `tls.key`,
//!   `ca.crt`). Checked when loaded: the key belongs to the certificate, and a
//!   certificate it signs chains to one of the anchors.
//! - [`Ca`]: signs workload certificates with the current issuer, which can be
//!   swapped at any time ([`Ca::set_issuer`]; [`watch_issuer_dir`] reloads it
//!   when the files change).
//! - [`RootCa`]: generates a root and issuers under it: local mode's first
//!   start ([`load_or_generate`]), tests, and installation.
//!
//! A CSR is accepted only when its key is ECDSA P-256, its signature verifies
//! with that key, and it carries exactly one SAN: a URI SAN equal to the
//! identity the caller proved. The leaf carries only that URI SAN, EKU
//! serverAuth + clientAuth, and lives for the configured lifetime.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use tokio::sync::watch;
use weft_api::Identity;
use weft_api::certify::{Certified, Refusal, RefusalReason};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509CertificationRequest};

/// File of the issuer's certificate (PEM; further intermediates may follow it).
pub const ISSUER_CERT_FILE: &str = "tls.crt";
/// File of the issuer's private key (PEM).
pub const ISSUER_KEY_FILE: &str = "tls.key";
/// File of the trust anchors (PEM bundle; may hold several roots during a rotation).
pub const TRUST_ANCHORS_FILE: &str = "ca.crt";

/// How far a leaf's notBefore is set in the past, for clocks that lag a little.
pub const CLOCK_SKEW: Duration = Duration::from_secs(10);
/// The default lifetime of a workload certificate.
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Errors loading or generating issuer material. Each names the file or step.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("could not read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not valid: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error(
        "the issuer key ({ISSUER_KEY_FILE}) does not belong to the issuer certificate ({ISSUER_CERT_FILE})"
    )]
    KeyMismatch,
    #[error(
        "the issuer certificate is not a CA certificate (basicConstraints cA=true is required)"
    )]
    NotCa,
    #[error(
        "certificates signed by this issuer do not chain to the trust anchors ({TRUST_ANCHORS_FILE}): {0}; \
         the issuer must be signed by one of the anchors"
    )]
    Untrusted(String),
    #[error("could not generate {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
}

fn invalid(what: &'static str, reason: impl ToString) -> CaError {
    CaError::Invalid {
        what,
        reason: reason.to_string(),
    }
}

/// The three PEM documents of an issuer, as the `weft-issuer` Secret holds them.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuerPem {
    /// `tls.crt`: the issuer certificate, then any further intermediates.
    pub cert: String,
    /// `tls.key`: the issuer's private key.
    pub key: String,
    /// `ca.crt`: the trust anchors.
    pub anchors: String,
}

impl std::fmt::Debug for IssuerPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerPem").finish_non_exhaustive()
    }
}

impl IssuerPem {
    /// Reads the three files from `dir`.
    pub fn read(dir: &Path) -> Result<Self, CaError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| CaError::Read { path, source })
        };
        Ok(Self {
            cert: read(ISSUER_CERT_FILE)?,
            key: read(ISSUER_KEY_FILE)?,
            anchors: read(TRUST_ANCHORS_FILE)?,
        })
    }

    /// Writes the three files into `dir` (created if missing), each atomically;
    /// the key is readable by its owner only.
    pub fn write(&self, dir: &Path) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(|source| CaError::Write {
            path: dir.to_owned(),
            source,
        })?;
        write_atomic(
            &dir.join(TRUST_ANCHORS_FILE),
            self.anchors.as_bytes(),
            0o644,
        )?;
        write_atomic(&dir.join(ISSUER_KEY_FILE), self.key.as_bytes(), 0o600)?;
        write_atomic(&dir.join(ISSUER_CERT_FILE), self.cert.as_bytes(), 0o644)?;
        Ok(())
    }
}

/// Writes `contents` to a temporary file beside `path` and renames it over `path`.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let error = |source| CaError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(error)?;
    file.write_all(contents).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&tmp, path).map_err(error)
}

/// The issuer: an intermediate certificate with its key, and the trust anchors.
pub struct Issuer {
    signer: rcgen::Issuer<'static, KeyPair>,
    /// The issuer certificate, then any further intermediates: what a leaf
    /// needs to reach an anchor.
    chain: Vec<CertificateDer<'static>>,
    anchors: Vec<CertificateDer<'static>>,
    not_before: SystemTime,
    not_after: SystemTime,
    subject: String,
    pem: IssuerPem,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .field("anchors", &self.anchors.len())
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Loads the issuer from `tls.crt`, `tls.key` and `ca.crt` in `dir`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        Self::from_pem(IssuerPem::read(dir)?)
    }

    /// Builds the issuer from its PEM documents and checks that they fit together.
    pub fn from_pem(pem: IssuerPem) -> Result<Self, CaError> {
        let chain = weft_api::tls::certs_from_pem(pem.cert.as_bytes(), "issuer certificate")
            .map_err(|e| invalid("the issuer certificate (tls.crt)", e))?;
        let anchors = weft_api::tls::certs_from_pem(pem.anchors.as_bytes(), "trust anchors")
            .map_err(|e| invalid("the trust anchors (ca.crt)", e))?;
        let key =
            KeyPair::from_pem(&pem.key).map_err(|e| invalid("the issuer key (tls.key)", e))?;
        let cert = &chain[0];
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| invalid("the issuer certificate (tls.crt)", e))?;
        if !parsed.is_ca() {
            return Err(CaError::NotCa);
        }
        if parsed.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        {
            return Err(CaError::KeyMismatch);
        }
        let validity = parsed.validity();
        let not_before = unix_to_system(validity.not_before.timestamp());
        let not_after = unix_to_system(validity.not_after.timestamp());
        let subject = parsed.subject().to_string();
        let signer = rcgen::Issuer::from_ca_cert_der(cert, key)
            .map_err(|e| invalid("the issuer certificate (tls.crt)", e))?;
        let issuer = Self {
            signer,
            chain,
            anchors,
            not_before,
            not_after,
            subject,
            pem,
        };
        issuer.check_chains_to_anchors()?;
        Ok(issuer)
    }

    /// Signs a probe leaf and verifies it against the anchors, as a proxy would.
    fn check_chains_to_anchors(&self) -> Result<(), CaError> {
        let mut roots = rustls::RootCertStore::empty();
        for anchor in &self.anchors {
            roots
                .add(anchor.clone())
                .map_err(|e| invalid("the trust anchors (ca.crt)", e))?;
        }
        let probe_key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
                CaError::Generate {
                    what: "a probe key",
                    source,
                }
            })?;
        let identity =
            Identity::new("probe.invalid", "probe", "probe").expect("the probe identity is valid");
        // Verify in the middle of the issuer's validity, so an expired issuer
        // still loads (and is reported as expired when it is asked to sign).
        let middle = self.not_before
            + self
                .not_after
                .duration_since(self.not_before)
                .unwrap_or_default()
                / 2;
        let leaf = self
            .sign_leaf(&probe_key, &identity, middle, Duration::from_secs(60))
            .map_err(|source| CaError::Generate {
                what: "a probe certificate",
                source,
            })?;
        let parsed = rustls::server::ParsedCertificate::try_from(leaf.der())
            .map_err(|e| CaError::Untrusted(e.to_string()))?;
        let now = rustls_pki_types::UnixTime::since_unix_epoch(
            middle
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &self.chain,
            now,
            weft_api::tls::crypto_provider()
                .signature_verification_algorithms
                .all,
        )
        .map_err(|e| CaError::Untrusted(e.to_string()))
    }

    fn sign_leaf(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        identity: &Identity,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<rcgen::Certificate, rcgen::Error> {
        let (not_before, not_after) = self.leaf_validity(now, lifetime);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        params.signed_by(public_key, &self.signer)
    }

    /// The notBefore and notAfter of a leaf issued at `now`: backdated by
    /// [`CLOCK_SKEW`] and never outside the issuer's own validity.
    fn leaf_validity(&self, now: SystemTime, lifetime: Duration) -> (SystemTime, SystemTime) {
        let now = truncate_to_seconds(now);
        let not_before = (now - CLOCK_SKEW).max(self.not_before);
        let not_after = (now + lifetime).min(self.not_after);
        (not_before, not_after)
    }

    /// The issuer certificate and any further intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn trust_anchors(&self) -> &[CertificateDer<'static>] {
        &self.anchors
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The issuer's subject, for logs.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The PEM documents this issuer was built from.
    pub fn pem(&self) -> &IssuerPem {
        &self.pem
    }
}

/// A certificate the CA signed, with what the audit trail records of it.
#[derive(Clone, Debug)]
pub struct Issued {
    pub identity: Identity,
    pub certified: Certified,
    /// The serial number, lowercase hex.
    pub serial: String,
    pub not_before: SystemTime,
}

/// Signs workload certificates with the current issuer.
#[derive(Debug)]
pub struct Ca {
    issuer: watch::Sender<Arc<Issuer>>,
    lifetime: Duration,
}

impl Ca {
    pub fn new(issuer: Issuer, lifetime: Duration) -> Self {
        Self {
            issuer: watch::Sender::new(Arc::new(issuer)),
            lifetime,
        }
    }

    /// The current issuer.
    pub fn issuer(&self) -> Arc<Issuer> {
        self.issuer.borrow().clone()
    }

    /// Notified whenever the issuer is replaced.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Issuer>> {
        self.issuer.subscribe()
    }

    /// Replaces the issuer; certificates signed from now on use it.
    pub fn set_issuer(&self, issuer: Issuer) {
        tracing::info!(subject = %issuer.subject, not_after = ?issuer.not_after, "issuer installed");
        self.issuer.send_replace(Arc::new(issuer));
    }

    /// The lifetime of the certificates this CA signs.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Signs `csr` for `identity` (the identity the caller proved), now.
    pub fn sign(
        &self,
        csr: &CertificateSigningRequestDer<'_>,
        identity: &Identity,
    ) -> Result<Issued, Refusal> {
        self.sign_at(csr, identity, SystemTime::now())
    }

    /// Signs `csr` for `identity` as if the time were `now`.
    pub fn sign_at(
        &self,
        csr: &CertificateSigningRequestDer<'_>,
        identity: &Identity,
        now: SystemTime,
    ) -> Result<Issued, Refusal> {
        let public_key = check_csr(csr, identity)?;
        let issuer = self.issuer();
        if now < issuer.not_before || now >= issuer.not_after {
            return Err(Refusal::new(
                RefusalReason::IssuerExpired,
                format!(
                    "the issuer {} is valid from {} to {}, not now ({}); rotate the issuer \
                     (Secret weft-issuer, or the issuer files in local mode)",
                    issuer.subject,
                    rfc3339(issuer.not_before),
                    rfc3339(issuer.not_after),
                    rfc3339(now),
                ),
            ));
        }
        let cert = issuer
            .sign_leaf(&public_key, identity, now, self.lifetime)
            .map_err(|e| {
                Refusal::new(
                    RefusalReason::BadCsr,
                    format!("the certificate could not be built from the CSR: {e}"),
                )
            })?;
        let (not_before, not_after) = issuer.leaf_validity(now, self.lifetime);
        let leaf = cert.der().clone();
        let serial = serial_hex(&leaf);
        Ok(Issued {
            identity: identity.clone(),
            certified: Certified {
                leaf,
                chain: issuer.chain.clone(),
                valid_until: not_after,
            },
            serial,
            not_before,
        })
    }
}

/// Checks a CSR against the identity the caller proved and returns its public key.
pub fn check_csr(
    csr: &CertificateSigningRequestDer<'_>,
    identity: &Identity,
) -> Result<rcgen::SubjectPublicKeyInfo, Refusal> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
    };
    let bad = |detail: String| Refusal::new(RefusalReason::BadCsr, detail);
    let (rest, request) = X509CertificationRequest::from_der(csr.as_ref())
        .map_err(|e| bad(format!("the CSR is not DER PKCS#10: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("the CSR has trailing bytes after its DER".into()));
    }
    let info = &request.certification_request_info;
    let spki = &info.subject_pki;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err(bad(format!(
            "the CSR's key is {} (parameters {:?}); weft requires an ECDSA P-256 key",
            spki.algorithm.algorithm,
            curve.map(|c| c.to_id_string())
        )));
    }
    if request.signature_algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA256 {
        return Err(Refusal::new(
            RefusalReason::BadSignature,
            format!(
                "the CSR is signed with {}; weft requires ecdsa-with-SHA256",
                request.signature_algorithm.algorithm
            ),
        ));
    }
    let key = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
        spki.subject_public_key.data.as_ref(),
    );
    key.verify(info.raw, request.signature_value.data.as_ref())
        .map_err(|_| {
            Refusal::new(
                RefusalReason::BadSignature,
                "the CSR's signature does not verify with the CSR's own public key; sign the \
                 request with the key it carries",
            )
        })?;

    let mut uris = Vec::new();
    let mut others = Vec::new();
    for extension in request.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = extension {
            for name in &san.general_names {
                match name {
                    GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                    other => others.push(other.to_string()),
                }
            }
        }
    }
    let expected = identity.to_string();
    if uris.iter().any(|uri| *uri != expected) {
        let named: Vec<&String> = uris.iter().filter(|u| **u != expected).collect();
        return Err(Refusal::new(
            RefusalReason::OtherIdentity,
            format!(
                "the CSR names {named:?} but the token proves {expected}; a workload may only \
                 ask for its own identity"
            ),
        ));
    }
    if !others.is_empty() || uris.len() > 1 {
        return Err(Refusal::new(
            RefusalReason::ExtraSans,
            format!(
                "the CSR carries SANs besides its one URI SAN {expected}: {others:?}{}; remove them",
                if uris.len() > 1 {
                    format!(" (and {} copies of the URI SAN)", uris.len())
                } else {
                    String::new()
                }
            ),
        ));
    }
    if uris.is_empty() {
        return Err(bad(format!(
            "the CSR carries no URI SAN; it must carry exactly one, {expected}"
        )));
    }
    rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| bad(format!("the CSR's public key is not usable: {e}")))
}

/// A root CA that can issue issuers: local mode's first start, tests, installation.
pub struct RootCa {
    issuer: rcgen::Issuer<'static, KeyPair>,
    cert_pem: String,
    trust_domain: String,
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl RootCa {
    /// Generates a self-signed ECDSA P-256 root for `trust_domain`, valid from
    /// now (less an hour of clock skew) for `validity`.
    pub fn generate(trust_domain: &str, validity: Duration) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
            CaError::Generate {
                what: "the root key",
                source,
            }
        })?;
        let mut params = ca_params(
            &format!("weft root CA {trust_domain}"),
            BasicConstraints::Unconstrained,
        );
        let now = SystemTime::now();
        params.not_before = to_offset(now - Duration::from_secs(3600));
        params.not_after = to_offset(now + validity);
        let cert = params
            .self_signed(&key)
            .map_err(|source| CaError::Generate {
                what: "the root certificate",
                source,
            })?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// The root certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues an intermediate valid from `not_before` to `not_after`, and
    /// returns it as the three issuer documents, with this root as the anchor.
    pub fn issue_issuer(
        &self,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuerPem, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
            CaError::Generate {
                what: "the issuer key",
                source,
            }
        })?;
        let mut params = ca_params(
            &format!("weft issuer {}", self.trust_domain),
            BasicConstraints::Constrained(0),
        );
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CaError::Generate {
                what: "the issuer certificate",
                source,
            })?;
        Ok(IssuerPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
            anchors: self.cert_pem.clone(),
        })
    }
}

/// A webhook's serving certificate and the self-signed CA that signed it (the
/// CA's PEM is the webhook configuration's `caBundle`). Separate from the mesh
/// root: the API server trusts this CA for the webhook and for nothing else.
#[derive(Clone, PartialEq, Eq)]
pub struct ServingCertPem {
    /// The webhook CA certificate: the `caBundle`.
    pub ca: String,
    /// The serving certificate (`tls.crt`).
    pub cert: String,
    /// Its private key (`tls.key`).
    pub key: String,
}

impl std::fmt::Debug for ServingCertPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCertPem").finish_non_exhaustive()
    }
}

/// Generates a self-signed webhook CA named `ca_name` and a serving
/// certificate under it for `hosts` (DNS names, or IP addresses, each a SAN),
/// both valid from an hour ago for `validity`. The CA's key is not kept: a new
/// certificate means a new CA and a new `caBundle`.
pub fn generate_serving_cert(
    ca_name: &str,
    hosts: &[String],
    validity: Duration,
) -> Result<ServingCertPem, CaError> {
    let generate = |what| {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|source| CaError::Generate { what, source })
    };
    let now = SystemTime::now();
    let ca_key = generate("the webhook CA key")?;
    let mut ca = ca_params(ca_name, BasicConstraints::Constrained(0));
    ca.not_before = to_offset(now - Duration::from_secs(3600));
    ca.not_after = to_offset(now + validity);
    ca.serial_number = Some(random_serial());
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(|source| CaError::Generate {
            what: "the webhook CA certificate",
            source,
        })?;
    let signer = rcgen::Issuer::new(ca, ca_key);
    let key = generate("the serving key")?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "weft");
    if let Some(first) = hosts.first() {
        name.push(DnType::CommonName, first.as_str());
    }
    params.distinguished_name = name;
    params.subject_alt_names = hosts
        .iter()
        .map(|host| match host.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => host
                .as_str()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|source| CaError::Generate {
                    what: "the serving certificate's DNS name",
                    source,
                }),
        })
        .collect::<Result<_, _>>()?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = to_offset(now - Duration::from_secs(3600));
    params.not_after = to_offset(now + validity);
    let cert = params
        .signed_by(&key, &signer)
        .map_err(|source| CaError::Generate {
            what: "the serving certificate",
            source,
        })?;
    Ok(ServingCertPem {
        ca: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Checks, as a TLS client would at `now`, that the serving certificate
/// `cert_pem` (leaf first) chains to one of `ca_pem`'s certificates and is
/// valid for `host` (a DNS name or an IP address).
pub fn verify_serving_cert(
    ca_pem: &str,
    cert_pem: &str,
    host: &str,
    now: SystemTime,
) -> Result<(), CaError> {
    let anchors = weft_api::tls::certs_from_pem(ca_pem.as_bytes(), "CA bundle")
        .map_err(|e| invalid("the CA bundle", e))?;
    let chain = weft_api::tls::certs_from_pem(cert_pem.as_bytes(), "serving certificate")
        .map_err(|e| invalid("the serving certificate", e))?;
    let mut roots = rustls::RootCertStore::empty();
    for anchor in anchors {
        roots.add(anchor).map_err(|e| invalid("the CA bundle", e))?;
    }
    let parsed = rustls::server::ParsedCertificate::try_from(&chain[0])
        .map_err(|e| invalid("the serving certificate", e))?;
    let time = rustls_pki_types::UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &chain[1..],
        time,
        weft_api::tls::crypto_provider()
            .signature_verification_algorithms
            .all,
    )
    .map_err(|e| CaError::Untrusted(e.to_string()))?;
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| invalid("the server name", e))?;
    rustls::client::verify_server_name(&parsed, &name).map_err(|e| {
        invalid(
            "the serving certificate",
            format!("not valid for {host}: {e}"),
        )
    })
}

/// The subject and validity of one certificate of a PEM bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertValidity {
    pub subject: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The subject and validity of every certificate in the PEM bundle `pem`
/// (`what` names the bundle in errors).
pub fn pem_validity(pem: &str, what: &'static str) -> Result<Vec<CertValidity>, CaError> {
    weft_api::tls::certs_from_pem(pem.as_bytes(), what)
        .map_err(|e| invalid(what, e))?
        .iter()
        .map(|der| {
            let (_, cert) =
                x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| invalid(what, e))?;
            Ok(CertValidity {
                subject: cert.subject().to_string(),
                not_before: unix_to_system(cert.validity().not_before.timestamp()),
                not_after: unix_to_system(cert.validity().not_after.timestamp()),
            })
        })
        .collect()
}

fn ca_params(common_name: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "weft");
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Validity of the root generated in local mode.
pub const LOCAL_ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of the issuer generated in local mode.
pub const LOCAL_ISSUER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Local mode: loads the issuer from `dir`, or, when none of its files exist
/// yet, generates a root and an issuer there (the root's key is not kept).
pub fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<Issuer, CaError> {
    let present = [ISSUER_CERT_FILE, ISSUER_KEY_FILE, TRUST_ANCHORS_FILE]
        .iter()
        .filter(|f| dir.join(f).exists())
        .count();
    if present == 0 {
        tracing::info!(dir = %dir.display(), trust_domain, "generating a local root and issuer");
        let root = RootCa::generate(trust_domain, LOCAL_ROOT_VALIDITY)?;
        let now = SystemTime::now();
        root.issue_issuer(now - Duration::from_secs(3600), now + LOCAL_ISSUER_VALIDITY)?
            .write(dir)?;
    }
    Issuer::load(dir)
}

/// Polls the issuer files in `dir` every `interval` and installs the issuer
/// into `ca` when they change. A change that does not load (a half-written
/// Secret, a key that does not match) is logged and the current issuer kept;
/// the next poll tries again. Each change is counted in `metrics` (loaded or
/// refused; a refused change is counted once until the files change again).
/// Runs until the task is dropped.
pub async fn watch_issuer_dir(
    ca: Arc<Ca>,
    dir: PathBuf,
    interval: Duration,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut last_error: Option<String> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let pem = match IssuerPem::read(&dir) {
            Ok(pem) => pem,
            Err(e) => {
                if report_once(&mut last_error, e.to_string()) {
                    metrics.issuer_reload(false);
                }
                continue;
            }
        };
        if *ca.issuer().pem() == pem {
            continue;
        }
        match Issuer::from_pem(pem) {
            Ok(issuer) => {
                last_error = None;
                ca.set_issuer(issuer);
                metrics.issuer_reload(true);
            }
            Err(e) => {
                if report_once(&mut last_error, e.to_string()) {
                    metrics.issuer_reload(false);
                }
            }
        }
    }
}

/// Logs `error` unless it is the one logged last; whether it was logged.
fn report_once(last: &mut Option<String>, error: String) -> bool {
    if last.as_deref() == Some(error.as_str()) {
        return false;
    }
    tracing::error!(error = %error, "the issuer files changed but cannot be loaded; keeping the current issuer");
    *last = Some(error);
    true
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, and without a leading zero byte that DER would strip.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn serial_hex(leaf: &CertificateDer<'_>) -> String {
    x509_parser::parse_x509_certificate(leaf.as_ref())
        .map(|(_, cert)| {
            cert.raw_serial()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .unwrap_or_default()
}

fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(truncate_to_seconds(t))
}

fn unix_to_system(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

/// Formats a time as RFC 3339 (UTC, seconds).
pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(truncate_to_seconds(t))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// A key in memory and a CSR for an identity: defined in `weft-api`, which the
/// proxy shares.
pub use weft_api::certify::new_key_and_csr;
