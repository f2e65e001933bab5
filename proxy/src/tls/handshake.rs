//! The two handshakes with identity checks: `accept` (inbound, policy decides) and
//! `connect` (outbound, the peer must be exactly the expected identity). Both are
//! bounded by a timeout and report failures as a [`RejectReason`].

use super::creds::server_name_for;
use super::verify::{Policy, RejectReason, spiffe_id_of};
use api::identity::SpiffeId;
use rustls::{ClientConfig, CommonState, ServerConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

/// A refused or failed handshake: a bounded reason plus a human detail for logs.
#[derive(Debug, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct HandshakeError {
    /// Metric-safe classification.
    pub reason: RejectReason,
    /// What happened, for logs (never contains key material).
    pub detail: String,
}

impl HandshakeError {
    fn io(err: std::io::Error) -> Self {
        Self {
            reason: RejectReason::from_io(&err),
            detail: err.to_string(),
        }
    }

    fn identity(reason: RejectReason, id: Option<&SpiffeId>) -> Self {
        let detail = match id {
            Some(id) => format!("peer is {id}"),
            None => "peer identity unknown".to_owned(),
        };
        Self { reason, detail }
    }

    fn timeout(limit: Duration) -> Self {
        Self {
            reason: RejectReason::Timeout,
            detail: format!("no handshake within {limit:?}"),
        }
    }
}

/// The peer's SPIFFE ID from an established connection's leaf certificate.
pub fn peer_id(conn: &CommonState) -> Result<SpiffeId, RejectReason> {
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(RejectReason::NoClientCert)?;
    spiffe_id_of(leaf)
}

/// Server side: completes the handshake, then admits the client only if `policy`
/// allows its (already chain-verified) identity.
pub async fn accept<IO>(
    config: Arc<ServerConfig>,
    io: IO,
    policy: &Policy,
    timeout: Duration,
) -> Result<(server::TlsStream<IO>, SpiffeId), HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = TlsAcceptor::from(config).accept(io);
    let (tls, id) = finish(handshake, timeout, |tls| &**tls.get_ref().1).await?;
    if !policy.allows(&id) {
        return Err(HandshakeError::identity(RejectReason::Forbidden, Some(&id)));
    }
    Ok((tls, id))
}

/// Client side: completes the handshake and checks the server is `expected`.
/// Nothing is written to the connection before that check passes. In TLS 1.3 the
/// server judges our certificate after this returns: a refusal surfaces on the
/// first read, classified by [`RejectReason::from_io`] as `AlertReceived`.
pub async fn connect<IO>(
    config: Arc<ClientConfig>,
    io: IO,
    expected: &SpiffeId,
    timeout: Duration,
) -> Result<(client::TlsStream<IO>, SpiffeId), HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = TlsConnector::from(config).connect(server_name_for(expected), io);
    let (tls, id) = finish(handshake, timeout, |tls| &**tls.get_ref().1).await?;
    if &id != expected {
        let mut err = HandshakeError::identity(RejectReason::IdentityMismatch, Some(&id));
        err.detail.push_str(&format!(", expected {expected}"));
        return Err(err);
    }
    Ok((tls, id))
}

/// Awaits a handshake within `timeout` and reads the peer's SPIFFE ID.
async fn finish<S>(
    handshake: impl Future<Output = std::io::Result<S>>,
    timeout: Duration,
    state: impl Fn(&S) -> &CommonState,
) -> Result<(S, SpiffeId), HandshakeError> {
    let tls = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| HandshakeError::timeout(timeout))?
        .map_err(HandshakeError::io)?;
    let id = peer_id(state(&tls)).map_err(|r| HandshakeError::identity(r, None))?;
    Ok((tls, id))
}
