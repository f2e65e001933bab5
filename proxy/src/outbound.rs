//! The outbound listener: connections from the local app to the mesh. Each one is
//! walked through accept → original destination → detect → route → balance →
//! connect. Targets come from `SO_ORIGINAL_DST` after an iptables redirect, or
//! from a fixed target (tests and explicit-proxy setups).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::Error;
use crate::accept::{self, AcceptConfig, Drain};
use crate::detect::DetectConfig;
use crate::discovery::Endpoint;
use crate::forward::{self, ForwardContext};
use crate::metrics::{Listener, Metrics};
use crate::orig_dst::original_dst;
use crate::route::{Router, Target};

/// Where an outbound connection's target comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetMode {
    /// The original destination of a redirected connection.
    OriginalDst,
    /// Every connection goes to this authority (`name:port`).
    Fixed(String),
}

/// Static settings of the outbound listener.
#[derive(Clone, Debug)]
pub struct OutboundConfig {
    /// Where targets come from.
    pub target: TargetMode,
    /// Protocol detection.
    pub detect: DetectConfig,
    /// Connection limits and drain deadline.
    pub accept: AcceptConfig,
    /// Opaque connections idle this long are closed.
    pub idle_timeout: Duration,
    /// Copy buffer per direction for opaque connections.
    pub buffer_size: usize,
}

/// The outbound proxy, ready to serve a bound listener.
#[derive(Debug)]
pub struct Outbound {
    config: OutboundConfig,
    router: Arc<Router>,
    ctx: ForwardContext,
}

impl Outbound {
    /// Builds the outbound proxy over `router` (discovery, connector, balancing).
    pub fn new(config: OutboundConfig, router: Arc<Router>, metrics: Arc<Metrics>) -> Self {
        let ctx = ForwardContext {
            metrics,
            listener: Listener::Outbound,
            idle_timeout: config.idle_timeout,
            buffer_size: config.buffer_size,
        };
        Self {
            config,
            router,
            ctx,
        }
    }

    /// Serves `listener` until `shutdown`, then drains.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let accept = self.config.accept;
        accept::serve(listener, shutdown, accept, Arc::new(self), Self::serve_one).await;
    }

    async fn serve_one(self: Arc<Self>, stream: TcpStream, drain: Drain) {
        self.ctx.metrics.tcp_open(Listener::Outbound);
        if let Err(error) = self.connection(stream, drain).await {
            tracing::info!(%error, "outbound connection refused");
            self.ctx.metrics.tcp_close(Listener::Outbound, 0, 0);
        }
    }

    async fn connection(&self, stream: TcpStream, drain: Drain) -> Result<(), Error> {
        let (name, port) = self.target_of(&stream)?;
        let (protocol, io) = self.config.detect.run(stream, port).await?;
        let mut target = self.route(&name).await?;
        if !protocol.is_http() {
            // HTTP chooses a split backend per request; opaque once per connection.
            target = target.route().await?;
        }
        if !protocol.is_http() && target.balancer.endpoints().is_empty() {
            // An opaque client cannot be told "unavailable": reset, so it fails at
            // once instead of reading what looks like an orderly end of stream.
            reset(io.get_ref());
            return Err(Error::NoEndpoints(name));
        }
        forward::forward(io, protocol, target, &self.ctx, drain).await;
        Ok(())
    }

    /// The target authority and port of a connection.
    fn target_of(&self, stream: &TcpStream) -> Result<(String, u16), Error> {
        match &self.config.target {
            TargetMode::Fixed(name) => {
                let port = name
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse().ok())
                    .unwrap_or(0);
                Ok((name.clone(), port))
            }
            TargetMode::OriginalDst => {
                let dst = original_dst(stream)?;
                if dst == stream.local_addr()? {
                    // Not redirected: forwarding to ourselves would loop.
                    return Err(Error::Config(format!(
                        "connection to {dst} was not redirected"
                    )));
                }
                Ok((dst.to_string(), dst.port()))
            }
        }
    }

    /// Discovery's target, else a passthrough to the address itself. A name
    /// neither discovery nor an address knows is a target without endpoints, so
    /// HTTP clients get 503 and opaque ones a reset.
    async fn route(&self, name: &str) -> Result<Arc<Target>, Error> {
        if let Some(target) = self.router.resolve(name).await? {
            return Ok(target);
        }
        let endpoints = match name.parse::<SocketAddr>() {
            Ok(addr) => vec![Endpoint::plain(addr)],
            Err(_) => Vec::new(),
        };
        Ok(self.router.fixed(name, endpoints))
    }
}

/// Makes the close of `stream` (when it is dropped) a TCP reset.
fn reset(stream: &TcpStream) {
    if let Err(error) = stream.set_zero_linger() {
        tracing::debug!(%error, "setting SO_LINGER for a reset");
    }
}
