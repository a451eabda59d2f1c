//! The admin server: `/live`, `/ready`, `/metrics`, `/config`, `/log-level`
//! and `POST /shutdown`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_api::tls::MeshTls;

use crate::config::{AppTarget, ProxyConfig};
use crate::http::{Body, full, serve_http1};
use crate::lock;
use crate::metrics::Metrics;
use crate::outbound::Upstream;

/// The largest log filter `PUT /log-level` accepts.
const MAX_LOG_FILTER: usize = 4096;

/// The running process's log filter, which `/log-level` reads and changes.
///
/// The program that owns logging (`weft_proxy::run`) builds it around its
/// subscriber's reload handle; a proxy embedded in another program (tests)
/// has none, and `/log-level` says so.
#[derive(Clone)]
pub struct LogLevel {
    current: Arc<Mutex<String>>,
    apply: Arc<ApplyFilter>,
}

/// Installs a log filter, or says why it cannot.
type ApplyFilter = dyn Fn(&str) -> Result<(), String> + Send + Sync;

impl LogLevel {
    /// `apply` installs a filter or says why it cannot; `initial` is the
    /// filter in force now.
    pub fn new(
        initial: &str,
        apply: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            current: Arc::new(Mutex::new(initial.to_owned())),
            apply: Arc::new(apply),
        }
    }

    pub fn current(&self) -> String {
        lock(&self.current).clone()
    }

    /// Installs `filter`; on error the filter in force stays.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let mut current = lock(&self.current);
        (self.apply)(filter)?;
        *current = filter.to_owned();
        Ok(())
    }
}

impl std::fmt::Debug for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLevel")
            .field("current", &self.current())
            .finish()
    }
}

/// What the program running the proxy adds to its admin server.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    /// Changes the log filter (`/log-level`).
    pub log_level: Option<LogLevel>,
    /// The program's own settings shown by `/config` (where the certificate
    /// comes from, files, threads). Never secrets: paths, not contents.
    pub settings: serde_json::Map<String, Value>,
}

/// What the admin server reports on.
#[derive(Debug, Clone)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub tls: Arc<MeshTls>,
    /// Cancelled by `POST /shutdown`.
    pub shutdown: CancellationToken,
    /// The configuration the proxy runs with, for `/config`.
    pub config: Arc<RunningConfig>,
    pub extras: Extras,
}

/// The configuration as `/config` shows it: the static settings, the bound
/// addresses, and each upstream's target as it is now (discovery will change
/// targets while the proxy runs).
#[derive(Debug)]
pub struct RunningConfig {
    pub settings: ProxyConfig,
    pub inbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub outbound_addrs: Vec<SocketAddr>,
    pub upstreams: Vec<(SocketAddr, Arc<Upstream>)>,
}

/// Serves the admin API until `stop`.
pub async fn serve(
    admin: Admin,
    listener: TcpListener,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let shutdown = stop.clone();
    weft_api::accept::accept_loop(listener, "admin", shutdown, tracker, move |tcp, _| {
        let admin = admin.clone();
        let stop = stop.clone();
        async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&admin, req).await) }
            });
            if let Err(error) = serve_http1(tcp, svc, &stop, crate::http::HEADER_READ_TIMEOUT).await
            {
                tracing::debug!(%error, "admin connection closed with an error");
            }
        }
    })
    .await;
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    with_type(status, body, "text/plain; charset=utf-8")
}

fn with_type(
    status: StatusCode,
    body: impl Into<bytes::Bytes>,
    content_type: &'static str,
) -> Response<Body> {
    let mut rsp = Response::new(full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    rsp
}

fn encode_metrics(admin: &Admin) -> Result<String, std::fmt::Error> {
    admin
        .metrics
        .observe_credentials(admin.tls.credentials().as_deref());
    admin.metrics.encode()
}

const NOT_FOUND: &str = "not found; try /live, /ready, /metrics, /config, /log-level (GET, or PUT a filter) or POST /shutdown\n";

/// Answers one admin request.
pub async fn route(admin: &Admin, req: Request<Incoming>) -> Response<Body> {
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
                let accept = req.headers().get(header::ACCEPT);
                let (body, kind) =
                    weft_api::exposition::negotiate(accept.and_then(|a| a.to_str().ok()), body);
                with_type(StatusCode::OK, body, kind)
            }
            Err(error) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("could not encode metrics: {error}\n"),
            ),
        },
        (&Method::GET, "/config") => {
            let mut body = config_json(admin).to_string();
            body.push('\n');
            with_type(StatusCode::OK, body, "application/json")
        }
        (&Method::GET, "/log-level") => match &admin.extras.log_level {
            Some(level) => text(StatusCode::OK, format!("{}\n", level.current())),
            None => no_log_level(),
        },
        (&Method::PUT | &Method::POST, "/log-level") => set_log_level(admin, req).await,
        (_, "/log-level") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET /log-level, or PUT /log-level with a filter such as `info,weft_proxy=debug` as the body\n",
        ),
        (&Method::POST, "/shutdown") if !admin.config.settings.shutdown_endpoint => text(
            StatusCode::FORBIDDEN,
            "POST /shutdown is turned off for this proxy (WEFT_PROXY_SHUTDOWN_ENDPOINT=false); stop the pod instead\n",
        ),
        (&Method::POST, "/shutdown") => {
            tracing::info!("shutdown requested through the admin server");
            admin.shutdown.cancel();
            text(StatusCode::OK, "shutting down\n")
        }
        (_, "/shutdown") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST /shutdown\n"),
        (_, "/live" | "/ready" | "/metrics" | "/config") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
        }
        _ => text(StatusCode::NOT_FOUND, NOT_FOUND),
    }
}

fn no_log_level() -> Response<Body> {
    text(
        StatusCode::NOT_IMPLEMENTED,
        "this proxy runs inside another program, which owns its logging\n",
    )
}

async fn set_log_level(admin: &Admin, req: Request<Incoming>) -> Response<Body> {
    let Some(level) = &admin.extras.log_level else {
        return no_log_level();
    };
    let body = match Limited::new(req.into_body(), MAX_LOG_FILTER)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "could not read the filter ({error}); send at most {MAX_LOG_FILTER} bytes\n"
                ),
            );
        }
    };
    let Ok(filter) = std::str::from_utf8(&body).map(str::trim) else {
        return text(StatusCode::BAD_REQUEST, "the filter is not UTF-8 text\n");
    };
    if filter.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "send the filter as the body, for example `info,weft_proxy=debug`\n",
        );
    }
    let before = level.current();
    match level.set(filter) {
        Ok(()) => {
            tracing::info!(from = %before, to = %filter, "log filter changed through the admin server");
            text(StatusCode::OK, format!("log filter is now {filter}\n"))
        }
        Err(error) => text(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid log filter {filter:?}: {error}; the filter stays {before:?}. Use tracing's EnvFilter syntax, e.g. `info,weft_proxy::outbound=debug`\n"
            ),
        ),
    }
}

fn seconds_until(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::now()) {
        Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
        Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn secs(d: Option<std::time::Duration>) -> Value {
    d.map_or(Value::Null, |d| json!(d.as_secs_f64()))
}

/// An upstream as `/config` shows it: the snapshot in force (version, routes,
/// backends with weights) and each endpoint's latency and ejection state.
fn target_json(upstream: &Upstream) -> Value {
    let state = upstream.state.borrow().clone();
    let runtime = upstream.runtime();
    json!({
        "name": upstream.name,
        "opaque": upstream.opaque,
        "version": state.version,
        "target": state.target.to_string(),
        "routes": state.routes.iter().map(|r| json!({
            "name": r.name,
            "matches": r.matches.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>(),
            "backends": r.backends.iter().map(|b| json!({"name": b.name, "weight": b.weight})).collect::<Vec<_>>(),
            "timeouts_seconds": {
                "request": secs(r.timeouts.request),
                "backend_request": secs(r.timeouts.backend_request),
            },
            "retry": r.retry.as_ref().map(|p| json!({
                "attempts": p.attempts,
                "on": p.on.conditions().iter().map(ToString::to_string).collect::<Vec<_>>(),
                "statuses": p.on.statuses,
                "backoff_seconds": {"base": p.backoff.base.as_secs_f64(), "max": p.backoff.max.as_secs_f64()},
            })),
        })).collect::<Vec<_>>(),
        "backends": state.backends.iter().map(|b| json!({
            "name": b.name,
            "weight": b.weight,
            "endpoints": b.endpoints.iter().map(|e| {
                let rt = runtime.endpoint(e.addr).map(|rt| rt.snapshot());
                json!({
                    "addr": e.addr.to_string(),
                    "identity": e.identity.as_ref().map(ToString::to_string),
                    "zone": e.zone,
                    "ewma_seconds": secs(rt.as_ref().and_then(|r| r.ewma)),
                    "pending": rt.as_ref().map_or(0, |r| r.pending),
                    "consecutive_failures": rt.as_ref().map_or(0, |r| r.consecutive_failures),
                    "ejected": rt.as_ref().is_some_and(|r| r.ejected_for.is_some()),
                    "ejected_for_seconds": secs(rt.as_ref().and_then(|r| r.ejected_for)),
                    "ejections": rt.as_ref().map_or(0, |r| r.ejections),
                })
            }).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "retry_budget": {
            "ratio": state.retry_budget.ratio,
            "min_per_second": state.retry_budget.min_per_second,
            "window_seconds": state.retry_budget.window.as_secs_f64(),
        },
        "circuit_breaker": state.circuit_breaker.map(|c| json!({
            "consecutive_failures": c.consecutive_failures,
            "base_ejection_seconds": c.base_ejection_time.as_secs_f64(),
            "max_ejection_seconds": c.max_ejection_time.as_secs_f64(),
            "max_ejected_percent": c.max_ejected_percent,
        })),
        "load_balancer": format!("{:?}", state.load_balancer),
        "connect_timeout_seconds": secs(state.connect_timeout),
    })
}

/// The configuration in force, as JSON: what an operator checks first when
/// traffic goes somewhere unexpected.
pub fn config_json(admin: &Admin) -> Value {
    let c = &admin.config;
    let s = &c.settings;
    let certificate = admin.tls.credentials().map(|cred| {
        json!({
            "identity": cred.identity().to_string(),
            "expires_in_seconds": seconds_until(cred.not_after()),
        })
    });
    let transparent = s.transparent.as_ref().map(|t| {
        json!({
            "listen": c.outbound_addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "destinations": t.destinations.entries().iter().map(|(dest, identity)| json!({
                "destination": dest.to_string(),
                "identity": identity.to_string(),
            })).collect::<Vec<_>>(),
            "opaque_ports": t.opaque_ports,
        })
    });
    json!({
        "inbound": {
            "listen": c.inbound_addr.to_string(),
            "app": match s.app {
                AppTarget::Fixed(addr) => addr.to_string(),
                AppTarget::OriginalDst => "127.0.0.1:<original port>".to_owned(),
            },
        },
        "admin": c.admin_addr.to_string(),
        "upstreams": c.upstreams.iter().map(|(listen, target)| {
            let mut t = target_json(target);
            t["listen"] = json!(listen.to_string());
            t
        }).collect::<Vec<_>>(),
        "transparent": transparent,
        "timeouts_seconds": {
            "detect": s.detect_timeout.as_secs_f64(),
            "header": s.header_timeout.as_secs_f64(),
            "connect": s.connect_timeout.as_secs_f64(),
            "shutdown_grace": s.shutdown_grace.as_secs_f64(),
        },
        "shutdown_endpoint": s.shutdown_endpoint,
        "certificate": certificate,
        "trust_anchors": admin.tls.trust_anchors().len(),
        "log_level": admin.extras.log_level.as_ref().map(LogLevel::current),
        "process": admin.extras.settings,
    })
}
