//! The outbound side: traffic from the app to other services.
//!
//! Each target is an [`Upstream`]: its name, whether it is opaque, a
//! `watch::Receiver<Arc<DestinationState>>` (discovery's snapshot, or a fixed
//! one made from the static configuration with `config::Target::to_state`),
//! and its [`upstream::Runtime`]: per-endpoint peak-EWMA latency, in-flight
//! counts and circuit-breaker state (kept by address across snapshots), and
//! the target's retry budget.
//!
//! An upstream listener accepts the app's connection, detects its protocol, and
//! then, for each HTTP request (or once for an opaque connection), reads the
//! snapshot in force (so a keep-alive connection follows a new weight on its
//! next request), matches the route, picks a backend by weight and an endpoint
//! by power of two choices over peak EWMA among those not ejected
//! ([`balance`]), and sends it over mesh mTLS: HTTP multiplexed on one HTTP/2
//! connection per peer ([`pool`]), opaque TCP and connection upgrades on their
//! own connection. A route with retries or timeouts takes the boxed path of
//! [`retry`]; every other request is one try ([`http::handle`]). Endpoints
//! without an identity (not meshed) get it all in plaintext instead: opaque
//! TCP, HTTP as the app sent it, and upgrades on a connection of their own.
//!
//! In a pod, the [`transparent`] listener takes the app's redirected TCP,
//! finds its original destination, and serves it the same way when it is
//! meshed, or passes it through untouched when it is not.

pub mod balance;
pub mod http;
pub mod pool;
mod retry;
mod tcp;
pub mod transparent;
pub mod upstream;

pub use upstream::Upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_api::tls::MeshTls;

use crate::config::Endpoint;
use crate::detect::{self, Protocol};
use crate::metrics::{Direction, Metrics, TcpLabels};

/// State shared by every outbound connection of a proxy.
#[derive(Debug)]
pub struct Outbound {
    pub(crate) tls: Arc<MeshTls>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) pool: pool::H2Pool<Endpoint>,
    /// Plaintext connections to endpoints outside the mesh.
    pub(crate) plain_http1: Arc<pool::Http1Pool>,
    pub(crate) plain_http2: pool::H2Pool<std::net::SocketAddr>,
    pub(crate) connect_timeout: Duration,
    pub(crate) detect_timeout: Duration,
    /// HTTP/1 clients' time to send a request's head, from its first byte.
    pub(crate) header_timeout: Duration,
    /// The largest request body kept for retries.
    pub(crate) retry_buffer: usize,
    pub(crate) tracer: Option<Arc<crate::trace::Tracer>>,
    /// One log line per request (`WEFT_PROXY_ACCESS_LOG`).
    pub(crate) access_log: bool,
}

impl Outbound {
    #[allow(clippy::too_many_arguments)] // one call site, each argument different
    pub fn new(
        tls: Arc<MeshTls>,
        metrics: Arc<Metrics>,
        connect_timeout: Duration,
        detect_timeout: Duration,
        header_timeout: Duration,
        retry_buffer: usize,
        tracer: Option<Arc<crate::trace::Tracer>>,
        access_log: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            tracer,
            access_log,
            tls,
            metrics,
            pool: pool::H2Pool::default(),
            plain_http1: pool::Http1Pool::new(),
            plain_http2: pool::H2Pool::default(),
            connect_timeout,
            detect_timeout,
            header_timeout,
            retry_buffer,
        })
    }
}

/// Accepts the app's connections on an upstream listener until `shutdown`.
pub async fn serve_upstream(
    outbound: Arc<Outbound>,
    listener: TcpListener,
    upstream: Arc<Upstream>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let stop = shutdown.clone();
    weft_api::accept::accept_loop(
        listener,
        "upstream",
        shutdown,
        tracker,
        move |tcp, client| {
            handle_connection(
                outbound.clone(),
                upstream.clone(),
                tcp,
                client,
                stop.clone(),
            )
        },
    )
    .await;
}

async fn handle_connection(
    outbound: Arc<Outbound>,
    target: Arc<Upstream>,
    tcp: TcpStream,
    client: SocketAddr,
    shutdown: CancellationToken,
) {
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
    let peer = peer_label(&target);
    let io = outbound.metrics.tcp(
        TcpLabels {
            direction: Direction::Outbound,
            tls: true,
            peer_identity: peer,
        },
        tcp,
    );
    let detection = if target.opaque {
        detect::Detection {
            protocol: Protocol::Opaque,
            timed_out: false,
            io: detect::PrefixedIo::new(bytes::Bytes::new(), io),
        }
    } else {
        match detect::detect(io, outbound.detect_timeout).await {
            Ok(d) => d,
            Err(error) => {
                tracing::debug!(%client, %error, "connection failed during protocol detection");
                return;
            }
        }
    };
    outbound.metrics.detected(
        Direction::Outbound,
        detection.protocol.as_str(),
        detection.timed_out,
    );
    let io = detection.io;
    let svc = {
        let outbound = outbound.clone();
        let target = target.clone();
        // Each request's future is boxed: hyper keeps room for one in every
        // connection, and an idle connection then holds a pointer, not the
        // whole future.
        service_fn(move |req| {
            let outbound = outbound.clone();
            let target = target.clone();
            Box::pin(async move {
                Ok::<_, std::convert::Infallible>(http::handle(&outbound, &target, req).await)
            })
        })
    };
    let result = match detection.protocol {
        // The header timeout runs from a request's first byte: the app's
        // idle keep-alive connections stay open as long as the app keeps them.
        Protocol::Http1 => {
            crate::http::serve_http1(io, svc, &shutdown, outbound.header_timeout).await
        }
        // Boxed: the task of every connection is as large as its largest
        // state, and HTTP/1.1 connections, the most numerous, need the least.
        Protocol::Http2 => Box::pin(crate::http::serve_http2(io, svc, &shutdown)).await,
        Protocol::Tls | Protocol::Opaque => {
            Box::pin(tcp::forward(&outbound, &target, io, client)).await;
            Ok(())
        }
    };
    if let Err(error) = result {
        tracing::debug!(%client, %error, "HTTP connection from the app closed with an error");
    }
}

/// The metrics label for a connection's peer: the identity of the target's
/// first meshed endpoint when the connection opens (requests carry their own
/// endpoint's identity).
fn peer_label(target: &Upstream) -> Arc<str> {
    target
        .state
        .borrow()
        .backends
        .iter()
        .flat_map(|b| b.endpoints.iter())
        .find_map(|e| e.identity.as_ref())
        .map_or_else(|| Arc::from(""), |i| i.uri())
}
