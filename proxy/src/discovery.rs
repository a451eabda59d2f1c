//! The proxy's discovery client: one `weft.v1.Discovery.Watch` stream per
//! target, opened the first time the target is needed and kept open.
//!
//! Each target has a `watch` channel of [`DestinationState`] that changes only
//! when a new good snapshot arrives: a snapshot that fails conversion or
//! validation is logged and ignored, and while the controller is unreachable
//! the last snapshot stays in force. A broken stream is opened again after a
//! jittered exponential backoff ([`BACKOFF_MIN`] to [`BACKOFF_MAX`]).
//!
//! A target the controller answers `NotFound` (an `ip:port` that is not in
//! the mesh) is remembered as such for [`NOT_IN_MESH_TTL`], then asked again:
//! the transparent listener passes those destinations through untouched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use weft_api::Identity;
use weft_api::policy::{DestinationState, LoadBalancer, RetryBudget, Target};
use weft_api::proto::weft_v1 as pb;
use weft_api::proto::weft_v1::discovery_client::DiscoveryClient;
use weft_api::tls::MeshTls;

use crate::lock;

/// The shortest and longest wait before a stream is opened again.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a `NotFound` answer is believed.
pub const NOT_IN_MESH_TTL: Duration = Duration::from_secs(5);
/// How long [`Discovery::lookup`] waits for the controller's first answer.
pub const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the proxy's controller is and who the proxy is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// The controller's gRPC address, `host:port`.
    pub controller_addr: String,
    /// The identity the controller must prove.
    pub controller_identity: Identity,
    /// The identity the proxy asks as (its certificate's).
    pub identity: Identity,
}

/// What the controller said about a target so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No answer yet.
    Waiting,
    /// At least one good snapshot arrived.
    Known,
    /// `NotFound`: not in the mesh.
    NotInMesh,
    /// The controller could not be reached (or failed) before any snapshot.
    Unavailable,
}

struct Entry {
    state: watch::Receiver<Arc<DestinationState>>,
    phase: watch::Receiver<Phase>,
    asked: Instant,
}

/// The discovery client of one proxy. Cheap to clone.
#[derive(Clone)]
pub struct Discovery {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The channel of the `Watch` streams (discovery's and the inbound
    /// policy's, [`crate::inbound_policy`]). Replaced by a new channel when
    /// the controller finds no client certificate on the current one (it
    /// connected before there was one).
    channel: Mutex<Channel>,
    config: DiscoveryConfig,
    tls: Arc<MeshTls>,
    caller: Identity,
    pub(crate) controller: String,
    targets: Mutex<HashMap<Target, Entry>>,
    pub(crate) stop: CancellationToken,
    /// Counts the streams of discovery and of the inbound policy.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("controller", &self.inner.controller)
            .field("caller", &self.inner.caller)
            .finish_non_exhaustive()
    }
}

/// The answer of [`Discovery::lookup`].
#[derive(Debug)]
pub enum Lookup {
    /// A mesh target: its snapshots.
    Mesh(watch::Receiver<Arc<DestinationState>>),
    /// Not in the mesh (or the controller has not answered): pass it through.
    PassThrough,
}

impl Discovery {
    /// A client of the controller in `config`; streams end when `stop` is cancelled.
    pub fn new(
        config: &DiscoveryConfig,
        tls: Arc<MeshTls>,
        stop: CancellationToken,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, weft_api::control::ControlError> {
        let channel = new_channel(config, &tls)?;
        Ok(Self {
            inner: Arc::new(Inner {
                channel: Mutex::new(channel),
                config: config.clone(),
                tls,
                caller: config.identity.clone(),
                controller: config.controller_addr.clone(),
                targets: Mutex::new(HashMap::new()),
                stop,
                metrics,
            }),
        })
    }

    /// The target's snapshots, at once: an empty snapshot (no backends, so
    /// requests are answered `no-endpoints`) until the controller's first one.
    /// For upstream listeners, which name their service.
    /// A `NotFound` answer is asked again (with backoff) until the target appears.
    pub fn subscribe(&self, target: &Target) -> watch::Receiver<Arc<DestinationState>> {
        self.entry(target, true).0
    }

    /// Whether `target` is in the mesh, waiting up to [`FIRST_ANSWER_TIMEOUT`]
    /// for the controller's first answer. For the transparent listener.
    pub async fn lookup(&self, target: &Target) -> Lookup {
        let (state, mut phase) = self.entry(target, false);
        let answered = tokio::time::timeout(
            FIRST_ANSWER_TIMEOUT,
            phase.wait_for(|p| *p != Phase::Waiting),
        )
        .await;
        let phase = match answered {
            Ok(Ok(p)) => *p,
            // The stream task ended without an answer, or no answer in time.
            Ok(Err(_)) | Err(_) => Phase::Unavailable,
        };
        match phase {
            Phase::Known => Lookup::Mesh(state),
            Phase::NotInMesh => Lookup::PassThrough,
            Phase::Waiting | Phase::Unavailable => {
                tracing::debug!(%target, controller = %self.inner.controller, "no answer from discovery yet; passing through");
                Lookup::PassThrough
            }
        }
    }

    /// The cached entry of `target`, opening its stream when there is none
    /// (or its `NotFound` is older than [`NOT_IN_MESH_TTL`]).
    fn entry(
        &self,
        target: &Target,
        persistent: bool,
    ) -> (
        watch::Receiver<Arc<DestinationState>>,
        watch::Receiver<Phase>,
    ) {
        let mut targets = lock(&self.inner.targets);
        if let Some(entry) = targets.get(target) {
            let stale = *entry.phase.borrow() == Phase::NotInMesh
                && entry.asked.elapsed() >= NOT_IN_MESH_TTL;
            if !stale {
                return (entry.state.clone(), entry.phase.clone());
            }
        }
        let (state_tx, state) = watch::channel(Arc::new(empty(target)));
        let (phase_tx, phase) = watch::channel(Phase::Waiting);
        targets.insert(
            target.clone(),
            Entry {
                state: state.clone(),
                phase: phase.clone(),
                asked: Instant::now(),
            },
        );
        tokio::spawn(stream_target(
            self.inner.clone(),
            target.clone(),
            persistent,
            state_tx,
            phase_tx,
        ));
        (state, phase)
    }
}

fn new_channel(
    config: &DiscoveryConfig,
    tls: &Arc<MeshTls>,
) -> Result<Channel, weft_api::control::ControlError> {
    weft_api::control::watch_channel(
        &config.controller_addr,
        tls.clone(),
        &config.controller_identity,
        weft_api::dns::Resolver::system(),
    )
}

impl Inner {
    /// The current channel to the controller.
    pub(crate) fn channel(&self) -> Channel {
        lock(&self.channel).clone()
    }

    /// A new channel, whose handshake presents the certificate installed now.
    pub(crate) fn reconnect(&self) {
        match new_channel(&self.config, &self.tls) {
            Ok(channel) => *lock(&self.channel) = channel,
            Err(error) => tracing::warn!(%error, "cannot make a new channel to the controller"),
        }
    }

    /// Waits until the proxy holds a certificate (the controller asks for it).
    pub(crate) async fn certified(&self) {
        while self.tls.credentials().is_none() {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                () = self.stop.cancelled() => return,
            }
        }
    }
}

/// A snapshot with nothing in it: what a target is before the controller speaks.
fn empty(target: &Target) -> DestinationState {
    DestinationState {
        version: 0,
        target: target.clone(),
        routes: Vec::new(),
        backends: Vec::new(),
        retry_budget: RetryBudget::default(),
        circuit_breaker: None,
        load_balancer: LoadBalancer::default(),
        connect_timeout: None,
    }
}

/// The wait before attempt `failures` (1 first): exponential from
/// [`BACKOFF_MIN`] to [`BACKOFF_MAX`], jittered to between half and all of it.
pub fn backoff(failures: u32) -> Duration {
    let exp = BACKOFF_MIN.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let ceiling = exp.min(BACKOFF_MAX);
    let half = ceiling / 2;
    half + ceiling
        .saturating_sub(half)
        .mul_f64(rand::rng().random::<f64>())
}

/// Keeps one target's stream open until the proxy stops (or, unless
/// `persistent`, the controller says the target is not in the mesh).
async fn stream_target(
    inner: Arc<Inner>,
    target: Target,
    persistent: bool,
    state: watch::Sender<Arc<DestinationState>>,
    phase: watch::Sender<Phase>,
) {
    let request = pb::DiscoveryRequest {
        target: target.to_string(),
        caller_identity: inner.caller.uri().to_string(),
    };
    let mut failures: u32 = 0;
    // Removed from the metrics when this task ends (the watch is dropped).
    let version = inner.metrics.destination_version(&request.target);
    inner.certified().await;
    loop {
        let mut client = DiscoveryClient::new(inner.channel());
        let opened = tokio::select! {
            opened = client.watch(request.clone()) => opened,
            () = inner.stop.cancelled() => return,
        };
        match opened {
            Ok(response) => {
                let mut stream = response.into_inner();
                let _open = inner.metrics.control_stream_open("discovery");
                loop {
                    let message = tokio::select! {
                        m = stream.message() => m,
                        () = inner.stop.cancelled() => return,
                    };
                    match message {
                        Ok(Some(snapshot)) => {
                            failures = 0;
                            match DestinationState::try_from(snapshot) {
                                Ok(snapshot) => {
                                    tracing::debug!(%target, version = snapshot.version, "discovery snapshot");
                                    let number = snapshot.version;
                                    state.send_replace(Arc::new(snapshot));
                                    phase.send_replace(Phase::Known);
                                    inner.metrics.policy_update("discovery");
                                    version.set(number);
                                }
                                Err(error) => tracing::warn!(
                                    %target,
                                    %error,
                                    "ignoring an invalid discovery snapshot; the last good one stays"
                                ),
                            }
                        }
                        Ok(None) => {
                            tracing::info!(%target, "the controller ended the discovery stream; opening it again");
                            break;
                        }
                        Err(status) => {
                            tracing::warn!(%target, code = ?status.code(), message = status.message(), "discovery stream broken; the last snapshot stays");
                            break;
                        }
                    }
                }
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                tracing::debug!(%target, "not in the mesh");
                phase.send_replace(Phase::NotInMesh);
                if !persistent {
                    return;
                }
            }
            Err(status) => {
                if status.code() == tonic::Code::Unauthenticated {
                    // The channel connected without a certificate (or with
                    // one since replaced): the next attempt makes a new one.
                    inner.reconnect();
                }
                if *phase.borrow() == Phase::Waiting {
                    phase.send_replace(Phase::Unavailable);
                }
                tracing::warn!(
                    %target,
                    controller = %inner.controller,
                    code = ?status.code(),
                    message = status.message(),
                    "cannot watch the target; the last snapshot stays, retrying"
                );
            }
        }
        failures = failures.saturating_add(1);
        inner.metrics.control_stream_retry("discovery");
        let wait = backoff(failures);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = inner.stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jittered_within_bounds() {
        for failures in 1..40 {
            let wait = backoff(failures);
            assert!(wait >= BACKOFF_MIN / 2, "{failures}: {wait:?}");
            assert!(wait <= BACKOFF_MAX, "{failures}: {wait:?}");
        }
        assert!(backoff(1) <= BACKOFF_MIN);
        assert!(backoff(30) >= BACKOFF_MAX / 2);
    }
}
