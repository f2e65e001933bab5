//! The discovery gRPC service. It turns a resolver's `watch` receiver into the
//! protocol's stream: a `Snapshot` (or `NoSuchService`) first, then only what
//! changed. It depends on the [`Resolve`] trait, not on Kubernetes.

use std::pin::Pin;
use std::sync::Arc;

use api::discovery::discovery_server::{Discovery, DiscoveryServer};
use api::discovery::{
    AddressSet, EndpointSet, NoSuchService, Routes, Snapshot, Update, WatchRequest, update,
};
use futures::{Stream, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::index::Destination;

/// Resolves a subscription target for a proxy in a zone.
pub trait Resolve: Send + Sync + 'static {
    /// A receiver of the destination's state, or why the target is invalid.
    fn resolve(
        &self,
        target: &str,
        zone: &str,
    ) -> Result<watch::Receiver<Arc<Destination>>, String>;

    /// The target's TrafficSplit routes, if this resolver knows routes.
    fn routes(&self, _target: &str) -> Option<watch::Receiver<Arc<Routes>>> {
        None
    }
}

/// Discovery metrics.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    subscribers: Gauge,
    updates: Counter,
}

impl Metrics {
    /// Registers the metrics under `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "subscribers",
            "Open discovery streams",
            m.subscribers.clone(),
        );
        registry.register(
            "updates",
            "Discovery updates sent to proxies",
            m.updates.clone(),
        );
        m
    }
}

/// The tonic service.
pub struct Service<R> {
    resolver: R,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
}

impl<R: Resolve> Service<R> {
    /// Serves `resolver`; every stream ends when `shutdown` turns true.
    pub fn new(
        resolver: R,
        metrics: Metrics,
        shutdown: watch::Receiver<bool>,
    ) -> DiscoveryServer<Self> {
        DiscoveryServer::new(Self {
            resolver,
            metrics,
            shutdown,
        })
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<Update, Status>> + Send>>;

#[tonic::async_trait]
impl<R: Resolve> Discovery for Service<R> {
    type WatchStream = UpdateStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<UpdateStream>, Status> {
        let WatchRequest { target, zone } = req.into_inner();
        let rx = self
            .resolver
            .resolve(&target, &zone)
            .map_err(Status::invalid_argument)?;
        tracing::debug!(%target, %zone, "subscribed");
        let guard = SubscriberGuard::new(&self.metrics);
        let mut shutdown = self.shutdown.clone();
        let routes = self.resolver.routes(&target);
        let stream = with_routes(updates(rx), routes)
            .inspect(move |_| guard.sent())
            .map(Ok)
            .take_until(async move { shutdown.wait_for(|stop| *stop).await.map(drop) });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Counts a stream in `subscribers` while it lives, and its updates.
struct SubscriberGuard(Metrics);

impl SubscriberGuard {
    fn new(metrics: &Metrics) -> Self {
        metrics.subscribers.inc();
        Self(metrics.clone())
    }

    fn sent(&self) {
        self.0.updates.inc();
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.subscribers.dec();
    }
}

/// The protocol stream for one receiver: the first state in full, then deltas.
pub fn updates(rx: watch::Receiver<Arc<Destination>>) -> impl Stream<Item = Update> + Send {
    futures::stream::unfold(
        (rx, None::<Arc<Destination>>),
        |(mut rx, prev)| async move {
            if prev.is_some() && rx.changed().await.is_err() {
                return None;
            }
            let cur = rx.borrow_and_update().clone();
            let batch = diff(prev.as_deref(), &cur);
            Some((futures::stream::iter(batch), (rx, Some(cur))))
        },
    )
    .flatten()
}

/// `updates` with the target's routes: every snapshot carries the current
/// routes, and each later change of them is a `Routes` update.
pub fn with_routes(
    updates: impl Stream<Item = Update> + Send + 'static,
    routes: Option<watch::Receiver<Arc<Routes>>>,
) -> Pin<Box<dyn Stream<Item = Update> + Send>> {
    let Some(routes) = routes else {
        return Box::pin(updates);
    };
    let mut changes = routes.clone();
    changes.mark_unchanged();
    let changes = futures::stream::unfold(changes, |mut rx| async move {
        rx.changed().await.ok()?;
        let routes = (**rx.borrow_and_update()).clone();
        Some((
            Update {
                kind: Some(update::Kind::Routes(routes)),
            },
            rx,
        ))
    });
    let updates = updates.map(move |mut u| {
        if let Some(update::Kind::Snapshot(snapshot)) = &mut u.kind {
            let current = routes.borrow();
            snapshot.routes = (!current.backends.is_empty()).then(|| (**current).clone());
        }
        u
    });
    // The endpoint stream ends the merged one (its source is gone).
    Box::pin(
        futures::stream::select(
            updates
                .map(Some)
                .chain(futures::stream::once(async { None })),
            changes.map(Some),
        )
        .take_while(|u| std::future::ready(u.is_some()))
        .filter_map(std::future::ready),
    )
}

/// The updates that take a proxy holding `prev` to `cur`.
pub fn diff(prev: Option<&Destination>, cur: &Destination) -> Vec<Update> {
    let kind = match (prev, cur) {
        (_, Destination::NoSuchService) => vec![update::Kind::NoSuchService(NoSuchService {})],
        (None | Some(Destination::NoSuchService), Destination::Endpoints(eps)) => {
            vec![update::Kind::Snapshot(Snapshot {
                endpoints: eps.values().cloned().collect(),
                routes: None,
            })]
        }
        (Some(Destination::Endpoints(old)), Destination::Endpoints(new)) => {
            let added: Vec<_> = new
                .iter()
                .filter(|(k, v)| old.get(*k) != Some(v))
                .map(|(_, v)| v.clone())
                .collect();
            let removed: Vec<_> = old
                .keys()
                .filter(|k| !new.contains_key(*k))
                .cloned()
                .collect();
            let mut kinds = Vec::new();
            if !added.is_empty() {
                kinds.push(update::Kind::Add(EndpointSet { endpoints: added }));
            }
            if !removed.is_empty() {
                kinds.push(update::Kind::Remove(AddressSet { addresses: removed }));
            }
            kinds
        }
    };
    kind.into_iter().map(|k| Update { kind: Some(k) }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::discovery::Endpoint;
    use std::collections::BTreeMap;

    fn eps(addrs: &[(&str, u32)]) -> Destination {
        Destination::Endpoints(
            addrs
                .iter()
                .map(|(a, tier)| {
                    (
                        a.to_string(),
                        Endpoint {
                            address: a.to_string(),
                            tier: *tier,
                            ..Default::default()
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        )
    }

    fn kinds(updates: Vec<Update>) -> Vec<update::Kind> {
        updates.into_iter().filter_map(|u| u.kind).collect()
    }

    #[test]
    fn first_update_is_a_snapshot_or_no_such_service() {
        assert!(
            matches!(&kinds(diff(None, &eps(&[("a:1", 0)])))[..], [update::Kind::Snapshot(s)] if s.endpoints.len() == 1)
        );
        assert!(matches!(
            &kinds(diff(None, &Destination::NoSuchService))[..],
            [update::Kind::NoSuchService(_)]
        ));
    }

    #[test]
    fn later_updates_are_deltas() {
        let old = eps(&[("a:1", 0), ("b:1", 0)]);
        let new = eps(&[("b:1", 1), ("c:1", 0)]);
        let got = kinds(diff(Some(&old), &new));
        let [update::Kind::Add(add), update::Kind::Remove(rm)] = &got[..] else {
            panic!("{got:?}")
        };
        let added: Vec<_> = add
            .endpoints
            .iter()
            .map(|e| (e.address.as_str(), e.tier))
            .collect();
        assert_eq!(
            added,
            [("b:1", 1), ("c:1", 0)],
            "changed and new endpoints are re-added"
        );
        assert_eq!(rm.addresses, ["a:1"]);
        assert!(diff(Some(&new), &new).is_empty());
    }

    #[test]
    fn a_service_coming_back_is_a_fresh_snapshot() {
        let got = kinds(diff(Some(&Destination::NoSuchService), &eps(&[("a:1", 0)])));
        assert!(matches!(&got[..], [update::Kind::Snapshot(_)]));
    }

    #[tokio::test]
    async fn routes_ride_on_snapshots_and_changes() {
        let (_tx, rx) = watch::channel(Arc::new(eps(&[("a:1", 0)])));
        let backend = |w| Routes {
            backends: vec![api::discovery::Backend {
                authority: "b.ns.svc.cluster.local:80".into(),
                weight: w,
                priority: 1,
            }],
        };
        let (routes_tx, routes_rx) = watch::channel(Arc::new(backend(100)));
        let mut stream = with_routes(updates(rx), Some(routes_rx));
        let Some(update::Kind::Snapshot(snap)) = stream.next().await.and_then(|u| u.kind) else {
            panic!("expected a snapshot")
        };
        assert_eq!(snap.routes, Some(backend(100)));
        routes_tx.send_replace(Arc::new(backend(0)));
        let Some(update::Kind::Routes(r)) = stream.next().await.and_then(|u| u.kind) else {
            panic!("expected routes")
        };
        assert_eq!(r, backend(0));
    }

    #[tokio::test]
    async fn the_stream_follows_the_receiver() {
        let (tx, rx) = watch::channel(Arc::new(eps(&[("a:1", 0)])));
        let mut stream = Box::pin(updates(rx));
        assert!(matches!(
            stream.next().await.and_then(|u| u.kind),
            Some(update::Kind::Snapshot(_))
        ));
        tx.send_replace(Arc::new(eps(&[("a:1", 0), ("b:1", 0)])));
        let Some(update::Kind::Add(add)) = stream.next().await.and_then(|u| u.kind) else {
            panic!("expected Add")
        };
        assert_eq!(add.endpoints[0].address, "b:1");
        drop(tx);
        assert!(
            stream.next().await.is_none(),
            "the stream ends with its source"
        );
    }
}
