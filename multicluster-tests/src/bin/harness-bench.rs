//! `harness-bench`: measures warm start time and memory of harness clusters.
//!
//! `harness-bench [CLUSTERS] [ROUNDS] [--no-kcm]` starts a harness with CLUSTERS
//! clusters ROUNDS times and prints, per round, the time until every apiserver was
//! ready, then the peak resident memory (VmHWM) of each control-plane process after
//! the last round has run for ten seconds.

use std::time::{Duration, Instant};

use anyhow::Context;
use multicluster_tests::{Binaries, Harness};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    multicluster_tests::init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let clusters: usize = args
        .first()
        .map_or(Ok(1), |a| a.parse())
        .context("CLUSTERS")?;
    let rounds: usize = args.get(1).map_or(Ok(3), |a| a.parse()).context("ROUNDS")?;
    let kcm = !args.iter().any(|a| a == "--no-kcm");
    let binaries = Binaries::locate()?;

    let mut last = None;
    for round in 1..=rounds {
        drop(last.take());
        let mut builder = Harness::builder().binaries(binaries.clone());
        for i in 0..clusters {
            builder = builder.cluster(&format!("c{i}"));
        }
        if !kcm {
            builder = builder.without_controller_manager();
        }
        let started = Instant::now();
        let harness = builder.start().await?;
        println!(
            "round {round}: {clusters} cluster(s) ready in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        last = Some(harness);
    }
    let Some(harness) = last else { return Ok(()) };
    // Let controllers finish their initial sync before reading peaks.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut total = 0;
    for pid in harness.pids() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
        let kib = field_kib(&status, "VmHWM:");
        total += kib;
        println!(
            "{:<24} peak RSS {:>7.1} MiB",
            comm.trim(),
            kib as f64 / 1024.0
        );
    }
    println!("total peak RSS {:.1} MiB", total as f64 / 1024.0);
    Ok(())
}

fn field_kib(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
