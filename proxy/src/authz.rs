//! Inbound authorization: the workload's inbound policy applied to every
//! request and opaque connection that reaches the inbound listener, each
//! decision counted (`weft_inbound_authz_total`) and each denial (and audited
//! would-be denial) logged once per caller, port and policy, then at most once
//! a minute with the number left unlogged.
//!
//! The policy of a port is what the controller pushes for it
//! ([`crate::inbound_policy`]: `Inbound.Watch(workload, port)`), applied to
//! each new request and connection; without a controller, or before its first
//! answer, the default inbound mode of the workload
//! (`WEFT_PROXY_DEFAULT_INBOUND_POLICY`: `allow-all`, `mesh-only`, `deny` or
//! `audit`) with no authorizations.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_api::Identity;
use weft_api::policy::{Decision, InboundMode, InboundPolicy, ProtocolHint};

use crate::inbound_policy::InboundPolicies;
use crate::metrics::{AuthzLabels, Metrics};

/// The policy label of a kubelet probe let through.
pub const PROBE_POLICY: &str = "kubelet-probe";

/// How often one (caller, port, policy) denial is logged again.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Denial log keys kept; past this the oldest are forgotten (a flood of
/// distinct callers cannot grow the proxy's memory).
const MAX_LOG_KEYS: usize = 1024;

/// Who called, as authorization, metrics and logs see it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The identity the client's certificate proved; `None`: plaintext.
    pub identity: Option<Identity>,
    /// The identity's text, empty for plaintext (a metric label).
    pub label: Arc<str>,
}

impl Caller {
    pub fn plaintext() -> Self {
        Self {
            identity: None,
            label: Arc::from(""),
        }
    }

    pub fn mesh(identity: Identity) -> Self {
        let label = Arc::from(identity.to_string());
        Self {
            identity: Some(identity),
            label,
        }
    }
}

/// Applies the inbound policy; see the module docs.
pub struct Authorizer {
    /// The policy without a controller.
    policy: Arc<InboundPolicy>,
    /// The controller's per-port policies, when there is a controller and the
    /// proxy knows its workload.
    pushed: Option<InboundPolicies>,
    /// `default:<mode>` of each [`InboundMode::ALL`], the policy label of
    /// decisions by the default mode.
    default_labels: [Arc<str>; 4],
    /// The kubelet's probes (port, path), which plaintext callers may make.
    probes: Vec<(u16, String)>,
    probe_label: Arc<str>,
    metrics: Arc<Metrics>,
    logged: Mutex<HashMap<LogKey, Logged>>,
}

type LogKey = (Arc<str>, u16, Arc<str>);

struct Logged {
    at: Instant,
    unlogged: u64,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("policy", &self.policy)
            .field("pushed", &self.pushed)
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    /// An authorizer of `mode` with no authorizations.
    pub fn new(mode: InboundMode, metrics: Arc<Metrics>) -> Self {
        Self {
            policy: Arc::new(default_policy(mode)),
            pushed: None,
            default_labels: InboundMode::ALL.map(|m| Arc::from(format!("default:{m}"))),
            probes: Vec::new(),
            probe_label: Arc::from(PROBE_POLICY),
            metrics,
            logged: Mutex::new(HashMap::new()),
        }
    }

    /// Takes each port's policy from the controller.
    pub fn with_pushed(mut self, pushed: InboundPolicies) -> Self {
        self.pushed = Some(pushed);
        self
    }

    /// Lets plaintext callers make the kubelet's probes, `(port, path)`, in
    /// every mode (counted as policy [`PROBE_POLICY`]).
    pub fn with_probes(mut self, probes: Vec<(u16, String)>) -> Self {
        self.probes = probes;
        self
    }

    /// The controller's policies, when it pushes them.
    pub fn pushed(&self) -> Option<&InboundPolicies> {
        self.pushed.as_ref()
    }

    /// Whether `caller` may make `request` (`(method, path)`; `None`: an opaque
    /// connection) on the app's `port`. Counts the decision and logs a denial.
    pub async fn allows(&self, port: u16, caller: &Caller, request: Option<(&str, &str)>) -> bool {
        if caller.identity.is_none()
            && let Some((method, path)) = request
            && matches!(method, "GET" | "HEAD" | "POST")
            && self
                .probes
                .iter()
                .any(|(p, probe)| *p == port && probe == path)
        {
            self.metrics.authz(AuthzLabels {
                decision: "allowed",
                policy: self.probe_label.clone(),
                tls: false,
                peer_identity: caller.label.clone(),
                port,
            });
            return true;
        }
        let policy = match &self.pushed {
            Some(pushed) => pushed.policy(port).await,
            None => self.policy.clone(),
        };
        let decision = policy.decide(caller.identity.as_ref(), request);
        let default_label = || {
            let i = InboundMode::ALL
                .iter()
                .position(|m| *m == policy.default_mode)
                .unwrap_or(0);
            self.default_labels[i].clone()
        };
        let (outcome, label, allowed) = match decision {
            Decision::Allowed(Some(name)) => ("allowed", Arc::from(name), true),
            Decision::Allowed(None) => ("allowed", default_label(), true),
            Decision::Audited => ("audited", default_label(), true),
            Decision::Denied => ("denied", default_label(), false),
        };
        if outcome != "allowed" {
            self.log(outcome, port, caller, request, &label, policy.default_mode);
        }
        self.metrics.authz(AuthzLabels {
            decision: outcome,
            policy: label,
            tls: caller.identity.is_some(),
            peer_identity: caller.label.clone(),
            port,
        });
        allowed
    }

    fn log(
        &self,
        outcome: &'static str,
        port: u16,
        caller: &Caller,
        request: Option<(&str, &str)>,
        policy: &Arc<str>,
        mode: InboundMode,
    ) {
        let key = (caller.label.clone(), port, policy.clone());
        let now = Instant::now();
        let unlogged = {
            // A poisoned lock only means a panic elsewhere mid-update of this
            // log bookkeeping; the map is still usable.
            let mut logged = self
                .logged
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(entry) = logged.get_mut(&key) {
                if now.duration_since(entry.at) < LOG_EVERY {
                    entry.unlogged += 1;
                    return;
                }
                let unlogged = entry.unlogged;
                *entry = Logged {
                    at: now,
                    unlogged: 0,
                };
                unlogged
            } else {
                if logged.len() >= MAX_LOG_KEYS {
                    logged.retain(|_, e| now.duration_since(e.at) < LOG_EVERY);
                    if logged.len() >= MAX_LOG_KEYS {
                        logged.clear();
                    }
                }
                logged.insert(
                    key,
                    Logged {
                        at: now,
                        unlogged: 0,
                    },
                );
                0
            }
        };
        let caller_text = if caller.identity.is_some() {
            &*caller.label
        } else {
            "plaintext (no mesh identity)"
        };
        let (method, path) = request.unwrap_or(("", ""));
        let what = if request.is_some() {
            "request"
        } else {
            "connection"
        };
        let mode = mode.as_str();
        let target = self.pushed.as_ref().map_or("", InboundPolicies::workload);
        // tracing's level is part of each event's static metadata, hence two calls.
        if outcome == "denied" {
            tracing::warn!(caller = caller_text, target, port, policy = %policy, method, path, unlogged_since_last = unlogged,
                "denied an inbound {what}: no authorization allows this caller and the default mode is {mode}");
        } else {
            tracing::info!(caller = caller_text, target, port, policy = %policy, method, path, unlogged_since_last = unlogged,
                "audit mode let through an inbound {what} that deny would refuse");
        }
    }
}

/// A port's policy before (or without) the controller: `mode`, no authorizations.
pub fn default_policy(mode: InboundMode) -> InboundPolicy {
    InboundPolicy {
        protocol: ProtocolHint::Unknown,
        default_mode: mode,
        authorizations: Vec::new(),
    }
}
