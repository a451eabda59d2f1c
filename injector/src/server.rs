//! The webhook's HTTPS server: `POST /inject` (`weft_api::consts::injector::INJECT_PATH`)
//! with an AdmissionReview v1 body, answered by [`Webhook::review`].
//!
//! - A pod CREATE: the pod's namespace from [`Namespaces`], then the decision
//!   (`mutate` in the binary, any [`Decide`] in tests): allowed with the JSON
//!   patch, allowed unchanged (with the skip's annotation patch when it has
//!   one), or denied (`status.code` 403, reason `Forbidden`, the message).
//! - Any other request: allowed unchanged.
//! - A body that is not an AdmissionReview v1: HTTP 400 with what was wrong.
//! - A namespace that cannot be known: HTTP 503 with the reason, so that the
//!   API server applies the webhook's `failurePolicy` (the deploy sets `Fail`).
//!
//! The webhook has no side effects, so a `dryRun` request is answered exactly
//! like any other (and counted like one).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_api::consts::injector::INJECT_PATH;

use crate::admission::{self, Review};
use crate::config::InjectConfig;
use crate::metrics::{ErrorReason, Metrics, Outcome};
use crate::mutate::{Decision, NamespaceInfo};
use crate::namespaces::Namespaces;

/// The decision the webhook applies: [`crate::mutate`] in the binary.
pub type Decide = Arc<dyn Fn(&Pod, &NamespaceInfo, &InjectConfig) -> Decision + Send + Sync>;

/// The largest request body read (the API server sends objects up to about 3 MiB).
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// A TLS handshake that takes longer is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The decision [`crate::mutate`], as a [`Decide`].
pub fn mutate_decision() -> Decide {
    Arc::new(crate::mutate::mutate)
}

/// Everything a review needs.
pub struct Webhook {
    decide: Decide,
    config: Arc<ArcSwap<InjectConfig>>,
    namespaces: Namespaces,
    metrics: Arc<Metrics>,
}

/// An answer: HTTP status, JSON or text body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub json: bool,
    pub body: Vec<u8>,
    pub outcome: Outcome,
}

impl Webhook {
    pub fn new(
        decide: Decide,
        config: Arc<ArcSwap<InjectConfig>>,
        namespaces: Namespaces,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            decide,
            config,
            namespaces,
            metrics,
        }
    }

    /// Answers one request body, and counts it.
    pub async fn review(&self, body: &[u8]) -> Answer {
        let started = Instant::now();
        let answer = self.answer(body).await;
        self.metrics.admission(answer.outcome, started.elapsed());
        answer
    }

    async fn answer(&self, body: &[u8]) -> Answer {
        let create = match admission::decode(body) {
            Ok(Review::PodCreate(create)) => create,
            Ok(Review::Other(request)) => {
                return json_answer(
                    &admission::allow_unchanged(&request),
                    Outcome::Skipped("not-pod-create"),
                );
            }
            Err(error) => {
                tracing::warn!(%error, "refused a request that is not an AdmissionReview v1");
                return text_answer(
                    StatusCode::BAD_REQUEST,
                    error.to_string(),
                    Outcome::Error(ErrorReason::BadRequest),
                );
            }
        };
        let namespace = match self.namespaces.lookup(&create.namespace).await {
            Ok(namespace) => namespace,
            Err(error) => {
                tracing::error!(uid = %create.request.uid, %error, "cannot decide on a pod");
                return text_answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    error.to_string(),
                    Outcome::Error(ErrorReason::NamespaceUnknown),
                );
            }
        };
        let config = self.config.load();
        let decision = (self.decide)(&create.pod, &namespace, &config);
        let pod_name = create
            .pod
            .metadata
            .name
            .as_deref()
            .or(create.pod.metadata.generate_name.as_deref())
            .unwrap_or_default();
        match admission::answer(&create.request, decision) {
            Ok((review, outcome)) => {
                tracing::debug!(
                    uid = %create.request.uid,
                    namespace = %create.namespace,
                    pod = pod_name,
                    dry_run = create.request.dry_run,
                    outcome = outcome.label(),
                    reason = outcome.reason(),
                    "answered"
                );
                json_answer(&review, outcome)
            }
            Err(error) => {
                tracing::error!(uid = %create.request.uid, %error, "cannot encode the patch");
                text_answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    error.to_string(),
                    Outcome::Error(ErrorReason::Internal),
                )
            }
        }
    }

    /// Routes an HTTP request: `POST /inject`, else 404 / 405.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() != INJECT_PATH {
            return plain(
                StatusCode::NOT_FOUND,
                format!("not found; AdmissionReviews go to POST {INJECT_PATH}\n"),
            );
        }
        if req.method() != Method::POST {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into());
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                let started = Instant::now();
                self.metrics
                    .admission(Outcome::Error(ErrorReason::BadRequest), started.elapsed());
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body (at most {MAX_BODY} bytes): {error}\n"),
                );
            }
        };
        let answer = self.review(&body).await;
        let mut response = Response::new(Full::new(Bytes::from(answer.body)));
        *response.status_mut() = answer.status;
        let content_type = if answer.json {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        response
    }
}

/// Serves `webhook` over TLS (`tls`) on `listener` until `shutdown`; every
/// connection is a task of `tracker`. HTTP/1.1 and HTTP/2.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    webhook: Arc<Webhook>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let conn_shutdown = shutdown.clone();
    weft_api::accept::accept_loop(listener, "webhook", shutdown, tracker, move |tcp, peer| {
        let (tls, webhook, shutdown) = (tls.clone(), webhook.clone(), conn_shutdown.clone());
        async move {
            let _ = tcp.set_nodelay(true);
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let webhook = webhook.clone();
                async move { Ok::<_, std::convert::Infallible>(webhook.handle(req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "webhook connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }
    })
    .await;
}

fn json_answer(
    review: &kube::core::admission::AdmissionReview<kube::core::DynamicObject>,
    outcome: Outcome,
) -> Answer {
    match admission::encode(review) {
        Ok(body) => Answer {
            status: StatusCode::OK,
            json: true,
            body,
            outcome,
        },
        Err(error) => text_answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the AdmissionReview response: {error}"),
            Outcome::Error(ErrorReason::Internal),
        ),
    }
}

fn text_answer(status: StatusCode, message: String, outcome: Outcome) -> Answer {
    Answer {
        status,
        json: false,
        body: format!("{message}\n").into_bytes(),
        outcome,
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
