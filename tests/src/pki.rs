//! A test PKI: a root, an intermediate, and leaves made to order (including
//! the malformed and expired ones the proxy must refuse).

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};
use weft_api::tls::{Credentials, MeshTls, TrustAnchors};

/// A root and an intermediate that issues leaves.
pub struct TestCa {
    root_pem: String,
    root_der: CertificateDer<'static>,
    intermediate_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate with its chain and key, as PEM.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// Leaf then intermediate.
    pub chain_pem: String,
    pub key_pem: String,
}

/// How to make a leaf.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub sans: Vec<SanType>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A valid leaf for `identity`, from an hour ago to a day from now.
    pub fn identity(identity: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            sans: vec![SanType::URI(
                identity.try_into().expect("test identities are ASCII"),
            )],
            not_before: now - Duration::hours(1),
            not_after: now + Duration::hours(24),
        }
    }
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let root_key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key generation");
        let root_params = ca_params(&format!("{name} root"));
        let root = root_params
            .self_signed(&root_key)
            .expect("self-signed root");
        let root_issuer = Issuer::new(root_params, root_key);

        let int_key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key generation");
        let int_params = ca_params(&format!("{name} issuer"));
        let intermediate = int_params
            .signed_by(&int_key, &root_issuer)
            .expect("intermediate signed by root");
        Self {
            root_pem: root.pem(),
            root_der: root.der().clone(),
            intermediate_pem: intermediate.pem(),
            issuer: Issuer::new(int_params, int_key),
        }
    }

    /// The trust anchor bundle (the root) as PEM.
    pub fn anchors_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn root_der(&self) -> CertificateDer<'static> {
        self.root_der.clone()
    }

    pub fn trust_anchors(&self) -> TrustAnchors {
        TrustAnchors::from_pem(self.root_pem.as_bytes()).expect("test root is a valid anchor")
    }

    /// A valid leaf for `identity`.
    pub fn issue(&self, identity: &str) -> Leaf {
        self.issue_spec(&LeafSpec::identity(identity))
    }

    /// A leaf as `spec` says, valid or not.
    pub fn issue_spec(&self, spec: &LeafSpec) -> Leaf {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key generation");
        let mut params = CertificateParams::default();
        params.subject_alt_names = spec.sans.clone();
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).expect("leaf signed");
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.intermediate_pem),
            key_pem: key.serialize_pem(),
        }
    }

    /// The TLS state of a workload with a valid leaf for `identity`.
    pub fn mesh_tls(&self, identity: &str) -> Arc<MeshTls> {
        let tls = MeshTls::new(self.trust_anchors());
        tls.set_credentials(self.issue(identity).credentials());
        tls
    }
}

impl Leaf {
    pub fn credentials(&self) -> Credentials {
        Credentials::from_pem(self.chain_pem.as_bytes(), self.key_pem.as_bytes())
            .expect("test leaf makes valid credentials")
    }

    /// The chain and key as DER, for building raw rustls configurations.
    pub fn der(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let chain = weft_api::tls::certs_from_pem(self.chain_pem.as_bytes(), "test chain")
            .expect("test chain parses");
        let key = KeyPair::from_pem(&self.key_pem).expect("test key parses");
        (
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(365);
    params
}
