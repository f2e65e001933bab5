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
use kube::{Api, Client, Resource};
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

/// Keeps the index's Services in step with the cluster; `ready` turns true once
/// the first full list has been applied.
pub async fn watch_services(
    client: Client,
    index: SharedIndex,
    metrics: Metrics,
    ready: watch::Sender<bool>,
) {
    let handlers = Handlers::<Service> {
        apply: |idx, svc| idx.apply_service(svc),
        delete: |idx, svc| {
            if let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) {
                idx.delete_service(ns, name);
            }
        },
        reset: Index::reset_services,
    };
    run(Api::all(client), index, metrics, ready, handlers).await;
}

/// Keeps the index's EndpointSlices in step with the cluster; `ready` turns true
/// once the first full list has been applied.
pub async fn watch_slices(
    client: Client,
    index: SharedIndex,
    metrics: Metrics,
    ready: watch::Sender<bool>,
) {
    let handlers = Handlers::<EndpointSlice> {
        apply: Index::apply_slice,
        delete: Index::delete_slice,
        reset: Index::reset_slices,
    };
    run(Api::all(client), index, metrics, ready, handlers).await;
}

/// Keeps the index's Namespace tier annotations in step with the cluster.
pub async fn watch_namespaces(
    client: Client,
    index: SharedIndex,
    metrics: Metrics,
    ready: watch::Sender<bool>,
) {
    let handlers = Handlers::<Namespace> {
        apply: Index::apply_namespace,
        delete: Index::delete_namespace,
        reset: Index::reset_namespaces,
    };
    run(Api::all(client), index, metrics, ready, handlers).await;
}

/// Keeps the index's zone-pair costs in step with the ConfigMap `name` in
/// `namespace` (watched alone, by a field selector).
pub async fn watch_zone_costs(
    client: Client,
    (namespace, name): (String, String),
    index: SharedIndex,
    metrics: Metrics,
    ready: watch::Sender<bool>,
) {
    let handlers = Handlers::<ConfigMap> {
        apply: Index::apply_zone_costs,
        delete: Index::delete_zone_costs,
        reset: Index::reset_zone_costs,
    };
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let api = Api::namespaced(client, &namespace);
    run_with(api, config, index, metrics, ready, handlers).await;
}

/// How one resource kind changes the index.
struct Handlers<K> {
    apply: fn(&mut Index, &K),
    delete: fn(&mut Index, &K),
    reset: fn(&mut Index, &[K]),
}

async fn run<K>(
    api: Api<K>,
    index: SharedIndex,
    metrics: Metrics,
    ready: watch::Sender<bool>,
    h: Handlers<K>,
) where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + 'static,
{
    run_with(api, watcher::Config::default(), index, metrics, ready, h).await;
}

async fn run_with<K>(
    api: Api<K>,
    config: watcher::Config,
    index: SharedIndex,
    metrics: Metrics,
    ready: watch::Sender<bool>,
    h: Handlers<K>,
) where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + 'static,
{
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
                (h.reset)(&mut index.0.lock(), &listing);
                listing.clear();
                ready.send_replace(true);
            }
            Ok(Event::Apply(obj)) => (h.apply)(&mut index.0.lock(), &obj),
            Ok(Event::Delete(obj)) => (h.delete)(&mut index.0.lock(), &obj),
            Err(error) => {
                metrics.restarts.inc();
                tracing::warn!(%kind, %error, "watch failed; retrying with backoff");
            }
        }
    }
}
