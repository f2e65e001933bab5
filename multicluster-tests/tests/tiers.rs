//! Cost-tiered, zone-aware balancing on a real apiserver (issue 8): a cluster
//! with three zones, endpoints in each, latency injected in user space, and a
//! client proxy per zone subscribing from its zone through the controller; and
//! two linked clusters, where a Service that includes its mirrors falls back to
//! the other cluster (tier 2) when every local endpoint is gone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use api::labels::BALANCER_INCLUDE_MIRRORS;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use multicluster_tests::failover::{
    Load, answers_between, failed_between, linked_with_west_app, spawn_app, spawn_readiness,
    time_to_backup,
};
use multicluster_tests::scenario::{
    APP_NAMESPACE, APP_SERVICE, CLIENT_OUTBOUND_PORT, REMOTE_AUTHORITY,
};
use multicluster_tests::zonelab::{ClientProxy, ZoneLab, ZoneStats, load};
use multicluster_tests::{Harness, meshlink_binary};
use tokio::time::Instant;

const ZONES: [&str; 3] = ["west-a", "west-b", "west-c"];
const WORKERS: usize = 2;
const PAUSE: Duration = Duration::from_millis(2);
const SLOWDOWN: Duration = Duration::from_millis(40);
const CONVERGE: Duration = Duration::from_secs(30);
/// Returning in-zone after a slowdown waits for the zone's estimates to recover
/// from the few requests still sent there (observed 11-25 s).
const RETURN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traffic_stays_in_the_cheapest_zone_that_can_take_it() -> Result<()> {
    multicluster_tests::init_tracing();
    let harness = Harness::builder()
        .cluster_with_zones("west", ZONES)
        .without_controller_manager()
        .start()
        .await?;
    let lab = ZoneLab::start(harness.cluster("west"), harness.dir(), 2).await?;
    let mut tiered = Vec::new();
    let mut plain = Vec::new();
    for zone in ZONES {
        tiered.push(lab.client(zone, &[]).await?);
        plain.push(lab.client(zone, &["--balance-policy", "all"]).await?);
    }
    let tiered: Vec<&ClientProxy> = tiered.iter().collect();
    let plain: Vec<&ClientProxy> = plain.iter().collect();
    let t = Instant::now();

    even_load_stays_in_zone(&tiered).await?;
    eprintln!("[{:?}] even load stayed in-zone", t.elapsed());
    a_slow_zone_widens_and_comes_back(&lab, &tiered, &plain).await?;
    eprintln!("[{:?}] slowed zone widened and came back", t.elapsed());
    an_empty_zone_uses_the_next_tier_without_errors(&lab, &tiered).await?;
    eprintln!("[{:?}] empty zone used the next tier", t.elapsed());
    zone_costs_apply_at_run_time(&lab, &tiered).await?;
    eprintln!("[{:?}] zone costs followed", t.elapsed());
    Ok(())
}

/// Even load, every zone healthy: under 1% of requests leave their zone, as
/// the clients count and as `meshlink top zones` reads the proxies' metrics.
async fn even_load_stays_in_zone(tiered: &[&ClientProxy]) -> Result<()> {
    let stats = load(tiered, WORKERS, PAUSE, Duration::from_secs(8)).await;
    for s in &stats {
        eprintln!("even: {}", summary(s));
        ensure!(s.answered() > 500, "too few answers: {}", summary(s));
        ensure!(s.errors == 0, "errors: {}", summary(s));
        ensure!(s.cross_zone() < 0.01, "left the zone: {}", summary(s));
    }
    let urls: Vec<String> = tiered.iter().map(|c| c.admin.to_string()).collect();
    let out = std::process::Command::new(meshlink_binary("meshlink")?)
        .args(["top", "zones", "--metrics", &urls.join(",")])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    ensure!(out.status.success(), "top zones failed: {out:?}");
    let share = text
        .lines()
        .find_map(|l| l.strip_prefix("cross-zone: "))
        .and_then(|l| l.split('%').next())
        .and_then(|p| p.parse::<f64>().ok());
    ensure!(matches!(share, Some(p) if p < 1.0), "top zones: {text}");
    Ok(())
}

/// Zone a's endpoints slowed: its tiered client widens to the other zones with
/// a p99 within 1.5× of P2C over every endpoint (the `all` policy, under the
/// same slowdown at the same time); when the slowdown ends it returns in-zone.
async fn a_slow_zone_widens_and_comes_back(
    lab: &ZoneLab<'_>,
    tiered: &[&ClientProxy],
    plain: &[&ClientProxy],
) -> Result<()> {
    lab.slow_zone(ZONES[0], SLOWDOWN)?;
    let both = [tiered[0], plain[0]];
    let stats = load(&both, WORKERS, PAUSE, Duration::from_secs(8)).await;
    let (t, p) = (&stats[0], &stats[1]);
    eprintln!("slow, tiered: {}\nslow, all: {}", summary(t), summary(p));
    ensure!(t.errors == 0, "errors: {}", summary(t));
    ensure!(t.cross_zone() > 0.5, "did not widen: {}", summary(t));
    let (tp99, pp99) = (t.quantile(0.99), p.quantile(0.99));
    ensure!(
        tp99.as_secs_f64() <= 1.5 * pp99.as_secs_f64(),
        "tiered p99 {tp99:?} vs P2C over all {pp99:?}"
    );

    lab.slow_zone(ZONES[0], Duration::ZERO)?;
    until_window(tiered[0], "back in-zone", RETURN, |s| s.cross_zone() < 0.01).await
}

/// Zone c's endpoints unpublished while its client sends: no errors, and its
/// requests go to the other zones.
async fn an_empty_zone_uses_the_next_tier_without_errors(
    lab: &ZoneLab<'_>,
    tiered: &[&ClientProxy],
) -> Result<()> {
    let c = tiered[2];
    let clients = [c];
    let sending = load(&clients, WORKERS, PAUSE, Duration::from_secs(4));
    let unpublish = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        lab.publish(&ZONES[..2]).await
    };
    let (during, published) = tokio::join!(sending, unpublish);
    published?;
    eprintln!("zone c emptied, during: {}", summary(&during[0]));
    ensure!(during[0].errors == 0, "errors: {}", summary(&during[0]));
    let after = load(&[c], WORKERS, PAUSE, Duration::from_secs(2)).await;
    eprintln!("zone c emptied, after: {}", summary(&after[0]));
    ensure!(after[0].errors == 0, "errors: {}", summary(&after[0]));
    ensure!(
        after[0].cross_zone() == 1.0,
        "zone c still answered: {}",
        summary(&after[0])
    );
    lab.publish(&ZONES).await?;
    until_window(c, "zone c back in-zone", CONVERGE, |s| {
        s.cross_zone() < 0.01
    })
    .await
}

/// Zone-pair costs changed in the ConfigMap while clients run: zone a's own
/// endpoints made dear sends its traffic away, a cheap a→b pair shares it with
/// b, deleting the ConfigMap brings it home. No restarts.
async fn zone_costs_apply_at_run_time(lab: &ZoneLab<'_>, tiered: &[&ClientProxy]) -> Result<()> {
    let a = tiered[0];
    lab.set_zone_costs(Some("west-a west-a 5\n")).await?;
    until_window(a, "zone a avoided", CONVERGE, |s| s.cross_zone() > 0.99).await?;
    lab.set_zone_costs(Some("west-a west-b 0\n")).await?;
    until_window(a, "zone a shared with b only", CONVERGE, |s| {
        let c = s.served_by.get("west-c").copied().unwrap_or(0);
        (0.2..0.8).contains(&s.cross_zone()) && c == 0
    })
    .await?;
    lab.set_zone_costs(None).await?;
    until_window(a, "zone a back in-zone", CONVERGE, |s| {
        s.cross_zone() < 0.01
    })
    .await
}

/// Polls one-second windows of load on `client` until one satisfies `ok`
/// (with no errors), failing after `within`.
async fn until_window(
    client: &ClientProxy,
    what: &str,
    within: Duration,
    ok: impl Fn(&ZoneStats) -> bool,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let stats = load(&[client], WORKERS, PAUSE, Duration::from_secs(1)).await;
        let s = &stats[0];
        ensure!(s.errors == 0, "{what}: errors: {}", summary(s));
        if ok(s) {
            eprintln!("{what} after {:?}: {}", started.elapsed(), summary(s));
            return Ok(());
        }
        ensure!(
            started.elapsed() < within,
            "{what}: not within {within:?}: {}",
            summary(s)
        );
    }
}

fn summary(s: &ZoneStats) -> String {
    format!(
        "{}: {} answers {:?}, {} errors, cross-zone {:.2}%, p50 {:?}, p99 {:?}",
        s.zone,
        s.answered(),
        s.served_by,
        s.errors,
        100.0 * s.cross_zone(),
        s.quantile(0.5),
        s.quantile(0.99)
    )
}

/// The east app's answer (its pod's name) and the west one's.
const EAST_APP: &str = "svc-1";
const WEST_APP: &str = "svc-west";
/// Steady idempotent load: GETs per second over this many connections.
const RPS: u32 = 200;
const CONNECTIONS: u32 = 20;
/// How long after the kill failures and the move to east are measured.
const WINDOW: Duration = Duration::from_secs(3);

/// West's `demo/svc` has one local pod and includes its mirror `svc-east`
/// (east's `svc`, through east's gateway). Healthy, requests stay in west;
/// when the local pod dies, requests go to east with no failures; when
/// it returns, they come back.
#[tokio::test]
async fn a_dead_local_cluster_sends_traffic_to_the_other_cluster_without_errors() -> Result<()> {
    let (harness, scenario, pod) = linked_with_west_app(WEST_APP, APP_SERVICE).await?;
    let west = harness.cluster("west");
    let annotation = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": APP_SERVICE, "annotations": {BALANCER_INCLUDE_MIRRORS: "true"}},
    });
    Api::<Service>::namespaced(west.client(), APP_NAMESPACE)
        .patch(
            APP_SERVICE,
            &PatchParams::apply("tiers-test"),
            &Patch::Apply(annotation),
        )
        .await?;
    let apps = Arc::new(BTreeMap::from([(APP_SERVICE.to_string(), pod)]));
    let readiness = spawn_readiness(west.client(), APP_NAMESPACE, apps.clone());
    let client = scenario
        .start_client_to(&harness, "tier-client", REMOTE_AUTHORITY, &[])
        .await?;
    let addr = SocketAddr::from((client.ip(), CLIENT_OUTBOUND_PORT));
    let load = Load::start(addr, REMOTE_AUTHORITY, RPS, CONNECTIONS);

    // Healthy: two steady seconds of answers from west. A few may cross when
    // latency noise on a loaded machine reads as load (the known limit of the
    // load signal; 0-1.5% in runs at load average 5-7).
    let healthy = Instant::now() + Duration::from_secs(1);
    tokio::time::sleep_until(healthy + Duration::from_secs(2)).await;
    let answers = answers_between(&load.samples(), healthy, healthy + Duration::from_secs(2));
    let total: usize = answers.values().sum();
    let home = answers.get(WEST_APP).copied().unwrap_or(0);
    println!("healthy: {answers:?}");
    ensure!(
        total > 200 && home * 100 >= total * 97,
        "healthy traffic left west: {answers:?}"
    );

    // West's only pod dies: tier 2 takes over at once, without failures.
    let kill = Instant::now();
    apps[APP_SERVICE].kill_processes();
    tokio::time::sleep_until(kill + WINDOW).await;
    let samples = load.samples();
    let failed = failed_between(&samples, kill, kill + WINDOW);
    let to_east = time_to_backup(&samples, kill, kill + WINDOW, &[EAST_APP])
        .with_context(|| format!("{:?}", answers_between(&samples, kill, kill + WINDOW)))?;
    let failures: Vec<&str> = samples
        .iter()
        .filter(|s| s.sent >= kill && s.backend.is_none())
        .map(|s| s.failure.as_str())
        .collect();
    println!("west down: {failed} failed {failures:?}, 99% on east after {to_east:?}");
    ensure!(
        failed == 0,
        "{failed} idempotent requests failed: {failures:?}"
    );
    ensure!(to_east < Duration::from_secs(1), "{to_east:?}");

    // It returns: traffic comes back to west, still without failures.
    let revive = Instant::now();
    spawn_app(&apps[APP_SERVICE], WEST_APP)?;
    let deadline = revive + CONVERGE;
    let back = loop {
        let now = Instant::now();
        let recent = answers_between(&load.samples(), now - Duration::from_secs(1), now);
        if recent.len() == 1 && recent.contains_key(WEST_APP) {
            break now;
        }
        ensure!(now < deadline, "traffic never returned to west: {recent:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let samples = load.stop();
    readiness.abort();
    let failed = failed_between(&samples, revive, back);
    println!(
        "west back: all in west again {:?} after the restart, {failed} failed",
        back - revive
    );
    ensure!(failed == 0, "{failed} requests failed while west returned");
    Ok(())
}
