//! `Identity.Certify` against a real controller: real gRPC over real TLS on
//! 127.0.0.1, local bootstrap tokens, the local CA.

mod support;

use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateSigningRequestDer;
use weft_api::certify::{CertifyRequest, IdentityToken, RefusalReason};
use weft_api::control::ControlError;
use weft_api::tls::{MeshTls, TrustAnchors};
use weft_controller::audit::{self, AuditEventKind};
use weft_controller::ca::{CLOCK_SKEW, new_key_and_csr};
use x509_parser::prelude::GeneralName;

use support::{TestController, csr_with, csr_with_bad_signature, identity, uri};

fn request(token: IdentityToken, csr: CertificateSigningRequestDer<'static>) -> CertifyRequest {
    CertifyRequest { token, csr }
}

#[tokio::test]
async fn issues_a_leaf_for_exactly_the_proven_identity() {
    let lifetime = Duration::from_secs(10);
    let test = TestController::start(lifetime).await;
    let id = identity("checkout");
    let (key, csr) = new_key_and_csr(&id).unwrap();
    let before = SystemTime::now();
    let certified = test
        .client()
        .certify(request(test.token(&id), csr))
        .await
        .expect("a certificate");

    let (_, leaf) = x509_parser::parse_x509_certificate(certified.leaf.as_ref()).unwrap();
    let san = leaf
        .subject_alternative_name()
        .unwrap()
        .expect("a SAN extension");
    assert!(san.critical, "the subject is empty, so the SAN is critical");
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(san.value.general_names.len(), 1, "{names:?}");
    assert!(
        matches!(san.value.general_names[0], GeneralName::URI(u) if u == id.to_string()),
        "{names:?}"
    );
    let eku = leaf
        .extended_key_usage()
        .unwrap()
        .expect("an EKU extension");
    assert!(eku.value.server_auth && eku.value.client_auth);
    assert!(!eku.value.any && !eku.value.code_signing);
    assert!(!leaf.is_ca());

    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    assert_eq!(
        not_after - not_before,
        (lifetime + CLOCK_SKEW).as_secs() as i64,
        "notAfter is the lifetime after issuance, notBefore is backdated by the clock skew"
    );
    let issued_at = before
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((not_after - issued_at - lifetime.as_secs() as i64).abs() <= 1);
    assert_eq!(
        certified
            .valid_until
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
        not_after
    );

    // The chain is the issuer, and it leads to the anchor: usable as mesh credentials.
    let issuer = test.controller.ca().issuer();
    assert_eq!(certified.chain, issuer.chain());
    let credentials =
        weft_api::tls::Credentials::from_der(certified.full_chain(), key).expect("credentials");
    assert_eq!(credentials.identity(), &id);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(issuer.trust_anchors()[0].clone()).unwrap();
    let parsed = rustls::server::ParsedCertificate::try_from(&certified.leaf).unwrap();
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &certified.chain,
        rustls_pki_types::UnixTime::now(),
        weft_api::tls::crypto_provider()
            .signature_verification_algorithms
            .all,
    )
    .expect("the leaf chains to the trust anchor");

    // Recorded: the controller's own certificate, then this one.
    let records = audit::verify(&test.audit_path()).unwrap();
    let last = records.last().unwrap();
    assert_eq!(last.event, AuditEventKind::Issued);
    assert_eq!(last.identity.as_deref(), Some(id.to_string().as_str()));
    let serial: String = leaf
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(last.serial.as_deref(), Some(serial.as_str()));
    assert!(last.peer.as_deref().unwrap().starts_with("127.0.0.1:"));
    test.controller.shutdown().await;
}

/// Each refusal, against the real endpoint, carries its reason to the client,
/// in the typed refusal and in the error text, and is counted and recorded.
#[tokio::test]
async fn every_refusal_names_its_reason() {
    let test = TestController::start(Duration::from_secs(60)).await;
    let id = identity("checkout");
    let csr = || new_key_and_csr(&id).unwrap().1;
    let tokens = &test.tokens;
    let cases: Vec<(RefusalReason, CertifyRequest)> = vec![
        (
            RefusalReason::TokenInvalid,
            request(IdentityToken::new("weft-bootstrap.forged").unwrap(), csr()),
        ),
        (
            RefusalReason::TokenExpired,
            request(tokens.issue(&id, Duration::ZERO).unwrap(), csr()),
        ),
        (
            RefusalReason::WrongAudience,
            request(
                tokens
                    .issue_for_audience(&id, "vault.example", Duration::from_secs(60))
                    .unwrap(),
                csr(),
            ),
        ),
        (
            RefusalReason::OtherIdentity,
            request(
                test.token(&id),
                new_key_and_csr(&identity("payments")).unwrap().1,
            ),
        ),
        (
            RefusalReason::ExtraSans,
            request(
                test.token(&id),
                csr_with(
                    &rcgen::PKCS_ECDSA_P256_SHA256,
                    vec![
                        uri(&id),
                        rcgen::SanType::DnsName("checkout.shop".try_into().unwrap()),
                    ],
                ),
            ),
        ),
        (
            RefusalReason::BadSignature,
            request(test.token(&id), csr_with_bad_signature(&id)),
        ),
        (
            RefusalReason::BadCsr,
            request(
                test.token(&id),
                csr_with(&rcgen::PKCS_ECDSA_P384_SHA384, vec![uri(&id)]),
            ),
        ),
        (
            RefusalReason::BadCsr,
            request(
                test.token(&id),
                CertificateSigningRequestDer::from(vec![0x30, 0x00]),
            ),
        ),
    ];
    let client = test.client();
    for (expected, request) in cases {
        let err = client.certify(request).await.expect_err("a refusal");
        let ControlError::Refused(refusal) = &err else {
            panic!("expected a refusal ({expected}), got {err:?}");
        };
        assert_eq!(refusal.reason, expected, "{err}");
        assert!(err.to_string().contains(expected.as_str()), "{err}");
    }

    let metrics = test.controller.metrics().encode();
    for (reason, count) in [
        ("token-invalid", 1),
        ("token-expired", 1),
        ("wrong-audience", 1),
        ("other-identity", 1),
        ("extra-sans", 1),
        ("bad-signature", 1),
        ("bad-csr", 2),
        ("issuer-expired", 0),
    ] {
        let line = format!("weft_certificates_refused_total{{reason=\"{reason}\"}} {count}");
        assert!(
            weft_tests::mesh::has(&metrics, &line),
            "{line} missing:\n{metrics}"
        );
    }
    let records = audit::verify(&test.audit_path()).unwrap();
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r.event == AuditEventKind::Refused)
        .map(|r| r.reason.clone().unwrap())
        .collect();
    assert_eq!(refused.len(), 8, "{refused:?}");
    // The identity the token proved is recorded with a CSR refusal.
    let other = records
        .iter()
        .find(|r| r.reason.as_deref() == Some("other-identity"))
        .unwrap();
    assert_eq!(other.identity.as_deref(), Some(id.to_string().as_str()));
    test.controller.shutdown().await;
}

#[tokio::test]
async fn an_expired_issuer_refuses_by_name_and_a_reload_recovers() {
    let test = TestController::start(Duration::from_secs(60)).await;
    let id = identity("checkout");
    let first_issuer = test.controller.ca().issuer();

    // Replace the issuer files with an issuer under a new root that expired an hour ago.
    let root = weft_controller::ca::RootCa::generate("cluster.local", Duration::from_secs(86_400))
        .unwrap();
    let now = SystemTime::now();
    root.issue_issuer(
        now - Duration::from_secs(7200),
        now - Duration::from_secs(3600),
    )
    .unwrap()
    .write(&test.issuer_dir())
    .unwrap();
    wait_for_issuer_change(&test, &first_issuer).await;

    // The controller's own certificate is still valid, so the endpoint answers.
    let client = test.client_with(
        MeshTls::new(TrustAnchors::from_der(first_issuer.trust_anchors().to_vec()).unwrap()),
        test.controller.identity().clone(),
    );
    let err = client
        .certify(request(test.token(&id), new_key_and_csr(&id).unwrap().1))
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, ControlError::Refused(r) if r.reason == RefusalReason::IssuerExpired),
        "{err}"
    );
    assert!(err.to_string().contains("issuer-expired"), "{err}");
    assert!(weft_tests::mesh::has(
        &test.controller.metrics().encode(),
        r#"weft_certificates_refused_total{reason="issuer-expired"} 1"#
    ));

    // A valid issuer under the same new root: certificates chain to it.
    let expired_issuer = test.controller.ca().issuer();
    let valid = root
        .issue_issuer(
            now - Duration::from_secs(60),
            now + Duration::from_secs(86_400),
        )
        .unwrap();
    valid.write(&test.issuer_dir()).unwrap();
    wait_for_issuer_change(&test, &expired_issuer).await;
    let issuer = test.controller.ca().issuer();
    let expiry = issuer
        .not_after()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expected = format!("weft_issuer_expiry_timestamp_seconds {expiry}");
    eventually(|| {
        let metrics = test.controller.metrics().encode();
        let found = metrics.contains(&expected);
        async move { if found { Ok(()) } else { Err(metrics) } }
    })
    .await;

    // The controller renewed its own certificate under the new root: a client
    // that trusts only the new root connects.
    let new_only = test.client_with(
        MeshTls::new(TrustAnchors::from_pem(root.cert_pem().as_bytes()).unwrap()),
        test.controller.identity().clone(),
    );
    let certified = eventually(|| {
        let client = new_only.clone();
        let id = id.clone();
        let token = test.token(&id);
        async move {
            client
                .certify(request(token, new_key_and_csr(&id).unwrap().1))
                .await
        }
    })
    .await;
    assert_eq!(certified.chain, issuer.chain());
    test.controller.shutdown().await;
}

#[tokio::test]
async fn a_broken_issuer_update_keeps_the_current_issuer() {
    let test = TestController::start(Duration::from_secs(60)).await;
    let current = test.controller.ca().issuer();
    // A key that belongs to another certificate.
    let other =
        weft_controller::ca::RootCa::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    let now = SystemTime::now();
    let stranger = other
        .issue_issuer(now, now + Duration::from_secs(3600))
        .unwrap();
    std::fs::write(test.issuer_dir().join("tls.key"), stranger.key).unwrap();
    // Wait until the watcher has read the change and refused it.
    let refused = r#"weft_issuer_reloads_total{result="refused"}"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while weft_tests::mesh::sample(&test.controller.metrics().encode(), refused) != Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broken issuer update was not refused:\n{}",
            test.controller.metrics().encode()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(std::sync::Arc::ptr_eq(
        &current,
        &test.controller.ca().issuer()
    ));
    let id = identity("web");
    test.client()
        .certify(request(test.token(&id), new_key_and_csr(&id).unwrap().1))
        .await
        .expect("still issuing with the current issuer");
    test.controller.shutdown().await;
}

#[tokio::test]
async fn the_client_refuses_a_controller_with_another_identity() {
    let test = TestController::start(Duration::from_secs(60)).await;
    let anchors = std::fs::read(test.issuer_dir().join("ca.crt")).unwrap();
    let client = test.client_with(
        MeshTls::new(TrustAnchors::from_pem(&anchors).unwrap()),
        identity("impostor-check"),
    );
    let id = identity("web");
    let err = client
        .certify(request(test.token(&id), new_key_and_csr(&id).unwrap().1))
        .await
        .expect_err("the controller's identity is not the expected one");
    let text = err.to_string();
    assert!(matches!(err, ControlError::Unavailable { .. }), "{text}");
    assert!(text.contains("identity mismatch"), "{text}");

    // Untrusted anchors: a different root.
    let stranger =
        weft_controller::ca::RootCa::generate("cluster.local", Duration::from_secs(3600)).unwrap();
    let client = test.client_with(
        MeshTls::new(TrustAnchors::from_pem(stranger.cert_pem().as_bytes()).unwrap()),
        test.controller.identity().clone(),
    );
    let err = client
        .certify(request(test.token(&id), new_key_and_csr(&id).unwrap().1))
        .await
        .expect_err("the controller's chain is not trusted");
    assert!(matches!(err, ControlError::Unavailable { .. }), "{err}");
    test.controller.shutdown().await;
}

#[tokio::test]
async fn local_state_is_reused_after_a_restart() {
    let test = TestController::start(Duration::from_secs(60)).await;
    let anchors_before = std::fs::read(test.issuer_dir().join("ca.crt")).unwrap();
    let id = identity("web");
    let token = test.token(&id);
    let TestController {
        controller, state, ..
    } = test;
    controller.shutdown().await;

    let test = TestController::start_in(state, Duration::from_secs(60)).await;
    assert_eq!(
        std::fs::read(test.issuer_dir().join("ca.crt")).unwrap(),
        anchors_before,
        "the generated root is kept"
    );
    test.client()
        .certify(request(token, new_key_and_csr(&id).unwrap().1))
        .await
        .expect("a token issued before the restart still works");
    let records = audit::verify(&test.audit_path()).unwrap();
    // Own certificate, own certificate after restart, this one: one chain.
    assert_eq!(records.len(), 3);
    test.controller.shutdown().await;
}

#[tokio::test]
async fn admin_serves_probes_and_metrics() {
    let test = TestController::start(Duration::from_secs(60)).await;
    let addr = test.controller.admin_addr();
    for (path, status, needle) in [
        ("/live", 200, "live"),
        ("/ready", 200, "ready"),
        ("/metrics", 200, "weft_certificates_issued_total 1"),
        ("/nope", 404, "not found"),
    ] {
        let (got, body) = http_get(addr, path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(needle), "{path}: {body}");
    }
    test.controller.shutdown().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to admin");
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("send the request");
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut response))
        .await
        .expect("the admin server answers within 5s")
        .expect("read the response");
    let status = response[9..12].parse().expect("a status code");
    (status, response)
}

async fn wait_for_issuer_change(
    test: &TestController,
    old: &std::sync::Arc<weft_controller::ca::Issuer>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while std::sync::Arc::ptr_eq(old, &test.controller.ca().issuer()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the issuer was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Retries `attempt` for up to 5 s (the controller renews asynchronously).
async fn eventually<F, Fut, T, E>(attempt: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("still failing after 5s: {e}"),
        }
    }
}

/// A verifier that cannot reach its backend (as a TokenReview without an API server).
struct Unreachable;

impl weft_controller::token::TokenVerifier for Unreachable {
    fn verify<'a>(
        &'a self,
        _token: &'a IdentityToken,
    ) -> futures::future::BoxFuture<
        'a,
        Result<weft_api::Identity, weft_controller::token::TokenError>,
    > {
        Box::pin(async {
            Err(weft_controller::token::TokenError::Unavailable(
                "the API server is unreachable".into(),
            ))
        })
    }
}

#[tokio::test]
async fn an_unanswerable_token_is_unavailable_not_refused() {
    let state = tempfile::tempdir().unwrap();
    let settings = support::settings(&state, Duration::from_secs(60));
    let controller = weft_controller::Controller::start(settings, std::sync::Arc::new(Unreachable))
        .await
        .unwrap();
    let anchors = std::fs::read(state.path().join("issuer/ca.crt")).unwrap();
    let client = weft_api::control::ControlClient::new(
        &controller.grpc_addr().to_string(),
        MeshTls::new(TrustAnchors::from_pem(&anchors).unwrap()),
        controller.identity().clone(),
    )
    .unwrap();
    let id = identity("web");
    let err = client
        .certify(request(
            IdentityToken::new("anything").unwrap(),
            new_key_and_csr(&id).unwrap().1,
        ))
        .await
        .expect_err("no certificate without a verdict");
    let text = err.to_string();
    assert!(
        matches!(
            &err,
            ControlError::Unavailable {
                code: tonic::Code::Unavailable,
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("API server is unreachable"), "{text}");
    // Not a refusal: nothing counted or recorded as one.
    let metrics = controller.metrics().encode();
    assert!(!metrics.contains("} 1"), "{metrics}");
    let records = audit::verify(&state.path().join("audit.log")).unwrap();
    assert!(records.iter().all(|r| r.event == AuditEventKind::Issued));
    controller.shutdown().await;
}
