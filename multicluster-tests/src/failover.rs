//! The failover bench shared by the failover tests and `bench-failover`: one
//! cluster (`west`) with the real `controller` (discovery and failover, a short
//! hold-down), backend pods running `harness-echo http` each published as its own
//! Service, a root Service `web` with no endpoints and a TrafficSplit over the
//! backends, and a client pod whose sidecar sends every connection to `web`.
//!
//! There is no kubelet, so [`Bed`] runs a stand-in: every [`PROBE_PERIOD`] it
//! connects to each backend pod and publishes the pod as its Service's endpoint
//! only while it accepts, as a readiness probe with failure threshold 1 would.
//! [`Load`] drives steady HTTP traffic and records every answer, and
//! [`time_to_backup`] turns the record into the figures the tests assert.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::split::TrafficSplit;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{CustomResourceExt, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::binaries::meshlink_binary;
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::harness::Harness;
use crate::pod::Pod;
use crate::scenario::{
    ADMIN_PORT, CONTROLLER_ADMIN_PORT, DISCOVERY_PORT, INBOUND_PORT, Pki, discovery_args,
    first_zone, identity, sidecar_args, start_controller, tls_args, wait_ready,
};
use crate::traffic::HttpClient;

/// Namespace of the split and its Services.
pub const NAMESPACE: &str = "shop";
/// The root Service clients call.
pub const ROOT: &str = "web";
/// The Service port of the root and of every backend (where the apps listen).
pub const PORT: u16 = 8080;
/// The authority the client sidecar sends every connection to.
pub const AUTHORITY: &str = "web.shop.svc.cluster.local:8080";
/// How often the kubelet stand-in probes the backends.
pub const PROBE_PERIOD: Duration = Duration::from_millis(100);
/// The client sidecar's outbound port.
const OUTBOUND_PORT: u16 = 4140;
const WITHIN: Duration = Duration::from_secs(60);

/// What a bed runs.
#[derive(Clone, Debug)]
pub struct BedConfig {
    /// Backend Service names; each gets one pod answering with its name.
    pub backends: Vec<String>,
    /// The split: `(backend, weight)` in spec order.
    pub weights: Vec<(String, u32)>,
    /// Failover annotations of the split (`failover.meshlink.io/primary`, `order`).
    pub annotations: BTreeMap<String, String>,
    /// The controller's `--failover-hold-down-ms`.
    pub hold_down: Duration,
    /// The client sidecar's `--failover-fast-path`.
    pub fast_path: bool,
}

/// A running failover bed.
pub struct Bed {
    client: kube::Client,
    controller: Pod,
    sidecar: Pod,
    apps: Arc<BTreeMap<String, Pod>>,
    probe: JoinHandle<()>,
}

impl std::fmt::Debug for Bed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bed")
            .field("apps", &self.apps.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.probe.abort();
    }
}

impl Bed {
    /// Starts everything on `harness`'s cluster `west` and returns once the
    /// controller manages the split and the client sidecar answers from the
    /// first tier.
    pub async fn start(harness: &Harness, config: &BedConfig) -> Result<Self> {
        let west = harness
            .get("west")
            .ok_or_else(|| Error::Invalid("the failover bed needs a cluster west".into()))?;
        let zone = first_zone(west)?;
        install_crd(west).await?;
        let mut apps = BTreeMap::new();
        for name in &config.backends {
            let pod = west.create_pod(name, &zone)?;
            spawn_app(&pod, name)?;
            pod.wait_listening(PORT, WITHIN).await?;
            west.publish(NAMESPACE, name, PORT, &[&pod]).await?;
            apps.insert(name.clone(), pod);
        }
        west.publish(NAMESPACE, ROOT, PORT, &[]).await?;
        apply_split(west, config).await?;
        let hold_down = format!("--failover-hold-down-ms={}", config.hold_down.as_millis());
        let controller = start_controller(west, "controller", &zone, &[hold_down]).await?;
        let discovery = SocketAddr::new(IpAddr::V4(controller.ip()), DISCOVERY_PORT);
        let pki = Pki::new(&harness.dir().join("failover-certs"))?;
        let sidecar = start_sidecar(west, &zone, &pki, discovery, config.fast_path).await?;
        let apps = Arc::new(apps);
        let probe = spawn_readiness(west.client(), NAMESPACE, apps.clone());
        let bed = Self {
            client: west.client(),
            controller,
            sidecar,
            apps,
            probe,
        };
        bed.wait_split(WITHIN, |s| {
            s.annotations().contains_key(api::split::ACTIVE_TIER)
        })
        .await?;
        Ok(bed)
    }

    /// Where test code (root namespace) reaches the client sidecar.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.sidecar.ip()), OUTBOUND_PORT)
    }

    /// Kills every process of backend `name`'s pod.
    pub fn kill(&self, name: &str) -> Result<()> {
        self.app(name)?.kill_processes();
        Ok(())
    }

    /// Starts backend `name`'s app again and waits until it accepts.
    pub async fn revive(&self, name: &str) -> Result<()> {
        let pod = self.app(name)?;
        spawn_app(pod, name)?;
        pod.wait_listening(PORT, WITHIN).await
    }

    /// The split as the apiserver has it now.
    pub async fn split(&self) -> Result<TrafficSplit> {
        Api::<TrafficSplit>::namespaced(self.client.clone(), NAMESPACE)
            .get(ROOT)
            .await
            .map_err(Error::kube("reading the TrafficSplit"))
    }

    /// Polls the split until `want` holds, failing after `within` with what it last was.
    pub async fn wait_split(
        &self,
        within: Duration,
        want: impl Fn(&TrafficSplit) -> bool,
    ) -> Result<TrafficSplit> {
        let deadline = Instant::now() + within;
        loop {
            let split = self.split().await?;
            if want(&split) {
                return Ok(split);
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: "the TrafficSplit to reach the expected state".into(),
                    seconds: within.as_secs(),
                    detail: format!(
                        "weights {:?}, annotations {:?}",
                        api::split::weights(&split),
                        split.annotations()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A counter or gauge of the controller's /metrics (summed over labels), 0 if absent.
    pub async fn controller_metric(&self, name: &str) -> Result<f64> {
        let addr = SocketAddr::new(IpAddr::V4(self.controller.ip()), CONTROLLER_ADMIN_PORT);
        let mut http = HttpClient::new(addr, &addr.to_string(), Duration::from_secs(5));
        let body = http.get("/metrics").await?.body;
        Ok(body
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// The client sidecar's log so far (its `upstream request failed` lines
    /// say why a request failed).
    pub fn sidecar_log(&self) -> String {
        let path = self
            .sidecar
            .log_dir
            .join(format!("{}.log", self.sidecar.name()));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// The kube client of the bed's cluster.
    pub fn kube(&self) -> kube::Client {
        self.client.clone()
    }

    fn app(&self, name: &str) -> Result<&Pod> {
        self.apps
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("no backend {name}")))
    }
}

/// Two linked clusters running the demo [`Scenario`] (east's `demo/svc`
/// mirrored into west as `svc-east`), plus a pod in west's first zone running
/// the app answering `app`, published as the Service `service` in `demo`.
pub async fn linked_with_west_app(
    app: &str,
    service: &str,
) -> Result<(Harness, crate::Scenario, Pod)> {
    crate::init_tracing();
    let harness = Harness::builder()
        .cluster("east")
        .cluster("west")
        .start()
        .await?;
    // The CRD before the controllers, so their TrafficSplit watches list it at
    // once instead of waiting out a retry.
    install_crd(harness.cluster("west")).await?;
    let scenario = crate::Scenario::start(&harness, &mut |line| println!("{line}")).await?;
    let west = harness.cluster("west");
    let pod = west.create_pod(app, &west.zones()[0])?;
    spawn_app(&pod, app)?;
    pod.wait_listening(PORT, WITHIN).await?;
    west.publish(crate::scenario::APP_NAMESPACE, service, PORT, &[&pod])
        .await?;
    Ok((harness, scenario, pod))
}

/// Runs `harness-echo http` on [`PORT`] in `pod`, answering with `name`.
pub fn spawn_app(pod: &Pod, name: &str) -> Result<u32> {
    pod.spawn(
        meshlink_binary("harness-echo")?,
        ["http", &PORT.to_string(), name],
    )
}

/// Applies the TrafficSplit CRD and waits until it is served.
pub async fn install_crd(c: &Cluster) -> Result<()> {
    let pp = PatchParams::apply("failover.harness.meshlink.io").force();
    let crd = TrafficSplit::crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    Api::<CustomResourceDefinition>::all(c.client())
        .patch(&name, &pp, &Patch::Apply(crd))
        .await
        .map_err(Error::kube("applying the TrafficSplit CRD"))?;
    let splits: Api<TrafficSplit> = Api::all(c.client());
    let deadline = Instant::now() + WITHIN;
    while let Err(e) = splits.list(&ListParams::default().limit(1)).await {
        if Instant::now() > deadline {
            return Err(Error::kube("TrafficSplits served")(e));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn apply_split(c: &Cluster, config: &BedConfig) -> Result<()> {
    write_split(
        c.client(),
        NAMESPACE,
        ROOT,
        &config.weights,
        &config.annotations,
    )
    .await
}

/// Server-side applies a managed TrafficSplit named after its root Service
/// `root` in `ns`, as a user would write it.
pub async fn write_split(
    client: kube::Client,
    ns: &str,
    root: &str,
    weights: &[(String, u32)],
    annotations: &BTreeMap<String, String>,
) -> Result<()> {
    let backends: Vec<_> = weights
        .iter()
        .map(|(s, w)| json!({"service": s, "weight": w}))
        .collect();
    let split = json!({
        "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
        "metadata": {
            "name": root, "namespace": ns,
            "labels": {api::split::CONTROLLED_BY: "meshlink"},
            "annotations": annotations,
        },
        "spec": {"service": root, "backends": backends},
    });
    Api::<TrafficSplit>::namespaced(client, ns)
        .patch(
            root,
            &PatchParams::apply("user").force(),
            &Patch::Apply(split),
        )
        .await
        .map_err(Error::kube("applying the TrafficSplit"))?;
    Ok(())
}

async fn start_sidecar(
    c: &Cluster,
    zone: &str,
    pki: &Pki,
    discovery: SocketAddr,
    fast_path: bool,
) -> Result<Pod> {
    let certs = pki.issue(
        c.name(),
        "failover-client",
        &identity(c.name(), NAMESPACE, "client"),
    )?;
    let pod = c.create_pod("client", zone)?;
    let mut args = sidecar_args(&format!("0.0.0.0:{OUTBOUND_PORT}"), INBOUND_PORT);
    args.extend(["--outbound-target".into(), AUTHORITY.into()]);
    args.push(format!("--failover-fast-path={fast_path}"));
    args.extend(discovery_args(discovery, zone));
    args.extend(tls_args(&certs));
    pod.spawn(meshlink_binary("proxy")?, &args)?;
    wait_ready(&pod, ADMIN_PORT).await?;
    Ok(pod)
}

/// The kubelet stand-in: every [`PROBE_PERIOD`], publishes each pod of `apps`
/// (Service name → pod, apps on [`PORT`], already published) as the only
/// endpoint of its Service in `ns` while it accepts connections, and as none
/// while it does not. Stops when the handle is aborted.
pub fn spawn_readiness(
    client: kube::Client,
    ns: &str,
    apps: Arc<BTreeMap<String, Pod>>,
) -> JoinHandle<()> {
    let ns = ns.to_owned();
    tokio::spawn(async move { probe_backends(client, &ns, apps).await })
}

async fn probe_backends(client: kube::Client, ns: &str, apps: Arc<BTreeMap<String, Pod>>) {
    let mut published: BTreeMap<String, bool> = apps.keys().map(|k| (k.clone(), true)).collect();
    loop {
        for (name, pod) in apps.iter() {
            let addr = SocketAddr::new(IpAddr::V4(pod.ip()), PORT);
            let up = tokio::time::timeout(PROBE_PERIOD, tokio::net::TcpStream::connect(addr))
                .await
                .is_ok_and(|c| c.is_ok());
            if published.get(name) == Some(&up) {
                continue;
            }
            let pods: Vec<&Pod> = if up { vec![pod] } else { vec![] };
            match crate::publish::publish(client.clone(), ns, name, PORT, &pods).await {
                Ok(()) => {
                    tracing::info!(backend = %name, ready = up, "readiness changed");
                    published.insert(name.clone(), up);
                }
                Err(error) => tracing::warn!(%error, "publishing readiness"),
            }
        }
        tokio::time::sleep(PROBE_PERIOD).await;
    }
}

/// One request of a [`Load`]: when it was sent and whom it reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// When it was sent.
    pub sent: Instant,
    /// The answering backend's name, or `None` for a failed request (error,
    /// timeout or a status other than 200).
    pub backend: Option<String>,
    /// What a failed request got instead (status or error); empty otherwise.
    pub failure: String,
}

/// Steady HTTP load: `rps` GETs per second over `workers` kept-alive
/// connections, the workers' sends spread evenly over each period.
#[derive(Debug)]
pub struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts sending to `addr` (naming `authority` in `Host`).
    pub fn start(addr: SocketAddr, authority: &str, rps: u32, workers: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let period = Duration::from_secs_f64(f64::from(workers) / f64::from(rps.max(1)));
        let start = Instant::now();
        let tasks = (0..workers)
            .map(|i| {
                let samples = samples.clone();
                let mut client = HttpClient::new(addr, authority, Duration::from_secs(2));
                let mut tick = ticks(start, period, i, workers);
                tokio::spawn(async move {
                    loop {
                        tick.tick().await;
                        let sent = Instant::now();
                        let (backend, failure) = match client.get("/").await {
                            Ok(a) if a.status == 200 => {
                                (a.body.split(' ').next().map(str::to_owned), String::new())
                            }
                            Ok(a) => (None, format!("status {}", a.status)),
                            Err(e) => (None, e.to_string()),
                        };
                        let mut all = samples.lock().unwrap_or_else(|e| e.into_inner());
                        all.push(Sample {
                            sent,
                            backend,
                            failure,
                        });
                    }
                })
            })
            .collect();
        Self { samples, tasks }
    }

    /// Everything recorded so far, in the order answers arrived.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops sending and returns every sample, sorted by send time.
    pub fn stop(self) -> Vec<Sample> {
        for t in &self.tasks {
            t.abort();
        }
        let mut all = self.samples();
        all.sort_by_key(|s| s.sent);
        all
    }
}

/// The send times of worker `i` of `workers`: every `period`, offset by its
/// share of it. A worker that falls behind (a stalled machine, a slow answer)
/// skips the ticks it missed rather than shifting its schedule, so the workers
/// never end up sending in bursts, all at the same moment.
fn ticks(start: Instant, period: Duration, i: u32, workers: u32) -> tokio::time::Interval {
    let offset = period.mul_f64(f64::from(i) / f64::from(workers));
    let mut tick = tokio::time::interval_at(start + offset, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick
}

/// Requests sent in `[from, to)` that failed.
pub fn failed_between(samples: &[Sample], from: Instant, to: Instant) -> usize {
    samples
        .iter()
        .filter(|s| s.sent >= from && s.sent < to && s.backend.is_none())
        .count()
}

/// Answers by backend among requests sent in `[from, to)` (`"failed"` for failures).
pub fn answers_between(samples: &[Sample], from: Instant, to: Instant) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.sent >= from && s.sent < to) {
        let key = s.backend.clone().unwrap_or_else(|| "failed".into());
        *out.entry(key).or_default() += 1;
    }
    out
}

/// The time from `kill` until the requests sent from then on, up to `until`, are
/// at least 99% answered by one of `backups`: the failover time. `None` if that
/// never holds.
pub fn time_to_backup(
    samples: &[Sample],
    kill: Instant,
    until: Instant,
    backups: &[&str],
) -> Option<Duration> {
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent >= kill && s.sent < until)
        .collect();
    let good = |s: &Sample| s.backend.as_deref().is_some_and(|b| backups.contains(&b));
    // Scan suffixes from the end, keeping the earliest start that meets 99%.
    let (mut total, mut ok, mut best) = (0usize, 0usize, None);
    for s in window.iter().rev() {
        total += 1;
        ok += usize::from(good(s));
        if ok * 100 >= total * 99 {
            best = Some(s.sent.saturating_duration_since(kill));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(start: Instant, spec: &[(u64, Option<&str>)]) -> Vec<Sample> {
        spec.iter()
            .map(|(ms, b)| Sample {
                sent: start + Duration::from_millis(*ms),
                backend: b.map(str::to_owned),
                failure: String::new(),
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn load_workers_keep_their_offsets_after_a_stall() {
        let (start, period) = (Instant::now(), Duration::from_millis(100));
        let mut workers = [ticks(start, period, 0, 2), ticks(start, period, 1, 2)];
        // A stall of several periods: every worker is late, then fires at once.
        tokio::time::advance(Duration::from_millis(1000)).await;
        for w in &mut workers {
            w.tick().await;
        }
        let mut next = Vec::new();
        for w in &mut workers {
            next.push(w.tick().await - start);
        }
        assert_eq!(
            next,
            [Duration::from_millis(1100), Duration::from_millis(1050)],
            "each worker back on its own schedule, half a period apart"
        );
    }

    #[test]
    fn failover_time_is_where_the_rest_is_99_percent_backup() {
        let t0 = Instant::now();
        let mut spec: Vec<(u64, Option<&str>)> = vec![(0, Some("primary")), (10, None), (20, None)];
        spec.extend((0..200).map(|i| (30 + i, Some("backup"))));
        let s = samples(t0, &spec);
        let kill = t0 + Duration::from_millis(5);
        let until = t0 + Duration::from_secs(1);
        // Two failures among 202 requests are under 1%: from the first one on.
        assert_eq!(
            time_to_backup(&s, kill, until, &["backup"]),
            Some(Duration::from_millis(5))
        );
        assert_eq!(failed_between(&s, kill, until), 2);
        assert_eq!(answers_between(&s, kill, until)["backup"], 200);
        assert_eq!(time_to_backup(&s, kill, until, &["north"]), None);
    }

    #[test]
    fn a_late_failure_run_moves_the_failover_time() {
        let t0 = Instant::now();
        let mut spec: Vec<(u64, Option<&str>)> = (0..50).map(|i| (i, None)).collect();
        spec.extend((50..150).map(|i| (i, Some("backup"))));
        let s = samples(t0, &spec);
        assert_eq!(
            time_to_backup(&s, t0, t0 + Duration::from_secs(1), &["backup"]),
            Some(Duration::from_millis(49))
        );
    }
}
