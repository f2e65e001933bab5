//! Cluster networks: gateway addresses are reachable across clusters, pod addresses
//! only within their cluster unless the network is flat; pods publish as endpoints.

// A failed unwrap is a failed test, which is what tests are for.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use multicluster_tests::{Harness, Pod};

const ECHO: &str = env!("CARGO_BIN_EXE_harness-echo");
const PORT: u16 = 7000;

async fn echo_pod(pod: Pod) -> Pod {
    pod.spawn(ECHO, ["serve", &PORT.to_string(), pod.name()])
        .unwrap();
    pod.wait_listening(PORT, Duration::from_secs(10))
        .await
        .unwrap();
    pod
}

/// Runs `harness-echo probe` inside `from`; Ok(greeting) or Err(stderr).
fn probe(from: &Pod, to: SocketAddr) -> Result<String, String> {
    let out = from
        .command(ECHO)
        .args(["probe", &to.to_string(), "1000"])
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

#[tokio::test]
async fn gateway_is_reachable_across_clusters_but_pods_are_not() {
    let harness = Harness::builder()
        .cluster("east")
        .cluster("west")
        .without_controller_manager()
        .start()
        .await
        .unwrap();
    let (east, west) = (harness.cluster("east"), harness.cluster("west"));
    let gateway = echo_pod(east.create_gateway_pod("gateway", "east-a").unwrap()).await;
    let books = echo_pod(east.create_pod("books", "east-b").unwrap()).await;
    let east_client = east.create_pod("client", "east-a").unwrap();
    let web = west.create_pod("web", "west-a").unwrap();
    assert_eq!(gateway.gateway_address(), Some(east.gateway_address()));

    let at = |ip| SocketAddr::from((ip, PORT));
    assert_eq!(probe(&web, at(east.gateway_address())).unwrap(), "gateway");
    // Same cluster: pod to pod works, so a failure below is isolation, not a dead server.
    assert_eq!(probe(&east_client, at(books.ip())).unwrap(), "books");
    let blocked = probe(&web, at(books.ip()));
    assert!(
        blocked.is_err(),
        "west reached east pod {}: {blocked:?}",
        books.ip()
    );
    // Test code in the root namespace reaches pods; pods reach the apiserver host.
    assert!(std::net::TcpStream::connect(at(books.ip())).is_ok());
    let host = harness.address_plan().host();
    let apiserver: SocketAddr = east
        .server_url()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    assert_eq!(apiserver.ip(), host);
    let out = web
        .command(ECHO)
        .args(["probe", &apiserver.to_string(), "1000"])
        .output()
        .unwrap();
    // The apiserver speaks TLS and sends nothing first: a read timeout, not a refused connect.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reading"),
        "pod could not connect to the apiserver: {stderr}"
    );
}

#[tokio::test]
async fn flat_network_routes_pod_addresses_across_clusters() {
    let harness = Harness::builder()
        .cluster("east")
        .cluster("west")
        .flat_network(true)
        .without_controller_manager()
        .start()
        .await
        .unwrap();
    let books = echo_pod(
        harness
            .cluster("east")
            .create_pod("books", "east-a")
            .unwrap(),
    )
    .await;
    let web = harness.cluster("west").create_pod("web", "west-b").unwrap();
    let reached = probe(&web, SocketAddr::from((books.ip(), PORT)));
    assert_eq!(reached.unwrap(), "books");
}

#[tokio::test]
async fn pods_publish_as_endpoint_slices_with_zones() {
    let harness = Harness::builder()
        .cluster_with_zones("east", ["zone-1", "zone-2"])
        .without_controller_manager()
        .start()
        .await
        .unwrap();
    let east = harness.cluster("east");
    let a = east.create_pod("books-a", "zone-1").unwrap();
    let b = east.create_pod("books-b", "zone-2").unwrap();
    assert!(
        east.create_pod("books-c", "zone-9").is_err(),
        "unknown zone accepted"
    );
    east.publish("shop", "books", 8080, &[&a, &b])
        .await
        .unwrap();

    let slices: Api<EndpointSlice> = Api::namespaced(east.client(), "shop");
    let slice = slices.get("books-harness").await.unwrap();
    let labels = slice.metadata.labels.unwrap();
    assert_eq!(labels["kubernetes.io/service-name"], "books");
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "harness.meshlink.io"
    );
    let endpoints: Vec<_> = slice
        .endpoints
        .iter()
        .map(|e| {
            (
                e.addresses[0].clone(),
                e.zone.clone().unwrap(),
                e.conditions.clone().unwrap().ready,
            )
        })
        .collect();
    assert_eq!(
        endpoints,
        vec![
            (a.ip().to_string(), "zone-1".to_string(), Some(true)),
            (b.ip().to_string(), "zone-2".to_string(), Some(true)),
        ]
    );
    east.publish("shop", "books", 8080, &[&b]).await.unwrap();
    assert_eq!(
        slices.get("books-harness").await.unwrap().endpoints.len(),
        1
    );
}
