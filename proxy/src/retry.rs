//! The proxy's own failover, ahead of the control plane: endpoints that just
//! failed (connection refused, reset, timed out) are marked dead for a short
//! while, a split backend whose endpoints are all dead or gone is skipped for the
//! next tier of its chain (see [`crate::split`]), and an idempotent request that
//! failed on a dead endpoint is sent once more, elsewhere, if the retry budget
//! allows (a refused connection, where nothing was sent, may be tried up to three
//! times, so two dead tiers at once are still skipped).
//!
//! The budget works as Finagle's and Linkerd's do, with their defaults: over
//! the last [`BUDGET_WINDOW`], retries may be a fifth ([`BUDGET_RATIO`]) of the
//! requests plus [`MIN_RETRIES_PER_SEC`] per second. The window matters when an
//! endpoint dies under load: every request in flight on it fails at once, more
//! than a fifth of one moment's traffic, and each must be retried to lose none.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use http::Method;
use tokio::time::Instant;

/// Retries earned per request.
pub const BUDGET_RATIO: f64 = 0.2;
/// Retries allowed per second of the window whatever the traffic.
pub const MIN_RETRIES_PER_SEC: u32 = 10;
/// How long a request or retry counts towards the budget.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(WINDOW_SECS as u64);
/// How long a failed endpoint counts as dead unless it succeeds again first.
pub const DEAD_FOR: Duration = Duration::from_secs(2);

const WINDOW_SECS: usize = 10;

/// Per-proxy failover state shared by every target.
#[derive(Debug)]
pub struct Failover {
    enabled: bool,
    dead: Mutex<HashMap<SocketAddr, Instant>>,
    budget: Mutex<Budget>,
}

impl Default for Failover {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Failover {
    /// The fast path on (`enabled`) or off: off, the proxy follows the routes'
    /// weights only and never retries.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            dead: Mutex::default(),
            budget: Mutex::new(Budget::new(Instant::now())),
        }
    }

    /// Whether the fast path is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Marks `addr` dead after a failed request or connection.
    pub fn failed(&self, addr: SocketAddr) {
        if self.enabled {
            self.lock_dead().insert(addr, Instant::now());
        }
    }

    /// Clears the mark of `addr` after a success of a request or connection
    /// `started` then. A success that started before the failure does not clear
    /// it: when an endpoint dies, requests already answered may still complete
    /// after others failed, and must not make it look alive to their retries.
    pub fn succeeded(&self, addr: SocketAddr, started: Instant) {
        if self.enabled {
            let mut dead = self.lock_dead();
            if dead.get(&addr).is_some_and(|failed| *failed < started) {
                dead.remove(&addr);
            }
        }
    }

    /// Whether `addr` failed within [`DEAD_FOR`] and has not succeeded since.
    pub fn is_dead(&self, addr: SocketAddr) -> bool {
        if !self.enabled {
            return false;
        }
        let mut dead = self.lock_dead();
        match dead.get(&addr) {
            Some(at) if at.elapsed() < DEAD_FOR => true,
            Some(_) => {
                dead.remove(&addr);
                false
            }
            None => false,
        }
    }

    /// Whether any endpoint is marked dead now (one lock; forgets expired marks).
    pub fn any_dead(&self) -> bool {
        if !self.enabled {
            return false;
        }
        let mut dead = self.lock_dead();
        dead.retain(|_, at| at.elapsed() < DEAD_FOR);
        !dead.is_empty()
    }

    /// Counts one request towards the retry budget.
    pub fn deposit(&self) {
        self.lock_budget().slot(Instant::now()).requests += 1;
    }

    /// Takes one retry from the budget, if the fast path is on and one is left.
    pub fn withdraw(&self) -> bool {
        self.enabled && self.lock_budget().withdraw(Instant::now())
    }

    fn lock_budget(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.budget.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_dead(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Instant>> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Requests and retries per second over the last [`BUDGET_WINDOW`], in a ring
/// indexed by the second since `origin`.
#[derive(Debug)]
struct Budget {
    origin: Instant,
    slots: [Slot; WINDOW_SECS],
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    second: u64,
    requests: u64,
    retries: u64,
}

impl Budget {
    fn new(origin: Instant) -> Self {
        Self {
            origin,
            slots: [Slot::default(); WINDOW_SECS],
        }
    }

    /// The slot of the second `now` falls in, emptied if it held an older one.
    fn slot(&mut self, now: Instant) -> &mut Slot {
        let second = now.saturating_duration_since(self.origin).as_secs();
        let slot = &mut self.slots[(second % WINDOW_SECS as u64) as usize];
        if slot.second != second {
            *slot = Slot {
                second,
                ..Slot::default()
            };
        }
        slot
    }

    fn withdraw(&mut self, now: Instant) -> bool {
        let current = self.slot(now).second;
        let window = self
            .slots
            .iter()
            .filter(|s| s.second + WINDOW_SECS as u64 > current);
        let (requests, retries) = window.fold((0, 0), |(q, r), s| (q + s.requests, r + s.retries));
        let allowed =
            f64::from(MIN_RETRIES_PER_SEC) * WINDOW_SECS as f64 + BUDGET_RATIO * requests as f64;
        if (retries as f64) + 1.0 <= allowed {
            self.slot(now).retries += 1;
            true
        } else {
            false
        }
    }
}

/// Methods that may be sent twice with the effect of once (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retries granted when `n` are asked for at once.
    fn granted(f: &Failover, n: usize) -> usize {
        (0..n).filter(|_| f.withdraw()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn every_request_in_flight_on_a_dying_endpoint_may_be_retried() {
        let f = Failover::new(true);
        // A second of 200 rps, then the endpoint dies under 30 requests at once.
        for _ in 0..200 {
            f.deposit();
            tokio::time::advance(Duration::from_millis(5)).await;
        }
        assert_eq!(granted(&f, 30), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_is_a_fifth_of_the_window_plus_ten_per_second() {
        let f = Failover::new(true);
        let floor = MIN_RETRIES_PER_SEC as usize * WINDOW_SECS;
        assert_eq!(granted(&f, 1000), floor, "no traffic: the floor only");
        tokio::time::advance(BUDGET_WINDOW / 2).await;
        assert_eq!(granted(&f, 10), 0, "the floor is spent for a whole window");
        for _ in 0..1000 {
            f.deposit();
        }
        assert_eq!(granted(&f, 1000), 200, "a fifth of the requests");
        tokio::time::advance(BUDGET_WINDOW / 2).await;
        assert_eq!(
            granted(&f, 1000),
            floor,
            "the first retries left the window, the requests and their retries not yet"
        );
        tokio::time::advance(BUDGET_WINDOW).await;
        assert_eq!(granted(&f, 1000), floor, "everything left the window");
    }

    #[test]
    fn dead_marks_clear_on_success_and_are_off_without_the_fast_path() {
        let addr: SocketAddr = "198.18.0.1:80".parse().unwrap_or_else(|_| unreachable!());
        let f = Failover::new(true);
        let before = Instant::now();
        f.failed(addr);
        assert!(f.is_dead(addr));
        f.succeeded(addr, before);
        assert!(f.is_dead(addr), "a success that started before the failure");
        assert!(f.any_dead());
        f.succeeded(addr, Instant::now());
        assert!(!f.is_dead(addr));
        assert!(!f.any_dead());
        let off = Failover::new(false);
        off.failed(addr);
        assert!(!off.is_dead(addr));
        for _ in 0..100 {
            off.deposit();
        }
        assert!(!off.withdraw());
    }

    #[test]
    fn only_idempotent_methods_retry() {
        assert!(is_idempotent(&Method::GET) && is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PATCH));
    }
}
