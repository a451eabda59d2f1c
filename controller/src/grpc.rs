//! The controller's gRPC endpoint: package `weft.v1` served by tonic over a
//! tokio-rustls acceptor (TLS 1.3, the controller's own mesh certificate, a
//! client certificate asked for but not required: a proxy calls `Certify`
//! before it has one, and `Discovery.Watch` with it; see
//! [`crate::discovery::service`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};
use weft_api::Identity;
use weft_api::certify::{CertifyRequest, Refusal};
use weft_api::proto::weft_v1 as wire;
use weft_api::proto::weft_v1::discovery_server::DiscoveryServer;
use weft_api::proto::weft_v1::identity_server::IdentityServer;
use weft_api::proto::weft_v1::inbound_server::InboundServer;

use crate::audit::{AuditEvent, AuditLog};
use crate::ca::{Ca, Issued};
use crate::metrics::Metrics;
use crate::token::TokenVerifier;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the gRPC services know about the connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// The identity of the client certificate, when one was presented (the
    /// TLS layer has checked its chain to the trust anchors).
    pub identity: Option<Identity>,
}

/// `weft.v1.Identity`: proves the caller's identity from its token, signs its
/// CSR, and records the outcome in the audit trail and the metrics.
pub struct IdentityService {
    ca: Arc<Ca>,
    verifier: Arc<dyn TokenVerifier>,
    audit: Arc<AuditLog>,
    metrics: Arc<Metrics>,
}

impl IdentityService {
    pub fn new(
        ca: Arc<Ca>,
        verifier: Arc<dyn TokenVerifier>,
        audit: Arc<AuditLog>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            ca,
            verifier,
            audit,
            metrics,
        }
    }

    fn refuse(
        &self,
        identity: Option<&Identity>,
        refusal: Refusal,
        peer: Option<SocketAddr>,
    ) -> Status {
        tracing::warn!(
            peer = ?peer,
            identity = ?identity.map(ToString::to_string),
            reason = %refusal.reason,
            detail = ?refusal.detail,
            "certificate refused"
        );
        self.metrics.refused(refusal.reason);
        if let Err(e) = self.audit.append(
            &AuditEvent::Refused {
                identity,
                refusal: &refusal,
            },
            peer,
        ) {
            tracing::error!(error = %e, "could not record a refusal in the audit trail");
        }
        refusal.into()
    }

    async fn certify(
        &self,
        request: CertifyRequest,
        peer: Option<SocketAddr>,
    ) -> Result<Issued, Status> {
        let identity = match self.verifier.verify(&request.token).await {
            Ok(identity) => identity,
            Err(e) => {
                return Err(match e.refusal() {
                    Some(refusal) => self.refuse(None, refusal, peer),
                    None => {
                        tracing::error!(peer = ?peer, error = %e, "cannot check tokens");
                        Status::unavailable(e.to_string())
                    }
                });
            }
        };
        let issued = self
            .ca
            .sign(&request.csr, &identity)
            .map_err(|refusal| self.refuse(Some(&identity), refusal, peer))?;
        // No certificate leaves without its audit record.
        self.audit
            .append(&AuditEvent::Issued(&issued), peer)
            .map_err(|e| {
                tracing::error!(error = %e, "could not record an issuance; certificate withheld");
                Status::unavailable(format!(
                    "the controller cannot write its audit trail ({e}); no certificate is issued \
                     without a record"
                ))
            })?;
        self.metrics.issued();
        tracing::info!(
            peer = ?peer,
            identity = %issued.identity,
            serial = %issued.serial,
            valid_until = %crate::ca::rfc3339(issued.certified.valid_until),
            "certificate issued"
        );
        Ok(issued)
    }
}

#[tonic::async_trait]
impl wire::identity_server::Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<wire::CertifyRequest>,
    ) -> Result<Response<wire::CertifyResponse>, Status> {
        let peer = request.extensions().get::<ConnInfo>().map(|c| c.remote);
        let request = CertifyRequest::try_from(request.into_inner())
            .map_err(|e| self.refuse(None, e.refusal(), peer))?;
        let issued = IdentityService::certify(self, request, peer).await?;
        Ok(Response::new(issued.certified.into()))
    }
}

/// Serves the gRPC API on `listener` until `shutdown` completes. Each accepted
/// connection completes its TLS handshake with `tls` on its own task.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    identity: IdentityService,
    discovery: Option<(
        crate::discovery::service::DiscoveryService,
        crate::discovery::inbound_service::InboundService,
    )>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let acceptor = TlsAcceptor::from(tls);
    // The workspace's one accept loop (it backs off on errors such as running
    // out of file descriptors, where tonic's own would spin); tonic owns the
    // connections once handshaken.
    let stop_accepting = tokio_util::sync::CancellationToken::new();
    // The listener closes when shutdown begins, even if this future is then
    // dropped (the controller aborts connections that outlive the grace).
    let shutdown = {
        let stop = stop_accepting.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    };
    let _stop_on_drop = stop_accepting.clone().drop_guard();
    let incoming = weft_api::accept::incoming(
        listener,
        "controller-grpc",
        stop_accepting.clone(),
        move |tcp, remote| {
            let acceptor = acceptor.clone();
            async move {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => Some(TlsConn { stream, remote }),
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        None
                    }
                }
            }
        },
    );
    let (discovery, inbound) = match discovery {
        Some((d, i)) => (Some(d), Some(i)),
        None => (None, None),
    };
    let result = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(identity))
        .add_optional_service(discovery.map(DiscoveryServer::new))
        .add_optional_service(inbound.map(InboundServer::new))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    stop_accepting.cancel();
    result
}

pin_project_lite::pin_project! {
    /// An accepted TLS connection, with the caller's address for the services.
    pub struct TlsConn {
        #[pin]
        stream: TlsStream<TcpStream>,
        remote: SocketAddr,
    }
}

impl Connected for TlsConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        let identity = self
            .stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| weft_api::tls::peer_identity(leaf).ok());
        ConnInfo {
            remote: self.remote,
            identity,
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().stream.poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().stream.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().stream.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
