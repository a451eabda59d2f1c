//! Turning successive scrapes of every proxy into what the live view shows:
//! per service, requests per second, success rate and latency percentiles
//! (from histogram deltas); per edge, whether it is mTLS and which identities
//! are on both ends; per backend (as the calling proxies saw it), its share
//! of its service's requests beside the route's weight, success, latency,
//! retries and which of its replicas the circuit breaker keeps out; per
//! workload, certificate expiry and renewals seen.

use std::collections::BTreeMap;

use serde::Serialize;

use super::scrape::Sample;

/// One proxy the view watches.
#[derive(Clone, Debug, Serialize)]
pub struct Watched {
    pub service: String,
    /// The service account (what edges are named by: both checkout versions
    /// are one identity).
    pub account: String,
    pub replica: String,
    pub identity: String,
    pub admin: std::net::SocketAddr,
    /// The sidecar's inbound address: the endpoint callers send to.
    pub inbound: std::net::SocketAddr,
}

/// A service whose traffic a route splits, and its backends' weights in
/// percent (from the policy directory), for the backend rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Split {
    pub service: String,
    pub weights: Vec<(String, f64)>,
}

/// Per-proxy memory between ticks.
#[derive(Debug, Default)]
struct ProxyState {
    last: Vec<Sample>,
    cert_expiry: Option<f64>,
    renewals: u64,
}

/// One service's row.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ServiceRow {
    pub service: String,
    pub identity: String,
    pub replicas: usize,
    /// Seconds until the soonest certificate of the service's replicas expires.
    pub cert_expires_in_s: Option<f64>,
    /// Certificate renewals seen since the demo started, all replicas.
    pub renewals: u64,
    pub rps: f64,
    /// Share of inbound requests answered with a status below 500; `None`
    /// when there were none this tick.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Inbound requests and connections its policy refused, per second this tick.
    pub denied_per_s: f64,
}

/// Callers a service's inbound policy refused (or, in audit mode, would
/// have), as its proxies counted them.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DenialRow {
    /// The caller's service, or `plaintext` for a caller with no identity.
    pub from: String,
    pub to: String,
    pub from_identity: String,
    /// `denied` or `audited`.
    pub decision: String,
    /// The policy that decided (`default:deny` when no authorization allowed it).
    pub policy: String,
    pub per_s: f64,
    /// Since the demo started.
    pub total: u64,
}

/// Traffic from one service to another, as the client's proxy saw it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EdgeRow {
    pub from: String,
    pub to: String,
    pub from_identity: String,
    pub to_identity: String,
    pub mtls: bool,
    pub rps: f64,
    pub success_rate: Option<f64>,
    /// Requests since the demo started.
    pub total: u64,
}

/// One backend of a service, from the calling proxies' outbound requests.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BackendRow {
    /// The service called (`checkout`).
    pub service: String,
    /// The backend that served (`checkout-v2`).
    pub backend: String,
    /// The route's weight for it, in percent; `None` when no route splits the
    /// service.
    pub weight_percent: Option<f64>,
    /// Its share of the service's requests this tick.
    pub share: Option<f64>,
    pub rps: f64,
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Retries of tries it failed, per second this tick and since the start.
    pub retries_per_s: f64,
    pub retries_total: u64,
    /// Its replicas the circuit breaker keeps out now.
    pub ejected: Vec<String>,
    /// Ejections since the start.
    pub ejections_total: u64,
}

/// What one tick shows.
#[derive(Clone, Debug, Serialize)]
pub struct Tick {
    pub elapsed_s: f64,
    pub services: Vec<ServiceRow>,
    pub backends: Vec<BackendRow>,
    pub edges: Vec<EdgeRow>,
    pub denials: Vec<DenialRow>,
    /// Ejections and returns, newest last (at most [`EVENTS_KEPT`]).
    pub events: Vec<String>,
    /// Proxies that did not answer this tick.
    pub unreachable: Vec<String>,
    /// The slowest trace whose spans arrived this tick (when the demo runs
    /// its own OTLP receiver).
    pub slowest_trace: Option<super::traces::Waterfall>,
}

/// Accumulates scrapes into ticks.
#[derive(Debug)]
pub struct Stats {
    watched: Vec<Watched>,
    state: Vec<ProxyState>,
    edge_totals: BTreeMap<(String, String, bool), u64>,
    /// (caller identity, service, decision, policy) -> count since the start.
    denial_totals: BTreeMap<(String, String, String, String), u64>,
    /// Replicas ejected at the last tick.
    ejected: std::collections::BTreeSet<String>,
    events: Vec<String>,
}

/// How many ejection events a tick carries.
pub const EVENTS_KEPT: usize = 6;

impl Stats {
    pub fn new(watched: Vec<Watched>) -> Self {
        let state = watched.iter().map(|_| ProxyState::default()).collect();
        Self {
            watched,
            state,
            edge_totals: BTreeMap::new(),
            denial_totals: BTreeMap::new(),
            ejected: std::collections::BTreeSet::new(),
            events: Vec::new(),
        }
    }

    pub fn watched(&self) -> &[Watched] {
        &self.watched
    }

    /// Folds in one scrape per watched proxy (`None` = did not answer), with
    /// `dt` seconds since the previous tick, `now` as Unix seconds, and the
    /// routes' splits as the policy holds them now.
    pub fn tick(
        &mut self,
        scrapes: Vec<Option<Vec<Sample>>>,
        dt: f64,
        now: f64,
        elapsed_s: f64,
        splits: &[Split],
    ) -> Tick {
        let dt = dt.max(1e-3);
        let mut unreachable = Vec::new();
        // Deltas per proxy.
        let mut deltas: Vec<Vec<Sample>> = Vec::with_capacity(scrapes.len());
        for (i, scrape) in scrapes.into_iter().enumerate() {
            let state = &mut self.state[i];
            match scrape {
                Some(samples) => {
                    deltas.push(delta(&state.last, &samples));
                    if let Some(expiry) = samples
                        .iter()
                        .find(|s| s.name == "weft_identity_cert_expiration_timestamp_seconds")
                        .map(|s| s.value)
                    {
                        if state.cert_expiry.is_some_and(|old| expiry > old) {
                            state.renewals += 1;
                        }
                        state.cert_expiry = Some(expiry);
                    }
                    state.last = samples;
                }
                None => {
                    unreachable.push(self.watched[i].replica.clone());
                    deltas.push(Vec::new());
                }
            }
        }

        let mut services: Vec<ServiceRow> = Vec::new();
        let mut order: Vec<&str> = Vec::new();
        for w in &self.watched {
            if !order.contains(&w.service.as_str()) {
                order.push(&w.service);
            }
        }
        for service in order {
            let members: Vec<usize> = (0..self.watched.len())
                .filter(|&i| self.watched[i].service == service)
                .collect();
            let inbound = |s: &&Sample| s.label("direction") == "inbound";
            let mut total = 0.0;
            let mut ok = 0.0;
            let mut denied = 0.0;
            let mut buckets: BTreeMap<OrderedF64, f64> = BTreeMap::new();
            for &i in &members {
                for s in deltas[i]
                    .iter()
                    .filter(|s| s.name == "weft_inbound_authz_total")
                {
                    if s.label("decision") == "denied" {
                        denied += s.value;
                    }
                }
                for s in deltas[i].iter().filter(inbound) {
                    match s.name.as_str() {
                        "weft_requests_total" => {
                            total += s.value;
                            if s.label("status_code").parse::<u16>().is_ok_and(|c| c < 500) {
                                ok += s.value;
                            }
                        }
                        "weft_response_latency_seconds_bucket" => {
                            let le = match s.label("le") {
                                "+Inf" => f64::INFINITY,
                                v => v.parse().unwrap_or(f64::INFINITY),
                            };
                            *buckets.entry(OrderedF64(le)).or_default() += s.value;
                        }
                        _ => {}
                    }
                }
            }
            let buckets: Vec<(f64, f64)> = buckets.into_iter().map(|(k, v)| (k.0, v)).collect();
            let expiry = members
                .iter()
                .filter_map(|&i| self.state[i].cert_expiry)
                .fold(None, |acc: Option<f64>, e| {
                    Some(acc.map_or(e, |a| a.min(e)))
                });
            services.push(ServiceRow {
                service: service.to_owned(),
                identity: self.watched[members[0]].identity.clone(),
                replicas: members.len(),
                cert_expires_in_s: expiry.map(|e| (e - now).max(0.0)),
                renewals: members.iter().map(|&i| self.state[i].renewals).sum(),
                rps: total / dt,
                success_rate: (total > 0.0).then(|| ok / total),
                p50_ms: quantile(&buckets, 0.5).map(|s| s * 1000.0),
                p99_ms: quantile(&buckets, 0.99).map(|s| s * 1000.0),
                denied_per_s: denied / dt,
            });
        }

        // Denials, from each server's inbound decisions.
        let mut denials: BTreeMap<(String, String, String, String), f64> = BTreeMap::new();
        for (i, d) in deltas.iter().enumerate() {
            for s in d.iter().filter(|s| {
                s.name == "weft_inbound_authz_total" && s.label("decision") != "allowed"
            }) {
                let key = (
                    s.label("peer_identity").to_owned(),
                    self.watched[i].account.clone(),
                    s.label("decision").to_owned(),
                    s.label("policy").to_owned(),
                );
                *denials.entry(key).or_default() += s.value;
            }
        }
        for (key, n) in &denials {
            *self.denial_totals.entry(key.clone()).or_default() += *n as u64;
        }
        let denials = self
            .denial_totals
            .iter()
            .map(|(key, total)| DenialRow {
                from: if key.0.is_empty() {
                    "plaintext".to_owned()
                } else {
                    self.service_of(&key.0)
                },
                to: key.1.clone(),
                from_identity: key.0.clone(),
                decision: key.2.clone(),
                policy: key.3.clone(),
                per_s: denials.get(key).copied().unwrap_or(0.0) / dt,
                total: *total,
            })
            .collect();

        // Edges, from each client's outbound requests.
        let mut edges: BTreeMap<(String, String, bool), (f64, f64)> = BTreeMap::new();
        for (i, d) in deltas.iter().enumerate() {
            let from = &self.watched[i].identity;
            for s in d
                .iter()
                .filter(|s| s.name == "weft_requests_total" && s.label("direction") == "outbound")
            {
                let key = (
                    from.clone(),
                    s.label("peer_identity").to_owned(),
                    s.label("tls") == "true",
                );
                let e = edges.entry(key).or_default();
                e.0 += s.value;
                if s.label("status_code").parse::<u16>().is_ok_and(|c| c < 500) {
                    e.1 += s.value;
                }
            }
        }
        let backends = self.backends(&deltas, dt, splits, elapsed_s);
        for (key, (total, _)) in &edges {
            *self.edge_totals.entry(key.clone()).or_default() += *total as u64;
        }
        let edges = self
            .edge_totals
            .iter()
            .map(|(key, total)| {
                let (n, ok) = edges.get(key).copied().unwrap_or((0.0, 0.0));
                EdgeRow {
                    from: self.service_of(&key.0),
                    to: self.service_of(&key.1),
                    from_identity: key.0.clone(),
                    to_identity: key.1.clone(),
                    mtls: key.2,
                    rps: n / dt,
                    success_rate: (n > 0.0).then(|| ok / n),
                    total: *total,
                }
            })
            .collect();
        Tick {
            elapsed_s,
            services,
            backends,
            edges,
            denials,
            events: self.events.clone(),
            unreachable,
            slowest_trace: None,
        }
    }

    fn service_of(&self, identity: &str) -> String {
        self.watched
            .iter()
            .find(|w| w.identity == identity)
            .map_or_else(|| identity.to_owned(), |w| w.account.clone())
    }

    /// The replica whose sidecar listens on `endpoint` (or the address).
    fn replica_at(&self, endpoint: &str) -> String {
        self.watched
            .iter()
            .find(|w| w.inbound.to_string() == endpoint)
            .map_or_else(|| endpoint.to_owned(), |w| w.replica.clone())
    }

    /// The backend rows, from every proxy's outbound requests, retries and
    /// ejections; also notes ejections and returns as events.
    fn backends(
        &mut self,
        deltas: &[Vec<Sample>],
        dt: f64,
        splits: &[Split],
        elapsed_s: f64,
    ) -> Vec<BackendRow> {
        #[derive(Default)]
        struct Acc {
            total: f64,
            ok: f64,
            buckets: BTreeMap<OrderedF64, f64>,
            retries: f64,
            retries_total: f64,
            ejections_total: f64,
            ejected: std::collections::BTreeSet<String>,
        }
        let mut acc: BTreeMap<String, Acc> = BTreeMap::new();
        // Rates from this tick's deltas.
        for d in deltas {
            for s in d {
                let backend = s.label("backend");
                if backend.is_empty() {
                    continue;
                }
                match s.name.as_str() {
                    "weft_requests_total" if s.label("direction") == "outbound" => {
                        let a = acc.entry(backend.to_owned()).or_default();
                        a.total += s.value;
                        if s.label("status_code").parse::<u16>().is_ok_and(|c| c < 500) {
                            a.ok += s.value;
                        }
                    }
                    "weft_response_latency_seconds_bucket"
                        if s.label("direction") == "outbound" =>
                    {
                        let le = match s.label("le") {
                            "+Inf" => f64::INFINITY,
                            v => v.parse().unwrap_or(f64::INFINITY),
                        };
                        *acc.entry(backend.to_owned())
                            .or_default()
                            .buckets
                            .entry(OrderedF64(le))
                            .or_default() += s.value;
                    }
                    "weft_proxy_retries_total" => {
                        acc.entry(backend.to_owned()).or_default().retries += s.value;
                    }
                    _ => {}
                }
            }
        }
        // Totals and the ejection gauges from the latest scrapes.
        for state in &self.state {
            for s in &state.last {
                let backend = s.label("backend");
                if backend.is_empty() {
                    continue;
                }
                match s.name.as_str() {
                    "weft_proxy_retries_total" => {
                        acc.entry(backend.to_owned()).or_default().retries_total += s.value;
                    }
                    "weft_proxy_ejections_total" => {
                        acc.entry(backend.to_owned()).or_default().ejections_total += s.value;
                    }
                    "weft_proxy_endpoint_ejected" if s.value >= 1.0 => {
                        let replica = self.replica_at(s.label("endpoint"));
                        acc.entry(backend.to_owned())
                            .or_default()
                            .ejected
                            .insert(replica);
                    }
                    _ => {}
                }
            }
        }
        // Ejections and returns since the last tick.
        let now_ejected: std::collections::BTreeSet<String> = acc
            .values()
            .flat_map(|a| a.ejected.iter().cloned())
            .collect();
        for replica in now_ejected.difference(&self.ejected) {
            self.events.push(format!(
                "t={elapsed_s:.0}s {replica} ejected by the circuit breaker"
            ));
        }
        for replica in self.ejected.difference(&now_ejected) {
            self.events.push(format!(
                "t={elapsed_s:.0}s {replica} back in load balancing"
            ));
        }
        let overflow = self.events.len().saturating_sub(EVENTS_KEPT);
        self.events.drain(..overflow);
        self.ejected = now_ejected;

        let service_of = |backend: &str| -> (String, Option<f64>) {
            for split in splits {
                if let Some((_, w)) = split.weights.iter().find(|(b, _)| b == backend) {
                    return (split.service.clone(), Some(*w));
                }
            }
            (backend.to_owned(), None)
        };
        let mut service_totals: BTreeMap<String, f64> = BTreeMap::new();
        for (backend, a) in &acc {
            *service_totals.entry(service_of(backend).0).or_default() += a.total;
        }
        let mut rows: Vec<BackendRow> = acc
            .into_iter()
            .map(|(backend, a)| {
                let (service, weight_percent) = service_of(&backend);
                let service_total = service_totals.get(&service).copied().unwrap_or(0.0);
                let buckets: Vec<(f64, f64)> =
                    a.buckets.into_iter().map(|(k, v)| (k.0, v)).collect();
                BackendRow {
                    service,
                    weight_percent,
                    share: (service_total > 0.0).then(|| a.total / service_total),
                    rps: a.total / dt,
                    success_rate: (a.total > 0.0).then(|| a.ok / a.total),
                    p50_ms: quantile(&buckets, 0.5).map(|s| s * 1000.0),
                    p99_ms: quantile(&buckets, 0.99).map(|s| s * 1000.0),
                    retries_per_s: a.retries / dt,
                    retries_total: a.retries_total as u64,
                    ejected: a.ejected.into_iter().collect(),
                    ejections_total: a.ejections_total as u64,
                    backend,
                }
            })
            .collect();
        // Backends of a split with no traffic yet still get their row.
        for split in splits {
            for (backend, w) in &split.weights {
                if !rows.iter().any(|r| &r.backend == backend) {
                    rows.push(BackendRow {
                        service: split.service.clone(),
                        backend: backend.clone(),
                        weight_percent: Some(*w),
                        share: None,
                        rps: 0.0,
                        success_rate: None,
                        p50_ms: None,
                        p99_ms: None,
                        retries_per_s: 0.0,
                        retries_total: 0,
                        ejected: Vec::new(),
                        ejections_total: 0,
                    });
                }
            }
        }
        rows.sort_by(|a, b| (&a.service, &a.backend).cmp(&(&b.service, &b.backend)));
        rows
    }
}

/// `current - previous` for every counter-like sample (a restarted proxy's
/// counters start again from its current value).
fn delta(previous: &[Sample], current: &[Sample]) -> Vec<Sample> {
    let before: BTreeMap<(&str, &BTreeMap<String, String>), f64> = previous
        .iter()
        .map(|s| ((s.name.as_str(), &s.labels), s.value))
        .collect();
    current
        .iter()
        .filter(|s| s.name.ends_with("_total") || s.name.ends_with("_bucket"))
        .map(|s| {
            let old = before
                .get(&(s.name.as_str(), &s.labels))
                .copied()
                .unwrap_or(0.0);
            let value = if s.value >= old {
                s.value - old
            } else {
                s.value
            };
            Sample { value, ..s.clone() }
        })
        .collect()
}

/// A quantile from cumulative histogram buckets `(upper bound, count)`, by
/// linear interpolation inside the bucket (as Prometheus' histogram_quantile).
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower_bound = 0.0;
    let mut lower_count = 0.0;
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower_bound);
            }
            let in_bucket = count - lower_count;
            let frac = if in_bucket > 0.0 {
                (rank - lower_count) / in_bucket
            } else {
                1.0
            };
            return Some(lower_bound + (le - lower_bound) * frac);
        }
        lower_bound = le;
        lower_count = count;
    }
    Some(lower_bound)
}

#[derive(Clone, Copy, Debug)]
struct OrderedF64(f64);

impl PartialEq for OrderedF64 {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for OrderedF64 {}

impl PartialOrd for OrderedF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::scrape::parse;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let buckets = [(0.001, 50.0), (0.002, 100.0), (f64::INFINITY, 100.0)];
        let p50 = quantile(&buckets, 0.5).unwrap();
        assert!((p50 - 0.001).abs() < 1e-9, "{p50}");
        let p75 = quantile(&buckets, 0.75).unwrap();
        assert!((p75 - 0.0015).abs() < 1e-9, "{p75}");
        assert_eq!(quantile(&[(f64::INFINITY, 0.0)], 0.5), None);
    }

    /// A watched proxy of the demo's namespace on 127.0.0.1 ports.
    fn watched(service: &str, account: &str, replica: &str, admin: u16, inbound: u16) -> Watched {
        Watched {
            service: service.into(),
            account: account.into(),
            replica: replica.into(),
            identity: format!("spiffe://cluster.local/ns/demo/sa/{account}"),
            admin: ([127, 0, 0, 1], admin).into(),
            inbound: ([127, 0, 0, 1], inbound).into(),
        }
    }

    fn metrics(requests: u32, expiry: u64) -> Vec<Sample> {
        parse(&format!(
            r#"weft_requests_total{{direction="inbound",status_code="200",tls="true",peer_identity="spiffe://cluster.local/ns/demo/sa/web"}} {requests}
weft_requests_total{{direction="outbound",status_code="200",tls="true",peer_identity="spiffe://cluster.local/ns/demo/sa/checkout"}} {requests}
weft_response_latency_seconds_bucket{{direction="inbound",le="0.001"}} {requests}
weft_response_latency_seconds_bucket{{direction="inbound",le="+Inf"}} {requests}
weft_identity_cert_expiration_timestamp_seconds{{identity="spiffe://cluster.local/ns/demo/sa/web"}} {expiry}
"#
        ))
    }

    #[test]
    fn ticks_report_rates_edges_and_renewals() {
        let watched = vec![
            watched("web", "web", "web-0", 1, 11),
            watched("checkout-v1", "checkout", "checkout-v1-0", 2, 12),
        ];
        let mut stats = Stats::new(watched);
        stats.tick(vec![Some(metrics(10, 1000)), None], 1.0, 990.0, 1.0, &[]);
        let t = stats.tick(vec![Some(metrics(30, 1010)), None], 2.0, 995.0, 3.0, &[]);
        let web = &t.services[0];
        assert_eq!(web.rps, 10.0);
        assert_eq!(web.success_rate, Some(1.0));
        assert_eq!(web.renewals, 1);
        assert_eq!(web.cert_expires_in_s, Some(15.0));
        assert!(web.p50_ms.unwrap() <= 1.0);
        assert_eq!(t.unreachable, vec!["checkout-v1-0".to_owned()]);
        assert_eq!(t.edges.len(), 1);
        assert_eq!(t.edges[0].from, "web");
        assert_eq!(t.edges[0].to, "checkout");
        assert!(t.edges[0].mtls);
        assert_eq!(t.edges[0].total, 30);
    }

    /// web's proxy sends to checkout-v1 and checkout-v2 (a 90/10 route) and to
    /// inventory, whose third replica is ejected and then returns.
    fn web_scrape(v1: u32, v2: u32, retries: u32, ejected: bool) -> Vec<Sample> {
        parse(&format!(
            r#"weft_requests_total{{direction="outbound",status_code="200",tls="true",peer_identity="spiffe://cluster.local/ns/demo/sa/checkout",backend="checkout-v1",route=""}} {v1}
weft_requests_total{{direction="outbound",status_code="200",tls="true",peer_identity="spiffe://cluster.local/ns/demo/sa/checkout",backend="checkout-v2",route=""}} {v2}
weft_requests_total{{direction="outbound",status_code="200",tls="true",peer_identity="spiffe://cluster.local/ns/demo/sa/inventory",backend="inventory",route=""}} {v1}
weft_proxy_retries_total{{target="inventory",backend="inventory",reason="503"}} {retries}
weft_proxy_ejections_total{{target="inventory",backend="inventory"}} 1
weft_proxy_endpoint_ejected{{target="inventory",backend="inventory",endpoint="127.0.0.1:13"}} {}
"#,
            u8::from(ejected)
        ))
    }

    #[test]
    fn backend_rows_show_shares_weights_retries_and_ejections() {
        let watched = vec![
            watched("web", "web", "web-0", 1, 11),
            watched("inventory", "inventory", "inventory-2", 3, 13),
        ];
        let splits = [Split {
            service: "checkout".into(),
            weights: vec![("checkout-v1".into(), 90.0), ("checkout-v2".into(), 10.0)],
        }];
        let mut stats = Stats::new(watched);
        stats.tick(
            vec![Some(web_scrape(0, 0, 0, false)), None],
            1.0,
            0.0,
            1.0,
            &splits,
        );
        let t = stats.tick(
            vec![Some(web_scrape(90, 10, 4, true)), None],
            1.0,
            0.0,
            2.0,
            &splits,
        );
        let row = |b: &str| t.backends.iter().find(|r| r.backend == b).unwrap().clone();
        assert_eq!(row("checkout-v1").service, "checkout");
        assert_eq!(row("checkout-v1").weight_percent, Some(90.0));
        assert_eq!(row("checkout-v1").share, Some(0.9));
        assert_eq!(row("checkout-v2").share, Some(0.1));
        assert_eq!(row("inventory").weight_percent, None);
        assert_eq!(row("inventory").share, Some(1.0));
        assert_eq!(row("inventory").retries_per_s, 4.0);
        assert_eq!(row("inventory").ejected, ["inventory-2"]);
        assert_eq!(t.events.len(), 1);
        assert!(
            t.events[0].contains("inventory-2 ejected"),
            "{:?}",
            t.events
        );
        let t = stats.tick(
            vec![Some(web_scrape(180, 20, 4, false)), None],
            1.0,
            0.0,
            3.0,
            &splits,
        );
        assert!(t.backends.iter().all(|r| r.ejected.is_empty()));
        assert!(t.events[1].contains("inventory-2 back"), "{:?}", t.events);
    }
}
