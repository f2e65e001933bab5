//! Failover: rewrites the weights of managed SMI TrafficSplits from their
//! backends' endpoint health. [`decide`] is the pure policy (which tier, which
//! weights, when to return); [`reconciler`] watches the cluster and writes the
//! decisions.

pub mod decide;
pub mod reconciler;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use reconciler::{Config, run};

/// Checks an equality-based label selector (`k=v`, `k==v`, `k!=v`, `k`, `!k`,
/// comma-separated) before it reaches the apiserver.
pub fn check_selector(selector: &str) -> Result<(), String> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    };
    for term in selector.split(',') {
        let term = term.trim();
        let ok = match term
            .split_once("!=")
            .or_else(|| term.split_once("=="))
            .or_else(|| term.split_once('='))
        {
            Some((k, v)) => valid(k.trim()) && (v.trim().is_empty() || valid(v.trim())),
            None => valid(term.strip_prefix('!').unwrap_or(term)),
        };
        if !ok {
            return Err(format!(
                "{term:?} is not key, !key, key=value or key!=value"
            ));
        }
    }
    Ok(())
}

/// Label of a shift: `Failover` (to a later tier) or `Recovered` (back).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShiftLabels {
    reason: String,
}

/// Failover metrics.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    shifts: Family<ShiftLabels, Counter>,
    patch_failures: Counter,
    watch_restarts: Counter,
    managed: Gauge,
}

impl Metrics {
    /// Registers the metrics under `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "shifts",
            "Weight shifts between tiers of managed TrafficSplits, by reason",
            m.shifts.clone(),
        );
        registry.register(
            "patch_failures",
            "TrafficSplit weight patches that failed and were retried",
            m.patch_failures.clone(),
        );
        registry.register(
            "watch_restarts",
            "Failover watches restarted after an error",
            m.watch_restarts.clone(),
        );
        registry.register("managed_splits", "TrafficSplits managed", m.managed.clone());
        m
    }

    fn shift(&self, reason: &str) {
        self.shifts
            .get_or_create(&ShiftLabels {
                reason: reason.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn selectors_are_checked() {
        for ok in [
            "failover.meshlink.io/controlled-by=meshlink",
            "a==b, c!=d,e,!f",
            "a=",
        ] {
            assert_eq!(super::check_selector(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a=b,,c", "a in (b)", "=b"] {
            assert!(super::check_selector(bad).is_err(), "{bad}");
        }
    }
}
