//! The admin server (port 9990, plain HTTP): `/live`, `/ready` and `/metrics`
//! (OpenMetrics text).
//!
//! `/ready` is 200 once the serving certificate is loaded, the namespace index
//! is synced and trust anchors are known (an injected proxy without anchors
//! could trust nobody); otherwise 503 naming what is missing.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::InjectConfig;
use crate::metrics::Metrics;
use crate::namespaces::NamespaceIndex;
use crate::tls_reload::ServingCert;

/// What the admin server reports on.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub serving: Arc<ServingCert>,
    pub namespaces: Arc<NamespaceIndex>,
    pub config: Arc<ArcSwap<InjectConfig>>,
}

impl Admin {
    /// What keeps the injector from being ready; empty when it is.
    pub fn not_ready(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.serving.current().is_none() {
            missing.push("no serving certificate loaded");
        }
        if !self.namespaces.is_synced() {
            missing.push("the namespace index is not synced");
        }
        if self.config.load().trust_anchors_pem.is_empty() {
            missing.push("no trust anchors loaded");
        }
        missing
    }

    /// Serves until `shutdown`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        let admin = self;
        weft_api::accept::serve_http1(
            listener,
            "injector-admin",
            shutdown,
            tracker,
            Arc::new(move |req: &Request<Incoming>| admin.handle(req)),
        )
        .await;
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
        }
        match req.uri().path() {
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/ready" => {
                let missing = self.not_ready();
                if missing.is_empty() {
                    text(StatusCode::OK, "ready\n".into())
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {}\n", missing.join("; ")),
                    )
                }
            }
            "/metrics" => {
                let accept = req.headers().get(header::ACCEPT);
                let (body, kind) = weft_api::exposition::negotiate(
                    accept.and_then(|a| a.to_str().ok()),
                    self.metrics.encode(),
                );
                let mut response = text(StatusCode::OK, body);
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
                response
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /live, /ready or /metrics\n".into(),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
