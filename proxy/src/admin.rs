//! The admin server: `/live`, `/ready`, `/metrics` and `POST /shutdown`.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_api::tls::MeshTls;

use crate::http::{Body, full, serve_http1};
use crate::metrics::Metrics;

/// What the admin server reports on.
#[derive(Debug, Clone)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub tls: Arc<MeshTls>,
    /// Cancelled by `POST /shutdown`.
    pub shutdown: CancellationToken,
}

/// Serves the admin API until `stop`.
pub async fn serve(
    admin: Admin,
    listener: TcpListener,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let shutdown = stop.clone();
    crate::transport::accept_loop(listener, "admin", shutdown, tracker, move |tcp, _| {
        let admin = admin.clone();
        let stop = stop.clone();
        async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&admin, req)) }
            });
            if let Err(error) = serve_http1(tcp, svc, &stop).await {
                tracing::debug!(%error, "admin connection closed with an error");
            }
        }
    })
    .await;
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut rsp = Response::new(full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

fn encode_metrics(admin: &Admin) -> Result<String, std::fmt::Error> {
    admin
        .metrics
        .observe_credentials(admin.tls.credentials().as_deref());
    admin.metrics.encode()
}

/// Answers one admin request.
pub fn route(admin: &Admin, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/ready") => match admin.tls.credentials() {
            Some(c) => text(StatusCode::OK, format!("ready: {}\n", c.identity())),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the proxy has no workload certificate yet\n",
            ),
        },
        (&Method::GET, "/metrics") => match encode_metrics(admin) {
            Ok(body) => {
                let mut rsp = text(StatusCode::OK, body);
                rsp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                rsp
            }
            Err(error) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("could not encode metrics: {error}\n"),
            ),
        },
        (&Method::POST, "/shutdown") => {
            tracing::info!("shutdown requested through the admin server");
            admin.shutdown.cancel();
            text(StatusCode::OK, "shutting down\n")
        }
        (_, "/shutdown") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST /shutdown\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /live, /ready, /metrics or POST /shutdown\n",
        ),
    }
}
