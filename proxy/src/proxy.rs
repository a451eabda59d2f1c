//! Starting and stopping a proxy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_api::consts::env;
use weft_api::policy::DestinationState;
use weft_api::tls::MeshTls;

use crate::admin::{self, Admin};
use crate::config::ProxyConfig;
use crate::inbound::{self, Inbound};
use crate::metrics::Metrics;
use crate::outbound::{self, Outbound};

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("discovery cannot be set up: {0}")]
    Discovery(#[source] weft_api::control::ControlError),
    #[error("tracing cannot be set up: {0}")]
    Tracing(#[from] crate::trace::TraceError),
    #[error(
        "cannot listen on {addr} for the {what}: {source}; is another proxy running? choose another address with {var}"
    )]
    Bind {
        what: String,
        addr: SocketAddr,
        var: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A running proxy.
#[derive(Debug)]
pub struct ProxyHandle {
    pub inbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The transparent outbound listeners' bound addresses (none in local mode).
    pub outbound_addrs: Vec<SocketAddr>,
    /// Each upstream's name and bound address, in configuration order.
    pub upstream_addrs: Vec<(String, SocketAddr)>,
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl ProxyHandle {
    /// The bound address of the upstream listener named `name`.
    pub fn upstream_addr(&self, name: &str) -> Option<SocketAddr> {
        self.upstream_addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Resolves when shutdown was requested (`POST /shutdown` or [`Self::shutdown`]).
    pub async fn shutdown_requested(&self) {
        self.shutdown.cancelled().await;
    }

    /// Stops accepting, lets in-flight work finish for up to `grace`, and
    /// returns whether everything drained in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// Binds every listener of `config` and starts serving. TLS credentials may
/// be installed in `tls` before or after: until then the proxy is not ready.
/// Every upstream serves its static target (see [`start_with`]).
pub async fn start(config: ProxyConfig, tls: Arc<MeshTls>) -> Result<ProxyHandle, StartError> {
    start_with(config, tls, HashMap::new()).await
}

/// Like [`start`], but the upstreams named in `states` serve the snapshots of
/// that watch (discovery's) instead of their static targets.
pub async fn start_with(
    config: ProxyConfig,
    tls: Arc<MeshTls>,
    mut states: HashMap<String, watch::Receiver<Arc<DestinationState>>>,
) -> Result<ProxyHandle, StartError> {
    let metrics = Arc::new(Metrics::with_max_identities(config.metrics_max_identities));
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(crate::metrics::expire_idle_series(
        metrics.clone(),
        config.metrics_idle_expiry,
        shutdown.clone(),
    ));

    let inbound_listener = bind(config.inbound_addr, "inbound listener", env::INBOUND_ADDR).await?;
    let admin_listener = bind(config.admin_addr, "admin server", env::ADMIN_ADDR).await?;
    let mut upstream_listeners = Vec::with_capacity(config.upstreams.len());
    for upstream in &config.upstreams {
        let what = format!("upstream {}", upstream.target.name);
        let listener = bind(upstream.listen, &what, env::UPSTREAMS).await?;
        let bound = local_addr(&listener, upstream.listen);
        upstream_listeners.push((upstream.target.clone(), bound, listener));
    }
    let mut service_listeners = Vec::with_capacity(config.service_upstreams.len());
    for upstream in &config.service_upstreams {
        let what = format!("upstream {}", upstream.service);
        let listener = bind(upstream.listen, &what, env::UPSTREAMS).await?;
        let bound = local_addr(&listener, upstream.listen);
        service_listeners.push((upstream.clone(), bound, listener));
    }
    let discovery = match &config.discovery {
        Some(d) => Some(
            crate::discovery::Discovery::new(d, tls.clone(), shutdown.clone(), metrics.clone())
                .map_err(StartError::Discovery)?,
        ),
        None => None,
    };

    let mut transparent_listeners = Vec::new();
    if let Some(transparent) = &config.transparent {
        for (i, &addr) in transparent.listen.iter().enumerate() {
            match bind(addr, "transparent outbound listener", env::OUTBOUND_ADDR).await {
                Ok(listener) => transparent_listeners.push(listener),
                // The default IPv6 loopback listener is optional: a pod
                // without IPv6 has no `::1`, and no IPv6 to redirect.
                Err(error) if i > 0 && addr.is_ipv6() => {
                    tracing::info!(%addr, %error, "no IPv6 transparent listener");
                }
                Err(error) => return Err(error),
            }
        }
    }

    let inbound_addr = local_addr(&inbound_listener, config.inbound_addr);
    let admin_addr = local_addr(&admin_listener, config.admin_addr);
    let outbound_addrs: Vec<SocketAddr> = transparent_listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let own_ports: Arc<[u16]> = [inbound_addr.port(), admin_addr.port()]
        .into_iter()
        .chain(outbound_addrs.iter().map(SocketAddr::port))
        .collect();

    let mut authz = crate::authz::Authorizer::new(config.default_inbound, metrics.clone())
        .with_probes(config.probe_paths.clone());
    match (&discovery, &config.workload) {
        (Some(discovery), Some(workload)) => {
            let pushed = crate::inbound_policy::InboundPolicies::new(
                discovery.clone(),
                workload,
                Arc::new(crate::authz::default_policy(config.default_inbound)),
            );
            // Local mode: callers dial the inbound listener, whose port the
            // policy names.
            let fixed = match config.app {
                crate::config::AppTarget::Fixed(_) => Some(inbound_addr.port()),
                crate::config::AppTarget::OriginalDst => None,
            };
            for port in config.inbound_ports.iter().copied().chain(fixed) {
                pushed.watch(port);
            }
            authz = authz.with_pushed(pushed);
        }
        (Some(_), None) => tracing::info!(
            mode = %config.default_inbound,
            "{} is unset: no inbound policy is watched; the default inbound mode applies to every port",
            env::WORKLOAD
        ),
        (None, _) => {}
    }
    let tracer = config
        .tracing
        .as_ref()
        .map(|c| crate::trace::Tracer::start(c, metrics.clone()))
        .transpose()?;
    let inbound = Inbound::new(
        &tls,
        metrics.clone(),
        config.app,
        config.detect_timeout,
        config.header_timeout,
        own_ports.clone(),
        authz,
        tracer.clone(),
        config.access_log,
    );
    tracker.spawn(inbound::serve(
        inbound,
        inbound_listener,
        shutdown.clone(),
        tracker.clone(),
    ));

    let outbound = Outbound::new(
        tls.clone(),
        metrics.clone(),
        config.connect_timeout,
        config.detect_timeout,
        config.header_timeout,
        config.retry_buffer_bytes,
        tracer,
        config.access_log,
    );
    let mut upstream_addrs = Vec::new();
    let mut upstream_targets = Vec::new();
    for (target, listen, listener) in upstream_listeners {
        upstream_addrs.push((target.name.clone(), listen));
        let upstream = Arc::new(match states.remove(&target.name) {
            Some(state) => outbound::Upstream::new(target.name.clone(), target.opaque, state),
            // The static configuration: an explicit, never-changing override.
            None => {
                outbound::Upstream::fixed(target.name.clone(), target.opaque, target.to_state())
            }
        });
        upstream_targets.push((listen, upstream.clone()));
        tracker.spawn(outbound::serve_upstream(
            outbound.clone(),
            listener,
            upstream,
            shutdown.clone(),
            tracker.clone(),
        ));
    }

    // Upstreams naming a service: their targets come from discovery.
    if let Some(discovery) = &discovery {
        for (upstream, listen, listener) in service_listeners {
            let name = upstream.service.to_string();
            upstream_addrs.push((name.clone(), listen));
            let states = discovery.subscribe(&upstream.service);
            let target = Arc::new(outbound::Upstream::new(name, upstream.opaque, states));
            upstream_targets.push((listen, target.clone()));
            tracker.spawn(outbound::serve_upstream(
                outbound.clone(),
                listener,
                target,
                shutdown.clone(),
                tracker.clone(),
            ));
        }
    }

    if let Some(transparent) = config.transparent.clone() {
        let transparent = Arc::new(transparent);
        for listener in transparent_listeners {
            tracker.spawn(outbound::transparent::serve(
                outbound.clone(),
                transparent.clone(),
                discovery.clone(),
                own_ports.clone(),
                listener,
                shutdown.clone(),
                tracker.clone(),
            ));
        }
    }

    let admin = Admin {
        metrics: metrics.clone(),
        tls,
        shutdown: shutdown.clone(),
        extras: config.admin.clone(),
        config: Arc::new(admin::RunningConfig {
            settings: config,
            inbound_addr,
            admin_addr,
            outbound_addrs: outbound_addrs.clone(),
            upstreams: upstream_targets,
        }),
    };
    tracker.spawn(admin::serve(
        admin,
        admin_listener,
        shutdown.clone(),
        tracker.clone(),
    ));

    tracing::info!(%inbound_addr, %admin_addr, ?outbound_addrs, upstreams = upstream_addrs.len(), "proxy started");
    Ok(ProxyHandle {
        inbound_addr,
        admin_addr,
        outbound_addrs,
        upstream_addrs,
        metrics,
        shutdown,
        tracker,
    })
}

async fn bind(addr: SocketAddr, what: &str, var: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            what: what.to_owned(),
            addr,
            var,
            source,
        })
}

fn local_addr(listener: &TcpListener, configured: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(configured)
}

/// Raises the open-file soft limit to the hard limit, so that the proxy can
/// hold as many connections as the system allows.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%error, soft, hard, "could not raise the open file limit");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not read the open file limit"),
    }
}
