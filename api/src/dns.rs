//! Turning `host:port` into socket addresses without the C library.
//!
//! weft's images are `FROM scratch`: a statically linked glibc binary cannot
//! load NSS modules, so `getaddrinfo` (what `TcpStream::connect("name:port")`
//! calls) fails on any name there. Every name weft's binaries connect to goes
//! through this module instead, which reads the pod's files itself with
//! hickory, as Linkerd and ztunnel do:
//!
//! - a literal IP (`10.96.0.10:8090`, `[fd00::1]:8090`) is used as it is, with
//!   no file read and no query;
//! - `/etc/hosts` is looked up first;
//! - otherwise the name is asked of the `nameserver`s of `/etc/resolv.conf`,
//!   expanded with its `search` domains under its `ndots` rule, so
//!   `weft-controller.weft-system.svc` finds
//!   `weft-controller.weft-system.svc.cluster.local` in a pod.
//!
//! A [`Resolver`] is built once per client; [`Resolver::resolve`] asks again on
//! every call (answers are cached for their TTL), so a client that reconnects
//! follows a changed address.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{Hosts, TokioResolver};
use tokio::net::TcpStream;

/// Where a pod's resolver configuration lives.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Where a pod's static host table lives.
pub const HOSTS: &str = "/etc/hosts";
/// The port name servers listen on (`resolv.conf` cannot name another).
pub const DNS_PORT: u16 = 53;

/// Why a name could not be turned into addresses.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DnsError {
    #[error("{addr:?} is not a valid host:port: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error(
        "cannot resolve {host:?}: the resolver configuration {path} is unusable ({reason}); \
         a pod gets it from the kubelet, elsewhere write one with a `nameserver` line, or \
         use an IP address"
    )]
    Config {
        host: String,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "cannot resolve {host:?}: {reason} (check the name, the search domains and name \
         servers in {RESOLV_CONF}, or that the Service exists)"
    )]
    Lookup { host: String, reason: String },
}

/// The host part of a `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Splits `host:port` (`name:80`, `10.0.0.1:80`, `[::1]:80`) into its parts.
pub fn split_host_port(addr: &str) -> Result<(Host, u16), DnsError> {
    let bad = |reason: &str| DnsError::BadAddress {
        addr: addr.to_owned(),
        reason: reason.to_owned(),
    };
    if let Ok(socket) = addr.parse::<SocketAddr>() {
        return Ok((Host::Ip(socket.ip()), socket.port()));
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("it has no port"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((Host::Ip(ip), port));
    }
    if host.is_empty() {
        return Err(bad("it has no host"));
    }
    let valid = host.split('.').enumerate().all(|(i, label)| {
        // A trailing dot (fully qualified) leaves one empty last label.
        (!label.is_empty() || i > 0 && host.ends_with('.'))
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !valid || host.contains(':') || host.len() > 253 {
        return Err(bad("the host is neither an IP address nor a DNS name"));
    }
    Ok((Host::Name(host.to_owned()), port))
}

/// A stub resolver configured like the pod's C library would be. Cheap to
/// clone; clones share the cache.
#[derive(Clone)]
pub struct Resolver {
    /// The hosts file, asked first for the name as given (as glibc's `files`).
    hosts: Arc<Hosts>,
    /// The name servers, or why `resolv.conf` gave none.
    dns: Result<TokioResolver, Arc<(PathBuf, String)>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.dns {
            Ok(_) => f.write_str("Resolver"),
            Err(e) => write!(f, "Resolver(unusable: {}: {})", e.0.display(), e.1),
        }
    }
}

impl Resolver {
    /// The resolver of this host or pod: [`RESOLV_CONF`] and [`HOSTS`]. A
    /// missing or broken `resolv.conf` is reported when a name is resolved,
    /// not here, so that literal addresses work without one.
    pub fn system() -> Self {
        Self::from_files(Path::new(RESOLV_CONF), Path::new(HOSTS), DNS_PORT)
    }

    /// A resolver from the given files (a missing hosts file is an empty
    /// one), asking its name servers on `port` (tests run one on a free
    /// port; a pod's are on [`DNS_PORT`]).
    pub fn from_files(resolv_conf: &Path, hosts: &Path, port: u16) -> Self {
        let hosts = match std::fs::read(hosts) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(path = %hosts.display(), error = %e, "cannot read the hosts file; ignoring it");
                Vec::new()
            }
        };
        match std::fs::read(resolv_conf) {
            Ok(conf) => Self::from_conf(resolv_conf, &conf, &hosts, port),
            Err(e) => Self {
                hosts: Arc::new(parse_hosts(&hosts)),
                dns: Err(Arc::new((resolv_conf.to_owned(), e.to_string()))),
            },
        }
    }

    /// A resolver from the text of a `resolv.conf` (named `path` in errors)
    /// and of a hosts file.
    pub fn from_conf(path: &Path, resolv_conf: &[u8], hosts: &[u8], port: u16) -> Self {
        let hosts = Arc::new(parse_hosts(hosts));
        let dns = hickory_resolver::system_conf::parse_resolv_conf(resolv_conf)
            .and_then(|(config, opts)| build(with_port(config, port), opts))
            .map(|mut resolver| {
                // The search domains' names are looked up in the hosts file too.
                resolver.set_hosts(hosts.clone());
                resolver
            })
            .map_err(|e| Arc::new((path.to_owned(), e.to_string())));
        Self { hosts, dns }
    }

    /// The addresses the hosts file gives `name` as it is written.
    fn in_hosts_file(&self, name: &str, port: u16) -> Option<Vec<SocketAddr>> {
        let name = Name::from_str_relaxed(name).ok()?;
        let addrs: Vec<SocketAddr> = [RecordType::A, RecordType::AAAA]
            .into_iter()
            .filter_map(|kind| {
                self.hosts
                    .lookup_static_host(&Query::query(name.clone(), kind))
            })
            .flat_map(|lookup| {
                lookup
                    .answers()
                    .iter()
                    .filter_map(|record| record.data.ip_addr())
                    .collect::<Vec<_>>()
            })
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        (!addrs.is_empty()).then_some(addrs)
    }

    /// The addresses of `addr` (`host:port`), in the order to try them.
    pub async fn resolve(&self, addr: &str) -> Result<Vec<SocketAddr>, DnsError> {
        let (host, port) = split_host_port(addr)?;
        let name = match host {
            Host::Ip(ip) => return Ok(vec![SocketAddr::new(ip, port)]),
            Host::Name(name) => name,
        };
        if let Some(addrs) = self.in_hosts_file(&name, port) {
            tracing::debug!(host = %name, ?addrs, "resolved from the hosts file");
            return Ok(addrs);
        }
        let resolver = self.dns.as_ref().map_err(|e| DnsError::Config {
            host: name.clone(),
            path: e.0.clone(),
            reason: e.1.clone(),
        })?;
        let lookup = resolver
            .lookup_ip(name.as_str())
            .await
            .map_err(|e| DnsError::Lookup {
                host: name.clone(),
                reason: e.to_string(),
            })?;
        let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(DnsError::Lookup {
                host: name,
                reason: "no addresses".into(),
            });
        }
        tracing::debug!(host = %name, ?addrs, "resolved");
        Ok(addrs)
    }

    /// Resolves `addr` and connects to its addresses in turn until one
    /// accepts; the error names the last failure.
    pub async fn connect(&self, addr: &str) -> std::io::Result<TcpStream> {
        let addrs = self
            .resolve(addr)
            .await
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e))?;
        let mut last = None;
        for socket in addrs {
            match TcpStream::connect(socket).await {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    tracing::debug!(%addr, %socket, error = %e, "connect failed; trying the next address");
                    last = Some(std::io::Error::new(e.kind(), format!("{socket}: {e}")));
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other(format!("{addr} has no addresses"))))
    }
}

fn parse_hosts(text: &[u8]) -> Hosts {
    let mut hosts = Hosts::default();
    if let Err(e) = hosts.read_hosts_conf(text) {
        tracing::warn!(error = %e, "cannot parse the hosts file; ignoring it");
    }
    hosts
}

/// Points every name server of `config` at `port`.
fn with_port(config: ResolverConfig, port: u16) -> ResolverConfig {
    let domain = config.domain().cloned();
    let search = config.search().to_vec();
    let mut servers = config.name_servers().to_vec();
    for server in &mut servers {
        for connection in &mut server.connections {
            connection.port = port;
        }
    }
    ResolverConfig::from_parts(domain, search, servers)
}

fn build(
    config: ResolverConfig,
    mut opts: ResolverOpts,
) -> Result<TokioResolver, hickory_resolver::net::NetError> {
    // The hosts table is set from the given file, not read again from /etc.
    opts.use_hosts_file = ResolveHosts::Never;
    // A Service's address is stable; a short cap still follows a change soon.
    opts.positive_max_ttl = Some(Duration::from_secs(30));
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_host_and_port() {
        let ip = |s: &str| Host::Ip(s.parse().unwrap());
        let name = |s: &str| Host::Name(s.to_owned());
        assert_eq!(
            split_host_port("10.0.0.1:8090").unwrap(),
            (ip("10.0.0.1"), 8090)
        );
        assert_eq!(
            split_host_port("[fd00::1]:8090").unwrap(),
            (ip("fd00::1"), 8090)
        );
        assert_eq!(
            split_host_port("weft-controller.weft-system.svc:8090").unwrap(),
            (name("weft-controller.weft-system.svc"), 8090)
        );
        assert_eq!(split_host_port("a.b.:1").unwrap(), (name("a.b."), 1));
        assert_eq!(
            split_host_port("localhost:1").unwrap(),
            (name("localhost"), 1)
        );
        for bad in [
            "weft-controller",
            "host:",
            "host:99999",
            ":80",
            "a..b:80",
            "a b:80",
            "fd00::1:80x",
            "[fd00::1]",
        ] {
            assert!(
                matches!(split_host_port(bad), Err(DnsError::BadAddress { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[tokio::test]
    async fn literal_addresses_need_no_configuration() {
        let resolver = Resolver::from_files(
            Path::new("/nonexistent/resolv.conf"),
            Path::new("/nonexistent/hosts"),
            53,
        );
        assert_eq!(
            resolver.resolve("127.0.0.1:8090").await.unwrap(),
            vec![SocketAddr::from(([127, 0, 0, 1], 8090))]
        );
        assert_eq!(
            resolver.resolve("[::1]:80").await.unwrap(),
            vec!["[::1]:80".parse().unwrap()]
        );
        // A name is an error that names the file.
        let err = resolver.resolve("weft-controller:8090").await.unwrap_err();
        assert!(matches!(err, DnsError::Config { .. }), "{err}");
        assert!(
            err.to_string().contains("/nonexistent/resolv.conf"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_hosts_file_answers_before_any_name_server() {
        // The name server is a port nothing listens on (queries are refused
        // at once): only the hosts file can answer, and it must, for a full
        // name and for a short one the search domains do not find.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let resolver = Resolver::from_conf(
            Path::new("resolv.conf"),
            b"nameserver 127.0.0.1\nsearch weft-system.svc.cluster.local\noptions ndots:5 timeout:1 attempts:1\n",
            b"# a pod's hosts\n127.0.0.1 localhost\n10.244.0.7 web-0\n10.1.2.3 weft-controller.weft-system.svc.cluster.local\n",
            port,
        );
        assert_eq!(
            resolver
                .resolve("weft-controller.weft-system.svc.cluster.local:8090")
                .await
                .unwrap(),
            vec![SocketAddr::from(([10, 1, 2, 3], 8090))]
        );
        assert_eq!(
            resolver.resolve("web-0:1").await.unwrap(),
            vec![SocketAddr::from(([10, 244, 0, 7], 1))]
        );
    }

    #[test]
    fn an_unparsable_resolv_conf_is_reported_on_use() {
        let resolver = Resolver::from_conf(Path::new("/etc/resolv.conf"), b"search x\n", b"", 53);
        let err = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(resolver.resolve("name:1"))
            .unwrap_err();
        assert!(matches!(err, DnsError::Config { .. }), "{err}");
    }
}
