//! The demo application: small HTTP/1.1 services that know nothing of the
//! mesh. `web` answers `GET /` by calling `checkout` and `inventory` through
//! the upstream listeners of its sidecar; the others answer directly. A
//! flaky replica answers 503 to everything for [`FLAKY_FAILING`] after every
//! [`FLAKY_HEALTHY`] of health. `web` forwards the trace context of each
//! request to its calls ([`TRACE_HEADERS`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// What one demo service process is.
#[derive(Clone, Debug)]
pub struct AppSpec {
    pub service: String,
    pub replica: String,
    pub listen: SocketAddr,
    /// Upstream name -> local address of the sidecar's upstream listener.
    pub upstreams: BTreeMap<String, SocketAddr>,
    /// Fails now and then.
    pub flaky: bool,
}

/// How long a flaky replica is healthy before each failing spell.
pub const FLAKY_HEALTHY: Duration = Duration::from_secs(12);
/// How long each failing spell lasts.
pub const FLAKY_FAILING: Duration = Duration::from_secs(8);

/// Whether a flaky replica started `age` ago is failing now.
pub fn failing_at(age: Duration) -> bool {
    let period = FLAKY_HEALTHY + FLAKY_FAILING;
    let into = Duration::from_secs_f64(age.as_secs_f64() % period.as_secs_f64());
    into >= FLAKY_HEALTHY
}

/// The trace context headers an app forwards from a request to the calls it
/// makes for it (W3C Trace Context).
pub const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

struct App {
    spec: AppSpec,
    started: Instant,
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// Serves the demo service until the process is stopped.
pub async fn serve(spec: AppSpec) -> anyhow::Result<()> {
    let listener = TcpListener::bind(spec.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "demo app {} cannot listen on {}: {e}",
            spec.replica,
            spec.listen
        )
    })?;
    let app = Arc::new(App {
        spec,
        started: Instant::now(),
        client: Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http(),
    });
    // The workspace's accept loop (backs off out of file descriptors); the
    // demo app runs until the process is stopped.
    weft_api::accept::accept_loop(
        listener,
        "demo-app",
        tokio_util::sync::CancellationToken::new(),
        tokio_util::task::TaskTracker::new(),
        move |tcp, _| {
            let _ = tcp.set_nodelay(true);
            let app = app.clone();
            async move {
                let svc = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(handle(&app, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            }
        },
    )
    .await;
    Ok(())
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    rsp
}

async fn handle(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let caller = req
        .headers()
        .get(weft_api::consts::CLIENT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if app.spec.flaky && failing_at(app.started.elapsed()) {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                r#"{{"service":"{}","replica":"{}","error":"failing on purpose (the demo's flaky replica)"}}"#,
                app.spec.service, app.spec.replica
            ),
        );
    }
    if app.spec.upstreams.is_empty() {
        // A leaf service: a little work, then an answer naming who asked.
        tokio::time::sleep(Duration::from_micros(300)).await;
        return json(
            StatusCode::OK,
            format!(
                r#"{{"service":"{}","replica":"{}","caller":"{caller}"}}"#,
                app.spec.service, app.spec.replica
            ),
        );
    }
    // An aggregating service: call every upstream concurrently, forwarding
    // the trace context its sidecar passed in, so that the calls join the
    // request's trace (as an instrumented app does).
    let context: Vec<(http::HeaderName, http::HeaderValue)> = TRACE_HEADERS
        .iter()
        .filter_map(|name| {
            let value = req.headers().get(*name)?;
            Some((http::HeaderName::from_static(name), value.clone()))
        })
        .collect();
    let context = &context;
    let calls = app.spec.upstreams.iter().map(|(name, addr)| async move {
        let uri = format!("http://{addr}/{name}");
        let result = async {
            let mut call = Request::get(uri).body(Empty::new()).ok()?;
            call.headers_mut().extend(context.iter().cloned());
            let rsp = app.client.request(call).await.ok()?;
            let status = rsp.status();
            let body = rsp.into_body().collect().await.ok()?.to_bytes();
            Some((status, body))
        }
        .await;
        (name.clone(), result)
    });
    let results = futures::future::join_all(calls).await;
    let mut parts = Vec::new();
    let mut failed = Vec::new();
    for (name, result) in results {
        match result {
            Some((status, body)) if status.is_success() => {
                parts.push(format!(r#""{name}":{}"#, String::from_utf8_lossy(&body)));
            }
            Some((status, _)) => failed.push(format!("{name}: {status}")),
            None => failed.push(format!("{name}: unreachable")),
        }
    }
    if failed.is_empty() {
        json(
            StatusCode::OK,
            format!(
                r#"{{"service":"{}","calls":{{{}}}}}"#,
                app.spec.service,
                parts.join(",")
            ),
        )
    } else {
        json(
            StatusCode::BAD_GATEWAY,
            format!(
                r#"{{"service":"{}","failed":"{}"}}"#,
                app.spec.service,
                failed.join("; ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flaky_replica_fails_in_spells() {
        let s = Duration::from_secs;
        assert!(!failing_at(s(0)));
        assert!(!failing_at(FLAKY_HEALTHY - Duration::from_millis(1)));
        assert!(failing_at(FLAKY_HEALTHY));
        assert!(!failing_at(FLAKY_HEALTHY + FLAKY_FAILING));
        assert!(failing_at(FLAKY_HEALTHY * 2 + FLAKY_FAILING + s(1)));
    }
}
