//! The `controller` binary: one cluster's control plane. It serves discovery,
//! manages failover TrafficSplits and, given an issuer, signs workloads'
//! certificates (identity, over TLS on a port of its own).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use api::identity::SpiffeId;
use clap::Parser;
use controller::discovery::Discovery;
use controller::{failover, identity};
use prometheus_client::registry::Registry;
use proxy::admin::{self, AdminState};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// meshlink's per-cluster control plane.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// This cluster's name, as other clusters' Links call it.
    #[arg(long, env = "MESHLINK_CLUSTER_NAME")]
    cluster_name: String,
    /// This cluster's DNS domain.
    #[arg(long, env = "MESHLINK_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Where proxies reach the discovery gRPC API.
    #[arg(long, env = "MESHLINK_DISCOVERY_ADDR", default_value = "0.0.0.0:8086")]
    discovery_addr: SocketAddr,
    /// The admin server (/ready, /live, /metrics).
    #[arg(long, env = "MESHLINK_ADMIN_ADDR", default_value = "0.0.0.0:9990")]
    admin_addr: SocketAddr,
    /// The ConfigMap (`namespace/name`) of zone-pair costs, watched so changes
    /// apply at run time; absent means default tiers.
    #[arg(
        long,
        env = "MESHLINK_ZONE_COSTS_CONFIGMAP",
        default_value = "meshlink/meshlink-zone-costs",
        value_parser = parse_configmap_ref
    )]
    zone_costs_configmap: (String, String),
    /// A kubeconfig for the cluster; without it, KUBECONFIG or the in-cluster
    /// service account is used.
    #[arg(long, env = "MESHLINK_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// How long a better failover tier must stay ready before traffic returns to it.
    #[arg(long, env = "MESHLINK_FAILOVER_HOLD_DOWN_MS", default_value_t = 30_000)]
    failover_hold_down_ms: u64,
    /// Equality-based label selector (`k=v,k2!=v2,k3`) of the TrafficSplits whose
    /// weights failover manages.
    #[arg(
        long,
        env = "MESHLINK_FAILOVER_SELECTOR",
        default_value = "failover.meshlink.io/controlled-by=meshlink"
    )]
    failover_selector: String,
    /// The identity service's issuer: its certificate chain (PEM, issuer first).
    /// Without it the controller signs no certificates.
    #[arg(
        long,
        env = "MESHLINK_IDENTITY_ISSUER_CERT",
        requires_all = ["identity_issuer_key", "identity_trust_anchors"]
    )]
    identity_issuer_cert: Option<PathBuf>,
    /// The issuer's private key (PKCS#8 PEM).
    #[arg(
        long,
        env = "MESHLINK_IDENTITY_ISSUER_KEY",
        requires = "identity_issuer_cert"
    )]
    identity_issuer_key: Option<PathBuf>,
    /// The trust anchors the issuer chains to (PEM).
    #[arg(
        long,
        env = "MESHLINK_IDENTITY_TRUST_ANCHORS",
        requires = "identity_issuer_cert"
    )]
    identity_trust_anchors: Option<PathBuf>,
    /// The trust domain of the identities signed.
    #[arg(long, env = "MESHLINK_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Where workloads reach the identity service (TLS).
    #[arg(long, env = "MESHLINK_IDENTITY_ADDR", default_value = "0.0.0.0:8080")]
    identity_addr: SocketAddr,
    /// The identity the service presents; by default
    /// `spiffe://<trust domain>/ns/meshlink/sa/meshlink-controller`.
    #[arg(long, env = "MESHLINK_IDENTITY_SERVER_ID")]
    identity_server_id: Option<SpiffeId>,
    /// How long a signed workload certificate is valid, in seconds.
    #[arg(
        long,
        env = "MESHLINK_IDENTITY_LIFETIME_SECS",
        default_value_t = 86_400
    )]
    identity_lifetime_secs: u64,
}

impl Args {
    /// The identity service's settings, if an issuer is given.
    fn identity(&self) -> anyhow::Result<Option<identity::Config>> {
        let (Some(cert), Some(key), Some(anchors)) = (
            &self.identity_issuer_cert,
            &self.identity_issuer_key,
            &self.identity_trust_anchors,
        ) else {
            return Ok(None);
        };
        let server_id = match &self.identity_server_id {
            Some(id) => id.clone(),
            None => SpiffeId::workload(&self.trust_domain, "meshlink", "meshlink-controller")
                .map_err(|e| anyhow::anyhow!("--trust-domain {:?}: {e}", self.trust_domain))?,
        };
        Ok(Some(identity::Config {
            trust_domain: self.trust_domain.clone(),
            lifetime: Duration::from_secs(self.identity_lifetime_secs),
            issuer_chain: cert.clone(),
            issuer_key: key.clone(),
            trust_anchors: anchors.clone(),
            server_id,
        }))
    }
}

/// Splits `namespace/name`.
fn parse_configmap_ref(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{text:?} is not namespace/name")),
    }
}

fn main() -> ExitCode {
    admin::run_main("controller", 0, run(Args::parse()))
}

async fn client(kubeconfig: Option<PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(&path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("finding cluster credentials (set --kubeconfig)")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

async fn run(args: Args) -> anyhow::Result<()> {
    proxy::tls::install_default_provider();
    let failover = failover::Config {
        hold_down: Duration::from_millis(args.failover_hold_down_ms),
        selector: args.failover_selector.clone(),
    };
    failover::check_selector(&failover.selector)
        .map_err(|why| anyhow::anyhow!("--failover-selector {:?}: {why}", failover.selector))?;
    let identity_config = args.identity()?;
    let client = client(args.kubeconfig).await?;
    let signal = admin::shutdown_signal().context("installing signal handlers")?;
    let discovery_l = TcpListener::bind(args.discovery_addr)
        .await
        .with_context(|| format!("binding {}", args.discovery_addr))?;
    let admin_l = TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding {}", args.admin_addr))?;

    let mut registry = Registry::default();
    let discovery = Discovery::start(
        client.clone(),
        &args.cluster_name,
        &args.cluster_domain,
        args.zone_costs_configmap,
        registry.sub_registry_with_prefix("discovery"),
    );
    let failover_metrics =
        failover::Metrics::register(registry.sub_registry_with_prefix("failover"));
    let identity = match &identity_config {
        Some(config) => {
            let metrics =
                identity::Metrics::register(registry.sub_registry_with_prefix("identity"));
            Some(identity::Service::load(client.clone(), config, metrics)?)
        }
        None => None,
    };
    let state = AdminState {
        registry: Arc::new(registry),
        ready: discovery.ready(),
    };
    tracing::info!(
        discovery = %args.discovery_addr,
        admin = %args.admin_addr,
        cluster = %args.cluster_name,
        identity = ?identity_config.as_ref().map(|_| args.identity_addr),
        "controller listening"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut admin_stop = stop_rx.clone();
    let failover = tokio::spawn(failover::run(
        client,
        failover,
        failover_metrics,
        stop_rx.clone(),
    ));
    let identity = match identity {
        Some(identity) => {
            let listener = TcpListener::bind(args.identity_addr)
                .await
                .with_context(|| format!("binding {}", args.identity_addr))?;
            Some(tokio::spawn(identity.serve(listener, stop_rx.clone())))
        }
        None => None,
    };
    let server = tokio::spawn(discovery.serve(discovery_l, stop_rx));
    let admin = tokio::spawn(admin::serve(admin_l, state, async move {
        let _ = admin_stop.wait_for(|s| *s).await;
    }));

    let name = signal.await;
    tracing::info!(signal = name, "shutting down");
    stop_tx.send_replace(true);
    server
        .await
        .context("discovery task")?
        .context("discovery server")?;
    if let Some(identity) = identity {
        identity
            .await
            .context("identity task")?
            .context("identity server")?;
    }
    admin.await.context("admin task")??;
    failover.await.context("failover task")?;
    Ok(())
}
