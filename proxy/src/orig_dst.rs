//! Transparent interception: the address a redirected connection was originally
//! sent to. iptables REDIRECT (see [`crate::init`]) rewrites the destination to the
//! proxy's port; the kernel keeps the original, readable with `SO_ORIGINAL_DST`.
//! nix wraps the socket option, so no unsafe code is needed.

use std::net::SocketAddr;

use nix::sys::socket::{SockaddrIn, SockaddrIn6, getsockopt, sockopt};
use tokio::net::TcpStream;

use crate::Error;

/// The original destination of a connection accepted after an iptables REDIRECT.
/// On a connection that was not redirected this is simply its local address.
pub fn original_dst(stream: &TcpStream) -> Result<SocketAddr, Error> {
    if stream.local_addr()?.is_ipv4() {
        let raw = getsockopt(stream, sockopt::OriginalDst).map_err(Error::OriginalDst)?;
        Ok(SocketAddr::from(SockaddrIn::from(raw)))
    } else {
        let raw = getsockopt(stream, sockopt::Ip6tOriginalDst).map_err(Error::OriginalDst)?;
        Ok(SocketAddr::V6(SockaddrIn6::from(raw).into()))
    }
}
