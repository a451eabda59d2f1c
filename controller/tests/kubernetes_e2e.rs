//! The Kubernetes identity path against a real API server. Runs only when
//! `WEFT_E2E_KUBECONFIG` names a kubeconfig (for example a kind cluster or a
//! bare kube-apiserver 1.28+); otherwise it prints why it is skipped and passes.
//!
//! It creates a namespace with two ServiceAccounts, requests projected tokens
//! through the TokenRequest API, starts a controller whose token verifier is a
//! TokenReview against that API server, and checks that a token with audience
//! `identity.weft.io` obtains a certificate for exactly its ServiceAccount, and
//! that a token for another audience, or a CSR for the other ServiceAccount,
//! is refused by name. The namespace is deleted at the end.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use weft_api::Identity;
use weft_api::certify::{CertifyRequest, IdentityToken, RefusalReason};
use weft_api::consts::IDENTITY_TOKEN_AUDIENCE;
use weft_api::control::{ControlClient, ControlError};
use weft_api::tls::{MeshTls, TrustAnchors};
use weft_controller::Controller;
use weft_controller::ca::new_key_and_csr;
use weft_controller::token_review::TokenReviewer;

#[tokio::test]
async fn certify_with_projected_service_account_tokens() {
    let Some(path) = weft_tests::skip::kubeconfig() else {
        return;
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("a readable kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("a usable kubeconfig");
    let client = kube::Client::try_from(config).expect("a Kubernetes client");

    let suffix: u32 = rand::random();
    let ns = format!("weft-e2e-{:08x}", suffix);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .expect("create the test namespace");
    let outcome = tokio::spawn(run(client.clone(), ns.clone())).await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
}

async fn run(client: kube::Client, ns: String) {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    for name in ["checkout", "payments"] {
        accounts
            .create(
                &PostParams::default(),
                &ServiceAccount {
                    metadata: ObjectMeta {
                        name: Some(name.into()),
                        ..ObjectMeta::default()
                    },
                    ..ServiceAccount::default()
                },
            )
            .await
            .expect("create a ServiceAccount");
    }
    let token = |audience: &'static str| {
        let accounts = accounts.clone();
        async move {
            let request = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![audience.into()],
                    expiration_seconds: Some(600),
                    bound_object_ref: None,
                },
                ..TokenRequest::default()
            };
            let answer = accounts
                .create_token_request("checkout", &PostParams::default(), &request)
                .await
                .expect("a TokenRequest");
            IdentityToken::new(answer.status.expect("a token").token).expect("a token")
        }
    };

    let state = tempfile::tempdir().expect("a temporary directory");
    let settings = support::settings(&state, Duration::from_secs(600));
    let trust_domain = settings.trust_domain.clone();
    let verifier = Arc::new(TokenReviewer::new(client, &trust_domain));
    let controller = Controller::start(settings, verifier)
        .await
        .expect("the controller starts");
    let anchors = std::fs::read(state.path().join("issuer/ca.crt")).expect("ca.crt");
    let client = ControlClient::new(
        &controller.grpc_addr().to_string(),
        MeshTls::new(TrustAnchors::from_pem(&anchors).expect("anchors")),
        controller.identity().clone(),
    )
    .expect("a client");
    let checkout = Identity::new(&trust_domain, &ns, "checkout").expect("an identity");
    let payments = Identity::new(&trust_domain, &ns, "payments").expect("an identity");

    let certified = client
        .certify(CertifyRequest {
            token: token(IDENTITY_TOKEN_AUDIENCE).await,
            csr: new_key_and_csr(&checkout).expect("a CSR").1,
        })
        .await
        .expect("a certificate for the token's ServiceAccount");
    assert_eq!(
        weft_api::tls::peer_identity(&certified.leaf).expect("an identity"),
        checkout
    );

    let wrong_audience = client
        .certify(CertifyRequest {
            token: token("not-weft.example").await,
            csr: new_key_and_csr(&checkout).expect("a CSR").1,
        })
        .await
        .expect_err("a token for another audience is refused");
    assert!(
        matches!(&wrong_audience, ControlError::Refused(r) if r.reason == RefusalReason::WrongAudience),
        "{wrong_audience}"
    );

    let other = client
        .certify(CertifyRequest {
            token: token(IDENTITY_TOKEN_AUDIENCE).await,
            csr: new_key_and_csr(&payments).expect("a CSR").1,
        })
        .await
        .expect_err("a CSR for another ServiceAccount is refused");
    assert!(
        matches!(&other, ControlError::Refused(r) if r.reason == RefusalReason::OtherIdentity),
        "{other}"
    );
    controller.shutdown().await;
}
