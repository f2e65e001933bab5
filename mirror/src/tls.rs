//! The prober's rustls client config: TLS 1.3 only, aws-lc-rs, trust roots from
//! PEM (the mesh's own plus the Link's remote bundle), and the controller's
//! client certificate for mTLS. Stands in until `proxy::tls` (SPIFFE-aware
//! verification) is available to this crate.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

/// The certificate chain and key the controller presents to gateways.
#[derive(Debug)]
pub struct ClientIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl ClientIdentity {
    /// Parses a PEM chain and PEM key.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<Self, Error> {
        let chain = parse_certs(chain, "client certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| Error::Tls(format!("client key: {e}")))?;
        Ok(Self { chain, key })
    }
}

/// Parses every certificate in a PEM bundle; an empty bundle is an error.
pub fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Tls(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("{what}: no PEM certificates found")));
    }
    Ok(certs)
}

/// A TLS 1.3 client config trusting `roots`, presenting `identity` if given.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    identity: Option<&ClientIdentity>,
) -> Result<Arc<ClientConfig>, Error> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| Error::Tls(format!("trust root: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(store);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| Error::Tls(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_pem_is_a_named_error() {
        let err = parse_certs(b"not a certificate", "trust bundle").unwrap_err();
        assert!(err.to_string().contains("trust bundle"), "{err}");
        let err = ClientIdentity::from_pem(b"", b"").unwrap_err();
        assert!(err.to_string().contains("client certificate"), "{err}");
    }
}
