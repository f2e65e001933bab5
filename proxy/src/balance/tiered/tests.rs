//! The tier policy under a simulated clock: one pick per millisecond, each
//! answered with a latency chosen per tier, so every run is deterministic.

use super::*;
use crate::balance::ewma::PeakEwma;
use crate::discovery::Endpoint;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::net::SocketAddr;

const MS: Duration = Duration::from_millis(1);

struct Sim {
    slots: Vec<Arc<Slot<()>>>,
    reach: Reach,
    config: TierConfig,
    now: Instant,
    rng: StdRng,
}

impl Sim {
    /// `per_tier[t]` endpoints in tier `t`.
    fn new(per_tier: &[usize], policy: Policy) -> Self {
        let now = Instant::now();
        let mut slots = Vec::new();
        for (tier, &n) in per_tier.iter().enumerate() {
            for _ in 0..n {
                let port = slots.len() as u16 + 1;
                let mut endpoint = Endpoint::plain(SocketAddr::from(([10, 0, 0, 1], port)));
                endpoint.tier = tier as u32;
                slots.push(Arc::new(Slot {
                    endpoint,
                    service: (),
                    load: PeakEwma::new(30 * MS, Duration::from_secs(10), now),
                    picks: Default::default(),
                }));
            }
        }
        Self {
            slots,
            reach: Reach::default(),
            config: TierConfig {
                policy,
                ..TierConfig::default()
            },
            now,
            rng: StdRng::seed_from_u64(7),
        }
    }

    /// Holds `n` more (or with `start` false, `n` fewer) long requests in
    /// flight on the endpoint with port `port`.
    fn hold(&self, port: u16, n: usize, start: bool) {
        let slot = self.slots.iter().find(|s| s.endpoint.addr.port() == port);
        for _ in 0..n {
            let load = &slot.expect("port").load;
            if start { load.start() } else { load.end() }
        }
    }

    /// Sends `n` sequential requests, one per millisecond, answered after
    /// `latency(endpoint)`; returns how many went to each tier.
    fn run(&mut self, n: usize, latency: impl Fn(&Endpoint) -> Duration) -> [usize; 3] {
        let mut counts = [0; 3];
        for _ in 0..n {
            self.now += MS;
            let slot = choose(
                &self.slots,
                &mut self.reach,
                &self.config,
                self.now,
                &mut self.rng,
            )
            .expect("endpoints");
            let tier = slot.endpoint.tier;
            slot.load.observe(latency(&slot.endpoint), self.now);
            counts[tier as usize] += 1;
        }
        counts
    }
}

fn even(_: &Endpoint) -> Duration {
    MS
}

/// Tier 0 `slow`× slower than the others.
fn slowed(slow: u32) -> impl Fn(&Endpoint) -> Duration {
    move |ep| if ep.tier == 0 { slow * MS } else { MS }
}

#[test]
fn even_load_stays_in_the_cheapest_tier() {
    let mut sim = Sim::new(&[2, 4, 2], Policy::Tiered);
    assert_eq!(sim.run(20_000, even), [20_000, 0, 0]);
    assert_eq!(sim.reach.active_tiers(), 1);
}

#[test]
fn an_empty_cheapest_tier_means_the_next_at_once() {
    let mut sim = Sim::new(&[0, 3, 2], Policy::Tiered);
    assert_eq!(sim.run(1000, even), [0, 1000, 0]);
    let mut sim = Sim::new(&[0, 0, 2], Policy::Cheapest);
    assert_eq!(sim.run(10, even), [0, 0, 10]);
}

#[test]
fn moderate_overload_phases_the_next_tier_in_gradually_and_out_again() {
    let mut sim = Sim::new(&[2, 4, 2], Policy::Tiered);
    sim.run(1000, even);
    // Long requests held on tier 0: 13 and 5 in flight make its load 10, past
    // the high-water mark (8), while the better endpoint's (6) is not, so
    // picks do not overflow to the untried next tier: it comes in by the
    // ramp. (Once tried and seen idle, picks that find requests queued
    // overflow to it.)
    sim.hold(1, 13, true);
    sim.hold(2, 5, true);
    let first = sim.run(50, even);
    let later = sim.run(2000, even);
    let share = |c: [usize; 3]| c[1] as f64 / c.iter().sum::<usize>() as f64;
    assert!(share(first) < 0.25, "phased in by weight: {first:?}");
    assert!(share(later) > 0.6, "then widely used: {later:?}");
    assert_eq!(later[2], 0, "the third tier is not needed: {later:?}");
    assert_eq!(sim.reach.active_tiers(), 2, "{:?}", sim.reach);

    // The overload ends: back in-zone within a few ramps.
    sim.hold(1, 13, false);
    sim.hold(2, 5, false);
    sim.run(3000, even);
    assert_eq!(sim.run(5000, even), [5000, 0, 0]);
}

#[test]
fn a_saturated_tier_overflows_per_request() {
    let mut sim = Sim::new(&[2, 4, 2], Policy::Tiered);
    sim.run(1000, even);
    let c = sim.run(100, slowed(50));
    assert!(c[1] > 80, "overflow needs no ramp: {c:?}");
}

#[test]
fn queued_requests_overflow_to_a_tried_tier_at_most_half_as_loaded() {
    let mut sim = Sim::new(&[2, 4], Policy::Tiered);
    sim.run(1000, even);
    // Four requests queued on each cheap endpoint: load 5, between the marks.
    sim.hold(1, 4, true);
    sim.hold(2, 4, true);
    assert_eq!(
        sim.run(1000, even),
        [1000, 0, 0],
        "the next tier is untried"
    );
    // Once tried (say during an earlier overload) and seen idle, it takes
    // the picks that find requests queued.
    for slot in sim.slots.iter().filter(|s| s.endpoint.tier == 1) {
        slot.load.observe(MS, sim.now);
    }
    let hot = sim.run(1000, even);
    assert!(hot[1] > 500, "{hot:?}");
    // Slowness without queueing (latency noise) moves nothing.
    sim.hold(1, 4, false);
    sim.hold(2, 4, false);
    assert_eq!(
        sim.run(1000, |ep| if ep.tier == 0 { 6 * MS } else { MS }),
        [1000, 0, 0]
    );
}

#[test]
fn slowness_everywhere_alike_does_not_keep_traffic_away() {
    let mut sim = Sim::new(&[2, 4], Policy::Tiered);
    sim.run(1000, even);
    // Every endpoint 30× slower (a machine-wide stall): the next tier is tried
    // once, found no better, and traffic stays home.
    sim.run(1000, |_| 30 * MS);
    assert_eq!(sim.run(2000, |_| 30 * MS), [2000, 0, 0]);
}

#[test]
fn load_between_the_marks_keeps_the_reach() {
    let mut sim = Sim::new(&[2, 4], Policy::Tiered);
    sim.run(1000, even);
    sim.run(3000, slowed(12));
    assert_eq!(sim.reach.active_tiers(), 2);
    // 6× is between low (4) and high (8): the second tier stays.
    let r = sim.reach.reach;
    for t in sim.slots.iter().filter(|s| s.endpoint.tier == 0) {
        for _ in 0..100 {
            t.load.observe(6 * MS, sim.now);
        }
    }
    sim.run(3000, |ep| if ep.tier == 0 { 6 * MS } else { MS });
    assert_eq!(sim.reach.reach, r);
}

#[test]
fn the_other_policies_ignore_load_or_tiers() {
    let mut cheapest = Sim::new(&[2, 4], Policy::Cheapest);
    assert_eq!(cheapest.run(3000, slowed(50)), [3000, 0, 0]);
    let mut all = Sim::new(&[2, 4], Policy::All);
    let c = all.run(3000, even);
    assert!(c[0] > 600 && c[1] > 1200, "{c:?}");
}
