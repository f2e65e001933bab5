//! Prometheus metrics of the mirror controller, all labelled by target cluster.
//! Registered once into the process's Registry under the `mirror` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    target_cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    target_cluster: String,
    outcome: &'static str,
}

/// Metric families; cheap to clone (handles share the registered metrics).
#[derive(Clone, Debug)]
pub struct Metrics {
    gateway_alive: Family<ClusterLabels, Gauge>,
    probe_latency: Family<ClusterLabels, Histogram>,
    probes: Family<ProbeLabels, Counter>,
    mirrored_services: Family<ClusterLabels, Gauge>,
    reconcile_errors: Family<ClusterLabels, Counter>,
    watch_restarts: Family<ClusterLabels, Counter>,
}

impl Metrics {
    /// Registers the families under `registry` (callers pass a prefixed sub-registry).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            gateway_alive: Family::default(),
            probe_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
            probes: Family::default(),
            mirrored_services: Family::default(),
            reconcile_errors: Family::default(),
            watch_restarts: Family::default(),
        };
        registry.register(
            "gateway_alive",
            "1 while the target cluster's gateway passes its probe",
            m.gateway_alive.clone(),
        );
        registry.register(
            "probe_latency_seconds",
            "Latency of successful gateway probes",
            m.probe_latency.clone(),
        );
        registry.register("probes", "Gateway probes by outcome", m.probes.clone());
        registry.register(
            "mirrored_services",
            "Remote services currently mirrored",
            m.mirrored_services.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed writes of mirror objects",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "remote_watch_restarts",
            "Errors that restarted a watch on the remote cluster",
            m.watch_restarts.clone(),
        );
        m
    }

    /// Handles for one target cluster.
    pub fn for_cluster(&self, cluster: &str) -> ClusterMetrics {
        let labels = ClusterLabels {
            target_cluster: cluster.to_string(),
        };
        let probe = |outcome| ProbeLabels {
            target_cluster: cluster.to_string(),
            outcome,
        };
        // Each guard must be dropped before the next `get_or_create`: a live read
        // guard on a family deadlocks the write that inserts a new label set.
        let gateway_alive = self.gateway_alive.get_or_create(&labels).clone();
        let probe_latency = self.probe_latency.get_or_create(&labels).clone();
        let probe_success = self.probes.get_or_create(&probe("success")).clone();
        let probe_failure = self.probes.get_or_create(&probe("failure")).clone();
        let mirrored_services = self.mirrored_services.get_or_create(&labels).clone();
        let reconcile_errors = self.reconcile_errors.get_or_create(&labels).clone();
        let watch_restarts = self.watch_restarts.get_or_create(&labels).clone();
        ClusterMetrics {
            gateway_alive,
            probe_latency,
            probe_success,
            probe_failure,
            mirrored_services,
            reconcile_errors,
            watch_restarts,
        }
    }
}

/// The metrics of one Link's target cluster.
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    /// 1 while the gateway is alive.
    pub gateway_alive: Gauge,
    /// Successful probe latency in seconds.
    pub probe_latency: Histogram,
    /// Probes that passed.
    pub probe_success: Counter,
    /// Probes that failed.
    pub probe_failure: Counter,
    /// Services currently mirrored.
    pub mirrored_services: Gauge,
    /// Failed mirror writes.
    pub reconcile_errors: Counter,
    /// Remote watch errors.
    pub watch_restarts: Counter,
}

impl Default for Metrics {
    /// Families registered nowhere, for tests and library use without a registry.
    fn default() -> Self {
        Self::register(&mut Registry::default())
    }
}

impl Default for ClusterMetrics {
    /// Unregistered handles, for tests and library use without a registry.
    fn default() -> Self {
        Metrics::register(&mut Registry::default()).for_cluster("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_handles_are_labelled_and_shared() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let east = metrics.for_cluster("east");
        east.gateway_alive.set(1);
        east.probe_failure.inc();
        metrics.for_cluster("east").probe_failure.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"gateway_alive{target_cluster="east"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"probes_total{target_cluster="east",outcome="failure"} 2"#),
            "{text}"
        );
    }
}
