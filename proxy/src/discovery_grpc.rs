//! [`Discovery`] from the control plane's discovery service.
//!
//! Each target gets one Watch stream, shared by every caller that resolves it and
//! closed [`LINGER`] after the last receiver is dropped. A resolution therefore
//! outlives the request that started it: a caller that gives up before the first
//! answer (its client timed out) and tries again waits for the same stream rather
//! than starting over. When the control plane goes away the
//! proxy keeps routing to the endpoints it last knew and reconnects with jittered
//! exponential backoff; the first update on the new stream is a snapshot that
//! replaces the old state, so a restart can neither duplicate nor resurrect
//! endpoints.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use api::discovery::discovery_client::DiscoveryClient;
use api::discovery::{self as proto, WatchRequest, update::Kind};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::Error;
use crate::discovery::{Discovery, Endpoint, EndpointSet, ProtocolHint, RouteBackend, Routes};

/// How long the first answer for a target may take before resolution fails.
const FIRST_ANSWER: Duration = Duration::from_secs(5);
/// How long a target's stream stays open with nobody listening.
const LINGER: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A [`Discovery`] backed by the discovery service's Watch streams.
#[derive(Debug)]
pub struct GrpcDiscovery {
    client: DiscoveryClient<Channel>,
    zone: String,
    linger: Duration,
    targets: Targets,
}

/// The followed targets, shared with their streams (which remove themselves).
type Targets = Arc<Mutex<HashMap<String, Followed>>>;

/// What one target's stream publishes.
#[derive(Clone, Debug)]
struct Senders {
    endpoints: watch::Sender<EndpointSet>,
    routes: watch::Sender<Routes>,
}

/// Whether the service exists, from the stream's latest update; `None` before
/// the first one; the reason if the stream failed before it.
type Known = Option<Result<bool, String>>;

/// A target with its stream running (or lingering).
#[derive(Debug)]
struct Followed {
    senders: Senders,
    /// Its sender is the stream's task, so it closes if the task ends without
    /// removing the target (a panic).
    known: watch::Receiver<Known>,
}

impl GrpcDiscovery {
    /// Discovery through `channel` for a proxy in `zone` (empty if unknown). The
    /// channel may be lazy: nothing connects until the first resolution.
    pub fn new(channel: Channel, zone: impl Into<String>) -> Self {
        Self {
            client: DiscoveryClient::new(channel),
            zone: zone.into(),
            linger: LINGER,
            targets: Targets::default(),
        }
    }

    /// A receiver of `target`'s endpoints and of whether it exists, from its
    /// running stream or a new one.
    fn subscribe(&self, target: &str) -> (watch::Receiver<EndpointSet>, watch::Receiver<Known>) {
        let mut targets = self.targets.lock();
        let followed = match targets.entry(target.to_string()) {
            Entry::Occupied(e) if e.get().known.has_changed().is_ok() => e.into_mut(),
            Entry::Occupied(mut e) => {
                e.insert(self.follow(target));
                e.into_mut()
            }
            Entry::Vacant(e) => e.insert(self.follow(target)),
        };
        (
            followed.senders.endpoints.subscribe(),
            followed.known.clone(),
        )
    }

    /// Starts `target`'s stream.
    fn follow(&self, target: &str) -> Followed {
        let senders = Senders {
            endpoints: watch::Sender::new(EndpointSet::default()),
            routes: watch::Sender::new(Routes::default()),
        };
        let (known_tx, known) = watch::channel(None);
        let stream = Stream {
            client: self.client.clone(),
            request: WatchRequest {
                target: target.to_string(),
                zone: self.zone.clone(),
            },
            tx: senders.clone(),
            known: known_tx,
            linger: self.linger,
            targets: self.targets.clone(),
        };
        tokio::spawn(stream.run());
        Followed { senders, known }
    }
}

impl Discovery for GrpcDiscovery {
    fn resolve<'a>(
        &'a self,
        target: &'a str,
    ) -> BoxFuture<'a, Result<Option<watch::Receiver<EndpointSet>>, Error>> {
        Box::pin(async move {
            let (endpoints, mut known) = self.subscribe(target);
            let ended = || "stream ended before its first update".to_string();
            let answer =
                match tokio::time::timeout(FIRST_ANSWER, known.wait_for(Option::is_some)).await {
                    Ok(Ok(known)) => known.clone().unwrap_or_else(|| Err(ended())),
                    Ok(Err(_closed)) => Err(ended()),
                    Err(_elapsed) => Err(format!("no answer within {FIRST_ANSWER:?}")),
                };
            match answer {
                Ok(true) => Ok(Some(endpoints)),
                Ok(false) => Ok(None),
                Err(reason) => Err(Error::DiscoveryUnavailable {
                    target: target.to_string(),
                    reason,
                }),
            }
        })
    }

    fn routes(&self, target: &str) -> Option<watch::Receiver<Routes>> {
        let targets = self.targets.lock();
        targets
            .get(target)
            .map(|followed| followed.senders.routes.subscribe())
    }
}

/// One target's stream, reconnected until nobody has listened for `linger`.
struct Stream {
    client: DiscoveryClient<Channel>,
    request: WatchRequest,
    tx: Senders,
    known: watch::Sender<Known>,
    linger: Duration,
    targets: Targets,
}

impl Stream {
    async fn run(self) {
        let unwatched = self.unwatched();
        tokio::pin!(unwatched);
        let mut backoff = BACKOFF_MIN;
        loop {
            let ended = tokio::select! {
                ended = self.session() => ended,
                () = &mut unwatched => return,
            };
            match ended {
                // The server ended the stream (shutdown): reconnect promptly.
                Ok(()) => backoff = BACKOFF_MIN,
                Err(status) => {
                    tracing::warn!(target = %self.request.target, code = ?status.code(), message = status.message(), "discovery stream failed; keeping last known endpoints");
                    if self.known.borrow().is_none() {
                        // Callers waiting now get the reason; later ones start afresh.
                        self.targets.lock().remove(&self.request.target);
                        self.known
                            .send_replace(Some(Err(status.message().to_string())));
                        return;
                    }
                }
            }
            let delay = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = &mut unwatched => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Resolves once nobody has received the endpoints for the linger time, with
    /// the target removed. The check and the removal hold the targets' lock, so
    /// no caller can subscribe to a stream that is ending.
    async fn unwatched(&self) {
        loop {
            self.tx.endpoints.closed().await;
            tokio::time::sleep(self.linger).await;
            let mut targets = self.targets.lock();
            if self.tx.endpoints.is_closed() {
                targets.remove(&self.request.target);
                return;
            }
        }
    }

    /// Follows one stream until the server ends it or it fails.
    async fn session(&self) -> Result<(), tonic::Status> {
        let mut client = self.client.clone();
        let mut updates = client.watch(self.request.clone()).await?.into_inner();
        let mut state = BTreeMap::new();
        loop {
            let Some(kind) = updates.message().await?.and_then(|u| u.kind) else {
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
            self.tx
                .endpoints
                .send_replace(Arc::new(state.values().cloned().collect()));
            self.known.send_if_modified(|known| {
                let changed = *known != Some(Ok(exists));
                *known = Some(Ok(exists));
                changed
            });
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

/// The client against a real gRPC server on a socket: a discovery service whose
/// first answer waits for a gate, counting its Watch streams.
#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on bad fixtures
mod stream_tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use api::discovery::discovery_server::{Discovery as Serve, DiscoveryServer};
    use api::discovery::{Snapshot, Update};
    use futures::Stream as FutStream;
    use tokio::sync::mpsc;
    use tonic::{Request, Response, Status};

    use super::*;

    const TARGET: &str = "books.shop.svc.cluster.local:8080";

    struct Gated {
        watches: Arc<AtomicUsize>,
        /// Open: streams answer.
        gate: watch::Receiver<bool>,
        /// Told when a stream's client went away.
        gone: mpsc::UnboundedSender<()>,
    }

    #[tonic::async_trait]
    impl Serve for Gated {
        type WatchStream = Pin<Box<dyn FutStream<Item = Result<Update, Status>> + Send>>;

        async fn watch(
            &self,
            _: Request<WatchRequest>,
        ) -> Result<Response<Self::WatchStream>, Status> {
            self.watches.fetch_add(1, Ordering::SeqCst);
            let (tx, rx) = mpsc::channel(1);
            let (mut gate, gone) = (self.gate.clone(), self.gone.clone());
            tokio::spawn(async move {
                let _ = gate.wait_for(|open| *open).await;
                let snapshot = Snapshot {
                    endpoints: vec![proto::Endpoint {
                        address: "10.0.0.1:8080".into(),
                        ..Default::default()
                    }],
                    routes: None,
                };
                let update = Update {
                    kind: Some(Kind::Snapshot(snapshot)),
                };
                let _ = tx.send(Ok(update)).await;
                tx.closed().await;
                let _ = gone.send(());
            });
            let updates = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|update| (update, rx))
            });
            Ok(Response::new(Box::pin(updates)))
        }
    }

    struct Server {
        watches: Arc<AtomicUsize>,
        gate: watch::Sender<bool>,
        gone: mpsc::UnboundedReceiver<()>,
        discovery: GrpcDiscovery,
    }

    async fn server(linger: Duration) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (gate, gate_rx) = watch::channel(false);
        let (gone_tx, gone) = mpsc::unbounded_channel();
        let watches = Arc::new(AtomicUsize::new(0));
        let service = DiscoveryServer::new(Gated {
            watches: watches.clone(),
            gate: gate_rx,
            gone: gone_tx,
        });
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let mut discovery = GrpcDiscovery::new(channel, "");
        discovery.linger = linger;
        Server {
            watches,
            gate,
            gone,
            discovery,
        }
    }

    #[tokio::test]
    async fn a_caller_that_gave_up_before_the_first_answer_leaves_it_to_the_next() {
        let s = server(LINGER).await;
        // The first caller gives up (its client timed out) while the answer is
        // on its way; the second one must find the same stream, not start over.
        let gave_up =
            tokio::time::timeout(Duration::from_millis(200), s.discovery.resolve(TARGET)).await;
        assert!(gave_up.is_err(), "no answer while the gate is shut");
        s.gate.send_replace(true);
        let rx = s.discovery.resolve(TARGET).await.unwrap().unwrap();
        assert_eq!(rx.borrow().len(), 1);
        assert_eq!(s.watches.load(Ordering::SeqCst), 1, "one Watch stream");
    }

    #[tokio::test]
    async fn a_stream_nobody_listens_to_closes_after_the_linger_time() {
        let mut s = server(Duration::from_millis(300)).await;
        s.gate.send_replace(true);
        let rx = s.discovery.resolve(TARGET).await.unwrap().unwrap();
        drop(rx);
        let started = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(10), s.gone.recv())
            .await
            .expect("the stream closes")
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "not before the linger time"
        );
        // A later resolution opens a new stream.
        let rx = s.discovery.resolve(TARGET).await.unwrap().unwrap();
        assert_eq!(rx.borrow().len(), 1);
        assert_eq!(s.watches.load(Ordering::SeqCst), 2);
    }
}
