//! Feeds the discovery index from Kubernetes: one watch per resource kind for the
//! whole cluster, however many proxies subscribe. A watch that fails (apiserver
//! away, a malformed object) is logged, counted and restarted with backoff; the
//! index keeps serving what it last knew meanwhile.

use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Resource};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::grpc::Resolve;
use super::index::{Destination, Index};
use super::target::Target;

/// The index shared between the watches that write it and the streams that read it.
#[derive(Clone, Debug)]
pub struct SharedIndex(Arc<Mutex<Index>>);

impl SharedIndex {
    /// Shares `index`.
    pub fn new(index: Index) -> Self {
        Self(Arc::new(Mutex::new(index)))
    }
}

impl Resolve for SharedIndex {
    fn resolve(
        &self,
        target: &str,
        zone: &str,
    ) -> Result<watch::Receiver<Arc<Destination>>, String> {
        let mut index = self.0.lock();
        let target = Target::parse(target, index.cluster_domain()).map_err(|e| e.to_string())?;
        Ok(index.subscribe(&target, zone))
    }
}

/// Watch metrics.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    restarts: Counter,
}

impl Metrics {
    /// Registers the metrics under `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "watch_restarts",
            "Kubernetes watches restarted after an error",
            m.restarts.clone(),
        );
        m
    }
}

/// A resource kind the index follows, and how its changes apply.
pub trait Indexed:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
    /// An object added or changed.
    fn apply(index: &mut Index, obj: &Self);
    /// An object deleted.
    fn delete(index: &mut Index, obj: &Self);
    /// Every object, after a (re)list.
    fn reset(index: &mut Index, objs: &[Self]);
}

impl Indexed for Service {
    fn apply(index: &mut Index, svc: &Self) {
        index.apply_service(svc);
    }
    fn delete(index: &mut Index, svc: &Self) {
        if let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) {
            index.delete_service(ns, name);
        }
    }
    fn reset(index: &mut Index, svcs: &[Self]) {
        index.reset_services(svcs);
    }
}

impl Indexed for EndpointSlice {
    fn apply(index: &mut Index, slice: &Self) {
        index.apply_slice(slice);
    }
    fn delete(index: &mut Index, slice: &Self) {
        index.delete_slice(slice);
    }
    fn reset(index: &mut Index, slices: &[Self]) {
        index.reset_slices(slices);
    }
}

/// Namespaces carry tier annotations.
impl Indexed for Namespace {
    fn apply(index: &mut Index, ns: &Self) {
        index.apply_namespace(ns);
    }
    fn delete(index: &mut Index, ns: &Self) {
        index.delete_namespace(ns);
    }
    fn reset(index: &mut Index, namespaces: &[Self]) {
        index.reset_namespaces(namespaces);
    }
}

/// The zone-pair costs ConfigMap (watched alone, by a field selector).
impl Indexed for ConfigMap {
    fn apply(index: &mut Index, cm: &Self) {
        index.apply_zone_costs(cm);
    }
    fn delete(index: &mut Index, cm: &Self) {
        index.delete_zone_costs(cm);
    }
    fn reset(index: &mut Index, cms: &[Self]) {
        index.reset_zone_costs(cms);
    }
}

/// Spawns the watch keeping the index's `K`s in step with `api` under
/// `config`; the receiver turns true once the first full list is applied.
pub fn spawn_watch<K: Indexed>(
    api: Api<K>,
    config: watcher::Config,
    index: &SharedIndex,
    metrics: &Metrics,
) -> watch::Receiver<bool> {
    let (ready, rx) = watch::channel(false);
    tokio::spawn(run(api, config, index.clone(), metrics.clone(), ready));
    rx
}

async fn run<K: Indexed>(
    api: Api<K>,
    config: watcher::Config,
    index: SharedIndex,
    metrics: Metrics,
    ready: watch::Sender<bool>,
) {
    let kind = K::kind(&()).into_owned();
    let mut events = Box::pin(watcher(api, config).default_backoff());
    // Objects listed since the last restart, applied at once when the list ends
    // so that subscribers never see a half-listed cluster.
    let mut listing = Vec::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(obj)) => listing.push(obj),
            Ok(Event::InitDone) => {
                K::reset(&mut index.0.lock(), &listing);
                listing.clear();
                ready.send_replace(true);
            }
            Ok(Event::Apply(obj)) => K::apply(&mut index.0.lock(), &obj),
            Ok(Event::Delete(obj)) => K::delete(&mut index.0.lock(), &obj),
            Err(error) => {
                metrics.restarts.inc();
                tracing::warn!(%kind, %error, "watch failed; retrying with backoff");
            }
        }
    }
}
