//! Credential rotation: poll the credential files, rebuild configs when their
//! content changes, publish through `watch`. Polling content (not mtime) is simple,
//! catches Kubernetes' symlink-swap secret updates, and costs a few small reads per
//! interval. A bad new file is logged and counted; the previous config stays.

use super::TlsError;
use super::creds::{CredentialFiles, Credentials, provider};
use super::verify::ExpectedIdentity;
use api::identity::SpiffeId;
use rustls::client::Resumption;
use rustls::client::danger::ServerCertVerifier;
use rustls::{ClientConfig, ServerConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// One generation of TLS configs, built from the same credentials.
#[derive(Debug)]
pub struct TlsConfigs {
    /// For accepting (mTLS required).
    pub server: Arc<ServerConfig>,
    /// For connecting (presents our certificate).
    pub client: Arc<ClientConfig>,
    /// Our identity.
    pub local_id: SpiffeId,
    /// Serial number of our leaf, to tell generations apart in logs and tests.
    pub serial: Vec<u8>,
    /// Chain verification for servers, reused by [`client_for`](Self::client_for).
    server_verifier: Arc<dyn ServerCertVerifier>,
}

impl TlsConfigs {
    /// Builds both configs from credentials.
    pub fn build(creds: &Credentials, alpn: &[Vec<u8>]) -> Result<Self, TlsError> {
        Ok(Self {
            server: creds.server_config(alpn)?,
            client: creds.client_config(alpn)?,
            local_id: creds.local_id().clone(),
            serial: leaf_serial(creds),
            server_verifier: creds.server_verifier(&provider())?,
        })
    }

    /// A client config that completes a handshake only with `expected`, offering
    /// `alpn` if given. Cheap (clones `Arc`s). Session resumption is off: a resumed
    /// session skips certificate verification, and an address reused by another
    /// workload must not inherit the previous one's identity.
    pub fn client_for(&self, expected: &SpiffeId, alpn: Option<&[u8]>) -> Arc<ClientConfig> {
        let mut config = (*self.client).clone();
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(ExpectedIdentity {
                expected: expected.clone(),
                inner: self.server_verifier.clone(),
                provider: provider(),
            }));
        config.alpn_protocols = alpn.map(|a| vec![a.to_vec()]).unwrap_or_default();
        config.resumption = Resumption::disabled();
        Arc::new(config)
    }
}

/// Receivers of a running watcher; the watcher stops when `configs` and all its
/// clones are dropped (the `server` receivers alone do not keep it alive).
#[derive(Debug, Clone)]
pub struct CredentialWatch {
    /// Newest good configs. Take `borrow().server.clone()` per new connection.
    pub configs: watch::Receiver<Arc<TlsConfigs>>,
    /// The server half alone, the shape `Inbound` and `Gateway` take.
    pub server: watch::Receiver<Arc<ServerConfig>>,
    /// Count of reloads that failed (the old configs were kept).
    pub reload_failures: watch::Receiver<u64>,
    /// Checks the files at once when notified, for a writer that knows it has
    /// just replaced them.
    pub check_now: Arc<Notify>,
}

impl CredentialWatch {
    /// The newest configs (cheap: clones an `Arc`).
    pub fn current(&self) -> Arc<TlsConfigs> {
        self.configs.borrow().clone()
    }
}

/// Loads the files now (failing if they are bad) and spawns a task that reloads
/// them when their content changes, checked every `interval` and on
/// [`CredentialWatch::check_now`]. Must run inside a tokio runtime.
pub fn watch_credentials(
    files: CredentialFiles,
    alpn: Vec<Vec<u8>>,
    interval: Duration,
) -> Result<CredentialWatch, TlsError> {
    let initial = TlsConfigs::build(&Credentials::load(&files)?, &alpn)?;
    let mut seen = snapshot(&files);
    let (server_tx, server) = watch::channel(initial.server.clone());
    let (tx, configs) = watch::channel(Arc::new(initial));
    let (failures_tx, reload_failures) = watch::channel(0u64);
    let check_now = Arc::new(Notify::new());
    let notified = check_now.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(interval) => {}
                () = notified.notified() => {}
            }
            let now = snapshot(&files);
            if now == seen {
                continue;
            }
            seen = now;
            match Credentials::load(&files).and_then(|c| TlsConfigs::build(&c, &alpn)) {
                Ok(new) => {
                    tracing::info!(id = %new.local_id, serial = %hex(&new.serial), "TLS credentials reloaded");
                    server_tx.send_replace(new.server.clone());
                    tx.send_replace(Arc::new(new));
                }
                Err(error) => {
                    tracing::warn!(%error, "new TLS credentials rejected, keeping the previous ones");
                    failures_tx.send_modify(|n| *n += 1);
                }
            }
        }
    });
    Ok(CredentialWatch {
        configs,
        server,
        reload_failures,
        check_now,
    })
}

/// File contents (or read errors) used to detect changes.
fn snapshot(files: &CredentialFiles) -> Vec<Option<Vec<u8>>> {
    let paths = [&files.cert_chain, &files.key]
        .into_iter()
        .chain(files.bundles.iter().map(|b| &b.path));
    paths.map(|p| std::fs::read(p).ok()).collect()
}

/// Our leaf's serial. Also warns when the leaf is outside its validity window:
/// peers will refuse it, and the log should say why before they do.
fn leaf_serial(creds: &Credentials) -> Vec<u8> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(creds.leaf().as_ref()) else {
        return Vec::new();
    };
    if !cert.validity().is_valid() {
        let validity = cert.validity();
        tracing::warn!(
            id = %creds.local_id(),
            not_before = %validity.not_before,
            not_after = %validity.not_after,
            "local TLS certificate is outside its validity window"
        );
    }
    cert.raw_serial().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
