//! The discovery index: plain synchronous state built from the cluster's Services
//! and EndpointSlices (local and mirrored), answering "which endpoints does this
//! Service port have, as seen from this zone?".
//!
//! Watches feed it with `apply_*`, `delete_*` and `reset_*`; each lookup gets a
//! `watch` receiver that the index updates whenever the answer changes. All
//! subscribers of one Service port in one zone share a channel, so the work per
//! change is proportional to the number of distinct (port, zone) pairs watched,
//! not to the number of proxies.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use api::discovery::{Endpoint, ProtocolHint};
use api::labels::{
    BALANCER_INCLUDE_MIRRORS, BALANCER_TIERS, CLUSTER_NAME, ENDPOINT_IDENTITY, REMOTE_SERVICE_NAME,
    REMOTE_SVC_FQ_NAME, SERVICE_NAME,
};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::watch;

use super::target::Target;
use super::tiers::{self, Locality, TierOverrides, ZoneCosts};

/// A namespaced name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// What subscribers of one Service port see.
#[derive(Clone, Debug, PartialEq)]
pub enum Destination {
    /// No such Service, or it has no such port.
    NoSuchService,
    /// The ready endpoints, keyed by `ip:port`.
    Endpoints(BTreeMap<String, Endpoint>),
}

/// A subscription: the Service port and the subscriber's zone.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Subscription {
    port: u16,
    zone: String,
}

/// The parts of a Service discovery needs.
#[derive(Clone, Debug, Default, PartialEq)]
struct ServiceInfo {
    cluster_ips: Vec<IpAddr>,
    /// Service port → its name (EndpointSlice ports are matched by name).
    ports: HashMap<u16, String>,
    /// Set for mirror Services: the source cluster and the remote Service's name.
    mirror: Option<(String, String)>,
    /// For mirror Services: the local Service of the remote one's name, whose
    /// endpoint set this mirror joins if that Service includes its mirrors.
    mirror_of: Option<ServiceKey>,
    /// Tier overrides from the Service's annotation.
    tiers: Option<TierOverrides>,
    /// Whether the endpoints of this Service's mirrors join its own.
    include_mirrors: bool,
}

/// The parts of an EndpointSlice discovery needs.
#[derive(Clone, Debug, Default, PartialEq)]
struct SliceInfo {
    /// Port name → (port number, protocol hint).
    ports: HashMap<String, (u16, ProtocolHint)>,
    /// Ready addresses with their zones.
    endpoints: Vec<(IpAddr, Option<String>)>,
    identity: String,
}

/// The discovery index of one cluster.
#[derive(Debug)]
pub struct Index {
    cluster: String,
    cluster_domain: String,
    services: HashMap<ServiceKey, ServiceInfo>,
    slices: HashMap<ServiceKey, HashMap<String, SliceInfo>>,
    cluster_ips: HashMap<IpAddr, ServiceKey>,
    /// Local Service → the mirrors of remote Services of its name.
    mirrors: HashMap<ServiceKey, BTreeSet<ServiceKey>>,
    subscriptions: HashMap<ServiceKey, HashMap<Subscription, watch::Sender<Arc<Destination>>>>,
    /// Tier overrides from Namespace annotations.
    namespace_tiers: HashMap<String, TierOverrides>,
    zone_costs: ZoneCosts,
}

impl Index {
    /// An empty index for the cluster named `cluster` with DNS domain `cluster_domain`.
    pub fn new(cluster: impl Into<String>, cluster_domain: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            cluster_domain: cluster_domain.into(),
            services: HashMap::new(),
            slices: HashMap::new(),
            cluster_ips: HashMap::new(),
            mirrors: HashMap::new(),
            subscriptions: HashMap::new(),
            namespace_tiers: HashMap::new(),
            zone_costs: ZoneCosts::default(),
        }
    }

    /// The cluster's DNS domain, for parsing targets.
    pub fn cluster_domain(&self) -> &str {
        &self.cluster_domain
    }

    /// Subscribes to a target from a proxy in `zone`.
    pub fn subscribe(&mut self, target: &Target, zone: &str) -> watch::Receiver<Arc<Destination>> {
        let (key, port) = match target {
            Target::Name {
                namespace,
                name,
                port,
            } => (
                ServiceKey {
                    namespace: namespace.clone(),
                    name: name.clone(),
                },
                *port,
            ),
            Target::ClusterIp { ip, port } => match self.cluster_ips.get(ip) {
                Some(key) => (key.clone(), *port),
                // An unknown IP resolves to nothing; it is not tracked further.
                None => return watch::channel(Arc::new(Destination::NoSuchService)).1,
            },
        };
        let sub = Subscription {
            port,
            zone: zone.to_string(),
        };
        if let Some(tx) = self.subscriptions.get(&key).and_then(|subs| subs.get(&sub)) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(self.resolve(&key, &sub)));
        self.subscriptions.entry(key).or_default().insert(sub, tx);
        rx
    }

    /// The number of distinct (Service port, zone) channels with subscribers.
    pub fn channels(&self) -> usize {
        self.subscriptions.values().map(HashMap::len).sum()
    }

    /// Adds or updates a Service.
    pub fn apply_service(&mut self, svc: &Service) {
        let Some(key) = key_of(&svc.metadata) else {
            return;
        };
        let info = service_info(svc);
        if self.services.get(&key) == Some(&info) {
            return;
        }
        self.cluster_ips.retain(|_, k| *k != key);
        for ip in &info.cluster_ips {
            self.cluster_ips.insert(*ip, key.clone());
        }
        let old = self.services.insert(key.clone(), info);
        let old_local = old.and_then(|o| o.mirror_of);
        if old_local != self.services[&key].mirror_of {
            self.unlink_mirror(&key, old_local);
        }
        if let Some(local) = self.services[&key].mirror_of.clone() {
            self.mirrors.entry(local).or_default().insert(key.clone());
        }
        self.publish(&key);
    }

    /// Removes a Service.
    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let key = ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        };
        if let Some(old) = self.services.remove(&key) {
            self.cluster_ips.retain(|_, k| *k != key);
            self.publish(&key);
            self.unlink_mirror(&key, old.mirror_of);
        }
    }

    /// Forgets that `mirror` joined `local`'s set, and republishes `local`.
    fn unlink_mirror(&mut self, mirror: &ServiceKey, local: Option<ServiceKey>) {
        let Some(local) = local else { return };
        if let Some(set) = self.mirrors.get_mut(&local) {
            set.remove(mirror);
            if set.is_empty() {
                self.mirrors.remove(&local);
            }
        }
        self.publish_one(&local);
    }

    /// Replaces every Service with `svcs` (after a watch restart).
    pub fn reset_services(&mut self, svcs: &[Service]) {
        let keep: HashSet<ServiceKey> = svcs.iter().filter_map(|s| key_of(&s.metadata)).collect();
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.delete_service(&key.namespace, &key.name);
        }
        for svc in svcs {
            self.apply_service(svc);
        }
    }

    /// Adds or updates an EndpointSlice.
    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        let (Some(key), Some(slice_name)) = (owner_of(slice), slice.metadata.name.clone()) else {
            return;
        };
        let info = slice_info(slice);
        let slices = self.slices.entry(key.clone()).or_default();
        if slices.get(&slice_name) == Some(&info) {
            return;
        }
        slices.insert(slice_name, info);
        self.publish(&key);
    }

    /// Removes an EndpointSlice.
    pub fn delete_slice(&mut self, slice: &EndpointSlice) {
        let (Some(key), Some(slice_name)) = (owner_of(slice), slice.metadata.name.as_deref())
        else {
            return;
        };
        let removed = self
            .slices
            .get_mut(&key)
            .and_then(|s| s.remove(slice_name))
            .is_some();
        if removed {
            self.publish(&key);
        }
    }

    /// Replaces every EndpointSlice with `slices` (after a watch restart).
    pub fn reset_slices(&mut self, slices: &[EndpointSlice]) {
        let old = std::mem::take(&mut self.slices);
        for slice in slices {
            let (Some(key), Some(name)) = (owner_of(slice), slice.metadata.name.clone()) else {
                continue;
            };
            self.slices
                .entry(key)
                .or_default()
                .insert(name, slice_info(slice));
        }
        let mut touched: Vec<ServiceKey> = old.into_keys().collect();
        touched.extend(self.slices.keys().cloned());
        touched.sort();
        touched.dedup();
        for key in touched {
            self.publish(&key);
        }
    }

    /// Recomputes the subscriptions `key` affects: its own and, for a mirror,
    /// those of the local Service whose set it may join.
    fn publish(&mut self, key: &ServiceKey) {
        self.publish_one(key);
        if let Some(local) = self.services.get(key).and_then(|s| s.mirror_of.clone()) {
            self.publish_one(&local);
        }
    }

    /// Recomputes every subscription of `key`, notifying only on change, and
    /// forgets channels whose subscribers have all gone.
    fn publish_one(&mut self, key: &ServiceKey) {
        let Some(mut subs) = self.subscriptions.remove(key) else {
            return;
        };
        subs.retain(|_, tx| tx.receiver_count() > 0);
        for (sub, tx) in &subs {
            let dst = self.resolve(key, sub);
            tx.send_if_modified(|cur| {
                let changed = **cur != dst;
                if changed {
                    *cur = Arc::new(dst);
                }
                changed
            });
        }
        if !subs.is_empty() {
            self.subscriptions.insert(key.clone(), subs);
        }
    }

    fn resolve(&self, key: &ServiceKey, sub: &Subscription) -> Destination {
        let Some(svc) = self.services.get(key) else {
            return Destination::NoSuchService;
        };
        let Some(port_name) = svc.ports.get(&sub.port) else {
            return Destination::NoSuchService;
        };
        let mut endpoints = BTreeMap::new();
        self.collect(key, svc, port_name, svc, sub, &mut endpoints);
        let mirrors = self.mirrors.get(key).filter(|_| svc.include_mirrors);
        for mirror_key in mirrors.into_iter().flatten() {
            // A mirror keeps the remote Service's port numbers.
            let Some(mirror) = self.services.get(mirror_key) else {
                continue;
            };
            if let Some(port_name) = mirror.ports.get(&sub.port) {
                self.collect(mirror_key, mirror, port_name, svc, sub, &mut endpoints);
            }
        }
        Destination::Endpoints(endpoints)
    }

    /// Adds the ready endpoints of `key`'s slices on `port_name`, with the tier
    /// overrides of `subscribed` (the Service the subscriber asked for).
    fn collect(
        &self,
        key: &ServiceKey,
        svc: &ServiceInfo,
        port_name: &str,
        subscribed: &ServiceInfo,
        sub: &Subscription,
        endpoints: &mut BTreeMap<String, Endpoint>,
    ) {
        for slice in self.slices.get(key).into_iter().flat_map(HashMap::values) {
            let Some(&(target_port, hint)) = slice.ports.get(port_name) else {
                continue;
            };
            for (ip, zone) in &slice.endpoints {
                let ep = self.endpoint(
                    key,
                    (svc, subscribed),
                    slice,
                    sub,
                    SocketAddr::new(*ip, target_port),
                    zone,
                    hint,
                );
                endpoints.insert(ep.address.clone(), ep);
            }
        }
    }

    /// One endpoint of `svc`, tiered with the overrides of `subscribed`.
    #[allow(clippy::too_many_arguments)] // one endpoint's inputs, each used once
    fn endpoint(
        &self,
        key: &ServiceKey,
        (svc, subscribed): (&ServiceInfo, &ServiceInfo),
        slice: &SliceInfo,
        sub: &Subscription,
        addr: SocketAddr,
        zone: &Option<String>,
        hint: ProtocolHint,
    ) -> Endpoint {
        let zone = zone.clone().unwrap_or_default();
        let (cluster, locality, remote_authority) = match &svc.mirror {
            Some((cluster, remote)) => (
                cluster.clone(),
                Locality::OtherCluster,
                format!("{remote}:{}", sub.port),
            ),
            None if !zone.is_empty() && zone == sub.zone => {
                (self.cluster.clone(), Locality::SameZone, String::new())
            }
            None => (self.cluster.clone(), Locality::SameCluster, String::new()),
        };
        let tier = tiers::tier(
            locality,
            &sub.zone,
            &zone,
            subscribed.tiers.as_ref(),
            self.namespace_tiers.get(&key.namespace),
            &self.zone_costs,
        );
        Endpoint {
            address: addr.to_string(),
            weight: 1,
            identity: slice.identity.clone(),
            protocol_hint: hint as i32,
            zone,
            cluster,
            tier,
            remote_authority,
        }
    }
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<ServiceKey> {
    Some(ServiceKey {
        namespace: meta.namespace.clone()?,
        name: meta.name.clone()?,
    })
}

fn owner_of(slice: &EndpointSlice) -> Option<ServiceKey> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME)?;
    Some(ServiceKey {
        namespace: slice.metadata.namespace.clone()?,
        name: name.clone(),
    })
}

fn service_info(svc: &Service) -> ServiceInfo {
    let spec = svc.spec.clone().unwrap_or_default();
    let cluster_ips = spec
        .cluster_ips
        .or(spec.cluster_ip.map(|ip| vec![ip]))
        .unwrap_or_default()
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let ports = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| Some((u16::try_from(p.port).ok()?, p.name.unwrap_or_default())))
        .collect();
    let label = |k: &str| svc.metadata.labels.as_ref().and_then(|l| l.get(k)).cloned();
    let annotation = |k: &str| {
        svc.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(k))
            .cloned()
    };
    let mirror = label(CLUSTER_NAME).zip(annotation(REMOTE_SVC_FQ_NAME));
    let mirror_of = mirror
        .as_ref()
        .and(label(REMOTE_SERVICE_NAME))
        .zip(svc.metadata.namespace.clone())
        .map(|(name, namespace)| ServiceKey { namespace, name });
    ServiceInfo {
        cluster_ips,
        ports,
        include_mirrors: mirror.is_none() && costs::include_mirrors(&svc.metadata),
        mirror,
        mirror_of,
        tiers: costs::overrides(&svc.metadata),
    }
}

fn slice_info(slice: &EndpointSlice) -> SliceInfo {
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p.port?).ok()?;
            Some((
                p.name.clone().unwrap_or_default(),
                (port, hint(p.app_protocol.as_deref())),
            ))
        })
        .collect();
    // Kubernetes treats an unknown readiness as ready.
    let endpoints = slice
        .endpoints
        .iter()
        .filter(|ep| ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|ep| {
            ep.addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .map(|ip| (ip, ep.zone.clone()))
        })
        .collect();
    let identity = slice
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ENDPOINT_IDENTITY))
        .cloned()
        .unwrap_or_default();
    SliceInfo {
        ports,
        endpoints,
        identity,
    }
}

fn hint(app_protocol: Option<&str>) -> ProtocolHint {
    match app_protocol {
        Some("http" | "kubernetes.io/http") => ProtocolHint::Http1,
        Some("http2" | "grpc" | "kubernetes.io/h2c") => ProtocolHint::Http2,
        Some("tcp" | "opaque") => ProtocolHint::Opaque,
        _ => ProtocolHint::Unknown,
    }
}

mod costs;
#[cfg(test)]
mod tests;
