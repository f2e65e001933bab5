//! Adapter between the request path and the transport header
//! (`api::transport_header`, read and written by [`crate::tls`]): builds the header
//! for a gateway endpoint from the proxy's [`Protocol`] and a `name:port`
//! authority, and turns a received header back into those terms.

use std::num::NonZeroU16;

use api::transport_header::{SessionProtocol, TargetName, TransportHeader};

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

    #[test]
    fn bad_authorities_are_errors() {
        for a in ["noport", "a.b:0", "UPPER.case:80", "a.b:99999"] {
            assert!(header_for(a, Protocol::Http1, 1).is_err(), "{a}");
        }
    }
}
