//! Failover benchmark (issue 7): a primary and a backup behind a TrafficSplit,
//! 200 idempotent GETs per second through a client sidecar; each run kills the
//! primary's processes, measures the time until 99% of requests succeed on the
//! backup and counts the failed requests, then revives the primary and waits
//! until traffic is back. Two modes run in the same invocation, each on its own
//! fresh cluster:
//!
//! - `controller`: the sidecar's fast path off (`--failover-fast-path=false`):
//!   traffic moves only when the controller flips the weights from endpoint
//!   readiness, as Linkerd's 0/1 failover controller does;
//! - `fast-path`: the same controller, plus the sidecar's own failover and retries.
//!
//! `cargo run -p multicluster-tests --bin bench-failover -- [runs]` (default 20);
//! the meshlink binaries must be built first (see docs/benchmarks.md).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use multicluster_tests::Harness;
use multicluster_tests::failover::{
    AUTHORITY, Bed, BedConfig, Load, failed_between, time_to_backup,
};
use tokio::time::Instant;

const RPS: u32 = 200;
const WORKERS: u32 = 20;
/// Measurement window after each kill.
const WINDOW: Duration = Duration::from_secs(3);
/// The controller's hold-down: short, so runs follow each other quickly.
const HOLD_DOWN: Duration = Duration::from_secs(1);

/// Figures of one mode.
struct Mode {
    name: &'static str,
    failover_ms: Vec<f64>,
    failed: Vec<f64>,
}

#[tokio::main]
async fn main() -> Result<()> {
    multicluster_tests::init_tracing();
    let runs: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()
        .context("runs must be a number")?
        .unwrap_or(20);
    let controller = bench("controller", false, runs).await?;
    let fast = bench("fast-path", true, runs).await?;
    println!(
        "\n{runs} runs each, {RPS} rps, failover time = kill -> 99% of requests on the backup"
    );
    println!("| mode | failover p50 | failover p99 | failed p50 | failed p99 | failed max |");
    println!("|---|---|---|---|---|---|");
    for m in [&controller, &fast] {
        println!(
            "| {} | {:.0} ms | {:.0} ms | {:.0} | {:.0} | {:.0} |",
            m.name,
            pct(&m.failover_ms, 50.0),
            pct(&m.failover_ms, 99.0),
            pct(&m.failed, 50.0),
            pct(&m.failed, 99.0),
            pct(&m.failed, 100.0),
        );
    }
    println!(
        "ratio controller/fast-path: failover p50 {:.1}x, p99 {:.1}x; failed requests p50 {} vs {}",
        pct(&controller.failover_ms, 50.0) / pct(&fast.failover_ms, 50.0).max(1.0),
        pct(&controller.failover_ms, 99.0) / pct(&fast.failover_ms, 99.0).max(1.0),
        pct(&controller.failed, 50.0),
        pct(&fast.failed, 50.0),
    );
    Ok(())
}

async fn bench(name: &'static str, fast_path: bool, runs: usize) -> Result<Mode> {
    let harness = Harness::builder().cluster("west").start().await?;
    let config = BedConfig {
        backends: vec!["web-primary".into(), "web-backup".into()],
        weights: vec![("web-primary".into(), 100), ("web-backup".into(), 0)],
        annotations: [(api::split::PRIMARY.to_string(), "web-primary".to_string())].into(),
        hold_down: HOLD_DOWN,
        fast_path,
    };
    let bed = Bed::start(&harness, &config).await?;
    let load = Load::start(bed.client_addr(), AUTHORITY, RPS, WORKERS);
    let mut mode = Mode {
        name,
        failover_ms: Vec::new(),
        failed: Vec::new(),
    };
    let mut log_seen = 0;
    for run in 1..=runs {
        wait_primary(&load).await?;
        let kill = Instant::now();
        bed.kill("web-primary")?;
        tokio::time::sleep(WINDOW).await;
        let samples = load.samples();
        let to_backup = time_to_backup(&samples, kill, kill + WINDOW, &["web-backup"])
            .context("99% on the backup was never reached")?;
        let failed = failed_between(&samples, kill, kill + WINDOW);
        println!(
            "{name} run {run}: 99% on the backup after {:.0} ms, {failed} failed",
            to_backup.as_secs_f64() * 1000.0
        );
        for s in samples
            .iter()
            .filter(|s| s.sent >= kill && s.backend.is_none())
        {
            let at = s.sent.saturating_duration_since(kill).as_secs_f64() * 1000.0;
            println!("  failed: sent {at:.0} ms after the kill: {}", s.failure);
        }
        // What the sidecar saw of this run's upstream failures.
        let log = bed.sidecar_log();
        for line in log
            .lines()
            .skip(log_seen)
            .filter(|l| l.contains("upstream request failed"))
        {
            println!("  sidecar: {line}");
        }
        log_seen = log.lines().count();
        mode.failover_ms.push(to_backup.as_secs_f64() * 1000.0);
        mode.failed.push(failed as f64);
        bed.revive("web-primary").await?;
    }
    load.stop();
    Ok(mode)
}

/// Waits until the last 100 answers all came from the primary.
async fn wait_primary(load: &Load) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let samples = load.samples();
        if samples.len() >= 100
            && samples[samples.len() - 100..]
                .iter()
                .all(|s| s.backend.as_deref() == Some("web-primary"))
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "traffic never returned to the primary"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Nearest-rank percentile.
fn pct(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}
