//! The `gateway` binary: parses and validates its configuration, loads
//! credentials and discovery, binds the gateway and admin listeners, and serves
//! until SIGTERM, then drains.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use gateway::Gateway;
use gateway::config::GatewayArgs;
use prometheus_client::registry::Registry;
use proxy::accept::Stop;
use proxy::admin::{self, AdminState};
use proxy::balance::metrics::TierMetrics;
use proxy::forward::connect::Connector;
use proxy::metrics::Metrics;
use proxy::route::Router;
use proxy::tls;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How often credential files are checked for rotation.
const CREDENTIAL_POLL: Duration = Duration::from_secs(10);

/// The hop count written when a local target is itself behind another gateway:
/// one more than the most this gateway accepts, so the next gateway refuses.
const FORWARD_HOP: u8 = gateway::MAX_HOPS + 1;

fn main() -> ExitCode {
    let args = GatewayArgs::parse();
    admin::run_main("gateway", args.limits.worker_threads, run(args))
}

async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    tls::install_default_provider();
    let config = args.config()?;
    let (discovery, creds) = proxy::config::load(&args.discovery, &args.tls, CREDENTIAL_POLL)?;
    let signal = admin::shutdown_signal().context("installing signal handlers")?;
    let (connect_timeout, _, _) = args.limits.timeouts()?;

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(
        registry.sub_registry_with_prefix("gateway"),
    ));
    let connector = Connector::new(connect_timeout, Some(creds.configs.clone()));
    let tier_metrics = TierMetrics::register(
        registry.sub_registry_with_prefix("gateway"),
        &args.discovery.zone,
    );
    let router = Arc::new(
        Router::new(discovery, connector, args.balance.config()?, FORWARD_HOP)
            .with_tier_metrics(Arc::new(tier_metrics)),
    );
    let gateway = Gateway::new(config, creds.configs.clone(), router, metrics);

    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    let admin_l = TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding {}", args.admin_addr))?;
    tracing::info!(addr = %args.addr, admin = %args.admin_addr, "gateway listening");

    let stop = Stop::new();
    let (ready_tx, ready) = watch::channel(true);
    let state = AdminState {
        registry: Arc::new(registry),
        ready,
    };
    let probe = match args.probe_addr {
        Some(addr) => {
            let probe_l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            tracing::info!(probe = %addr, "probe listening (mTLS)");
            let tls = creds.configs.clone();
            let probe = admin::serve_tls(probe_l, state.clone(), tls, stop.signaled());
            Some(tokio::spawn(probe))
        }
        None => None,
    };
    let server = tokio::spawn(gateway.serve(listener, stop.signaled()));
    let admin = tokio::spawn(admin::serve(admin_l, state, stop.signaled()));

    let name = signal.await;
    tracing::info!(signal = name, "shutting down: draining connections");
    ready_tx.send_replace(false);
    stop.trigger();
    server.await.context("gateway task")?;
    admin.await.context("admin task")??;
    if let Some(probe) = probe {
        probe.await.context("probe task")??;
    }
    Ok(())
}
