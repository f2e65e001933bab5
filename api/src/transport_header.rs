//! The transport header: what a client sends right after a TLS handshake whose ALPN
//! selected [`ALPN`], telling the gateway where the connection is going.
//!
//! The codec is pure (no I/O) so that the proxy, the gateway, tests and the fuzz
//! target share one parser. Sizes are bounded before anything is buffered: a peer
//! can never make the reader wait for more than [`MAX_HEADER_LEN`] bytes. The wire
//! format is specified byte by byte, with test vectors, in `docs/protocol.md`.
//!
//! ```text
//! magic "MLTH" (4) | version 0x01 (1) | body length u16 BE (2) |
//! port u16 BE (2) | protocol (1) | hops (1) | target name (body length - 4)
//! ```

use bytes::BufMut;
use std::fmt;

/// ALPN protocol id a client offers to announce that a transport header follows.
pub const ALPN: &[u8] = b"meshlink.transport.v1";
/// The four bytes every header starts with.
pub const MAGIC: [u8; 4] = *b"MLTH";
/// The only version this codec speaks.
pub const VERSION: u8 = 1;
/// Magic, version and body length.
pub const PREFIX_LEN: usize = 7;
/// Upper bound of a whole header, prefix included.
pub const MAX_HEADER_LEN: usize = 512;
/// Longest target name (the DNS limit).
pub const MAX_NAME_LEN: usize = 253;
/// Port, protocol and hop count: the body bytes before the name.
const FIXED_BODY_LEN: usize = 4;
const MAX_LABEL_LEN: usize = 63;

/// Why bytes are not a valid transport header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The first bytes are not `MLTH`: the peer is not speaking this protocol.
    #[error("transport header has bad magic")]
    BadMagic,
    /// A version this codec does not know.
    #[error("transport header has unknown version {0}")]
    UnknownVersion(u8),
    /// The declared length would make the header exceed [`MAX_HEADER_LEN`].
    #[error("transport header body of {0} bytes exceeds the {MAX_HEADER_LEN}-byte header limit")]
    Oversized(usize),
    /// The declared body cannot even hold port, protocol, hops and a 1-byte name.
    #[error("transport header body of {0} bytes is too short")]
    BodyTooShort(usize),
    /// The stream ended before the header was complete.
    #[error("transport header truncated: stream ended after {got} of {need} bytes")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes the header needed.
        need: usize,
    },
    /// Port 0 is not a destination.
    #[error("transport header has port 0")]
    ZeroPort,
    /// A protocol byte this version does not define.
    #[error("transport header has unknown session protocol {0}")]
    UnknownProtocol(u8),
    /// The target name is not UTF-8.
    #[error("transport header target name is not UTF-8")]
    NameNotUtf8,
    /// The target name is UTF-8 but not a valid DNS name.
    #[error("transport header target name is invalid: {0}")]
    InvalidName(#[from] NameError),
}

impl HeaderError {
    /// A short, bounded label for metrics (`header_errors_total{reason=..}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadMagic => "bad_magic",
            Self::UnknownVersion(_) => "unknown_version",
            Self::Oversized(_) => "oversized",
            Self::BodyTooShort(_) => "body_too_short",
            Self::Truncated { .. } => "truncated",
            Self::ZeroPort => "zero_port",
            Self::UnknownProtocol(_) => "unknown_protocol",
            Self::NameNotUtf8 => "name_not_utf8",
            Self::InvalidName(_) => "invalid_name",
        }
    }
}

/// What is wrong with a target name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty string.
    #[error("name is empty")]
    Empty,
    /// More than [`MAX_NAME_LEN`] bytes.
    #[error("name is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    /// `..`, a leading dot or a trailing dot.
    #[error("name has an empty label")]
    EmptyLabel,
    /// A label over 63 bytes.
    #[error("name has a label longer than {MAX_LABEL_LEN} bytes")]
    LabelTooLong,
    /// A label starting or ending with `-`.
    #[error("name has a label starting or ending with '-'")]
    HyphenAtEdge,
    /// Anything outside `[a-z0-9-.]` (uppercase included: one spelling per name).
    #[error("name has invalid character {0:?} (allowed: a-z 0-9 - .)")]
    BadChar(char),
}

/// A validated lowercase DNS name, the target of a transport header.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetName(String);

impl TargetName {
    /// Validates a lowercase DNS name (no trailing dot).
    pub fn parse(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(NameError::EmptyLabel);
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(NameError::LabelTooLong);
            }
            if let Some(c) = label
                .chars()
                .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
            {
                return Err(NameError::BadChar(c));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(NameError::HyphenAtEdge);
            }
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when the name is `domain` or lies under it on a label boundary
    /// (`a.svc.cluster.local` is under `svc.cluster.local`; `xsvc.cluster.local` is not).
    pub fn is_within(&self, domain: &str) -> bool {
        let domain = domain.trim_matches('.');
        match self.0.strip_suffix(domain) {
            Some("") => true,
            Some(prefix) => prefix.ends_with('.') && !domain.is_empty(),
            None => false,
        }
    }
}

impl fmt::Display for TargetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TargetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TargetName({})", self.0)
    }
}

impl std::str::FromStr for TargetName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// How the bytes after the header are to be handled by the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionProtocol {
    /// Forward bytes as they are.
    Opaque,
    /// HTTP/1.x requests.
    Http1,
    /// HTTP/2 (including gRPC).
    Http2,
}

impl SessionProtocol {
    fn to_byte(self) -> u8 {
        match self {
            Self::Opaque => 0,
            Self::Http1 => 1,
            Self::Http2 => 2,
        }
    }

    fn from_byte(b: u8) -> Result<Self, HeaderError> {
        match b {
            0 => Ok(Self::Opaque),
            1 => Ok(Self::Http1),
            2 => Ok(Self::Http2),
            other => Err(HeaderError::UnknownProtocol(other)),
        }
    }

    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opaque => "opaque",
            Self::Http1 => "http1",
            Self::Http2 => "http2",
        }
    }
}

/// A decoded transport header. Every value of this type encodes to a valid header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransportHeader {
    /// Service the receiver should forward to, e.g. `books.shop.svc.cluster.local`.
    pub name: TargetName,
    /// Port on that service (never 0).
    pub port: std::num::NonZeroU16,
    /// How to handle the session.
    pub protocol: SessionProtocol,
    /// How many gateways the connection has already crossed (loop protection).
    pub hops: u8,
}

impl TransportHeader {
    /// Bytes [`encode`](Self::encode) writes.
    pub fn encoded_len(&self) -> usize {
        PREFIX_LEN + FIXED_BODY_LEN + self.name.0.len()
    }

    /// Appends the header to `buf`. Infallible: the name is already validated and
    /// bounded, so the length always fits.
    pub fn encode<B: BufMut>(&self, buf: &mut B) {
        let body_len = FIXED_BODY_LEN + self.name.0.len();
        buf.put_slice(&MAGIC);
        buf.put_u8(VERSION);
        // A TargetName is at most 253 bytes, so the body is at most 257.
        buf.put_u16(body_len as u16);
        buf.put_u16(self.port.get());
        buf.put_u8(self.protocol.to_byte());
        buf.put_u8(self.hops);
        buf.put_slice(self.name.0.as_bytes());
    }

    /// Decodes a header from the start of `buf`.
    ///
    /// `Ok(None)`: the bytes so far are a valid beginning, read more. `Ok(Some((h,
    /// n)))`: the header is the first `n` bytes; the rest belongs to the session.
    /// Errors are reported as early as the bytes allow (bad magic after one byte).
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, HeaderError> {
        let Some(prefix) = buf.first_chunk::<PREFIX_LEN>() else {
            check_partial_prefix(buf)?;
            return Ok(None);
        };
        let total = PREFIX_LEN + decode_prefix(prefix)?;
        match buf.get(PREFIX_LEN..total) {
            Some(body) => Ok(Some((decode_body(body)?, total))),
            None => Ok(None),
        }
    }
}

/// Validates the fixed 7-byte prefix and returns the body length that follows.
/// Async readers use this to read exactly the header and nothing after it.
pub fn decode_prefix(prefix: &[u8; PREFIX_LEN]) -> Result<usize, HeaderError> {
    check_partial_prefix(prefix)?;
    let body_len = usize::from(u16::from_be_bytes([prefix[5], prefix[6]]));
    if body_len > MAX_HEADER_LEN - PREFIX_LEN {
        return Err(HeaderError::Oversized(body_len));
    }
    if body_len <= FIXED_BODY_LEN {
        return Err(HeaderError::BodyTooShort(body_len));
    }
    Ok(body_len)
}

/// Checks magic and version on however many of the first bytes are present.
fn check_partial_prefix(buf: &[u8]) -> Result<(), HeaderError> {
    let n = buf.len().min(MAGIC.len());
    if buf[..n] != MAGIC[..n] {
        return Err(HeaderError::BadMagic);
    }
    match buf.get(MAGIC.len()) {
        Some(&v) if v != VERSION => Err(HeaderError::UnknownVersion(v)),
        _ => Ok(()),
    }
}

/// Decodes a body whose length [`decode_prefix`] accepted.
pub fn decode_body(body: &[u8]) -> Result<TransportHeader, HeaderError> {
    let Some((fixed, name)) = body.split_first_chunk::<FIXED_BODY_LEN>() else {
        return Err(HeaderError::BodyTooShort(body.len()));
    };
    let port = std::num::NonZeroU16::new(u16::from_be_bytes([fixed[0], fixed[1]]))
        .ok_or(HeaderError::ZeroPort)?;
    let protocol = SessionProtocol::from_byte(fixed[2])?;
    let hops = fixed[3];
    let name = std::str::from_utf8(name).map_err(|_| HeaderError::NameNotUtf8)?;
    let name = TargetName::parse(name)?;
    Ok(TransportHeader {
        name,
        port,
        protocol,
        hops,
    })
}

#[cfg(test)]
mod tests;
