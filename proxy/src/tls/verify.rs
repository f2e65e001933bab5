//! Peer verification: chains must end at the trust bundle of the peer's own trust
//! domain (so a federated domain's CA cannot mint identities of ours), identities
//! come from the single SPIFFE URI SAN, and every refusal maps to a bounded
//! [`RejectReason`] for logs and metrics.

use api::identity::{SpiffeId, SpiffeIdError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::collections::HashMap;
use std::sync::Arc;

/// Why a TLS peer was refused. Bounded: safe as a metric label via [`as_str`](Self::as_str).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum RejectReason {
    /// The client presented no certificate.
    #[error("peer presented no certificate")]
    NoClientCert,
    /// The chain does not end at a trusted root for the peer's trust domain.
    #[error("certificate chain is not trusted")]
    UntrustedIssuer,
    /// A certificate in the chain has expired.
    #[error("certificate has expired")]
    Expired,
    /// A certificate in the chain is not valid yet.
    #[error("certificate is not valid yet")]
    NotYetValid,
    /// Malformed or otherwise unusable certificate (bad signature, wrong purpose).
    #[error("certificate is invalid")]
    BadCertificate,
    /// The leaf has no (or more than one, or an invalid) SPIFFE URI SAN.
    #[error("certificate carries no single valid SPIFFE ID")]
    NoSpiffeId,
    /// Outbound: the server is not the identity the caller expected.
    #[error("peer identity is not the expected one")]
    IdentityMismatch,
    /// Inbound: policy does not allow the client's identity.
    #[error("peer identity is forbidden by policy")]
    Forbidden,
    /// The peer offered no TLS 1.3 (or no common cipher suite or ALPN).
    #[error("peer does not support TLS 1.3 with our parameters")]
    ProtocolVersion,
    /// The peer sent a fatal alert (it refused us).
    #[error("peer sent a fatal TLS alert")]
    AlertReceived,
    /// Any other TLS protocol failure.
    #[error("TLS handshake failed")]
    Handshake,
    /// The handshake did not finish in time.
    #[error("TLS handshake timed out")]
    Timeout,
    /// The socket failed or closed mid-handshake.
    #[error("I/O error during TLS handshake")]
    Io,
}

impl RejectReason {
    /// Snake-case label for metrics (`tls_handshake_failures_total{reason=..}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoClientCert => "no_client_cert",
            Self::UntrustedIssuer => "untrusted_issuer",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadCertificate => "bad_certificate",
            Self::NoSpiffeId => "no_spiffe_id",
            Self::IdentityMismatch => "identity_mismatch",
            Self::Forbidden => "forbidden",
            Self::ProtocolVersion => "protocol_version",
            Self::AlertReceived => "alert_received",
            Self::Handshake => "handshake",
            Self::Timeout => "timeout",
            Self::Io => "io",
        }
    }

    /// Classifies a rustls error.
    pub fn from_rustls(err: &rustls::Error) -> Self {
        use rustls::Error as E;
        match err {
            E::NoCertificatesPresented => Self::NoClientCert,
            E::InvalidCertificate(cert) => Self::from_certificate_error(cert),
            E::PeerIncompatible(_) | E::NoApplicationProtocol => Self::ProtocolVersion,
            E::AlertReceived(_) => Self::AlertReceived,
            _ => Self::Handshake,
        }
    }

    fn from_certificate_error(err: &CertificateError) -> Self {
        use CertificateError as C;
        match err {
            // A bad signature in the chain means a look-alike issuer (same name,
            // other key) signed it: as untrusted as an unknown one.
            C::UnknownIssuer | C::BadSignature => Self::UntrustedIssuer,
            C::Expired | C::ExpiredContext { .. } => Self::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => Self::NotYetValid,
            C::Other(other) => other
                .0
                .downcast_ref::<Self>()
                .copied()
                .unwrap_or(Self::BadCertificate),
            _ => Self::BadCertificate,
        }
    }

    /// Classifies an I/O error from tokio-rustls, which wraps rustls errors.
    pub fn from_io(err: &std::io::Error) -> Self {
        match err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(tls) => Self::from_rustls(tls),
            None => Self::Io,
        }
    }

    pub(super) fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
            self,
        ))))
    }
}

/// The SPIFFE ID in a certificate's URI SAN. Exactly one `spiffe://` URI is allowed.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, RejectReason> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) =
        X509Certificate::from_der(cert.as_ref()).map_err(|_| RejectReason::BadCertificate)?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|_| RejectReason::BadCertificate)?
        .ok_or(RejectReason::NoSpiffeId)?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => SpiffeId::parse(uri).map_err(|_| RejectReason::NoSpiffeId),
        _ => Err(RejectReason::NoSpiffeId),
    }
}

/// Which inbound identities are accepted (after the chain verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Any identity whose chain verified against a configured bundle.
    AnyTrusted,
    /// Only identities matching one of the patterns.
    Allow(Vec<IdPattern>),
}

impl Policy {
    /// True when `id` is allowed.
    pub fn allows(&self, id: &SpiffeId) -> bool {
        match self {
            Self::AnyTrusted => true,
            Self::Allow(patterns) => patterns.iter().any(|p| p.matches(id)),
        }
    }
}

/// An exact SPIFFE ID, or a prefix ending in `/*` (`spiffe://east.local/ns/shop/*`
/// matches every identity under that path, on a segment boundary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPattern {
    text: String,
    is_prefix: bool,
}

impl IdPattern {
    /// Parses a pattern; the part before `*` must be a valid SPIFFE ID prefix.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        match s.strip_suffix('*') {
            Some(prefix) => {
                if !prefix.ends_with('/') {
                    return Err(SpiffeIdError::BadPathChar('*'));
                }
                // Validate the prefix by completing it into an ID.
                SpiffeId::parse(&format!("{prefix}x"))?;
                Ok(Self {
                    text: prefix.to_owned(),
                    is_prefix: true,
                })
            }
            None => Ok(Self {
                text: SpiffeId::parse(s)?.to_string(),
                is_prefix: false,
            }),
        }
    }

    /// True when `id` matches.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        if self.is_prefix {
            id.as_str().starts_with(&self.text)
        } else {
            id.as_str() == self.text
        }
    }
}

impl std::str::FromStr for IdPattern {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Per-trust-domain chain verifiers, shared by the client and server wrappers.
#[derive(Debug)]
pub(super) struct Anchors<V: ?Sized> {
    /// Bundles not bound to a domain: verify any identity.
    pub(super) default: Option<Arc<V>>,
    /// Bundles bound to one trust domain: verify only that domain's identities.
    pub(super) by_domain: HashMap<String, Arc<V>>,
    pub(super) provider: Arc<CryptoProvider>,
}

impl<V: ?Sized> Anchors<V> {
    fn select(&self, end_entity: &CertificateDer<'_>) -> Result<&V, rustls::Error> {
        let id = spiffe_id_of(end_entity).map_err(RejectReason::into_rustls)?;
        self.by_domain
            .get(id.trust_domain())
            .or(self.default.as_ref())
            .map(|v| &**v)
            .ok_or(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))
    }
}

/// The signature checks are the same for both verifier traits: the provider's
/// algorithms, independent of which trust domain vouched for the chain.
macro_rules! signature_methods {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algs = &self.provider.signature_verification_algorithms;
            verify_tls12_signature(message, cert, dss, algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algs = &self.provider.signature_verification_algorithms;
            verify_tls13_signature(message, cert, dss, algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

impl ClientCertVerifier for Anchors<dyn ClientCertVerifier> {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // SPIFFE clients pick their one certificate; hints would only leak names.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.select(end_entity)?
            .verify_client_cert(end_entity, intermediates, now)
    }

    signature_methods!();
}

impl ServerCertVerifier for Anchors<dyn ServerCertVerifier> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verifier = self.select(end_entity)?;
        match verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // The chain verified (webpki checks names last); identity is the SPIFFE
            // ID, checked after the handshake, not a DNS name.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    signature_methods!();
}

/// A server verifier that admits only one SPIFFE ID, checked inside the handshake
/// so a wrong peer fails before any application byte is written.
#[derive(Debug)]
pub(super) struct ExpectedIdentity {
    pub(super) expected: SpiffeId,
    pub(super) inner: Arc<dyn ServerCertVerifier>,
    pub(super) provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ExpectedIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = spiffe_id_of(end_entity).map_err(RejectReason::into_rustls)?;
        if id != self.expected {
            return Err(RejectReason::IdentityMismatch.into_rustls());
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    signature_methods!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn policy_patterns_match_on_segment_boundaries() {
        let policy = Policy::Allow(vec![
            IdPattern::parse("spiffe://east.local/ns/shop/*").unwrap(),
            IdPattern::parse("spiffe://west.local/ns/a/sa/b").unwrap(),
        ]);
        assert!(policy.allows(&id("spiffe://east.local/ns/shop/sa/web")));
        assert!(policy.allows(&id("spiffe://west.local/ns/a/sa/b")));
        assert!(!policy.allows(&id("spiffe://east.local/ns/shopping/sa/web")));
        assert!(!policy.allows(&id("spiffe://west.local/ns/a/sa/bb")));
        assert!(Policy::AnyTrusted.allows(&id("spiffe://x/y")));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(IdPattern::parse("spiffe://td/ns*").is_err());
        assert!(IdPattern::parse("http://td/*").is_err());
        assert!(IdPattern::parse("spiffe://TD/*").is_err());
        assert!(IdPattern::parse("spiffe://td/*").is_ok());
    }

    #[test]
    fn certificate_without_spiffe_uri_has_no_id() {
        let plain = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        assert_eq!(
            spiffe_id_of(plain.cert.der()),
            Err(RejectReason::NoSpiffeId)
        );
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert_eq!(spiffe_id_of(&garbage), Err(RejectReason::BadCertificate));
    }

    #[test]
    fn reasons_survive_the_trip_through_rustls_errors() {
        for reason in [RejectReason::NoSpiffeId, RejectReason::Forbidden] {
            assert_eq!(RejectReason::from_rustls(&reason.into_rustls()), reason);
        }
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::NoCertificatesPresented,
        );
        assert_eq!(RejectReason::from_io(&io), RejectReason::NoClientCert);
    }
}
