use super::*;
use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn meta(ns: &str, name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
    let map = |kv: &[(&str, &str)]| {
        Some(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    };
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        labels: map(labels),
        annotations: map(annotations),
        ..Default::default()
    }
}

fn service(name: &str, ip: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Service {
    Service {
        metadata: meta("shop", name, labels, annotations),
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A slice for Service `svc` with (address, zone, ready) endpoints on target port 80.
fn slice(svc: &str, name: &str, eps: &[(&str, &str, bool)]) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(
            "shop",
            name,
            &[(SERVICE_NAME, svc)],
            &[(ENDPOINT_IDENTITY, "spiffe://td/ns/shop/sa/books")],
        ),
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(80),
            app_protocol: Some("http".into()),
            ..Default::default()
        }]),
        endpoints: eps
            .iter()
            .map(|(ip, zone, ready)| SliceEndpoint {
                addresses: vec![ip.to_string()],
                zone: Some(zone.to_string()),
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
    }
}

fn books() -> Target {
    Target::Name {
        namespace: "shop".into(),
        name: "books".into(),
        port: 8080,
    }
}

fn endpoints(rx: &watch::Receiver<Arc<Destination>>) -> Vec<(String, u32)> {
    match &**rx.borrow() {
        Destination::NoSuchService => panic!("expected endpoints, got NoSuchService"),
        Destination::Endpoints(eps) => eps.values().map(|e| (e.address.clone(), e.tier)).collect(),
    }
}

#[test]
fn unknown_service_then_service_appears() {
    let mut index = Index::new("west", "cluster.local");
    let mut rx = index.subscribe(&books(), "zone-a");
    assert_eq!(**rx.borrow_and_update(), Destination::NoSuchService);

    index.apply_service(&service("books", "10.0.0.7", &[], &[]));
    assert!(rx.has_changed().unwrap());
    assert_eq!(endpoints(&rx), vec![]);

    index.apply_slice(&slice(
        "books",
        "books-1",
        &[
            ("198.18.0.2", "zone-a", true),
            ("198.18.0.3", "zone-b", true),
        ],
    ));
    let eps = endpoints(&rx);
    assert_eq!(
        eps,
        vec![("198.18.0.2:80".into(), 0), ("198.18.0.3:80".into(), 1)]
    );
    let dst = rx.borrow().clone();
    let Destination::Endpoints(map) = &*dst else {
        unreachable!()
    };
    let ep = &map["198.18.0.2:80"];
    assert_eq!(ep.identity, "spiffe://td/ns/shop/sa/books");
    assert_eq!(ep.cluster, "west");
    assert_eq!(ep.protocol_hint, ProtocolHint::Http1 as i32);
    assert!(ep.remote_authority.is_empty());
}

#[test]
fn tiers_follow_the_subscriber_zone() {
    let mut index = Index::new("west", "cluster.local");
    index.apply_service(&service("books", "10.0.0.7", &[], &[]));
    index.apply_slice(&slice(
        "books",
        "books-1",
        &[
            ("198.18.0.2", "zone-a", true),
            ("198.18.0.3", "zone-b", true),
        ],
    ));
    let a = index.subscribe(&books(), "zone-a");
    let b = index.subscribe(&books(), "zone-b");
    let unknown = index.subscribe(&books(), "");
    assert_eq!(
        endpoints(&a),
        vec![("198.18.0.2:80".into(), 0), ("198.18.0.3:80".into(), 1)]
    );
    assert_eq!(
        endpoints(&b),
        vec![("198.18.0.2:80".into(), 1), ("198.18.0.3:80".into(), 0)]
    );
    assert_eq!(
        endpoints(&unknown),
        vec![("198.18.0.2:80".into(), 1), ("198.18.0.3:80".into(), 1)]
    );
}

#[test]
fn not_ready_endpoints_are_left_out_and_changes_notify_once() {
    let mut index = Index::new("west", "cluster.local");
    index.apply_service(&service("books", "10.0.0.7", &[], &[]));
    let mut rx = index.subscribe(&books(), "zone-a");
    rx.borrow_and_update();

    index.apply_slice(&slice(
        "books",
        "books-1",
        &[("198.18.0.2", "zone-a", false)],
    ));
    assert!(
        !rx.has_changed().unwrap(),
        "a not-ready endpoint changes nothing"
    );

    index.apply_slice(&slice(
        "books",
        "books-1",
        &[("198.18.0.2", "zone-a", true)],
    ));
    assert!(rx.has_changed().unwrap());
    assert_eq!(endpoints(&rx), vec![("198.18.0.2:80".into(), 0)]);
    rx.borrow_and_update();

    index.apply_slice(&slice(
        "books",
        "books-1",
        &[("198.18.0.2", "zone-a", true)],
    ));
    assert!(
        !rx.has_changed().unwrap(),
        "re-applying the same slice is silent"
    );

    index.delete_slice(&slice("books", "books-1", &[]));
    assert_eq!(endpoints(&rx), vec![]);
}

#[test]
fn mirrors_are_tier_two_with_the_remote_authority() {
    let mut index = Index::new("west", "cluster.local");
    let labels = [(CLUSTER_NAME, "east")];
    let annotations = [(REMOTE_SVC_FQ_NAME, "books.shop.svc.cluster.local")];
    index.apply_service(&service("books-east", "10.0.0.9", &labels, &annotations));
    index.apply_slice(&slice(
        "books-east",
        "books-east-1",
        &[("198.19.0.5", "", true)],
    ));
    let rx = index.subscribe(
        &Target::Name {
            namespace: "shop".into(),
            name: "books-east".into(),
            port: 8080,
        },
        "zone-a",
    );
    let dst = rx.borrow().clone();
    let Destination::Endpoints(map) = &*dst else {
        panic!("expected endpoints")
    };
    let ep = &map["198.19.0.5:80"];
    assert_eq!((ep.tier, ep.cluster.as_str()), (2, "east"));
    assert_eq!(ep.remote_authority, "books.shop.svc.cluster.local:8080");
}

#[test]
fn cluster_ips_resolve_to_their_service() {
    let mut index = Index::new("west", "cluster.local");
    index.apply_service(&service("books", "10.0.0.7", &[], &[]));
    index.apply_slice(&slice(
        "books",
        "books-1",
        &[("198.18.0.2", "zone-a", true)],
    ));
    let rx = index.subscribe(
        &Target::ClusterIp {
            ip: "10.0.0.7".parse().unwrap(),
            port: 8080,
        },
        "zone-a",
    );
    assert_eq!(endpoints(&rx), vec![("198.18.0.2:80".into(), 0)]);
    let wrong_port = index.subscribe(
        &Target::ClusterIp {
            ip: "10.0.0.7".parse().unwrap(),
            port: 9,
        },
        "zone-a",
    );
    assert_eq!(**wrong_port.borrow(), Destination::NoSuchService);
}

#[test]
fn deleting_or_resetting_away_a_service_says_no_such_service() {
    let mut index = Index::new("west", "cluster.local");
    index.apply_service(&service("books", "10.0.0.7", &[], &[]));
    let rx = index.subscribe(&books(), "zone-a");
    index.delete_service("shop", "books");
    assert_eq!(**rx.borrow(), Destination::NoSuchService);

    index.reset_services(&[service("books", "10.0.0.7", &[], &[])]);
    assert_eq!(endpoints(&rx), vec![]);
    index.reset_services(&[]);
    assert_eq!(**rx.borrow(), Destination::NoSuchService);
}

#[test]
fn reset_slices_replaces_state() {
    let mut index = Index::new("west", "cluster.local");
    index.apply_service(&service("books", "10.0.0.7", &[], &[]));
    index.apply_slice(&slice("books", "old", &[("198.18.0.2", "zone-a", true)]));
    let rx = index.subscribe(&books(), "zone-a");
    index.reset_slices(&[slice("books", "new", &[("198.18.0.4", "zone-a", true)])]);
    assert_eq!(endpoints(&rx), vec![("198.18.0.4:80".into(), 0)]);
}

#[test]
fn subscribers_share_a_channel_and_dropped_channels_are_forgotten() {
    let mut index = Index::new("west", "cluster.local");
    index.apply_service(&service("books", "10.0.0.7", &[], &[]));
    let rxs: Vec<_> = (0..1000)
        .map(|_| index.subscribe(&books(), "zone-a"))
        .collect();
    assert_eq!(index.channels(), 1);
    drop(rxs);
    index.apply_slice(&slice(
        "books",
        "books-1",
        &[("198.18.0.2", "zone-a", true)],
    ));
    assert_eq!(index.channels(), 0);
}

mod costs;

#[test]
fn a_service_that_includes_its_mirrors_gets_their_endpoints_as_tier_two() {
    let mut index = Index::new("west", "cluster.local");
    let include = [(BALANCER_INCLUDE_MIRRORS, "true")];
    index.apply_service(&service("books", "10.0.0.1", &[], &include));
    index.apply_slice(&slice("books", "books-1", &[("10.1.0.1", "zone-a", true)]));
    let mirror_labels = [(CLUSTER_NAME, "east"), (REMOTE_SERVICE_NAME, "books")];
    let mirror_annotations = [(REMOTE_SVC_FQ_NAME, "books.shop.svc.cluster.local")];
    let books_east = service(
        "books-east",
        "10.0.0.9",
        &mirror_labels,
        &mirror_annotations,
    );
    index.apply_service(&books_east);
    let mut rx = index.subscribe(&books(), "zone-a");
    assert_eq!(endpoints(&rx), vec![("10.1.0.1:80".into(), 0)]);

    // The mirror's slice joins the local set, with the remote authority.
    index.apply_slice(&slice(
        "books-east",
        "books-east-1",
        &[("198.19.0.5", "", true)],
    ));
    assert!(rx.has_changed().unwrap());
    assert_eq!(
        endpoints(&rx),
        vec![("10.1.0.1:80".into(), 0), ("198.19.0.5:80".into(), 2)]
    );
    {
        let dst = rx.borrow_and_update();
        let Destination::Endpoints(map) = &**dst else {
            unreachable!()
        };
        let ep = &map["198.19.0.5:80"];
        assert_eq!(ep.cluster, "east");
        assert_eq!(ep.remote_authority, "books.shop.svc.cluster.local:8080");
    }

    // The local cluster loses its endpoints: the mirror's remain.
    index.apply_slice(&slice("books", "books-1", &[("10.1.0.1", "zone-a", false)]));
    assert_eq!(endpoints(&rx), vec![("198.19.0.5:80".into(), 2)]);

    // The local Service's tier overrides apply to its mirrors' endpoints.
    let dear = [
        (BALANCER_INCLUDE_MIRRORS, "true"),
        (BALANCER_TIERS, "other-cluster=7"),
    ];
    index.apply_service(&service("books", "10.0.0.1", &[], &dear));
    assert_eq!(endpoints(&rx), vec![("198.19.0.5:80".into(), 7)]);

    // The mirror goes away, and so do its endpoints.
    index.delete_service("shop", "books-east");
    assert_eq!(endpoints(&rx), vec![]);
    index.apply_service(&books_east);
    assert_eq!(endpoints(&rx), vec![("198.19.0.5:80".into(), 7)]);

    // Without the annotation (or with a malformed one) the sets stay apart.
    index.apply_service(&service(
        "books",
        "10.0.0.1",
        &[],
        &[(BALANCER_INCLUDE_MIRRORS, "yes")],
    ));
    assert_eq!(endpoints(&rx), vec![]);
    let own = index.subscribe(
        &Target::Name {
            namespace: "shop".into(),
            name: "books-east".into(),
            port: 8080,
        },
        "zone-a",
    );
    assert_eq!(endpoints(&own), vec![("198.19.0.5:80".into(), 2)]);
}

#[test]
fn only_mirrors_of_the_same_name_and_namespace_join() {
    let mut index = Index::new("west", "cluster.local");
    index.apply_service(&service(
        "books",
        "10.0.0.1",
        &[],
        &[(BALANCER_INCLUDE_MIRRORS, "true")],
    ));
    let annotations = [(REMOTE_SVC_FQ_NAME, "maps.shop.svc.cluster.local")];
    index.apply_service(&service(
        "maps-east",
        "10.0.0.9",
        &[(CLUSTER_NAME, "east"), (REMOTE_SERVICE_NAME, "maps")],
        &annotations,
    ));
    index.apply_slice(&slice(
        "maps-east",
        "maps-east-1",
        &[("198.19.0.5", "", true)],
    ));
    let rx = index.subscribe(&books(), "zone-a");
    assert_eq!(endpoints(&rx), vec![]);
}
