//! The transparent outbound listener: iptables (`weft-init`) redirects the
//! app's outgoing TCP here. The original destination is read from the socket
//! ([`crate::sockopt`]). A destination in the static map
//! (`WEFT_PROXY_DESTINATIONS`, an explicit override) is served like an
//! upstream, over mesh mTLS to that address; otherwise discovery is asked
//! about the `ip:port` ([`crate::discovery::Discovery::lookup`]): a mesh
//! target (a Service's cluster IP, a pod) is served with the target's current
//! snapshot, with protocol detection unless its port is opaque; a destination
//! the controller does not know (`NotFound`, cached for a few seconds) is
//! passed through in plain TCP, untouched. A connection whose destination is
//! the proxy itself (a loop) is refused.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Outbound;
use crate::config::{Target, Transparent};
use crate::discovery::{Discovery, Lookup};
use crate::metrics::{Direction, TcpLabels};
use crate::sockopt::original_dst;
use crate::transport::connect_tcp;

/// Accepts the app's redirected connections on `listener` until `shutdown`.
/// `own_ports` are the ports of the proxy's listeners: never a destination.
pub async fn serve(
    outbound: Arc<Outbound>,
    config: Arc<Transparent>,
    discovery: Option<Discovery>,
    own_ports: Arc<[u16]>,
    listener: TcpListener,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let stop = shutdown.clone();
    let cache: Arc<Discovered> = Arc::default();
    weft_api::accept::accept_loop(
        listener,
        "transparent outbound",
        shutdown,
        tracker,
        move |tcp, client| {
            let (outbound, config, discovery, cache, own_ports, stop) = (
                outbound.clone(),
                config.clone(),
                discovery.clone(),
                cache.clone(),
                own_ports.clone(),
                stop.clone(),
            );
            async move {
                handle(
                    outbound,
                    &config,
                    discovery.as_ref().map(|d| (d, &*cache)),
                    &own_ports,
                    tcp,
                    client,
                    stop,
                )
                .await;
            }
        },
    )
    .await;
}

/// Where a redirected connection goes.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// Over mesh mTLS to this target.
    Mesh(Target),
    /// Plain TCP to the original destination.
    PassThrough(SocketAddr),
    /// Refused, for this reason (a metric label).
    Refuse(&'static str),
}

fn route(config: &Transparent, own_ports: &[u16], orig: SocketAddr, local: SocketAddr) -> Route {
    // Not redirected (a direct connection to the listener), or redirected to
    // one of the proxy's own ports: either way it would come back here.
    if orig == local || own_ports.contains(&orig.port()) {
        return Route::Refuse("loop");
    }
    match config.destinations.lookup(orig) {
        Some(identity) => {
            let mut target = Target::single(&orig.to_string(), orig, identity.clone());
            target.opaque = config.opaque_ports.contains(&orig.port());
            Route::Mesh(target)
        }
        None => Route::PassThrough(orig),
    }
}

/// The discovered destinations' upstreams, one per original destination, so
/// that their endpoints' latency and breaker state outlive a connection.
type Discovered = std::sync::Mutex<std::collections::HashMap<SocketAddr, Arc<super::Upstream>>>;

/// What discovery says about a destination the static map does not name:
/// its upstream, or `None` to pass it through.
async fn discovered(
    discovery: &Discovery,
    cache: &Discovered,
    config: &Transparent,
    orig: SocketAddr,
) -> Option<Arc<super::Upstream>> {
    match discovery
        .lookup(&weft_api::policy::Target::Addr(orig))
        .await
    {
        Lookup::Mesh(states) => {
            let meshed = states
                .borrow()
                .backends
                .iter()
                .flat_map(|b| &b.endpoints)
                .any(|e| e.identity.is_some());
            if !meshed {
                // Known, but no meshed endpoint: reach it as before.
                return None;
            }
            let opaque = config.opaque_ports.contains(&orig.port());
            // A poisoned lock only means another connection panicked while
            // inserting; the map is still a valid cache.
            let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            let upstream = cache.entry(orig).or_insert_with(|| {
                Arc::new(super::Upstream::new(orig.to_string(), opaque, states))
            });
            Some(upstream.clone())
        }
        Lookup::PassThrough => None,
    }
}

async fn handle(
    outbound: Arc<Outbound>,
    config: &Transparent,
    discovery: Option<(&Discovery, &Discovered)>,
    own_ports: &[u16],
    tcp: TcpStream,
    client: SocketAddr,
    shutdown: CancellationToken,
) {
    let orig = match original_dst(&tcp) {
        Ok(orig) => orig,
        Err(error) => {
            outbound.metrics.outbound_refused("no-original-destination");
            tracing::warn!(%client, %error, "closing a connection without an original destination");
            return;
        }
    };
    let local = tcp.local_addr().unwrap_or(orig);
    let route = route(config, own_ports, orig, local);
    if let (Route::PassThrough(orig), Some((discovery, cache))) = (&route, discovery)
        && let Some(upstream) = discovered(discovery, cache, config, *orig).await
    {
        tracing::debug!(%client, %orig, "destination found by discovery");
        super::handle_connection(outbound, upstream, tcp, client, shutdown).await;
        return;
    }
    match route {
        Route::Mesh(target) => {
            tracing::debug!(%client, %orig, identity = ?target.backends.first().and_then(|b| b.endpoints.first()).map(|e| &e.identity), "meshed destination");
            let upstream =
                super::Upstream::fixed(target.name.clone(), target.opaque, target.to_state());
            super::handle_connection(outbound, Arc::new(upstream), tcp, client, shutdown).await;
        }
        Route::PassThrough(orig) => pass_through(&outbound, tcp, client, orig).await,
        Route::Refuse(reason) => {
            outbound.metrics.outbound_refused(reason);
            tracing::warn!(
                %client,
                %orig,
                "refused a connection to the proxy's own port (a loop); check the iptables rules exclude the proxy's uid"
            );
        }
    }
}

/// Relays bytes between the app and a destination outside the mesh.
async fn pass_through(outbound: &Outbound, tcp: TcpStream, client: SocketAddr, orig: SocketAddr) {
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
    let mut app = outbound.metrics.tcp(
        TcpLabels {
            direction: Direction::Outbound,
            tls: false,
            peer_identity: Arc::from(""),
        },
        tcp,
    );
    let mut dst = match tokio::time::timeout(outbound.connect_timeout, connect_tcp(orig)).await {
        Ok(Ok(dst)) => dst,
        Ok(Err(error)) => {
            tracing::debug!(%client, %orig, %error, "destination outside the mesh unreachable");
            return;
        }
        Err(_) => {
            tracing::debug!(%client, %orig, timeout = ?outbound.connect_timeout, "connecting to a destination outside the mesh timed out");
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut app, &mut dst).await {
        Ok((sent, received)) => {
            tracing::debug!(%client, %orig, sent, received, "pass-through connection closed");
        }
        Err(error) => tracing::debug!(%client, %orig, %error, "pass-through connection failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::Destinations;

    const OWN: [u16; 3] = [15140, 15143, 15191];

    fn config() -> Transparent {
        Transparent {
            destinations: Destinations::parse("198.18.0.3=spiffe://cluster.local/ns/default/sa/b")
                .unwrap(),
            opaque_ports: vec![6379],
            ..Transparent::new()
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn meshed_destinations_go_over_mtls_and_opaque_ports_skip_detection() {
        let local = addr("127.0.0.1:15140");
        let Route::Mesh(t) = route(&config(), &OWN, addr("198.18.0.3:8080"), local) else {
            panic!("expected a meshed route");
        };
        assert!(!t.opaque);
        let endpoint = &t.backends[0].endpoints[0];
        assert_eq!(endpoint.addr, addr("198.18.0.3:8080"));
        assert_eq!(endpoint.identity.service_account(), "b");
        let Route::Mesh(t) = route(&config(), &OWN, addr("198.18.0.3:6379"), local) else {
            panic!("expected a meshed route");
        };
        assert!(t.opaque);
    }

    #[test]
    fn other_destinations_pass_through_and_loops_are_refused() {
        let local = addr("127.0.0.1:15140");
        assert_eq!(
            route(&config(), &OWN, addr("198.18.0.4:80"), local),
            Route::PassThrough(addr("198.18.0.4:80"))
        );
        // A direct connection to the listener has itself as destination.
        assert_eq!(route(&config(), &OWN, local, local), Route::Refuse("loop"));
        for port in OWN {
            let orig = SocketAddr::new(addr("198.18.0.3:1").ip(), port);
            assert_eq!(route(&config(), &OWN, orig, local), Route::Refuse("loop"));
        }
    }
}
