//! The admin server (port 9990): `/live`, `/ready` (the controller holds a
//! valid certificate of its own), `/metrics` (Prometheus text format) and
//! `/config` (JSON: the discovery subscribers and the policy objects with
//! their statuses; in local mode the policy directory).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use weft_api::tls::MeshTls;

use crate::metrics::Metrics;

pub(crate) struct Admin {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) tls: Arc<MeshTls>,
    pub(crate) policy: Option<Arc<dyn Fn() -> serde_json::Value + Send + Sync>>,
}

impl Admin {
    pub(crate) async fn serve(self, listener: TcpListener) {
        let admin = Arc::new(self);
        // The admin server runs until the controller's task is dropped.
        weft_api::accept::serve_http1(
            listener,
            "controller-admin",
            tokio_util::sync::CancellationToken::new(),
            tokio_util::task::TaskTracker::new(),
            Arc::new(move |req: &Request<Incoming>| admin.handle(req)),
        )
        .await;
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let text = |status: StatusCode, body: String| {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            response
        };
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
        }
        match req.uri().path() {
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/ready" => match self.tls.credentials() {
                Some(c) if c.not_after() > SystemTime::now() => {
                    text(StatusCode::OK, "ready\n".into())
                }
                _ => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the controller holds no valid certificate\n".into(),
                ),
            },
            "/metrics" => {
                let accept = req.headers().get(http::header::ACCEPT);
                let (body, kind) = weft_api::exposition::negotiate(
                    accept.and_then(|a| a.to_str().ok()),
                    self.metrics.encode(),
                );
                let mut response = text(StatusCode::OK, body);
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::header::HeaderValue::from_static(kind),
                );
                response
            }
            "/config" => {
                let config = serde_json::json!({
                    "discovery": {
                        "enabled": self.policy.is_some(),
                        "subscribers": self.metrics.discovery_subscribers(),
                    },
                    "policy": self.policy.as_ref().map(|report| report()),
                });
                let mut body = serde_json::to_string_pretty(&config)
                    .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()));
                body.push('\n');
                let mut response = text(StatusCode::OK, body);
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                response
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /live, /ready, /metrics or /config\n".into(),
            ),
        }
    }
}
