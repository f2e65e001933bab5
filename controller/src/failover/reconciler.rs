//! Keeps managed TrafficSplits' weights in step with their backends' health.
//!
//! Two reflectors feed it: the splits matching the selector, and every
//! EndpointSlice of the cluster (mirror slices included, any namespace, since a
//! backend may live in another namespace). Any change, a hold-down running out or
//! a retry falling due wakes one pass over the managed splits; each pass decides
//! (see [`super::decide`]) and merge-patches the split when its weights or
//! annotations differ from the decision. Patches carry the resourceVersion they
//! were computed from, so a concurrent writer makes them fail with a conflict
//! rather than be overwritten blindly; a failed patch is retried with backoff
//! until it lands.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use api::labels::SERVICE_NAME;
use api::split::{
    ACTIVE_TIER, LAST_SHIFT, ORIGINAL_WEIGHTS, Policy, Shift, TrafficSplit, backend_key,
    original_weights, weights,
};
use futures::{Stream, StreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{WatchStreamExt, reflector::ObjectRef};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::Metrics;
use super::decide::{self, HoldDown};
use crate::watch_errors::{CrdBackoff, WatchErrors};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Settings of the failover controller.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a better tier must stay ready before traffic returns to it.
    pub hold_down: Duration,
    /// Label selector of the splits to manage.
    pub selector: String,
}

/// Per-split memory between passes.
#[derive(Debug, Default)]
struct SplitState {
    hold: HoldDown,
    /// A failed patch: when to try again and the backoff after that.
    retry: Option<(Instant, Duration)>,
    /// A hold-down running out.
    recheck: Option<Instant>,
    /// The resourceVersion our last landed patch was made from: until the
    /// reflector shows a newer one, deciding again would only conflict.
    patched_from: Option<String>,
}

/// Runs the failover controller until `shutdown` turns true.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let wake = Arc::new(Notify::new());
    let splits_api: Api<TrafficSplit> = Api::all(client.clone());
    let (splits, splits_w) = reflector::store();
    let (slices, slices_w) = reflector::store();
    let split_events = watcher(
        splits_api,
        watcher::Config::default().labels(&config.selector),
    )
    .backoff(CrdBackoff::default())
    .reflect(splits_w);
    let slice_events = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        Default::default(),
    )
    .default_backoff()
    .reflect(slices_w);
    let tasks = [
        tokio::spawn(drive(
            "TrafficSplit",
            split_events,
            wake.clone(),
            metrics.clone(),
        )),
        tokio::spawn(drive(
            "EndpointSlice",
            slice_events,
            wake.clone(),
            metrics.clone(),
        )),
    ];
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "meshlink-failover".into(),
            instance: None,
        },
    );
    let ctx = Ctx {
        client,
        config,
        metrics,
        recorder,
        splits,
        slices,
    };
    let mut states: HashMap<ObjectRef<TrafficSplit>, SplitState> = HashMap::new();
    let ready = async {
        let _ = ctx.splits.wait_until_ready().await;
        let _ = ctx.slices.wait_until_ready().await;
    };
    tokio::select! {
        () = ready => {}
        _ = shutdown.wait_for(|s| *s) => return,
    }
    tracing::info!(selector = %ctx.config.selector, hold_down = ?ctx.config.hold_down, "failover controller synced");
    loop {
        let next = ctx.pass(&mut states).await;
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = wake.notified() => {}
            () = sleep => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    for t in tasks {
        t.abort();
    }
}

/// Consumes a reflector's stream, waking the pass on every event.
async fn drive<K>(
    kind: &'static str,
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    wake: Arc<Notify>,
    metrics: Metrics,
) {
    let mut events = std::pin::pin!(events);
    let mut errors = WatchErrors::new(kind);
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                errors.ok(&event);
                wake.notify_one();
            }
            Err(error) => {
                metrics.watch_restarts.inc();
                errors.failed(&error);
            }
        }
    }
}

struct Ctx {
    client: Client,
    config: Config,
    metrics: Metrics,
    recorder: Recorder,
    splits: Store<TrafficSplit>,
    slices: Store<EndpointSlice>,
}

impl Ctx {
    /// Decides every managed split once; returns when the next timed wake-up is due.
    async fn pass(
        &self,
        states: &mut HashMap<ObjectRef<TrafficSplit>, SplitState>,
    ) -> Option<Instant> {
        let ready = self.ready_services();
        let splits = self.splits.state();
        states.retain(|key, _| splits.iter().any(|s| ObjectRef::from_obj(&**s) == *key));
        self.metrics.managed.set(splits.len() as i64);
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for split in splits {
            let state = states.entry(ObjectRef::from_obj(&*split)).or_default();
            if let Some((at, _)) = state.retry.filter(|(at, _)| *at > now) {
                next = earliest(next, Some(at));
                continue;
            }
            if state.patched_from.is_some() && state.patched_from == split.resource_version() {
                continue;
            }
            self.reconcile(&split, &ready, state, now).await;
            next = earliest(next, state.retry.map(|(at, _)| at));
            next = earliest(next, state.recheck);
        }
        next
    }

    /// `(namespace, name)` of every Service with at least one ready endpoint.
    fn ready_services(&self) -> BTreeSet<(String, String)> {
        self.slices
            .state()
            .iter()
            .filter(|s| {
                s.endpoints.iter().any(|ep| {
                    !ep.addresses.is_empty()
                        && ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
                })
            })
            .filter_map(|s| {
                let name = s.labels().get(SERVICE_NAME)?.clone();
                Some((s.namespace()?, name))
            })
            .collect()
    }

    async fn reconcile(
        &self,
        split: &TrafficSplit,
        ready_services: &BTreeSet<(String, String)>,
        state: &mut SplitState,
        now: Instant,
    ) {
        let name = split.name_any();
        let ns = split.namespace().unwrap_or_default();
        let policy = match Policy::of(split) {
            Ok(p) => p,
            Err(error) => {
                tracing::warn!(namespace = %ns, split = %name, %error, "skipping managed split");
                return;
            }
        };
        let ready: BTreeSet<String> = split
            .spec
            .backends
            .iter()
            .map(|b| b.service.clone())
            .filter(|b| ready_services.contains(&backend_key(&ns, b)))
            .collect();
        let current = split
            .annotations()
            .get(ACTIVE_TIER)
            .and_then(|t| t.parse::<usize>().ok())
            .filter(|t| *t < policy.tiers.len());
        let step = decide::next_tier(
            current,
            decide::healthiest(&policy, &ready),
            &mut state.hold,
            now,
            self.config.hold_down,
        );
        state.recheck = step.recheck.map(|d| now + d);
        let original = original_weights(split).unwrap_or_else(|| weights(split));
        let desired = decide::weights(&policy, &original, step.tier, &ready);
        let shift = current.filter(|c| *c != step.tier).map(|from| Shift {
            time: now_rfc3339(),
            from,
            to: step.tier,
            reason: if step.tier > from {
                "Failover"
            } else {
                "Recovered"
            }
            .into(),
        });
        let annotated = split.annotations().contains_key(ORIGINAL_WEIGHTS) && current.is_some();
        if desired == weights(split) && annotated && shift.is_none() {
            state.retry = None;
            return;
        }
        match self
            .patch(split, &original, &desired, step.tier, shift.as_ref())
            .await
        {
            Ok(()) => {
                state.retry = None;
                state.patched_from = split.resource_version();
                if let Some(shift) = shift {
                    self.shifted(split, &policy, &shift).await;
                }
            }
            Err(error) => {
                self.metrics.patch_failures.inc();
                let backoff = state
                    .retry
                    .map_or(BACKOFF_MIN, |(_, b)| (b * 2).min(BACKOFF_MAX));
                state.retry = Some((now + backoff, backoff));
                tracing::warn!(namespace = %ns, split = %name, %error, retry_in = ?backoff, "patching split weights failed; retrying");
            }
        }
    }

    async fn patch(
        &self,
        split: &TrafficSplit,
        original: &BTreeMap<String, u32>,
        desired: &BTreeMap<String, u32>,
        tier: usize,
        shift: Option<&Shift>,
    ) -> Result<(), kube::Error> {
        let backends: Vec<_> = split
            .spec
            .backends
            .iter()
            .map(|b| json!({"service": b.service, "weight": desired.get(&b.service).copied().unwrap_or(0)}))
            .collect();
        let mut annotations = json!({
            ORIGINAL_WEIGHTS: serde_json::to_string(original).unwrap_or_default(),
            ACTIVE_TIER: tier.to_string(),
        });
        if let Some(shift) = shift {
            annotations[LAST_SHIFT] = json!(serde_json::to_string(shift).unwrap_or_default());
        }
        let body = json!({
            "metadata": {"resourceVersion": split.resource_version(), "annotations": annotations},
            "spec": {"backends": backends},
        });
        let api: Api<TrafficSplit> =
            Api::namespaced(self.client.clone(), &split.namespace().unwrap_or_default());
        api.patch(
            &split.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&body),
        )
        .await
        .map(drop)
    }

    /// Records a landed shift: a metric, a log line and an Event on the split.
    async fn shifted(&self, split: &TrafficSplit, policy: &Policy, shift: &Shift) {
        self.metrics.shift(&shift.reason);
        let to = policy.tiers[shift.to].join(", ");
        let note = format!(
            "traffic moved from tier {} to tier {} ({to})",
            shift.from, shift.to
        );
        tracing::info!(namespace = ?split.namespace(), split = %split.name_any(), %note, "failover shift");
        let event = Event {
            type_: if shift.reason == "Failover" {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: shift.reason.clone(),
            note: Some(note),
            action: "ShiftWeights".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &split.object_ref(&())).await {
            tracing::warn!(%error, "recording the shift Event failed");
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Now, RFC 3339 in UTC.
fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}
