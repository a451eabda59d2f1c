//! The TokenReview backend's kube edge, over real HTTP: a stand-in API server on
//! 127.0.0.1 answers TokenReviews the way kube-apiserver does (same path, same
//! JSON), and the real kube client of [`TokenReviewer`] talks to it. The real
//! API server is exercised by `kubernetes_e2e.rs` when one is available.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};
use weft_api::certify::IdentityToken;
use weft_api::consts::IDENTITY_TOKEN_AUDIENCE;
use weft_controller::token::{TokenError, TokenVerifier};
use weft_controller::token_review::TokenReviewer;

async fn answer(
    req: hyper::Request<Incoming>,
    seen: Arc<AtomicUsize>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    assert_eq!(req.method(), hyper::Method::POST);
    assert_eq!(
        req.uri().path(),
        "/apis/authentication.k8s.io/v1/tokenreviews"
    );
    let body = req
        .into_body()
        .collect()
        .await
        .expect("a request body")
        .to_bytes();
    let mut review: TokenReview = serde_json::from_slice(&body).expect("a TokenReview");
    assert_eq!(
        review.spec.audiences.as_deref(),
        Some(&[IDENTITY_TOKEN_AUDIENCE.to_owned()][..]),
        "the review asks for weft's audience"
    );
    seen.fetch_add(1, Ordering::SeqCst);
    let refused = |error: &str| TokenReviewStatus {
        authenticated: Some(false),
        error: Some(error.into()),
        ..TokenReviewStatus::default()
    };
    review.status = Some(match review.spec.token.as_deref() {
        Some("good") => TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec![IDENTITY_TOKEN_AUDIENCE.into()]),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:shop:checkout".into()),
                ..UserInfo::default()
            }),
            error: None,
        },
        Some("expired") => {
            refused("[invalid bearer token, service account token has expired, unknown]")
        }
        Some("other-audience") => refused(
            r#"[invalid bearer token, token audiences ["api"] is invalid for the target audiences ["identity.weft.io"], unknown]"#,
        ),
        _ => refused("[invalid bearer token, unknown]"),
    });
    let json = serde_json::to_vec(&review).expect("serializes");
    let mut response = hyper::Response::new(Full::new(Bytes::from(json)));
    *response.status_mut() = hyper::StatusCode::CREATED;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

async fn fake_api_server(seen: Arc<AtomicUsize>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(req, seen.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

fn reviewer(addr: std::net::SocketAddr) -> TokenReviewer {
    let url: http::Uri = format!("http://{addr}").parse().expect("a URL");
    let client = kube::Client::try_from(kube::Config::new(url)).expect("a kube client");
    TokenReviewer::new(client, "cluster.local")
}

#[tokio::test]
async fn reviews_tokens_over_http_and_classifies_the_answer() {
    let seen = Arc::new(AtomicUsize::new(0));
    let addr = fake_api_server(seen.clone()).await;
    let reviewer = reviewer(addr);
    let token = |t: &str| IdentityToken::new(t).expect("a token");

    let identity = reviewer.verify(&token("good")).await.expect("an identity");
    assert_eq!(
        identity.to_string(),
        "spiffe://cluster.local/ns/shop/sa/checkout"
    );
    assert!(matches!(
        reviewer.verify(&token("expired")).await,
        Err(TokenError::Expired(_))
    ));
    assert!(matches!(
        reviewer.verify(&token("other-audience")).await,
        Err(TokenError::WrongAudience { .. })
    ));
    assert!(matches!(
        reviewer.verify(&token("forged")).await,
        Err(TokenError::Invalid(_))
    ));
    assert_eq!(seen.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn an_unreachable_api_server_is_no_verdict() {
    // Bind and drop: nothing listens on this port any more.
    let addr = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        listener.local_addr().expect("an address")
    };
    let err = reviewer(addr)
        .verify(&IdentityToken::new("good").expect("a token"))
        .await
        .expect_err("no answer");
    assert!(matches!(err, TokenError::Unavailable(_)), "{err}");
    assert!(
        err.refusal().is_none(),
        "the caller is told to retry, not refused"
    );
}
