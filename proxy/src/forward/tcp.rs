//! Per-connection (opaque) proxying: pick one endpoint, connect, and copy bytes
//! both ways with bounded buffers until either side closes or the connection sits
//! idle past the timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::ForwardContext;
use crate::Error;
use crate::route::Target;

/// Proxies `io` to one endpoint of `target`.
pub async fn proxy<I>(io: I, target: &Target, ctx: &ForwardContext) -> Result<(), Error>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let Some(pick) = target.balancer.pick() else {
        ctx.metrics.tcp_close(ctx.listener, 0, 0);
        return Err(Error::NoEndpoints(target.name.clone()));
    };
    let started = Instant::now();
    let upstream = match pick.service().opaque().open().await {
        Ok(upstream) => upstream,
        Err(error) => {
            target.failover.failed(pick.endpoint().addr);
            ctx.metrics.tcp_close(ctx.listener, 0, 0);
            return Err(error);
        }
    };
    target.failover.succeeded(pick.endpoint().addr, started);
    pick.record();
    let epoch = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let mut client = Idle::new(io, epoch, activity.clone());
    let mut upstream = Idle::new(upstream, epoch, activity.clone());
    let copy = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut upstream,
        ctx.buffer_size,
        ctx.buffer_size,
    );
    let idle = async {
        loop {
            let last = epoch + std::time::Duration::from_millis(activity.load(Ordering::Relaxed));
            let deadline = last + ctx.idle_timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let result = tokio::select! {
        res = copy => res.map(|_| ()),
        _ = idle => {
            tracing::debug!(target = %target.name, "closing idle opaque connection");
            Ok(())
        }
    };
    ctx.metrics
        .tcp_close(ctx.listener, client.read, client.written);
    result.map_err(Error::from)
}

/// Counts bytes and stamps the last activity on a shared clock.
struct Idle<I> {
    inner: I,
    epoch: Instant,
    activity: Arc<AtomicU64>,
    read: u64,
    written: u64,
}

impl<I> Idle<I> {
    fn new(inner: I, epoch: Instant, activity: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            epoch,
            activity,
            read: 0,
            written: 0,
        }
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.activity.store(ms, Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Idle<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.read += n;
            self.touch();
        }
        res
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Idle<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.written += n as u64;
            self.touch();
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
