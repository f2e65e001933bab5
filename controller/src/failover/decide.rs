//! The failover decision, with no I/O: given a split's chain, which backends have
//! ready endpoints and the tier now active, which tier should get the traffic and
//! with what weights. Moving away from a tier with nothing ready happens at once;
//! moving back to a better tier waits until it has stayed ready for the hold-down,
//! so a flapping primary does not pull traffic back and forth.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use api::split::Policy;
use tokio::time::Instant;

/// The first tier of `policy` with at least one ready backend.
pub fn healthiest(policy: &Policy, ready: &BTreeSet<String>) -> Option<usize> {
    policy
        .tiers
        .iter()
        .position(|tier| tier.iter().any(|b| ready.contains(b)))
}

/// What a split remembers between decisions: since when a better tier than the
/// active one has been ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldDown {
    better: Option<(usize, Instant)>,
}

/// The outcome of one decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The tier that should get the traffic.
    pub tier: usize,
    /// When to decide again even if nothing changes (a hold-down running out).
    pub recheck: Option<Duration>,
}

/// Decides the tier for a split whose active tier is `current` (`None` the first
/// time it is seen, which takes the healthiest tier at once).
pub fn next_tier(
    current: Option<usize>,
    healthiest: Option<usize>,
    memory: &mut HoldDown,
    now: Instant,
    hold_down: Duration,
) -> Step {
    let stay = |tier| Step {
        tier,
        recheck: None,
    };
    let (Some(current), Some(best)) = (current, healthiest) else {
        memory.better = None;
        // Nothing ready anywhere: keep what is there (or start at the primary).
        return stay(current.or(healthiest).unwrap_or(0));
    };
    if best >= current {
        memory.better = None;
        return stay(best);
    }
    let since = match memory.better {
        Some((tier, since)) if tier == best => since,
        _ => {
            memory.better = Some((best, now));
            now
        }
    };
    let held = now.saturating_duration_since(since);
    if held >= hold_down {
        memory.better = None;
        return stay(best);
    }
    Step {
        tier: current,
        recheck: Some(hold_down - held),
    }
}

/// The weights that send `tier`'s traffic to its ready backends in the user's
/// `original` proportions (equal shares when those are all zero) and nothing
/// anywhere else. A tier with nothing ready keeps every member's share, so that
/// traffic still has somewhere to go when endpoints come back.
pub fn weights(
    policy: &Policy,
    original: &BTreeMap<String, u32>,
    tier: usize,
    ready: &BTreeSet<String>,
) -> BTreeMap<String, u32> {
    let members = policy
        .tiers
        .get(tier)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut live: Vec<&String> = members.iter().filter(|b| ready.contains(*b)).collect();
    if live.is_empty() {
        live = members.iter().collect();
    }
    let share = |b: &String| original.get(b).copied().unwrap_or(0);
    let all_zero = live.iter().all(|b| share(b) == 0);
    policy
        .tiers
        .iter()
        .flatten()
        .map(|b| {
            let weight = match (live.contains(&b), all_zero) {
                (false, _) => 0,
                (true, true) => 1,
                (true, false) => share(b),
            };
            (b.clone(), weight)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(tiers: &[&[&str]]) -> Policy {
        Policy {
            tiers: tiers
                .iter()
                .map(|t| t.iter().map(|b| b.to_string()).collect())
                .collect(),
        }
    }

    fn set(backends: &[&str]) -> BTreeSet<String> {
        backends.iter().map(|b| b.to_string()).collect()
    }

    fn map(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(b, w)| (b.to_string(), *w)).collect()
    }

    const HOLD: Duration = Duration::from_secs(30);

    #[test]
    fn the_first_tier_with_a_ready_backend_is_the_healthiest() {
        let p = policy(&[&["a"], &["b", "c"], &["d"]]);
        assert_eq!(healthiest(&p, &set(&["a", "d"])), Some(0));
        assert_eq!(healthiest(&p, &set(&["c", "d"])), Some(1));
        assert_eq!(healthiest(&p, &set(&["d"])), Some(2));
        assert_eq!(healthiest(&p, &set(&[])), None);
    }

    #[test]
    fn failing_over_is_immediate_and_a_first_sight_takes_the_healthiest() {
        let now = Instant::now();
        let mut m = HoldDown::default();
        assert_eq!(next_tier(Some(0), Some(2), &mut m, now, HOLD).tier, 2);
        assert_eq!(next_tier(None, Some(1), &mut m, now, HOLD).tier, 1);
        assert_eq!(next_tier(None, None, &mut m, now, HOLD).tier, 0);
        // Nothing ready anywhere: traffic stays where it is.
        assert_eq!(next_tier(Some(1), None, &mut m, now, HOLD).tier, 1);
    }

    #[test]
    fn returning_waits_for_the_hold_down_and_a_flap_restarts_it() {
        let t0 = Instant::now();
        let mut m = HoldDown::default();
        let step = next_tier(Some(1), Some(0), &mut m, t0, HOLD);
        assert_eq!(
            step,
            Step {
                tier: 1,
                recheck: Some(HOLD)
            }
        );
        let step = next_tier(Some(1), Some(0), &mut m, t0 + Duration::from_secs(20), HOLD);
        assert_eq!(step.tier, 1);
        assert_eq!(step.recheck, Some(Duration::from_secs(10)));
        // The primary flaps: the clock starts again when it is back.
        next_tier(Some(1), Some(1), &mut m, t0 + Duration::from_secs(25), HOLD);
        let back = t0 + Duration::from_secs(26);
        assert_eq!(next_tier(Some(1), Some(0), &mut m, back, HOLD).tier, 1);
        assert_eq!(
            next_tier(Some(1), Some(0), &mut m, back + HOLD, HOLD).tier,
            0
        );
        assert_eq!(m, HoldDown::default());
    }

    #[test]
    fn a_better_tier_than_the_one_held_restarts_the_clock() {
        let t0 = Instant::now();
        let mut m = HoldDown::default();
        next_tier(Some(2), Some(1), &mut m, t0, HOLD);
        let later = t0 + Duration::from_secs(20);
        let step = next_tier(Some(2), Some(0), &mut m, later, HOLD);
        assert_eq!(
            step,
            Step {
                tier: 2,
                recheck: Some(HOLD)
            }
        );
    }

    #[test]
    fn weights_follow_the_users_shares_within_the_active_tier() {
        let p = policy(&[&["a"], &["b", "c"]]);
        let original = map(&[("a", 100), ("b", 80), ("c", 20)]);
        let all = set(&["a", "b", "c"]);
        assert_eq!(
            weights(&p, &original, 0, &all),
            map(&[("a", 100), ("b", 0), ("c", 0)])
        );
        assert_eq!(
            weights(&p, &original, 1, &all),
            map(&[("a", 0), ("b", 80), ("c", 20)])
        );
        // A member with nothing ready gets nothing; the other takes the tier.
        assert_eq!(
            weights(&p, &original, 1, &set(&["c"])),
            map(&[("a", 0), ("b", 0), ("c", 20)])
        );
        // Nothing ready in the tier: keep every member's share.
        assert_eq!(
            weights(&p, &original, 1, &set(&[])),
            map(&[("a", 0), ("b", 80), ("c", 20)])
        );
    }

    #[test]
    fn zero_weight_backups_share_equally() {
        // The usual 0/1 split: the backups were written with weight 0.
        let p = policy(&[&["a"], &["b", "c"]]);
        let original = map(&[("a", 1), ("b", 0), ("c", 0)]);
        assert_eq!(
            weights(&p, &original, 1, &set(&["b", "c"])),
            map(&[("a", 0), ("b", 1), ("c", 1)])
        );
    }
}
