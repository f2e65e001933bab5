//! The cross-cluster gateway: the proxy in gateway mode. It accepts mutual-TLS
//! connections from other clusters, reads the transport header, authorizes the peer,
//! resolves the local target and forwards, reusing the proxy's TLS and balancing
//! stacks.
//!
//! Per connection: accept → TLS ([`proxy::inbound::TlsStage`]) → ALPN check →
//! transport header → policy (peer identity, cluster domain, hop count) → route
//! ([`proxy::route::Router`]) → forward. No protocol detection: the header names
//! the session protocol.

pub mod config;

use std::sync::Arc;
use std::time::Duration;

use api::transport_header::TargetName;
use api::transport_header::TransportHeader;
use proxy::accept::{self, AcceptConfig, Drain};
use proxy::forward::{self, ForwardContext};
use proxy::header::{ALPN, authority_of, protocol_of};
use proxy::inbound::TlsStage;
use proxy::metrics::{Direction, Listener, Metrics};
use proxy::route::{Router, Target};
use proxy::tls::{Policy, TlsConfigs, read_header};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

/// The highest hop count accepted: one gateway crossing. More means a loop.
pub const MAX_HOPS: u8 = 1;

/// Static settings of the gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The local cluster domain; targets must be under `svc.<domain>`.
    pub cluster_domain: String,
    /// Which peer identities may connect (default: any from a trusted bundle).
    pub policy: Policy,
    /// The TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// The transport header must arrive within this after the handshake.
    pub header_timeout: Duration,
    /// Connection limits and drain deadline.
    pub accept: AcceptConfig,
    /// Opaque connections idle this long are closed.
    pub idle_timeout: Duration,
    /// Copy buffer per direction for opaque connections.
    pub buffer_size: usize,
}

/// Why the gateway refused a connection after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NoAlpn,
    OutsideDomain,
    HopLimit,
    UnknownTarget,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::NoAlpn => "no_transport_alpn",
            Refusal::OutsideDomain => "outside_cluster_domain",
            Refusal::HopLimit => "hop_limit",
            Refusal::UnknownTarget => "unknown_target",
        }
    }
}

/// The gateway, ready to serve a bound listener.
#[derive(Debug)]
pub struct Gateway {
    config: GatewayConfig,
    tls: TlsStage,
    router: Arc<Router>,
    ctx: ForwardContext,
}

impl Gateway {
    /// Builds the gateway. `tls`'s server config must offer the transport-header
    /// ALPN ([`ALPN`]); `router` resolves local targets (its hop count is the
    /// one written if a target is itself behind another gateway).
    pub fn new(
        config: GatewayConfig,
        tls: watch::Receiver<Arc<TlsConfigs>>,
        router: Arc<Router>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let ctx = ForwardContext {
            metrics,
            listener: Listener::Gateway,
            idle_timeout: config.idle_timeout,
            buffer_size: config.buffer_size,
        };
        Self {
            tls: TlsStage::new(tls, config.policy.clone(), config.handshake_timeout),
            config,
            router,
            ctx,
        }
    }

    /// Serves `listener` until `shutdown`, then drains.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let accept = self.config.accept;
        accept::serve(listener, shutdown, accept, Arc::new(self), Self::connection).await;
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, drain: Drain) {
        let Some((mut tls, peer)) = self.tls.accept(stream, &self.ctx).await else {
            return;
        };
        let metrics = &self.ctx.metrics;
        let deadline = Instant::now() + self.config.header_timeout;
        let header = match read_header(&mut tls, deadline).await {
            Ok(header) => header,
            Err(error) => {
                tracing::info!(%peer, reason = error.reason(), %error, "bad transport header");
                metrics.tls.header_failed(Direction::Inbound, &error);
                metrics.tcp_close(Listener::Gateway, 0, 0);
                return;
            }
        };
        match self.authorize(&tls, &header).await {
            Ok(target) => {
                forward::forward(tls, protocol_of(&header), target, &self.ctx, drain).await
            }
            Err(refusal) => {
                tracing::info!(%peer, target = %header.name, reason = refusal.reason(), "refused");
                metrics.refusal(Listener::Gateway, refusal.reason(), Some(peer.as_str()));
                metrics.tcp_close(Listener::Gateway, 0, 0);
            }
        }
    }

    /// The checks after identity: ALPN, cluster domain, hop count, a known target.
    async fn authorize(
        &self,
        tls: &TlsStream<TcpStream>,
        header: &TransportHeader,
    ) -> Result<Arc<Target>, Refusal> {
        if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
            return Err(Refusal::NoAlpn);
        }
        if !within_cluster(&header.name, &self.config.cluster_domain) {
            return Err(Refusal::OutsideDomain);
        }
        if header.hops > MAX_HOPS {
            return Err(Refusal::HopLimit);
        }
        match self.router.resolve(&authority_of(header)).await {
            Ok(Some(target)) => Ok(target),
            Ok(None) => Err(Refusal::UnknownTarget),
            Err(error) => {
                tracing::warn!(%error, "discovery failed");
                Err(Refusal::UnknownTarget)
            }
        }
    }
}

/// Whether `name` is a service of this cluster: strictly under
/// `svc.<cluster_domain>` on a label boundary.
pub fn within_cluster(name: &TargetName, cluster_domain: &str) -> bool {
    let domain = format!("svc.{}", cluster_domain.trim_matches('.'));
    name.as_str() != domain && name.is_within(&domain)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;

    #[test]
    fn cluster_domain_suffix_is_label_aligned() {
        let within = |n: &str| within_cluster(&TargetName::parse(n).unwrap(), "cluster.local");
        assert!(within("books.shop.svc.cluster.local"));
        assert!(!within("books.shop.svc.cluster.local.evil.com"));
        assert!(!within("xsvc.cluster.local"));
        assert!(!within("svc.cluster.local"));
        assert!(!within("10.0.0.1"));
    }
}
