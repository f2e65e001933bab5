//! The inbound listener: connections from the mesh to the local app. Each one is
//! walked through accept → TLS (mutual, terminated here) → detect → forward to the
//! app in plaintext, at a fixed address or, after an iptables redirect, at
//! `127.0.0.1:<original destination port>`. [`TlsStage`] is the TLS stage the gateway shares.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

use crate::Error;
use crate::accept::{self, AcceptConfig, Drain};
use crate::detect::DetectConfig;
use crate::discovery::Endpoint;
use crate::forward::{self, ForwardContext};
use crate::metrics::{Direction, Listener, Metrics};
use crate::orig_dst::original_dst;
use crate::route::{Router, Target};
use crate::tls::{self, Policy, TlsConfigs};
use api::identity::SpiffeId;

/// Static settings of the inbound listener.
#[derive(Clone, Debug)]
pub struct InboundConfig {
    /// Where the local app listens.
    pub app: AppTarget,
    /// Protocol detection.
    pub detect: DetectConfig,
    /// Connection limits and drain deadline.
    pub accept: AcceptConfig,
    /// Which peer identities may connect.
    pub policy: Policy,
    /// The TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// Opaque connections idle this long are closed.
    pub idle_timeout: Duration,
    /// Copy buffer per direction for opaque connections.
    pub buffer_size: usize,
}

/// Where inbound traffic is handed to the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppTarget {
    /// Always this address.
    Fixed(SocketAddr),
    /// Loopback at the port the peer originally dialled (transparent mode).
    OriginalDstPort,
}

/// The inbound proxy, ready to serve a bound listener.
#[derive(Debug)]
pub struct Inbound {
    config: InboundConfig,
    tls: TlsStage,
    router: Arc<Router>,
    /// One pooled target per app port (ports are few: a pod's container ports).
    apps: Mutex<HashMap<u16, Arc<Target>>>,
    ctx: ForwardContext,
}

impl Inbound {
    /// Builds the inbound proxy. `tls` carries the current credentials (they
    /// change on rotation; established connections keep theirs); `router`
    /// supplies the connector and balancing settings for the app's pool.
    pub fn new(
        config: InboundConfig,
        tls: watch::Receiver<Arc<TlsConfigs>>,
        router: Arc<Router>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let ctx = ForwardContext {
            metrics,
            listener: Listener::Inbound,
            idle_timeout: config.idle_timeout,
            buffer_size: config.buffer_size,
        };
        Self {
            tls: TlsStage::new(tls, config.policy.clone(), config.handshake_timeout),
            config,
            router,
            apps: Mutex::new(HashMap::new()),
            ctx,
        }
    }

    /// Serves `listener` until `shutdown`, then drains.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let accept = self.config.accept;
        accept::serve(listener, shutdown, accept, Arc::new(self), Self::connection).await;
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, drain: Drain) {
        let Some((tls, _peer)) = self.tls.accept(stream, &self.ctx).await else {
            return;
        };
        let metrics = &self.ctx.metrics;
        let app = match self.app_addr(tls.get_ref().0) {
            Ok(app) => app,
            Err(error) => {
                tracing::info!(%error, "no app address for inbound connection");
                metrics.tcp_close(Listener::Inbound, 0, 0);
                return;
            }
        };
        let (protocol, io) = match self.config.detect.run(tls, app.port()).await {
            Ok(detected) => detected,
            Err(error) => {
                tracing::debug!(%error, "detection failed");
                return;
            }
        };
        forward::forward(io, protocol, self.app_target(app), &self.ctx, drain).await;
    }

    /// The app address for a connection.
    fn app_addr(&self, stream: &TcpStream) -> Result<SocketAddr, Error> {
        match self.config.app {
            AppTarget::Fixed(addr) => Ok(addr),
            AppTarget::OriginalDstPort => {
                let dst = original_dst(stream)?;
                if dst == stream.local_addr()? {
                    return Err(Error::Config(format!(
                        "connection to {dst} was not redirected"
                    )));
                }
                Ok(SocketAddr::from(([127, 0, 0, 1], dst.port())))
            }
        }
    }

    fn app_target(&self, app: SocketAddr) -> Arc<Target> {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let target = apps.entry(app.port()).or_insert_with(|| {
            self.router
                .fixed(&app.to_string(), vec![Endpoint::plain(app)])
        });
        target.clone()
    }
}

/// The TLS stage, shared with the gateway: the current server credentials (they
/// change on rotation; established connections keep theirs), which peer
/// identities may connect, and how long a handshake may take.
#[derive(Debug)]
pub struct TlsStage {
    configs: watch::Receiver<Arc<TlsConfigs>>,
    policy: Policy,
    timeout: Duration,
}

impl TlsStage {
    /// The stage over `configs`, admitting peers `policy` allows within `timeout`.
    pub fn new(
        configs: watch::Receiver<Arc<TlsConfigs>>,
        policy: Policy,
        timeout: Duration,
    ) -> Self {
        Self {
            configs,
            policy,
            timeout,
        }
    }

    /// Counts the connection open on `ctx`'s listener, handshakes and admits the
    /// client only if the policy allows its identity. A refusal is logged,
    /// counted by reason and counted closed; `None` means the connection is
    /// dropped. The handshake and the stream live on the heap: the stream (a few
    /// KiB of TLS state) then moves through the later stages as a pointer instead
    /// of being copied into each stage's future, which keeps every connection's
    /// task several KiB smaller.
    pub async fn accept(
        &self,
        stream: TcpStream,
        ctx: &ForwardContext,
    ) -> Option<(Box<TlsStream<TcpStream>>, SpiffeId)> {
        ctx.metrics.tcp_open(ctx.listener);
        let peer = stream.peer_addr().ok();
        let config = self.configs.borrow().server.clone();
        match Box::pin(tls::accept(config, stream, &self.policy, self.timeout)).await {
            Ok((tls, id)) => Some((Box::new(tls), id)),
            Err(error) => {
                tracing::info!(?peer, reason = error.reason.as_str(), %error, "TLS handshake refused");
                let metrics = &ctx.metrics;
                metrics
                    .tls
                    .handshake_failed(Direction::Inbound, error.reason);
                metrics.tcp_close(ctx.listener, 0, 0);
                None
            }
        }
    }
}
