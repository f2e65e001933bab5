//! TrafficSplit routes for discovery: which backends a root Service's traffic goes
//! to, with what weight and in which failover tier. Like the endpoint index this
//! is plain synchronous state (`apply`/`delete`/`reset` of splits) handing out one
//! `watch` channel per subscribed Service port; [`watch_splits`] feeds it from
//! the cluster. A split whose failover annotations do not parse is served with
//! every backend at priority 0, so SMI splits meshlink does not manage still
//! route.
//!
//! Routes are looked up by Service name; a proxy subscribing by cluster IP gets
//! no routes (it is sent the root Service's own endpoints).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use api::discovery::{Backend, Routes};
use api::split::{Policy, TrafficSplit, backend_key};
use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, ResourceExt};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::grpc::Resolve;
use super::index::{Destination, ServiceKey};
use super::target::Target;
use crate::watch_errors::{CrdBackoff, WatchErrors};

/// The routes of every root Service that has a TrafficSplit.
#[derive(Debug)]
pub struct RoutesIndex {
    cluster_domain: String,
    /// Root Service → its splits by name (the first name wins if several exist).
    splits: HashMap<ServiceKey, BTreeMap<String, Vec<RouteBackend>>>,
    subscriptions: HashMap<ServiceKey, HashMap<u16, watch::Sender<Arc<Routes>>>>,
}

/// One backend as the index keeps it, before a port makes it an authority.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RouteBackend {
    key: ServiceKey,
    weight: u32,
    priority: u32,
}

impl RoutesIndex {
    /// An empty index for a cluster with DNS domain `cluster_domain`.
    pub fn new(cluster_domain: impl Into<String>) -> Self {
        Self {
            cluster_domain: cluster_domain.into(),
            splits: HashMap::new(),
            subscriptions: HashMap::new(),
        }
    }

    /// The routes of Service `key` seen on `port`; empty when it has no split.
    pub fn subscribe(&mut self, key: &ServiceKey, port: u16) -> watch::Receiver<Arc<Routes>> {
        if let Some(tx) = self.subscriptions.get(key).and_then(|s| s.get(&port)) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(self.routes(key, port)));
        self.subscriptions
            .entry(key.clone())
            .or_default()
            .insert(port, tx);
        rx
    }

    /// Adds or updates a split.
    pub fn apply(&mut self, split: &TrafficSplit) {
        let (Some(ns), name) = (split.namespace(), split.name_any()) else {
            return;
        };
        let root = ServiceKey {
            namespace: ns.clone(),
            name: split.spec.service.clone(),
        };
        // A split may have moved to another root Service.
        self.remove(&ns, &name);
        self.splits
            .entry(root.clone())
            .or_default()
            .insert(name, backends(split, &ns));
        self.publish(&root);
    }

    /// Removes a split.
    pub fn delete(&mut self, split: &TrafficSplit) {
        if let Some(ns) = split.namespace() {
            self.remove(&ns, &split.name_any());
        }
    }

    /// Replaces every split with `splits` (after a watch restart).
    pub fn reset(&mut self, splits: &[TrafficSplit]) {
        let old: Vec<ServiceKey> = std::mem::take(&mut self.splits).into_keys().collect();
        for split in splits {
            self.apply(split);
        }
        for key in old {
            self.publish(&key);
        }
    }

    fn remove(&mut self, ns: &str, name: &str) {
        let mut roots = Vec::new();
        for (root, by_name) in &mut self.splits {
            if root.namespace == ns && by_name.remove(name).is_some() {
                roots.push(root.clone());
            }
        }
        for root in roots {
            if self.splits.get(&root).is_some_and(BTreeMap::is_empty) {
                self.splits.remove(&root);
            }
            self.publish(&root);
        }
    }

    fn publish(&mut self, key: &ServiceKey) {
        let Some(mut subs) = self.subscriptions.remove(key) else {
            return;
        };
        subs.retain(|_, tx| tx.receiver_count() > 0);
        for (port, tx) in &subs {
            let routes = self.routes(key, *port);
            tx.send_if_modified(|cur| {
                let changed = **cur != routes;
                if changed {
                    *cur = Arc::new(routes);
                }
                changed
            });
        }
        if !subs.is_empty() {
            self.subscriptions.insert(key.clone(), subs);
        }
    }

    fn routes(&self, key: &ServiceKey, port: u16) -> Routes {
        let first = self.splits.get(key).and_then(|s| s.values().next());
        Routes {
            backends: first
                .into_iter()
                .flatten()
                .map(|b| Backend {
                    authority: format!(
                        "{}.{}.svc.{}:{port}",
                        b.key.name, b.key.namespace, self.cluster_domain
                    ),
                    weight: b.weight,
                    priority: b.priority,
                })
                .collect(),
        }
    }
}

fn backends(split: &TrafficSplit, ns: &str) -> Vec<RouteBackend> {
    let policy = Policy::of(split).ok();
    split
        .spec
        .backends
        .iter()
        .map(|b| {
            let (namespace, name) = backend_key(ns, &b.service);
            let tier = policy.as_ref().and_then(|p| p.tier_of(&b.service));
            RouteBackend {
                key: ServiceKey { namespace, name },
                weight: b.weight,
                priority: tier.and_then(|t| u32::try_from(t).ok()).unwrap_or(0),
            }
        })
        .collect()
}

/// The routes index shared by the watch that writes it and the streams that read it.
#[derive(Clone, Debug)]
pub struct SharedRoutes(Arc<Mutex<RoutesIndex>>);

impl SharedRoutes {
    /// Shares `index`.
    pub fn new(index: RoutesIndex) -> Self {
        Self(Arc::new(Mutex::new(index)))
    }
}

/// An endpoint resolver with routes: endpoints from `R`, routes from the splits.
#[derive(Clone, Debug)]
pub struct WithRoutes<R> {
    /// The endpoint resolver.
    pub endpoints: R,
    /// The routes.
    pub routes: SharedRoutes,
}

impl<R: Resolve> Resolve for WithRoutes<R> {
    fn resolve(
        &self,
        target: &str,
        zone: &str,
    ) -> Result<watch::Receiver<Arc<Destination>>, String> {
        self.endpoints.resolve(target, zone)
    }

    fn routes(&self, target: &str) -> Option<watch::Receiver<Arc<Routes>>> {
        let mut index = self.routes.0.lock();
        match Target::parse(target, &index.cluster_domain).ok()? {
            Target::Name {
                namespace,
                name,
                port,
            } => Some(index.subscribe(&ServiceKey { namespace, name }, port)),
            Target::ClusterIp { .. } => None,
        }
    }
}

/// Keeps `routes` in step with the cluster's TrafficSplits. A missing CRD or a
/// failing watch is logged and retried with backoff; endpoints are served
/// meanwhile.
pub async fn watch_splits(
    client: Client,
    routes: SharedRoutes,
    restarts: prometheus_client::metrics::counter::Counter,
) {
    let mut events = Box::pin(
        watcher(Api::<TrafficSplit>::all(client), watcher::Config::default())
            .backoff(CrdBackoff::default()),
    );
    let mut listing = Vec::new();
    let mut errors = WatchErrors::new("TrafficSplit");
    while let Some(event) = events.next().await {
        if let Ok(event) = &event {
            errors.ok(event);
        }
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(split)) => listing.push(split),
            Ok(Event::InitDone) => routes.0.lock().reset(&std::mem::take(&mut listing)),
            Ok(Event::Apply(split)) => routes.0.lock().apply(&split),
            Ok(Event::Delete(split)) => routes.0.lock().delete(&split),
            Err(error) => {
                restarts.inc();
                errors.failed(&error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::split::{ORDER, TrafficSplitBackend, TrafficSplitSpec};

    fn split(
        name: &str,
        root: &str,
        backends: &[(&str, u32)],
        order: Option<&str>,
    ) -> TrafficSplit {
        let mut s = TrafficSplit::new(
            name,
            TrafficSplitSpec {
                service: root.into(),
                backends: backends
                    .iter()
                    .map(|(b, w)| TrafficSplitBackend {
                        service: b.to_string(),
                        weight: *w,
                    })
                    .collect(),
            },
        );
        s.metadata.namespace = Some("shop".into());
        if let Some(order) = order {
            s.metadata.annotations = Some([(ORDER.to_string(), order.to_string())].into());
        }
        s
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    fn summary(routes: &Routes) -> Vec<(String, u32, u32)> {
        routes
            .backends
            .iter()
            .map(|b| (b.authority.clone(), b.weight, b.priority))
            .collect()
    }

    #[test]
    fn backends_become_authorities_with_weights_and_tiers() {
        let mut idx = RoutesIndex::new("cluster.local");
        let mut rx = idx.subscribe(&key("web"), 8080);
        assert!(rx.borrow().backends.is_empty(), "no split: no routes");
        idx.apply(&split(
            "web",
            "web",
            &[("web-west", 100), ("web-east.other", 0), ("web-north", 0)],
            Some("web-west, web-east.other | web-north"),
        ));
        assert!(rx.has_changed().unwrap());
        assert_eq!(
            summary(&rx.borrow_and_update()),
            [
                ("web-west.shop.svc.cluster.local:8080".into(), 100, 0),
                ("web-east.other.svc.cluster.local:8080".into(), 0, 1),
                ("web-north.shop.svc.cluster.local:8080".into(), 0, 1),
            ]
        );
        // Another port of the same root gets its own authorities.
        let other = idx.subscribe(&key("web"), 9090);
        assert!(other.borrow().backends[0].authority.ends_with(":9090"));
    }

    #[test]
    fn unmanaged_splits_route_at_priority_zero_and_deletes_clear() {
        let mut idx = RoutesIndex::new("cluster.local");
        let s = split("web", "web", &[("a", 80), ("b", 20)], None);
        idx.apply(&s);
        let mut rx = idx.subscribe(&key("web"), 80);
        let got: Vec<_> = summary(&rx.borrow_and_update())
            .into_iter()
            .map(|b| (b.1, b.2))
            .collect();
        assert_eq!(got, [(80, 0), (20, 0)]);
        idx.delete(&s);
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().backends.is_empty());
    }

    #[test]
    fn a_split_moving_root_and_a_reset_republish_both_roots() {
        let mut idx = RoutesIndex::new("cluster.local");
        idx.apply(&split("s", "web", &[("a", 1)], None));
        let mut web = idx.subscribe(&key("web"), 80);
        let mut api = idx.subscribe(&key("api"), 80);
        idx.apply(&split("s", "api", &[("a", 1)], None));
        assert!(web.borrow_and_update().backends.is_empty());
        assert_eq!(api.borrow_and_update().backends.len(), 1);
        idx.reset(&[split("t", "web", &[("b", 1)], None)]);
        assert!(api.borrow_and_update().backends.is_empty());
        assert_eq!(
            web.borrow_and_update().backends[0].authority,
            "b.shop.svc.cluster.local:80"
        );
    }
}
