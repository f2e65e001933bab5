//! `demo`: meshlink end to end on this machine. Two clusters, east and west, each
//! with its control plane, gateway and mirror (the shared
//! `multicluster_tests::scenario`); west linked to east; Service `demo/svc`
//! exported in east; then west's client pod calls `svc-east` through its sidecar
//! and east's gateway (a thread of this process inside the pod's network
//! namespace plays the pod's app), printing what it got and a summary once a
//! second until Ctrl-C (or SIGTERM), when everything it created is removed.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use multicluster_tests::scenario::{CLIENT_OUTBOUND_PORT, MIRROR_AUTHORITY};
use multicluster_tests::traffic::{Answer, HttpClient, spawn_in_netns};
use multicluster_tests::{Binaries, Harness, Scenario};

/// Pause between the client's requests (about 50 a second, one at a time).
const PACE: Duration = Duration::from_millis(20);
/// A request without an answer after this counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the first request may keep failing before the demo gives up.
const FIRST_ANSWER_WITHIN: Duration = Duration::from_secs(30);

fn step(text: &str) {
    println!("==> {text}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    multicluster_tests::init_tracing();
    let started = Instant::now();

    step(
        "locating Kubernetes binaries (the first run builds them from Go modules: about ten minutes)",
    );
    let binaries = Binaries::locate().context("Kubernetes binaries")?;
    println!("    kube-apiserver: {}", binaries.kube_apiserver.display());

    step("starting etcd, network namespaces and clusters east and west");
    let harness = Harness::builder()
        .binaries(binaries)
        .cluster("east")
        .cluster("west")
        .start()
        .await
        .context("starting the clusters")?;
    step(&format!(
        "clusters ready after {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    print_clusters(&harness);

    let scenario = Scenario::start(&harness, &mut step)
        .await
        .context("starting meshlink")?;
    print_pods(&scenario);

    let pod = scenario.client_pod();
    let sidecar = SocketAddr::from((Ipv4Addr::LOCALHOST, CLIENT_OUTBOUND_PORT));
    step(&format!(
        "west: pod {} calls http://{MIRROR_AUTHORITY}/ through its sidecar ({sidecar} in the pod), east's gateway and the app's sidecar",
        pod.name()
    ));
    let client = spawn_in_netns(pod.netns(), move || async move {
        call_svc_east(sidecar, started)
            .await
            .map_err(|e| multicluster_tests::Error::Invalid(format!("{e:#}")))
    })?;
    // The client runs until Ctrl-C or SIGTERM; the harness's handler for them
    // cleans up and exits. If it stops on its own, the pods' logs say why (they
    // go away with the harness).
    let outcome = match tokio::task::spawn_blocking(move || client.join()).await? {
        Ok(result) => result.map_err(anyhow::Error::from),
        Err(_) => Err(anyhow::anyhow!("the client thread panicked")),
    };
    if outcome.is_err() {
        eprintln!("{}", scenario.log_tails());
    }
    outcome
}

/// West's app, inside the client pod: the first answer, then requests until the
/// process ends.
async fn call_svc_east(sidecar: SocketAddr, started: Instant) -> anyhow::Result<()> {
    let mut http = HttpClient::new(sidecar, MIRROR_AUTHORITY, REQUEST_TIMEOUT);
    let answer = first_answer(&mut http).await?;
    println!(
        "    got: {} {} (first answer {:.1} s after the demo started)",
        answer.status,
        answer.body.trim_end(),
        started.elapsed().as_secs_f64()
    );
    step("ready; press Ctrl-C to stop and clean up");
    run_client(&mut http).await
}

/// The first successful answer; discovery already resolved `svc-east`, but the
/// path's connections are still being made, so a few attempts may be needed.
async fn first_answer(http: &mut HttpClient) -> anyhow::Result<Answer> {
    let deadline = Instant::now() + FIRST_ANSWER_WITHIN;
    loop {
        let last = match http.get("/hello").await {
            Ok(answer) if answer.status == 200 => return Ok(answer),
            Ok(answer) => format!("HTTP {}", answer.status),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            anyhow::bail!("no answer through the mesh within {FIRST_ANSWER_WITHIN:?}: {last}");
        }
        println!("    not yet ({last}); retrying");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_clusters(harness: &Harness) {
    for cluster in harness.clusters() {
        println!(
            "    {}: server {}, kubeconfig {}, pod subnet {}, gateway {}",
            cluster.name(),
            cluster.server_url(),
            cluster.kubeconfig_path().display(),
            cluster.pod_subnet(),
            cluster.gateway_address()
        );
    }
    println!("harness dir: {}", harness.dir().display());
    println!(
        "network namespaces: {}*",
        harness.address_plan().netns_prefix()
    );
}

fn print_pods(scenario: &Scenario) {
    println!("    pods (logs in <harness dir>/<cluster>/pods/<pod>.log):");
    for pod in scenario.pods() {
        println!(
            "      {:<6} {:<16} {:<15} netns {}",
            pod.cluster(),
            pod.name(),
            pod.ip(),
            pod.netns()
        );
    }
}

/// Sends requests one after another, printing a [`Window`] summary each second.
async fn run_client(http: &mut HttpClient) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut window = Window::default();
    let mut report = tokio::time::interval(Duration::from_secs(1));
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    report.tick().await;
    loop {
        tokio::select! {
            _ = report.tick() => {
                println!("[{:>4} s] {}", started.elapsed().as_secs(), window.take());
            }
            () = tokio::time::sleep(PACE) => {
                let sent = Instant::now();
                let result = http.get("/").await;
                window.record(sent.elapsed(), result.map(|a| (a.status, a.body)));
            }
        }
    }
}

/// What the client saw during one reporting interval.
#[derive(Debug, Default)]
struct Window {
    latencies: Vec<Duration>,
    ok: u64,
    failed: u64,
    last: String,
}

impl Window {
    fn record(&mut self, latency: Duration, result: multicluster_tests::Result<(u16, String)>) {
        self.latencies.push(latency);
        match result {
            Ok((200, body)) => {
                self.ok += 1;
                self.last = body.trim_end().to_owned();
            }
            Ok((status, _)) => {
                self.failed += 1;
                self.last = format!("HTTP {status}");
            }
            Err(e) => {
                self.failed += 1;
                self.last = format!("error: {e}");
            }
        }
    }

    /// The summary line, resetting the window for the next interval.
    fn take(&mut self) -> String {
        let this = std::mem::take(self);
        let total = this.ok + this.failed;
        if total == 0 {
            return "no requests completed".into();
        }
        let mut sorted = this.latencies;
        sorted.sort();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        format!(
            "{total} requests, {:.1}% ok, p50 {:.2} ms, p99 {:.2} ms, last: {}",
            100.0 * this.ok as f64 / total as f64,
            at(0.50).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
            this.last
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_successes_and_quantiles() {
        let mut w = Window::default();
        for ms in 1..=100 {
            w.record(Duration::from_millis(ms), Ok((200, "svc-1 GET /\n".into())));
        }
        w.record(Duration::from_millis(500), Ok((503, String::new())));
        assert_eq!(
            w.take(),
            "101 requests, 99.0% ok, p50 51.00 ms, p99 100.00 ms, last: HTTP 503"
        );
        assert_eq!(w.take(), "no requests completed");
    }
}
