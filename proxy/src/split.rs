//! Traffic splits: a target whose discovery carries routes (a TrafficSplit) sends
//! each request to one of the routes' backends, chosen at random by weight among
//! the backends with a non-zero weight. Each backend is a target of its own,
//! resolved through discovery on first use, with its own balancer.
//!
//! With the fast path on (see [`crate::retry`]), backends whose endpoints are all
//! dead or gone are skipped: when every weighted backend is down, traffic goes to
//! the lowest tier (`priority`) that still has a live endpoint, shared by the
//! weights there (equally when they are all zero), before the controller moves
//! the weights itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::Rng;
use tokio::sync::watch;

use crate::Error;
use crate::discovery::{Discovery, EndpointSet, RouteBackend, Routes};
use crate::retry::Failover;
use crate::route::Target;

/// Builds the target of a backend from its name and endpoint watch.
pub type BuildTarget = Arc<dyn Fn(&str, watch::Receiver<EndpointSet>) -> Arc<Target> + Send + Sync>;

/// The routes of one target and the backends they name.
pub struct Split {
    routes: watch::Receiver<Routes>,
    discovery: Arc<dyn Discovery>,
    build: BuildTarget,
    failover: Arc<Failover>,
    backends: Mutex<HashMap<String, Arc<Target>>>,
}

impl std::fmt::Debug for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Split")
            .field("routes", &*self.routes.borrow())
            .finish()
    }
}

impl Split {
    /// A split following `routes`, resolving backends through `discovery`.
    pub fn new(
        routes: watch::Receiver<Routes>,
        discovery: Arc<dyn Discovery>,
        build: BuildTarget,
        failover: Arc<Failover>,
    ) -> Self {
        Self {
            routes,
            discovery,
            build,
            failover,
            backends: Mutex::default(),
        }
    }

    /// The backend target for one request or connection, or `None` when the
    /// routes are empty (traffic goes to the target's own endpoints).
    pub async fn choose(&self) -> Result<Option<Arc<Target>>, Error> {
        let routes = self.routes.borrow().clone();
        if routes.is_empty() {
            return Ok(None);
        }
        let mut backends = Vec::with_capacity(routes.len());
        for route in routes.iter() {
            let target = self.backend(&route.authority).await?;
            let live = target
                .balancer
                .endpoints()
                .iter()
                .any(|ep| !self.failover.is_dead(ep.addr));
            backends.push((route, target, live));
        }
        let candidates: Vec<(&RouteBackend, bool)> =
            backends.iter().map(|(r, _, live)| (*r, *live)).collect();
        let pick = choose(&candidates, self.failover.enabled(), &mut rand::rng());
        Ok(pick.map(|i| backends[i].1.clone()))
    }

    /// The target of backend `authority`, resolved on first use. A backend that
    /// discovery does not know gets no endpoints.
    async fn backend(&self, authority: &str) -> Result<Arc<Target>, Error> {
        if let Some(t) = self.lock().get(authority) {
            return Ok(t.clone());
        }
        let rx = match self.discovery.resolve(authority).await? {
            Some(rx) => rx,
            None => watch::channel(EndpointSet::default()).1,
        };
        let target = (self.build)(authority, rx);
        Ok(self
            .lock()
            .entry(authority.to_string())
            .or_insert(target)
            .clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Target>>> {
        self.backends.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Chooses a backend among `(route, live)` pairs: by weight among the weighted
/// ones, or, with the fast path on and every weighted one down, among the live
/// backends of the lowest priority. `None` when nothing can take the request.
pub fn choose(
    backends: &[(&RouteBackend, bool)],
    fast_path: bool,
    rng: &mut impl Rng,
) -> Option<usize> {
    let weighted = |i: &usize| backends[*i].0.weight > 0;
    let all: Vec<usize> = (0..backends.len()).collect();
    let mut pool: Vec<usize> = all.iter().copied().filter(weighted).collect();
    if fast_path {
        pool.retain(|i| backends[*i].1);
        if pool.is_empty() {
            let lowest = all
                .iter()
                .filter(|i| backends[**i].1)
                .map(|i| backends[*i].0.priority)
                .min()?;
            pool = all
                .into_iter()
                .filter(|i| backends[*i].1 && backends[*i].0.priority == lowest)
                .collect();
        }
    }
    let weight = |i: usize| u64::from(backends[i].0.weight);
    let total: u64 = pool.iter().map(|i| weight(*i)).sum();
    if total == 0 {
        return (!pool.is_empty()).then(|| pool[rng.random_range(0..pool.len())]);
    }
    let mut roll = rng.random_range(0..total);
    pool.into_iter().find(|i| {
        let w = weight(*i);
        if roll < w {
            true
        } else {
            roll -= w;
            false
        }
    })
}
