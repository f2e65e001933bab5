//! The synchronous index: everything the controller knows about the remote
//! cluster (Services, EndpointSlices), the local namespaces and the gateway, kept
//! as plain state with `apply / delete / reset`. Each change marks the remote
//! Services whose mirrors may differ as dirty; the writer takes the dirty keys and
//! asks [`Index::desired`] what each should look like. No I/O, so unit tests drive
//! it by calling `apply`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use api::labels;
use api::link::{LinkSpec, MirrorReason};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::desired::{self, GatewayState, MirrorObjects};

/// A remote Service, by namespace and name; its mirror lives in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Namespace on both sides.
    pub namespace: String,
    /// Name of the remote Service.
    pub name: String,
}

impl ServiceKey {
    /// Builds a key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// What one remote Service should look like locally.
#[derive(Clone, Debug, PartialEq)]
pub enum Desired {
    /// Not exported (or gone): no mirror should exist.
    Absent,
    /// Exported but not mirrored, for the given reason.
    Skipped {
        /// `MissingNamespace` or `InvalidService`.
        reason: MirrorReason,
        /// Human-readable explanation for status and Events.
        message: String,
    },
    /// Mirror these objects; create the namespace first when asked to.
    Mirror {
        /// The mirror Service and slices.
        objects: Box<MirrorObjects>,
        /// The local namespace is missing and the Link says to create it.
        create_namespace: bool,
    },
}

/// Remote and local state for one Link.
#[derive(Debug)]
pub struct Index {
    spec: Arc<LinkSpec>,
    services: HashMap<ServiceKey, Service>,
    /// Remote slices by owning Service, then by slice name.
    slices: HashMap<ServiceKey, BTreeMap<String, EndpointSlice>>,
    /// `None` until the first namespace list arrives: then nothing is known
    /// missing, so nothing is skipped prematurely.
    namespaces: Option<BTreeSet<String>>,
    gateway: GatewayState,
    dirty: BTreeSet<ServiceKey>,
}

impl Index {
    /// An empty index for a Link.
    pub fn new(spec: Arc<LinkSpec>) -> Self {
        Self {
            spec,
            services: HashMap::new(),
            slices: HashMap::new(),
            namespaces: None,
            gateway: GatewayState::default(),
            dirty: BTreeSet::new(),
        }
    }

    /// The Link spec this index mirrors for.
    pub fn spec(&self) -> &LinkSpec {
        &self.spec
    }

    /// A remote Service was created or changed.
    pub fn apply_service(&mut self, mut svc: Service) {
        // Never read, and often the largest part of an object.
        svc.metadata.managed_fields = None;
        if let Some(key) = key_of(&svc.metadata.namespace, &svc.metadata.name) {
            self.dirty.insert(key.clone());
            self.services.insert(key, svc);
        }
    }

    /// A remote Service was deleted.
    pub fn delete_service(&mut self, key: &ServiceKey) {
        self.services.remove(key);
        self.dirty.insert(key.clone());
    }

    /// The full list of remote Services after a (re)list.
    pub fn reset_services(&mut self, services: Vec<Service>) {
        let old: Vec<ServiceKey> = self.services.keys().cloned().collect();
        self.dirty.extend(old);
        self.services.clear();
        for svc in services {
            self.apply_service(svc);
        }
    }

    /// A remote EndpointSlice was created or changed.
    pub fn apply_slice(&mut self, mut slice: EndpointSlice) {
        slice.metadata.managed_fields = None;
        let Some((owner, name)) = slice_owner(&slice) else {
            return;
        };
        // A slice never changes owner in practice, but if it did the old owner
        // must forget it.
        for (key, slices) in &mut self.slices {
            if *key != owner && slices.remove(&name).is_some() {
                self.dirty.insert(key.clone());
            }
        }
        self.slices
            .entry(owner.clone())
            .or_default()
            .insert(name, slice);
        self.dirty.insert(owner);
    }

    /// A remote EndpointSlice was deleted.
    pub fn delete_slice(&mut self, slice: &EndpointSlice) {
        if let Some((owner, name)) = slice_owner(slice) {
            if let Some(slices) = self.slices.get_mut(&owner) {
                slices.remove(&name);
            }
            self.dirty.insert(owner);
        }
    }

    /// The full list of remote EndpointSlices after a (re)list.
    pub fn reset_slices(&mut self, slices: Vec<EndpointSlice>) {
        let old: Vec<ServiceKey> = self.slices.keys().cloned().collect();
        self.dirty.extend(old);
        self.slices.clear();
        for slice in slices {
            self.apply_slice(slice);
        }
    }

    /// A local Namespace appeared.
    pub fn apply_namespace(&mut self, ns: &Namespace) {
        if let Some(name) = &ns.metadata.name {
            self.namespaces.get_or_insert_default().insert(name.clone());
            self.mark_namespace(name);
        }
    }

    /// A local Namespace was deleted.
    pub fn delete_namespace(&mut self, name: &str) {
        if let Some(set) = &mut self.namespaces {
            set.remove(name);
        }
        self.mark_namespace(name);
    }

    /// The full list of local Namespaces after a (re)list.
    pub fn reset_namespaces(&mut self, namespaces: Vec<Namespace>) {
        let names: BTreeSet<String> = namespaces
            .into_iter()
            .filter_map(|ns| ns.metadata.name)
            .collect();
        self.namespaces = Some(names);
        let keys: Vec<ServiceKey> = self.services.keys().cloned().collect();
        self.dirty.extend(keys);
    }

    fn mark_namespace(&mut self, namespace: &str) {
        let keys: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| k.namespace == namespace)
            .cloned()
            .collect();
        self.dirty.extend(keys);
    }

    /// The gateway's liveness or addresses changed; every gateway-mode mirror's
    /// endpoints may change.
    pub fn set_gateway(&mut self, gateway: GatewayState) {
        if gateway != self.gateway {
            self.gateway = gateway;
            let keys: Vec<ServiceKey> = self.services.keys().cloned().collect();
            self.dirty.extend(keys);
        }
    }

    /// The current gateway state.
    pub fn gateway(&self) -> &GatewayState {
        &self.gateway
    }

    /// Marks one key for another write (e.g. after a failed one).
    pub fn mark_dirty(&mut self, key: ServiceKey) {
        self.dirty.insert(key);
    }

    /// Hands out (and clears) the keys whose mirrors may need writing.
    pub fn take_dirty(&mut self) -> Vec<ServiceKey> {
        std::mem::take(&mut self.dirty).into_iter().collect()
    }

    /// What the mirror of `key` should be right now.
    pub fn desired(&self, key: &ServiceKey) -> Desired {
        let Some(svc) = self.services.get(key) else {
            return Desired::Absent;
        };
        let Some(mode) = desired::export_mode(&self.spec, svc) else {
            return Desired::Absent;
        };
        let namespace_missing = self
            .namespaces
            .as_ref()
            .is_some_and(|set| !set.contains(&key.namespace));
        if namespace_missing && !self.spec.create_missing_namespaces {
            return Desired::Skipped {
                reason: MirrorReason::MissingNamespace,
                message: format!("namespace {:?} does not exist locally", key.namespace),
            };
        }
        let slices: Vec<&EndpointSlice> = self
            .slices
            .get(key)
            .map(|m| m.values().collect())
            .unwrap_or_default();
        match desired::mirror_objects(&self.spec, svc, mode, &slices, &self.gateway) {
            Ok(objects) => Desired::Mirror {
                objects: Box::new(objects),
                create_namespace: namespace_missing,
            },
            Err(e) => Desired::Skipped {
                reason: MirrorReason::InvalidService,
                message: e.0,
            },
        }
    }

    /// Remote Services that are exported (whatever their mirror state).
    pub fn exported(&self) -> Vec<ServiceKey> {
        let mut keys: Vec<ServiceKey> = self
            .services
            .iter()
            .filter(|(_, svc)| desired::export_mode(&self.spec, svc).is_some())
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Local mirrors (given by the remote key they claim to mirror) that have no
    /// exported remote counterpart and must be deleted.
    pub fn orphans(&self, local: impl IntoIterator<Item = ServiceKey>) -> Vec<ServiceKey> {
        let mut orphans: Vec<ServiceKey> = local
            .into_iter()
            .filter(|key| matches!(self.desired(key), Desired::Absent))
            .collect();
        orphans.sort();
        orphans.dedup();
        orphans
    }
}

/// The remote key a local mirror object claims to mirror, read from its labels.
pub fn mirrored_key(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<ServiceKey> {
    let name = meta.labels.as_ref()?.get(labels::REMOTE_SERVICE_NAME)?;
    Some(ServiceKey::new(meta.namespace.clone()?, name.clone()))
}

fn key_of(namespace: &Option<String>, name: &Option<String>) -> Option<ServiceKey> {
    Some(ServiceKey::new(namespace.clone()?, name.clone()?))
}

fn slice_owner(slice: &EndpointSlice) -> Option<(ServiceKey, String)> {
    let svc = slice.metadata.labels.as_ref()?.get(labels::SERVICE_NAME)?;
    let key = ServiceKey::new(slice.metadata.namespace.clone()?, svc.clone());
    Some((key, slice.metadata.name.clone()?))
}

#[cfg(test)]
mod tests;
