//! Mutual TLS with SPIFFE identities: credentials loaded from PEM files, TLS 1.3
//! only on the aws-lc-rs provider, peers verified against the trust bundle of their
//! own trust domain and then checked against what the caller expected (outbound) or
//! what policy allows (inbound). Credentials rotate through a `watch` channel: new
//! connections take the newest config, established ones keep theirs.
//!
//! Library code never installs a process-wide crypto provider: every config is
//! built with [`provider()`]. Binaries install it once in `main` for any other
//! rustls users (kube's client).

mod creds;
mod handshake;
mod header;
mod rotate;
mod verify;

#[cfg(test)]
mod tests;

pub use creds::{
    BundleFile, CredentialFiles, Credentials, TrustBundle, client_config_without_cert, provider,
};
pub use handshake::{HandshakeError, accept, connect, peer_id};
pub use header::{ReadHeaderError, read_header, write_header};
pub use rotate::{CredentialWatch, TlsConfigs, watch_credentials};
pub use verify::{IdPattern, Policy, RejectReason, spiffe_id_of};

use std::path::PathBuf;

/// Makes aws-lc-rs the process-wide default rustls provider, for dependencies that
/// build their own configs from the default (kube's client). Call at the top of each
/// binary's `main`; meshlink's own configs do not need it. Repeated calls are no-ops.
pub fn install_default_provider() {
    // Err only means a provider is already installed, which is the goal.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Why credentials could not be loaded or turned into a config.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// PEM text that holds no usable certificate or key.
    #[error("parsing {what}: {detail}")]
    Pem {
        /// Which input: certificate chain, private key, trust bundle.
        what: &'static str,
        /// What the parser said.
        detail: String,
    },
    /// Our own leaf certificate has no usable SPIFFE ID.
    #[error("local certificate: {0}")]
    LocalIdentity(RejectReason),
    /// No bundle holds any root.
    #[error("no trust bundle configured")]
    NoTrustBundle,
    /// A root certificate rustls cannot use as a trust anchor.
    #[error("unusable root certificate: {0}")]
    BadRoot(#[source] rustls::Error),
    /// The verifier could not be built from the roots.
    #[error("building certificate verifier: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// rustls refused the config (for example, key does not match certificate).
    #[error("building TLS config: {0}")]
    Config(#[from] rustls::Error),
}
