//! Traffic splits and the failover fast path, through a real outbound listener
//! on loopback: requests split by the routes' weights; when every endpoint of
//! the weighted backend dies (or is removed), the proxy sends traffic to the next
//! tier of the chain by itself and retries idempotent requests that failed there,
//! so clients see no error; with the fast path off they do. A root discovery
//! does not know at all answers 503 rather than closing the connection.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::accept::AcceptConfig;
use proxy::balance::BalanceConfig;
use proxy::detect::DetectConfig;
use proxy::discovery::{Endpoint, RouteBackend, StaticDiscovery};
use proxy::forward::connect::Connector;
use proxy::metrics::Metrics;
use proxy::outbound::{Outbound, OutboundConfig, TargetMode};
use proxy::retry::Failover;
use proxy::route::Router;
use proxy::split::choose;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

const ROOT: &str = "web.shop.svc.cluster.local:80";

/// An HTTP/1 app answering its name (a holding one leaves requests for `/hold`
/// unanswered); `kill` closes its listener and connections.
struct App {
    addr: SocketAddr,
    tasks: JoinSet<()>,
    /// How many `/hold` requests it has received.
    held: watch::Receiver<usize>,
}

impl App {
    async fn start(name: &'static str) -> Self {
        Self::spawn(name, false).await
    }

    async fn holding(name: &'static str) -> Self {
        Self::spawn(name, true).await
    }

    async fn spawn(name: &'static str, hold: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (held_tx, held) = watch::channel(0);
        let held_tx = Arc::new(held_tx);
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let held_tx = held_tx.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                        let held_tx = held_tx.clone();
                        async move {
                            if hold && req.uri().path() == "/hold" {
                                held_tx.send_modify(|n| *n += 1);
                                std::future::pending::<()>().await;
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(name.as_bytes()),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Self { addr, tasks, held }
    }

    /// Kills the app: the listener closes (new connections are refused) and its
    /// connections end, as when the process dies.
    fn kill(&mut self) {
        self.tasks.abort_all();
    }
}

fn backend(name: &str, weight: u32, priority: u32) -> RouteBackend {
    RouteBackend {
        authority: format!("{name}.shop.svc.cluster.local:80"),
        weight,
        priority,
    }
}

/// A discovery table with `apps` as backends named after them, and `routes` on
/// the root.
fn discovery(apps: &[(&str, &App)], routes: Vec<RouteBackend>) -> Arc<StaticDiscovery> {
    let d = StaticDiscovery::new();
    d.set(ROOT, vec![]);
    d.set_routes(ROOT, routes);
    for (name, app) in apps {
        d.set(
            &format!("{name}.shop.svc.cluster.local:80"),
            vec![Endpoint::plain(app.addr)],
        );
    }
    Arc::new(d)
}

/// A primary (weight 100, tier 0, holding) and a backup (weight 0, tier 1).
async fn primary_and_backup() -> (App, App, Arc<StaticDiscovery>) {
    let (primary, backup) = (
        App::holding("app-primary").await,
        App::start("app-backup").await,
    );
    let d = discovery(
        &[("primary", &primary), ("backup", &backup)],
        vec![backend("primary", 100, 0), backend("backup", 0, 1)],
    );
    (primary, backup, d)
}

async fn outbound(d: Arc<StaticDiscovery>, fast_path: bool) -> SocketAddr {
    let router = Router::new(
        d,
        Connector::new(Duration::from_secs(2), None),
        BalanceConfig::default(),
        1,
    )
    .with_failover(Failover::new(fast_path));
    let config = OutboundConfig {
        target: TargetMode::Fixed(ROOT.into()),
        detect: DetectConfig {
            timeout: Duration::from_millis(100),
            ..DetectConfig::default()
        },
        accept: AcceptConfig {
            max_connections: 1000,
            drain_deadline: Duration::from_secs(1),
        },
        idle_timeout: Duration::from_secs(60),
        buffer_size: 16 * 1024,
    };
    let metrics = Arc::new(Metrics::register(&mut Default::default()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Outbound::new(config, Arc::new(router), metrics).serve(listener, std::future::pending()),
    );
    addr
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GETs `path` through `proxy`: the answering app's name, or `"status NNN"` or
/// `"error ..."` for a failure.
async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    proxy: SocketAddr,
    path: &str,
) -> String {
    let uri: http::Uri = format!("http://{proxy}{path}").parse().unwrap();
    match client.get(uri).await {
        Ok(rsp) if rsp.status() == 200 => {
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(body.to_vec()).unwrap()
        }
        Ok(rsp) => format!("status {}", rsp.status().as_u16()),
        Err(e) => format!("error {e}"),
    }
}

/// Sends `n` GETs, `concurrency` at a time; returns the answers by app name
/// (`"status NNN"` for a failure).
async fn load(proxy: SocketAddr, n: usize, concurrency: usize) -> HashMap<String, usize> {
    let client = client();
    let mut counts = HashMap::new();
    let mut set = JoinSet::new();
    for i in 0..n {
        let client = client.clone();
        set.spawn(async move { get(&client, proxy, "/").await });
        if i + 1 >= concurrency
            && let Some(done) = set.join_next().await
        {
            *counts.entry(done.unwrap()).or_default() += 1;
        }
    }
    while let Some(done) = set.join_next().await {
        *counts.entry(done.unwrap()).or_default() += 1;
    }
    counts
}

fn failures(counts: &HashMap<String, usize>) -> usize {
    counts
        .iter()
        .filter(|(k, _)| !k.starts_with("app-"))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn an_unknown_root_answers_503() {
    let proxy = outbound(Arc::new(StaticDiscovery::new()), true).await;
    let counts = load(proxy, 20, 4).await;
    assert_eq!(counts.get("status 503"), Some(&20), "{counts:?}");
}

#[tokio::test]
async fn requests_split_by_weight() {
    let (a, b) = (App::start("app-a").await, App::start("app-b").await);
    let d = discovery(
        &[("a", &a), ("b", &b)],
        vec![backend("a", 80, 0), backend("b", 20, 0)],
    );
    let counts = load(outbound(d, true).await, 1000, 8).await;
    assert_eq!(failures(&counts), 0, "{counts:?}");
    let to_b = counts["app-b"];
    assert!(
        (130..=270).contains(&to_b),
        "b got {to_b} of 1000: {counts:?}"
    );
}

#[tokio::test]
async fn a_dead_primary_fails_over_to_the_backup_with_no_failed_request() {
    let (mut primary, _backup, d) = primary_and_backup().await;
    let proxy = outbound(d, true).await;
    let before = load(proxy, 100, 4).await;
    assert_eq!(before.get("app-primary"), Some(&100), "{before:?}");
    primary.kill();
    let after = load(proxy, 300, 4).await;
    assert_eq!(failures(&after), 0, "{after:?}");
    assert_eq!(after.get("app-backup"), Some(&300), "{after:?}");
}

#[tokio::test]
async fn every_request_in_flight_when_the_primary_dies_is_retried() {
    let (mut primary, _backup, d) = primary_and_backup().await;
    let proxy = outbound(d, true).await;
    assert_eq!(load(proxy, 100, 4).await.get("app-primary"), Some(&100));
    // 30 requests at once on the primary (more than a fifth of the traffic so
    // far), all failing together when it dies: each must be retried.
    let client = client();
    let mut in_flight = JoinSet::new();
    for _ in 0..30 {
        let client = client.clone();
        in_flight.spawn(async move { get(&client, proxy, "/hold").await });
    }
    primary.held.wait_for(|n| *n == 30).await.unwrap();
    primary.kill();
    let mut answers: HashMap<String, usize> = HashMap::new();
    while let Some(answer) = in_flight.join_next().await {
        *answers.entry(answer.unwrap()).or_default() += 1;
    }
    assert_eq!(
        answers,
        [("app-backup".to_string(), 30)].into(),
        "{answers:?}"
    );
}

#[tokio::test]
async fn without_the_fast_path_a_dead_primary_fails_requests() {
    let (mut primary, _backup, d) = primary_and_backup().await;
    let proxy = outbound(d, false).await;
    primary.kill();
    let after = load(proxy, 50, 4).await;
    assert_eq!(
        failures(&after),
        50,
        "weights alone keep sending to the dead primary: {after:?}"
    );
}

#[tokio::test]
async fn a_chain_skips_every_dead_tier() {
    let mut first = App::start("app-first").await;
    let mut second = App::start("app-second").await;
    let third = App::start("app-third").await;
    let d = discovery(
        &[("first", &first), ("second", &second), ("third", &third)],
        vec![
            backend("first", 1, 0),
            backend("second", 0, 1),
            backend("third", 0, 2),
        ],
    );
    let proxy = outbound(d, true).await;
    // Steady traffic first: the retry budget is earned by requests.
    assert_eq!(load(proxy, 100, 4).await.get("app-first"), Some(&100));
    first.kill();
    second.kill();
    let after = load(proxy, 200, 4).await;
    assert_eq!(failures(&after), 0, "{after:?}");
    assert_eq!(after.get("app-third"), Some(&200), "{after:?}");
}

#[tokio::test]
async fn a_backend_whose_endpoints_are_removed_is_skipped() {
    let (_primary, _backup, d) = primary_and_backup().await;
    let proxy = outbound(d.clone(), true).await;
    d.set("primary.shop.svc.cluster.local:80", vec![]);
    let after = load(proxy, 100, 4).await;
    assert_eq!(after.get("app-backup"), Some(&100), "{after:?}");
}

#[tokio::test]
async fn a_post_with_a_body_is_not_retried() {
    let (mut primary, _backup, d) = primary_and_backup().await;
    let proxy = outbound(d, true).await;
    // Warm the budget and a pooled connection to the primary.
    load(proxy, 100, 1).await;
    primary.kill();
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{proxy}/"))
        .body(Full::new(Bytes::from_static(b"order")))
        .unwrap();
    let rsp = client.request(req).await.unwrap();
    assert_eq!(
        rsp.status(),
        502,
        "a POST that reached a dead endpoint is not resent"
    );
    // The failure marked the primary dead: the next POST goes to the backup.
    let req = http::Request::post(format!("http://{proxy}/"))
        .body(Full::new(Bytes::from_static(b"order")))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), 200);
}

#[test]
fn choose_takes_weights_then_the_lowest_live_tier() {
    let mut rng = rand::rng();
    let (p, b1, b2, c) = (
        backend("p", 100, 0),
        backend("b1", 0, 1),
        backend("b2", 0, 1),
        backend("c", 0, 2),
    );
    let all_live = [(&p, true), (&b1, true), (&b2, true), (&c, true)];
    assert!((0..100).all(|_| choose(&all_live, true, &mut rng) == Some(0)));
    let primary_dead = [(&p, false), (&b1, true), (&b2, true), (&c, true)];
    let picks: std::collections::BTreeSet<_> = (0..100)
        .map(|_| choose(&primary_dead, true, &mut rng))
        .collect();
    assert_eq!(
        picks,
        [Some(1), Some(2)].into(),
        "zero weights share a tier equally"
    );
    assert_eq!(
        choose(&primary_dead, false, &mut rng),
        Some(0),
        "no fast path: weights only"
    );
    let all_dead = [(&p, false), (&b1, false), (&b2, false), (&c, false)];
    assert_eq!(choose(&all_dead, true, &mut rng), None);
}
