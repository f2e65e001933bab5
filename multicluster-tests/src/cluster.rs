//! One cluster: a kube-apiserver (with its certificates and kubeconfig) storing under
//! its own prefix of the harness's etcd, and optionally a kube-controller-manager.
//! The apiserver can be stopped and started again on the same address and data, so
//! tests can take a remote cluster away and bring it back.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::binaries::Binaries;
use crate::cleanup::Cleanup;
use crate::error::{Error, Result};
use crate::net::{MAX_GATEWAYS, Network};
use crate::pki::{self, ClusterPki};
use crate::pod::Pod;
use crate::process::Proc;
use crate::publish;

/// How long an apiserver may take to become ready before start fails.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// Controllers the harness runs: enough for namespaces to finish deleting, owned
/// objects to be collected, default ServiceAccounts to exist and EndpointSlices to
/// follow selector Services.
const CONTROLLERS: &str = "endpointslice-controller,namespace-controller,\
garbage-collector-controller,serviceaccount-token-controller,serviceaccount-controller,\
root-ca-certificate-publisher-controller";

/// Everything needed to start one cluster's control plane.
pub(crate) struct ClusterParams<'a> {
    pub name: String,
    pub index: usize,
    pub zones: Vec<String>,
    pub dir: PathBuf,
    pub listen: SocketAddr,
    pub etcd_url: String,
    pub service_cidr: String,
    pub binaries: &'a Binaries,
    pub controller_manager: bool,
    pub cleanup: &'a Cleanup,
    pub net: Arc<Network>,
}

/// A running cluster of the harness.
pub struct Cluster {
    name: String,
    index: usize,
    zones: Vec<String>,
    dir: PathBuf,
    server_url: String,
    kubeconfig_path: PathBuf,
    kubeconfig_yaml: String,
    ca_pem: String,
    config: kube::Config,
    client: kube::Client,
    apiserver_binary: PathBuf,
    apiserver_args: Vec<OsString>,
    apiserver: Mutex<Option<Proc>>,
    controller_manager: Mutex<Option<Proc>>,
    cleanup: Cleanup,
    net: Arc<Network>,
    pods_created: AtomicU8,
    gateways_created: AtomicU8,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("server_url", &self.server_url)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Generates credentials, starts the apiserver and waits until it is ready, then
    /// starts the controller manager.
    pub(crate) async fn start(p: ClusterParams<'_>) -> Result<Self> {
        std::fs::create_dir_all(&p.dir)
            .map_err(Error::io(format!("creating {}", p.dir.display())))?;
        let ips = [p.listen.ip(), IpAddr::from(Ipv4Addr::LOCALHOST)];
        let pki = pki::generate(&p.name, &p.dir, &ips)?;
        let server_url = format!("https://{}", p.listen);
        let admin = User::Cert {
            cert_pem: &pki.admin_cert_pem,
            key_pem: &pki.admin_key_pem,
        };
        let kubeconfig_yaml = kubeconfig(&p.name, &server_url, &pki.ca_pem, &admin);
        let kubeconfig_path = p.dir.join("kubeconfig");
        std::fs::write(&kubeconfig_path, &kubeconfig_yaml)
            .map_err(Error::io("writing kubeconfig"))?;
        let config = client_config(&p.name, &kubeconfig_yaml).await?;
        let client = kube::Client::try_from(config.clone())
            .map_err(Error::kube(format!("building client for {}", p.name)))?;

        let cluster = Self {
            apiserver_args: apiserver_args(&p, &pki, &server_url),
            apiserver_binary: p.binaries.kube_apiserver.clone(),
            name: p.name,
            index: p.index,
            zones: p.zones,
            dir: p.dir,
            server_url,
            kubeconfig_path,
            kubeconfig_yaml,
            ca_pem: pki.ca_pem.clone(),
            config,
            client,
            apiserver: Mutex::new(None),
            controller_manager: Mutex::new(None),
            cleanup: p.cleanup.clone(),
            net: p.net,
            pods_created: AtomicU8::new(0),
            gateways_created: AtomicU8::new(0),
        };
        let started = Instant::now();
        cluster.start_apiserver().await?;
        tracing::debug!(cluster = %cluster.name, elapsed = ?started.elapsed(), "apiserver ready");
        if p.controller_manager
            && let Some(kcm) = &p.binaries.kube_controller_manager
        {
            cluster.start_controller_manager(kcm, &pki)?;
        }
        Ok(cluster)
    }

    /// The cluster's name, as given to the builder.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Position of this cluster in the builder (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Zones this cluster's pods can be placed in.
    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// `https://IP:PORT` of the apiserver.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// Path of an admin kubeconfig (client certificate in `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The admin kubeconfig itself (certificates inline).
    pub fn kubeconfig_yaml(&self) -> &str {
        &self.kubeconfig_yaml
    }

    /// The directory holding this cluster's certificates and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A shared admin client (cheap to clone).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The admin client configuration, to build independent clients from.
    pub fn kube_config(&self) -> kube::Config {
        self.config.clone()
    }

    /// A new admin client with its own connections, distinct from [`Cluster::client`].
    pub fn new_client(&self) -> Result<kube::Client> {
        kube::Client::try_from(self.config.clone())
            .map_err(Error::kube(format!("building client for {}", self.name)))
    }

    /// Mints a token for ServiceAccount `ns/sa` through the TokenRequest API
    /// (valid one hour, default audience). The ServiceAccount must exist.
    pub async fn service_account_token(&self, ns: &str, sa: &str) -> Result<String> {
        self.service_account_token_for(ns, sa, &[]).await
    }

    /// Like [`Cluster::service_account_token`], for `audiences` (none: the
    /// apiserver's own).
    pub async fn service_account_token_for(
        &self,
        ns: &str,
        sa: &str,
        audiences: &[&str],
    ) -> Result<String> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client(), ns);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(3600),
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            },
            ..Default::default()
        };
        let issued = api
            .create_token_request(sa, &PostParams::default(), &request)
            .await
            .map_err(Error::kube(format!("requesting a token for {ns}/{sa}")))?;
        issued
            .status
            .map(|s| s.token)
            .ok_or_else(|| Error::Invalid(format!("token request for {ns}/{sa} had no status")))
    }

    /// The address other clusters use to reach this cluster's first gateway pod
    /// (see [`Cluster::create_gateway_pod`]).
    pub fn gateway_address(&self) -> Ipv4Addr {
        self.net.plan.gateway(self.net_index(), 0)
    }

    /// This cluster's pod subnet (CIDR).
    pub fn pod_subnet(&self) -> String {
        self.net.plan.pod_subnet(self.net_index())
    }

    /// Creates a pod named `name` in `zone` (one of [`Cluster::zones`]) on this
    /// cluster's pod network. Start processes in it with [`Pod::spawn`].
    pub fn create_pod(&self, name: &str, zone: &str) -> Result<Pod> {
        self.new_pod(name, zone, None)
    }

    /// Creates a gateway pod: a pod that also holds a gateway address on the network
    /// between clusters, reachable from every cluster's pods. The first one holds
    /// [`Cluster::gateway_address`]; up to 8 per cluster.
    pub fn create_gateway_pod(&self, name: &str, zone: &str) -> Result<Pod> {
        let k = self.gateways_created.fetch_add(1, Ordering::Relaxed);
        if k >= MAX_GATEWAYS {
            return Err(Error::Invalid(format!(
                "cluster {} already has {MAX_GATEWAYS} gateway pods",
                self.name
            )));
        }
        self.new_pod(name, zone, Some(k))
    }

    /// Publishes `pods` as the ready endpoints of selector-less Service `ns/service`
    /// (TCP `port`, port name `tcp`): server-side applies the namespace, the Service
    /// and EndpointSlice `<service>-harness` (zone per endpoint, managed by
    /// `harness.meshlink.io`). Calling again replaces the endpoints.
    pub async fn publish(&self, ns: &str, service: &str, port: u16, pods: &[&Pod]) -> Result<()> {
        publish::publish(self.client(), ns, service, port, pods).await
    }

    fn new_pod(&self, name: &str, zone: &str, gateway: Option<u8>) -> Result<Pod> {
        if !crate::harness::is_dns_label(name, 40) {
            return Err(Error::Invalid(format!(
                "pod name {name:?} must be 1-40 characters of a-z, 0-9 and '-'"
            )));
        }
        if !self.zones.iter().any(|z| z == zone) {
            return Err(Error::Invalid(format!(
                "zone {zone:?} is not one of cluster {}'s zones {:?}",
                self.name, self.zones
            )));
        }
        let n = self.pods_created.fetch_add(1, Ordering::Relaxed) + 1;
        if n > 250 {
            return Err(Error::Invalid(format!(
                "cluster {} is out of pod addresses",
                self.name
            )));
        }
        let c = self.net_index();
        let netns = format!("{}c{c}-p{n}", self.net.plan.netns_prefix());
        let (ip, gateway) = self.net.attach_pod(c, n, &netns, gateway, &self.cleanup)?;
        Ok(Pod {
            name: name.to_owned(),
            cluster: self.name.clone(),
            zone: zone.to_owned(),
            netns,
            ip,
            gateway,
            log_dir: self.dir.join("pods"),
            procs: Mutex::new(Vec::new()),
            cleanup: self.cleanup.clone(),
        })
    }

    fn net_index(&self) -> u8 {
        // The builder allows at most `MAX_CLUSTERS` (8) clusters.
        self.index as u8
    }

    /// Creates namespace `ns` unless it exists.
    pub async fn apply_namespace(&self, ns: &str) -> Result<()> {
        crate::publish::apply_namespace(&self.client(), ns).await
    }

    /// A kubeconfig for this cluster that authenticates with a bearer `token` (for
    /// example one from [`Cluster::service_account_token`]).
    pub fn kubeconfig_for_token(&self, token: &str) -> String {
        kubeconfig(
            &self.name,
            &self.server_url,
            &self.ca_pem,
            &User::Token(token),
        )
    }

    /// A client for this cluster that authenticates with a bearer `token`.
    pub async fn client_with_token(&self, token: &str) -> Result<kube::Client> {
        let config = client_config(&self.name, &self.kubeconfig_for_token(token)).await?;
        kube::Client::try_from(config).map_err(Error::kube(format!(
            "building token client for {}",
            self.name
        )))
    }

    /// Kills the apiserver (SIGKILL, like a crash). Its etcd data stays.
    pub fn stop_apiserver(&self) {
        if let Some(mut proc) = lock(&self.apiserver).take() {
            proc.kill();
        }
    }

    /// Whether the apiserver process is running.
    pub fn apiserver_running(&self) -> bool {
        lock(&self.apiserver)
            .as_mut()
            .is_some_and(|p| p.check_running().is_ok())
    }

    /// Starts the apiserver (same address, port and data) and waits until ready.
    /// Does nothing but wait if it is already running.
    pub async fn start_apiserver(&self) -> Result<()> {
        {
            let mut slot = lock(&self.apiserver);
            if slot.is_none() {
                let mut cmd = Command::new(&self.apiserver_binary);
                cmd.args(&self.apiserver_args);
                let log = self.dir.join("kube-apiserver.log");
                *slot = Some(Proc::spawn(
                    format!("kube-apiserver of {}", self.name),
                    cmd,
                    &log,
                    &self.cleanup,
                )?);
            }
        }
        self.wait_ready().await
    }

    /// Process ids of this cluster's control-plane processes.
    pub fn pids(&self) -> Vec<u32> {
        [&self.apiserver, &self.controller_manager]
            .iter()
            .filter_map(|m| lock(m).as_ref().map(Proc::pid))
            .collect()
    }

    /// Polls `/readyz` and the `default` namespace until both answer.
    async fn wait_ready(&self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(proc) = lock(&self.apiserver).as_mut() {
                proc.check_running()?;
            }
            let last = match tokio::time::timeout(Duration::from_secs(3), self.probe()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "probe timed out".to_owned(),
            };
            if started.elapsed() > READY_DEADLINE {
                let tail = lock(&self.apiserver)
                    .as_ref()
                    .map(Proc::log_tail)
                    .unwrap_or_default();
                return Err(Error::Timeout {
                    what: format!("kube-apiserver of {}", self.name),
                    seconds: READY_DEADLINE.as_secs(),
                    detail: format!("{last}\n{tail}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn probe(&self) -> Result<(), kube::Error> {
        let req = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(kube::Error::HttpError)?;
        self.client.request_text(req).await?;
        Api::<Namespace>::all(self.client()).get("default").await?;
        Ok(())
    }

    fn start_controller_manager(&self, binary: &Path, pki: &ClusterPki) -> Result<()> {
        let mut cmd = Command::new(binary);
        cmd.arg(flag("kubeconfig", &self.kubeconfig_path))
            .arg(format!("--controllers={CONTROLLERS}"))
            .arg("--leader-elect=false")
            .arg("--secure-port=0")
            .arg(format!("--cluster-name={}", self.name))
            .arg(flag("service-account-private-key-file", &pki.files.sa_key))
            .arg(flag("root-ca-file", &pki.files.ca_cert));
        let proc = Proc::spawn(
            format!("kube-controller-manager of {}", self.name),
            cmd,
            &self.dir.join("kube-controller-manager.log"),
            &self.cleanup,
        )?;
        *lock(&self.controller_manager) = Some(proc);
        Ok(())
    }
}

fn apiserver_args(p: &ClusterParams<'_>, pki: &ClusterPki, server_url: &str) -> Vec<OsString> {
    let f = &pki.files;
    let mut args: Vec<OsString> = [
        format!("--etcd-servers={}", p.etcd_url),
        format!("--etcd-prefix=/registry-{}", p.name),
        format!("--bind-address={}", p.listen.ip()),
        format!("--advertise-address={}", p.listen.ip()),
        format!("--secure-port={}", p.listen.port()),
        format!("--service-cluster-ip-range={}", p.service_cidr),
        "--authorization-mode=Node,RBAC".into(),
        "--allow-privileged=true".into(),
        format!("--service-account-issuer={server_url}"),
        "--profiling=false".into(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.extend([
        flag("cert-dir", &p.dir),
        flag("tls-cert-file", &f.serving_cert),
        flag("tls-private-key-file", &f.serving_key),
        flag("client-ca-file", &f.ca_cert),
        flag("service-account-key-file", &f.sa_pub),
        flag("service-account-signing-key-file", &f.sa_key),
    ]);
    args
}

fn flag(name: &str, path: &Path) -> OsString {
    let mut s = OsString::from(format!("--{name}="));
    s.push(path);
    s
}

/// Who a kubeconfig authenticates as.
enum User<'a> {
    Cert { cert_pem: &'a str, key_pem: &'a str },
    Token(&'a str),
}

fn kubeconfig(name: &str, server: &str, ca_pem: &str, user: &User<'_>) -> String {
    let ca = BASE64.encode(ca_pem);
    let (user_name, credentials) = match user {
        User::Cert { cert_pem, key_pem } => (
            format!("{name}-admin"),
            format!(
                "client-certificate-data: {}\n    client-key-data: {}",
                BASE64.encode(cert_pem),
                BASE64.encode(key_pem)
            ),
        ),
        // A token is opaque base64url-ish text; quoting keeps YAML from reading it.
        User::Token(token) => (format!("{name}-token"), format!("token: \"{token}\"")),
    };
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user_name}
  user:
    {credentials}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {user_name}
    namespace: default
current-context: {name}
"
    )
}

async fn client_config(name: &str, yaml: &str) -> Result<kube::Config> {
    let err = |source| Error::Kubeconfig {
        cluster: name.to_owned(),
        source,
    };
    let kc = Kubeconfig::from_yaml(yaml).map_err(err)?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(err)?;
    config.connect_timeout = Some(Duration::from_secs(2));
    Ok(config)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
