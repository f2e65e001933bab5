//! Adapter between the request path and the transport-header codec
//! (`api::transport_header`): turns the proxy's [`Protocol`] and a target
//! authority into header bytes on the way out, and reads exactly one header (never
//! a byte of the session after it) on the way into the gateway.

use std::num::NonZeroU16;

use api::transport_header::{
    self as codec, PREFIX_LEN, SessionProtocol, TargetName, TransportHeader,
};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::Error;
use crate::detect::Protocol;

pub use codec::ALPN;

/// What a transport header says, in the proxy's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportTarget {
    /// The target service name, as the receiving cluster knows it.
    pub name: TargetName,
    /// The target port.
    pub port: NonZeroU16,
    /// The session protocol that follows the header.
    pub protocol: Protocol,
    /// How many gateways the connection has already crossed.
    pub hop: u8,
}

impl TransportTarget {
    /// Parses a `name:port` authority into a target.
    pub fn new(authority: &str, protocol: Protocol, hop: u8) -> Result<Self, Error> {
        let bad =
            |why: String| Error::Config(format!("transport-header target {authority:?}: {why}"));
        let (name, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| bad("no port".into()))?;
        let port = port
            .parse::<NonZeroU16>()
            .map_err(|e| bad(format!("port: {e}")))?;
        let name = TargetName::parse(name).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            name,
            port,
            protocol,
            hop,
        })
    }

    /// `name:port`, the key discovery resolves.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.name, self.port)
    }

    /// Encodes the header.
    pub fn encode(&self) -> Vec<u8> {
        let header = TransportHeader {
            name: self.name.clone(),
            port: self.port,
            protocol: match self.protocol {
                Protocol::Opaque => SessionProtocol::Opaque,
                Protocol::Http1 => SessionProtocol::Http1,
                Protocol::Http2 => SessionProtocol::Http2,
            },
            hops: self.hop,
        };
        let mut out = Vec::with_capacity(header.encoded_len());
        header.encode(&mut out);
        out
    }
}

/// Why reading a header failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes are not a valid header.
    #[error(transparent)]
    Header(#[from] codec::HeaderError),
    /// The socket failed.
    #[error("reading transport header")]
    Io(#[source] std::io::Error),
}

impl ReadError {
    /// A fixed metric label for the reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ReadError::Header(e) => e.reason(),
            ReadError::Io(_) => "io",
        }
    }
}

/// Reads exactly one header from `io`, leaving the session bytes unread.
pub async fn read<I: AsyncRead + Unpin>(io: &mut I) -> Result<TransportTarget, ReadError> {
    let mut prefix = [0u8; PREFIX_LEN];
    read_exact(io, &mut prefix, 0, PREFIX_LEN).await?;
    let body_len = codec::decode_prefix(&prefix)?;
    let mut body = vec![0u8; body_len];
    read_exact(io, &mut body, PREFIX_LEN, PREFIX_LEN + body_len).await?;
    let h = codec::decode_body(&body)?;
    Ok(TransportTarget {
        name: h.name,
        port: h.port,
        protocol: match h.protocol {
            SessionProtocol::Opaque => Protocol::Opaque,
            SessionProtocol::Http1 => Protocol::Http1,
            SessionProtocol::Http2 => Protocol::Http2,
        },
        hop: h.hops,
    })
}

/// Fills `buf`; on early EOF reports how much of the `need`-byte header came.
async fn read_exact<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut [u8],
    already: usize,
    need: usize,
) -> Result<(), ReadError> {
    let mut filled = 0;
    while filled < buf.len() {
        match io.read(&mut buf[filled..]).await {
            Ok(0) => {
                let got = already + filled;
                return Err(codec::HeaderError::Truncated { got, need }.into());
            }
            Ok(n) => filled += n,
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_and_leaves_session_bytes() {
        let t =
            TransportTarget::new("books.shop.svc.cluster.local:8080", Protocol::Http2, 1).unwrap();
        let mut bytes = t.encode();
        bytes.extend_from_slice(b"session");
        let mut io = &bytes[..];
        assert_eq!(read(&mut io).await.unwrap(), t);
        assert_eq!(io, b"session");
        assert_eq!(t.authority(), "books.shop.svc.cluster.local:8080");
    }

    #[tokio::test]
    async fn split_and_short_reads() {
        let t = TransportTarget::new("a.svc.cluster.local:80", Protocol::Opaque, 0).unwrap();
        let bytes = t.encode();
        for cut in 0..bytes.len() {
            let mut io = &bytes[..cut];
            let err = read(&mut io).await.unwrap_err();
            assert_eq!(err.reason(), "truncated", "cut at {cut}");
        }
        let mut io = &b"GET / HTTP/1.1\r\n"[..];
        assert_eq!(read(&mut io).await.unwrap_err().reason(), "bad_magic");
    }

    #[test]
    fn bad_authorities_are_errors() {
        for a in ["noport", "a.b:0", "UPPER.case:80", "a.b:99999"] {
            assert!(TransportTarget::new(a, Protocol::Http1, 1).is_err(), "{a}");
        }
    }
}
