//! `mirror`: the service-mirror controller for one Link. Parses and checks its
//! configuration before binding anything, serves /ready /live /metrics, and on
//! SIGTERM stops writing, releases its Lease and exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mirror::controller::{Options, ProbeIdentity};
use mirror::metrics::Metrics;
use mirror::session::SessionConfig;
use prometheus_client::registry::Registry;
use proxy::admin::{AdminState, serve, shutdown_signal};
use proxy::tls::{CredentialFiles, TrustBundle};
use tokio::sync::watch;

/// Mirrors the exported Services of one linked cluster into this one.
#[derive(Debug, Parser)]
#[command(name = "mirror", version)]
struct Args {
    /// Name of the Link to mirror.
    #[arg(long, env = "MESHLINK_LINK")]
    link: String,
    /// Namespace of the Link, its Secret and the leader Lease.
    #[arg(long, short = 'n', env = "POD_NAMESPACE")]
    namespace: String,
    /// This replica's Lease identity (default: the pod name, then the hostname).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Admin server address (/ready, /live, /metrics).
    #[arg(long, env = "MESHLINK_ADMIN_ADDR", default_value = "0.0.0.0:9990")]
    admin_addr: SocketAddr,
    /// Directory with tls.crt, tls.key and ca.crt used to probe gateways over mTLS.
    /// Without it gateways are not probed and gateway endpoints stay not ready.
    #[arg(long, env = "MESHLINK_IDENTITY_DIR")]
    identity_dir: Option<PathBuf>,
    /// Lease validity in seconds; the leader renews every third of it.
    #[arg(long, default_value_t = 15)]
    lease_duration_secs: u64,
    /// Concurrent mirror writes.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds between orphan collections.
    #[arg(long, default_value_t = 300)]
    resync_secs: u64,
    /// Seconds between DNS resolutions of gateway names.
    #[arg(long, default_value_t = 30)]
    resolve_secs: u64,
    /// DNS server (`ip:port`, UDP) for gateway names; default: /etc/resolv.conf.
    #[arg(long)]
    dns_server: Option<SocketAddr>,
}

impl Args {
    /// Turns flags into controller options, reading credential files now so a
    /// bad file fails start-up instead of the first probe.
    fn options(self) -> anyhow::Result<(Options, SocketAddr)> {
        let Self {
            link,
            namespace,
            identity,
            admin_addr,
            identity_dir,
            lease_duration_secs,
            concurrency,
            resync_secs,
            resolve_secs,
            dns_server,
        } = self;
        anyhow::ensure!(
            lease_duration_secs >= 3,
            "--lease-duration-secs must be at least 3"
        );
        anyhow::ensure!(concurrency > 0, "--concurrency must be positive");
        let identity = identity
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("mirror-{}", std::process::id()));
        let probe_identity = identity_dir.map(|dir| probe_identity(&dir)).transpose()?;
        let options = Options {
            link,
            namespace,
            identity,
            lease_duration: Duration::from_secs(lease_duration_secs),
            probe_identity,
            session: SessionConfig {
                concurrency,
                resync_interval: Duration::from_secs(resync_secs.max(1)),
                resolve_interval: Duration::from_secs(resolve_secs.max(1)),
                dns_server,
            },
        };
        Ok((options, admin_addr))
    }
}

fn probe_identity(dir: &std::path::Path) -> anyhow::Result<ProbeIdentity> {
    let files = CredentialFiles::in_dir(dir);
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut bundles = Vec::new();
    for b in &files.bundles {
        bundles.push(TrustBundle::from_pem(
            b.trust_domain.clone(),
            &read(&b.path)?,
        )?);
    }
    let identity = ProbeIdentity {
        chain_pem: read(&files.cert_chain)?,
        key_pem: read(&files.key)?,
        bundles,
    };
    // Fail now on a mismatched or malformed set, not at the first probe.
    proxy::tls::Credentials::from_pem(
        &identity.chain_pem,
        &identity.key_pem,
        identity.bundles.clone(),
    )
    .context("probe credentials")?;
    Ok(identity)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    proxy::tls::install_default_provider();
    proxy::admin::init_tracing()?;
    let (options, admin_addr) = Args::parse().options()?;
    let shutdown = shutdown_signal().context("installing signal handlers")?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(registry.sub_registry_with_prefix("mirror"));
    let client = kube::Client::try_default()
        .await
        .context("building the local cluster client")?;

    let listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("binding admin server on {admin_addr}"))?;
    let (ready_tx, ready_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let admin = tokio::spawn(serve(
        listener,
        AdminState {
            registry: Arc::new(registry),
            ready: ready_rx,
        },
        {
            let mut stop = stop_rx.clone();
            async move {
                let _ = stop.wait_for(|s| *s).await;
            }
        },
    ));
    // Standby replicas are ready too: they are healthy, just not leading.
    ready_tx.send_replace(true);

    let controller = tokio::spawn(mirror::controller::run(client, options, metrics, stop_rx));
    let signal = shutdown.await;
    tracing::info!(signal, "shutting down");
    ready_tx.send_replace(false);
    stop_tx.send_replace(true);
    controller.await.context("controller task")?;
    admin.await.context("admin task")??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_checked_before_start() {
        let args =
            Args::try_parse_from(["mirror", "--link", "east", "-n", "mc", "--concurrency", "0"])
                .unwrap_or_else(|e| panic!("{e}"));
        let err = args
            .options()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--concurrency"), "{err}");
    }

    #[test]
    fn missing_identity_dir_is_a_startup_error() {
        let args = Args::try_parse_from([
            "mirror",
            "--link",
            "east",
            "-n",
            "mc",
            "--identity-dir",
            "/nonexistent/meshlink",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let err = format!(
            "{:#}",
            args.options()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        );
        assert!(err.contains("/nonexistent/meshlink"), "{err}");
    }
}
