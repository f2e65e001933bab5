//! The proxy library's error type. Leaf errors on the request path are variants
//! callers can match on (a refused header, a timed-out connect), so metrics and
//! logs can name the reason without parsing strings.

use std::net::SocketAddr;

/// Everything that can go wrong in the proxy library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is missing or malformed.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A discovery file could not be read.
    #[error("reading discovery file {path}")]
    DiscoveryRead {
        /// The file that failed.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A discovery file did not parse.
    #[error("parsing discovery file {path}")]
    DiscoveryParse {
        /// The file that failed.
        path: String,
        /// The parse error, naming line and column.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// No endpoint is available for a target.
    #[error("no endpoints for {0}")]
    NoEndpoints(String),
    /// Connecting to an upstream endpoint timed out.
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    /// Connecting to an upstream endpoint failed.
    #[error("connect to {addr}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake with a peer failed or the peer was not who we expected.
    #[error("TLS handshake with {addr}")]
    Tls {
        /// The peer.
        addr: SocketAddr,
        /// The refusal, with a bounded reason.
        #[source]
        source: crate::tls::HandshakeError,
    },
    /// The client TLS configuration could not be built for an endpoint.
    #[error("client TLS for {identity}: {reason}")]
    ClientTls {
        /// The identity the peer was expected to present.
        identity: String,
        /// Why the configuration failed.
        reason: String,
    },
    /// TLS credentials could not be loaded.
    #[error("loading TLS credentials")]
    Credentials(#[from] crate::tls::TlsError),
    /// The original destination of a redirected connection could not be read.
    #[error("reading SO_ORIGINAL_DST")]
    OriginalDst(#[source] nix::Error),
    /// The discovery service could not answer for a target.
    #[error("discovery for {target} unavailable: {reason}")]
    DiscoveryUnavailable {
        /// The target being resolved.
        target: String,
        /// The stream's error.
        reason: String,
    },
    /// A socket-level I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
