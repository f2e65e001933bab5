//! The proxy's own failover, ahead of the control plane: endpoints that just
//! failed (connection refused, reset, timed out) are marked dead for a short
//! while, a split backend whose endpoints are all dead or gone is skipped for the
//! next tier of its chain (see [`crate::split`]), and an idempotent request that
//! failed on a dead endpoint is sent once more, elsewhere, if the retry budget
//! allows (a refused connection, where nothing was sent, may be tried up to three
//! times, so two dead tiers at once are still skipped). The budget earns a fifth of a retry per request (at most
//! [`BUDGET_BURST`] saved up), so retries add at most 20% load plus that burst.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use http::Method;
use tokio::time::Instant;

/// Retries earned per request.
pub const BUDGET_RATIO: f64 = 0.2;
/// Retries that may be saved up for a burst of failures.
pub const BUDGET_BURST: f64 = 10.0;
/// How long a failed endpoint counts as dead unless it succeeds again first.
pub const DEAD_FOR: Duration = Duration::from_secs(2);

/// Per-proxy failover state shared by every target.
#[derive(Debug)]
pub struct Failover {
    enabled: bool,
    dead: Mutex<HashMap<SocketAddr, Instant>>,
    budget: Mutex<f64>,
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
            budget: Mutex::new(0.0),
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
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        *budget = (*budget + BUDGET_RATIO).min(BUDGET_BURST);
    }

    /// Takes one retry from the budget, if the fast path is on and one is left.
    pub fn withdraw(&self) -> bool {
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        if self.enabled && *budget >= 1.0 {
            *budget -= 1.0;
            true
        } else {
            false
        }
    }

    fn lock_dead(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Instant>> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner())
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

    #[test]
    fn the_budget_allows_a_fifth_of_the_requests_plus_a_burst() {
        let f = Failover::new(true);
        assert!(!f.withdraw(), "nothing saved before any request");
        for _ in 0..1000 {
            f.deposit();
        }
        let burst = (0..100).filter(|_| f.withdraw()).count();
        assert_eq!(burst, BUDGET_BURST as usize);
        let mut retries = 0;
        for _ in 0..1000 {
            f.deposit();
            retries += usize::from(f.withdraw());
        }
        assert!(
            (199..=200).contains(&retries),
            "{retries} retries for 1000 requests"
        );
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
