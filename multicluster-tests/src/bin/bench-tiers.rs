//! Cost-tier balancing benchmark (issue 8): the same open-loop workload through
//! three balancers — meshlink's tiered policy, plain P2C over every endpoint
//! (`all`) and a static in-zone-only policy (`cheapest`, what topology hints do
//! when balanced) — in one run, balanced and with one hot zone, plus the
//! tiered policy with lower water marks (4/2) to show that knob.
//!
//! Three zones with two endpoints each; every zone's clients use their own
//! `proxy::balance::Balancer` (as a proxy in that zone would) with tiers
//! relative to their zone. An endpoint is modelled as a server with 4 workers,
//! a 4-6 ms service time and a queue of at most 32 (beyond it, a request is
//! refused at once: an error). A cross-zone request adds 1 ms of network time,
//! an in-zone one none. Time is Tokio's paused clock (1 ms resolution), so the run is a
//! deterministic-speed simulation of the balancer (its real code, its real
//! load signals) against modelled servers, not a CPU benchmark; the harness
//! test `multicluster-tests/tests/tiers.rs` runs the real processes.
//!
//! `cargo run -p multicluster-tests --bin bench-tiers -- [seconds]` (the figures
//! do not depend on the build profile: time is simulated).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use proxy::balance::tiered::{Policy, TierConfig};
use proxy::balance::{BalanceConfig, Balancer};
use proxy::discovery::Endpoint;
use rand::Rng;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

const ZONES: usize = 3;
const PER_ZONE: usize = 2;
const WORKERS: usize = 4;
const MAX_QUEUE: usize = 32;
/// Requests per second per zone in the balanced case (half the zone's capacity).
const RATE: f64 = 800.0;
/// What crossing zones adds to a round trip (in-zone network time is taken as
/// zero: Tokio's timer resolution is 1 ms).
const CROSS_ZONE_RTT: Duration = Duration::from_millis(1);
/// The window after the hot zone starts that is reported separately.
const EARLY: Duration = Duration::from_secs(6);

/// A modelled endpoint.
#[derive(Debug)]
struct Server {
    zone: usize,
    workers: Semaphore,
    queued: AtomicUsize,
}

impl Server {
    /// Serves one request; `Err` when the queue is full.
    async fn serve(&self) -> Result<(), ()> {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUE {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(());
        }
        let permit = self.workers.acquire().await;
        let ms = rand::rng().random_range(4..=6);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        drop(permit);
        self.queued.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }
}

/// One finished request.
#[derive(Clone, Copy, Debug)]
struct Outcome {
    started: Duration,
    latency: Duration,
    ok: bool,
    cross_zone: bool,
}

/// Figures of one run.
#[derive(Debug)]
struct Figures {
    cross_zone: f64,
    p50: Duration,
    p99: Duration,
    errors: f64,
}

fn figures(outcomes: &[Outcome]) -> Figures {
    let mut lat: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.ok)
        .map(|o| o.latency)
        .collect();
    lat.sort();
    let q = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    let n = outcomes.len().max(1) as f64;
    Figures {
        cross_zone: outcomes.iter().filter(|o| o.cross_zone).count() as f64 / n,
        p50: q(0.5),
        p99: q(0.99),
        errors: outcomes.iter().filter(|o| !o.ok).count() as f64 / n,
    }
}

/// Runs the workload (requests per second per zone in `rates`) for `length`
/// with balancers configured by `config`; returns every outcome.
async fn run(config: BalanceConfig, rates: [f64; ZONES], length: Duration) -> Vec<Outcome> {
    let servers: Vec<Arc<Server>> = (0..ZONES * PER_ZONE)
        .map(|i| {
            Arc::new(Server {
                zone: i / PER_ZONE,
                workers: Semaphore::new(WORKERS),
                queued: AtomicUsize::new(0),
            })
        })
        .collect();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let t0 = Instant::now();
    let mut generators = Vec::new();
    for (zone, rate) in rates.into_iter().enumerate() {
        let balancer = Arc::new(balancer(zone, &servers, config));
        let tx = tx.clone();
        generators.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            while t0.elapsed() < length {
                tick.tick().await;
                tokio::spawn(request(balancer.clone(), zone, t0, tx.clone()));
            }
        }));
    }
    drop(tx);
    for g in generators {
        let _ = g.await;
    }
    let mut outcomes = Vec::new();
    while let Some(o) = rx.recv().await {
        outcomes.push(o);
    }
    outcomes
}

/// The balancer of clients in `zone`: every server, tier 0 in-zone, 1 elsewhere.
fn balancer(zone: usize, servers: &[Arc<Server>], config: BalanceConfig) -> Balancer<Arc<Server>> {
    let endpoints: Vec<Endpoint> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut ep = Endpoint::plain(([10, 0, 0, 1], i as u16 + 1).into());
            ep.zone = Some(format!("zone-{}", s.zone));
            ep.tier = u32::from(s.zone != zone);
            ep
        })
        .collect();
    let (_, rx) = watch::channel(Arc::new(endpoints));
    let servers = servers.to_vec();
    Balancer::new(rx, config, move |ep| {
        servers[usize::from(ep.addr.port()) - 1].clone()
    })
}

async fn request(
    balancer: Arc<Balancer<Arc<Server>>>,
    zone: usize,
    t0: Instant,
    tx: mpsc::UnboundedSender<Outcome>,
) {
    let started = t0.elapsed();
    let Some(pick) = balancer.pick() else { return };
    let server = pick.service().clone();
    let cross_zone = server.zone != zone;
    let begin = Instant::now();
    let ok = server.serve().await.is_ok();
    if cross_zone {
        tokio::time::sleep(CROSS_ZONE_RTT).await;
    }
    if ok {
        pick.record();
    }
    drop(pick);
    let _ = tx.send(Outcome {
        started,
        latency: begin.elapsed(),
        ok,
        cross_zone,
    });
}

fn print_case(name: &str, rows: &[(&str, Figures)]) {
    println!("\n{name}");
    println!(
        "{:<22} {:>11} {:>9} {:>9} {:>9}",
        "balancer", "cross-zone", "p50 ms", "p99 ms", "errors"
    );
    for (policy, f) in rows {
        println!(
            "{policy:<22} {:>10.2}% {:>9.2} {:>9.2} {:>8.2}%",
            100.0 * f.cross_zone,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            100.0 * f.errors
        );
    }
    let p99 = |i: usize| rows[i].1.p99.as_secs_f64();
    println!("tiered/P2C p99: {:.2}x", p99(0) / p99(1).max(1e-9));
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<()> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20);
    let length = Duration::from_secs(seconds);
    let with = |policy, high_water, low_water| {
        let mut c = BalanceConfig::default();
        c.tiers = TierConfig {
            policy,
            high_water,
            low_water,
            ..c.tiers
        };
        c
    };
    let policies = [
        ("tiered (8/4, default)", with(Policy::Tiered, 8.0, 4.0)),
        ("p2c over all", with(Policy::All, 8.0, 4.0)),
        ("in-zone only", with(Policy::Cheapest, 8.0, 4.0)),
        ("tiered (4/2)", with(Policy::Tiered, 4.0, 2.0)),
    ];
    println!(
        "{ZONES} zones x {PER_ZONE} endpoints ({WORKERS} workers, 4-6 ms, queue {MAX_QUEUE}), {seconds} s simulated per run"
    );
    let balanced = [RATE; ZONES];
    // The hot zone gets 1.5x its capacity; the others a quarter of theirs.
    let hot = [3.0 * RATE, RATE / 2.0, RATE / 2.0];
    for (case, rates) in [
        ("balanced, 800 req/s per zone", balanced),
        ("one hot zone: 2400, 400, 400 req/s", hot),
    ] {
        let mut whole = Vec::new();
        let mut early = Vec::new();
        for (name, config) in policies {
            let outcomes = run(config, rates, length).await;
            let first: Vec<Outcome> = outcomes
                .iter()
                .copied()
                .filter(|o| o.started < EARLY)
                .collect();
            whole.push((name, figures(&outcomes)));
            early.push((name, figures(&first)));
        }
        print_case(&format!("{case}, whole run"), &whole);
        print_case(&format!("{case}, first {} s", EARLY.as_secs()), &early);
    }
    Ok(())
}
