//! Cost tiers: keep traffic in the cheapest tier that can take it. Endpoints
//! carry a tier from discovery (0 same zone, 1 same cluster, 2 another cluster,
//! or what the operator configured). P2C runs over the cheapest tier that has
//! endpoints; when that tier's load passes the high-water mark, the next tier is
//! phased in by weight over [`TierConfig::ramp`], and phased out again once the
//! load falls below the low-water mark. A pick whose best candidate is itself
//! saturated (past twice the high-water mark) overflows to the next tier at
//! once, so a tier in trouble gets relief before the ramp catches up; so does
//! one that finds requests queued (as many in flight as the low-water mark)
//! when the next tier, already tried, is at most half as loaded: a hot zone
//! next to idle ones. Queueing, unlike latency, is not raised by noise. A tier
//! is only used if it can relieve the cheaper ones (not tried yet, or less
//! loaded), so slowness everywhere alike does not move traffic across zones.
//!
//! Load is counted in in-flight equivalents: `(in flight + 1) × mean RTT /
//! reference RTT`, where the reference is the lowest latency floor among all the
//! target's observed endpoints. An idle endpoint at its usual speed counts 1; one
//! with seven requests queued, or one request running 8× slower than the best
//! endpoint, counts 8.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::{Slot, p2c};

/// Which endpoints a pick may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// The cheapest tier with endpoints, widening by load.
    #[default]
    Tiered,
    /// Every endpoint, tiers ignored (plain P2C).
    All,
    /// Only the cheapest tier with endpoints, however loaded (what topology hints do).
    Cheapest,
}

/// When to add and remove tiers.
#[derive(Clone, Copy, Debug)]
pub struct TierConfig {
    /// The policy.
    pub policy: Policy,
    /// Load (in-flight equivalents per endpoint) above which the next tier is phased in.
    pub high_water: f64,
    /// Load below which the last added tier is phased out.
    pub low_water: f64,
    /// How long phasing one tier fully in or out takes.
    pub ramp: Duration,
}

impl Default for TierConfig {
    fn default() -> Self {
        Self {
            policy: Policy::Tiered,
            high_water: 8.0,
            low_water: 4.0,
            ramp: Duration::from_secs(1),
        }
    }
}

/// A candidate this many times past the high-water mark is saturated. At 1×,
/// single requests left the zone on ordinary noise in the harness test (4%).
const SATURATED: f64 = 2.0;

/// A tried tier at most 1/CLEARLY as loaded as the cheaper ones relieves
/// them clearly: picks that find requests queued overflow to it. (At 3, one
/// hot-zone run in three of `bench-tiers` kept a p99 1.12× plain P2C's.)
const CLEARLY: f64 = 2.0;

/// How far a balancer currently reaches beyond its cheapest tier: `reach` 1.25
/// means the second tier fully and the third with weight 0.25.
#[derive(Debug, Default)]
pub(super) struct Reach {
    reach: f64,
    stamp: Option<Instant>,
    /// The load of the tiers in full use, as of the last pick.
    load: f64,
}

impl Reach {
    /// The number of tiers in use, counting a partly phased-in one.
    pub(super) fn active_tiers(&self) -> usize {
        self.reach.ceil() as usize + 1
    }

    /// The load of the tiers in full use, in in-flight equivalents per endpoint.
    pub(super) fn load(&self) -> f64 {
        self.load
    }
}

/// Picks an endpoint from `slots` (sorted by tier) under `config`.
pub(super) fn choose<T>(
    slots: &[Arc<Slot<T>>],
    reach: &mut Reach,
    config: &TierConfig,
    now: Instant,
    rng: &mut impl Rng,
) -> Option<Arc<Slot<T>>> {
    let ends = tier_ends(slots);
    match config.policy {
        Policy::All => p2c(slots, now, rng),
        Policy::Cheapest => p2c(&slots[..*ends.first()?], now, rng),
        Policy::Tiered => {
            let last = ends.len().checked_sub(1)?;
            let reference = reference_rtt(slots);
            // The load of the tiers cheaper than tier `j`.
            let below = |j: usize| mean_load(&slots[..ends[j - 1]], reference);
            // Whether tier `j` can relieve those: not tried yet, or less loaded.
            // (When every zone is slow alike, widening buys nothing.)
            // Tier `j`'s load, once it has been tried.
            let tried_load = |j: usize| {
                let tier = &slots[ends[j - 1]..ends[j]];
                let tried = tier.iter().any(|s| s.load.mean_and_floor().is_some());
                tried.then(|| mean_load(tier, reference))
            };
            let relieves = |j: usize| tried_load(j).is_none_or(|load| load < below(j));
            // Whether it is known to relieve them clearly: tried and at most
            // half as loaded (a hot zone next to idle ones).
            let clearly_relieves =
                |j: usize| tried_load(j).is_some_and(|load| CLEARLY * load < below(j));
            reach.update(below, relieves, last, config, now);
            let base = reach.reach.floor() as usize;
            let partial = reach.reach - base as f64;
            let level = if base < last && rng.random_bool(partial.clamp(0.0, 1.0)) {
                base + 1
            } else {
                base
            };
            let pick = p2c(&slots[..ends[level]], now, rng)?;
            let queued = pick.load.in_flight() as f64 >= config.low_water;
            if level < last
                && ((load_of(&pick, reference) > SATURATED * config.high_water
                    && relieves(level + 1))
                    || (queued && clearly_relieves(level + 1)))
            {
                return p2c(&slots[..ends[level + 1]], now, rng);
            }
            Some(pick)
        }
    }
}

impl Reach {
    /// Moves the reach by the time since the last pick: out while the tiers
    /// in full use are past the high-water mark and the next one relieves
    /// them, back while the tiers before the last one in use are below the
    /// low-water mark or that last one does not relieve them.
    fn update(
        &mut self,
        below: impl Fn(usize) -> f64,
        relieves: impl Fn(usize) -> bool,
        last: usize,
        config: &TierConfig,
        now: Instant,
    ) {
        let elapsed = self
            .stamp
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
            .min(config.ramp);
        self.stamp = Some(now);
        let step = elapsed.as_secs_f64() / config.ramp.as_secs_f64().max(1e-9);
        self.reach = self.reach.min(last as f64);
        let outer = self.reach.ceil() as usize;
        self.load = below(self.reach.floor() as usize + 1);
        if outer > 0 && (below(outer) < config.low_water || !relieves(outer)) {
            self.reach = (self.reach - step).max(0.0);
        } else if self.reach < last as f64
            && self.load > config.high_water
            && relieves(self.reach.floor() as usize + 1)
        {
            self.reach = (self.reach + step).min(last as f64);
        }
        // Steps add up with rounding errors; a tier is either in or not.
        if (self.reach - self.reach.round()).abs() < 1e-6 {
            self.reach = self.reach.round();
        }
    }
}

/// The index one past the last slot of each tier, cheapest first.
fn tier_ends<T>(slots: &[Arc<Slot<T>>]) -> Vec<usize> {
    let mut ends = Vec::new();
    for (i, pair) in slots.windows(2).enumerate() {
        if pair[0].endpoint.tier != pair[1].endpoint.tier {
            ends.push(i + 1);
        }
    }
    if !slots.is_empty() {
        ends.push(slots.len());
    }
    ends
}

/// The lowest latency floor among observed endpoints, in nanoseconds.
fn reference_rtt<T>(slots: &[Arc<Slot<T>>]) -> Option<f64> {
    slots
        .iter()
        .filter_map(|s| s.load.mean_and_floor())
        .map(|(_, floor)| floor)
        .min_by(f64::total_cmp)
}

/// One endpoint's load in in-flight equivalents; unobserved endpoints and a
/// target with no observations count at their usual speed.
fn load_of<T>(slot: &Slot<T>, reference: Option<f64>) -> f64 {
    let pending = slot.load.in_flight() as f64 + 1.0;
    match (slot.load.mean_and_floor(), reference) {
        (Some((mean, _)), Some(r)) if r > 0.0 => pending * mean / r,
        _ => pending,
    }
}

fn mean_load<T>(slots: &[Arc<Slot<T>>], reference: Option<f64>) -> f64 {
    let total: f64 = slots.iter().map(|s| load_of(s, reference)).sum();
    total / slots.len().max(1) as f64
}

#[cfg(test)]
mod tests;
