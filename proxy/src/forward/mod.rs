//! Forwarding: moving a connection's traffic to the endpoints of its target. HTTP
//! is proxied per request ([`http`]) so each request is balanced separately and
//! upstream connections are reused; everything else is proxied per connection
//! ([`tcp`]). [`connect`] opens the upstream connections for both; HTTP/1 between
//! meshed peers travels as HTTP/2 ([`orig_proto`]).

pub mod connect;
pub mod http;
pub mod orig_proto;
pub mod tcp;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::accept::Drain;
use crate::detect::Protocol;
use crate::metrics::{Listener, Metrics};
use crate::route::Target;

/// What forwarding needs besides the target: metrics and timeouts.
#[derive(Clone, Debug)]
pub struct ForwardContext {
    /// The data-plane metrics.
    pub metrics: Arc<Metrics>,
    /// Which listener this is.
    pub listener: Listener,
    /// How long an opaque connection may carry no bytes before it is closed.
    pub idle_timeout: Duration,
    /// Per-direction copy buffer for opaque connections.
    pub buffer_size: usize,
}

/// Forwards a connection of `protocol` to `target` until it ends or, for HTTP,
/// until `drain` asks for a graceful close.
pub async fn forward<I>(
    io: I,
    protocol: Protocol,
    target: Arc<Target>,
    ctx: &ForwardContext,
    drain: Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if protocol.is_http() {
        if let Err(error) = http::serve(io, protocol, target.clone(), ctx, drain).await {
            tracing::debug!(target = %target.name, %error, "HTTP connection ended with an error");
        }
        ctx.metrics.tcp_close(ctx.listener, 0, 0);
    } else if let Err(error) = tcp::proxy(io, &target, ctx).await {
        tracing::info!(target = %target.name, %error, "opaque connection failed");
    }
}
