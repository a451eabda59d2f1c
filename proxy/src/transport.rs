//! Connection set-up: TCP options, mesh TLS to a peer, and what a failure means.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use weft_api::tls::{MeshTls, PeerIdentityError};

use crate::config::Endpoint;
use crate::http::ProxyError;
use crate::metrics::{Direction, Metrics};

/// Why a connection to a peer could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection to {addr} refused: {source}")]
    Refused {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connection to {addr} failed: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {addr} took longer than {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    #[error("refused peer {addr}: {source}")]
    Identity {
        addr: SocketAddr,
        #[source]
        source: PeerIdentityError,
    },
}

impl ConnectError {
    /// The cause named to the app in the `weft-proxy-error` header.
    pub fn kind(&self) -> ProxyError {
        match self {
            Self::Refused { .. } => ProxyError::ConnectRefused,
            Self::Io { .. } => ProxyError::PeerUnavailable,
            Self::Timeout { .. } => ProxyError::ConnectTimeout,
            Self::Tls { .. } => ProxyError::TlsFailure,
            Self::Identity {
                source: PeerIdentityError::Mismatch { .. },
                ..
            } => ProxyError::IdentityMismatch,
            Self::Identity { .. } => ProxyError::TlsFailure,
        }
    }
}

/// A TCP connection with the data path's socket options.
pub async fn connect_tcp(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects to `endpoint` over mesh mTLS offering `alpn`, and checks that the
/// server proves the endpoint's identity. Counts the handshake in `metrics`.
pub async fn connect_mesh(
    tls: &MeshTls,
    metrics: &Metrics,
    endpoint: &Endpoint,
    alpn: &'static [u8],
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let addr = endpoint.addr;
    let connect = async {
        let tcp = connect_tcp(addr).await.map_err(|source| {
            if source.kind() == io::ErrorKind::ConnectionRefused {
                ConnectError::Refused { addr, source }
            } else {
                ConnectError::Io { addr, source }
            }
        })?;
        let connector = TlsConnector::from(tls.client_config(&endpoint.identity, alpn));
        connector
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .map_err(|e| tls_error(addr, e))
    };
    let result = match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout { addr, timeout }),
    };
    match &result {
        Ok(stream) => {
            let (_, conn) = stream.get_ref();
            metrics.handshake(Direction::Outbound, conn.negotiated_key_exchange_group());
        }
        Err(e) => {
            metrics.handshake_failed(Direction::Outbound, e.kind().as_str());
        }
    }
    result
}

/// Maps an I/O error from a TLS handshake to the most precise cause.
fn tls_error(addr: SocketAddr, e: io::Error) -> ConnectError {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(err) => match PeerIdentityError::from_rustls(err) {
            Some(source) => ConnectError::Identity {
                addr,
                source: source.clone(),
            },
            None => ConnectError::Tls {
                addr,
                reason: err.to_string(),
            },
        },
        None if matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
        ) =>
        {
            ConnectError::Tls {
                addr,
                reason: format!(
                    "the peer closed the connection during the handshake ({e}); it may not trust this proxy's certificate"
                ),
            }
        }
        None => ConnectError::Io { addr, source: e },
    }
}

/// The TLS failure somewhere in `err`'s chain of causes, described, if any.
///
/// Connections to peers are TLS streams, whose TLS-layer failures surface as
/// I/O errors of kind `InvalidData`; HTTP/2 keeps only their message, so the
/// kind is what identifies them once they have crossed hyper and h2.
pub fn tls_cause(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        let io_error = e
            .downcast_ref::<io::Error>()
            .or_else(|| e.downcast_ref::<h2::Error>().and_then(h2::Error::get_io));
        if let Some(io_error) = io_error
            && io_error.kind() == io::ErrorKind::InvalidData
        {
            return Some(match io_error.get_ref() {
                Some(inner) => inner.to_string(),
                None => io_error.to_string(),
            });
        }
        current = e.source();
    }
    None
}
