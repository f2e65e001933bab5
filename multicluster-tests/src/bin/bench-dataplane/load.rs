//! The load generator every path is measured with: keep-alive HTTP/1 connections
//! (hyper's client connection, TCP_NODELAY), either paced at a fixed rate (open
//! loop) or sending back to back (closed loop), latencies in an HDR histogram.
//!
//! Open loop: each of the connections sends at `rate / connections` with its own
//! phase. A request's latency counts from its scheduled time when its connection
//! was still busy then (so a slow response also charges the requests queued behind
//! it: no coordinated omission), and from its actual send otherwise (so the
//! millisecond granularity of Tokio's timer is not charged to the path under test).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The `Host` every request carries (the meshlink sidecar routes by its
/// `--outbound-target`; nginx and the app ignore it).
const HOST: &str = "books-east.shop.svc.cluster.local:8080";

/// A request not answered within this counts as an error (its connection is
/// replaced).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What one run measured.
pub struct Run {
    /// Latency of each successful request, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Requests answered with 200.
    pub ok: u64,
    /// Requests that failed or got another status.
    pub errors: u64,
    /// Length of the run (the requests sent within it may finish just after).
    pub elapsed: Duration,
}

impl Run {
    fn new() -> Self {
        Self {
            // 1 µs to 60 s at 3 significant digits.
            latency: Histogram::new_with_bounds(1_000, 60_000_000_000, 3)
                .expect("static histogram bounds are valid"),
            ok: 0,
            errors: 0,
            elapsed: Duration::ZERO,
        }
    }

    /// Adds `other`'s requests; `elapsed` stays this run's (connections of one
    /// run overlap in time).
    fn merge(&mut self, other: &Self) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        self.errors += other.errors;
    }

    /// Appends a later run on the same path: its requests and its duration.
    pub fn extend(&mut self, later: &Self) {
        self.merge(later);
        self.elapsed += later.elapsed;
    }

    /// Answered requests per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at quantile `q` (0..=1).
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_nanos(self.latency.value_at_quantile(q))
    }
}

/// How a client sends.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// Open loop at this many requests per second in total.
    Paced(f64),
    /// Closed loop: each connection sends as soon as its last answer is in.
    Closed,
}

/// A set of open connections to one address.
pub struct Client {
    addr: SocketAddr,
    conns: Vec<SendRequest<Empty<Bytes>>>,
}

impl Client {
    /// Opens `n` connections to `addr`.
    pub async fn connect(addr: SocketAddr, n: usize) -> Result<Self> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(open(addr).await?);
        }
        Ok(Self { addr, conns })
    }

    /// Applies `load` for `duration`.
    pub async fn load(&mut self, load: Load, duration: Duration) -> Result<Run> {
        match load {
            Load::Paced(rate) => self.paced(rate, duration).await,
            Load::Closed => self.closed(duration).await,
        }
    }

    /// Sends `rate` requests per second in total, spread over the connections,
    /// for `duration`.
    async fn paced(&mut self, rate: f64, duration: Duration) -> Result<Run> {
        let n = self.conns.len() as f64;
        let interval = Duration::from_secs_f64(n / rate);
        let start = Instant::now() + Duration::from_millis(10);
        self.run(start + duration, duration, |i| Pace::Every {
            next: start + interval.mul_f64(i as f64 / n),
            interval,
        })
        .await
    }

    /// Sends back to back on every connection for `duration`.
    async fn closed(&mut self, duration: Duration) -> Result<Run> {
        self.run(Instant::now() + duration, duration, |_| Pace::BackToBack)
            .await
    }

    async fn run(
        &mut self,
        end: Instant,
        duration: Duration,
        pace: impl Fn(usize) -> Pace,
    ) -> Result<Run> {
        let mut tasks = JoinSet::new();
        for (i, conn) in self.conns.drain(..).enumerate() {
            tasks.spawn(drive(self.addr, conn, pace(i), end));
        }
        let mut total = Run::new();
        while let Some(done) = tasks.join_next().await {
            let (conn, run) = done.context("load task panicked")??;
            total.merge(&run);
            self.conns.push(conn);
        }
        total.elapsed = duration;
        Ok(total)
    }
}

/// When a connection sends its next request.
enum Pace {
    /// On a fixed schedule.
    Every { next: Instant, interval: Duration },
    /// As soon as the previous answer is in.
    BackToBack,
}

/// Sends on one connection until `end`, reopening it after an error.
async fn drive(
    addr: SocketAddr,
    mut conn: SendRequest<Empty<Bytes>>,
    mut pace: Pace,
    end: Instant,
) -> Result<(SendRequest<Empty<Bytes>>, Run)> {
    let mut run = Run::new();
    let mut free_at = Instant::now();
    loop {
        let from = match &mut pace {
            Pace::BackToBack => Instant::now(),
            Pace::Every { next, interval } => {
                let due = *next;
                *next += *interval;
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due).await;
                if free_at > due { due } else { Instant::now() }
            }
        };
        if from >= end {
            break;
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, request(&mut conn)).await {
            Ok(Ok(())) => {
                run.ok += 1;
                let nanos = from.elapsed().as_nanos().try_into().unwrap_or(u64::MAX);
                run.latency.saturating_record(nanos);
            }
            Ok(Err(_)) | Err(_) => {
                run.errors += 1;
                conn = open(addr).await?;
            }
        }
        free_at = Instant::now();
    }
    Ok((conn, run))
}

/// One GET, its body read to the end; an error unless the answer is 200.
async fn request(conn: &mut SendRequest<Empty<Bytes>>) -> Result<()> {
    conn.ready().await?;
    let req = http::Request::get("/bench")
        .header(http::header::HOST, HOST)
        .body(Empty::new())?;
    let rsp = conn.send_request(req).await?;
    let status = rsp.status();
    rsp.into_body().collect().await?;
    anyhow::ensure!(status == http::StatusCode::OK, "status {status}");
    Ok(())
}

async fn open(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}
