//! The proxy's configuration, parsed in one place from the environment contract
//! (`weft_api::consts::env`). Every bad variable is reported, not just the first;
//! tests feed a map instead of the process environment.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use weft_api::Identity;
use weft_api::consts::{self, env};

use crate::destinations::Destinations;

/// Everything the `weft-proxy` binary needs.
#[derive(Clone, Debug)]
pub struct Config {
    pub proxy: ProxyConfig,
    /// Where the workload certificate comes from.
    pub identity: IdentitySource,
    /// The trust anchors: a PEM file reloaded when it changes, or PEM text.
    pub trust_anchors: TrustAnchorsSource,
    /// How often the trust anchor file is checked (default 5 s).
    pub trust_anchors_reload: Duration,
    /// Log filter (`WEFT_PROXY_LOG`, default `info`).
    pub log: String,
    /// Log format (`WEFT_PROXY_LOG_FORMAT`, default plain).
    pub log_json: bool,
    /// Threads of the async runtime (`WEFT_PROXY_WORKER_THREADS`, default 1).
    pub worker_threads: usize,
}

/// Where the workload certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// The controller's `Certify`, with a key generated in memory.
    Controller(crate::identity::CertifyConfig),
    /// PEM files written by someone else (tests, benchmarks, manual runs).
    Files {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

/// Where the trust anchors come from: exactly one of
/// `WEFT_PROXY_TRUST_ANCHORS_FILE` and `WEFT_PROXY_TRUST_ANCHORS`.
#[derive(Clone, PartialEq, Eq)]
pub enum TrustAnchorsSource {
    /// A PEM bundle file, reloaded when it changes.
    File(PathBuf),
    /// The PEM bundle itself (what the injector puts into a pod); never reloaded.
    Inline(String),
}

impl fmt::Debug for TrustAnchorsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Inline(pem) => write!(f, "Inline({} bytes)", pem.len()),
        }
    }
}

/// What the running proxy needs, independent of where credentials come from.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Inbound listener. Default `0.0.0.0:15143`.
    pub inbound_addr: SocketAddr,
    /// Admin server. Default `0.0.0.0:15191`.
    pub admin_addr: SocketAddr,
    /// Where inbound traffic goes.
    pub app: AppTarget,
    /// Upstream listeners, one per upstream service of the workload.
    pub upstreams: Vec<Upstream>,
    /// Upstream listeners that name a service and get its endpoints and
    /// policy from discovery (`listen=service:port` entries of `WEFT_PROXY_UPSTREAMS`).
    pub service_upstreams: Vec<ServiceUpstream>,
    /// Where discovery is (`None`: off; upstreams and destinations are static).
    pub discovery: Option<crate::discovery::DiscoveryConfig>,
    /// The transparent outbound listener, where iptables sends the app's
    /// outgoing TCP (pods). `None` in local mode.
    pub transparent: Option<Transparent>,
    /// How long to wait for a client's first bytes. Default 10 s.
    pub detect_timeout: Duration,
    /// How long an HTTP/1 client of the inbound and upstream listeners may
    /// take to send a request's head, from its first byte (idle keep-alive
    /// connections are not timed out). Default 10 s
    /// ([`crate::http::HEADER_READ_TIMEOUT`]).
    pub header_timeout: Duration,
    /// How long a TCP connect plus TLS handshake to a peer may take. Default 3 s.
    pub connect_timeout: Duration,
    /// How long in-flight work may take to drain at shutdown. Default 30 s.
    pub shutdown_grace: Duration,
    /// Whether `POST /shutdown` stops the proxy (`WEFT_PROXY_SHUTDOWN_ENDPOINT`,
    /// default true). Off in pods, except a Job's classic sidecar.
    pub shutdown_endpoint: bool,
    /// The largest request body buffered for retries (`WEFT_PROXY_RETRY_BUFFER_BYTES`,
    /// default 64 KiB); a larger body is never retried.
    pub retry_buffer_bytes: usize,
    /// The most distinct peer identities the metrics' `peer_identity` labels
    /// name (`WEFT_PROXY_METRICS_MAX_IDENTITIES`, default 100); identities
    /// seen after that are labelled `overflow`.
    pub metrics_max_identities: usize,
    /// How long after a peer identity was last seen (with no connection
    /// open) its metric series are removed (`WEFT_PROXY_METRICS_IDLE_EXPIRY`,
    /// seconds, default 600).
    pub metrics_idle_expiry: Duration,
    /// What the inbound side lets in when no authorization allows a caller
    /// (`WEFT_PROXY_DEFAULT_INBOUND_POLICY`, default `allow-all`).
    pub default_inbound: weft_api::policy::InboundMode,
    /// The workload whose inbound policy the controller pushes
    /// (`WEFT_PROXY_WORKLOAD`: `<namespace>/<pod>`, the local workload's name);
    /// `None`: the default inbound mode alone applies.
    pub workload: Option<String>,
    /// The app ports whose inbound policy is watched from the start
    /// (`WEFT_PROXY_INBOUND_PORTS`; the app's port when it is fixed); others
    /// the first time a caller reaches them.
    pub inbound_ports: Vec<u16>,
    /// The kubelet's probes (`port`, path) that plaintext callers may make in
    /// every inbound mode (`WEFT_PROXY_PROBE_PATHS`).
    pub probe_paths: Vec<(u16, String)>,
    /// What the program running the proxy adds to the admin server.
    pub admin: crate::admin::Extras,
    /// Traces (`OTEL_EXPORTER_OTLP_ENDPOINT` and the SDK's other variables);
    /// `None`: off, no span is built.
    pub tracing: Option<crate::trace::TraceConfig>,
    /// One log line per HTTP request (`WEFT_PROXY_ACCESS_LOG=on`, default off).
    pub access_log: bool,
}

impl ProxyConfig {
    /// A configuration with the contract's defaults, forwarding inbound traffic
    /// to `app` and with no upstreams.
    pub fn new(app: AppTarget) -> Self {
        Self {
            inbound_addr: SocketAddr::from(([0, 0, 0, 0], consts::PROXY_INBOUND_PORT)),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], consts::PROXY_ADMIN_PORT)),
            app,
            upstreams: Vec::new(),
            service_upstreams: Vec::new(),
            discovery: None,
            transparent: None,
            detect_timeout: Duration::from_secs(10),
            header_timeout: crate::http::HEADER_READ_TIMEOUT,
            connect_timeout: Duration::from_secs(3),
            shutdown_grace: Duration::from_secs(30),
            shutdown_endpoint: true,
            retry_buffer_bytes: 64 * 1024,
            metrics_max_identities: crate::metrics::DEFAULT_MAX_IDENTITIES,
            metrics_idle_expiry: crate::metrics::DEFAULT_IDLE_EXPIRY,
            default_inbound: weft_api::policy::InboundMode::default(),
            workload: None,
            inbound_ports: Vec::new(),
            probe_paths: Vec::new(),
            admin: crate::admin::Extras::default(),
            tracing: None,
            access_log: false,
        }
    }
}

/// Where the inbound proxy sends a connection once it is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppTarget {
    /// Always this address (local mode, where each workload has one app port).
    Fixed(SocketAddr),
    /// 127.0.0.1 at the port the client originally dialled (transparent mode).
    OriginalDst,
}

/// A local listener for one upstream service (the Consul Connect model).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub listen: SocketAddr,
    pub target: Target,
}

/// A local listener for one upstream service found through discovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceUpstream {
    pub listen: SocketAddr,
    /// What is asked of discovery (`checkout:80`).
    pub service: weft_api::policy::Target,
    /// Skip protocol detection and relay bytes as they are.
    pub opaque: bool,
}

/// The transparent outbound listener and what it knows of destinations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transparent {
    /// Where to listen. Default `127.0.0.1:15140`, plus `[::1]:15140` when the
    /// namespace has IPv6 (iptables redirects IPv6 to `::1`).
    pub listen: Vec<SocketAddr>,
    /// Meshed destinations and the identities they must prove; all others
    /// are passed through in plain TCP.
    pub destinations: Destinations,
    /// Destination ports relayed as opaque TCP, without protocol detection.
    pub opaque_ports: Vec<u16>,
}

impl Transparent {
    /// The listener on the contract's port with no meshed destinations.
    pub fn new() -> Self {
        Self {
            listen: vec![
                SocketAddr::from(([127, 0, 0, 1], consts::PROXY_OUTBOUND_PORT)),
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, consts::PROXY_OUTBOUND_PORT)),
            ],
            destinations: Destinations::default(),
            opaque_ports: Vec::new(),
        }
    }
}

impl Default for Transparent {
    fn default() -> Self {
        Self::new()
    }
}

/// An outbound destination: what discovery describes for one service.
///
/// Today a target is static; discovery will replace it with a versioned
/// snapshot (routes, weighted backends, retry and breaker settings) without
/// changing the shape of the data path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The service name, for logs and metrics.
    pub name: String,
    /// Skip protocol detection and relay bytes as they are.
    pub opaque: bool,
    /// Backends with weights (a traffic split); at least one.
    pub backends: Vec<Backend>,
}

/// One backend of a target: a set of endpoints sharing a weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub weight: u32,
    pub endpoints: Vec<Endpoint>,
}

/// An endpoint and the identity it must prove.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub identity: Identity,
}

impl Target {
    /// A target with one backend of one endpoint.
    pub fn single(name: &str, addr: SocketAddr, identity: Identity) -> Self {
        Self {
            name: name.to_owned(),
            opaque: false,
            backends: vec![Backend {
                name: name.to_owned(),
                weight: 1,
                endpoints: vec![Endpoint { addr, identity }],
            }],
        }
    }
}

/// One invalid setting: which variable, what was wrong, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

/// Every invalid setting found in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid proxy configuration ({} problems):",
            self.0.len()
        )?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads the process environment.
    pub fn from_process_env() -> Result<Self, ConfigErrors> {
        Self::from_env(&std::env::vars().collect())
    }

    /// Parses a map of environment variables.
    pub fn from_env(vars: &HashMap<String, String>) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut p = Parser {
            vars,
            errors: &mut errors,
        };
        let mut proxy = ProxyConfig::new(AppTarget::OriginalDst);
        if let Some(a) = p.addr(env::INBOUND_ADDR) {
            proxy.inbound_addr = a;
        }
        if let Some(a) = p.addr(env::ADMIN_ADDR) {
            proxy.admin_addr = a;
        }
        if let Some(a) = p.addr(env::APP_ADDR) {
            proxy.app = AppTarget::Fixed(a);
        }
        if let Some(d) = p.seconds(env::DETECT_TIMEOUT) {
            proxy.detect_timeout = d;
        }
        if let Some(d) = p.seconds(env::HEADER_TIMEOUT) {
            if d.is_zero() {
                p.error(
                    env::HEADER_TIMEOUT,
                    "must be more than 0 seconds; use e.g. 10".to_owned(),
                );
            } else {
                proxy.header_timeout = d;
            }
        }
        if let Some(d) = p.seconds(env::SHUTDOWN_GRACE) {
            proxy.shutdown_grace = d;
        }
        if let Some(on) = p.boolean(env::SHUTDOWN_ENDPOINT) {
            proxy.shutdown_endpoint = on;
        }
        if let Some(v) = p.get(env::RETRY_BUFFER_BYTES) {
            match v.parse::<usize>() {
                Ok(n) => proxy.retry_buffer_bytes = n,
                Err(_) => {
                    let v = v.to_owned();
                    p.error(
                        env::RETRY_BUFFER_BYTES,
                        format!("{v:?} is not a byte count; use a whole number such as 65536"),
                    );
                }
            }
        }
        if let Some(v) = p.get(env::METRICS_MAX_IDENTITIES) {
            match v.parse::<usize>() {
                Ok(n) if n > 0 => proxy.metrics_max_identities = n,
                _ => {
                    let v = v.to_owned();
                    p.error(
                        env::METRICS_MAX_IDENTITIES,
                        format!(
                            "{v:?} is not a positive count of identities; use a whole number such as 100"
                        ),
                    );
                }
            }
        }
        if let Some(d) = p.seconds(env::METRICS_IDLE_EXPIRY) {
            if d.is_zero() {
                p.error(
                    env::METRICS_IDLE_EXPIRY,
                    "must be more than 0 seconds; use e.g. 600 (10 minutes)".to_owned(),
                );
            } else {
                proxy.metrics_idle_expiry = d;
            }
        }
        if let Some(v) = p.get(env::DEFAULT_INBOUND_POLICY) {
            match v.parse() {
                Ok(mode) => proxy.default_inbound = mode,
                Err(problem) => {
                    let problem = format!("{problem}");
                    p.error(env::DEFAULT_INBOUND_POLICY, problem);
                }
            }
        }
        proxy.workload = p
            .get(env::WORKLOAD)
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(str::to_owned);
        proxy.inbound_ports = p.ports(env::INBOUND_PORTS);
        proxy.probe_paths = p.probe_paths(env::PROBE_PATHS);
        (proxy.upstreams, proxy.service_upstreams) = p.upstreams(env::UPSTREAMS);
        proxy.transparent = p.transparent(proxy.app == AppTarget::OriginalDst);
        let identity = p.identity_source();
        proxy.discovery = p.discovery(identity.as_ref());
        if proxy.discovery.is_none() && !proxy.service_upstreams.is_empty() {
            p.error(
                env::UPSTREAMS,
                format!(
                    "entries that name a service ({}) need discovery; set {} (and leave {} unset or true), or use the static form name,listen-addr,target-addr,identity",
                    proxy.service_upstreams[0].service,
                    env::CONTROLLER_ADDR,
                    env::DISCOVERY
                ),
            );
        }
        proxy.access_log = match p.get(env::ACCESS_LOG) {
            None | Some("off" | "false" | "0") => false,
            Some("on" | "true" | "1") => true,
            Some(other) => {
                let other = other.to_owned();
                p.error(
                    env::ACCESS_LOG,
                    format!("{other:?} is not on or off; use \"on\" for one log line per request"),
                );
                false
            }
        };
        match crate::trace::TraceConfig::from_env(|var| p.get(var).map(str::to_owned)) {
            Ok(tracing) => proxy.tracing = tracing,
            Err(problems) => {
                for (var, problem) in problems {
                    p.error(var, problem);
                }
            }
        }
        let trust_anchors = p.trust_anchors();
        let trust_anchors_reload = p
            .seconds(env::TRUST_ANCHORS_RELOAD)
            .unwrap_or(Duration::from_secs(5));
        let log = p.get(env::LOG).unwrap_or("info").to_owned();
        let log_json = match p.get(env::LOG_FORMAT) {
            None | Some("plain") => false,
            Some("json") => true,
            Some(other) => {
                p.error(
                    env::LOG_FORMAT,
                    format!("{other:?} is not a log format; use \"plain\" or \"json\""),
                );
                false
            }
        };
        let worker_threads = match p.get(env::WORKER_THREADS) {
            None => 1,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_WORKER_THREADS).contains(&n) => n,
                _ => {
                    let v = v.to_owned();
                    p.error(
                        env::WORKER_THREADS,
                        format!("{v:?} is not a thread count; use a number from 1 to {MAX_WORKER_THREADS}"),
                    );
                    1
                }
            },
        };
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let (Some(identity), Some(trust_anchors)) = (identity, trust_anchors) else {
            // Reported above: a missing value always adds an error.
            return Err(ConfigErrors(errors));
        };
        Ok(Self {
            proxy,
            identity,
            trust_anchors,
            trust_anchors_reload,
            log,
            log_json,
            worker_threads,
        })
    }
}

/// More threads than this is a typo, not a sidecar.
const MAX_WORKER_THREADS: usize = 256;

struct Parser<'a> {
    vars: &'a HashMap<String, String>,
    errors: &'a mut Vec<ConfigError>,
}

impl Parser<'_> {
    fn get(&self, var: &str) -> Option<&str> {
        self.vars
            .get(var)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn error(&mut self, var: &'static str, problem: String) {
        self.errors.push(ConfigError { var, problem });
    }

    fn addr(&mut self, var: &'static str) -> Option<SocketAddr> {
        let v = self.get(var)?.to_owned();
        match v.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    var,
                    format!("{v:?} is not an address; expected ip:port, e.g. 127.0.0.1:8080"),
                );
                None
            }
        }
    }

    fn seconds(&mut self, var: &'static str) -> Option<Duration> {
        let v = self.get(var)?.to_owned();
        // try_from: a value too large for a Duration (1e30) is an error, not a panic.
        match v.parse::<f64>().map(Duration::try_from_secs_f64) {
            Ok(Ok(d)) => Some(d),
            _ => {
                self.error(
                    var,
                    format!("{v:?} is not a number of seconds; expected e.g. 10 or 0.5"),
                );
                None
            }
        }
    }

    fn required_path(&mut self, var: &'static str) -> Option<PathBuf> {
        match self.get(var) {
            Some(p) => Some(PathBuf::from(p)),
            None => {
                self.error(var, "is not set; it must name a PEM file".to_owned());
                None
            }
        }
    }

    fn boolean(&mut self, var: &'static str) -> Option<bool> {
        match self.get(var)? {
            "true" => Some(true),
            "false" => Some(false),
            other => {
                let other = other.to_owned();
                self.error(var, format!("{other:?} is not \"true\" or \"false\""));
                None
            }
        }
    }

    /// Exactly one of the anchors file and the inline anchors.
    fn trust_anchors(&mut self) -> Option<TrustAnchorsSource> {
        let file = self.get(env::TRUST_ANCHORS_FILE).map(PathBuf::from);
        // PEM text: only blank values count as unset (its lines must stay).
        let inline = self
            .vars
            .get(env::TRUST_ANCHORS)
            .filter(|v| !v.trim().is_empty())
            .cloned();
        match (file, inline) {
            (Some(path), None) => Some(TrustAnchorsSource::File(path)),
            (None, Some(pem)) => Some(TrustAnchorsSource::Inline(pem)),
            (Some(_), Some(_)) => {
                self.error(
                    env::TRUST_ANCHORS,
                    format!(
                        "is set together with {}; set exactly one (the PEM text, or a file holding it)",
                        env::TRUST_ANCHORS_FILE
                    ),
                );
                None
            }
            (None, None) => {
                self.error(
                    env::TRUST_ANCHORS_FILE,
                    format!(
                        "is not set, nor is {}; set exactly one: a PEM file of the trust anchors, or the PEM text itself",
                        env::TRUST_ANCHORS
                    ),
                );
                None
            }
        }
    }

    fn identity(&mut self, var: &'static str) -> Option<Identity> {
        let v = self.get(var)?.to_owned();
        match v.parse() {
            Ok(id) => Some(id),
            Err(e) => {
                self.error(var, format!("{e}"));
                None
            }
        }
    }

    /// The controller when its address is set, otherwise PEM files.
    fn identity_source(&mut self) -> Option<IdentitySource> {
        let Some(addr) = self.get(env::CONTROLLER_ADDR).map(str::to_owned) else {
            let cert_file = self.required_path(env::CERT_FILE);
            let key_file = self.required_path(env::KEY_FILE);
            return Some(IdentitySource::Files {
                cert_file: cert_file?,
                key_file: key_file?,
            });
        };
        if let Err(e) = weft_api::dns::split_host_port(&addr) {
            self.error(
                env::CONTROLLER_ADDR,
                format!("{e}; expected host:port, e.g. weft-controller.weft-system.svc:8090"),
            );
        }
        let identity = match self.identity(env::IDENTITY) {
            Some(id) => Some(id),
            None if self.get(env::IDENTITY).is_none() => {
                self.error(
                    env::IDENTITY,
                    format!("is not set; with {} the proxy must know the identity to ask for (spiffe://<trust-domain>/ns/<ns>/sa/<sa>)", env::CONTROLLER_ADDR),
                );
                None
            }
            None => None,
        };
        let token_file = match self.get(env::IDENTITY_TOKEN_FILE) {
            Some(p) => Some(PathBuf::from(p)),
            None => {
                self.error(
                    env::IDENTITY_TOKEN_FILE,
                    format!(
                        "is not set; with {} it must name the token file that proves the identity",
                        env::CONTROLLER_ADDR
                    ),
                );
                None
            }
        };
        let controller_identity = match self.identity(env::CONTROLLER_IDENTITY) {
            Some(id) => Some(id),
            None if self.get(env::CONTROLLER_IDENTITY).is_some() => None,
            None => identity
                .as_ref()
                .and_then(|id| weft_api::control::controller_identity(id.trust_domain()).ok()),
        };
        Some(IdentitySource::Controller(crate::identity::CertifyConfig {
            controller_addr: addr,
            controller_identity: controller_identity?,
            identity: identity?,
            token_file: token_file?,
        }))
    }

    /// The transparent listener: on in transparent mode (no app address) or
    /// when its address is set.
    fn transparent(&mut self, transparent_mode: bool) -> Option<Transparent> {
        let listen = self.addr(env::OUTBOUND_ADDR);
        if !transparent_mode && listen.is_none() {
            return None;
        }
        let mut t = Transparent::new();
        if let Some(addr) = listen {
            t.listen = vec![addr];
        }
        if let Some(text) = self.get(env::DESTINATIONS).map(str::to_owned) {
            for problem in t.destinations.add(&text) {
                self.error(env::DESTINATIONS, problem);
            }
        }
        if let Some(path) = self.get(env::DESTINATIONS_FILE).map(str::to_owned) {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    for problem in t.destinations.add(&text) {
                        self.error(env::DESTINATIONS_FILE, format!("in {path:?}: {problem}"));
                    }
                }
                Err(e) => self.error(env::DESTINATIONS_FILE, format!("cannot read {path:?}: {e}")),
            }
        }
        t.opaque_ports = self.ports(env::OPAQUE_PORTS);
        Some(t)
    }

    /// `port:/path` entries separated by spaces; absent: none.
    fn probe_paths(&mut self, var: &'static str) -> Vec<(u16, String)> {
        let mut out = Vec::new();
        let Some(v) = self.get(var).map(str::to_owned) else {
            return out;
        };
        for item in v.split_whitespace() {
            let parsed = item.split_once(':').and_then(|(port, path)| {
                let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
                path.starts_with('/').then(|| (port, path.to_owned()))
            });
            match parsed {
                Some(entry) => out.push(entry),
                None => self.error(
                    var,
                    format!("{item:?} is not port:/path; expected e.g. 8080:/healthz"),
                ),
            }
        }
        out
    }

    /// A comma-separated list of ports (`25,6379`); absent: none.
    fn ports(&mut self, var: &'static str) -> Vec<u16> {
        let mut out = Vec::new();
        if let Some(v) = self.get(var).map(str::to_owned) {
            for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                match item.parse::<u16>() {
                    Ok(port) if port > 0 => out.push(port),
                    _ => self.error(
                        var,
                        format!("{item:?} is not a port (1 to 65535); expected e.g. 25,6379"),
                    ),
                }
            }
        }
        out
    }

    /// Static entries, and entries that name a service (`listen=service:port[,opaque]`).
    fn upstreams(&mut self, var: &'static str) -> (Vec<Upstream>, Vec<ServiceUpstream>) {
        let Some(v) = self.get(var).map(str::to_owned) else {
            return (Vec::new(), Vec::new());
        };
        let mut out: Vec<Upstream> = Vec::new();
        let mut services: Vec<ServiceUpstream> = Vec::new();
        for entry in v.split_whitespace() {
            let parsed = if entry.contains('=') {
                parse_service_upstream(entry).map(|s| (s.listen, Err(s)))
            } else {
                parse_upstream(entry).map(|u| (u.listen, Ok(u)))
            };
            match parsed {
                Ok((listen, _))
                    if out.iter().any(|o| o.listen == listen)
                        || services.iter().any(|o| o.listen == listen) =>
                {
                    self.error(
                        var,
                        format!("entry {entry:?} listens on {listen} like an earlier entry; give each upstream its own port"),
                    );
                }
                Ok((_, Ok(u))) => out.push(u),
                Ok((_, Err(s))) => services.push(s),
                Err(problem) => self.error(var, format!("entry {entry:?}: {problem}")),
            }
        }
        (out, services)
    }

    /// Discovery: on when the controller is known, unless `WEFT_PROXY_DISCOVERY=false`.
    fn discovery(
        &mut self,
        identity: Option<&IdentitySource>,
    ) -> Option<crate::discovery::DiscoveryConfig> {
        let wanted = self.boolean(env::DISCOVERY);
        match identity {
            Some(IdentitySource::Controller(certify)) if wanted != Some(false) => {
                Some(crate::discovery::DiscoveryConfig {
                    controller_addr: certify.controller_addr.clone(),
                    controller_identity: certify.controller_identity.clone(),
                    identity: certify.identity.clone(),
                })
            }
            Some(IdentitySource::Files { .. }) if wanted == Some(true) => {
                self.error(
                    env::DISCOVERY,
                    format!(
                        "discovery needs the controller; set {} (the proxy then gets its certificate from it too)",
                        env::CONTROLLER_ADDR
                    ),
                );
                None
            }
            _ => None,
        }
    }
}

/// Parses `listen-addr=service:port[,opaque]`.
fn parse_service_upstream(entry: &str) -> Result<ServiceUpstream, String> {
    const FORMAT: &str =
        "expected listen-addr=service:port[,opaque], e.g. 127.0.0.1:4140=checkout:80";
    let (listen, rest) = entry.split_once('=').ok_or_else(|| FORMAT.to_owned())?;
    let (service, opaque) = match rest.split_once(',') {
        None => (rest, false),
        Some((service, "opaque")) => (service, true),
        Some((_, other)) => {
            return Err(format!(
                "unknown option {other:?}; the only option is \"opaque\""
            ));
        }
    };
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| format!("listen address {listen:?} is not ip:port; {FORMAT}"))?;
    let service = service
        .parse::<weft_api::policy::Target>()
        .map_err(|e| format!("{e}; {FORMAT}"))?;
    Ok(ServiceUpstream {
        listen,
        service,
        opaque,
    })
}

/// Parses `name,listen-addr,target-addr[+target-addr...],identity[,opaque]`.
fn parse_upstream(entry: &str) -> Result<Upstream, String> {
    const FORMAT: &str = "expected name,listen-addr,target-addr[+target-addr...],identity[,opaque]";
    let fields: Vec<&str> = entry.split(',').collect();
    let (name, listen, target, identity, opaque) = match fields.as_slice() {
        [n, l, t, i] => (*n, *l, *t, *i, false),
        [n, l, t, i, "opaque"] => (*n, *l, *t, *i, true),
        [_, _, _, _, other] => {
            return Err(format!(
                "unknown option {other:?}; the only option is \"opaque\""
            ));
        }
        _ => return Err(format!("has {} fields; {FORMAT}", fields.len())),
    };
    if name.is_empty() {
        return Err(format!("the name is empty; {FORMAT}"));
    }
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| format!("listen address {listen:?} is not ip:port"))?;
    let identity: Identity = identity.parse().map_err(|e| format!("{e}"))?;
    let endpoints = target
        .split('+')
        .map(|addr| {
            addr.parse::<SocketAddr>()
                .map(|addr| Endpoint {
                    addr,
                    identity: identity.clone(),
                })
                .map_err(|_| format!("target address {addr:?} is not ip:port"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Upstream {
        listen,
        target: Target {
            name: name.to_owned(),
            opaque,
            backends: vec![Backend {
                name: name.to_owned(),
                weight: 1,
                endpoints,
            }],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `from_secs_f64` panicked on 1e30 (seen while writing the env_config fuzz target).
    #[test]
    fn seconds_too_large_for_a_duration_are_an_error() {
        let mut v = vars(&[]);
        v.insert(env::DETECT_TIMEOUT.to_owned(), "1e30".to_owned());
        let text = Config::from_env(&v).unwrap_err().to_string();
        assert!(
            text.contains("WEFT_PROXY_DETECT_TIMEOUT: \"1e30\" is not a number of seconds"),
            "{text}"
        );
    }

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const FILES: [(&str, &str); 3] = [
        (env::CERT_FILE, "/c.pem"),
        (env::KEY_FILE, "/k.pem"),
        (env::TRUST_ANCHORS_FILE, "/a.pem"),
    ];

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::from_env(&vars(&FILES)).unwrap();
        assert_eq!(c.proxy.inbound_addr.port(), consts::PROXY_INBOUND_PORT);
        assert_eq!(c.proxy.admin_addr.port(), consts::PROXY_ADMIN_PORT);
        assert_eq!(c.proxy.app, AppTarget::OriginalDst);
        assert_eq!(c.proxy.detect_timeout, Duration::from_secs(10));
        assert!(c.proxy.upstreams.is_empty());
        assert!(c.proxy.shutdown_endpoint);
        assert_eq!(c.trust_anchors, TrustAnchorsSource::File("/a.pem".into()));
    }

    #[test]
    fn the_metrics_identity_cap_is_a_positive_count() {
        let c = Config::from_env(&vars(&FILES)).unwrap();
        assert_eq!(c.proxy.metrics_max_identities, 100);
        let mut v = vars(&FILES);
        v.insert(env::METRICS_MAX_IDENTITIES.into(), "7".into());
        assert_eq!(
            Config::from_env(&v).unwrap().proxy.metrics_max_identities,
            7
        );
        for bad in ["0", "many"] {
            v.insert(env::METRICS_MAX_IDENTITIES.into(), bad.into());
            let text = Config::from_env(&v).unwrap_err().to_string();
            assert!(
                text.contains(env::METRICS_MAX_IDENTITIES) && text.contains("positive count"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_metrics_idle_expiry_is_a_positive_number_of_seconds() {
        let c = Config::from_env(&vars(&FILES)).unwrap();
        assert_eq!(c.proxy.metrics_idle_expiry, Duration::from_secs(600));
        let mut v = vars(&FILES);
        v.insert(env::METRICS_IDLE_EXPIRY.into(), "90".into());
        assert_eq!(
            Config::from_env(&v).unwrap().proxy.metrics_idle_expiry,
            Duration::from_secs(90)
        );
        for (bad, why) in [("0", "more than 0"), ("10m", "number of seconds")] {
            v.insert(env::METRICS_IDLE_EXPIRY.into(), bad.into());
            let text = Config::from_env(&v).unwrap_err().to_string();
            assert!(
                text.contains(env::METRICS_IDLE_EXPIRY) && text.contains(why),
                "{bad}: {text}"
            );
        }
    }

    #[test]
    fn the_header_timeout_is_a_positive_number_of_seconds() {
        let c = Config::from_env(&vars(&FILES)).unwrap();
        assert_eq!(c.proxy.header_timeout, crate::http::HEADER_READ_TIMEOUT);
        let mut v = vars(&FILES);
        v.insert(env::HEADER_TIMEOUT.into(), "2.5".into());
        assert_eq!(
            Config::from_env(&v).unwrap().proxy.header_timeout,
            Duration::from_millis(2500)
        );
        for (bad, why) in [("0", "more than 0"), ("10s", "number of seconds")] {
            v.insert(env::HEADER_TIMEOUT.into(), bad.into());
            let text = Config::from_env(&v).unwrap_err().to_string();
            assert!(
                text.contains(env::HEADER_TIMEOUT) && text.contains(why),
                "{bad}: {text}"
            );
        }
    }

    #[test]
    fn trust_anchors_come_from_exactly_one_of_file_and_text() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let mut v = vars(&FILES[..2]);
        v.insert(env::TRUST_ANCHORS.into(), pem.into());
        let c = Config::from_env(&v).unwrap();
        assert_eq!(c.trust_anchors, TrustAnchorsSource::Inline(pem.into()));
        assert_eq!(
            format!("{:?}", c.trust_anchors),
            format!("Inline({} bytes)", pem.len())
        );

        v.insert(env::TRUST_ANCHORS_FILE.into(), "/a.pem".into());
        let text = Config::from_env(&v).unwrap_err().to_string();
        assert!(
            text.contains("WEFT_PROXY_TRUST_ANCHORS: is set together with WEFT_PROXY_TRUST_ANCHORS_FILE; set exactly one"),
            "{text}"
        );

        let text = Config::from_env(&vars(&FILES[..2]))
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("WEFT_PROXY_TRUST_ANCHORS_FILE: is not set, nor is WEFT_PROXY_TRUST_ANCHORS; set exactly one"),
            "{text}"
        );
    }

    #[test]
    fn the_shutdown_endpoint_can_be_turned_off() {
        let mut v = vars(&FILES);
        v.insert(env::SHUTDOWN_ENDPOINT.into(), "false".into());
        assert!(!Config::from_env(&v).unwrap().proxy.shutdown_endpoint);
        v.insert(env::SHUTDOWN_ENDPOINT.into(), "no".into());
        let text = Config::from_env(&v).unwrap_err().to_string();
        assert!(
            text.contains("WEFT_PROXY_SHUTDOWN_ENDPOINT: \"no\" is not \"true\" or \"false\""),
            "{text}"
        );
    }

    #[test]
    fn upstreams_may_name_a_service_when_discovery_is_on() {
        let token = "/var/run/token";
        let mut env = vars(&[
            (env::TRUST_ANCHORS_FILE, "/etc/weft/anchors.pem"),
            (env::CONTROLLER_ADDR, "127.0.0.1:8090"),
            (env::IDENTITY, "spiffe://cluster.local/ns/default/sa/web"),
            (env::IDENTITY_TOKEN_FILE, token),
            (env::APP_ADDR, "127.0.0.1:8080"),
            (
                env::UPSTREAMS,
                "127.0.0.1:4140=checkout:80 127.0.0.1:4141=cache:6379,opaque",
            ),
        ]);
        let config = Config::from_env(&env).expect("valid");
        assert_eq!(config.proxy.service_upstreams.len(), 2);
        assert_eq!(
            config.proxy.service_upstreams[0].service.to_string(),
            "checkout:80"
        );
        assert!(config.proxy.service_upstreams[1].opaque);
        let discovery = config.proxy.discovery.expect("on with a controller");
        assert_eq!(discovery.identity.service_account(), "web");
        env.insert(env::DISCOVERY.into(), "false".into());
        let errors = Config::from_env(&env).expect_err("a service entry without discovery");
        assert!(errors.to_string().contains("need discovery"), "{errors}");
    }

    #[test]
    fn parses_upstreams() {
        let mut v = vars(&FILES);
        v.insert(
            env::UPSTREAMS.into(),
            "web,127.0.0.1:4140,127.0.0.1:5143,spiffe://cluster.local/ns/shop/sa/web \
             redis,127.0.0.1:4141,127.0.0.1:5144+127.0.0.1:5145,spiffe://cluster.local/ns/shop/sa/redis,opaque"
                .into(),
        );
        let c = Config::from_env(&v).unwrap();
        assert_eq!(c.proxy.upstreams.len(), 2);
        assert_eq!(c.proxy.upstreams[0].target.name, "web");
        assert!(!c.proxy.upstreams[0].target.opaque);
        assert!(c.proxy.upstreams[1].target.opaque);
        assert_eq!(c.proxy.upstreams[1].target.backends[0].endpoints.len(), 2);
    }

    #[test]
    fn transparent_mode_reads_destinations_and_opaque_ports() {
        let dir = std::env::temp_dir().join(format!("weft-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("destinations");
        std::fs::write(
            &file,
            "# more\n198.18.0.4=spiffe://cluster.local/ns/a/sa/db\n",
        )
        .unwrap();
        let mut v = vars(&FILES);
        v.insert(
            env::DESTINATIONS.into(),
            "198.18.0.3:80=spiffe://cluster.local/ns/a/sa/web".into(),
        );
        v.insert(env::DESTINATIONS_FILE.into(), file.display().to_string());
        v.insert(env::OPAQUE_PORTS.into(), "25, 6379".into());
        let c = Config::from_env(&v).unwrap();
        let t = c.proxy.transparent.unwrap();
        assert_eq!(t.listen.len(), 2);
        assert_eq!(t.listen[0].port(), consts::PROXY_OUTBOUND_PORT);
        assert_eq!(t.destinations.len(), 2);
        assert!(
            t.destinations
                .lookup("198.18.0.4:1".parse().unwrap())
                .is_some()
        );
        assert_eq!(t.opaque_ports, [25, 6379]);
        std::fs::remove_dir_all(&dir).unwrap();

        // Local mode (an app address) has no transparent listener...
        let mut v = vars(&FILES);
        v.insert(env::APP_ADDR.into(), "127.0.0.1:8080".into());
        assert!(Config::from_env(&v).unwrap().proxy.transparent.is_none());
        // ...unless its address is set.
        v.insert(env::OUTBOUND_ADDR.into(), "127.0.0.1:4140".into());
        let t = Config::from_env(&v).unwrap().proxy.transparent.unwrap();
        assert_eq!(t.listen, ["127.0.0.1:4140".parse().unwrap()]);
    }

    #[test]
    fn reports_bad_transparent_settings() {
        let mut v = vars(&FILES);
        v.insert(env::DESTINATIONS.into(), "198.18.0.3=web nonsense".into());
        v.insert(env::DESTINATIONS_FILE.into(), "/nonexistent/weft".into());
        v.insert(env::OPAQUE_PORTS.into(), "0,redis".into());
        let text = Config::from_env(&v).unwrap_err().to_string();
        for needle in [
            "WEFT_PROXY_DESTINATIONS: `198.18.0.3=web`: bad identity",
            "WEFT_PROXY_DESTINATIONS: `nonsense` is not ADDRESS=IDENTITY",
            "WEFT_PROXY_DESTINATIONS_FILE: cannot read \"/nonexistent/weft\"",
            "WEFT_PROXY_OPAQUE_PORTS: \"0\" is not a port",
            "WEFT_PROXY_OPAQUE_PORTS: \"redis\" is not a port",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn reports_every_bad_variable() {
        let v = vars(&[
            (env::INBOUND_ADDR, "nope"),
            (env::DETECT_TIMEOUT, "-1"),
            (
                env::UPSTREAMS,
                "a,127.0.0.1:1,127.0.0.1:2,spiffe://x/ns/Bad/sa/b b,1",
            ),
            (env::LOG_FORMAT, "xml"),
            (env::WORKER_THREADS, "0"),
            (env::ACCESS_LOG, "maybe"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
        ]);
        let errs = Config::from_env(&v).unwrap_err();
        let text = errs.to_string();
        for needle in [
            env::INBOUND_ADDR,
            env::DETECT_TIMEOUT,
            "invalid namespace",
            "has 2 fields",
            env::LOG_FORMAT,
            "WEFT_PROXY_WORKER_THREADS: \"0\" is not a thread count; use a number from 1 to 256",
            env::CERT_FILE,
            env::KEY_FILE,
            env::TRUST_ANCHORS_FILE,
            "WEFT_PROXY_ACCESS_LOG: \"maybe\" is not on or off",
            "OTEL_EXPORTER_OTLP_ENDPOINT: \"collector:4317\" is not a URL",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert_eq!(errs.0.len(), 11, "{text}");
    }
}
