//! Failover with TrafficSplits under steady load, every piece a real process
//! (`multicluster_tests::failover::Bed`): the controller moves weight down the
//! chain when a tier has no ready endpoints and back after the hold-down, keeps
//! the user's weights, retries patches until they land; the client sidecar's
//! fast path moves traffic before the controller does, so idempotent requests
//! do not fail.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use api::split::{ACTIVE_TIER, ORDER, ORIGINAL_WEIGHTS, PRIMARY, TrafficSplit, weights};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use multicluster_tests::failover::{
    AUTHORITY, Bed, BedConfig, Load, NAMESPACE, ROOT, answers_between, failed_between, install_crd,
    linked_with_west_app, spawn_readiness, time_to_backup, write_split,
};
use multicluster_tests::scenario::{APP_NAMESPACE, APP_PORT, CLIENT_OUTBOUND_PORT};
use multicluster_tests::{Harness, Scenario};
use tokio::time::Instant;

/// The hold-down the tests run the controller with.
const HOLD_DOWN: Duration = Duration::from_secs(3);
/// Steady load: idempotent GETs per second, over this many connections.
const RPS: u32 = 200;
const WORKERS: u32 = 20;
/// How long after a kill the failover is measured.
const WINDOW: Duration = Duration::from_secs(3);
/// How long the controller may take to write a decision.
const DECIDE: Duration = Duration::from_secs(15);

fn config(weights: &[(&str, u32)], annotations: &[(&str, &str)]) -> BedConfig {
    BedConfig {
        backends: weights.iter().map(|(b, _)| b.to_string()).collect(),
        weights: weights.iter().map(|(b, w)| (b.to_string(), *w)).collect(),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        hold_down: HOLD_DOWN,
        fast_path: true,
    }
}

async fn bed(config: &BedConfig) -> Result<(Harness, Bed)> {
    multicluster_tests::init_tracing();
    let harness = Harness::builder().cluster("west").start().await?;
    let bed = Bed::start(&harness, config).await?;
    Ok((harness, bed))
}

fn tier(split: &TrafficSplit) -> Option<&str> {
    split.annotations().get(ACTIVE_TIER).map(String::as_str)
}

fn map(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(b, w)| (b.to_string(), *w)).collect()
}

/// Waits until the last `n` answers all came from `backend`.
async fn wait_served_by(load: &Load, backend: &str, n: usize) -> Result<()> {
    let deadline = Instant::now() + DECIDE;
    loop {
        let samples = load.samples();
        if samples.len() >= n
            && samples[samples.len() - n..]
                .iter()
                .all(|s| s.backend.as_deref() == Some(backend))
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the last {n} answers never all came from {backend}: {:?}",
            samples.iter().rev().take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the controller has recorded an Event with `reason` on the split.
async fn wait_event(bed: &Bed, reason: &str) -> Result<()> {
    let events: Api<Event> = Api::namespaced(bed.kube(), NAMESPACE);
    let deadline = Instant::now() + DECIDE;
    loop {
        let reasons: Vec<String> = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(ROOT))
            .filter_map(|e| e.reason)
            .collect();
        if reasons.iter().any(|r| r == reason) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "no {reason} Event on the split: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn primary_killed_under_load_fails_over_and_returns_after_the_hold_down() -> Result<()> {
    let (_harness, bed) = bed(&config(
        &[("web-primary", 100), ("web-backup", 0)],
        &[(PRIMARY, "web-primary")],
    ))
    .await?;
    let load = Load::start(bed.client_addr(), AUTHORITY, RPS, WORKERS);
    wait_served_by(&load, "web-primary", 100).await?;

    let kill = Instant::now();
    bed.kill("web-primary")?;
    let split = bed.wait_split(DECIDE, |s| tier(s) == Some("1")).await?;
    let shifted = kill.elapsed();
    assert_eq!(
        weights(&split),
        map(&[("web-primary", 0), ("web-backup", 1)])
    );
    tokio::time::sleep_until(kill + WINDOW).await;
    let samples = load.samples();
    let failed = failed_between(&samples, kill, kill + WINDOW);
    let to_backup = time_to_backup(&samples, kill, kill + WINDOW, &["web-backup"])
        .context("99% of requests never reached the backup")?;
    println!(
        "failover: {failed} failed of {} requests, 99% on the backup after {to_backup:?}, controller shifted after {shifted:?}",
        answers_between(&samples, kill, kill + WINDOW)
            .values()
            .sum::<usize>()
    );
    assert!(to_backup < Duration::from_secs(1), "{to_backup:?}");
    assert!(failed <= 2, "{failed} idempotent requests failed (goal 0)");
    wait_event(&bed, "Failover").await?;
    assert!(bed.controller_metric("failover_shifts_total").await? >= 1.0);

    bed.revive("web-primary").await?;
    let up = Instant::now();
    let split = bed.wait_split(DECIDE, |s| tier(s) == Some("0")).await?;
    let back = up.elapsed();
    assert_eq!(
        weights(&split),
        map(&[("web-primary", 100), ("web-backup", 0)])
    );
    wait_served_by(&load, "web-primary", 100).await?;
    let samples = load.stop();
    let first_primary = samples
        .iter()
        .find(|s| s.sent >= up && s.backend.as_deref() == Some("web-primary"))
        .context("no answer from the revived primary")?;
    let returned = first_primary.sent.saturating_duration_since(up);
    println!(
        "recovery: split back after {back:?}, first answer from the primary {returned:?} after it was up"
    );
    assert!(
        back >= HOLD_DOWN,
        "weights returned after {back:?}, before the hold-down"
    );
    assert!(
        returned >= HOLD_DOWN,
        "traffic returned after {returned:?}, before the hold-down"
    );
    assert_eq!(failed_between(&samples, up, Instant::now()), 0);
    wait_event(&bed, "Recovered").await?;
    Ok(())
}

#[tokio::test]
async fn a_chain_whose_first_two_tiers_die_is_served_by_the_third() -> Result<()> {
    let (_harness, bed) = bed(&config(
        &[("web-west", 1), ("web-east", 0), ("web-north", 0)],
        &[(ORDER, "web-west, web-east, web-north")],
    ))
    .await?;
    let load = Load::start(bed.client_addr(), AUTHORITY, RPS, WORKERS);
    wait_served_by(&load, "web-west", 50).await?;
    let kill = Instant::now();
    bed.kill("web-west")?;
    bed.kill("web-east")?;
    let split = bed.wait_split(DECIDE, |s| tier(s) == Some("2")).await?;
    assert_eq!(
        weights(&split),
        map(&[("web-west", 0), ("web-east", 0), ("web-north", 1)])
    );
    tokio::time::sleep_until(kill + WINDOW).await;
    let samples = load.stop();
    let failed = failed_between(&samples, kill, kill + WINDOW);
    let to_north = time_to_backup(&samples, kill, kill + WINDOW, &["web-north"])
        .context("99% of requests never reached web-north")?;
    println!("chain: {failed} failed, 99% on web-north after {to_north:?}");
    assert!(to_north < Duration::from_secs(1), "{to_north:?}");
    assert!(failed <= 2, "{failed} idempotent requests failed (goal 0)");
    let late = answers_between(&samples, kill + Duration::from_secs(1), kill + WINDOW);
    assert_eq!(late.keys().collect::<Vec<_>>(), ["web-north"], "{late:?}");
    Ok(())
}

#[tokio::test]
async fn the_users_weights_between_backups_survive_a_failover_and_a_recovery() -> Result<()> {
    let (_harness, bed) = bed(&config(
        &[("web-primary", 100), ("web-a", 80), ("web-b", 20)],
        &[(PRIMARY, "web-primary")],
    ))
    .await?;
    let original = map(&[("web-primary", 100), ("web-a", 80), ("web-b", 20)]);
    let split = bed.split().await?;
    assert_eq!(api::split::original_weights(&split), Some(original.clone()));
    assert_eq!(
        weights(&split),
        map(&[("web-primary", 100), ("web-a", 0), ("web-b", 0)])
    );
    let load = Load::start(bed.client_addr(), AUTHORITY, RPS, WORKERS);

    for round in 1..=2 {
        bed.kill("web-primary")?;
        let split = bed.wait_split(DECIDE, |s| tier(s) == Some("1")).await?;
        assert_eq!(
            weights(&split),
            map(&[("web-primary", 0), ("web-a", 80), ("web-b", 20)])
        );
        let from = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let answers = answers_between(&load.samples(), from, Instant::now());
        let (a, b) = (
            answers.get("web-a").copied().unwrap_or(0),
            answers.get("web-b").copied().unwrap_or(0),
        );
        let share_b = b as f64 / (a + b).max(1) as f64;
        println!("round {round}: {answers:?}, web-b share {share_b:.2}");
        assert!(
            (0.12..=0.28).contains(&share_b),
            "web-b got {share_b:.2} of the traffic, want ~0.20"
        );

        bed.revive("web-primary").await?;
        let split = bed.wait_split(DECIDE, |s| tier(s) == Some("0")).await?;
        assert_eq!(
            weights(&split),
            map(&[("web-primary", 100), ("web-a", 0), ("web-b", 0)])
        );
        assert_eq!(
            api::split::original_weights(&split),
            Some(original.clone()),
            "{ORIGINAL_WEIGHTS} changed"
        );
        wait_served_by(&load, "web-primary", 50).await?;
    }
    load.stop();
    Ok(())
}

#[tokio::test]
async fn a_denied_weight_patch_is_retried_until_it_lands() -> Result<()> {
    let (harness, bed) = bed(&config(
        &[("web-primary", 100), ("web-backup", 0)],
        &[(PRIMARY, "web-primary")],
    ))
    .await?;
    let west = harness.cluster("west");
    freeze_policy(west).await?;
    let splits: Api<TrafficSplit> = Api::namespaced(bed.kube(), NAMESPACE);
    let label = |v: serde_json::Value| {
        Patch::Merge(serde_json::json!({"metadata": {"labels": {"frozen": v}}}))
    };
    splits
        .patch(ROOT, &PatchParams::default(), &label("true".into()))
        .await?;
    // The policy applies once the apiserver has loaded it: until a write is refused.
    let deadline = Instant::now() + DECIDE;
    let probe = Patch::Merge(serde_json::json!({"metadata": {"annotations": {"probe": "x"}}}));
    while splits
        .patch(ROOT, &PatchParams::default(), &probe)
        .await
        .is_ok()
    {
        ensure!(
            Instant::now() < deadline,
            "the freeze policy never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    bed.kill("web-primary")?;
    let failures_before = bed
        .controller_metric("failover_patch_failures_total")
        .await?;
    let deadline = Instant::now() + DECIDE;
    while bed
        .controller_metric("failover_patch_failures_total")
        .await?
        < failures_before + 2.0
    {
        ensure!(
            Instant::now() < deadline,
            "the controller did not retry the refused patch"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        tier(&bed.split().await?),
        Some("0"),
        "a refused patch cannot have landed"
    );

    splits
        .patch(
            ROOT,
            &PatchParams::default(),
            &label(serde_json::Value::Null),
        )
        .await?;
    let split = bed.wait_split(DECIDE, |s| tier(s) == Some("1")).await?;
    assert_eq!(
        weights(&split),
        map(&[("web-primary", 0), ("web-backup", 1)])
    );
    wait_event(&bed, "Failover").await?;
    Ok(())
}

/// Cross-cluster: the end-to-end scenario (east's app exported, mirrored into
/// west as `svc-east` behind east's gateway) plus, in west, a local app
/// `svc-west` with the kubelet stand-in, a root Service `svc`, a managed split
/// with the chain `order`, and a client sidecar to `svc` under load.
struct CrossCluster {
    scenario: Scenario,
    split_client: kube::Client,
    load: Load,
    west_apps: std::sync::Arc<BTreeMap<String, multicluster_tests::Pod>>,
    _client: multicluster_tests::Pod,
    _readiness: ReadinessGuard,
    _harness: Harness,
}

/// Stops the kubelet stand-in with the test.
struct ReadinessGuard(tokio::task::JoinHandle<()>);

impl Drop for ReadinessGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const CROSS_ROOT: &str = "svc";
const CROSS_AUTHORITY: &str = "svc.demo.svc.cluster.local:8080";
/// What east's app answers with (its pod's name).
const EAST_APP: &str = "svc-1";

async fn cross_cluster(order: &str, weights: &[(&str, u32)]) -> Result<CrossCluster> {
    let (harness, scenario, pod) = linked_with_west_app("svc-west", "svc-west").await?;
    let west = harness.cluster("west");
    install_crd(west).await?;
    west.publish(APP_NAMESPACE, CROSS_ROOT, APP_PORT, &[])
        .await?;
    let apps = std::sync::Arc::new(BTreeMap::from([("svc-west".to_string(), pod)]));
    let readiness = ReadinessGuard(spawn_readiness(west.client(), APP_NAMESPACE, apps.clone()));
    let weights: Vec<(String, u32)> = weights.iter().map(|(b, w)| (b.to_string(), *w)).collect();
    let annotations = BTreeMap::from([(ORDER.to_string(), order.to_string())]);
    write_split(
        west.client(),
        APP_NAMESPACE,
        CROSS_ROOT,
        &weights,
        &annotations,
    )
    .await?;
    let client = scenario
        .start_client_to(&harness, "split-client", CROSS_AUTHORITY, &[])
        .await?;
    let addr = std::net::SocketAddr::from((client.ip(), CLIENT_OUTBOUND_PORT));
    let load = Load::start(addr, CROSS_AUTHORITY, RPS, WORKERS);
    Ok(CrossCluster {
        scenario,
        split_client: west.client(),
        load,
        west_apps: apps,
        _client: client,
        _readiness: readiness,
        _harness: harness,
    })
}

impl CrossCluster {
    async fn wait_tier(&self, want: &str, within: Duration) -> Result<TrafficSplit> {
        let splits: Api<TrafficSplit> = Api::namespaced(self.split_client.clone(), APP_NAMESPACE);
        let deadline = Instant::now() + within;
        loop {
            let split = splits.get(CROSS_ROOT).await?;
            if tier(&split) == Some(want) {
                return Ok(split);
            }
            if Instant::now() >= deadline {
                bail!(
                    "split never reached tier {want}: {:?} {:?}; endpoints ready/all: {}",
                    weights(&split),
                    split.annotations(),
                    self.slice_readiness().await?
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `service ready/all` for each EndpointSlice in the app namespace, for
    /// failure messages.
    async fn slice_readiness(&self) -> Result<String> {
        let slices: Api<EndpointSlice> = Api::namespaced(self.split_client.clone(), APP_NAMESPACE);
        let list = slices.list(&ListParams::default()).await?;
        let rows = list.items.iter().map(|s| {
            let ready = s
                .endpoints
                .iter()
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                .count();
            let service = s
                .labels()
                .get("kubernetes.io/service-name")
                .cloned()
                .unwrap_or_default();
            format!("{service} {ready}/{}", s.endpoints.len())
        });
        Ok(rows.collect::<Vec<_>>().join(", "))
    }

    /// Failed requests and time to 99% on `backup` in the window after `kill`.
    async fn measure(&self, kill: Instant, backup: &str) -> Result<(usize, Duration)> {
        tokio::time::sleep_until(kill + WINDOW).await;
        let samples = self.load.samples();
        let failed = failed_between(&samples, kill, kill + WINDOW);
        let to_backup =
            time_to_backup(&samples, kill, kill + WINDOW, &[backup]).with_context(|| {
                format!(
                    "99% never reached {backup}: {:?}",
                    answers_between(&samples, kill, kill + WINDOW)
                )
            })?;
        Ok((failed, to_backup))
    }
}

#[tokio::test]
async fn a_west_primary_killed_fails_over_to_the_east_mirror_through_the_gateway() -> Result<()> {
    let cc = cross_cluster("svc-west, svc-east", &[("svc-west", 1), ("svc-east", 0)]).await?;
    cc.wait_tier("0", DECIDE).await?;
    wait_served_by(&cc.load, "svc-west", 100).await?;
    let kill = Instant::now();
    cc.west_apps["svc-west"].kill_processes();
    let (failed, to_east) = cc.measure(kill, EAST_APP).await?;
    println!("west -> east: {failed} failed, 99% on east's app after {to_east:?}");
    assert!(to_east < Duration::from_secs(1), "{to_east:?}");
    assert!(failed <= 2, "{failed} idempotent requests failed (goal 0)");
    let split = cc.wait_tier("1", DECIDE).await?;
    assert_eq!(weights(&split), map(&[("svc-west", 0), ("svc-east", 1)]));
    Ok(())
}

#[tokio::test]
async fn the_east_gateway_dying_fails_over_like_a_dead_service() -> Result<()> {
    let cc = cross_cluster("svc-east, svc-west", &[("svc-east", 1), ("svc-west", 0)]).await?;
    cc.wait_tier("0", DECIDE).await?;
    wait_served_by(&cc.load, EAST_APP, 100).await?;
    let kill = Instant::now();
    cc.scenario.kill_gateway("east")?;
    let (failed, to_west) = cc.measure(kill, "svc-west").await?;
    println!("east gateway down: {failed} failed, 99% on svc-west after {to_west:?}");
    assert!(to_west < Duration::from_secs(1), "{to_west:?}");
    assert!(failed <= 2, "{failed} idempotent requests failed (goal 0)");
    // The controller follows once the mirror's probe marks svc-east not ready
    // (3 failed probes 3 s apart by default).
    let split = cc.wait_tier("1", Duration::from_secs(60)).await?;
    let shifted = kill.elapsed();
    assert_eq!(weights(&split), map(&[("svc-east", 0), ("svc-west", 1)]));
    let slices: Api<EndpointSlice> = Api::namespaced(cc.split_client.clone(), APP_NAMESPACE);
    let mirror = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=svc-east"))
        .await?;
    let ready = mirror
        .items
        .iter()
        .flat_map(|s| &s.endpoints)
        .any(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false));
    assert!(!ready, "svc-east's mirror endpoints are still ready");
    println!("east gateway down: the controller shifted after {shifted:?}");
    Ok(())
}

/// A ValidatingAdmissionPolicy refusing every update of a TrafficSplit labelled
/// `frozen` that keeps the label: a writer that conflicts with the controller.
async fn freeze_policy(west: &multicluster_tests::Cluster) -> Result<()> {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let pp = PatchParams::apply("failover-test").force();
    let policy = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "freeze-splits"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["split.smi-spec.io"], "apiVersions": ["*"],
                "operations": ["UPDATE"], "resources": ["trafficsplits"],
            }]},
            "validations": [{
                "expression": "!(has(oldObject.metadata.labels) && 'frozen' in oldObject.metadata.labels && has(object.metadata.labels) && 'frozen' in object.metadata.labels)",
                "message": "this TrafficSplit is frozen",
            }],
        },
    });
    Api::<ValidatingAdmissionPolicy>::all(west.client())
        .patch("freeze-splits", &pp, &Patch::Apply(policy))
        .await?;
    let binding = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "freeze-splits"},
        "spec": {"policyName": "freeze-splits", "validationActions": ["Deny"]},
    });
    Api::<ValidatingAdmissionPolicyBinding>::all(west.client())
        .patch("freeze-splits", &pp, &Patch::Apply(binding))
        .await?;
    Ok(())
}
