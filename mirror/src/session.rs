//! One running mirror of one Link with one set of credentials: the watches
//! feeding the index, the writer loop, the gateway watcher and the status
//! writer. It lives until the Link's spec or Secret changes (the controller
//! then starts a fresh session) and keeps existing mirrors whatever happens to
//! the remote cluster.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use api::identity::SpiffeId;
use api::link::{Link, LinkSpec, MirrorReason};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{PartialObjectMeta, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

use crate::gateway::{GatewayProber, GatewayReport};
use crate::index::{Desired, Index, ServiceKey, mirrored_key};
use crate::metrics::ClusterMetrics;
use crate::status::{self, Health, ServiceResult};
use crate::writer::{Writer, cluster_selector};

/// Knobs of a session, fixed for its lifetime.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Concurrent mirror writes.
    pub concurrency: usize,
    /// How often orphans are looked for besides start-up.
    pub resync_interval: Duration,
    /// How often DNS gateway names are re-resolved.
    pub resolve_interval: Duration,
    /// The DNS server for gateway names; `None` follows /etc/resolv.conf.
    pub dns_server: Option<SocketAddr>,
}

/// State shared by the session's tasks.
struct Shared {
    index: Mutex<Index>,
    dirty: Notify,
    results: Mutex<BTreeMap<ServiceKey, ServiceResult>>,
    health: Mutex<Health>,
    status_dirty: Notify,
    written: Mutex<HashMap<ServiceKey, Desired>>,
    attempts: Mutex<HashMap<ServiceKey, u32>>,
}

/// Poisoning only follows a panic elsewhere; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything a session needs.
pub struct Session {
    /// The Link as read at start.
    pub link: Arc<Link>,
    /// Client for the local cluster.
    pub local: Client,
    /// Client for the target cluster.
    pub remote: Client,
    /// TLS config for gateway probes and the identity the gateway must prove
    /// (`None`: gateway never probed, never alive).
    pub tls: Option<(Arc<rustls::ClientConfig>, SpiffeId)>,
    /// Metrics for this Link's cluster.
    pub metrics: ClusterMetrics,
    /// Event recorder.
    pub recorder: Recorder,
    /// Knobs.
    pub config: SessionConfig,
}

impl Session {
    /// Runs until the returned future is dropped.
    pub async fn run(self) {
        let spec = Arc::new(self.link.spec.clone());
        let shared = Arc::new(Shared {
            index: Mutex::new(Index::new(spec.clone())),
            dirty: Notify::new(),
            results: Mutex::default(),
            health: Mutex::default(),
            status_dirty: Notify::new(),
            written: Mutex::default(),
            attempts: Mutex::default(),
        });
        let mut tasks = JoinSet::new();
        let cluster = spec.target_cluster_name.clone();
        let (svc_synced, svc_rx) = watch::channel(false);
        let (slice_synced, slice_rx) = watch::channel(false);
        let (ns_synced, ns_rx) = watch::channel(false);
        let remote = Some(self.metrics.clone());
        tasks.spawn(pump::<Service>(
            Api::all(self.remote.clone()),
            shared.clone(),
            svc_synced,
            remote.clone(),
        ));
        tasks.spawn(pump::<EndpointSlice>(
            Api::all(self.remote.clone()),
            shared.clone(),
            slice_synced,
            remote,
        ));
        tasks.spawn(pump::<Namespace>(
            Api::all(self.local.clone()),
            shared.clone(),
            ns_synced,
            None,
        ));
        let local_services = local_store::<Service>(&self.local, &cluster, &mut tasks);
        let local_slices = local_store::<EndpointSlice>(&self.local, &cluster, &mut tasks);
        self.spawn_gateway(&spec, &shared, &mut tasks);
        tasks.spawn(status_loop(
            self.local.clone(),
            self.link.clone(),
            shared.clone(),
        ));

        tracing::debug!("session started; waiting for initial lists");
        for mut rx in [svc_rx, slice_rx, ns_rx] {
            if rx.wait_for(|synced| *synced).await.is_err() {
                return;
            }
        }
        if local_services.wait_until_ready().await.is_err()
            || local_slices.wait_until_ready().await.is_err()
        {
            return;
        }
        tracing::debug!("initial lists done; mirroring");
        let link_ref = self.link.object_ref(&());
        let writer = Writer::new(self.local.clone(), cluster, local_slices.clone());
        let (events, events_rx) = mpsc::channel(1024);
        tasks.spawn(publish_events(self.recorder.clone(), link_ref, events_rx));
        let ctx = WriteContext {
            writer,
            shared: shared.clone(),
            events,
            metrics: self.metrics.clone(),
        };
        let mut resync = tokio::time::interval(self.config.resync_interval);
        loop {
            tokio::select! {
                _ = shared.dirty.notified() => {}
                _ = resync.tick() => collect_orphans(&shared, &local_services, &local_slices),
            }
            ctx.write_batch(self.config.concurrency).await;
        }
    }

    fn spawn_gateway(&self, spec: &Arc<LinkSpec>, shared: &Arc<Shared>, tasks: &mut JoinSet<()>) {
        let Some((tls, identity)) = self.tls.clone() else {
            if !spec.gateway_addresses.is_empty() {
                tracing::warn!(
                    "no TLS settings for gateway probes; gateway endpoints stay not ready"
                );
            }
            return;
        };
        if spec.gateway_addresses.is_empty() {
            return;
        }
        let prober = match GatewayProber::new(
            spec.clone(),
            tls,
            identity,
            self.config.resolve_interval,
            self.config.dns_server,
            self.metrics.clone(),
        ) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "gateway prober unavailable");
                return;
            }
        };
        let (tx, mut rx) = watch::channel(GatewayReport::default());
        tasks.spawn(prober.run(tx));
        let shared = shared.clone();
        tasks.spawn(async move {
            while rx.changed().await.is_ok() {
                let report = rx.borrow_and_update().clone();
                lock(&shared.index).set_gateway(report.state.clone());
                {
                    let mut health = lock(&shared.health);
                    health.gateway_alive = Some(report.state.alive);
                    health.last_probe = report.last_probe;
                    health.probe_latency = report.latency;
                }
                shared.dirty.notify_one();
                shared.status_dirty.notify_one();
            }
        });
    }
}

/// Marks dirty every local mirror with no exported remote counterpart.
fn collect_orphans(
    shared: &Shared,
    services: &Store<PartialObjectMeta<Service>>,
    slices: &Store<PartialObjectMeta<EndpointSlice>>,
) {
    let local: Vec<ServiceKey> = services
        .state()
        .iter()
        .filter_map(|s| mirrored_key(&s.metadata))
        .chain(
            slices
                .state()
                .iter()
                .filter_map(|s| mirrored_key(&s.metadata)),
        )
        .collect();
    let mut index = lock(&shared.index);
    let orphans = index.orphans(local);
    if !orphans.is_empty() {
        tracing::info!(count = orphans.len(), "collecting orphaned mirrors");
        for key in orphans {
            index.mark_dirty(key);
        }
        shared.dirty.notify_one();
    }
}

/// A metadata-only reflector of this Link's local mirror objects (names and
/// labels are all orphan collection needs), driven by a task.
fn local_store<K>(
    client: &Client,
    cluster: &str,
    tasks: &mut JoinSet<()>,
) -> Store<PartialObjectMeta<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().labels(&cluster_selector(cluster));
    let watch = watch_stream(Api::<PartialObjectMeta<K>>::all(client.clone()), config);
    let stream = reflector::reflector(writer, watch).default_backoff();
    tasks.spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::warn!(error = %e, "local mirror watch failed; retrying");
            }
        }
    });
    reader
}

/// Objects that feed the index.
trait Indexed:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    fn apply(index: &mut Index, obj: Self);
    fn delete(index: &mut Index, obj: &Self);
    fn reset(index: &mut Index, objs: Vec<Self>);
}

impl Indexed for Service {
    fn apply(index: &mut Index, obj: Self) {
        index.apply_service(obj);
    }
    fn delete(index: &mut Index, obj: &Self) {
        if let (Some(ns), Some(name)) = (&obj.metadata.namespace, &obj.metadata.name) {
            index.delete_service(&ServiceKey::new(ns, name));
        }
    }
    fn reset(index: &mut Index, objs: Vec<Self>) {
        index.reset_services(objs);
    }
}

impl Indexed for EndpointSlice {
    fn apply(index: &mut Index, obj: Self) {
        index.apply_slice(obj);
    }
    fn delete(index: &mut Index, obj: &Self) {
        index.delete_slice(obj);
    }
    fn reset(index: &mut Index, objs: Vec<Self>) {
        index.reset_slices(objs);
    }
}

impl Indexed for Namespace {
    fn apply(index: &mut Index, obj: Self) {
        index.apply_namespace(&obj);
    }
    fn delete(index: &mut Index, obj: &Self) {
        if let Some(name) = &obj.metadata.name {
            index.delete_namespace(name);
        }
    }
    fn reset(index: &mut Index, objs: Vec<Self>) {
        index.reset_namespaces(objs);
    }
}

/// Feeds one watch into the index. Errors (including an object that fails to
/// decode) are logged and the watch resumes with backoff: never fatal. For
/// remote watches (`remote` is set) errors mark the remote unreachable.
async fn pump<K: Indexed>(
    api: Api<K>,
    shared: Arc<Shared>,
    synced: watch::Sender<bool>,
    remote: Option<ClusterMetrics>,
) {
    let stream = watch_stream(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut buffer = Vec::new();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(kind = K::kind(&()).as_ref(), error = %e, "watch failed; retrying");
                if let Some(metrics) = &remote {
                    metrics.watch_restarts.inc();
                    set_reachable(&shared, false, "RemoteUnreachable", &e.to_string());
                }
                continue;
            }
        };
        if remote.is_some() {
            set_reachable(&shared, true, "Watching", "watching the remote cluster");
        }
        match event {
            Event::Init => buffer.clear(),
            Event::InitApply(obj) => buffer.push(obj),
            Event::InitDone => {
                K::reset(&mut lock(&shared.index), std::mem::take(&mut buffer));
                synced.send_replace(true);
            }
            Event::Apply(obj) => K::apply(&mut lock(&shared.index), obj),
            Event::Delete(obj) => K::delete(&mut lock(&shared.index), &obj),
        }
        shared.dirty.notify_one();
    }
}

fn set_reachable(shared: &Shared, ok: bool, reason: &str, message: &str) {
    let mut health = lock(&shared.health);
    if health.remote_reachable == Some(ok) && health.message == message {
        return;
    }
    if health.remote_reachable != Some(ok) {
        health.since = Some(Time(Timestamp::now()));
    }
    health.remote_reachable = Some(ok);
    health.reason = reason.into();
    health.message = message.into();
    shared.status_dirty.notify_one();
}

/// Patches the Link's status whenever something changed, at most every 500 ms.
async fn status_loop(client: Client, link: Arc<Link>, shared: Arc<Shared>) {
    let namespace = link.metadata.namespace.clone().unwrap_or_default();
    let name = link.metadata.name.clone().unwrap_or_default();
    let api: Api<Link> = Api::namespaced(client, &namespace);
    let mut last = None;
    loop {
        shared.status_dirty.notified().await;
        let now = Time(Timestamp::now());
        let status = {
            let results = lock(&shared.results);
            let health = lock(&shared.health);
            status::build(&results, &health, &now)
        };
        if last.as_ref() != Some(&status) {
            let patch = serde_json::json!({ "status": status });
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => last = Some(status),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot update Link status");
                    shared.status_dirty.notify_one();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Everything one mirror write needs.
struct WriteContext {
    writer: Writer,
    shared: Arc<Shared>,
    events: mpsc::Sender<KubeEvent>,
    metrics: ClusterMetrics,
}

impl WriteContext {
    /// Writes every dirty key, `concurrency` at a time. Keys in one batch are
    /// distinct, and batches do not overlap, so one key is never written twice
    /// at once.
    async fn write_batch(&self, concurrency: usize) {
        let batch: Vec<(ServiceKey, Desired)> = {
            let mut index = lock(&self.shared.index);
            let keys = index.take_dirty();
            keys.into_iter()
                .map(|k| {
                    let d = index.desired(&k);
                    (k, d)
                })
                .collect()
        };
        stream::iter(batch)
            .for_each_concurrent(concurrency.max(1), |(key, desired)| {
                self.write_one(key, desired)
            })
            .await;
        let mirrored = lock(&self.shared.results)
            .values()
            .filter(|r| r.reason == MirrorReason::Mirrored)
            .count();
        self.metrics
            .mirrored_services
            .set(i64::try_from(mirrored).unwrap_or(i64::MAX));
        self.shared.status_dirty.notify_one();
    }

    async fn write_one(&self, key: ServiceKey, desired: Desired) {
        let previous = lock(&self.shared.written).get(&key).cloned();
        if previous.as_ref() == Some(&desired) {
            return;
        }
        match self.writer.write(&key, &desired, previous.as_ref()).await {
            Ok(()) => {
                lock(&self.shared.attempts).remove(&key);
                let outcome = outcome_of(&key, self.spec_cluster(), &desired);
                {
                    let mut written = lock(&self.shared.written);
                    match desired {
                        Desired::Absent => written.remove(&key),
                        d => written.insert(key.clone(), d),
                    };
                }
                self.record(&key, outcome).await;
            }
            Err(e) => {
                tracing::warn!(namespace = %key.namespace, service = %key.name, error = %e, "mirror write failed");
                self.metrics.reconcile_errors.inc();
                let local_name = format!("{}-{}", key.name, self.spec_cluster());
                self.record(&key, Some((MirrorReason::Error, e.to_string(), local_name)))
                    .await;
                self.retry_later(key);
            }
        }
    }

    fn spec_cluster(&self) -> String {
        lock(&self.shared.index).spec().target_cluster_name.clone()
    }

    /// Exponential backoff per key, from 250 ms up to 30 s.
    fn retry_later(&self, key: ServiceKey) {
        let attempt = {
            let mut attempts = lock(&self.shared.attempts);
            let n = attempts.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let delay = Duration::from_millis(250)
            .saturating_mul(1 << attempt.min(7))
            .min(Duration::from_secs(30));
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            lock(&shared.index).mark_dirty(key);
            shared.dirty.notify_one();
        });
    }

    /// Stores the outcome for status and emits an Event when the reason changed.
    async fn record(&self, key: &ServiceKey, outcome: Option<(MirrorReason, String, String)>) {
        let changed = {
            let mut results = lock(&self.shared.results);
            let before = results.get(key).map(|r| r.reason);
            match &outcome {
                None => {
                    results.remove(key);
                }
                Some((reason, message, local_name)) => {
                    let since = match results.get(key) {
                        Some(r) if r.reason == *reason => r.since.clone(),
                        _ => Time(Timestamp::now()),
                    };
                    results.insert(
                        key.clone(),
                        ServiceResult {
                            reason: *reason,
                            message: message.clone(),
                            local_name: local_name.clone(),
                            since,
                        },
                    );
                }
            }
            before != outcome.as_ref().map(|o| o.0)
        };
        if changed {
            self.publish(key, outcome.as_ref());
        }
    }

    /// Queues an Event for the publisher task. Events are best effort: when the
    /// queue is full the Event is dropped rather than slowing mirroring down.
    fn publish(&self, key: &ServiceKey, outcome: Option<&(MirrorReason, String, String)>) {
        let (type_, reason, note) = match outcome {
            None => (
                EventType::Normal,
                "MirrorDeleted".to_string(),
                format!("mirror of {}/{} deleted", key.namespace, key.name),
            ),
            Some((MirrorReason::Mirrored, message, _)) => {
                (EventType::Normal, "Mirrored".into(), message.clone())
            }
            Some((reason, message, _)) => {
                (EventType::Warning, reason.as_str().into(), message.clone())
            }
        };
        let event = KubeEvent {
            type_,
            reason,
            note: Some(note),
            action: "Mirror".into(),
            secondary: None,
        };
        if self.events.try_send(event).is_err() {
            tracing::debug!("event queue full; event dropped");
        }
    }
}

/// Publishes queued Events one at a time, off the write path.
async fn publish_events(
    recorder: Recorder,
    link_ref: ObjectReference,
    mut rx: mpsc::Receiver<KubeEvent>,
) {
    while let Some(event) = rx.recv().await {
        if let Err(e) = recorder.publish(&event, &link_ref).await {
            tracing::debug!(error = %e, "cannot publish event");
        }
    }
}

/// The status entry for what was just written (`None`: nothing to report).
fn outcome_of(
    key: &ServiceKey,
    cluster: String,
    written: &Desired,
) -> Option<(MirrorReason, String, String)> {
    let local_name = format!("{}-{cluster}", key.name);
    match written {
        Desired::Absent => None,
        Desired::Skipped { reason, message } => Some((*reason, message.clone(), local_name)),
        Desired::Mirror { objects, .. } => {
            let name = objects.service.metadata.name.clone().unwrap_or(local_name);
            Some((MirrorReason::Mirrored, format!("mirrored as {name}"), name))
        }
    }
}
