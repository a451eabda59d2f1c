//! Opaque TCP: bytes relayed unchanged to a peer over mesh mTLS, or in
//! plaintext to an endpoint that is not meshed.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use weft_api::consts::alpn;

use super::{Outbound, Upstream};
use crate::transport::{connect_mesh, connect_tcp};

/// Relays `io` to an endpoint of `target` until both directions close.
pub(super) async fn forward<I>(
    outbound: &Outbound,
    target: &Upstream,
    mut io: I,
    client: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let resolved = target.resolve();
    let Some((_, endpoint)) = super::http::pick(target, &resolved, None, None) else {
        tracing::warn!(target = %target.name, %client, "no endpoints; closing the app's connection");
        return;
    };
    let addr = endpoint.addr();
    let connect_timeout = resolved
        .state
        .connect_timeout
        .unwrap_or(outbound.connect_timeout);
    let result = match endpoint.mesh.as_ref() {
        Some(mesh) => match connect_mesh(
            &outbound.tls,
            &outbound.metrics,
            mesh,
            alpn::OPAQUE,
            connect_timeout,
        )
        .await
        {
            Ok(mut peer) => Ok(tokio::io::copy_bidirectional(&mut io, &mut peer).await),
            Err(error) => Err(error.to_string()),
        },
        None => match tokio::time::timeout(connect_timeout, connect_tcp(addr)).await {
            Ok(Ok(mut peer)) => Ok(tokio::io::copy_bidirectional(&mut io, &mut peer).await),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("connecting took longer than {:?}", connect_timeout)),
        },
    };
    match result {
        Ok(Ok((sent, received))) => {
            tracing::debug!(target = %target.name, %client, sent, received, "opaque connection closed");
        }
        Ok(Err(error)) => {
            tracing::debug!(target = %target.name, %client, %error, "opaque connection failed");
        }
        Err(error) => {
            tracing::warn!(
                target = %target.name,
                %client,
                endpoint = %addr,
                %error,
                "opaque connection to peer failed; closing the app's connection"
            );
        }
    }
}
