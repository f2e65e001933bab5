//! Discovery fan-out benchmark (issue 5): on a real apiserver with 1,000 Services,
//! 1,000 proxies' streams subscribe to one Service; each of N endpoint changes is
//! written to the apiserver and timed until the last subscriber has it. The same
//! change is timed at a plain kube-rs watcher too, so the report shows what
//! discovery adds on top of watching the apiserver directly. The controller runs
//! as its own process so its memory can be read from /proc.
//!
//! `cargo run --release -p multicluster-tests --bin bench-discovery -- [changes]`

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use api::discovery::discovery_client::DiscoveryClient;
use api::discovery::{WatchRequest, update::Kind};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use multicluster_tests::Harness;
use tokio::sync::mpsc;
use tokio::time::Instant;

const SERVICES: usize = 1000;
const SUBSCRIBERS: usize = 1000;
const NS: &str = "bench";

#[tokio::main]
async fn main() -> Result<()> {
    multicluster_tests::init_tracing();
    let changes: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(200);
    let harness = Harness::builder()
        .cluster("west")
        .without_controller_manager()
        .start()
        .await?;
    let west = harness.cluster("west");
    let client = west.client();

    let start = Instant::now();
    create_services(&client).await?;
    println!(
        "created {SERVICES} Services with EndpointSlices in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    let controller = multicluster_tests::ControllerProcess::start(west).await?;
    let pid = controller.pid().context("controller exited")?;

    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    subscribe(controller.discovery.port(), tx.clone()).await?;
    println!(
        "{SUBSCRIBERS} subscribers connected; controller RSS {} MiB",
        rss_mib(pid, "VmRSS")?
    );
    let watcher_rx = direct_watcher(client.clone()).await?;

    let mut fanout = Vec::new();
    let mut direct = Vec::new();
    let mut watcher_rx = watcher_rx;
    for change in 1..=changes {
        let t0 = Instant::now();
        apply_slice(&client, 0, change).await?;
        direct.push(wait_marker(&mut watcher_rx, change).await? - t0);
        let mut seen = 0;
        while seen < SUBSCRIBERS {
            let (id, at) = rx.recv().await.context("subscribers gone")?;
            if id == change {
                seen += 1;
                if seen == SUBSCRIBERS {
                    fanout.push(at - t0);
                }
            }
        }
    }
    let peak = rss_mib(pid, "VmHWM")?;
    report(&fanout, &direct, peak);
    controller.terminate().await?;
    Ok(())
}

async fn create_services(client: &Client) -> Result<()> {
    let pp = PatchParams::apply("bench-discovery").force();
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(NS.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .patch(NS, &pp, &Patch::Apply(&ns))
        .await?;
    futures::stream::iter(0..SERVICES)
        .map(|i| async move {
            let svc = Service {
                metadata: ObjectMeta {
                    name: Some(format!("svc-{i}")),
                    namespace: Some(NS.into()),
                    ..Default::default()
                },
                // Headless: the harness's /24 Service range cannot hold 1,000 cluster
                // IPs, and discovery by name does not need them.
                spec: Some(ServiceSpec {
                    cluster_ip: Some("None".into()),
                    ports: Some(vec![ServicePort {
                        name: Some("http".into()),
                        port: 8080,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let pp = PatchParams::apply("bench-discovery").force();
            Api::<Service>::namespaced(client.clone(), NS)
                .patch(&format!("svc-{i}"), &pp, &Patch::Apply(&svc))
                .await?;
            apply_slice(client, i, 0).await
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// The address that marks change `n` (a second endpoint next to a fixed one).
fn marker(n: usize) -> String {
    format!("198.18.{}.{}", 100 + n / 250, 1 + n % 250)
}

async fn apply_slice(client: &Client, svc: usize, change: usize) -> Result<()> {
    let name = format!("svc-{svc}");
    let endpoint = |ip: String| Endpoint {
        addresses: vec![ip],
        ..Default::default()
    };
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(NS.into()),
            labels: Some([(api::labels::SERVICE_NAME.to_string(), name.clone())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(80),
            ..Default::default()
        }]),
        endpoints: vec![endpoint("198.18.99.1".into()), endpoint(marker(change))],
    };
    let pp = PatchParams::apply("bench-discovery").force();
    Api::<EndpointSlice>::namespaced(client.clone(), NS)
        .patch(&name, &pp, &Patch::Apply(&slice))
        .await?;
    Ok(())
}

/// Opens the subscribers (100 streams per connection) and forwards, for every
/// marker address a subscriber learns, the change number and when it arrived.
async fn subscribe(port: u16, tx: mpsc::UnboundedSender<(usize, Instant)>) -> Result<()> {
    let markers: HashMap<String, usize> = (0..=10_000)
        .map(|n| (format!("{}:80", marker(n)), n))
        .collect();
    let markers = std::sync::Arc::new(markers);
    for conn in 0..SUBSCRIBERS / 100 {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
            .connect()
            .await?;
        for i in 0..100 {
            let mut client = DiscoveryClient::new(channel.clone());
            let zone = format!("zone-{}", (conn * 100 + i) % 3);
            let target = format!("svc-0.{NS}.svc.cluster.local:8080");
            let mut stream = client
                .watch(WatchRequest { target, zone })
                .await?
                .into_inner();
            stream.message().await?.context("no first update")?;
            let (tx, markers) = (tx.clone(), markers.clone());
            tokio::spawn(async move {
                while let Ok(Some(update)) = stream.message().await {
                    let now = Instant::now();
                    if let Some(Kind::Add(set)) = update.kind {
                        for ep in set.endpoints {
                            if let Some(n) = markers.get(&ep.address) {
                                let _ = tx.send((*n, now));
                            }
                        }
                    }
                }
            });
        }
    }
    Ok(())
}

/// A plain kube-rs watcher of svc-0's slice, reporting each marker it sees;
/// returns once its initial list is done, so no change is missed.
async fn direct_watcher(client: Client) -> Result<mpsc::UnboundedReceiver<(usize, Instant)>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (listed_tx, listed) = tokio::sync::oneshot::channel();
    let mut listed_tx = Some(listed_tx);
    let api = Api::<EndpointSlice>::namespaced(client, NS);
    let config = watcher::Config::default().fields("metadata.name=svc-0");
    tokio::spawn(async move {
        let mut events = Box::pin(watcher(api, config));
        while let Some(Ok(event)) = events.next().await {
            let now = Instant::now();
            if let watcher::Event::InitDone = event {
                listed_tx.take().map(|l| l.send(()));
            }
            if let watcher::Event::Apply(slice) = event {
                let n = slice
                    .endpoints
                    .iter()
                    .flat_map(|e| &e.addresses)
                    .find_map(|a| {
                        let (c, d) = a.strip_prefix("198.18.")?.split_once('.')?;
                        let block = c.parse::<usize>().ok()?.checked_sub(100)?;
                        Some(block * 250 + d.parse::<usize>().ok()?.checked_sub(1)?)
                    });
                if let Some(n) = n {
                    let _ = tx.send((n, now));
                }
            }
        }
    });
    listed
        .await
        .context("direct watcher failed before listing")?;
    Ok(rx)
}

/// When the direct watcher saw change `change`.
async fn wait_marker(
    rx: &mut mpsc::UnboundedReceiver<(usize, Instant)>,
    change: usize,
) -> Result<Instant> {
    loop {
        let (n, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .context("the direct watcher missed a change")?
            .context("direct watcher ended")?;
        if n == change {
            return Ok(at);
        }
    }
}

fn rss_mib(pid: u32, field: &str) -> Result<u64> {
    Ok(multicluster_tests::procstat::status_kib(pid, field)? / 1024)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(fanout: &[Duration], direct: &[Duration], peak_mib: u64) {
    let (mut f, mut d) = (fanout.to_vec(), direct.to_vec());
    f.sort();
    d.sort();
    let ms = |x: Duration| x.as_secs_f64() * 1e3;
    println!("changes: {}", f.len());
    println!("{:<44} {:>8} {:>8} {:>8}", "", "p50 ms", "p99 ms", "max ms");
    for (name, v) in [
        ("apiserver -> one kube-rs watcher (baseline)", &d),
        ("apiserver -> last of 1,000 discovery streams", &f),
    ] {
        println!(
            "{name:<44} {:>8.1} {:>8.1} {:>8.1}",
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.99)),
            ms(v[v.len() - 1])
        );
    }
    println!(
        "ratio discovery/baseline: p50 {:.2}x, p99 {:.2}x",
        ms(percentile(&f, 0.5)) / ms(percentile(&d, 0.5)),
        ms(percentile(&f, 0.99)) / ms(percentile(&d, 0.99))
    );
    println!(
        "controller peak RSS (VmHWM) with {SERVICES} services and {SUBSCRIBERS} subscribers: {peak_mib} MiB"
    );
}
