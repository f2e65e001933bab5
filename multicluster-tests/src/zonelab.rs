//! A zone lab for the cost-tier tests: one harness cluster with endpoints of
//! Service `lab/svc` in every zone (`harness-echo slow-http`, whose added
//! latency a test changes while it runs: user-space latency injection, as
//! `tc netem` is not available), the cluster's `controller`, and client-side
//! `proxy` processes per zone in the root namespace, each subscribing from its
//! zone and sending every outbound request to `lab/svc`. [`load`] drives them
//! and reports, per client zone, which zones answered, errors and latencies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use proxy::pki::{Ca, Validity};
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::binaries::meshlink_binary;
use crate::cluster::Cluster;
use crate::components::{ControllerProcess, free_addr, ready};
use crate::error::{Error, Result};
use crate::pod::Pod;
use crate::traffic::HttpClient;

/// Namespace of the lab's Service.
pub const NAMESPACE: &str = "lab";
/// The Service every client calls.
pub const SERVICE: &str = "svc";
/// Its port (the endpoints listen on it too).
pub const PORT: u16 = 8080;
/// The authority client proxies send to.
pub const AUTHORITY: &str = "svc.lab.svc.cluster.local:8080";
/// Where the controller reads zone-pair costs (its default).
const ZONE_COSTS: (&str, &str) = ("meshlink", "meshlink-zone-costs");
/// How long a component may take to come up.
const WITHIN: Duration = Duration::from_secs(30);

/// One endpoint: its pod and the file holding its added latency.
#[derive(Debug)]
struct Server {
    pod: Pod,
    delay_file: PathBuf,
}

/// The running lab; its processes stop when it is dropped.
#[derive(Debug)]
pub struct ZoneLab<'c> {
    cluster: &'c Cluster,
    servers: Vec<Server>,
    controller: ControllerProcess,
    certs: PathBuf,
}

impl<'c> ZoneLab<'c> {
    /// Starts `per_zone` endpoints in each of `cluster`'s zones, publishes them
    /// all, and starts the cluster's controller.
    pub async fn start(
        cluster: &'c Cluster,
        dir: &std::path::Path,
        per_zone: usize,
    ) -> Result<Self> {
        let mut servers = Vec::new();
        for zone in cluster.zones() {
            for i in 1..=per_zone {
                let name = format!("{zone}-{i}");
                let pod = cluster.create_pod(&name, zone)?;
                let delay_file = dir.join(format!("{name}.delay"));
                let label = format!("{zone}/{name}");
                pod.spawn(
                    meshlink_binary("harness-echo")?,
                    [
                        "slow-http",
                        &PORT.to_string(),
                        &label,
                        &delay_file.display().to_string(),
                    ],
                )?;
                servers.push(Server { pod, delay_file });
            }
        }
        for s in &servers {
            s.pod.wait_listening(PORT, WITHIN).await?;
        }
        let certs = dir.join("client-certs");
        write_client_certs(&certs)?;
        let lab = Self {
            cluster,
            servers,
            controller: ControllerProcess::start(cluster).await?,
            certs,
        };
        let zones: Vec<&str> = cluster.zones().iter().map(String::as_str).collect();
        lab.publish(&zones).await?;
        Ok(lab)
    }

    /// Publishes the endpoints in `zones` only (the others stay up, unlisted).
    pub async fn publish(&self, zones: &[&str]) -> Result<()> {
        let pods: Vec<&Pod> = self
            .servers
            .iter()
            .map(|s| &s.pod)
            .filter(|p| zones.contains(&p.zone()))
            .collect();
        self.cluster.publish(NAMESPACE, SERVICE, PORT, &pods).await
    }

    /// Makes every endpoint in `zone` answer `delay` later (zero ends it).
    pub fn slow_zone(&self, zone: &str, delay: Duration) -> Result<()> {
        for s in self.servers.iter().filter(|s| s.pod.zone() == zone) {
            let ms = delay.as_millis().to_string();
            std::fs::write(&s.delay_file, ms)
                .map_err(Error::io(format!("writing {}", s.delay_file.display())))?;
        }
        Ok(())
    }

    /// Sets the zone-pair costs ConfigMap's `costs` to `costs`, or deletes it.
    pub async fn set_zone_costs(&self, costs: Option<&str>) -> Result<()> {
        let client = self.cluster.client();
        let (ns, name) = ZONE_COSTS;
        let pp = PatchParams::apply(crate::MANAGER).force();
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        Api::<Namespace>::all(client.clone())
            .patch(ns, &pp, &Patch::Apply(namespace))
            .await
            .map_err(Error::kube(format!("applying namespace {ns}")))?;
        let api = Api::<ConfigMap>::namespaced(client, ns);
        match costs {
            Some(text) => {
                let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": ns}, "data": {"costs": text}});
                api.patch(name, &pp, &Patch::Apply(cm))
                    .await
                    .map_err(Error::kube(format!("applying configmap {ns}/{name}")))?;
            }
            None => {
                api.delete(name, &DeleteParams::default())
                    .await
                    .map_err(Error::kube(format!("deleting configmap {ns}/{name}")))?;
            }
        }
        Ok(())
    }

    /// Starts a client proxy in `zone` with extra `proxy run` flags and waits
    /// until a request through it is answered.
    pub async fn client(&self, zone: &str, extra: &[&str]) -> Result<ClientProxy> {
        let (outbound, inbound, admin) = (free_addr()?, free_addr()?, free_addr()?);
        let file = |f: &str| self.certs.join(f).display().to_string();
        let mut cmd = Command::new(meshlink_binary("proxy")?);
        cmd.arg("run")
            .args(["--outbound-addr", &outbound.to_string()])
            .args(["--inbound-addr", &inbound.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--outbound-target", AUTHORITY])
            .args(["--discovery-addr", &self.controller.discovery.to_string()])
            .args(["--zone", zone])
            .args([
                "--tls-cert",
                &file("tls.crt"),
                "--tls-key",
                &file("tls.key"),
            ])
            .args(["--tls-trust", &file("ca.crt")])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(Error::io(format!("starting client proxy in {zone}")))?;
        let proxy = ClientProxy {
            zone: zone.to_owned(),
            outbound,
            admin,
            _child: child,
        };
        proxy.wait_answering().await?;
        Ok(proxy)
    }
}

/// A client-side proxy in one zone.
#[derive(Debug)]
pub struct ClientProxy {
    zone: String,
    outbound: SocketAddr,
    /// Its admin server (/ready, /metrics).
    pub admin: SocketAddr,
    _child: Child,
}

impl ClientProxy {
    /// Its zone.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    async fn wait_answering(&self) -> Result<()> {
        let deadline = Instant::now() + WITHIN;
        let mut http = HttpClient::new(self.outbound, AUTHORITY, Duration::from_secs(2));
        loop {
            if ready(self.admin).await && matches!(http.get("/").await, Ok(a) if a.status == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Invalid(format!(
                    "client proxy in {} not answering within {WITHIN:?}",
                    self.zone
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What one client zone's requests saw.
#[derive(Clone, Debug, Default)]
pub struct ZoneStats {
    /// The client's zone.
    pub zone: String,
    /// Answers per answering zone.
    pub served_by: BTreeMap<String, u64>,
    /// Requests that failed or got a non-200 answer.
    pub errors: u64,
    /// Latencies of the answered requests.
    pub latencies: Vec<Duration>,
}

impl ZoneStats {
    /// Answered requests.
    pub fn answered(&self) -> u64 {
        self.served_by.values().sum()
    }

    /// The share of answers from other zones.
    pub fn cross_zone(&self) -> f64 {
        let away: u64 = self
            .served_by
            .iter()
            .filter(|(z, _)| **z != self.zone)
            .map(|(_, n)| n)
            .sum();
        away as f64 / self.answered().max(1) as f64
    }

    /// The `q` quantile (0..=1) of the latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        let i = ((l.len() as f64 - 1.0) * q).round() as usize;
        l.get(i).copied().unwrap_or_default()
    }
}

/// Drives every client with `workers` sequential request loops (each pausing
/// `pause` between requests) for `duration`; returns one [`ZoneStats`] per client.
pub async fn load(
    clients: &[&ClientProxy],
    workers: usize,
    pause: Duration,
    duration: Duration,
) -> Vec<ZoneStats> {
    let until = Instant::now() + duration;
    let mut tasks = Vec::new();
    for c in clients {
        for _ in 0..workers {
            let (addr, zone) = (c.outbound, c.zone.clone());
            tasks.push(tokio::spawn(worker(addr, zone, pause, until)));
        }
    }
    let mut stats: Vec<ZoneStats> = clients
        .iter()
        .map(|c| ZoneStats {
            zone: c.zone.clone(),
            ..ZoneStats::default()
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let part = task.await.unwrap_or_default();
        let total = &mut stats[i / workers.max(1)];
        for (z, n) in part.served_by {
            *total.served_by.entry(z).or_default() += n;
        }
        total.errors += part.errors;
        total.latencies.extend(part.latencies);
    }
    stats
}

async fn worker(addr: SocketAddr, zone: String, pause: Duration, until: Instant) -> ZoneStats {
    let mut stats = ZoneStats {
        zone,
        ..ZoneStats::default()
    };
    let mut http = HttpClient::new(addr, AUTHORITY, Duration::from_secs(5));
    while Instant::now() < until {
        let start = Instant::now();
        match http.get("/").await {
            Ok(a) if a.status == 200 => {
                // The body is `<zone>/<pod> GET /`.
                let zone = a.body.split('/').next().unwrap_or_default().to_owned();
                *stats.served_by.entry(zone).or_default() += 1;
                stats.latencies.push(start.elapsed());
            }
            _ => stats.errors += 1,
        }
        tokio::time::sleep(pause).await;
    }
    stats
}

/// A client certificate for the proxies (required by `proxy run`; the lab's
/// endpoints are plaintext, so it is never presented).
fn write_client_certs(dir: &std::path::Path) -> Result<()> {
    let invalid =
        |e: proxy::pki::PkiError| Error::Invalid(format!("issuing lab certificates: {e}"));
    let root = Ca::root("zonelab root", Validity::days(1)).map_err(invalid)?;
    let id = api::identity::SpiffeId::parse("spiffe://lab.meshlink.test/ns/lab/sa/client")
        .map_err(|e| Error::Invalid(format!("lab identity: {e}")))?;
    let leaf = root.issue(&id, &[], Validity::days(1)).map_err(invalid)?;
    std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    leaf.write(dir, root.root_pem()).map_err(invalid)?;
    Ok(())
}
