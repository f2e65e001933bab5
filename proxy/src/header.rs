//! Adapter between the request path and the transport-header codec: turns the
//! proxy's [`Protocol`] and target into header bytes on the way out, and reads and
//! classifies a header on the way into the gateway.
//!
//! INTERIM: until the identity branch's `api::transport_header` codec is merged,
//! this file carries a minimal stand-in encoding (magic, length, protocol, hop,
//! authority) so the gateway path can be exercised end to end. The merge replaces
//! the bodies of [`encode`] and [`read`] with calls into that codec.

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::Error;
use crate::detect::Protocol;

/// The ALPN protocol that announces a transport header.
pub const ALPN: &[u8] = b"transport.meshlink.io/v1";

const MAGIC: &[u8; 4] = b"MLH1";
const MAX_LEN: usize = 1024;

/// What a transport header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportTarget {
    /// The target `name:port` as the receiving cluster knows it.
    pub authority: String,
    /// The session protocol that follows the header.
    pub protocol: Protocol,
    /// How many gateways the connection has been sent through.
    pub hop: u8,
}

/// Why a header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The peer closed before a whole header arrived.
    #[error("truncated transport header")]
    Truncated,
    /// The declared length exceeds the bound.
    #[error("transport header of {0} bytes exceeds the limit")]
    Oversized(usize),
    /// The bytes are not a header.
    #[error("malformed transport header: {0}")]
    Malformed(&'static str),
    /// Reading failed.
    #[error("reading transport header")]
    Io(#[source] std::io::Error),
}

impl HeaderError {
    /// A fixed metric label for the reason.
    pub fn reason(&self) -> &'static str {
        match self {
            HeaderError::Truncated => "truncated",
            HeaderError::Oversized(_) => "oversized",
            HeaderError::Malformed(_) => "malformed",
            HeaderError::Io(_) => "io",
        }
    }
}

/// Encodes a header.
pub fn encode(t: &TransportTarget) -> Result<Vec<u8>, Error> {
    let len = t.authority.len() + 2;
    if len > MAX_LEN {
        return Err(Error::Config(format!(
            "target {} too long for a header",
            t.authority
        )));
    }
    let mut out = Vec::with_capacity(len + 6);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.push(match t.protocol {
        Protocol::Opaque => 0,
        Protocol::Http1 => 1,
        Protocol::Http2 => 2,
    });
    out.push(t.hop);
    out.extend_from_slice(t.authority.as_bytes());
    Ok(out)
}

/// Reads exactly one header from `io`, leaving the session bytes unread.
pub async fn read<I: AsyncRead + Unpin>(io: &mut I) -> Result<TransportTarget, HeaderError> {
    let mut fixed = [0u8; 6];
    read_exact(io, &mut fixed).await?;
    if &fixed[..4] != MAGIC {
        return Err(HeaderError::Malformed("bad magic"));
    }
    let len = usize::from(u16::from_be_bytes([fixed[4], fixed[5]]));
    if len > MAX_LEN {
        return Err(HeaderError::Oversized(len));
    }
    if len < 2 {
        return Err(HeaderError::Malformed("too short"));
    }
    let mut body = vec![0u8; len];
    read_exact(io, &mut body).await?;
    let protocol = match body[0] {
        0 => Protocol::Opaque,
        1 => Protocol::Http1,
        2 => Protocol::Http2,
        _ => return Err(HeaderError::Malformed("unknown protocol")),
    };
    let authority = String::from_utf8(body[2..].to_vec())
        .map_err(|_| HeaderError::Malformed("target is not UTF-8"))?;
    Ok(TransportTarget {
        authority,
        protocol,
        hop: body[1],
    })
}

async fn read_exact<I: AsyncRead + Unpin>(io: &mut I, buf: &mut [u8]) -> Result<(), HeaderError> {
    match io.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(HeaderError::Truncated),
        Err(e) => Err(HeaderError::Io(e)),
    }
}
