//! The discovery service on a real kube-apiserver: the controller's watches feed
//! its index, and the proxy's gRPC discovery follows what the cluster says.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use api::discovery::WatchRequest;
use api::discovery::discovery_client::DiscoveryClient;
use controller::discovery::Discovery as DiscoveryServer;
use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use multicluster_tests::Harness;
use proxy::discovery::{Discovery, EndpointSet};
use proxy::discovery_grpc::GrpcDiscovery;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(20);
const BOOKS: &str = "books.shop.svc.cluster.local:8080";

/// A discovery server for `client`'s cluster on `addr` (port 0 for any), with the
/// switch that stops it.
struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(client: Client, addr: SocketAddr) -> Result<Self> {
        let mut registry = prometheus_client::registry::Registry::default();
        let costs = ("meshlink".to_string(), "meshlink-zone-costs".to_string());
        let discovery =
            DiscoveryServer::start(client, "west", "cluster.local", costs, &mut registry);
        let mut ready = discovery.ready();
        tokio::time::timeout(DEADLINE, ready.wait_for(|r| *r))
            .await
            .context("discovery never became ready")??;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(async move {
            discovery
                .serve(listener, shutdown)
                .await
                .expect("discovery server failed");
        });
        Ok(Self { addr, stop, task })
    }

    async fn stop(self) -> Result<()> {
        self.stop.send_replace(true);
        Ok(self.task.await?)
    }
}

fn proxy_discovery(addr: SocketAddr, zone: &str) -> Result<GrpcDiscovery> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
    Ok(GrpcDiscovery::new(channel, zone))
}

async fn apply_books(client: &Client, endpoints: &[(&str, &str)]) -> Result<()> {
    let pp = PatchParams::apply("discovery-test").force();
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("shop".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .patch("shop", &pp, &Patch::Apply(&ns))
        .await?;
    let svc = Service {
        metadata: ObjectMeta {
            name: Some("books".into()),
            namespace: Some("shop".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<Service>::namespaced(client.clone(), "shop")
        .patch("books", &pp, &Patch::Apply(&svc))
        .await?;
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some("books-1".into()),
            namespace: Some("shop".into()),
            labels: Some([(api::labels::SERVICE_NAME.to_string(), "books".to_string())].into()),
            annotations: Some(
                [(
                    api::labels::ENDPOINT_IDENTITY.to_string(),
                    "spiffe://west/ns/shop/sa/books".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(80),
            ..Default::default()
        }]),
        endpoints: endpoints
            .iter()
            .map(|(ip, zone)| Endpoint {
                addresses: vec![ip.to_string()],
                zone: Some(zone.to_string()),
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
    };
    Api::<EndpointSlice>::namespaced(client.clone(), "shop")
        .patch("books-1", &pp, &Patch::Apply(&slice))
        .await?;
    Ok(())
}

fn addresses(set: &EndpointSet) -> Vec<String> {
    set.iter().map(|e| e.addr.to_string()).collect()
}

/// Waits until the endpoint addresses are exactly `want`.
async fn wait_for(rx: &mut watch::Receiver<EndpointSet>, want: &[&str]) -> Result<EndpointSet> {
    let got = tokio::time::timeout(DEADLINE, rx.wait_for(|set| addresses(set) == want))
        .await
        .map(|set| set.map(|s| s.clone()));
    match got {
        Ok(set) => Ok(set?),
        Err(_) => anyhow::bail!(
            "endpoints are {:?}, never became {want:?}",
            addresses(&rx.borrow())
        ),
    }
}

#[tokio::test]
async fn a_proxy_follows_the_cluster_through_discovery() -> Result<()> {
    let harness = Harness::builder().cluster("west").start().await?;
    let client = harness.cluster("west").client();
    apply_books(&client, &[("198.18.200.1", "zone-a")]).await?;
    let server = Server::start(client.clone(), "127.0.0.1:0".parse()?).await?;
    let discovery = proxy_discovery(server.addr, "zone-a")?;

    let mut rx = discovery
        .resolve(BOOKS)
        .await?
        .context("books should exist")?;
    let set = wait_for(&mut rx, &["198.18.200.1:80"]).await?;
    assert_eq!(
        set[0].identity.as_deref(),
        Some("spiffe://west/ns/shop/sa/books")
    );
    assert_eq!((set[0].tier, set[0].cluster.as_deref()), (0, Some("west")));

    apply_books(
        &client,
        &[("198.18.200.1", "zone-a"), ("198.18.200.2", "zone-b")],
    )
    .await?;
    let set = wait_for(&mut rx, &["198.18.200.1:80", "198.18.200.2:80"]).await?;
    assert_eq!(set[1].tier, 1, "another zone of the same cluster is tier 1");
    apply_books(&client, &[("198.18.200.2", "zone-b")]).await?;
    wait_for(&mut rx, &["198.18.200.2:80"]).await?;

    assert!(
        discovery
            .resolve("nothing.shop.svc.cluster.local:80")
            .await?
            .is_none(),
        "unknown services resolve to None"
    );
    Api::<Service>::namespaced(client, "shop")
        .delete("books", &DeleteParams::default())
        .await?;
    wait_for(&mut rx, &[]).await?;
    server.stop().await
}

#[tokio::test]
async fn proxies_keep_endpoints_while_discovery_is_down_and_resync_after() -> Result<()> {
    let harness = Harness::builder().cluster("west").start().await?;
    let client = harness.cluster("west").client();
    apply_books(
        &client,
        &[("198.18.200.1", "zone-a"), ("198.18.200.2", "zone-a")],
    )
    .await?;
    let server = Server::start(client.clone(), "127.0.0.1:0".parse()?).await?;
    let addr = server.addr;
    let discovery = proxy_discovery(addr, "zone-a")?;
    let mut rx = discovery
        .resolve(BOOKS)
        .await?
        .context("books should exist")?;
    wait_for(&mut rx, &["198.18.200.1:80", "198.18.200.2:80"]).await?;
    rx.borrow_and_update();

    server.stop().await?;
    apply_books(
        &client,
        &[("198.18.200.2", "zone-a"), ("198.18.200.3", "zone-a")],
    )
    .await?;
    assert!(
        !rx.has_changed()?,
        "with discovery down the proxy keeps what it knew"
    );
    assert_eq!(
        addresses(&rx.borrow()),
        ["198.18.200.1:80", "198.18.200.2:80"]
    );

    let server = Server::start(client, addr).await?;
    let set = wait_for(&mut rx, &["198.18.200.2:80", "198.18.200.3:80"]).await?;
    let unique: BTreeSet<_> = set.iter().map(|e| e.addr).collect();
    assert_eq!(
        unique.len(),
        set.len(),
        "no duplicate endpoints after the reconnect"
    );
    server.stop().await
}

/// The apiserver's count of open WATCH requests for `resource`.
async fn open_watches(client: &Client, resource: &str) -> Result<u64> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let needle = format!("resource=\"{resource}\"");
    let count = text
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_longrunning_requests{")
                && l.contains(&needle)
                && l.contains("verb=\"WATCH\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    Ok(count as u64)
}

#[tokio::test]
async fn a_thousand_subscribers_share_one_watch_per_kind() -> Result<()> {
    // Without kube-controller-manager its informers' watches do not blur the count.
    let harness = Harness::builder()
        .cluster("west")
        .without_controller_manager()
        .start()
        .await?;
    let client = harness.cluster("west").client();
    apply_books(&client, &[("198.18.200.1", "zone-a")]).await?;
    let before = (
        open_watches(&client, "services").await?,
        open_watches(&client, "endpointslices").await?,
    );

    let server = Server::start(client.clone(), "127.0.0.1:0".parse()?).await?;
    let mut streams = Vec::new();
    for conn in 0..10 {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))?
            .connect()
            .await?;
        for i in 0..100 {
            let mut client = DiscoveryClient::new(channel.clone());
            let zone = format!("zone-{}", (conn * 100 + i) % 3);
            let mut stream = client
                .watch(WatchRequest {
                    target: BOOKS.into(),
                    zone,
                })
                .await?
                .into_inner();
            assert!(
                stream.message().await?.is_some(),
                "every subscriber gets its first update"
            );
            streams.push(stream);
        }
    }
    assert_eq!(streams.len(), 1000);
    let after = (
        open_watches(&client, "services").await?,
        open_watches(&client, "endpointslices").await?,
    );
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 1),
        "one watch per kind, not per subscriber"
    );
    drop(streams);
    server.stop().await
}

#[tokio::test]
async fn the_controller_binary_serves_discovery_and_stops_on_sigterm() -> Result<()> {
    let harness = Harness::builder()
        .cluster("west")
        .without_controller_manager()
        .start()
        .await?;
    let west = harness.cluster("west");
    apply_books(&west.client(), &[("198.18.200.1", "zone-a")]).await?;
    let controller = multicluster_tests::ControllerProcess::start(west).await?;

    let discovery = proxy_discovery(controller.discovery, "zone-a")?;
    let mut rx = discovery
        .resolve(BOOKS)
        .await?
        .context("books should exist")?;
    wait_for(&mut rx, &["198.18.200.1:80"]).await?;

    let status = controller.terminate().await?;
    assert!(
        status.success(),
        "controller exited with {status} on SIGTERM"
    );
    Ok(())
}
