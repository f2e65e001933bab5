//! The workload's certificate from the control plane's identity service. The
//! proxy generates a key, sends a certificate signing request over it with its
//! service-account token, and writes the signed chain and the key to its
//! credential files (`--tls-cert`, `--tls-key`) and has the credential watcher
//! load them, as it loads any rotation. It asks again once 70% of the time left
//! on the leaf has passed, and retries a failed attempt with backoff, so a
//! control plane that is down for a while costs nothing while the leaf is valid.

use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use api::certify::CertifyRequest;
use api::certify::identity_client::IdentityClient;
use api::identity::SpiffeId;
use futures::future::BoxFuture;
use http::Uri;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::pki::{certificates_pem, write_atomic, write_private_atomic};
use crate::tls::{TrustBundle, client_config_without_cert, connect};

/// The share of a leaf's remaining lifetime after which it is renewed.
const RENEW_AT: f64 = 0.7;
/// The first and the longest wait between failed attempts.
const RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

/// How long the TLS handshake with the identity service may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to ask, as whom, and where to write the result.
#[derive(Debug, Clone)]
pub struct CertifyConfig {
    /// The identity service, over TLS (see [`identity_channel`]).
    pub channel: Channel,
    /// The SPIFFE ID asked for.
    pub identity: SpiffeId,
    /// The projected service-account token (re-read for every request: the
    /// kubelet rotates it).
    pub token_file: PathBuf,
    /// Where the chain is written (`--tls-cert`).
    pub cert_file: PathBuf,
    /// Where the key is written (`--tls-key`).
    pub key_file: PathBuf,
}

/// Why a certificate could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    /// The token file could not be read.
    #[error("reading the service-account token {path}: {source}")]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The identity service refused or could not be reached.
    #[error("the identity service: {0}")]
    Refused(#[from] tonic::Status),
    /// The key or request could not be made.
    #[error("making the key and request: {0}")]
    Request(#[from] rcgen::Error),
    /// The files could not be written.
    #[error("{0}")]
    Write(#[from] crate::pki::PkiError),
}

impl CertifyConfig {
    /// Obtains one certificate for a new key and writes both; returns when the
    /// leaf expires.
    pub async fn certify_once(&self) -> Result<SystemTime, CertifyError> {
        let token = std::fs::read(&self.token_file).map_err(|source| CertifyError::Token {
            path: self.token_file.clone(),
            source,
        })?;
        let key = KeyPair::generate()?;
        let csr = CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
        let request = CertifyRequest {
            identity: self.identity.as_str().to_owned(),
            token,
            certificate_signing_request: csr.der().to_vec(),
        };
        let mut client = IdentityClient::new(self.channel.clone());
        let issued = client.certify(request).await?.into_inner();
        let mut chain = vec![issued.leaf_certificate];
        chain.extend(issued.intermediate_certificates);
        // Key first: a watcher that reads the new key with the old chain rejects
        // the pair and keeps what it has until the chain follows.
        write_private_atomic(&self.key_file, &key.serialize_pem())?;
        write_atomic(&self.cert_file, &certificates_pem(&chain))?;
        let expires = UNIX_EPOCH
            + Duration::from_secs(u64::try_from(issued.valid_until_unix_seconds).unwrap_or(0));
        tracing::info!(identity = %self.identity, expires_in = ?expires.duration_since(SystemTime::now()).unwrap_or_default(), "certificate issued");
        Ok(expires)
    }

    /// Certifies, retrying with backoff until it succeeds or `deadline` passes.
    pub async fn certify_within(&self, deadline: Duration) -> Result<SystemTime, CertifyError> {
        self.certify_retrying(Some(Instant::now() + deadline)).await
    }

    /// Renews the leaf that expires at `expires` before it does, for as long as
    /// the proxy runs, and tells the credential watcher (`written`) each time.
    pub async fn renew(self, mut expires: SystemTime, written: Arc<Notify>) {
        loop {
            tokio::time::sleep(renew_in(SystemTime::now(), expires)).await;
            if let Ok(next) = self.certify_retrying(None).await {
                expires = next;
                written.notify_one();
            }
        }
    }

    /// Certifies, retrying failures with backoff until one succeeds or the next
    /// attempt would start after `give_up`.
    async fn certify_retrying(&self, give_up: Option<Instant>) -> Result<SystemTime, CertifyError> {
        let mut wait = RETRY.0;
        loop {
            match self.certify_once().await {
                Ok(expires) => return Ok(expires),
                Err(error) if give_up.is_none_or(|t| Instant::now() + wait < t) => {
                    tracing::warn!(%error, retry_in = ?wait, "no certificate from the identity service");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY.1);
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// A channel to the identity service at `addr` (`host:port`) that connects on
/// first use, over TLS 1.3 with no client certificate, and only to a server that
/// proves it is `server_id` under `bundles`: the token is sent to no one else.
pub fn identity_channel(
    addr: &str,
    bundles: &[TrustBundle],
    server_id: &SpiffeId,
) -> Result<Channel, crate::Error> {
    let bad =
        |e: &dyn std::fmt::Display| crate::Error::Config(format!("--identity-addr {addr:?}: {e}"));
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| bad(&e))?;
    let config =
        client_config_without_cert(bundles, server_id, &[b"h2".to_vec()]).map_err(|e| {
            crate::Error::Config(format!("trust anchors for the identity service: {e}"))
        })?;
    Ok(endpoint.connect_with_connector_lazy(TlsConnect {
        addr: addr.to_owned(),
        config,
        expected: server_id.clone(),
    }))
}

/// Opens the identity service's TLS connections for tonic.
#[derive(Clone)]
struct TlsConnect {
    addr: String,
    config: Arc<ClientConfig>,
    expected: SpiffeId,
}

impl tower_service::Service<Uri> for TlsConnect {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.addr).await?;
            let (tls, _) = connect(this.config, tcp, &this.expected, HANDSHAKE_TIMEOUT).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// How long to wait before renewing a leaf that expires at `expires`.
fn renew_in(now: SystemTime, expires: SystemTime) -> Duration {
    expires
        .duration_since(now)
        .unwrap_or_default()
        .mul_f64(RENEW_AT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_is_renewed_when_seventy_percent_of_its_remaining_time_has_passed() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        assert_eq!(renew_in(now, now + hour), hour.mul_f64(0.7));
        assert_eq!(
            renew_in(now, now - hour),
            Duration::ZERO,
            "expired: at once"
        );
    }
}
