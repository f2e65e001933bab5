//! Data-plane benchmark (issue 4). One run on one machine with one client (this
//! binary's load generator) over four paths to the same app (`harness-echo
//! http`):
//!
//! - direct: client → app;
//! - meshlink: client → `proxy` (west) → `gateway` → `proxy` (east) → app, the
//!   release binaries with mutual TLS 1.3 between them;
//! - nginx: the same three hops with Debian's nginx and mutual TLS 1.3;
//! - tcp relay: the same three hops as plaintext TCP relays that know nothing of
//!   HTTP (HAProxy `mode tcp`), the floor any hop costs on this machine.
//!
//! Each path is measured paced at 1,000 and 5,000 HTTP/1 requests per second (open
//! loop, 16 connections) and closed loop (64 connections) for its maximum
//! throughput, with the hops' CPU time and resident memory read from /proc. The
//! paths take turns within each phase, in rounds (see [`ROUNDS`]), so a change in
//! machine load hits them all.
//! Prints a Markdown table: figures, added latency per hop, meshlink's ratios to
//! the other paths, and the issue's goals.
//!
//! `scripts/bench-dataplane.sh [SECONDS]` builds and runs it (SECONDS measured
//! per path and phase, default 10, after 2 s of warm-up on the same connections).

mod load;
mod meshlink;
mod nginx;
mod path;
mod relay;
mod report;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use multicluster_tests::{free_addr, meshlink_binary, procstat};
use tokio::time::Instant;

use load::{Client, Load};
use path::{Certs, Hop, Path, wait_listening};
use report::{Measured, PerPath, Results};

const RATES: [f64; 2] = [1000.0, 5000.0];
const PACED_CONNECTIONS: usize = 16;
const CLOSED_CONNECTIONS: usize = 64;
const WARMUP: Duration = Duration::from_secs(2);
/// Each phase's measured time is split into this many rounds, and the paths
/// take turns round by round, so a burst of load from outside the benchmark
/// falls on all paths alike rather than on whichever ran then.
const ROUNDS: u32 = 5;
/// How often resident memory is sampled during a run.
const RSS_SAMPLE: Duration = Duration::from_millis(100);

#[tokio::main]
async fn main() -> Result<()> {
    multicluster_tests::init_tracing();
    let seconds: u64 = match std::env::args().nth(1) {
        Some(s) => s.parse().with_context(|| format!("SECONDS {s:?}"))?,
        None => 10,
    };
    let measured = Duration::from_secs(seconds);
    let dir = tempfile::Builder::new()
        .prefix("bench-dataplane")
        .tempdir()?;
    let certs = Certs::issue(dir.path())?;

    let app_addr = free_addr()?;
    let mut app = Command::new(meshlink_binary("harness-echo")?);
    app.args(["http", &app_addr.port().to_string(), "app"]);
    let mut app = vec![Hop::spawn("app", app, dir.path())?];
    wait_listening(&mut app, "app", [app_addr]).await?;

    let paths: PerPath<Path> = [
        Path {
            name: "direct",
            entry: app_addr,
            hops: Vec::new(),
        },
        meshlink::start(dir.path(), &certs, app_addr).await?,
        nginx::start(dir.path(), &certs, app_addr).await?,
        relay::start(dir.path(), app_addr).await?,
    ];
    let idle_kib = try_each(&paths, Path::rss_kib)?;
    let load_start = procstat::load_average();
    eprintln!(
        "load average {load_start}; {seconds} s per path and phase in {ROUNDS} rounds, \
         after {WARMUP:?} of warm-up"
    );

    let round = measured / ROUNDS;
    let mut paced = Vec::new();
    for rate in RATES {
        let runs = phase(&paths, Load::Paced(rate), PACED_CONNECTIONS, round).await?;
        for (path, m) in paths.iter().zip(&runs) {
            eprintln!(
                "{} at {rate} rps: p99 {:?}",
                path.name,
                m.run.quantile(0.99)
            );
        }
        paced.push((rate, runs));
    }
    let max = phase(&paths, Load::Closed, CLOSED_CONNECTIONS, round).await?;
    for (path, m) in paths.iter().zip(&max) {
        eprintln!(
            "{} max throughput: {:.0} rps",
            path.name,
            m.run.throughput()
        );
    }
    let results = Results {
        load_start,
        load_end: procstat::load_average(),
        connections: (PACED_CONNECTIONS, CLOSED_CONNECTIONS),
        paced,
        max,
        idle_kib,
        peak_kib: try_each(&paths, |p| {
            p.hops.iter().map(|h| h.memory_kib("VmHWM")).collect()
        })?,
    };
    println!("{}", report::render(&results));
    Ok(())
}

/// Measures every path under `load` on `connections` connections each: a
/// warm-up per path, then [`ROUNDS`] rounds of `round` in which the paths take
/// turns. Each path's rounds add up to one measurement.
async fn phase(
    paths: &PerPath<Path>,
    load: Load,
    connections: usize,
    round: Duration,
) -> Result<PerPath<Measured>> {
    let mut clients = Vec::new();
    for path in paths {
        let mut client = Client::connect(path.entry, connections).await?;
        client.load(load, WARMUP).await?;
        clients.push(client);
    }
    let mut totals: Vec<Option<Measured>> = paths.iter().map(|_| None).collect();
    for _ in 0..ROUNDS {
        for ((path, client), total) in paths.iter().zip(&mut clients).zip(&mut totals) {
            let m = measure(path, client.load(load, round)).await?;
            match total {
                Some(t) => t.extend(&m),
                None => *total = Some(m),
            }
        }
    }
    Ok(per_path(totals.into_iter().flatten().collect()))
}

/// Runs `run` while sampling the path's memory, and takes the CPU time its hops
/// used meanwhile.
async fn measure(path: &Path, run: impl Future<Output = Result<load::Run>>) -> Result<Measured> {
    let cpu_before = path.cpu()?;
    let mut rss_kib = path.rss_kib()?;
    let mut run = std::pin::pin!(run);
    let mut tick = tokio::time::interval_at(Instant::now() + RSS_SAMPLE, RSS_SAMPLE);
    let run = loop {
        tokio::select! {
            done = &mut run => break done?,
            _ = tick.tick() => {
                for (max, now) in rss_kib.iter_mut().zip(path.rss_kib()?) {
                    *max = (*max).max(now);
                }
            }
        }
    };
    let cpu = path.cpu()?.into_iter().zip(cpu_before);
    let cpu = cpu.map(|(after, before)| after.saturating_sub(before));
    Ok(Measured {
        run,
        cpu: cpu.collect(),
        rss_kib,
    })
}

fn try_each<T>(paths: &PerPath<Path>, f: impl Fn(&Path) -> Result<T>) -> Result<PerPath<T>> {
    let each: Result<Vec<T>> = paths.iter().map(f).collect();
    Ok(per_path(each?))
}

fn per_path<T>(v: Vec<T>) -> PerPath<T> {
    v.try_into()
        .unwrap_or_else(|_| unreachable!("one entry per path"))
}
