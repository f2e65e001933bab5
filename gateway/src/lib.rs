//! The cross-cluster gateway: the proxy in gateway mode. It accepts mutual-TLS
//! connections from other clusters, reads the transport header, authorizes the peer,
//! resolves the local target and forwards, reusing the proxy's TLS and balancing
//! stacks.
//!
//! Per connection: accept → TLS ([`proxy::inbound::accept_tls`]) → ALPN check →
//! transport header → policy (peer identity, cluster domain, hop count) → route
//! ([`proxy::route::Router`]) → forward. No protocol detection: the header names
//! the session protocol.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use api::transport_header::TargetName;
use proxy::accept::{self, AcceptConfig, Drain};
use proxy::forward::{self, ForwardContext};
use proxy::header::{self, TransportTarget};
use proxy::metrics::{Direction, Metrics};
use proxy::route::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

/// The highest hop count accepted: one gateway crossing. More means a loop.
pub const MAX_HOPS: u8 = 1;

/// Which peer identities may use the gateway.
#[derive(Clone, Debug, Default)]
pub enum Policy {
    /// Any identity whose chain verifies against a trusted bundle.
    #[default]
    AnyTrusted,
    /// Only these SPIFFE IDs.
    Allow(HashSet<String>),
}

impl Policy {
    fn allows(&self, peer: Option<&str>) -> bool {
        match self {
            Policy::AnyTrusted => true,
            Policy::Allow(ids) => peer.is_some_and(|p| ids.contains(p)),
        }
    }
}

/// Static settings of the gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The local cluster domain; targets must be under `svc.<domain>`.
    pub cluster_domain: String,
    /// Who may connect.
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
    Forbidden,
    OutsideDomain,
    HopLimit,
    UnknownTarget,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::NoAlpn => "no_transport_alpn",
            Refusal::Forbidden => "forbidden_identity",
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
    tls: watch::Receiver<Arc<rustls::ServerConfig>>,
    router: Arc<Router>,
    ctx: ForwardContext,
}

impl Gateway {
    /// Builds the gateway. `tls` must offer the transport-header ALPN and require
    /// client certificates; `router` resolves local targets (its hop count is the
    /// one written if a target is itself behind another gateway).
    pub fn new(
        config: GatewayConfig,
        tls: watch::Receiver<Arc<rustls::ServerConfig>>,
        router: Arc<Router>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let ctx = ForwardContext {
            metrics,
            direction: Direction::Gateway,
            idle_timeout: config.idle_timeout,
            buffer_size: config.buffer_size,
        };
        Self {
            config,
            tls,
            router,
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
        metrics.tcp_open(Direction::Gateway);
        let config = self.tls.borrow().clone();
        let timeout = self.config.handshake_timeout;
        let Some(mut tls) =
            proxy::inbound::accept_tls(stream, config, timeout, metrics, Direction::Gateway).await
        else {
            metrics.tcp_close(Direction::Gateway, 0, 0);
            return;
        };
        let peer = peer_identity(&tls);
        let Some(header) = self.read_header(&mut tls, peer.as_deref()).await else {
            metrics.tcp_close(Direction::Gateway, 0, 0);
            return;
        };
        match self.authorize(&tls, peer.as_deref(), &header).await {
            Ok(target) => forward::forward(tls, header.protocol, target, &self.ctx, drain).await,
            Err(refusal) => {
                tracing::info!(peer = ?peer, target = %header.name, reason = refusal.reason(), "refused");
                metrics.refusal(Direction::Gateway, refusal.reason(), peer.as_deref());
                metrics.tcp_close(Direction::Gateway, 0, 0);
            }
        }
    }

    async fn read_header(
        &self,
        tls: &mut TlsStream<TcpStream>,
        peer: Option<&str>,
    ) -> Option<TransportTarget> {
        let metrics = &self.ctx.metrics;
        match tokio::time::timeout(self.config.header_timeout, header::read(tls)).await {
            Ok(Ok(h)) => Some(h),
            Ok(Err(error)) => {
                tracing::info!(?peer, %error, "bad transport header");
                metrics.header_error(Direction::Gateway, error.reason(), peer);
                None
            }
            Err(_) => {
                tracing::info!(?peer, "transport header timed out");
                metrics.header_error(Direction::Gateway, "timeout", peer);
                None
            }
        }
    }

    async fn authorize(
        &self,
        tls: &TlsStream<TcpStream>,
        peer: Option<&str>,
        header: &TransportTarget,
    ) -> Result<Arc<proxy::route::Target>, Refusal> {
        if tls.get_ref().1.alpn_protocol() != Some(header::ALPN) {
            return Err(Refusal::NoAlpn);
        }
        if !self.config.policy.allows(peer) {
            return Err(Refusal::Forbidden);
        }
        if !within_cluster(&header.name, &self.config.cluster_domain) {
            return Err(Refusal::OutsideDomain);
        }
        if header.hop > MAX_HOPS {
            return Err(Refusal::HopLimit);
        }
        match self.router.resolve(&header.authority()).await {
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

/// The peer's SPIFFE ID. INTERIM: replaced by the identity module's extractor on
/// merge; until then policy can only be `AnyTrusted`.
fn peer_identity(_tls: &TlsStream<TcpStream>) -> Option<String> {
    None
}

#[cfg(test)]
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

    #[test]
    fn allow_policy_needs_a_listed_identity() {
        let p = Policy::Allow(["spiffe://west/ns/a/sa/web".to_string()].into());
        assert!(p.allows(Some("spiffe://west/ns/a/sa/web")));
        assert!(!p.allows(Some("spiffe://west/ns/a/sa/other")));
        assert!(!p.allows(None));
        assert!(Policy::AnyTrusted.allows(None));
    }
}
