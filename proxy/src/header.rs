//! The transport header on the request path (codec: `api::transport_header`):
//! builds the header for a gateway endpoint from the proxy's [`Protocol`] and a
//! `name:port` authority, writes it, and on the gateway reads exactly one header
//! (never a byte of the session behind it), rejecting garbage as soon as the bytes
//! allow and giving up at a deadline.

use std::num::NonZeroU16;

use api::transport_header::{
    HeaderError, MAX_HEADER_LEN, PREFIX_LEN, SessionProtocol, TargetName, TransportHeader,
    decode_prefix,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::Error;
use crate::detect::Protocol;

pub use api::transport_header::ALPN;

/// The header announcing a session of `protocol` to `authority` (`name:port`)
/// that has crossed `hop` gateways.
pub fn header_for(authority: &str, protocol: Protocol, hop: u8) -> Result<TransportHeader, Error> {
    let bad = |why: String| Error::Config(format!("transport-header target {authority:?}: {why}"));
    let (name, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| bad("no port".into()))?;
    let port = port
        .parse::<NonZeroU16>()
        .map_err(|e| bad(format!("port: {e}")))?;
    let name = TargetName::parse(name).map_err(|e| bad(e.to_string()))?;
    Ok(TransportHeader {
        name,
        port,
        protocol: match protocol {
            Protocol::Opaque => SessionProtocol::Opaque,
            Protocol::Http1 => SessionProtocol::Http1,
            Protocol::Http2 => SessionProtocol::Http2,
        },
        hops: hop,
    })
}

/// The session protocol a header announces.
pub fn protocol_of(header: &TransportHeader) -> Protocol {
    match header.protocol {
        SessionProtocol::Opaque => Protocol::Opaque,
        SessionProtocol::Http1 => Protocol::Http1,
        SessionProtocol::Http2 => Protocol::Http2,
    }
}

/// `name:port`, the key discovery resolves.
pub fn authority_of(header: &TransportHeader) -> String {
    format!("{}:{}", header.name, header.port)
}

/// Why no header was read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes are not a valid header (or the stream ended early: `Truncated`).
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The deadline passed first.
    #[error("no complete transport header before the deadline")]
    Timeout,
    /// The socket failed.
    #[error("reading transport header: {0}")]
    Io(#[from] std::io::Error),
}

impl ReadError {
    /// A bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Header(e) => e.reason(),
            Self::Timeout => "timeout",
            Self::Io(_) => "io",
        }
    }
}

/// Reads one header from `io` by `deadline`, consuming exactly its bytes.
pub async fn read<I: AsyncRead + Unpin>(
    io: &mut I,
    deadline: Instant,
) -> Result<TransportHeader, ReadError> {
    tokio::time::timeout_at(deadline, read_exact_header(io))
        .await
        .map_err(|_| ReadError::Timeout)?
}

async fn read_exact_header<I: AsyncRead + Unpin>(io: &mut I) -> Result<TransportHeader, ReadError> {
    let mut buf = [0u8; MAX_HEADER_LEN];
    let (mut filled, mut need) = (0, PREFIX_LEN);
    loop {
        let n = io.read(&mut buf[filled..need]).await?;
        if n == 0 {
            return Err(HeaderError::Truncated { got: filled, need }.into());
        }
        filled += n;
        if filled == PREFIX_LEN && need == PREFIX_LEN {
            let mut prefix = [0u8; PREFIX_LEN];
            prefix.copy_from_slice(&buf[..PREFIX_LEN]);
            need = PREFIX_LEN + decode_prefix(&prefix)?;
        }
        // Reports bad magic or version as soon as the offending byte arrives.
        if let Some((header, _)) = TransportHeader::decode(&buf[..filled])? {
            return Ok(header);
        }
    }
}

/// Writes one header in a single write.
pub async fn write<I: AsyncWrite + Unpin>(
    io: &mut I,
    header: &TransportHeader,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(header.encoded_len());
    header.encode(&mut buf);
    io.write_all(&buf).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_codec() {
        let h = header_for("books.shop.svc.cluster.local:8080", Protocol::Http2, 1).unwrap();
        let mut bytes = Vec::new();
        h.encode(&mut bytes);
        let (decoded, n) = TransportHeader::decode(&bytes).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(authority_of(&decoded), "books.shop.svc.cluster.local:8080");
        assert_eq!(protocol_of(&decoded), Protocol::Http2);
        assert_eq!(decoded.hops, 1);
    }

    #[tokio::test]
    async fn reads_exactly_one_header() {
        let h = header_for("a.svc.cluster.local:80", Protocol::Opaque, 0).unwrap();
        let (mut tx, mut rx) = tokio::io::duplex(1024);
        write(&mut tx, &h).await.unwrap();
        tx.write_all(b"session").await.unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        assert_eq!(read(&mut rx, deadline).await.unwrap(), h);
        let mut rest = [0u8; 7];
        rx.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"session");
    }

    #[tokio::test]
    async fn truncated_garbage_and_silence_are_named() {
        let h = header_for("a.svc.cluster.local:80", Protocol::Opaque, 0).unwrap();
        let mut bytes = Vec::new();
        h.encode(&mut bytes);
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        for cut in 0..bytes.len() {
            let err = read(&mut &bytes[..cut], deadline).await.unwrap_err();
            assert_eq!(err.reason(), "truncated", "cut at {cut}");
        }
        let err = read(&mut &b"GET / HTTP/1.1\r\n"[..], deadline)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "bad_magic");
        let (_tx, mut silent) = tokio::io::duplex(64);
        let soon = Instant::now() + std::time::Duration::from_millis(20);
        assert_eq!(
            read(&mut silent, soon).await.unwrap_err().reason(),
            "timeout"
        );
    }

    #[test]
    fn bad_authorities_are_errors() {
        for a in ["noport", "a.b:0", "UPPER.case:80", "a.b:99999"] {
            assert!(header_for(a, Protocol::Http1, 1).is_err(), "{a}");
        }
    }
}
