//! The PKI of one benchmark run: a root, an intermediate and two leaves, written
//! as PEM files for every system under test.
//!
//! The leaves follow the mesh rules (one SPIFFE URI SAN, serverAuth + clientAuth)
//! and also carry `DNS:localhost` and `IP:127.0.0.1`, which HAProxy and nginx use
//! when they check a server name. The same files serve every system.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// Identity of the calling side (the client proxy).
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/bench/sa/client";
/// Identity of the called side (the server proxy).
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/bench/sa/server";
/// The DNS name the server leaf carries for HAProxy and nginx.
pub const SERVER_DNS: &str = "localhost";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("could not generate the {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("could not write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The files of one workload: its chain (leaf first), its key, and both in one
/// file (the form HAProxy's `crt` wants).
#[derive(Debug, Clone)]
pub struct LeafFiles {
    pub identity: String,
    pub chain: PathBuf,
    pub key: PathBuf,
    pub combined: PathBuf,
}

/// Every PEM file of a run.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
    /// The trust anchor (the root certificate).
    pub root: PathBuf,
    /// The intermediate, its key and the root, as a controller's issuer
    /// directory (`tls.crt`, `tls.key`, `ca.crt`).
    pub issuer_dir: PathBuf,
    pub client: LeafFiles,
    pub server: LeafFiles,
}

impl Pki {
    /// Generates a fresh root, intermediate and the client and server leaves
    /// into `dir`.
    pub fn generate(dir: &Path) -> Result<Self, PkiError> {
        let now = OffsetDateTime::now_utc();
        let gen_err = |what| move |source| PkiError::Generate { what, source };

        let mut root_params = ca_params("weft bench root", now);
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root_key = KeyPair::generate().map_err(gen_err("root key"))?;
        let root = CertifiedIssuer::self_signed(root_params, root_key)
            .map_err(gen_err("root certificate"))?;

        let mut inter_params = ca_params("weft bench intermediate", now);
        inter_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let inter_key = KeyPair::generate().map_err(gen_err("intermediate key"))?;
        let inter_key_pem = inter_key.serialize_pem();
        let inter = CertifiedIssuer::signed_by(inter_params, inter_key, &root)
            .map_err(gen_err("intermediate certificate"))?;

        let root_path = dir.join("root.pem");
        write(&root_path, &root.pem())?;
        // The intermediate as a controller's issuer (weft-policy's controller
        // signs the proxies' certificates with it, so that they chain to the
        // same root as every other system's).
        let issuer_dir = dir.join("issuer");
        fs::create_dir_all(&issuer_dir).map_err(|source| PkiError::Write {
            path: issuer_dir.clone(),
            source,
        })?;
        write(
            &issuer_dir.join(weft_controller::ca::ISSUER_CERT_FILE),
            &inter.pem(),
        )?;
        write(
            &issuer_dir.join(weft_controller::ca::ISSUER_KEY_FILE),
            &inter_key_pem,
        )?;
        write(
            &issuer_dir.join(weft_controller::ca::TRUST_ANCHORS_FILE),
            &root.pem(),
        )?;
        let client = leaf(dir, "client", CLIENT_ID, &inter, now)?;
        let server = leaf(dir, "server", SERVER_ID, &inter, now)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            root: root_path,
            issuer_dir,
            client,
            server,
        })
    }
}

fn ca_params(name: &str, now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(7);
    params
}

fn leaf(
    dir: &Path,
    name: &str,
    identity: &str,
    issuer: &CertifiedIssuer<'_, KeyPair>,
    now: OffsetDateTime,
) -> Result<LeafFiles, PkiError> {
    let gen_err = |what| move |source| PkiError::Generate { what, source };
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = vec![
        SanType::URI(identity.try_into().map_err(gen_err("leaf URI SAN"))?),
        SanType::DnsName(SERVER_DNS.try_into().map_err(gen_err("leaf DNS SAN"))?),
        SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(2);
    let key = KeyPair::generate().map_err(gen_err("leaf key"))?;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(gen_err("leaf certificate"))?;

    let chain_pem = format!("{}{}", cert.pem(), issuer.pem());
    let key_pem = key.serialize_pem();
    let files = LeafFiles {
        identity: identity.to_string(),
        chain: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        combined: dir.join(format!("{name}.pem")),
    };
    write(&files.chain, &chain_pem)?;
    write(&files.key, &key_pem)?;
    write(&files.combined, &format!("{chain_pem}{key_pem}"))?;
    Ok(files)
}

fn write(path: &Path, contents: &str) -> Result<(), PkiError> {
    fs::write(path, contents).map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::tls::{Credentials, TrustAnchors};

    #[test]
    fn leaves_are_mesh_credentials_that_chain_to_the_root() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::generate(dir.path()).expect("pki");
        let anchors = TrustAnchors::from_pem(&fs::read(&pki.root).expect("root")).expect("anchors");
        assert_eq!(anchors.len(), 1);
        for leaf in [&pki.client, &pki.server] {
            let creds = Credentials::from_pem(
                &fs::read(&leaf.chain).expect("chain"),
                &fs::read(&leaf.key).expect("key"),
            )
            .expect("mesh credentials");
            assert_eq!(creds.identity().to_string(), leaf.identity);
            assert_eq!(creds.chain().len(), 2, "leaf and intermediate");
            let combined = fs::read_to_string(&leaf.combined).expect("combined");
            assert_eq!(combined.matches("BEGIN CERTIFICATE").count(), 2);
            assert_eq!(combined.matches("PRIVATE KEY").count(), 2);
        }
    }
}
