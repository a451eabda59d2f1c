//! Shared by the controller's integration tests: a real controller on
//! 127.0.0.1:0 with a local CA in a temporary state directory, a real gRPC
//! client over TLS, and CSRs of every kind.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls_pki_types::CertificateSigningRequestDer;
use weft_api::Identity;
use weft_api::control::ControlClient;
use weft_api::tls::{MeshTls, TrustAnchors};
use weft_controller::bootstrap::BootstrapTokens;
use weft_controller::{Controller, Settings};

pub struct TestController {
    pub controller: Controller,
    pub tokens: Arc<BootstrapTokens>,
    pub state: tempfile::TempDir,
}

impl TestController {
    pub async fn start(lifetime: Duration) -> Self {
        let state = tempfile::tempdir().expect("a temporary directory");
        Self::start_in(state, lifetime).await
    }

    pub async fn start_in(state: tempfile::TempDir, lifetime: Duration) -> Self {
        let tokens = Arc::new(BootstrapTokens::new(state.path()));
        let settings = settings(&state, lifetime);
        let controller = Controller::start(settings, tokens.clone())
            .await
            .expect("the controller starts");
        Self {
            controller,
            tokens,
            state,
        }
    }

    pub fn issuer_dir(&self) -> PathBuf {
        self.state.path().join("issuer")
    }

    pub fn audit_path(&self) -> PathBuf {
        self.state.path().join("audit.log")
    }

    /// A client trusting the anchors in the issuer directory right now.
    pub fn client(&self) -> ControlClient {
        let anchors = std::fs::read(self.issuer_dir().join("ca.crt")).expect("ca.crt");
        let tls = MeshTls::new(TrustAnchors::from_pem(&anchors).expect("anchors"));
        self.client_with(tls, self.controller.identity().clone())
    }

    pub fn client_with(&self, tls: Arc<MeshTls>, expected: Identity) -> ControlClient {
        ControlClient::new(&self.controller.grpc_addr().to_string(), tls, expected)
            .expect("a valid address")
    }

    pub fn token(&self, identity: &Identity) -> weft_api::certify::IdentityToken {
        self.tokens
            .issue(identity, Duration::from_secs(600))
            .expect("a bootstrap token")
    }
}

pub fn settings(state: &tempfile::TempDir, lifetime: Duration) -> Settings {
    Settings {
        trust_domain: "cluster.local".into(),
        issuer_dir: state.path().join("issuer"),
        generate_issuer: true,
        issuer_poll: Duration::from_millis(100),
        cert_lifetime: lifetime,
        grpc_addr: "127.0.0.1:0".parse().expect("an address"),
        admin_addr: "127.0.0.1:0".parse().expect("an address"),
        audit_path: state.path().join("audit.log"),
    }
}

pub fn identity(sa: &str) -> Identity {
    Identity::new("cluster.local", "shop", sa).expect("a valid identity")
}

/// A CSR with the given SANs, signed by a fresh key of `alg`.
pub fn csr_with(
    alg: &'static rcgen::SignatureAlgorithm,
    sans: Vec<SanType>,
) -> CertificateSigningRequestDer<'static> {
    let key = KeyPair::generate_for(alg).expect("a key");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.serialize_request(&key).expect("a CSR").der().clone()
}

pub fn uri(identity: &Identity) -> SanType {
    SanType::URI(identity.to_string().try_into().expect("an IA5 string"))
}

/// A valid CSR whose signature no longer verifies: the last byte of the
/// signature (inside the DER of the ECDSA signature's last integer) is flipped.
pub fn csr_with_bad_signature(identity: &Identity) -> CertificateSigningRequestDer<'static> {
    let (_, csr) = weft_controller::ca::new_key_and_csr(identity).expect("a CSR");
    let mut der = csr.as_ref().to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    CertificateSigningRequestDer::from(der)
}
