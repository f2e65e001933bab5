//! [`Discovery`] from the control plane's discovery service.
//!
//! Each target gets one Watch stream, shared by every caller that resolves it and
//! closed when the last receiver is dropped. When the control plane goes away the
//! proxy keeps routing to the endpoints it last knew and reconnects with jittered
//! exponential backoff; the first update on the new stream is a snapshot that
//! replaces the old state, so a restart can neither duplicate nor resurrect
//! endpoints.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use api::discovery::discovery_client::DiscoveryClient;
use api::discovery::{self as proto, WatchRequest, update::Kind};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{oneshot, watch};
use tonic::transport::Channel;

use crate::Error;
use crate::discovery::{Discovery, Endpoint, EndpointSet, ProtocolHint, RouteBackend, Routes};

/// How long the first answer for a target may take before resolution fails.
const FIRST_ANSWER: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A [`Discovery`] backed by the discovery service's Watch streams.
#[derive(Debug)]
pub struct GrpcDiscovery {
    client: DiscoveryClient<Channel>,
    zone: String,
    targets: Mutex<HashMap<String, Senders>>,
}

/// What one target's stream publishes.
#[derive(Clone, Debug)]
struct Senders {
    endpoints: watch::Sender<EndpointSet>,
    routes: watch::Sender<Routes>,
}

impl GrpcDiscovery {
    /// Discovery through `channel` for a proxy in `zone` (empty if unknown). The
    /// channel may be lazy: nothing connects until the first resolution.
    pub fn new(channel: Channel, zone: impl Into<String>) -> Self {
        Self {
            client: DiscoveryClient::new(channel),
            zone: zone.into(),
            targets: Mutex::default(),
        }
    }

    /// Starts following `target`, answering once the first update arrives:
    /// `Some` if the service exists, `None` if discovery does not know it.
    async fn follow(&self, target: &str) -> Result<Option<watch::Receiver<EndpointSet>>, Error> {
        let (tx, rx) = watch::channel(EndpointSet::default());
        let tx = Senders {
            endpoints: tx,
            routes: watch::Sender::new(Routes::default()),
        };
        let (first_tx, first_rx) = oneshot::channel();
        let stream = Stream {
            client: self.client.clone(),
            request: WatchRequest {
                target: target.to_string(),
                zone: self.zone.clone(),
            },
            tx: tx.clone(),
        };
        tokio::spawn(stream.run(first_tx));
        let unavailable = |why: String| Error::DiscoveryUnavailable {
            target: target.to_string(),
            reason: why,
        };
        match tokio::time::timeout(FIRST_ANSWER, first_rx).await {
            Ok(Ok(Ok(true))) => {
                self.targets.lock().insert(target.to_string(), tx);
                Ok(Some(rx))
            }
            Ok(Ok(Ok(false))) => Ok(None),
            Ok(Ok(Err(status))) => Err(unavailable(status.message().to_string())),
            Ok(Err(_)) => Err(unavailable("stream ended before its first update".into())),
            Err(_) => Err(unavailable(format!("no answer within {FIRST_ANSWER:?}"))),
        }
    }
}

impl Discovery for GrpcDiscovery {
    fn resolve<'a>(
        &'a self,
        target: &'a str,
    ) -> BoxFuture<'a, Result<Option<watch::Receiver<EndpointSet>>, Error>> {
        Box::pin(async move {
            {
                let mut targets = self.targets.lock();
                targets.retain(|_, tx| !tx.endpoints.is_closed());
                if let Some(tx) = targets.get(target) {
                    return Ok(Some(tx.endpoints.subscribe()));
                }
            }
            self.follow(target).await
        })
    }

    fn routes(&self, target: &str) -> Option<watch::Receiver<Routes>> {
        let targets = self.targets.lock();
        targets.get(target).map(|tx| tx.routes.subscribe())
    }
}

/// One target's stream, reconnected until every receiver is gone.
struct Stream {
    client: DiscoveryClient<Channel>,
    request: WatchRequest,
    tx: Senders,
}

/// The first answer: whether the service exists, or why the stream failed.
type FirstAnswer = oneshot::Sender<Result<bool, tonic::Status>>;

impl Stream {
    async fn run(mut self, first: FirstAnswer) {
        let mut first = Some(first);
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.session(&mut first).await {
                // The server ended the stream (shutdown): reconnect promptly.
                Ok(()) => backoff = BACKOFF_MIN,
                Err(status) => {
                    tracing::warn!(target = %self.request.target, code = ?status.code(), message = status.message(), "discovery stream failed; keeping last known endpoints");
                    if let Some(first) = first.take() {
                        let _ = first.send(Err(status));
                        return;
                    }
                }
            }
            let delay = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.tx.endpoints.closed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Follows one stream until it ends, fails, or nobody listens any more.
    async fn session(&mut self, first: &mut Option<FirstAnswer>) -> Result<(), tonic::Status> {
        let mut updates = self.client.watch(self.request.clone()).await?.into_inner();
        let mut state = BTreeMap::new();
        loop {
            let update = tokio::select! {
                update = updates.message() => update?,
                () = self.tx.endpoints.closed() => return Ok(()),
            };
            let Some(kind) = update.and_then(|u| u.kind) else {
                return Ok(());
            };
            if let Some(routes) = routes_of(&kind) {
                self.tx.routes.send_if_modified(|cur| {
                    let changed = **cur != routes;
                    *cur = Arc::new(routes);
                    changed
                });
                if matches!(kind, Kind::Routes(_)) {
                    continue;
                }
            }
            let exists = apply(&mut state, kind, &self.request.target);
            if let Some(first) = first.take() {
                let _ = first.send(Ok(exists));
            }
            self.tx
                .endpoints
                .send_replace(Arc::new(state.values().cloned().collect()));
        }
    }
}

/// Applies one update to the endpoints held for a target; false when the service
/// does not exist.
fn apply(state: &mut BTreeMap<String, Endpoint>, kind: Kind, target: &str) -> bool {
    match kind {
        Kind::Snapshot(snapshot) => {
            state.clear();
            insert(state, snapshot.endpoints, target);
        }
        Kind::Add(set) => insert(state, set.endpoints, target),
        Kind::Remove(set) => {
            for address in set.addresses {
                state.remove(&address);
            }
        }
        Kind::NoSuchService(_) => {
            state.clear();
            return false;
        }
        // Routes are followed by `routes_of`; endpoints are unaffected.
        Kind::Routes(_) => {}
    }
    true
}

/// The routes an update sets: a snapshot's (none means none) or a `Routes`
/// update's; `None` for updates that leave routes alone.
fn routes_of(kind: &Kind) -> Option<Vec<RouteBackend>> {
    let routes = match kind {
        Kind::Snapshot(snapshot) => snapshot.routes.as_ref(),
        Kind::Routes(routes) => Some(routes),
        Kind::NoSuchService(_) => None,
        Kind::Add(_) | Kind::Remove(_) => return None,
    };
    Some(
        routes
            .into_iter()
            .flat_map(|r| &r.backends)
            .map(|b| RouteBackend {
                authority: b.authority.clone(),
                weight: b.weight,
                priority: b.priority,
            })
            .collect(),
    )
}

fn insert(state: &mut BTreeMap<String, Endpoint>, endpoints: Vec<proto::Endpoint>, target: &str) {
    for ep in endpoints {
        match endpoint(&ep) {
            Some(converted) => {
                state.insert(ep.address, converted);
            }
            None => {
                tracing::warn!(%target, address = %ep.address, "skipping an endpoint with an invalid address")
            }
        }
    }
}

/// Converts a protocol endpoint, or `None` if its address does not parse.
fn endpoint(ep: &proto::Endpoint) -> Option<Endpoint> {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let protocol = match proto::ProtocolHint::try_from(ep.protocol_hint) {
        Ok(proto::ProtocolHint::Http1) => Some(ProtocolHint::Http1),
        Ok(proto::ProtocolHint::Http2) => Some(ProtocolHint::Http2),
        Ok(proto::ProtocolHint::Opaque) => Some(ProtocolHint::Opaque),
        Ok(proto::ProtocolHint::Unknown) | Err(_) => None,
    };
    Some(Endpoint {
        addr: ep.address.parse().ok()?,
        identity: some(&ep.identity),
        remote_authority: some(&ep.remote_authority),
        zone: some(&ep.zone),
        cluster: some(&ep.cluster),
        weight: ep.weight.max(1),
        tier: ep.tier,
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::discovery::{AddressSet, EndpointSet as ProtoSet, NoSuchService, Snapshot};

    fn ep(addr: &str) -> proto::Endpoint {
        proto::Endpoint {
            address: addr.into(),
            identity: "spiffe://td/ns/a/sa/b".into(),
            tier: 2,
            ..Default::default()
        }
    }

    fn addrs(state: &BTreeMap<String, Endpoint>) -> Vec<String> {
        state.values().map(|e| e.addr.to_string()).collect()
    }

    #[test]
    fn snapshots_replace_and_deltas_apply() {
        let mut state = BTreeMap::new();
        let snap = |eps: Vec<proto::Endpoint>| {
            Kind::Snapshot(Snapshot {
                endpoints: eps,
                routes: None,
            })
        };
        assert!(apply(
            &mut state,
            snap(vec![ep("198.18.0.1:80"), ep("198.18.0.2:80")]),
            "t"
        ));
        assert!(apply(
            &mut state,
            Kind::Add(ProtoSet {
                endpoints: vec![ep("198.18.0.3:80")]
            }),
            "t"
        ));
        assert!(apply(
            &mut state,
            Kind::Remove(AddressSet {
                addresses: vec!["198.18.0.1:80".into()]
            }),
            "t"
        ));
        assert_eq!(addrs(&state), ["198.18.0.2:80", "198.18.0.3:80"]);

        // A reconnect's snapshot replaces everything: nothing duplicated or stale.
        assert!(apply(&mut state, snap(vec![ep("198.18.0.3:80")]), "t"));
        assert_eq!(addrs(&state), ["198.18.0.3:80"]);
        assert!(!apply(
            &mut state,
            Kind::NoSuchService(NoSuchService {}),
            "t"
        ));
        assert!(state.is_empty());
    }

    #[test]
    fn routes_come_from_snapshots_and_routes_updates_only() {
        let backend = proto::Backend {
            authority: "b.ns.svc.cluster.local:80".into(),
            weight: 80,
            priority: 1,
        };
        let routes = proto::Routes {
            backends: vec![backend],
        };
        let want = vec![RouteBackend {
            authority: "b.ns.svc.cluster.local:80".into(),
            weight: 80,
            priority: 1,
        }];
        assert_eq!(routes_of(&Kind::Routes(routes.clone())), Some(want.clone()));
        let snap = |routes| {
            Kind::Snapshot(Snapshot {
                endpoints: vec![],
                routes,
            })
        };
        assert_eq!(routes_of(&snap(Some(routes))), Some(want));
        assert_eq!(routes_of(&snap(None)), Some(vec![]));
        assert_eq!(
            routes_of(&Kind::NoSuchService(NoSuchService {})),
            Some(vec![])
        );
        assert_eq!(routes_of(&Kind::Add(ProtoSet { endpoints: vec![] })), None);
    }

    #[test]
    fn endpoints_convert_and_bad_addresses_are_skipped() {
        let mut state = BTreeMap::new();
        let mut gw = ep("198.19.0.5:4143");
        gw.remote_authority = "books.shop.svc.cluster.local:8080".into();
        gw.protocol_hint = proto::ProtocolHint::Http2 as i32;
        apply(
            &mut state,
            Kind::Add(ProtoSet {
                endpoints: vec![gw, ep("not an address")],
            }),
            "t",
        );
        assert_eq!(state.len(), 1);
        let e = &state["198.19.0.5:4143"];
        assert_eq!(
            e.remote_authority.as_deref(),
            Some("books.shop.svc.cluster.local:8080")
        );
        assert_eq!(e.identity.as_deref(), Some("spiffe://td/ns/a/sa/b"));
        assert_eq!(
            (e.tier, e.weight, e.protocol),
            (2, 1, Some(ProtocolHint::Http2))
        );
        assert_eq!(e.zone, None);
    }
}
