//! Where balanced traffic goes: picks by endpoint tier and by (source zone,
//! destination zone), and per target the tiers in use and the load of those in
//! full use. Zones and targets are capped label values, like the data plane's.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::discovery::Endpoint;
use crate::metrics::NameCap;

/// Labels of picks by tier.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    tier: u32,
}

/// Labels of picks by zone pair; an unknown zone is empty.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ZoneLabels {
    src_zone: String,
    dst_zone: String,
}

/// Labels of per-target gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

/// Balancer metrics of one proxy or gateway.
#[derive(Debug)]
pub struct TierMetrics {
    zone: String,
    picks: Family<TierLabels, Counter>,
    zone_picks: Family<ZoneLabels, Counter>,
    active_tiers: Family<TargetLabels, Gauge>,
    load: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    zones: NameCap,
    targets: NameCap,
}

impl TierMetrics {
    /// Registers the families under `registry` for a proxy in `zone`.
    pub fn register(registry: &mut Registry, zone: &str) -> Self {
        let this = Self {
            zone: zone.to_string(),
            picks: Family::default(),
            zone_picks: Family::default(),
            active_tiers: Family::default(),
            load: Family::default(),
            zones: NameCap::default(),
            targets: NameCap::default(),
        };
        registry.register(
            "balance_picks",
            "Requests (HTTP) or connections (opaque) balanced, by the chosen endpoint's cost tier",
            this.picks.clone(),
        );
        registry.register(
            "balance_zone_picks",
            "Requests or connections balanced, by this proxy's zone and the endpoint's",
            this.zone_picks.clone(),
        );
        registry.register(
            "balance_active_tiers",
            "Cost tiers a target's picks draw from (a partly phased-in tier counts)",
            this.active_tiers.clone(),
        );
        registry.register(
            "balance_load",
            "Load of a target's tiers in full use, in in-flight equivalents per endpoint",
            this.load.clone(),
        );
        this
    }

    /// The metrics of the balancer of `target`, its gauges resolved once.
    pub(super) fn balancer(self: &Arc<Self>, target: &str) -> BalancerMetrics {
        let labels = TargetLabels {
            target: self.targets.label(target),
        };
        BalancerMetrics {
            active_tiers: self.active_tiers.get_or_create(&labels).clone(),
            load: self.load.get_or_create(&labels).clone(),
            all: self.clone(),
        }
    }
}

/// The metrics of one balancer: its target's gauges, and the families its
/// endpoints' pick counters come from.
#[derive(Debug)]
pub(super) struct BalancerMetrics {
    all: Arc<TierMetrics>,
    active_tiers: Gauge,
    load: Gauge<f64, AtomicU64>,
}

/// The pick counters of one endpoint: by its tier and by its zone.
#[derive(Debug)]
pub(super) struct EndpointPicks {
    tier: Counter,
    zone: Counter,
}

impl BalancerMetrics {
    /// The pick counters of `endpoint`.
    pub(super) fn endpoint(&self, endpoint: &Endpoint) -> EndpointPicks {
        let all = &self.all;
        let zone = ZoneLabels {
            src_zone: all.zone.clone(),
            dst_zone: all
                .zones
                .label(endpoint.zone.as_deref().unwrap_or_default()),
        };
        let tier = TierLabels {
            tier: endpoint.tier,
        };
        EndpointPicks {
            tier: all.picks.get_or_create(&tier).clone(),
            zone: all.zone_picks.get_or_create(&zone).clone(),
        }
    }

    /// Records one pick of an endpoint with the balancer's state after it.
    pub(super) fn picked(&self, endpoint: &EndpointPicks, active_tiers: usize, load: f64) {
        endpoint.tier.inc();
        endpoint.zone.inc();
        self.active_tiers.set(active_tiers as i64);
        self.load.set(load);
    }
}
