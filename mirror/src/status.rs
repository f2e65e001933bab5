//! Builds the Link's status from what the writer and the gateway watcher
//! found. Pure, so the shape of the status is unit-tested; the controller
//! patches the result onto the Link's status subresource.

use std::collections::BTreeMap;

use api::link::{
    CONDITION_MIRRORED, CONDITION_REMOTE_REACHABLE, LinkStatus, MirrorReason, ProbeLatency,
    ServiceMirrorStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::index::ServiceKey;

/// The outcome of the last write for one remote Service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceResult {
    /// Why it is (not) mirrored.
    pub reason: MirrorReason,
    /// Explanation.
    pub message: String,
    /// Local mirror name.
    pub local_name: String,
    /// When `reason` last changed.
    pub since: Time,
}

/// Link-wide health.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Health {
    /// Gateway probe result (`None` when no gateway is probed).
    pub gateway_alive: Option<bool>,
    /// When the gateway was last probed.
    pub last_probe: Option<Time>,
    /// Percentiles of recent successful probe latencies.
    pub probe_latency: Option<ProbeLatency>,
    /// Whether the remote apiserver answered the last watch request.
    pub remote_reachable: Option<bool>,
    /// Reason for the `RemoteReachable` condition.
    pub reason: String,
    /// Message for the `RemoteReachable` condition.
    pub message: String,
    /// When `remote_reachable` last changed.
    pub since: Option<Time>,
}

/// The status to write.
pub fn build(
    results: &BTreeMap<ServiceKey, ServiceResult>,
    health: &Health,
    now: &Time,
) -> LinkStatus {
    let services: Vec<ServiceMirrorStatus> = results
        .iter()
        .map(|(key, r)| ServiceMirrorStatus {
            namespace: key.namespace.clone(),
            remote_name: key.name.clone(),
            local_name: r.local_name.clone(),
            condition: Condition {
                type_: CONDITION_MIRRORED.into(),
                status: bool_status(r.reason == MirrorReason::Mirrored).into(),
                reason: r.reason.as_str().into(),
                message: r.message.clone(),
                last_transition_time: r.since.clone(),
                observed_generation: None,
            },
        })
        .collect();
    let mirrored = results
        .values()
        .filter(|r| r.reason == MirrorReason::Mirrored)
        .count();
    let conditions = health
        .remote_reachable
        .map(|ok| Condition {
            type_: CONDITION_REMOTE_REACHABLE.into(),
            status: bool_status(ok).into(),
            reason: health.reason.clone(),
            message: health.message.clone(),
            last_transition_time: health.since.clone().unwrap_or_else(|| now.clone()),
            observed_generation: None,
        })
        .into_iter()
        .collect();
    LinkStatus {
        gateway_alive: health.gateway_alive,
        last_probe_time: health.last_probe.clone(),
        probe_latency: health.probe_latency.clone(),
        remote_reachable: health.remote_reachable,
        mirrored_services: i32::try_from(mirrored).unwrap_or(i32::MAX),
        conditions,
        services,
    }
}

fn bool_status(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    #[test]
    fn counts_only_mirrored_and_reports_each_service() {
        let t = Time(Timestamp::UNIX_EPOCH);
        let result = |reason, name: &str| ServiceResult {
            reason,
            message: "m".into(),
            local_name: format!("{name}-east"),
            since: t.clone(),
        };
        let results = BTreeMap::from([
            (
                ServiceKey::new("a", "books"),
                result(MirrorReason::Mirrored, "books"),
            ),
            (
                ServiceKey::new("b", "maps"),
                result(MirrorReason::MissingNamespace, "maps"),
            ),
        ]);
        let health = Health {
            gateway_alive: Some(true),
            remote_reachable: Some(false),
            reason: "RemoteUnreachable".into(),
            message: "connection refused".into(),
            ..Health::default()
        };
        let status = build(&results, &health, &t);
        assert_eq!(status.mirrored_services, 1);
        assert_eq!(status.services.len(), 2);
        let maps = &status.services[1];
        assert_eq!(maps.local_name, "maps-east");
        assert_eq!(maps.condition.status, "False");
        assert_eq!(maps.condition.reason, "MissingNamespace");
        assert_eq!(status.conditions[0].type_, "RemoteReachable");
        assert_eq!(status.conditions[0].status, "False");
        assert_eq!(status.gateway_alive, Some(true));
    }
}
