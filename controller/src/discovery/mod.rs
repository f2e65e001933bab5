//! Discovery: proxies subscribe to a destination and receive its endpoints and
//! routes as they change. The [`index`] holds the cluster's state and knows
//! nothing of gRPC; [`grpc`] serves it and knows nothing of Kubernetes; [`k8s`]
//! feeds the index from watches. [`Discovery`] wires the three together.

pub mod grpc;
pub mod index;
pub mod k8s;
pub mod routes;
pub mod target;
pub mod tiers;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use index::Index;
use k8s::SharedIndex;
use routes::{RoutesIndex, SharedRoutes, WithRoutes};

/// A running discovery index for one cluster, ready to be served.
#[derive(Debug)]
pub struct Discovery {
    index: SharedIndex,
    routes: SharedRoutes,
    metrics: grpc::Metrics,
    ready: watch::Receiver<bool>,
}

impl Discovery {
    /// Starts the cluster's watches (one per resource kind) feeding a new index
    /// for cluster `cluster` with DNS domain `domain`, with zone-pair costs from
    /// the ConfigMap `zone_costs` (namespace, name). Must be called within a
    /// Tokio runtime; the watches run until the runtime stops.
    pub fn start(
        client: kube::Client,
        cluster: &str,
        domain: &str,
        zone_costs: (String, String),
        registry: &mut Registry,
    ) -> Self {
        let index = SharedIndex::new(Index::new(cluster, domain));
        let routes = SharedRoutes::new(RoutesIndex::new(domain));
        let watch_metrics = k8s::Metrics::register(registry);
        let split_restarts = prometheus_client::metrics::counter::Counter::default();
        registry.register(
            "split_watch_restarts",
            "TrafficSplit watches restarted after an error",
            split_restarts.clone(),
        );
        tokio::spawn(routes::watch_splits(
            client.clone(),
            routes.clone(),
            split_restarts,
        ));
        let (costs_ns, costs_name) = zone_costs;
        let costs_only = watcher::Config::default().fields(&format!("metadata.name={costs_name}"));
        let all = watcher::Config::default;
        let watches = [
            k8s::spawn_watch::<Service>(Api::all(client.clone()), all(), &index, &watch_metrics),
            k8s::spawn_watch::<EndpointSlice>(
                Api::all(client.clone()),
                all(),
                &index,
                &watch_metrics,
            ),
            k8s::spawn_watch::<Namespace>(Api::all(client.clone()), all(), &index, &watch_metrics),
            k8s::spawn_watch::<ConfigMap>(
                Api::namespaced(client, &costs_ns),
                costs_only,
                &index,
                &watch_metrics,
            ),
        ];

        let (ready_tx, ready) = watch::channel(false);
        tokio::spawn(async move {
            for mut watch in watches {
                if watch.wait_for(|r| *r).await.is_err() {
                    return;
                }
            }
            ready_tx.send_replace(true);
        });
        Self {
            index,
            routes,
            metrics: grpc::Metrics::register(registry),
            ready,
        }
    }

    /// True once every watch has listed the cluster once.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }

    /// Serves the discovery gRPC API on `listener` until `shutdown` turns true;
    /// open streams end at shutdown so proxies reconnect elsewhere.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), tonic::transport::Error> {
        let resolver = WithRoutes {
            endpoints: self.index,
            routes: self.routes,
        };
        let service = grpc::Service::new(resolver, self.metrics, shutdown.clone());
        let mut stop = shutdown;
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    }
}
