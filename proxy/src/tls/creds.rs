//! Credentials: a certificate chain, its key and the trust bundles, parsed from PEM
//! and turned into rustls configs (TLS 1.3 only, aws-lc-rs provider given
//! explicitly, so no process-wide provider needs installing for library use).

use super::TlsError;
use super::verify::{Anchors, ExpectedIdentity, spiffe_id_of};
use api::identity::SpiffeId;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Root certificates trusted for one trust domain, or for any when `trust_domain`
/// is `None` (the local mesh root). A Link's federated bundle names its domain so
/// that CA can vouch only for identities in that domain. Binding is exclusive: once
/// a domain has a bound bundle, its identities are checked against that bundle only.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    /// Domain this bundle may vouch for; `None` means any.
    pub trust_domain: Option<String>,
    /// Root certificates.
    pub roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// Parses every certificate in a PEM bundle.
    pub fn from_pem(trust_domain: Option<String>, pem: &[u8]) -> Result<Self, TlsError> {
        let roots = parse_certs(pem, "trust bundle")?;
        Ok(Self {
            trust_domain,
            roots,
        })
    }
}

/// Where a component's credentials live on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFiles {
    /// Leaf first, then intermediates.
    pub cert_chain: PathBuf,
    /// PKCS#8, PKCS#1 or SEC1 private key.
    pub key: PathBuf,
    /// Trust bundles with the domain each may vouch for.
    pub bundles: Vec<BundleFile>,
}

impl CredentialFiles {
    /// Reads and parses the trust bundles alone.
    pub fn load_bundles(&self) -> Result<Vec<TrustBundle>, TlsError> {
        self.bundles
            .iter()
            .map(|b| TrustBundle::from_pem(b.trust_domain.clone(), &read(&b.path)?))
            .collect()
    }

    /// The Kubernetes TLS secret layout (also what [`crate::pki::Leaf::write`]
    /// produces): `tls.crt`, `tls.key`, and `ca.crt` trusted for any domain.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert_chain: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            bundles: vec![BundleFile {
                path: dir.join("ca.crt"),
                trust_domain: None,
            }],
        }
    }
}

/// A PEM trust bundle file and the trust domain it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFile {
    /// PEM file with one or more root certificates.
    pub path: PathBuf,
    /// `None`: may vouch for any trust domain.
    pub trust_domain: Option<String>,
}

/// Parsed, consistent credentials; the source of server and client configs.
#[derive(Debug)]
pub struct Credentials {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    bundles: Vec<TrustBundle>,
    local_id: SpiffeId,
}

impl Credentials {
    /// Builds credentials from PEM text. The leaf must carry a SPIFFE ID.
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        bundles: Vec<TrustBundle>,
    ) -> Result<Self, TlsError> {
        let chain = parse_certs(chain_pem, "certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
            what: "private key",
            detail: e.to_string(),
        })?;
        let local_id = spiffe_id_of(&chain[0]).map_err(TlsError::LocalIdentity)?;
        if bundles.iter().all(|b| b.roots.is_empty()) {
            return Err(TlsError::NoTrustBundle);
        }
        Ok(Self {
            chain,
            key,
            bundles,
            local_id,
        })
    }

    /// Reads and parses the files.
    pub fn load(files: &CredentialFiles) -> Result<Self, TlsError> {
        let bundles = files.load_bundles()?;
        Self::from_pem(&read(&files.cert_chain)?, &read(&files.key)?, bundles)
    }

    /// This component's own identity (from its leaf certificate).
    pub fn local_id(&self) -> &SpiffeId {
        &self.local_id
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// A server config that requires a client certificate chaining to the bundle
    /// of the client's trust domain, offering `alpn` in preference order.
    pub fn server_config(&self, alpn: &[Vec<u8>]) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = provider();
        let verifier = Arc::new(anchors(&self.bundles, &provider, |roots| {
            WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(TlsError::Verifier)
        })?);
        let config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(finish_server(config, alpn))
    }

    /// A server config for clients that have no certificate yet: the identity
    /// service's, whose clients prove themselves with a token instead.
    pub fn server_config_without_client_auth(
        &self,
        alpn: &[Vec<u8>],
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(finish_server(config, alpn))
    }

    /// A client config presenting our certificate and verifying the server's chain
    /// against the bundle of its trust domain. The server's SPIFFE ID is checked by
    /// [`connect`](super::connect), not here.
    pub fn client_config(&self, alpn: &[Vec<u8>]) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = provider();
        let verifier = self.server_verifier(&provider)?;
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = alpn.to_vec();
        // SNI would reveal the target; identities are SPIFFE IDs, not DNS names.
        config.enable_sni = false;
        Ok(Arc::new(config))
    }

    /// Verifies a server's chain against the bundle of its trust domain (any
    /// identity; callers pin the identity on top).
    pub(super) fn server_verifier(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
        server_verifier(&self.bundles, provider)
    }
}

/// A client config with no certificate of its own that completes a handshake
/// only with a server that is `expected` under `bundles`: how a workload reaches
/// the identity service before it has a certificate.
pub fn client_config_without_cert(
    bundles: &[TrustBundle],
    expected: &SpiffeId,
    alpn: &[Vec<u8>],
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(ExpectedIdentity {
        expected: expected.clone(),
        inner: server_verifier(bundles, &provider)?,
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn.to_vec();
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// ALPN, and no session tickets: our clients never resume (see
/// `TlsConfigs::client_for`), so tickets would only cost an encryption and a few
/// hundred buffered bytes per connection.
fn finish_server(mut config: ServerConfig, alpn: &[Vec<u8>]) -> Arc<ServerConfig> {
    config.alpn_protocols = alpn.to_vec();
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// Verifies a server's chain against the bundle of its trust domain.
fn server_verifier(
    bundles: &[TrustBundle],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let anchors = anchors(bundles, provider, |roots| {
        WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map(|v| v as Arc<dyn ServerCertVerifier>)
            .map_err(TlsError::Verifier)
    })?;
    Ok(Arc::new(anchors))
}

/// Groups roots by trust domain and builds one verifier per group.
fn anchors<V: ?Sized>(
    bundles: &[TrustBundle],
    provider: &Arc<CryptoProvider>,
    build: impl Fn(Arc<RootCertStore>) -> Result<Arc<V>, TlsError>,
) -> Result<Anchors<V>, TlsError> {
    let mut stores: HashMap<Option<&str>, RootCertStore> = HashMap::new();
    for bundle in bundles {
        let store = stores
            .entry(bundle.trust_domain.as_deref())
            .or_insert_with(RootCertStore::empty);
        for root in &bundle.roots {
            store.add(root.clone()).map_err(TlsError::BadRoot)?;
        }
    }
    let mut anchors = Anchors {
        default: None,
        by_domain: HashMap::new(),
        provider: provider.clone(),
    };
    for (domain, store) in stores.into_iter().filter(|(_, s)| !s.is_empty()) {
        let verifier = build(Arc::new(store))?;
        match domain {
            None => anchors.default = Some(verifier),
            Some(d) => {
                anchors.by_domain.insert(d.to_owned(), verifier);
            }
        }
    }
    Ok(anchors)
}

/// The crypto provider every meshlink TLS config is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The name a client passes to rustls: verification ignores it (the SPIFFE ID is
/// what is checked) and SNI is off, but rustls requires one.
pub(super) fn server_name_for(expected: &SpiffeId) -> ServerName<'static> {
    ServerName::try_from(expected.trust_domain().to_owned())
        .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

fn parse_certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            detail: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}
