//! The controller's side of rotation: its own certificate renews before it
//! expires, and a trust anchor bundle holding the old and the new root lets
//! clients of either root in while the issuer moves to the new one.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use weft_api::certify::CertifyRequest;
use weft_api::tls::{MeshTls, TrustAnchors};
use weft_controller::audit::{self, AuditEventKind};
use weft_controller::ca::{IssuerPem, RootCa, new_key_and_csr};

use support::{TestController, identity};

#[tokio::test]
async fn the_controller_renews_its_own_certificate_before_it_expires() {
    // 3 s certificates: renewed at about 2.1 s; the first one is gone after 3 s.
    let test = TestController::start(Duration::from_secs(3)).await;
    let id = identity("web");
    let first = test
        .controller
        .tls()
        .credentials()
        .expect("credentials")
        .not_after();
    // Wait until the first certificate has expired (the condition under test).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while SystemTime::now() <= first {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the clock stood still"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A fresh client (new connection, new handshake) after the first certificate expired.
    let certified = test
        .client()
        .certify(CertifyRequest {
            token: test.token(&id),
            csr: new_key_and_csr(&id).unwrap().1,
        })
        .await
        .expect("the controller presents a renewed certificate");
    assert!(certified.valid_until > SystemTime::now());
    let own = test.controller.tls().credentials().expect("credentials");
    assert!(own.not_after() > SystemTime::now());
    let renewals = audit::verify(&test.audit_path())
        .unwrap()
        .iter()
        .filter(|r| {
            r.event == AuditEventKind::Issued
                && r.identity.as_deref() == Some(&test.controller.identity().to_string())
        })
        .count();
    assert!(
        (2..=4).contains(&renewals),
        "expected the first certificate and one or two renewals in 4.5 s, got {renewals}"
    );
    test.controller.shutdown().await;
}

#[tokio::test]
async fn a_bundle_of_old_and_new_roots_serves_clients_of_either_during_rotation() {
    let test = TestController::start(Duration::from_secs(60)).await;
    let id = identity("web");
    let old_root = std::fs::read_to_string(test.issuer_dir().join("ca.crt")).unwrap();
    let new_root = RootCa::generate("cluster.local", Duration::from_secs(86_400)).unwrap();
    let now = SystemTime::now();
    let under_new = new_root
        .issue_issuer(
            now - Duration::from_secs(60),
            now + Duration::from_secs(86_400),
        )
        .unwrap();
    // Step 2 of a rotation: anchors = old + new, issuer = under the new root.
    let before = test.controller.ca().issuer();
    IssuerPem {
        anchors: format!("{old_root}{}", new_root.cert_pem()),
        ..under_new
    }
    .write(&test.issuer_dir())
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while Arc::ptr_eq(&before, &test.controller.ca().issuer()) {
        assert!(tokio::time::Instant::now() < deadline, "not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(test.controller.ca().issuer().trust_anchors().len(), 2);
    assert_eq!(test.controller.tls().trust_anchors().len(), 2);

    // Proxies that still trust only the old root cannot verify the controller's
    // renewed certificate; proxies with the bundle or the new root can.
    for (anchors, works) in [
        (format!("{old_root}{}", new_root.cert_pem()), true),
        (new_root.cert_pem().to_owned(), true),
        (old_root.clone(), false),
    ] {
        let client = test.client_with(
            MeshTls::new(TrustAnchors::from_pem(anchors.as_bytes()).unwrap()),
            test.controller.identity().clone(),
        );
        let mut result = Err(String::new());
        for _ in 0..50 {
            result = client
                .certify(CertifyRequest {
                    token: test.token(&id),
                    csr: new_key_and_csr(&id).unwrap().1,
                })
                .await
                .map_err(|e| e.to_string());
            if result.is_ok() == works {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if works {
            let certified = result.expect("certified under the new issuer");
            assert_eq!(certified.chain, test.controller.ca().issuer().chain());
        } else {
            let err = result.expect_err("the old root alone no longer verifies the controller");
            assert!(err.contains("TLS handshake failed"), "{err}");
        }
    }
    test.controller.shutdown().await;
}
