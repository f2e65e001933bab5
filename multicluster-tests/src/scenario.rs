//! The cross-cluster scenario the end-to-end test and the demo share: on a
//! harness with clusters `east` and `west`, certificates from one root, and in
//! each cluster a control plane (`controller`), a gateway (`gateway`, on the
//! cluster's gateway address) and a mirror (`mirror`) for a Link to the other
//! cluster made by `meshlink link`. East runs the app (`harness-echo http` behind
//! its inbound sidecar `proxy`), published as Service `demo/svc` and exported with
//! `meshlink export`; west runs a client sidecar whose every outbound connection
//! goes to the mirror `svc-east`.
//!
//! Every component is the real binary, running in its own harness pod (network
//! namespace), so each reaches the others over the cluster networks as it would
//! in Kubernetes: proxies reach their controller's pod, mirrors reach the other
//! apiserver at the harness host address, and only the gateway address crosses
//! clusters. Pods are registered with the harness's clean-up, so Ctrl-C or a
//! failed test removes them too.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use api::certify::TOKEN_AUDIENCE;
use api::identity::SpiffeId;
use api::link::Link;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use proxy::discovery_grpc::GrpcDiscovery;
use proxy::pki::{Ca, Validity};
use serde_json::json;
use tokio::time::Instant;

use crate::binaries::meshlink_binary;
use crate::cluster::Cluster;
use crate::components::ready;
use crate::error::{Error, Result};
use crate::harness::Harness;
use crate::pod::Pod;

/// Namespace of the exported app.
pub const APP_NAMESPACE: &str = "demo";
/// Name of the exported Service in east.
pub const APP_SERVICE: &str = "svc";
/// Service port of the app (its inbound sidecar listens here).
pub const APP_PORT: u16 = 8080;
/// Namespace of Links, their Secrets and the gateway's identity.
pub const MULTICLUSTER_NAMESPACE: &str = "meshlink-multicluster";
/// The authority west's client calls: east's Service as mirrored into west.
pub const MIRROR_AUTHORITY: &str = "svc-east.demo.svc.cluster.local:8080";
/// The authority east's gateway is asked for (the transport header's target).
pub const REMOTE_AUTHORITY: &str = "svc.demo.svc.cluster.local:8080";
/// The gateways' mTLS port.
pub const GATEWAY_PORT: u16 = api::link::DEFAULT_GATEWAY_PORT;
/// The gateways' probe port (admin endpoints over mTLS), named in the Links.
pub const PROBE_PORT: u16 = 4181;

/// Where the app itself listens inside its pod (behind the sidecar).
const APP_LOCAL_PORT: u16 = 9080;
pub(crate) const DISCOVERY_PORT: u16 = 8086;
pub(crate) const CONTROLLER_ADMIN_PORT: u16 = 9990;
pub(crate) const ADMIN_PORT: u16 = 4191;
const OUTBOUND_PORT: u16 = 4140;
/// The client sidecar's outbound port (explicit-proxy mode, to `svc-east`).
pub const CLIENT_OUTBOUND_PORT: u16 = OUTBOUND_PORT;
pub(crate) const INBOUND_PORT: u16 = 4143;
/// Each controller's identity service (TLS).
const IDENTITY_PORT: u16 = 8080;
/// How long a component may take to report ready, and a mirror to converge.
const WITHIN: Duration = Duration::from_secs(60);
/// The clusters, in harness builder order.
pub const CLUSTERS: [&str; 2] = ["east", "west"];

/// The SPIFFE ID of `cluster`'s gateway.
pub fn gateway_identity(cluster: &str) -> String {
    identity(cluster, MULTICLUSTER_NAMESPACE, "meshlink-gateway")
}

/// The SPIFFE ID of east's app.
pub fn app_identity() -> String {
    identity("east", APP_NAMESPACE, APP_SERVICE)
}

pub(crate) fn identity(cluster: &str, ns: &str, sa: &str) -> String {
    format!("spiffe://{}/ns/{ns}/sa/{sa}", trust_domain(cluster))
}

/// One root, one issuer per cluster, certificates written under a directory.
pub(crate) struct Pki {
    dir: PathBuf,
    root_pem: String,
    issuers: Vec<(String, Ca)>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The issuers hold keys: only the directory is shown.
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Pki {
    pub(crate) fn new(dir: &Path) -> Result<Self> {
        let invalid = |e: proxy::pki::PkiError| Error::Invalid(format!("issuing: {e}"));
        let root = Ca::root("meshlink demo root", Validity::days(7)).map_err(invalid)?;
        let mut issuers = Vec::new();
        for cluster in CLUSTERS {
            let issuer = root
                .intermediate(&format!("meshlink {cluster} issuer"), Validity::days(7))
                .map_err(invalid)?;
            issuers.push((cluster.to_owned(), issuer));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            root_pem: root.root_pem().to_owned(),
            issuers,
        })
    }

    fn issuer(&self, cluster: &str) -> Result<&Ca> {
        self.issuers
            .iter()
            .find(|(c, _)| c == cluster)
            .map(|(_, ca)| ca)
            .ok_or_else(|| Error::Invalid(format!("no issuer for cluster {cluster}")))
    }

    /// `<dir>/<name>/`, created.
    fn subdir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        Ok(dir)
    }

    /// Issues `id` from `cluster`'s issuer into `<dir>/<name>/` (tls.crt, tls.key,
    /// ca.crt) and returns that directory.
    pub(crate) fn issue(&self, cluster: &str, name: &str, id: &str) -> Result<PathBuf> {
        let id = SpiffeId::parse(id).map_err(|e| Error::Invalid(format!("{id}: {e}")))?;
        let leaf = self
            .issuer(cluster)?
            .issue(&id, &[], Validity::days(7))
            .map_err(|e| Error::Invalid(format!("issuing {id}: {e}")))?;
        let dir = self.subdir(name)?;
        leaf.write(&dir, &self.root_pem)
            .map_err(|e| Error::Invalid(format!("writing {}: {e}", dir.display())))?;
        Ok(dir)
    }

    /// Writes `cluster`'s issuer as its identity service loads it, into
    /// `<dir>/<cluster>-issuer/`; returns the controller's identity flags.
    fn identity_service_args(&self, cluster: &str) -> Result<Vec<String>> {
        let dir = self.subdir(&format!("{cluster}-issuer"))?;
        let files = self
            .issuer(cluster)?
            .write(&dir)
            .map_err(|e| Error::Invalid(format!("writing {}: {e}", dir.display())))?;
        let path = |p: PathBuf| p.display().to_string();
        Ok(vec![
            "--identity-addr".into(),
            format!("0.0.0.0:{IDENTITY_PORT}"),
            "--identity-issuer-cert".into(),
            path(files.cert_chain),
            "--identity-issuer-key".into(),
            path(files.key),
            "--identity-trust-anchors".into(),
            path(files.bundle),
            "--trust-domain".into(),
            trust_domain(cluster),
        ])
    }

    /// A directory `<dir>/<name>/` for a workload that asks `identity` for a
    /// certificate as `id`, holding the root (`ca.crt`) and `token`; returns the
    /// proxy's flags, which name `tls.crt` and `tls.key` there for it to write.
    fn certify_args(
        &self,
        name: &str,
        id: &str,
        token: &str,
        identity: SocketAddr,
    ) -> Result<Vec<String>> {
        let dir = self.subdir(name)?;
        let write = |file: &str, text: &str| -> Result<String> {
            let path = dir.join(file);
            std::fs::write(&path, text)
                .map_err(Error::io(format!("writing {}", path.display())))?;
            Ok(path.display().to_string())
        };
        let mut args = vec![
            "--identity-addr".into(),
            identity.to_string(),
            "--identity".into(),
            id.to_owned(),
            "--identity-token-file".into(),
            write("token", token)?,
        ];
        write("ca.crt", &self.root_pem)?;
        args.extend(tls_args(&dir));
        Ok(args)
    }
}

fn trust_domain(cluster: &str) -> String {
    format!("{cluster}.meshlink.test")
}

/// `--tls-cert/--tls-key/--tls-trust` for credentials written by [`Pki::issue`].
pub(crate) fn tls_args(dir: &Path) -> Vec<String> {
    let file = |f: &str| dir.join(f).display().to_string();
    vec![
        "--tls-cert".into(),
        file("tls.crt"),
        "--tls-key".into(),
        file("tls.key"),
        "--tls-trust".into(),
        file("ca.crt"),
    ]
}

/// One cluster's meshlink pieces.
#[derive(Debug)]
struct Side {
    name: String,
    zone: String,
    controller: Option<Pod>,
    discovery: SocketAddr,
    /// The controller's identity service.
    identity: SocketAddr,
    gateway: Pod,
    mirror: Option<Pod>,
}

/// The running scenario. Its pods stop when it is dropped, or with the harness.
#[derive(Debug)]
pub struct Scenario {
    sides: Vec<Side>,
    apps: Vec<Pod>,
    apps_started: usize,
    pki: Pki,
    client_certs: PathBuf,
    client: Pod,
}

impl Scenario {
    /// Brings the whole scenario up on `harness` (clusters `east` and `west`),
    /// calling `step` with a line as each step starts, and returns once west's
    /// discovery resolves `svc-east` to east's gateway.
    pub async fn start(harness: &Harness, step: &mut dyn FnMut(&str)) -> Result<Self> {
        let (east, west) = (cluster(harness, "east")?, cluster(harness, "west")?);
        step("issuing certificates: one root, an issuer per cluster, a certificate per workload");
        let pki = Pki::new(&harness.dir().join("certs"))?;
        for c in [east, west] {
            prepare_cluster(c).await?;
        }
        let mut sides = Vec::new();
        for c in [east, west] {
            step(&format!(
                "{}: starting the control plane (controller) and the gateway on {}:{GATEWAY_PORT}",
                c.name(),
                c.gateway_address()
            ));
            sides.push(Side::start(c, &pki).await?);
        }
        step(&format!(
            "west: starting pod client with its sidecar (every outbound connection to {MIRROR_AUTHORITY})"
        ));
        let client_certs =
            pki.issue("west", "client", &identity("west", APP_NAMESPACE, "client"))?;
        let client = start_client(west, &client_certs, sides[1].discovery).await?;
        let mut this = Self {
            client,
            client_certs,
            sides,
            apps: Vec::new(),
            apps_started: 0,
            pki,
        };
        step(
            "east: starting app pod svc-1 (harness-echo behind its inbound sidecar, \
             whose certificate comes from east's identity service)",
        );
        this.scale(harness, 1).await?;
        step("east: exporting Service demo/svc (meshlink export svc)");
        this.export(harness, true).await?;
        for (target, source) in [(east, west), (west, east)] {
            step(&format!(
                "{}: linking to {} (meshlink link against {}, applied in {}) and starting its mirror",
                source.name(),
                target.name(),
                target.name(),
                source.name()
            ));
            link(target, source).await?;
            let index = this.side_index(source.name())?;
            this.sides[index].mirror = Some(start_mirror(source, target.name(), &this.pki).await?);
        }
        step("west: waiting until discovery resolves svc-east to east's gateway");
        let discovery = this.discovery("west")?;
        resolve_until(&discovery, MIRROR_AUTHORITY, WITHIN, |set| !set.is_empty()).await?;
        Ok(this)
    }

    /// Where test code (in the root namespace) reaches west's client sidecar: an
    /// explicit proxy whose every connection goes to `svc-east`.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.client.ip()), OUTBOUND_PORT)
    }

    /// West's client pod, whose sidecar's outbound listener is port
    /// [`CLIENT_OUTBOUND_PORT`] (on every address of the pod).
    pub fn client_pod(&self) -> &Pod {
        &self.client
    }

    /// The discovery API of `cluster`'s controller.
    pub fn discovery_addr(&self, cluster: &str) -> Result<SocketAddr> {
        Ok(self.sides[self.side_index(cluster)?].discovery)
    }

    /// A proxy's gRPC discovery client for `cluster`'s controller, subscribing from
    /// the zone the scenario's pods of that cluster run in.
    pub fn discovery(&self, cluster: &str) -> Result<GrpcDiscovery> {
        let side = &self.sides[self.side_index(cluster)?];
        let addr = side.discovery;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::Invalid(format!("discovery address {addr}: {e}")))?
            .connect_lazy();
        Ok(GrpcDiscovery::new(channel, side.zone.clone()))
    }

    /// Runs `replicas` app pods in east and publishes exactly those as the
    /// Service's endpoints (with the app identity). Scaling down unpublishes
    /// before stopping pods, as a rolling update would.
    pub async fn scale(&mut self, harness: &Harness, replicas: usize) -> Result<()> {
        let east = cluster(harness, "east")?;
        while self.apps.len() < replicas {
            self.apps_started += 1;
            let name = format!("{APP_SERVICE}-{}", self.apps_started);
            let token = east
                .service_account_token_for(APP_NAMESPACE, APP_SERVICE, &[TOKEN_AUDIENCE])
                .await?;
            let certify =
                self.pki
                    .certify_args(&name, &app_identity(), &token, self.sides[0].identity)?;
            let pod = start_app(east, &name, &certify, self.sides[0].discovery).await?;
            self.apps.push(pod);
        }
        let keep: Vec<&Pod> = self.apps.iter().take(replicas).collect();
        east.publish(APP_NAMESPACE, APP_SERVICE, APP_PORT, &keep)
            .await?;
        annotate_identity(east).await?;
        self.apps.truncate(replicas);
        Ok(())
    }

    /// `meshlink export svc` (or `unexport`) in east.
    pub async fn export(&self, harness: &Harness, exported: bool) -> Result<()> {
        let verb = if exported { "export" } else { "unexport" };
        let east = cluster(harness, "east")?;
        meshlink(east, &["-n", APP_NAMESPACE, verb, APP_SERVICE]).await?;
        Ok(())
    }

    /// Starts another client sidecar pod `name` in west (identity of the
    /// scenario's client), sending every connection to `authority`, with `extra`
    /// `proxy run` arguments. Its outbound listener is [`CLIENT_OUTBOUND_PORT`].
    pub async fn start_client_to(
        &self,
        harness: &Harness,
        name: &str,
        authority: &str,
        extra: &[&str],
    ) -> Result<Pod> {
        let west = cluster(harness, "west")?;
        let discovery = self.discovery_addr("west")?;
        spawn_client(west, name, &self.client_certs, discovery, authority, extra).await
    }

    /// Kills every process of `cluster`'s gateway pod (its address stays, so
    /// connections to it are refused).
    pub fn kill_gateway(&self, cluster: &str) -> Result<()> {
        self.sides[self.side_index(cluster)?]
            .gateway
            .kill_processes();
        Ok(())
    }

    /// Stops `cluster`'s controller (its pod goes away); returns whether one ran.
    pub fn stop_controller(&mut self, cluster: &str) -> Result<bool> {
        let index = self.side_index(cluster)?;
        Ok(self.sides[index].controller.take().is_some())
    }

    /// Every pod of the scenario, for listings and clean-up checks.
    pub fn pods(&self) -> Vec<&Pod> {
        let mut pods: Vec<&Pod> = Vec::new();
        for side in &self.sides {
            pods.extend(side.controller.iter());
            pods.push(&side.gateway);
            pods.extend(side.mirror.iter());
        }
        pods.extend(self.apps.iter());
        pods.push(&self.client);
        pods
    }

    /// The last lines of every pod's log (its processes' output), for reports
    /// of a failed test: the logs go away with the harness.
    pub fn log_tails(&self) -> String {
        let tail = |p: &Pod| crate::process::log_tail(&p.log_dir.join(format!("{}.log", p.name)));
        self.pods()
            .into_iter()
            .map(|p| format!("--- pod {}/{}\n{}\n", p.cluster(), p.name(), tail(p)))
            .collect()
    }

    fn side_index(&self, cluster: &str) -> Result<usize> {
        self.sides
            .iter()
            .position(|s| s.name == cluster)
            .ok_or_else(|| Error::Invalid(format!("the scenario has no cluster {cluster}")))
    }
}

impl Side {
    /// The controller, then the gateway resolving through it.
    async fn start(c: &Cluster, pki: &Pki) -> Result<Self> {
        let zone = first_zone(c)?;
        let identity_service = pki.identity_service_args(c.name())?;
        let controller = start_controller(
            c,
            &format!("{}-controller", c.name()),
            &zone,
            &identity_service,
        )
        .await?;
        let discovery = SocketAddr::new(IpAddr::V4(controller.ip()), DISCOVERY_PORT);
        let identity = SocketAddr::new(IpAddr::V4(controller.ip()), IDENTITY_PORT);

        let certs = pki.issue(
            c.name(),
            &format!("{}-gateway", c.name()),
            &gateway_identity(c.name()),
        )?;
        let gateway = c.create_gateway_pod(&format!("{}-gateway", c.name()), &zone)?;
        let mut args = vec![
            "--addr".to_owned(),
            format!("0.0.0.0:{GATEWAY_PORT}"),
            "--admin-addr".into(),
            format!("0.0.0.0:{ADMIN_PORT}"),
            "--probe-addr".into(),
            format!("0.0.0.0:{PROBE_PORT}"),
        ];
        args.extend(discovery_args(discovery, &zone));
        args.extend(tls_args(&certs));
        gateway.spawn(meshlink_binary("gateway")?, &args)?;
        wait_ready(&gateway, ADMIN_PORT).await?;
        Ok(Self {
            name: c.name().to_owned(),
            zone,
            controller: Some(controller),
            discovery,
            identity,
            gateway,
            mirror: None,
        })
    }
}

fn cluster<'h>(harness: &'h Harness, name: &str) -> Result<&'h Cluster> {
    harness
        .get(name)
        .ok_or_else(|| Error::Invalid(format!("the scenario needs a cluster named {name}")))
}

/// Controller pod `name` in `c` with its admin kubeconfig, discovery on
/// [`DISCOVERY_PORT`] and admin on [`CONTROLLER_ADMIN_PORT`], plus `extra`
/// arguments; returns once it reports ready.
pub(crate) async fn start_controller(
    c: &Cluster,
    name: &str,
    zone: &str,
    extra: &[String],
) -> Result<Pod> {
    let pod = c.create_pod(name, zone)?;
    let mut args = vec![
        "--cluster-name".to_owned(),
        c.name().to_owned(),
        "--kubeconfig".into(),
        c.kubeconfig_path().display().to_string(),
        "--discovery-addr".into(),
        format!("0.0.0.0:{DISCOVERY_PORT}"),
        "--admin-addr".into(),
        format!("0.0.0.0:{CONTROLLER_ADMIN_PORT}"),
    ];
    args.extend(extra.iter().cloned());
    pod.spawn(meshlink_binary("controller")?, &args)?;
    wait_ready(&pod, CONTROLLER_ADMIN_PORT).await?;
    Ok(pod)
}

pub(crate) fn first_zone(c: &Cluster) -> Result<String> {
    c.zones()
        .first()
        .cloned()
        .ok_or_else(|| Error::Invalid(format!("cluster {} has no zones", c.name())))
}

pub(crate) fn discovery_args(discovery: SocketAddr, zone: &str) -> Vec<String> {
    vec![
        "--discovery-addr".into(),
        discovery.to_string(),
        "--zone".into(),
        zone.to_owned(),
    ]
}

/// App pod `name`: `harness-echo http` on loopback behind a sidecar whose
/// inbound listener (mTLS, app identity, certified with `certify`) holds the
/// Service port.
async fn start_app(
    east: &Cluster,
    name: &str,
    certify: &[String],
    discovery: SocketAddr,
) -> Result<Pod> {
    let zone = first_zone(east)?;
    let pod = east.create_pod(name, &zone)?;
    let app_port = APP_LOCAL_PORT.to_string();
    pod.spawn(meshlink_binary("harness-echo")?, ["http", &app_port, name])?;
    let mut args = sidecar_args(&format!("127.0.0.1:{OUTBOUND_PORT}"), APP_PORT);
    args.extend(["--app-addr".into(), format!("127.0.0.1:{APP_LOCAL_PORT}")]);
    args.extend(discovery_args(discovery, &zone));
    args.extend(certify.iter().cloned());
    pod.spawn(meshlink_binary("proxy")?, &args)?;
    wait_ready(&pod, ADMIN_PORT).await?;
    pod.wait_listening(APP_PORT, WITHIN).await?;
    Ok(pod)
}

/// West's client pod: a sidecar in explicit mode, every outbound connection to
/// `svc-east`, its outbound listener on the pod address so test code can dial it.
async fn start_client(west: &Cluster, certs: &Path, discovery: SocketAddr) -> Result<Pod> {
    spawn_client(west, "client", certs, discovery, MIRROR_AUTHORITY, &[]).await
}

/// A client sidecar pod `name` in `west` sending every connection to `authority`.
async fn spawn_client(
    west: &Cluster,
    name: &str,
    certs: &Path,
    discovery: SocketAddr,
    authority: &str,
    extra: &[&str],
) -> Result<Pod> {
    let zone = first_zone(west)?;
    let pod = west.create_pod(name, &zone)?;
    let mut args = sidecar_args(&format!("0.0.0.0:{OUTBOUND_PORT}"), INBOUND_PORT);
    args.extend(["--outbound-target".into(), authority.into()]);
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(discovery_args(discovery, &zone));
    args.extend(tls_args(certs));
    pod.spawn(meshlink_binary("proxy")?, &args)?;
    wait_ready(&pod, ADMIN_PORT).await?;
    Ok(pod)
}

pub(crate) fn sidecar_args(outbound: &str, inbound_port: u16) -> Vec<String> {
    vec![
        "run".into(),
        "--outbound-addr".into(),
        outbound.to_owned(),
        "--inbound-addr".into(),
        format!("0.0.0.0:{inbound_port}"),
        "--admin-addr".into(),
        format!("0.0.0.0:{ADMIN_PORT}"),
    ]
}

/// The mirror for Link `target` in `source`, in its own pod, with credentials to
/// probe the target's gateway.
async fn start_mirror(source: &Cluster, target: &str, pki: &Pki) -> Result<Pod> {
    let zone = first_zone(source)?;
    let name = format!("{}-mirror", source.name());
    let sa = "meshlink-mirror";
    let certs = pki.issue(
        source.name(),
        &name,
        &identity(source.name(), MULTICLUSTER_NAMESPACE, sa),
    )?;
    let pod = source.create_pod(&name, &zone)?;
    let kubeconfig = format!("KUBECONFIG={}", source.kubeconfig_path().display());
    let mirror = meshlink_binary("mirror")?.display().to_string();
    let dir = certs.display().to_string();
    let admin = format!("0.0.0.0:{CONTROLLER_ADMIN_PORT}");
    pod.spawn(
        "env",
        [
            kubeconfig.as_str(),
            &mirror,
            "--link",
            target,
            "-n",
            MULTICLUSTER_NAMESPACE,
            "--identity",
            &name,
            "--identity-dir",
            &dir,
            "--admin-addr",
            &admin,
        ],
    )?;
    wait_ready(&pod, CONTROLLER_ADMIN_PORT).await?;
    Ok(pod)
}

/// Waits until `pod` listens on `port` and its admin server there says ready.
pub(crate) async fn wait_ready(pod: &Pod, port: u16) -> Result<()> {
    pod.wait_listening(port, WITHIN).await?;
    let addr = SocketAddr::new(IpAddr::V4(pod.ip()), port);
    let deadline = Instant::now() + WITHIN;
    while !ready(addr).await {
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("pod {} ready on {addr}", pod.name()),
                seconds: WITHIN.as_secs(),
                detail: "/ready never answered 200".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Namespaces and the Link CRD every cluster of the scenario needs.
async fn prepare_cluster(c: &Cluster) -> Result<()> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for ns in [MULTICLUSTER_NAMESPACE, APP_NAMESPACE] {
        c.apply_namespace(ns).await?;
    }
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": APP_SERVICE, "namespace": APP_NAMESPACE}});
    Api::<ServiceAccount>::namespaced(c.client(), APP_NAMESPACE)
        .patch(APP_SERVICE, &pp, &Patch::Apply(account))
        .await
        .map_err(Error::kube(format!(
            "applying service account {APP_NAMESPACE}/{APP_SERVICE} in {}",
            c.name()
        )))?;
    let crd = Link::crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    Api::<CustomResourceDefinition>::all(c.client())
        .patch(&name, &pp, &Patch::Apply(crd))
        .await
        .map_err(Error::kube(format!(
            "applying the Link CRD in {}",
            c.name()
        )))?;
    let links: Api<Link> = Api::all(c.client());
    let deadline = Instant::now() + WITHIN;
    while let Err(e) = links.list(&ListParams::default().limit(1)).await {
        if Instant::now() > deadline {
            return Err(Error::kube(format!("Links served in {}", c.name()))(e));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Field manager of what the scenario writes itself.
const FIELD_MANAGER: &str = "scenario.meshlink.io";

/// Puts the app's SPIFFE ID on the harness's EndpointSlice, so the gateway
/// connects to the app's sidecar over mTLS pinned to it.
async fn annotate_identity(east: &Cluster) -> Result<()> {
    let slice = format!("{APP_SERVICE}-harness");
    let patch =
        json!({"metadata": {"annotations": {api::labels::ENDPOINT_IDENTITY: app_identity()}}});
    Api::<EndpointSlice>::namespaced(east.client(), APP_NAMESPACE)
        .patch(&slice, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(Error::kube(format!("annotating endpointslice {slice}")))?;
    Ok(())
}

/// Runs `meshlink` against `c` with its admin kubeconfig; returns stdout.
async fn meshlink(c: &Cluster, args: &[&str]) -> Result<String> {
    let mut cmd = tokio::process::Command::new(meshlink_binary("meshlink")?);
    cmd.arg("--kubeconfig")
        .arg(c.kubeconfig_path())
        .args(["--context", c.name()])
        .args(args);
    let line = format!("meshlink {}", args.join(" "));
    let out = cmd
        .output()
        .await
        .map_err(Error::io(format!("running {line}")))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: line,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `meshlink link` against `target`, its output (Secret and Link) applied in
/// `source`, the way an operator pipes it into `kubectl apply`.
async fn link(target: &Cluster, source: &Cluster) -> Result<()> {
    let gateway = target.gateway_address().to_string();
    let (port, probe) = (GATEWAY_PORT.to_string(), PROBE_PORT.to_string());
    let identity = gateway_identity(target.name());
    let manifests = meshlink(
        target,
        &[
            "link",
            "--cluster-name",
            target.name(),
            "--gateway-addresses",
            &gateway,
            "--gateway-port",
            &port,
            "--probe-port",
            &probe,
            "--gateway-identity",
            &identity,
        ],
    )
    .await?;
    apply_manifests(source, &manifests).await
}

/// Server-side applies each document of a YAML stream of Secrets and Links.
async fn apply_manifests(c: &Cluster, yaml: &str) -> Result<()> {
    use serde::Deserialize;
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let object = serde_json::Value::deserialize(doc)
            .map_err(|e| Error::Invalid(format!("meshlink link printed bad YAML: {e}")))?;
        let resource = match object["kind"].as_str() {
            Some("Secret") => ApiResource::erase::<Secret>(&()),
            Some("Link") => ApiResource::erase::<Link>(&()),
            other => {
                return Err(Error::Invalid(format!(
                    "unexpected manifest kind {other:?}"
                )));
            }
        };
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or(MULTICLUSTER_NAMESPACE)
            .to_owned();
        Api::<DynamicObject>::namespaced_with(c.client(), &ns, &resource)
            .patch(&name, &pp, &Patch::Apply(&object))
            .await
            .map_err(Error::kube(format!(
                "applying {} {ns}/{name}",
                resource.kind
            )))?;
    }
    Ok(())
}

/// Resolves `authority` through `discovery` until the endpoint set satisfies
/// `want`, or fails after `within` naming what it last saw.
pub async fn resolve_until(
    discovery: &GrpcDiscovery,
    authority: &str,
    within: Duration,
    want: impl Fn(&proxy::discovery::EndpointSet) -> bool,
) -> Result<proxy::discovery::EndpointSet> {
    use proxy::discovery::Discovery as _;
    let deadline = Instant::now() + within;
    let mut last = String::from("no such service");
    while Instant::now() < deadline {
        let resolved = discovery
            .resolve(authority)
            .await
            .map_err(|e| Error::Invalid(format!("resolving {authority}: {e}")))?;
        if let Some(mut rx) = resolved {
            let left = deadline.saturating_duration_since(Instant::now());
            let waited = tokio::time::timeout(left, rx.wait_for(|set| want(set)))
                .await
                .map(|r| r.map(|set| set.clone()));
            match waited {
                Ok(Ok(set)) => return Ok(set),
                Ok(Err(_)) => last = "discovery stream closed".into(),
                Err(_) => last = format!("{:?}", rx.borrow()),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Timeout {
        what: format!("discovery of {authority}"),
        seconds: within.as_secs(),
        detail: format!("last seen: {last}"),
    })
}
