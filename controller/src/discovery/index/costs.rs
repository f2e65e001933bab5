//! The index's cost inputs besides Services: tier annotations on Namespaces and
//! the zone-pair costs ConfigMap. A change republishes the subscriptions it can
//! affect; a malformed value is logged with its reason and ignored.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    BALANCER_INCLUDE_MIRRORS, BALANCER_TIERS, Index, ServiceKey, TierOverrides, ZoneCosts,
};

/// The tier overrides annotated on an object; a malformed annotation is logged
/// and treated as absent.
pub(super) fn overrides(meta: &ObjectMeta) -> Option<TierOverrides> {
    let text = meta.annotations.as_ref()?.get(BALANCER_TIERS)?;
    TierOverrides::parse(text)
        .inspect_err(|error| {
            tracing::warn!(
                namespace = meta.namespace.as_deref().unwrap_or_default(),
                name = meta.name.as_deref().unwrap_or_default(),
                annotation = BALANCER_TIERS,
                %error,
                "ignoring malformed tier annotation"
            );
        })
        .ok()
}

/// Whether an object says its mirrors' endpoints join its own; anything but
/// `true` or `false` is logged and read as `false`.
pub(super) fn include_mirrors(meta: &ObjectMeta) -> bool {
    let Some(text) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(BALANCER_INCLUDE_MIRRORS))
    else {
        return false;
    };
    text.parse().unwrap_or_else(|_| {
        tracing::warn!(
            namespace = meta.namespace.as_deref().unwrap_or_default(),
            name = meta.name.as_deref().unwrap_or_default(),
            annotation = BALANCER_INCLUDE_MIRRORS,
            value = %text,
            "ignoring an annotation that is neither true nor false"
        );
        false
    })
}

impl Index {
    /// Adds or updates a Namespace's tier overrides.
    pub fn apply_namespace(&mut self, ns: &Namespace) {
        let Some(name) = ns.metadata.name.clone() else {
            return;
        };
        let tiers = overrides(&ns.metadata);
        if self.namespace_tiers.get(&name) == tiers.as_ref() {
            return;
        }
        match tiers {
            Some(t) => self.namespace_tiers.insert(name.clone(), t),
            None => self.namespace_tiers.remove(&name),
        };
        self.publish_where(|k| k.namespace == name);
    }

    /// Removes a Namespace's tier overrides.
    pub fn delete_namespace(&mut self, ns: &Namespace) {
        let Some(name) = ns.metadata.name.as_deref() else {
            return;
        };
        if self.namespace_tiers.remove(name).is_some() {
            self.publish_where(|k| k.namespace == name);
        }
    }

    /// Replaces every Namespace's tier overrides (after a watch restart).
    pub fn reset_namespaces(&mut self, namespaces: &[Namespace]) {
        let keep: std::collections::HashSet<&str> = namespaces
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        let gone: Vec<String> = self
            .namespace_tiers
            .keys()
            .filter(|n| !keep.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.namespace_tiers.remove(&name);
            self.publish_where(|k| k.namespace == name);
        }
        for ns in namespaces {
            self.apply_namespace(ns);
        }
    }

    /// Takes zone-pair costs from the ConfigMap; a malformed one is logged and
    /// the costs in force stay.
    pub fn apply_zone_costs(&mut self, cm: &ConfigMap) {
        match ZoneCosts::from_data(cm.data.as_ref()) {
            Ok(costs) => self.set_zone_costs(costs),
            Err(error) => tracing::warn!(
                namespace = cm.metadata.namespace.as_deref().unwrap_or_default(),
                name = cm.metadata.name.as_deref().unwrap_or_default(),
                %error,
                "ignoring malformed zone-costs ConfigMap; the costs in force stay"
            ),
        }
    }

    /// Drops the zone-pair costs (the ConfigMap was deleted).
    pub fn delete_zone_costs(&mut self, _cm: &ConfigMap) {
        self.set_zone_costs(ZoneCosts::default());
    }

    /// Applies the listed ConfigMap, or drops the costs if it is gone.
    pub fn reset_zone_costs(&mut self, cms: &[ConfigMap]) {
        match cms.first() {
            Some(cm) => self.apply_zone_costs(cm),
            None => self.set_zone_costs(ZoneCosts::default()),
        }
    }

    fn set_zone_costs(&mut self, costs: ZoneCosts) {
        if self.zone_costs != costs {
            self.zone_costs = costs;
            self.publish_where(|_| true);
        }
    }

    fn publish_where(&mut self, affected: impl Fn(&ServiceKey) -> bool) {
        let keys: Vec<ServiceKey> = self
            .subscriptions
            .keys()
            .filter(|k| affected(k))
            .cloned()
            .collect();
        for key in keys {
            self.publish(&key);
        }
    }
}
