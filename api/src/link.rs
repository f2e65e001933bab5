//! The `Link` custom resource: one linked target cluster, how to reach its
//! apiserver and gateway, which of its Services to mirror, and the mirror
//! controller's report on how that is going.
//!
//! The selector and exclusion helpers live next to the type so that the mirror
//! controller and `meshlink check` agree on what "exported" means.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::labels;

/// Default DNS domain of a cluster.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// Default port of the gateway's mTLS listener.
pub const DEFAULT_GATEWAY_PORT: u16 = 4143;
/// Default port of the gateway's admin (probe) listener.
pub const DEFAULT_PROBE_PORT: u16 = 4191;

/// Condition type on each [`ServiceMirrorStatus`].
pub const CONDITION_MIRRORED: &str = "Mirrored";
/// Condition type on the Link itself: the controller can read the Link and its
/// credentials and reach the remote apiserver.
pub const CONDITION_REMOTE_REACHABLE: &str = "RemoteReachable";

/// Why a remote Service is or is not mirrored; the `reason` of a `Mirrored` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MirrorReason {
    /// The mirror exists and follows the remote Service.
    Mirrored,
    /// The remote Service's namespace does not exist locally.
    MissingNamespace,
    /// The remote Service cannot be mirrored as it is (e.g. the name is too long).
    InvalidService,
    /// Writing the mirror failed; the controller retries.
    Error,
}

impl MirrorReason {
    /// The reason string used in conditions and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mirrored => "Mirrored",
            Self::MissingNamespace => "MissingNamespace",
            Self::InvalidService => "InvalidService",
            Self::Error => "Error",
        }
    }
}

/// A linked target cluster and how to mirror its exported Services.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "multicluster.meshlink.io",
    version = "v1alpha1",
    kind = "Link",
    namespaced,
    status = "LinkStatus",
    shortname = "ln",
    printcolumn(
        name = "Cluster",
        type_ = "string",
        json_path = ".spec.targetClusterName"
    ),
    printcolumn(
        name = "Gateway Alive",
        type_ = "boolean",
        json_path = ".status.gatewayAlive"
    ),
    printcolumn(
        name = "Mirrored",
        type_ = "integer",
        json_path = ".status.mirroredServices"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct LinkSpec {
    /// Name of the target cluster; suffixes mirror names (`<svc>-<cluster>`).
    pub target_cluster_name: String,
    /// DNS domain of the target cluster.
    #[serde(default = "default_domain")]
    pub target_cluster_domain: String,
    /// Secret (same namespace, type `meshlink.io/remote-kubeconfig`, key
    /// `kubeconfig`) holding a kubeconfig for the target cluster.
    pub credentials_secret: String,
    /// Addresses of the target cluster's gateway: IPs or DNS names.
    #[serde(default)]
    pub gateway_addresses: Vec<String>,
    /// Port of the gateway's mTLS listener.
    #[serde(default = "default_gateway_port")]
    pub gateway_port: u16,
    /// SPIFFE identity the gateway presents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_identity: Option<String>,
    /// How the gateway is probed.
    #[serde(default)]
    pub probe: ProbeSpec,
    /// Remote Services matching this are mirrored through the gateway.
    #[serde(default = "default_exported_selector")]
    pub selector: LabelSelector,
    /// Remote Services matching this are mirrored with their pod addresses (flat network).
    #[serde(default = "default_remote_discovery_selector")]
    pub remote_discovery_selector: LabelSelector,
    /// Label keys not copied to mirrors; `prefix/*` matches every key under `prefix/`.
    #[serde(default)]
    pub excluded_labels: Vec<String>,
    /// Annotation keys not copied to mirrors; same wildcard rule as labels.
    #[serde(default)]
    pub excluded_annotations: Vec<String>,
    /// PEM bundle of the target cluster's trust roots, when it differs from ours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_trust_bundle: Option<String>,
    /// Create a missing local namespace instead of skipping its services.
    #[serde(default)]
    pub create_missing_namespaces: bool,
}

/// Gateway liveness probe settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    /// HTTP path probed over mTLS.
    #[serde(default = "default_probe_path")]
    pub path: String,
    /// Admin port of the gateway.
    #[serde(default = "default_probe_port")]
    pub port: u16,
    /// Seconds between probes (jittered).
    #[serde(default = "default_period")]
    pub period_seconds: u32,
    /// Seconds before one probe counts as failed.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u32,
    /// Consecutive failures after which the gateway is not alive.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
}

impl Default for ProbeSpec {
    fn default() -> Self {
        Self {
            path: default_probe_path(),
            port: DEFAULT_PROBE_PORT,
            period_seconds: default_period(),
            timeout_seconds: default_timeout(),
            failure_threshold: default_failure_threshold(),
        }
    }
}

/// What the mirror controller reports about a Link.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    /// Whether the last probes found the gateway alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_alive: Option<bool>,
    /// When the gateway was last probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    /// Latency of the recent successful gateway probes (for `meshlink gateways`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_latency: Option<ProbeLatency>,
    /// Whether the remote apiserver answers the controller's watches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_reachable: Option<bool>,
    /// Number of remote Services currently mirrored.
    #[serde(default)]
    pub mirrored_services: i32,
    /// Link-level conditions (`RemoteReachable`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// One entry per exported remote Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceMirrorStatus>,
}

/// Percentiles of the latest successful gateway probe latencies, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeLatency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// How many probes the percentiles cover (the most recent ones).
    pub samples: u32,
}

/// The state of one exported remote Service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMirrorStatus {
    /// Namespace of the remote Service (and of its mirror).
    pub namespace: String,
    /// Name of the remote Service.
    pub remote_name: String,
    /// Name of the local mirror Service.
    pub local_name: String,
    /// The `Mirrored` condition.
    pub condition: Condition,
}

/// A Link's spec is unusable as written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid Link spec: {0}")]
pub struct InvalidLink(pub String);

impl LinkSpec {
    /// Checks what the schema cannot: names, ports and probe settings.
    pub fn validate(&self) -> Result<(), InvalidLink> {
        if !is_dns_label(&self.target_cluster_name) {
            return Err(InvalidLink(format!(
                "targetClusterName {:?} is not a DNS label",
                self.target_cluster_name
            )));
        }
        if self.credentials_secret.is_empty() {
            return Err(InvalidLink("credentialsSecret is empty".into()));
        }
        if self.gateway_port == 0 || self.probe.port == 0 {
            return Err(InvalidLink(
                "gateway and probe ports must be non-zero".into(),
            ));
        }
        if self.probe.period_seconds == 0
            || self.probe.timeout_seconds == 0
            || self.probe.failure_threshold == 0
        {
            return Err(InvalidLink(
                "probe periodSeconds, timeoutSeconds and failureThreshold must be positive".into(),
            ));
        }
        if !self.probe.path.starts_with('/') {
            return Err(InvalidLink(format!(
                "probe path {:?} must start with '/'",
                self.probe.path
            )));
        }
        Ok(())
    }
}

/// Whether `labels` satisfy `selector` (matchLabels and matchExpressions).
/// An unknown operator matches nothing, so a typo never exports everything.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty());
    // An empty selector would export every Service; treat it as "nothing".
    !empty && labels_ok && exprs_ok
}

/// Whether `key` is excluded by `patterns` (exact keys or `prefix/*`).
pub fn is_excluded(key: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('/') => key.starts_with(prefix),
        _ => p == key,
    })
}

/// RFC 1123 label: what Kubernetes requires of Service names.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn default_domain() -> String {
    DEFAULT_CLUSTER_DOMAIN.into()
}
fn default_gateway_port() -> u16 {
    DEFAULT_GATEWAY_PORT
}
fn default_probe_path() -> String {
    "/ready".into()
}
fn default_probe_port() -> u16 {
    DEFAULT_PROBE_PORT
}
fn default_period() -> u32 {
    3
}
fn default_timeout() -> u32 {
    1
}
fn default_failure_threshold() -> u32 {
    3
}
fn single_label_selector(value: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            labels::EXPORTED.to_string(),
            value.to_string(),
        )])),
        match_expressions: None,
    }
}
fn default_exported_selector() -> LabelSelector {
    single_label_selector(labels::EXPORTED_GATEWAY)
}
fn default_remote_discovery_selector() -> LabelSelector {
    single_label_selector(labels::EXPORTED_REMOTE_DISCOVERY)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
