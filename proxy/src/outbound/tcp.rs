//! Opaque TCP: bytes relayed unchanged to a peer over mesh mTLS.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use weft_api::consts::alpn;

use super::{Outbound, balance};
use crate::config::Target;
use crate::transport::connect_mesh;

/// Relays `io` to an endpoint of `target` until both directions close.
pub(super) async fn forward<I>(outbound: &Outbound, target: &Target, mut io: I, client: SocketAddr)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let Some(endpoint) = balance::pick(target) else {
        tracing::warn!(target = %target.name, %client, "no endpoints; closing the app's connection");
        return;
    };
    let mut peer = match connect_mesh(
        &outbound.tls,
        &outbound.metrics,
        endpoint,
        alpn::OPAQUE,
        outbound.connect_timeout,
    )
    .await
    {
        Ok(peer) => peer,
        Err(error) => {
            tracing::warn!(
                target = %target.name,
                %client,
                endpoint = %endpoint.addr,
                %error,
                "opaque connection to peer failed; closing the app's connection"
            );
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut io, &mut peer).await {
        Ok((sent, received)) => {
            tracing::debug!(target = %target.name, %client, sent, received, "opaque connection closed");
        }
        Err(error) => {
            tracing::debug!(target = %target.name, %client, %error, "opaque connection failed");
        }
    }
}
