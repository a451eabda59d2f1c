//! Peers the proxy must refuse, each with a precise error and no crash: after
//! every refusal the same proxies still serve a good client.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rcgen::SanType;
use rustls::pki_types::ServerName;
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_api::consts::PROXY_ERROR_HEADER;
use weft_api::tls::{MeshTls, crypto_provider};
use weft_proxy::ProxyHandle;
use weft_tests::apps;
use weft_tests::mesh::{CLIENT_ID, SERVER_ID, client_proxy, metrics_reaching, server_proxy};
use weft_tests::pki::{LeafSpec, TestCa};

struct Answer {
    status: StatusCode,
    error: Option<String>,
    body: String,
}

/// One HTTP/1.1 GET through an upstream listener.
async fn get(entry: SocketAddr) -> Answer {
    let tcp = TcpStream::connect(entry).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let rsp = tx
        .send_request(
            Request::get("/")
                .header("host", "checkout")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = rsp.status();
    let error = rsp
        .headers()
        .get(PROXY_ERROR_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    let body =
        String::from_utf8(rsp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Answer {
        status,
        error,
        body,
    }
}

/// A good client proxy for `server` still gets through.
async fn still_serves(ca: &TestCa, server: &ProxyHandle) {
    let client = client_proxy(
        ca.mesh_tls(CLIENT_ID),
        "checkout",
        server.inbound_addr,
        SERVER_ID,
        false,
    )
    .await;
    let answer = get(client.upstream_addr("checkout").unwrap()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_presenting_another_identity_is_refused() {
    let ca = TestCa::new("weft test");
    let server = server_proxy(ca.mesh_tls(SERVER_ID), apps::http_echo().await).await;
    let expected = "spiffe://cluster.local/ns/shop/sa/payments";
    let client = client_proxy(
        ca.mesh_tls(CLIENT_ID),
        "checkout",
        server.inbound_addr,
        expected,
        false,
    )
    .await;
    let answer = get(client.upstream_addr("checkout").unwrap()).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.error.as_deref(), Some("identity-mismatch"));
    assert!(
        answer.body.contains(expected) && answer.body.contains(SERVER_ID),
        "the error names both identities: {}",
        answer.body
    );
    still_serves(&ca, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_another_ca_is_refused() {
    let ca = TestCa::new("weft test");
    let rogue = TestCa::new("rogue");
    let server = server_proxy(ca.mesh_tls(SERVER_ID), apps::http_echo().await).await;
    // The rogue client trusts the real CA (so it accepts the server) but holds
    // a certificate from another CA.
    let tls = MeshTls::new(ca.trust_anchors());
    tls.set_credentials(rogue.issue(CLIENT_ID).credentials());
    let client = client_proxy(tls, "checkout", server.inbound_addr, SERVER_ID, false).await;
    let answer = get(client.upstream_addr("checkout").unwrap()).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.body);
    assert_eq!(
        answer.error.as_deref(),
        Some("tls-failure"),
        "{}",
        answer.body
    );
    let (value, m) = metrics_reaching(
        &server,
        "weft_tls_handshake_errors_total{direction=\"inbound\",reason=\"tls-failure\"}",
        1.0,
    )
    .await;
    assert_eq!(value, Some(1.0), "{m}");
    still_serves(&ca, &server).await;
}

fn expired(identity: &str) -> LeafSpec {
    let now = OffsetDateTime::now_utc();
    LeafSpec {
        not_before: now - Duration::days(2),
        not_after: now - Duration::days(1),
        ..LeafSpec::identity(identity)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificates_are_refused_on_both_sides() {
    let ca = TestCa::new("weft test");

    // A server with an expired certificate.
    let tls = MeshTls::new(ca.trust_anchors());
    tls.set_credentials(ca.issue_spec(&expired(SERVER_ID)).credentials());
    let stale_server = server_proxy(tls, apps::http_echo().await).await;
    let client = client_proxy(
        ca.mesh_tls(CLIENT_ID),
        "checkout",
        stale_server.inbound_addr,
        SERVER_ID,
        false,
    )
    .await;
    let answer = get(client.upstream_addr("checkout").unwrap()).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.error.as_deref(), Some("tls-failure"));
    assert!(answer.body.contains("expired"), "{}", answer.body);

    // A client with an expired certificate.
    let server = server_proxy(ca.mesh_tls(SERVER_ID), apps::http_echo().await).await;
    let tls = MeshTls::new(ca.trust_anchors());
    tls.set_credentials(ca.issue_spec(&expired(CLIENT_ID)).credentials());
    let client = client_proxy(tls, "checkout", server.inbound_addr, SERVER_ID, false).await;
    let answer = get(client.upstream_addr("checkout").unwrap()).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.error.as_deref(), Some("tls-failure"));
    assert!(
        answer.body.to_lowercase().contains("expired"),
        "{}",
        answer.body
    );
    still_serves(&ca, &server).await;
}

fn no_uri_san() -> LeafSpec {
    LeafSpec {
        sans: vec![SanType::DnsName("checkout.shop.svc".try_into().unwrap())],
        ..LeafSpec::identity(SERVER_ID)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_without_a_uri_san_are_refused_on_both_sides() {
    let ca = TestCa::new("weft test");
    let leaf = ca.issue_spec(&no_uri_san());
    let err =
        weft_api::tls::Credentials::from_pem(leaf.chain_pem.as_bytes(), leaf.key_pem.as_bytes())
            .unwrap_err();
    assert!(err.to_string().contains("no URI SAN"), "{err}");

    // A raw TLS server presenting it: the client proxy refuses it.
    let (chain, key) = leaf.der();
    let server_config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_server = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let client = client_proxy(
        ca.mesh_tls(CLIENT_ID),
        "checkout",
        raw_server,
        SERVER_ID,
        false,
    )
    .await;
    let answer = get(client.upstream_addr("checkout").unwrap()).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.error.as_deref(), Some("tls-failure"));
    assert!(answer.body.contains("no URI SAN"), "{}", answer.body);

    // A raw TLS client presenting it: the server proxy refuses it.
    let server = server_proxy(ca.mesh_tls(SERVER_ID), apps::http_echo().await).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root_der()).unwrap();
    let mut client_config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_client_auth_cert(chain, key)
        .unwrap();
    client_config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = TcpStream::connect(server.inbound_addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("checkout").unwrap(), tcp)
        .await
        .unwrap();
    // TLS 1.3 clients learn of the refusal on their first read.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .ok();
    let mut buf = [0u8; 64];
    let read = tls.read(&mut buf).await;
    let refused = match read {
        Err(e) => e.to_string(),
        Ok(n) => panic!("server answered {n} bytes to a client without identity"),
    };
    assert!(refused.to_lowercase().contains("alert"), "{refused}");
    let (value, m) = metrics_reaching(
        &server,
        "weft_tls_handshake_errors_total{direction=\"inbound\",reason=\"tls-failure\"}",
        1.0,
    )
    .await;
    assert_eq!(value, Some(1.0), "{m}");
    still_serves(&ca, &server).await;
}

/// For the raw client above: it is the server that is under test.
#[derive(Debug)]
struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
