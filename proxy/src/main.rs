//! The `proxy` binary: `proxy init` writes the interception rules; `proxy run`
//! parses and validates its configuration, obtains its certificate from the
//! identity service when told to, loads credentials and discovery, binds
//! the outbound, inbound and admin listeners, and serves until SIGTERM, then
//! drains.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use prometheus_client::registry::Registry;
use proxy::accept::Stop;
use proxy::admin::{self, AdminState};
use proxy::balance::metrics::TierMetrics;
use proxy::config::{Cli, Command, InitArgs, RunArgs};
use proxy::forward::connect::Connector;
use proxy::inbound::Inbound;
use proxy::metrics::Metrics;
use proxy::outbound::Outbound;
use proxy::retry::Failover;
use proxy::route::Router;
use proxy::tls;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How often credential files are checked for rotation.
const CREDENTIAL_POLL: Duration = Duration::from_secs(10);
/// How long the proxy keeps asking the identity service for its first
/// certificate before it gives up and exits.
const FIRST_CERTIFICATE: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let workers = match &cli.command {
        Command::Init(_) => 1,
        Command::Run(args) => args.limits.worker_threads,
    };
    admin::run_main("proxy", workers, async move {
        match cli.command {
            Command::Init(args) => init(&args),
            Command::Run(args) => run(*args).await,
        }
    })
}

fn init(args: &InitArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    if args.dry_run {
        for rule in proxy::init::rules(&config) {
            println!("iptables {}", rule.join(" "));
        }
        return Ok(());
    }
    proxy::init::apply(&config, &["iptables"])?;
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    tls::install_default_provider();
    // Everything is validated before a port is bound.
    let config = args.config()?;
    let certify = match args.identity.certify(&args.tls)? {
        Some(certify) => {
            let expires = certify
                .certify_within(FIRST_CERTIFICATE)
                .await
                .with_context(|| format!("obtaining a certificate for {}", certify.identity))?;
            Some((certify, expires))
        }
        None => None,
    };
    let (discovery, creds) = proxy::config::load(&args.discovery, &args.tls, CREDENTIAL_POLL)?;
    if let Some((certify, expires)) = certify {
        tokio::spawn(certify.renew(expires, creds.check_now.clone()));
    }
    let signal = admin::shutdown_signal().context("installing signal handlers")?;

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(
        registry.sub_registry_with_prefix("proxy"),
    ));
    let connector = Connector::new(config.connect_timeout, Some(creds.configs.clone()));
    let tier_metrics = TierMetrics::register(
        registry.sub_registry_with_prefix("proxy"),
        &args.discovery.zone,
    );
    let router = Arc::new(
        Router::new(discovery, connector, config.balance, 1)
            .with_tier_metrics(Arc::new(tier_metrics))
            .with_failover(Failover::new(config.failover_fast_path)),
    );
    let inbound = Inbound::new(
        config.inbound,
        creds.configs.clone(),
        router.clone(),
        metrics.clone(),
    );
    let outbound = Outbound::new(config.outbound, router, metrics);

    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))
    };
    let (out_l, in_l, admin_l) = (
        bind(args.outbound_addr).await?,
        bind(args.inbound_addr).await?,
        bind(args.admin_addr).await?,
    );
    tracing::info!(outbound = %args.outbound_addr, inbound = %args.inbound_addr, admin = %args.admin_addr, "proxy listening");

    let stop = Stop::new();
    let (ready_tx, ready) = watch::channel(true);
    let state = AdminState {
        registry: Arc::new(registry),
        ready,
    };
    let (out_stop, in_stop) = (stop.signaled(), stop.signaled());
    let servers = tokio::spawn(async move {
        tokio::join!(
            outbound.serve(out_l, out_stop),
            inbound.serve(in_l, in_stop)
        )
    });
    let admin = tokio::spawn(admin::serve(admin_l, state, stop.signaled()));

    let name = signal.await;
    tracing::info!(signal = name, "shutting down: draining connections");
    ready_tx.send_replace(false);
    stop.trigger();
    servers.await.context("listener task")?;
    admin.await.context("admin task")??;
    Ok(())
}
