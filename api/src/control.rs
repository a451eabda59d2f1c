//! The client side of the control protocol: how a proxy (or a test, or the CLI)
//! reaches the controller.
//!
//! The connection is TLS 1.3 with the mesh's settings; the client checks that
//! the controller proves [`controller_identity`] with a chain to the trust
//! anchors of the caller's [`MeshTls`], and presents its own certificate when it
//! has one (before its first `Certify` it has none, and the controller's
//! endpoint does not ask for one).
//!
//! The controller's name (in a pod `weft-controller.weft-system.svc:8090`) is
//! resolved by [`crate::dns`], not the C library, each time the channel
//! (re)connects.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};

use crate::certify::{Certified, CertifyRequest, ProtoError, Refusal};
use crate::consts::{CONTROLLER_SERVICE_ACCOUNT, MESH_NAMESPACE, alpn};
use crate::dns::{self, Resolver};
use crate::identity::{Identity, IdentityError};
use crate::proto::weft_v1::discovery_client::DiscoveryClient;
use crate::proto::weft_v1::identity_client::IdentityClient;
use crate::tls::MeshTls;

/// How long a TCP connect plus TLS handshake to the controller may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call to the controller may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The identity the controller's gRPC endpoint presents in `trust_domain`.
pub fn controller_identity(trust_domain: &str) -> Result<Identity, IdentityError> {
    Identity::new(trust_domain, MESH_NAMESPACE, CONTROLLER_SERVICE_ACCOUNT)
}

/// Errors talking to the controller.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("controller address {addr:?} is not a valid host:port: {reason}")]
    BadAddress { addr: String, reason: String },
    /// The controller answered and refused; the reason says what to fix.
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(
        "the controller at {addr} could not be reached or failed ({code:?}): {message}; check \
         that it runs, that its address is right, and that it presents {expected} with a chain \
         to this workload's trust anchors"
    )]
    Unavailable {
        addr: String,
        expected: Box<Identity>,
        code: tonic::Code,
        message: String,
    },
    #[error("the controller at {addr} sent an invalid answer: {source}")]
    Protocol {
        addr: String,
        #[source]
        source: ProtoError,
    },
}

/// A client of the controller's gRPC API. Cheap to clone; connects lazily and
/// reconnects on the next call after a failure.
#[derive(Clone, Debug)]
pub struct ControlClient {
    addr: String,
    expected: Identity,
    identity: IdentityClient<Channel>,
}

impl ControlClient {
    /// A client of the controller at `addr` (`host:port`), which must prove
    /// `expected` (normally [`controller_identity`]).
    /// Names are resolved with the host's or pod's files ([`Resolver::system`]).
    pub fn new(addr: &str, tls: Arc<MeshTls>, expected: Identity) -> Result<Self, ControlError> {
        Self::with_resolver(addr, tls, expected, Resolver::system())
    }

    /// [`ControlClient::new`] with the resolver given (tests point one at
    /// their own name server).
    pub fn with_resolver(
        addr: &str,
        tls: Arc<MeshTls>,
        expected: Identity,
        resolver: Resolver,
    ) -> Result<Self, ControlError> {
        let channel = channel(addr, tls, &expected, resolver, Some(REQUEST_TIMEOUT))?;
        Ok(Self {
            addr: addr.to_owned(),
            expected,
            identity: IdentityClient::new(channel),
        })
    }

    /// Asks the controller to sign `request.csr` for the identity the token proves.
    pub async fn certify(&self, request: CertifyRequest) -> Result<Certified, ControlError> {
        let mut client = self.identity.clone();
        let response = client
            .certify(crate::proto::weft_v1::CertifyRequest::from(request))
            .await
            .map_err(|status| self.status_error(&status))?;
        Certified::try_from(response.into_inner()).map_err(|source| ControlError::Protocol {
            addr: self.addr.clone(),
            source,
        })
    }

    fn status_error(&self, status: &tonic::Status) -> ControlError {
        if let Some(refusal) = Refusal::from_status(status) {
            return ControlError::Refused(refusal);
        }
        let message = describe(status);
        ControlError::Unavailable {
            addr: self.addr.clone(),
            expected: Box::new(self.expected.clone()),
            code: status.code(),
            message,
        }
    }
}

/// A client of `weft.v1.Discovery` at `addr`, on a [`watch_channel`] of its own.
pub fn discovery_client(
    addr: &str,
    tls: Arc<MeshTls>,
    expected: &Identity,
    resolver: Resolver,
) -> Result<DiscoveryClient<Channel>, ControlError> {
    watch_channel(addr, tls, expected, resolver).map(DiscoveryClient::new)
}

/// A channel to the controller at `addr` for the `Watch` streams
/// (`Discovery`, `Inbound`): it connects (lazily, again after each failure)
/// with the workload certificate installed in `tls` at that moment, which the
/// streams require (the channel of [`ControlClient`] may have connected before
/// there was one). No per-call timeout: a `Watch` stream lives as long as the
/// proxy; HTTP/2 pings find a controller that went away.
pub fn watch_channel(
    addr: &str,
    tls: Arc<MeshTls>,
    expected: &Identity,
    resolver: Resolver,
) -> Result<Channel, ControlError> {
    channel(addr, tls, expected, resolver, None)
}

/// A lazily connecting channel to the controller at `addr`, which must prove
/// `expected`; names resolved by `resolver` on every (re)connect.
fn channel(
    addr: &str,
    tls: Arc<MeshTls>,
    expected: &Identity,
    resolver: Resolver,
    timeout: Option<Duration>,
) -> Result<Channel, ControlError> {
    let bad = |reason: String| ControlError::BadAddress {
        addr: addr.to_owned(),
        reason,
    };
    let (host, _port) = dns::split_host_port(addr).map_err(|e| match e {
        dns::DnsError::BadAddress { reason, .. } => bad(reason),
        other => bad(other.to_string()),
    })?;
    let host = match host {
        dns::Host::Ip(ip) => ip.to_string(),
        dns::Host::Name(name) => name,
    };
    // The URI is only tonic's bookkeeping: the connector below dials.
    let mut endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| bad(e.to_string()))?
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if let Some(timeout) = timeout {
        endpoint = endpoint.timeout(timeout);
    }
    // Mesh verification ignores the name (it checks the identity); rustls
    // still wants one for the handshake.
    let server_name = ServerName::try_from(host).map_err(|e| bad(e.to_string()))?;
    let connect_addr = addr.to_owned();
    let connect_identity = expected.clone();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let addr = connect_addr.clone();
        let resolver = resolver.clone();
        let config = tls.client_config(&connect_identity, alpn::H2);
        let server_name = server_name.clone();
        async move {
            let connect = async {
                // Resolved again on every (re)connect.
                let tcp = resolver.connect(&addr).await?;
                tcp.set_nodelay(true)?;
                tokio_rustls::TlsConnector::from(config)
                    .connect(server_name, tcp)
                    .await
            };
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connecting to the controller took over {CONNECT_TIMEOUT:?}"),
                    )
                })??;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// How often an idle channel to the controller is pinged, and how long a ping
/// may go unanswered before the connection counts as dead.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The message of a failed call: the TLS failure when there was one (named
/// precisely when it is an identity mismatch), else the status and its causes.
fn describe(status: &tonic::Status) -> String {
    let mut message = status.message().to_owned();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(cause) = source {
        let inner = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|e| e as &(dyn std::error::Error + 'static));
        if let Some(tls) = inner.unwrap_or(cause).downcast_ref::<rustls::Error>() {
            return match crate::tls::PeerIdentityError::from_rustls(tls) {
                Some(identity) => format!("TLS handshake refused: {identity}"),
                None => format!("TLS handshake failed: {tls}"),
            };
        }
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
