//! The inbound listener: connections from the mesh to the local app. Each one is
//! walked through accept → TLS (mutual, terminated here) → detect → forward to the
//! app in plaintext. [`accept_tls`] is the TLS stage the gateway shares.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::accept::{self, AcceptConfig, Drain};
use crate::detect::DetectConfig;
use crate::discovery::Endpoint;
use crate::forward::{self, ForwardContext};
use crate::metrics::{Direction, Metrics};
use crate::route::{Router, Target};

/// Static settings of the inbound listener.
#[derive(Clone, Debug)]
pub struct InboundConfig {
    /// Where the local app listens.
    pub app: SocketAddr,
    /// Protocol detection.
    pub detect: DetectConfig,
    /// Connection limits and drain deadline.
    pub accept: AcceptConfig,
    /// The TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// Opaque connections idle this long are closed.
    pub idle_timeout: Duration,
    /// Copy buffer per direction for opaque connections.
    pub buffer_size: usize,
}

/// The inbound proxy, ready to serve a bound listener.
#[derive(Debug)]
pub struct Inbound {
    config: InboundConfig,
    tls: watch::Receiver<Arc<rustls::ServerConfig>>,
    app: Arc<Target>,
    ctx: ForwardContext,
}

impl Inbound {
    /// Builds the inbound proxy. `tls` carries the current server configuration
    /// (it changes on rotation; established connections keep theirs); `router`
    /// supplies the connector and balancing settings for the app's pool.
    pub fn new(
        config: InboundConfig,
        tls: watch::Receiver<Arc<rustls::ServerConfig>>,
        router: &Router,
        metrics: Arc<Metrics>,
    ) -> Self {
        let app = router.fixed(&config.app.to_string(), vec![Endpoint::plain(config.app)]);
        let ctx = ForwardContext {
            metrics,
            direction: Direction::Inbound,
            idle_timeout: config.idle_timeout,
            buffer_size: config.buffer_size,
        };
        Self {
            config,
            tls,
            app,
            ctx,
        }
    }

    /// Serves `listener` until `shutdown`, then drains.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let this = Arc::new(self);
        let accept = this.config.accept;
        accept::serve(listener, shutdown, accept, move |stream, _peer, drain| {
            let this = this.clone();
            async move { this.connection(stream, drain).await }
        })
        .await;
    }

    async fn connection(&self, stream: TcpStream, drain: Drain) {
        let metrics = &self.ctx.metrics;
        metrics.tcp_open(Direction::Inbound);
        let config = self.tls.borrow().clone();
        let timeout = self.config.handshake_timeout;
        let Some(tls) = accept_tls(stream, config, timeout, metrics, Direction::Inbound).await
        else {
            metrics.tcp_close(Direction::Inbound, 0, 0);
            return;
        };
        let (protocol, io) = match self.config.detect.run(tls, self.config.app.port()).await {
            Ok(detected) => detected,
            Err(error) => {
                tracing::debug!(%error, "detection failed");
                return;
            }
        };
        forward::forward(io, protocol, self.app.clone(), &self.ctx, drain).await;
    }
}

/// The TLS stage: handshakes with `config` within `timeout`, counting a failure
/// by reason. `None` means the connection is dropped.
pub async fn accept_tls(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
    metrics: &Metrics,
    direction: Direction,
) -> Option<TlsStream<TcpStream>> {
    let peer = stream.peer_addr().ok();
    match tokio::time::timeout(timeout, TlsAcceptor::from(config).accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(error)) => {
            let reason = tls_failure_reason(&error);
            tracing::info!(?peer, reason, %error, "TLS handshake failed");
            metrics.tls_failure(direction, reason);
            None
        }
        Err(_) => {
            tracing::info!(?peer, "TLS handshake timed out");
            metrics.tls_failure(direction, "timeout");
            None
        }
    }
}

/// A fixed label for why a server-side handshake failed.
pub fn tls_failure_reason(error: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error as E};
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<E>()) else {
        return "io";
    };
    match tls {
        E::NoCertificatesPresented => "no_client_cert",
        E::InvalidCertificate(CertificateError::UnknownIssuer) => "untrusted_root",
        E::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "expired",
        E::InvalidCertificate(CertificateError::ApplicationVerificationFailure) => {
            "forbidden_identity"
        }
        E::InvalidCertificate(_) => "bad_certificate",
        E::NoApplicationProtocol => "alpn",
        E::PeerIncompatible(_) => "incompatible",
        _ => "handshake",
    }
}
