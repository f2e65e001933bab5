//! Two real clusters: objects written in one arrive as watch events at another
//! client, and the apiserver survives a stop/start with its data.

// A failed unwrap is a failed test, which is what tests are for.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use kube::runtime::watcher::{self, Event};
use multicluster_tests::Harness;

const DEADLINE: Duration = Duration::from_secs(30);

fn service(name: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
    }))
    .unwrap()
}

fn endpoint_slice(service: &str, ip: &str) -> EndpointSlice {
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("{service}-1"),
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "harness.meshlink.io",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "zone": "east-a", "conditions": {"ready": true}}],
    }))
    .unwrap()
}

/// Waits on a watch (no polling) until an object named `name` is applied.
async fn await_applied<K>(api: Api<K>, name: &str) -> K
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let stream = watcher::watcher(api, watcher::Config::default());
    let mut matching = stream
        .try_filter_map(|event| async move {
            Ok(match event {
                Event::Apply(o) | Event::InitApply(o) if o.meta().name.as_deref() == Some(name) => {
                    Some(o)
                }
                _ => None,
            })
        })
        .boxed();
    tokio::time::timeout(DEADLINE, matching.next())
        .await
        .expect("watch event before the deadline")
        .expect("watch stream open")
        .expect("watch without errors")
}

#[tokio::test]
async fn service_and_endpoint_slice_arrive_as_watch_events() {
    let started = Instant::now();
    let harness = Harness::builder()
        .cluster("east")
        .cluster("west")
        .start()
        .await
        .unwrap();
    eprintln!("two clusters ready in {:?}", started.elapsed());
    let east = harness.cluster("east");
    assert!(harness.cluster("west").server_url() != east.server_url());

    let watching = east.new_client().unwrap();
    let svc_watch = tokio::spawn({
        let api: Api<Service> = Api::namespaced(watching.clone(), "default");
        async move { await_applied(api, "books").await }
    });
    let slice_watch = tokio::spawn({
        let api: Api<EndpointSlice> = Api::namespaced(watching, "default");
        async move { await_applied(api, "books-1").await }
    });

    let writer = east.client();
    Api::<Service>::namespaced(writer.clone(), "default")
        .create(&PostParams::default(), &service("books"))
        .await
        .unwrap();
    Api::<EndpointSlice>::namespaced(writer, "default")
        .create(
            &PostParams::default(),
            &endpoint_slice("books", "198.19.0.5"),
        )
        .await
        .unwrap();

    let svc = svc_watch.await.unwrap();
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 8080);
    let slice = slice_watch.await.unwrap();
    assert_eq!(slice.endpoints[0].addresses, vec!["198.19.0.5".to_string()]);
    assert_eq!(slice.endpoints[0].zone.as_deref(), Some("east-a"));

    // The other cluster has its own storage: the Service is not there.
    let west_svcs: Api<Service> = Api::namespaced(harness.cluster("west").client(), "default");
    assert!(west_svcs.get_opt("books").await.unwrap().is_none());
}

#[tokio::test]
async fn apiserver_restarts_on_the_same_address_with_its_data() {
    let started = Instant::now();
    let harness = Harness::builder().cluster("solo").start().await.unwrap();
    eprintln!("one cluster ready in {:?}", started.elapsed());
    let solo = harness.cluster("solo");
    let api: Api<Service> = Api::namespaced(solo.client(), "default");
    api.create(&PostParams::default(), &service("kept"))
        .await
        .unwrap();

    solo.stop_apiserver();
    assert!(!solo.apiserver_running());
    assert!(api.get("kept").await.is_err(), "apiserver should be down");

    let url = solo.server_url().to_owned();
    solo.start_apiserver().await.unwrap();
    assert_eq!(solo.server_url(), url);
    assert!(api.get("kept").await.is_ok(), "data survives the restart");
}

#[tokio::test]
async fn a_dying_apiserver_fails_start_with_its_log() {
    let mut binaries = multicluster_tests::Binaries::locate().unwrap();
    binaries.kube_apiserver = "/bin/false".into();
    let err = Harness::builder()
        .cluster("broken")
        .binaries(binaries)
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("kube-apiserver of broken exited early"),
        "{text}"
    );
}

#[tokio::test]
async fn bad_cluster_names_are_rejected_before_anything_starts() {
    for name in ["", "East", "has space", "-dash", "x".repeat(21).as_str()] {
        let err = Harness::builder().cluster(name).start().await.unwrap_err();
        assert!(err.to_string().contains("cluster name"), "{name:?}: {err}");
    }
    let twice = Harness::builder().cluster("a").cluster("a").start().await;
    assert!(twice.unwrap_err().to_string().contains("twice"));
}
