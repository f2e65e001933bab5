//! The SMI `TrafficSplit` custom resource (`split.smi-spec.io/v1alpha2`) and the
//! meshlink annotations that turn one into a failover policy.
//!
//! A split names a root Service and weighted backends. meshlink manages the splits
//! labelled [`CONTROLLED_BY`]: [`PRIMARY`] names the primary backend and
//! [`ORDER`] the whole chain, tier by tier (`svc-west, svc-east-a | svc-east-b,
//! svc-north`: commas separate tiers, `|` backends sharing a tier). The failover
//! controller moves weight to the first tier with ready endpoints, keeping the
//! user's own weights in [`ORIGINAL_WEIGHTS`]. Parsing lives here so the
//! controller, discovery and `meshlink failover status` read policies alike.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label selecting the splits a meshlink failover controller manages; its value
/// names the controller (default `meshlink`).
pub const CONTROLLED_BY: &str = "failover.meshlink.io/controlled-by";
/// Annotation: the primary backend (tier 0).
pub const PRIMARY: &str = "failover.meshlink.io/primary";
/// Annotation: the failover chain, tiers separated by `,`, backends of one tier by `|`.
pub const ORDER: &str = "failover.meshlink.io/order";
/// Annotation the controller writes: the user's weights (JSON object backend →
/// weight), recorded before its first change and never overwritten by a shift.
pub const ORIGINAL_WEIGHTS: &str = "failover.meshlink.io/original-weights";
/// Annotation the controller writes: the index of the tier now receiving traffic.
pub const ACTIVE_TIER: &str = "failover.meshlink.io/active-tier";
/// Annotation the controller writes: the last shift, as a [`Shift`] in JSON.
pub const LAST_SHIFT: &str = "failover.meshlink.io/last-shift";

/// Traffic to `service` split by weight across `backends`.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "split.smi-spec.io",
    version = "v1alpha2",
    kind = "TrafficSplit",
    namespaced,
    shortname = "ts",
    printcolumn(
        name = "Active Tier",
        type_ = "string",
        json_path = ".metadata.annotations.failover\\.meshlink\\.io/active-tier"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplitSpec {
    /// The root Service clients call.
    pub service: String,
    /// Where its traffic goes.
    pub backends: Vec<TrafficSplitBackend>,
}

/// One backend of a split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TrafficSplitBackend {
    /// The backend Service: `name` in the split's namespace, or `name.namespace`.
    pub service: String,
    /// Relative share of the traffic.
    pub weight: u32,
}

/// The last weight shift of a managed split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shift {
    /// RFC 3339 time of the shift.
    pub time: String,
    /// Tier before the shift.
    pub from: usize,
    /// Tier after it.
    pub to: usize,
    /// Why (`PrimaryUnavailable`, `Recovered`, ...).
    pub reason: String,
}

/// A split's annotations are unusable as written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid failover policy: {0}")]
pub struct InvalidPolicy(pub String);

/// A managed split read as a failover chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Tiers in failover order; tier 0 holds the primary.
    pub tiers: Vec<Vec<String>>,
}

impl Policy {
    /// Reads the chain of `split`: [`ORDER`] when set, else [`PRIMARY`] as tier 0
    /// and every other backend as tier 1. The chain names every backend of the
    /// split exactly once, and nothing else.
    pub fn of(split: &TrafficSplit) -> Result<Self, InvalidPolicy> {
        let annotation = |k: &str| {
            split
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(k))
                .map(|v| v.trim().to_string())
        };
        let backends: Vec<&str> = split
            .spec
            .backends
            .iter()
            .map(|b| b.service.as_str())
            .collect();
        let tiers: Vec<Vec<String>> = match (annotation(ORDER), annotation(PRIMARY)) {
            (Some(order), primary) => {
                let tiers = parse_order(&order)?;
                if let Some(p) = primary.filter(|p| tiers[0] != [p.clone()]) {
                    return Err(InvalidPolicy(format!(
                        "{PRIMARY} {p:?} is not the only backend of the first tier of {ORDER}"
                    )));
                }
                tiers
            }
            (None, Some(primary)) => {
                let rest: Vec<String> = backends
                    .iter()
                    .filter(|b| **b != primary)
                    .map(|b| b.to_string())
                    .collect();
                let mut tiers = vec![vec![primary]];
                if !rest.is_empty() {
                    tiers.push(rest);
                }
                tiers
            }
            (None, None) => {
                return Err(InvalidPolicy(format!(
                    "neither {PRIMARY} nor {ORDER} is set"
                )));
            }
        };
        let mut seen = std::collections::HashSet::new();
        if let Some(missing) = backends
            .iter()
            .find(|b| !tiers.iter().flatten().any(|t| t == *b))
        {
            return Err(InvalidPolicy(format!(
                "backend {missing:?} is not in {ORDER}; every backend needs a tier"
            )));
        }
        for b in tiers.iter().flatten() {
            if !backends.contains(&b.as_str()) {
                return Err(InvalidPolicy(format!(
                    "{b:?} is not a backend of the split (backends: {backends:?})"
                )));
            }
            if !seen.insert(b.as_str()) {
                return Err(InvalidPolicy(format!("{b:?} appears twice in the chain")));
            }
        }
        Ok(Self { tiers })
    }

    /// The tier of `backend`, if it is in the chain.
    pub fn tier_of(&self, backend: &str) -> Option<usize> {
        self.tiers
            .iter()
            .position(|t| t.iter().any(|b| b == backend))
    }
}

fn parse_order(order: &str) -> Result<Vec<Vec<String>>, InvalidPolicy> {
    let tiers: Vec<Vec<String>> = order
        .split(',')
        .map(|tier| tier.split('|').map(|b| b.trim().to_string()).collect())
        .collect();
    if tiers.iter().flatten().any(String::is_empty) {
        return Err(InvalidPolicy(format!(
            "{ORDER} {order:?} has an empty entry (expected e.g. \"a, b | c, d\")"
        )));
    }
    Ok(tiers)
}

/// The user's weights recorded on `split`, if the controller has recorded them
/// and they parse.
pub fn original_weights(split: &TrafficSplit) -> Option<BTreeMap<String, u32>> {
    let raw = split.metadata.annotations.as_ref()?.get(ORIGINAL_WEIGHTS)?;
    serde_json::from_str(raw).ok()
}

/// The split's current weights, backend → weight.
pub fn weights(split: &TrafficSplit) -> BTreeMap<String, u32> {
    split
        .spec
        .backends
        .iter()
        .map(|b| (b.service.clone(), b.weight))
        .collect()
}

/// `(namespace, name)` of a backend named `service` in a split in `namespace`:
/// `name.other` names a Service in namespace `other`.
pub fn backend_key(namespace: &str, service: &str) -> (String, String) {
    match service.split_once('.') {
        Some((name, ns)) => (ns.to_string(), name.to_string()),
        None => (namespace.to_string(), service.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
