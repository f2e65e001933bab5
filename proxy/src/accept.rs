//! The first stage: accept connections on a pre-bound listener (so tests bind port
//! 0), cap how many are open at once, and shut down gracefully: when `shutdown`
//! resolves the listener closes, every connection is told to drain (HTTP finishes
//! in-flight requests then closes), and after the deadline stragglers are aborted.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Tells a connection to finish up.
#[derive(Clone, Debug)]
pub struct Drain(watch::Receiver<bool>);

impl Drain {
    /// Resolves once draining has begun (never, if the server is dropped first).
    pub async fn signaled(&mut self) {
        if self.0.wait_for(|d| *d).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// A drain that never fires, for code that serves outside an accept loop.
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        Self(rx)
    }
}

/// One stop signal for every server of a process: `main` triggers it on SIGTERM
/// and each server's accept loop waits on its own [`Stop::signaled`] future.
#[derive(Debug)]
pub struct Stop(watch::Sender<bool>);

impl Default for Stop {
    fn default() -> Self {
        Self(watch::Sender::new(false))
    }
}

impl Stop {
    /// A signal not yet triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves once [`Stop::trigger`] is called (or the `Stop` is dropped).
    pub fn signaled(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Tells every server to stop accepting and drain.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

/// Connections one listener serves at once unless configured otherwise.
pub const MAX_CONNECTIONS: usize = 10_000;

/// Limits of one accept loop.
#[derive(Clone, Copy, Debug)]
pub struct AcceptConfig {
    /// Connections served at once; further accepts wait.
    pub max_connections: usize,
    /// How long draining may take before connections are aborted.
    pub drain_deadline: Duration,
}

impl Default for AcceptConfig {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            drain_deadline: Duration::from_secs(30),
        }
    }
}

/// Accepts on `listener` until `shutdown`, running `connection` per connection
/// with its own reference to the listener's shared state `this`.
pub async fn serve<T, C, F>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    config: AcceptConfig,
    this: Arc<T>,
    connection: C,
) where
    C: Fn(Arc<T>, TcpStream, Drain) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let (drain_tx, drain_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let conn = connection(this.clone(), stream, Drain(drain_rx.clone()));
                conns.spawn(async move {
                    conn.await;
                    drop(permit);
                });
            }
            Err(error) => {
                // Usually EMFILE: back off rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let drained = tokio::time::timeout(config.drain_deadline, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = conns.len(),
            "drain deadline passed, aborting connections"
        );
        conns.shutdown().await;
    }
}
