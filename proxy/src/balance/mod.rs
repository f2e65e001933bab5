//! Load balancing: power of two choices over a live endpoint set. Each pick draws
//! two endpoints at random and takes the one with the lower peak-EWMA cost (see
//! [`ewma`]), divided by its weight. The set follows a discovery `watch`: slots for
//! endpoints that stay keep their load estimate and connection pools; new ones
//! start fresh; removed ones stop being picked (requests in flight finish).
//! Which endpoints P2C draws from is decided by cost tier ([`tiered`]).

pub mod ewma;
pub mod metrics;
pub mod tiered;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::discovery::{Endpoint, EndpointSet};
use ewma::PeakEwma;
use metrics::{BalancerMetrics, EndpointPicks, TierMetrics};
use tiered::{Reach, TierConfig};

/// How long a fresh endpoint is assumed to take, and how fast estimates decay.
#[derive(Clone, Copy, Debug)]
pub struct BalanceConfig {
    /// The RTT assumed before any observation.
    pub default_rtt: Duration,
    /// The EWMA decay time constant.
    pub decay: Duration,
    /// Cost tiers.
    pub tiers: TierConfig,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            tiers: TierConfig::default(),
        }
    }
}

/// One endpoint with its per-endpoint service (e.g. a connection pool) and load.
#[derive(Debug)]
pub struct Slot<T> {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// What the caller built for it.
    pub service: T,
    load: PeakEwma,
    /// Its pick counters, once the balancer's metrics are known.
    picks: OnceLock<EndpointPicks>,
}

type MakeService<T> = Box<dyn Fn(&Endpoint) -> T + Send + Sync>;

/// A P2C balancer over the endpoints of one target.
pub struct Balancer<T> {
    config: BalanceConfig,
    make: MakeService<T>,
    state: Mutex<State<T>>,
    /// Where picks are counted.
    metrics: Option<BalancerMetrics>,
}

struct State<T> {
    rx: watch::Receiver<EndpointSet>,
    /// Sorted by tier, cheapest first.
    slots: Vec<Arc<Slot<T>>>,
    reach: Reach,
}

impl<T> std::fmt::Debug for Balancer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("config", &self.config)
            .finish()
    }
}

impl<T> Balancer<T> {
    /// A balancer following `rx`, building each endpoint's service with `make`.
    pub fn new(
        rx: watch::Receiver<EndpointSet>,
        config: BalanceConfig,
        make: impl Fn(&Endpoint) -> T + Send + Sync + 'static,
    ) -> Self {
        let this = Self {
            config,
            make: Box::new(make),
            state: Mutex::new(State {
                rx,
                slots: Vec::new(),
                reach: Reach::default(),
            }),
            metrics: None,
        };
        {
            let mut state = this.state.lock().unwrap_or_else(|e| e.into_inner());
            this.refresh(&mut state, true);
        }
        this
    }

    /// Picks an endpoint, or `None` when the set is empty. The returned [`Pick`]
    /// counts as in flight until dropped.
    pub fn pick(&self) -> Option<Pick<T>> {
        self.pick_avoiding(|_| false)
    }

    /// Picks like [`Self::pick`] among the endpoints `dead` does not reject, so
    /// a tier whose endpoints all just failed is passed over for the next one;
    /// when `dead` rejects every endpoint, picks among all of them.
    pub fn pick_avoiding(&self, dead: impl Fn(&Endpoint) -> bool) -> Option<Pick<T>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(&mut state, false);
        let State { slots, reach, .. } = &mut *state;
        let alive: Vec<Arc<Slot<T>>>;
        let candidates = if slots.iter().any(|s| dead(&s.endpoint)) {
            alive = slots
                .iter()
                .filter(|s| !dead(&s.endpoint))
                .cloned()
                .collect();
            if alive.is_empty() { &*slots } else { &alive }
        } else {
            &*slots
        };
        let slot = tiered::choose(
            candidates,
            reach,
            &self.config.tiers,
            Instant::now(),
            &mut rand::rng(),
        )?;
        if let Some(metrics) = &self.metrics {
            let picks = slot.picks.get_or_init(|| metrics.endpoint(&slot.endpoint));
            metrics.picked(picks, reach.active_tiers(), reach.load());
        }
        slot.load.start();
        Some(Pick {
            slot,
            start: Instant::now(),
        })
    }

    /// Counts this balancer's picks in `metrics` under target `target`.
    pub fn observe(&mut self, metrics: Arc<TierMetrics>, target: &str) {
        self.metrics = Some(metrics.balancer(target));
    }

    /// How many tiers picks currently draw from (a partly phased-in one counts).
    pub fn active_tiers(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reach
            .active_tiers()
    }

    /// The endpoints currently balanced over.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(&mut state, false);
        state.slots.iter().map(|s| s.endpoint.clone()).collect()
    }

    fn refresh(&self, state: &mut State<T>, force: bool) {
        if !force && !state.rx.has_changed().unwrap_or(false) {
            return;
        }
        let set = state.rx.borrow_and_update().clone();
        let now = Instant::now();
        let old = std::mem::take(&mut state.slots);
        state.slots = set
            .iter()
            .map(|ep| match old.iter().find(|s| &s.endpoint == ep) {
                Some(kept) => kept.clone(),
                None => Arc::new(Slot {
                    endpoint: ep.clone(),
                    service: (self.make)(ep),
                    load: PeakEwma::new(self.config.default_rtt, self.config.decay, now),
                    picks: OnceLock::new(),
                }),
            })
            .collect();
        state.slots.sort_by_key(|s| s.endpoint.tier);
    }
}

/// Power of two choices: the cheaper of two distinct random slots.
fn p2c<T>(slots: &[Arc<Slot<T>>], now: Instant, rng: &mut impl Rng) -> Option<Arc<Slot<T>>> {
    match slots.len() {
        0 => None,
        1 => Some(slots[0].clone()),
        n => {
            let a = rng.random_range(0..n);
            let b = (a + rng.random_range(1..n)) % n;
            let cost = |s: &Slot<T>| s.load.cost(now) / f64::from(s.endpoint.weight.max(1));
            let pick = if cost(&slots[a]) <= cost(&slots[b]) {
                a
            } else {
                b
            };
            Some(slots[pick].clone())
        }
    }
}

/// A chosen endpoint, counted in flight until dropped.
#[derive(Debug)]
pub struct Pick<T> {
    slot: Arc<Slot<T>>,
    start: Instant,
}

impl<T> Pick<T> {
    /// The chosen endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.slot.endpoint
    }

    /// The endpoint's service.
    pub fn service(&self) -> &T {
        &self.slot.service
    }

    /// Records the latency since the pick (call when the response arrives).
    pub fn record(&self) {
        self.record_rtt(self.start.elapsed());
    }

    /// Records an explicit latency.
    pub fn record_rtt(&self, rtt: Duration) {
        self.slot.load.observe(rtt, Instant::now());
    }
}

impl<T> Drop for Pick<T> {
    fn drop(&mut self) {
        self.slot.load.end();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn ep(port: u16) -> Endpoint {
        Endpoint::plain(SocketAddr::from(([10, 0, 0, 1], port)))
    }

    fn balancer(ports: &[u16]) -> (watch::Sender<EndpointSet>, Balancer<u16>) {
        let (tx, rx) = watch::channel(Arc::new(ports.iter().map(|&p| ep(p)).collect()));
        (
            tx,
            Balancer::new(rx, BalanceConfig::default(), |e| e.addr.port()),
        )
    }

    #[test]
    fn dead_endpoints_are_avoided_down_to_the_next_tier() {
        let tiered = |port: u16, tier: u32| Endpoint { tier, ..ep(port) };
        let set = vec![tiered(1, 0), tiered(2, 0), tiered(3, 2)];
        let (_tx, rx) = watch::channel(Arc::new(set));
        let b = Balancer::new(rx, BalanceConfig::default(), |e| e.addr.port());
        let picks = |dead: &[u16]| {
            (0..200)
                .map(|_| {
                    *b.pick_avoiding(|e| dead.contains(&e.addr.port()))
                        .unwrap()
                        .service()
                })
                .collect::<std::collections::BTreeSet<_>>()
        };
        assert_eq!(picks(&[]), [1, 2].into(), "the cheap tier only");
        assert_eq!(picks(&[1]), [2].into());
        assert_eq!(picks(&[1, 2]), [3].into(), "the whole cheap tier is dead");
        assert!(!picks(&[1, 2, 3]).is_empty(), "all dead: still a pick");
    }

    #[test]
    fn slow_endpoint_gets_less_traffic() {
        let (_tx, b) = balancer(&[1, 2, 3]);
        let mut counts = [0usize; 4];
        for _ in 0..3000 {
            let pick = b.pick().unwrap();
            let port = *pick.service();
            counts[usize::from(port)] += 1;
            let ms = if port == 3 { 50 } else { 1 };
            pick.record_rtt(Duration::from_millis(ms));
        }
        assert!(counts[3] < 300, "slow endpoint got {} of 3000", counts[3]);
        assert!(counts[1] > 1000 && counts[2] > 1000, "{counts:?}");
    }

    #[test]
    fn busy_endpoint_gets_less_traffic() {
        let (_tx, b) = balancer(&[1, 2]);
        // Hold many requests open on whichever endpoint is picked first.
        let first = b.pick().unwrap();
        let busy = *first.service();
        let held: Vec<_> = (0..20)
            .filter_map(|_| b.pick())
            .filter(|p| *p.service() == busy)
            .collect();
        let to_busy = (0..100)
            .filter(|_| *b.pick().unwrap().service() == busy)
            .count();
        assert!(to_busy < 10, "{to_busy} picks went to the busy endpoint");
        drop((first, held));
    }

    #[test]
    fn follows_additions_and_removals() {
        let (tx, b) = balancer(&[1]);
        assert_eq!(*b.pick().unwrap().service(), 1);
        tx.send_replace(Arc::new(vec![ep(2), ep(3)]));
        let seen: std::collections::BTreeSet<u16> =
            (0..200).map(|_| *b.pick().unwrap().service()).collect();
        assert_eq!(seen, [2, 3].into());
        tx.send_replace(Arc::new(vec![]));
        assert!(b.pick().is_none());
    }

    #[test]
    fn kept_endpoints_keep_their_state() {
        let (tx, b) = balancer(&[1, 2]);
        let slow = b.pick().unwrap();
        slow.record_rtt(Duration::from_secs(1));
        let port = slow.endpoint().addr.port();
        drop(slow);
        tx.send_replace(Arc::new(vec![ep(port), ep(9)]));
        // The kept slot remembers its slow RTT, so the new endpoint is preferred.
        let to_kept = (0..100)
            .filter(|_| b.pick().unwrap().endpoint().addr.port() == port)
            .count();
        assert!(to_kept < 5, "{to_kept}");
    }
}
