//! `demo`: brings up two local clusters, east and west, prints how to reach them and
//! keeps them up until Ctrl-C (or SIGTERM), then removes everything it created.

use std::time::Instant;

use anyhow::Context;
use multicluster_tests::{Binaries, Harness};

fn step(text: &str) {
    println!("==> {text}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    multicluster_tests::init_tracing();

    step("locating Kubernetes binaries (the first run builds them: several minutes)");
    let binaries = Binaries::locate().context("Kubernetes binaries")?;
    println!("    kube-apiserver: {}", binaries.kube_apiserver.display());
    if binaries.kube_controller_manager.is_none() {
        println!("    kube-controller-manager not built: running without it");
    }

    step("starting etcd, network namespaces and clusters east and west");
    let started = Instant::now();
    let harness = Harness::builder()
        .binaries(binaries)
        .cluster("east")
        .cluster("west")
        .start()
        .await
        .context("starting the clusters")?;
    step(&format!(
        "clusters ready in {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    let plan = harness.address_plan();
    for cluster in harness.clusters() {
        println!();
        println!("cluster {}", cluster.name());
        println!("    server:      {}", cluster.server_url());
        println!("    kubeconfig:  {}", cluster.kubeconfig_path().display());
        println!(
            "    try:         kubectl --kubeconfig {} get namespaces",
            cluster.kubeconfig_path().display()
        );
        println!("    zones:       {}", cluster.zones().join(", "));
        println!("    pod subnet:  {}", cluster.pod_subnet());
        println!("    gateway:     {}", cluster.gateway_address());
    }
    println!();
    println!("harness dir: {}", harness.dir().display());
    println!("network namespaces: {}*", plan.netns_prefix());
    println!("apiservers and etcd listen on {}", plan.host());
    step("ready; press Ctrl-C to stop and clean up");

    // The harness's signal handler cleans up and exits on Ctrl-C or SIGTERM.
    std::future::pending::<()>().await;
    Ok(())
}
