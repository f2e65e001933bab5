//! Service discovery as the proxy sees it: a [`Discovery`] resolves a target
//! authority (`name:port` or `ip:port`) to a `watch` of endpoint sets, so the
//! balancer follows additions and removals without polling. [`StaticDiscovery`]
//! reads the sets from a YAML or JSON file; the discovery service's gRPC client is
//! another implementation of the same trait.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::sync::watch;

use crate::Error;
use crate::detect::Protocol;

/// One place traffic for a target may go.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The SPIFFE ID the endpoint must present; `None` means plaintext.
    #[serde(default)]
    pub identity: Option<String>,
    /// Set when the endpoint is a remote gateway: the authority to name in the
    /// transport header (the service as the remote cluster knows it).
    #[serde(default)]
    pub remote_authority: Option<String>,
    /// The endpoint's zone, for cost tiers.
    #[serde(default)]
    pub zone: Option<String>,
    /// The endpoint's cluster, for cost tiers.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Relative weight; 0 is treated as 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Cost tier relative to this proxy: 0 same zone, 1 same cluster, 2 another
    /// cluster. Static files default to 0.
    #[serde(default)]
    pub tier: u32,
    /// The protocol the endpoint speaks, when known, so detection can be skipped.
    #[serde(default)]
    pub protocol: Option<ProtocolHint>,
}

fn default_weight() -> u32 {
    1
}

impl Endpoint {
    /// A plaintext endpoint at `addr` with default metadata.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            identity: None,
            remote_authority: None,
            zone: None,
            cluster: None,
            weight: 1,
            tier: 0,
            protocol: None,
        }
    }
}

/// A protocol hint as written in discovery data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolHint {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 or gRPC.
    Http2,
    /// Opaque TCP.
    Opaque,
}

impl From<ProtocolHint> for Protocol {
    fn from(h: ProtocolHint) -> Self {
        match h {
            ProtocolHint::Http1 => Protocol::Http1,
            ProtocolHint::Http2 => Protocol::Http2,
            ProtocolHint::Opaque => Protocol::Opaque,
        }
    }
}

/// The current endpoints of one target. Shared, so a watch update is cheap.
pub type EndpointSet = Arc<Vec<Endpoint>>;

/// One backend of a target's traffic split (a TrafficSplit route).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteBackend {
    /// The backend's authority, resolved like any target.
    pub authority: String,
    /// Its share of the traffic.
    pub weight: u32,
    /// Its tier in the failover chain: 0 for the primary, then 1, 2, ...
    #[serde(default)]
    pub priority: u32,
}

/// The current routes of one target; empty when traffic goes to its own endpoints.
pub type Routes = Arc<Vec<RouteBackend>>;

/// Resolves targets to live endpoint sets.
pub trait Discovery: Send + Sync + 'static {
    /// Resolves `target` (`host:port`). `Ok(None)` means discovery does not know
    /// the target, and the caller decides (the outbound proxy passes through to
    /// the original destination; the gateway refuses).
    fn resolve<'a>(
        &'a self,
        target: &'a str,
    ) -> BoxFuture<'a, Result<Option<watch::Receiver<EndpointSet>>, Error>>;

    /// The routes of a target already resolved, if this source knows routes.
    fn routes(&self, _target: &str) -> Option<watch::Receiver<Routes>> {
        None
    }
}

/// The file format: a list of targets with their endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticFile {
    services: Vec<StaticService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticService {
    target: String,
    endpoints: Vec<Endpoint>,
    #[serde(default)]
    routes: Vec<RouteBackend>,
}

/// Discovery from a fixed table, read from a file or built in code. Tests change
/// a target's endpoints with [`StaticDiscovery::set`] and every resolver sees it.
#[derive(Debug, Default)]
pub struct StaticDiscovery {
    targets: Mutex<HashMap<String, watch::Sender<EndpointSet>>>,
    routes: Mutex<HashMap<String, watch::Sender<Routes>>>,
}

impl StaticDiscovery {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a YAML (or JSON, a subset) file:
    /// `services: [{target: "name:port", endpoints: [{addr: "ip:port", ...}],
    /// routes: [{authority: "name:port", weight: 1, priority: 0}]}]`.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| Error::DiscoveryRead {
            path: name.clone(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|source| Error::DiscoveryParse { path: name, source })
    }

    /// Parses the file format from a string.
    pub fn from_yaml(text: &str) -> Result<Self, serde_yaml_ng::Error> {
        let file: StaticFile = serde_yaml_ng::from_str(text)?;
        let this = Self::new();
        for svc in file.services {
            this.set(&svc.target, svc.endpoints);
            if !svc.routes.is_empty() {
                this.set_routes(&svc.target, svc.routes);
            }
        }
        Ok(this)
    }

    /// Replaces the endpoints of `target`, notifying every watcher.
    pub fn set(&self, target: &str, endpoints: Vec<Endpoint>) {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        let set = Arc::new(endpoints);
        match targets.get(target) {
            Some(tx) => {
                tx.send_replace(set);
            }
            None => {
                targets.insert(target.to_string(), watch::Sender::new(set));
            }
        }
    }
}

impl StaticDiscovery {
    /// Replaces the routes of `target`, notifying every watcher.
    pub fn set_routes(&self, target: &str, routes: Vec<RouteBackend>) {
        let mut all = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let routes = Arc::new(routes);
        match all.get(target) {
            Some(tx) => {
                tx.send_replace(routes);
            }
            None => {
                all.insert(target.to_string(), watch::Sender::new(routes));
            }
        }
    }
}

impl Discovery for StaticDiscovery {
    fn routes(&self, target: &str) -> Option<watch::Receiver<Routes>> {
        let all = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        all.get(target).map(watch::Sender::subscribe)
    }

    fn resolve<'a>(
        &'a self,
        target: &'a str,
    ) -> BoxFuture<'a, Result<Option<watch::Receiver<EndpointSet>>, Error>> {
        let targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        let rx = targets.get(target).map(watch::Sender::subscribe);
        Box::pin(std::future::ready(Ok(rx)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_yaml_and_follows_updates() {
        let d = StaticDiscovery::from_yaml(
            r#"
services:
  - target: books.shop.svc.cluster.local:8080
    endpoints:
      - addr: 10.0.0.1:4143
        identity: spiffe://east/ns/mc/sa/gateway
        remote_authority: books.shop.svc.cluster.local:8080
        cluster: east
        protocol: http2
"#,
        )
        .unwrap();
        let mut rx = d
            .resolve("books.shop.svc.cluster.local:8080")
            .await
            .unwrap()
            .unwrap();
        let ep = rx.borrow()[0].clone();
        assert_eq!(ep.addr, "10.0.0.1:4143".parse().unwrap());
        assert_eq!(ep.weight, 1);
        assert_eq!(ep.protocol, Some(ProtocolHint::Http2));
        d.set("books.shop.svc.cluster.local:8080", vec![]);
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().is_empty());
        assert!(d.resolve("other:80").await.unwrap().is_none());
    }

    #[test]
    fn json_is_accepted() {
        let d = StaticDiscovery::from_yaml(
            r#"{"services":[{"target":"a:1","endpoints":[{"addr":"127.0.0.1:1"}]}]}"#,
        );
        assert!(d.is_ok());
    }

    #[test]
    fn malformed_file_names_the_problem() {
        let err = StaticDiscovery::from_yaml(
            "services:\n  - target: a:1\n    endpoints:\n      - addr: nope\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("invalid socket address"), "{err}");
        let err = StaticDiscovery::from_yaml("services: [{target: a, endpoints: [], extra: 1}]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
    }
}
