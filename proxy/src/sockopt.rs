//! The original destination of a TCP connection that iptables redirected to
//! the proxy (`SO_ORIGINAL_DST` for IPv4, `IP6T_SO_ORIGINAL_DST` for IPv6).
//!
//! Uses nix's safe socket options, so no `unsafe` is needed.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;
use nix::sys::socket::{SockaddrStorage, getsockname, getsockopt, sockopt};

/// Why the original destination could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OriginalDstError {
    /// Connection tracking has no record of the connection, so iptables did
    /// not redirect it. (A connection that was tracked but not redirected
    /// reports its own local address instead.)
    #[error(
        "the connection has no connection-tracking record, so iptables did not redirect \
         it (are weft-init's rules installed in this network namespace?)"
    )]
    NoConntrackRecord,
    #[error("could not read the socket's local address: {0}")]
    LocalAddr(#[source] Errno),
    #[error("the socket is not an IPv4 or IPv6 socket")]
    NotInet,
    #[error("getsockopt({option}) failed: {source}")]
    Getsockopt {
        option: &'static str,
        #[source]
        source: Errno,
    },
}

/// Returns where the peer of the accepted TCP socket `sock` meant to connect
/// before iptables redirected it here. IPv4 connections accepted on an IPv6
/// (dual-stack) socket are handled too.
pub fn original_dst<S: AsFd>(sock: &S) -> Result<SocketAddr, OriginalDstError> {
    let local: SockaddrStorage =
        getsockname(sock.as_fd().as_raw_fd()).map_err(OriginalDstError::LocalAddr)?;
    let ipv4 = match (local.as_sockaddr_in(), local.as_sockaddr_in6()) {
        (Some(_), _) => true,
        (None, Some(v6)) => v6.ip().to_ipv4_mapped().is_some(),
        (None, None) => return Err(OriginalDstError::NotInet),
    };
    if ipv4 {
        let sin =
            getsockopt(sock, sockopt::OriginalDst).map_err(|e| error("SO_ORIGINAL_DST", e))?;
        Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
            u16::from_be(sin.sin_port),
        )))
    } else {
        let sin6 = getsockopt(sock, sockopt::Ip6tOriginalDst)
            .map_err(|e| error("IP6T_SO_ORIGINAL_DST", e))?;
        Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(sin6.sin6_addr.s6_addr),
            u16::from_be(sin6.sin6_port),
            u32::from_be(sin6.sin6_flowinfo),
            sin6.sin6_scope_id,
        )))
    }
}

fn error(option: &'static str, errno: Errno) -> OriginalDstError {
    if errno == Errno::ENOENT {
        OriginalDstError::NoConntrackRecord
    } else {
        OriginalDstError::Getsockopt {
            option,
            source: errno,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Redirected connections need root and a network namespace: see
    // `tests/tests/netns_intercept.rs` in `weft-tests`.
    #[test]
    fn a_unix_socket_has_no_original_destination() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(matches!(original_dst(&a), Err(OriginalDstError::NotInet)));
    }
}
