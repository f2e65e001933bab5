//! Routing: from a target authority to a [`Target`], the balancer over that
//! target's endpoints (and, when discovery has routes for it, the [`Split`] over
//! its backends). Balancers are cached per target so upstream connection pools
//! and load estimates survive across client connections.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::watch;

use crate::Error;
use crate::balance::metrics::TierMetrics;
use crate::balance::{BalanceConfig, Balancer};
use crate::discovery::{Discovery, Endpoint};
use crate::forward::connect::Connector;
use crate::forward::http::EndpointService;
use crate::metrics::{Listener, Metrics, TargetMetrics};
use crate::retry::Failover;
use crate::split::{BuildTarget, Split};

/// How many targets keep a cached balancer; beyond this, balancers are per use.
const MAX_CACHED: usize = 10_000;

/// A resolved target: its name and the balancer over its endpoints.
#[derive(Debug)]
pub struct Target {
    /// The authority the client asked for (a metric label and log field).
    pub name: String,
    /// The endpoints.
    pub balancer: Balancer<EndpointService>,
    /// The traffic split, when discovery has routes for the target.
    pub split: Option<Split>,
    /// The proxy's failover state (dead endpoints, retry budget).
    pub failover: Arc<Failover>,
    /// Request metrics of the first listener that used this target.
    metrics: OnceLock<TargetMetrics>,
}

impl Target {
    /// The request metrics of this target on `listener`, resolved on first use.
    pub fn metrics(&self, metrics: &Metrics, listener: Listener) -> Cow<'_, TargetMetrics> {
        let cached = self
            .metrics
            .get_or_init(|| metrics.target(listener, &self.name));
        if cached.listener() == listener {
            Cow::Borrowed(cached)
        } else {
            Cow::Owned(metrics.target(listener, &self.name))
        }
    }

    /// Where one request or connection goes: a backend of the split, or this
    /// target itself when it has no routes.
    pub async fn route(self: &Arc<Self>) -> Result<Arc<Target>, Error> {
        match &self.split {
            Some(split) => Ok(split.choose().await?.unwrap_or_else(|| self.clone())),
            None => Ok(self.clone()),
        }
    }
}

/// Resolves targets through discovery and builds their balancers.
pub struct Router {
    discovery: Arc<dyn Discovery>,
    connector: Connector,
    balance: BalanceConfig,
    hop: u8,
    failover: Arc<Failover>,
    cache: Mutex<HashMap<String, Arc<Target>>>,
    tier_metrics: Option<Arc<TierMetrics>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("hop", &self.hop).finish()
    }
}

impl Router {
    /// A router whose gateway connections carry hop count `hop`.
    pub fn new(
        discovery: Arc<dyn Discovery>,
        connector: Connector,
        balance: BalanceConfig,
        hop: u8,
    ) -> Self {
        Self {
            discovery,
            connector,
            balance,
            hop,
            failover: Arc::default(),
            cache: Mutex::new(HashMap::new()),
            tier_metrics: None,
        }
    }

    /// Counts the picks of resolved targets' balancers in `metrics`.
    pub fn with_tier_metrics(mut self, metrics: Arc<TierMetrics>) -> Self {
        self.tier_metrics = Some(metrics);
        self
    }

    /// Sets the failover fast path (on by default).
    pub fn with_failover(mut self, failover: Failover) -> Self {
        self.failover = Arc::new(failover);
        self
    }

    /// The target for `name`, or `None` if discovery does not know it.
    pub async fn resolve(&self, name: &str) -> Result<Option<Arc<Target>>, Error> {
        if let Some(t) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(Some(t.clone()));
        }
        let Some(rx) = self.discovery.resolve(name).await? else {
            return Ok(None);
        };
        let mut target = self.target(name, rx);
        // Only discovered targets are counted, not fixed ones; the Arc is new.
        if let (Some(m), Some(t)) = (&self.tier_metrics, Arc::get_mut(&mut target)) {
            t.balancer.observe(m.clone(), name);
        }
        if let (Some(routes), Some(t)) = (self.discovery.routes(name), Arc::get_mut(&mut target)) {
            t.split = Some(Split::new(
                routes,
                self.discovery.clone(),
                self.builder(self.tier_metrics.clone()),
                self.failover.clone(),
            ));
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() < MAX_CACHED {
            return Ok(Some(
                cache.entry(name.to_string()).or_insert(target).clone(),
            ));
        }
        Ok(Some(target))
    }

    /// A target with a fixed endpoint list (inbound's app, outbound passthrough).
    pub fn fixed(&self, name: &str, endpoints: Vec<Endpoint>) -> Arc<Target> {
        let (_, rx) = watch::channel(Arc::new(endpoints));
        self.target(name, rx)
    }

    fn target(
        &self,
        name: &str,
        rx: watch::Receiver<crate::discovery::EndpointSet>,
    ) -> Arc<Target> {
        (self.builder(None))(name, rx)
    }

    /// Builds targets without routes (a split's backends are plain targets),
    /// counting their balancers' picks in `metrics` if given.
    fn builder(&self, metrics: Option<Arc<TierMetrics>>) -> BuildTarget {
        let (connector, balance, hop) = (self.connector.clone(), self.balance, self.hop);
        let failover = self.failover.clone();
        Arc::new(move |name, rx| {
            let connector = connector.clone();
            let mut balancer = Balancer::new(rx, balance, move |ep| {
                EndpointService::new(ep, &connector, hop)
            });
            if let Some(m) = &metrics {
                balancer.observe(m.clone(), name);
            }
            Arc::new(Target {
                name: name.to_string(),
                balancer,
                split: None,
                failover: failover.clone(),
                metrics: OnceLock::new(),
            })
        })
    }
}
