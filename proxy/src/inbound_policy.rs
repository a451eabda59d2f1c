//! The proxy's inbound policy client: one `weft.v1.Inbound.Watch(workload,
//! port)` stream per app port, on discovery's channel to the controller.
//!
//! A port's stream is opened at start for the ports the workload is known to
//! serve (`WEFT_PROXY_INBOUND_PORTS`, set by the injector from the pod's
//! container ports; the app's port in local mode) and otherwise the first time
//! a caller reaches the port. Until the controller's first answer a port has
//! the default policy (the default inbound mode, no authorizations); the first
//! request on a port waits up to [`FIRST_ANSWER_TIMEOUT`] for that answer.
//! Each pushed policy replaces the port's policy for the requests and
//! connections authorized after it (requests in flight keep the decision
//! they got). A policy that fails conversion is logged and ignored, and while
//! the controller is unreachable the last policy stays in force; a broken
//! stream is opened again after discovery's backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use weft_api::policy::InboundPolicy;
use weft_api::proto::weft_v1 as pb;
use weft_api::proto::weft_v1::inbound_client::InboundClient;

pub use crate::discovery::FIRST_ANSWER_TIMEOUT;
use crate::discovery::{Discovery, Inner, backoff};
use crate::lock;

/// The inbound policies of one workload's ports. Cheap to clone.
#[derive(Clone)]
pub struct InboundPolicies {
    discovery: Discovery,
    /// `<namespace>/<pod>` (Kubernetes) or the local workload's name.
    workload: Arc<str>,
    /// What a port has before the controller's first answer.
    default: Arc<InboundPolicy>,
    ports: Arc<Mutex<HashMap<u16, Port>>>,
}

#[derive(Clone)]
struct Port {
    policy: watch::Receiver<Arc<InboundPolicy>>,
    /// Whether the controller answered (a policy, or an error) once.
    answered: watch::Receiver<bool>,
}

impl std::fmt::Debug for InboundPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundPolicies")
            .field("workload", &self.workload)
            .field("default", &self.default.default_mode)
            .finish_non_exhaustive()
    }
}

impl InboundPolicies {
    /// The policies of `workload`, from the controller `discovery` talks to;
    /// `default` until it answers.
    pub fn new(discovery: Discovery, workload: &str, default: Arc<InboundPolicy>) -> Self {
        Self {
            discovery,
            workload: Arc::from(workload),
            default,
            ports: Arc::default(),
        }
    }

    /// The workload, as the controller names it.
    pub fn workload(&self) -> &str {
        &self.workload
    }

    /// Opens the stream of `port` now, unless it is open.
    pub fn watch(&self, port: u16) {
        self.port(port);
    }

    /// The policy in force on `port`, waiting up to [`FIRST_ANSWER_TIMEOUT`]
    /// for the controller's first answer about it.
    pub async fn policy(&self, port: u16) -> Arc<InboundPolicy> {
        // The common case, once the controller has answered: one lookup, no
        // receiver cloned.
        if let Some(p) = lock(&self.ports).get(&port)
            && *p.answered.borrow()
        {
            return p.policy.borrow().clone();
        }
        let Port {
            policy,
            mut answered,
        } = self.port(port);
        if !*answered.borrow() {
            let waited =
                tokio::time::timeout(FIRST_ANSWER_TIMEOUT, answered.wait_for(|a| *a)).await;
            if !matches!(waited, Ok(Ok(_))) {
                tracing::debug!(port, workload = %self.workload, "no inbound policy from the controller yet; the default mode applies");
            }
        }
        policy.borrow().clone()
    }

    /// The ports watched and their policies now (for `/config`).
    pub fn snapshot(&self) -> Vec<(u16, Arc<InboundPolicy>)> {
        let mut out: Vec<(u16, Arc<InboundPolicy>)> = lock(&self.ports)
            .iter()
            .map(|(port, p)| (*port, p.policy.borrow().clone()))
            .collect();
        out.sort_by_key(|(port, _)| *port);
        out
    }

    fn port(&self, port: u16) -> Port {
        let mut ports = lock(&self.ports);
        if let Some(p) = ports.get(&port) {
            return p.clone();
        }
        let (policy_tx, policy) = watch::channel(self.default.clone());
        let (answered_tx, answered) = watch::channel(false);
        let entry = Port { policy, answered };
        ports.insert(port, entry.clone());
        let request = pb::InboundRequest {
            workload: self.workload.to_string(),
            port: u32::from(port),
        };
        tokio::spawn(stream_port(
            self.discovery.inner.clone(),
            request,
            policy_tx,
            answered_tx,
        ));
        entry
    }
}

/// Keeps one port's stream open until the proxy stops.
async fn stream_port(
    inner: Arc<Inner>,
    request: pb::InboundRequest,
    policy: watch::Sender<Arc<InboundPolicy>>,
    answered: watch::Sender<bool>,
) {
    let port = request.port;
    let workload = request.workload.clone();
    let mut failures: u32 = 0;
    inner.certified().await;
    loop {
        let mut client = InboundClient::new(inner.channel());
        let opened = tokio::select! {
            opened = client.watch(request.clone()) => opened,
            () = inner.stop.cancelled() => return,
        };
        match opened {
            Ok(response) => {
                let mut stream = response.into_inner();
                let _open = inner.metrics.control_stream_open("inbound");
                loop {
                    let message = tokio::select! {
                        m = stream.message() => m,
                        () = inner.stop.cancelled() => return,
                    };
                    match message {
                        Ok(Some(pushed)) => {
                            failures = 0;
                            match InboundPolicy::try_from(pushed) {
                                Ok(pushed) => {
                                    let names: Vec<&str> = pushed
                                        .authorizations
                                        .iter()
                                        .map(|a| a.name.as_str())
                                        .collect();
                                    tracing::info!(
                                        port,
                                        %workload,
                                        mode = %pushed.default_mode,
                                        authorizations = ?names,
                                        "inbound policy in force"
                                    );
                                    policy.send_replace(Arc::new(pushed));
                                    inner.metrics.policy_update("inbound");
                                }
                                Err(error) => tracing::warn!(
                                    port,
                                    %workload,
                                    %error,
                                    "ignoring an invalid inbound policy; the last good one stays"
                                ),
                            }
                            answered.send_replace(true);
                        }
                        Ok(None) => {
                            tracing::info!(port, %workload, "the controller ended the inbound policy stream; opening it again");
                            break;
                        }
                        Err(status) => {
                            tracing::warn!(port, %workload, code = ?status.code(), message = status.message(), "inbound policy stream broken; the last policy stays");
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                if status.code() == tonic::Code::Unauthenticated {
                    // The channel connected without a certificate (or with
                    // one since replaced): the next attempt makes a new one.
                    inner.reconnect();
                }
                answered.send_replace(true);
                tracing::warn!(
                    port,
                    %workload,
                    controller = %inner.controller,
                    code = ?status.code(),
                    message = status.message(),
                    "cannot watch the inbound policy; the last policy stays, retrying"
                );
            }
        }
        failures = failures.saturating_add(1);
        inner.metrics.control_stream_retry("inbound");
        let wait = backoff(failures);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = inner.stop.cancelled() => return,
        }
    }
}
