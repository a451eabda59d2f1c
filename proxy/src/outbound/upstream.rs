//! A target as the data path holds it: the discovery snapshot it reads per
//! request ([`Upstream::state`]) and the state the proxy keeps about the
//! target's endpoints across snapshots ([`Runtime`]: peak-EWMA latency,
//! in-flight requests, circuit breaking, the retry budget).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use weft_api::policy::{
    Backend, CircuitBreaker, DestinationState, Endpoint as PolicyEndpoint, LoadBalancer,
    RetryBudget,
};

use crate::config::Endpoint;
use crate::lock;
use crate::metrics::Metrics;

/// One outbound target: its name (for logs and metrics), whether its traffic
/// is opaque TCP, the snapshot discovery (or the static configuration) keeps
/// current, and the per-endpoint state that outlives snapshots.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub opaque: bool,
    pub state: watch::Receiver<Arc<DestinationState>>,
    pub(crate) runtime: Arc<Runtime>,
}

impl Upstream {
    pub fn new(
        name: impl Into<String>,
        opaque: bool,
        state: watch::Receiver<Arc<DestinationState>>,
    ) -> Self {
        let name = name.into();
        Self {
            runtime: Arc::new(Runtime::new(&name)),
            name,
            opaque,
            state,
        }
    }

    /// A target that never changes (the static configuration's override).
    pub fn fixed(name: impl Into<String>, opaque: bool, state: DestinationState) -> Self {
        let (tx, rx) = watch::channel(Arc::new(state));
        // The sender is dropped: receivers keep the last value for good.
        drop(tx);
        Self::new(name, opaque, rx)
    }

    /// The snapshot in force now, with its endpoints' runtime state.
    pub(crate) fn resolve(&self) -> Arc<Resolved> {
        let state = self.state.borrow().clone();
        self.runtime.resolve(state)
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}

/// What the proxy knows about a target's endpoints beyond the snapshot.
#[derive(Debug)]
pub struct Runtime {
    target: Arc<str>,
    /// By address: an endpoint that stays across snapshots keeps its state.
    endpoints: Mutex<HashMap<SocketAddr, Arc<EndpointRuntime>>>,
    /// The last snapshot resolved, reused while discovery sends no new one.
    resolved: Mutex<Option<Arc<Resolved>>>,
    budget: Mutex<BudgetWindow>,
    round_robin: AtomicUsize,
}

/// A snapshot with each endpoint's runtime state beside it.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub state: Arc<DestinationState>,
    /// `backends[i][j]` is endpoint `j` of `state.backends[i]`.
    pub backends: Vec<Vec<Arc<EndpointRuntime>>>,
    pub backend_names: Vec<Arc<str>>,
    pub route_names: Vec<Arc<str>>,
    /// `route_backends[r]`: the backend refs of `state.routes[r]` as (index
    /// into `state.backends`, weight), found by name once per snapshot; a ref
    /// naming no backend is left out.
    pub route_backends: Vec<Vec<(usize, u32)>>,
}

impl Runtime {
    fn new(target: &str) -> Self {
        Self {
            target: Arc::from(target),
            endpoints: Mutex::new(HashMap::new()),
            resolved: Mutex::new(None),
            budget: Mutex::new(BudgetWindow::new()),
            round_robin: AtomicUsize::new(0),
        }
    }

    pub fn target(&self) -> &Arc<str> {
        &self.target
    }

    /// The state of every endpoint the proxy knows, by address.
    pub fn endpoint(&self, addr: SocketAddr) -> Option<Arc<EndpointRuntime>> {
        lock(&self.endpoints).get(&addr).cloned()
    }

    pub(crate) fn resolve(&self, state: Arc<DestinationState>) -> Arc<Resolved> {
        {
            let resolved = lock(&self.resolved);
            if let Some(r) = resolved.as_ref()
                && Arc::ptr_eq(&r.state, &state)
            {
                return r.clone();
            }
        }
        let resolved = Arc::new(self.build(state));
        *lock(&self.resolved) = Some(resolved.clone());
        resolved
    }

    /// Matches a new snapshot's endpoints to the runtime state of those the
    /// proxy already knew; endpoints no longer in it are forgotten.
    fn build(&self, state: Arc<DestinationState>) -> Resolved {
        let mut known = lock(&self.endpoints);
        let mut next = HashMap::new();
        let backends = state
            .backends
            .iter()
            .map(|b| {
                b.endpoints
                    .iter()
                    .map(|e| {
                        let rt = match known.get(&e.addr) {
                            Some(rt) if rt.endpoint.identity == e.identity => rt.clone(),
                            _ => Arc::new(EndpointRuntime::new(e)),
                        };
                        next.insert(e.addr, rt.clone());
                        rt
                    })
                    .collect()
            })
            .collect();
        for (addr, rt) in known.iter() {
            if !next.contains_key(addr) {
                rt.forget();
            }
        }
        *known = next;
        Resolved {
            backend_names: state.backends.iter().map(|b| Arc::from(&*b.name)).collect(),
            route_names: state.routes.iter().map(|r| Arc::from(&*r.name)).collect(),
            route_backends: state
                .routes
                .iter()
                .map(|route| {
                    route
                        .backends
                        .iter()
                        .filter_map(|r| {
                            let i = state.backends.iter().position(|b| b.name == r.name)?;
                            Some((i, r.weight))
                        })
                        .collect()
                })
                .collect(),
            backends,
            state,
        }
    }

    pub(crate) fn next_round_robin(&self) -> usize {
        self.round_robin.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts an original request of a route that retries.
    pub(crate) fn deposit(&self, budget: &RetryBudget) {
        lock(&self.budget).add(budget.window, Instant::now(), 1, 0);
    }

    /// Takes a retry from the budget; `false`: the budget is spent.
    pub(crate) fn withdraw(&self, budget: &RetryBudget) -> bool {
        let now = Instant::now();
        let mut w = lock(&self.budget);
        let (requests, retries) = w.totals(budget.window, now);
        let allowed = budget.ratio * requests as f64
            + f64::from(budget.min_per_second) * budget.window.as_secs_f64().max(1.0);
        if (retries + 1) as f64 > allowed {
            return false;
        }
        w.add(budget.window, now, 0, 1);
        true
    }
}

/// Requests and retries over a sliding window of ten slots.
#[derive(Debug)]
struct BudgetWindow {
    slots: [(u64, u64); 10],
    /// The slot `current` started at.
    start: Instant,
    current: usize,
}

impl BudgetWindow {
    fn new() -> Self {
        Self {
            slots: [(0, 0); 10],
            start: Instant::now(),
            current: 0,
        }
    }

    fn advance(&mut self, window: Duration, now: Instant) {
        let slot = (window / 10).max(Duration::from_millis(1));
        let mut steps = 0;
        while now.saturating_duration_since(self.start) >= slot && steps < 10 {
            self.current = (self.current + 1) % 10;
            self.slots[self.current] = (0, 0);
            self.start += slot;
            steps += 1;
        }
        if steps == 10 {
            self.start = now;
        }
    }

    fn add(&mut self, window: Duration, now: Instant, requests: u64, retries: u64) {
        self.advance(window, now);
        let s = &mut self.slots[self.current];
        s.0 += requests;
        s.1 += retries;
    }

    fn totals(&mut self, window: Duration, now: Instant) -> (u64, u64) {
        self.advance(window, now);
        self.slots
            .iter()
            .fold((0, 0), |(a, b), (r, t)| (a + r, b + t))
    }
}

/// One endpoint's runtime state.
#[derive(Debug)]
pub struct EndpointRuntime {
    pub endpoint: PolicyEndpoint,
    /// The pool key and TLS expectation, for a meshed endpoint.
    pub(crate) mesh: Option<Endpoint>,
    pending: AtomicU32,
    health: Mutex<Health>,
}

#[derive(Debug)]
struct Health {
    /// Peak-EWMA latency in nanoseconds; 0 before the first response.
    ewma_ns: f64,
    stamp: Instant,
    failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections in a row (the next lasts base * 2^ejections).
    ejections: u32,
    /// A half-open probe is in flight.
    probing: bool,
    /// The ejection gauge, while this endpoint is ejected.
    gauge: Option<Gauge>,
}

/// What a try's outcome means for the circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Failure,
}

/// An endpoint as `/config` shows it.
#[derive(Debug, Clone)]
pub struct EndpointSnapshot {
    pub ewma: Option<Duration>,
    pub pending: u32,
    pub consecutive_failures: u32,
    pub ejected_for: Option<Duration>,
    pub ejections: u32,
}

impl EndpointRuntime {
    fn new(e: &PolicyEndpoint) -> Self {
        Self {
            mesh: e.identity.as_ref().map(|identity| Endpoint {
                addr: e.addr,
                identity: identity.clone(),
            }),
            endpoint: e.clone(),
            pending: AtomicU32::new(0),
            health: Mutex::new(Health {
                ewma_ns: 0.0,
                stamp: Instant::now(),
                failures: 0,
                ejected_until: None,
                ejections: 0,
                probing: false,
                gauge: None,
            }),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    fn forget(&self) {
        if let Some(g) = lock(&self.health).gauge.take() {
            g.set(0);
        }
    }

    pub fn snapshot(&self) -> EndpointSnapshot {
        let h = lock(&self.health);
        let now = Instant::now();
        EndpointSnapshot {
            ewma: (h.ewma_ns > 0.0).then(|| Duration::from_nanos(h.ewma_ns as u64)),
            pending: self.pending.load(Ordering::Relaxed),
            consecutive_failures: h.failures,
            ejected_for: h.ejected_until.map(|t| t.saturating_duration_since(now)),
            ejections: h.ejections,
        }
    }

    /// Whether the endpoint may take a request now: not ejected, or its
    /// ejection is over and no probe is in flight (the request becomes the
    /// probe).
    pub(crate) fn available(&self, now: Instant) -> bool {
        let h = lock(&self.health);
        match h.ejected_until {
            None => true,
            Some(until) => now >= until && !h.probing,
        }
    }

    pub(crate) fn is_ejected(&self) -> bool {
        lock(&self.health).ejected_until.is_some()
    }

    /// The load-weighted latency power-of-two-choices compares.
    pub(crate) fn cost(&self, lb: &LoadBalancer) -> f64 {
        let (default_rtt, decay) = match lb {
            LoadBalancer::PeakEwma { default_rtt, decay } => (*default_rtt, *decay),
            LoadBalancer::RoundRobin => (LoadBalancer::DEFAULT_RTT, LoadBalancer::DEFAULT_DECAY),
        };
        let (ewma, stamp) = {
            let h = lock(&self.health);
            (h.ewma_ns, h.stamp)
        };
        // The estimate decays while the endpoint is not measured (as tower's
        // peak EWMA does): otherwise an endpoint never measured (at the
        // default RTT) or measured once slowly would be avoided by
        // power-of-two-choices for good, and never measured again.
        // A new endpoint starts at the default RTT, decaying the same way, so
        // it is tried before long even beside fast, measured ones.
        let ewma = if ewma > 0.0 {
            ewma
        } else {
            default_rtt.as_nanos() as f64
        };
        let idle = stamp.elapsed().as_secs_f64();
        let ewma = ewma * (-idle / decay.as_secs_f64().max(1e-3)).exp();
        ewma * f64::from(self.pending.load(Ordering::Relaxed) + 1)
    }

    /// Marks a request as sent to this endpoint until the guard drops; a
    /// request to an endpoint whose ejection is over becomes its probe.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let mut h = lock(&self.health);
        if h.ejected_until.is_some() {
            h.probing = true;
        }
        InFlight {
            endpoint: self.clone(),
        }
    }

    /// Records a try's latency (to response headers) and outcome.
    pub(crate) fn record(
        &self,
        rtt: Duration,
        outcome: Outcome,
        lb: &LoadBalancer,
        ctx: &BreakerContext<'_>,
    ) {
        let now = Instant::now();
        let mut h = lock(&self.health);
        let decay = match lb {
            LoadBalancer::PeakEwma { decay, .. } => *decay,
            LoadBalancer::RoundRobin => LoadBalancer::DEFAULT_DECAY,
        };
        let rtt_ns = rtt.as_nanos() as f64;
        if h.ewma_ns == 0.0 || rtt_ns > h.ewma_ns {
            h.ewma_ns = rtt_ns;
        } else {
            let elapsed = now.saturating_duration_since(h.stamp).as_secs_f64();
            let w = (-elapsed / decay.as_secs_f64().max(1e-3)).exp();
            h.ewma_ns = h.ewma_ns * w + rtt_ns * (1.0 - w);
        }
        h.stamp = now;
        let Some(breaker) = ctx.breaker else {
            return;
        };
        match outcome {
            Outcome::Success => {
                h.failures = 0;
                if h.ejected_until.is_some() {
                    h.ejected_until = None;
                    h.probing = false;
                    h.ejections = 0;
                    if let Some(g) = h.gauge.take() {
                        g.set(0);
                    }
                    tracing::info!(target = %ctx.target, endpoint = %self.endpoint.addr, "endpoint admitted again after a successful probe");
                }
            }
            Outcome::Failure => {
                h.failures = h.failures.saturating_add(1);
                // A failure once the ejection is over is the probe's, even
                // when the probe's guard was dropped first.
                let probe_failed = h
                    .ejected_until
                    .is_some_and(|until| h.probing || now >= until);
                if probe_failed {
                    h.probing = false;
                    eject(&mut h, now, breaker, ctx, self.endpoint.addr);
                } else if h.ejected_until.is_none() && h.failures >= breaker.consecutive_failures {
                    drop(h);
                    // Counting the backend's ejected endpoints takes their
                    // locks, so this one is released first.
                    let ejected = ctx.siblings.iter().filter(|e| e.is_ejected()).count();
                    let total = ctx.siblings.len().max(1);
                    if (ejected + 1) * 100 > breaker.max_ejected_percent as usize * total {
                        return;
                    }
                    let mut h = lock(&self.health);
                    if h.ejected_until.is_none() {
                        eject(&mut h, now, breaker, ctx, self.endpoint.addr);
                    }
                }
            }
        }
    }
}

fn eject(
    h: &mut Health,
    now: Instant,
    breaker: &CircuitBreaker,
    ctx: &BreakerContext<'_>,
    addr: SocketAddr,
) {
    let factor = 1u32 << h.ejections.min(16);
    let time = breaker
        .base_ejection_time
        .saturating_mul(factor)
        .min(breaker.max_ejection_time);
    h.ejections = h.ejections.saturating_add(1);
    h.ejected_until = Some(now + time);
    if h.gauge.is_none() {
        let g = ctx
            .metrics
            .endpoint_ejected(ctx.target, ctx.backend, &addr.to_string());
        g.set(1);
        h.gauge = Some(g);
    }
    ctx.metrics.ejected(ctx.target, ctx.backend);
    tracing::warn!(target = %ctx.target, backend = %ctx.backend, endpoint = %addr, failures = h.failures, ejection = ?time, "endpoint ejected");
}

/// What the breaker needs to know about the endpoint's place.
pub(crate) struct BreakerContext<'a> {
    pub breaker: Option<&'a CircuitBreaker>,
    pub siblings: &'a [Arc<EndpointRuntime>],
    pub metrics: &'a Metrics,
    pub target: &'a str,
    pub backend: &'a str,
}

/// A request in flight to an endpoint.
pub(crate) struct InFlight {
    endpoint: Arc<EndpointRuntime>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.pending.fetch_sub(1, Ordering::Relaxed);
        // A probe that ended without an outcome (cancelled) lets another try.
        let mut h = lock(&self.endpoint.health);
        if h.ejected_until.is_some() {
            h.probing = false;
        }
    }
}

/// The static configuration's target as a never-changing snapshot.
impl From<&crate::config::Target> for DestinationState {
    fn from(t: &crate::config::Target) -> Self {
        t.to_state()
    }
}

impl crate::config::Target {
    /// This static target as a discovery snapshot: its backends and
    /// endpoints, no routes, and the mesh defaults (no circuit breaker).
    pub fn to_state(&self) -> DestinationState {
        let target = format!("{}:0", self.name).parse().unwrap_or_else(|_| {
            weft_api::policy::Target::Authority {
                host: self.name.clone(),
                port: 0,
            }
        });
        DestinationState {
            version: 0,
            target,
            routes: Vec::new(),
            backends: self
                .backends
                .iter()
                .map(|b| Backend {
                    name: b.name.clone(),
                    weight: b.weight,
                    endpoints: b
                        .endpoints
                        .iter()
                        .map(|e| PolicyEndpoint {
                            addr: e.addr,
                            identity: Some(e.identity.clone()),
                            zone: None,
                        })
                        .collect(),
                })
                .collect(),
            retry_budget: RetryBudget::default(),
            circuit_breaker: None,
            load_balancer: LoadBalancer::default(),
            connect_timeout: None,
        }
    }
}
