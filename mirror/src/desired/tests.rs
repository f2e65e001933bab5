use std::net::IpAddr;

use super::*;
use crate::fixtures::*;

fn alive_gateway() -> GatewayState {
    GatewayState {
        alive: true,
        addresses: vec!["10.9.0.1".parse::<IpAddr>().unwrap()],
    }
}

#[test]
fn mirror_service_copies_ports_and_filters_metadata() {
    let spec = spec();
    let mut remote = service(
        "shop",
        "books",
        &[
            ("mirror.meshlink.io/exported", "true"),
            ("app", "books"),
            ("team", "blue"),
            ("internal.example.com/owner", "x"),
        ],
        &[("http", 8080), ("grpc", 9090)],
    );
    remote.metadata.annotations = Some(map(&[
        ("docs", "yes"),
        ("secret.example.com/token-ref", "x"),
        ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
    ]));
    let mirror = mirror_service(&spec, &remote, Mode::Gateway).unwrap();
    assert_eq!(mirror.metadata.name.as_deref(), Some("books-east"));
    assert_eq!(mirror.metadata.namespace.as_deref(), Some("shop"));
    let labels = mirror.metadata.labels.unwrap();
    assert_eq!(labels.get("app").map(String::as_str), Some("books"));
    assert!(!labels.contains_key("team"));
    assert!(!labels.contains_key("internal.example.com/owner"));
    // Copying the export label would make a two-way link mirror its own mirrors.
    assert!(!labels.contains_key("mirror.meshlink.io/exported"));
    assert_eq!(labels["mirror.meshlink.io/cluster-name"], "east");
    assert_eq!(labels["mirror.meshlink.io/remote-service-name"], "books");
    let annotations = mirror.metadata.annotations.unwrap();
    assert_eq!(annotations["docs"], "yes");
    assert!(!annotations.contains_key("secret.example.com/token-ref"));
    assert!(!annotations.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
    assert_eq!(
        annotations["mirror.meshlink.io/remote-svc-fq-name"],
        "books.shop.svc.cluster.local"
    );
    let spec = mirror.spec.unwrap();
    assert!(spec.selector.is_none(), "mirrors are selector-less");
    assert_eq!(spec.cluster_ip, None);
    let ports: Vec<_> = spec
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.port))
        .collect();
    assert_eq!(ports, [("http".into(), 8080), ("grpc".into(), 9090)]);
}

#[test]
fn headless_stays_headless() {
    let mirror = mirror_service(&spec(), &headless(exported("db", "pg")), Mode::Gateway).unwrap();
    assert_eq!(mirror.spec.unwrap().cluster_ip.as_deref(), Some("None"));
}

#[test]
fn long_names_are_refused_not_truncated() {
    let name = "a".repeat(59);
    let err = mirror_service(&spec(), &exported("shop", &name), Mode::Gateway).unwrap_err();
    assert!(err.0.contains("longer than the 63"), "{}", err.0);
    assert!(mirror_name(&"a".repeat(58), "east").is_ok());
}

#[test]
fn export_mode_follows_selectors() {
    let spec = spec();
    assert_eq!(export_mode(&spec, &exported("a", "b")), Some(Mode::Gateway));
    let flat = service(
        "a",
        "b",
        &[("mirror.meshlink.io/exported", "remote-discovery")],
        &[],
    );
    assert_eq!(export_mode(&spec, &flat), Some(Mode::RemoteDiscovery));
    assert_eq!(export_mode(&spec, &service("a", "b", &[], &[])), None);
}

#[test]
fn gateway_endpoints_point_at_the_gateway_and_carry_identity() {
    let spec = spec();
    let remote = exported("shop", "books");
    let rs = slice(
        "shop",
        "books",
        "books-abc",
        &[("10.1.0.5", true, None, Some("z1"))],
    );
    let objs = mirror_objects(&spec, &remote, Mode::Gateway, &[&rs], &alive_gateway()).unwrap();
    assert_eq!(objs.slices.len(), 1);
    let s = &objs.slices[0];
    let labels = s.metadata.labels.as_ref().unwrap();
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "mirror.meshlink.io"
    );
    assert_eq!(labels["kubernetes.io/service-name"], "books-east");
    assert_eq!(
        s.metadata.annotations.as_ref().unwrap()[api::labels::ENDPOINT_IDENTITY],
        "spiffe://east.example/ns/meshlink/sa/gateway"
    );
    assert_eq!(s.endpoints.len(), 1);
    assert_eq!(s.endpoints[0].addresses, ["10.9.0.1"]);
    assert_eq!(
        s.endpoints[0].conditions.as_ref().unwrap().ready,
        Some(true)
    );
    let port = &s.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port),
        (Some("http"), Some(4143))
    );
}

#[test]
fn gateway_endpoints_ready_only_when_remote_ready_and_gateway_alive() {
    let spec = spec();
    let remote = exported("shop", "books");
    let ready = slice("shop", "books", "s", &[("10.1.0.5", true, None, None)]);
    let unready = slice("shop", "books", "s", &[("10.1.0.5", false, None, None)]);
    let dead = GatewayState {
        alive: false,
        ..alive_gateway()
    };
    let readiness = |slices: &[&EndpointSlice], gw: &GatewayState| {
        let objs = mirror_objects(&spec, &remote, Mode::Gateway, slices, gw).unwrap();
        objs.slices[0].endpoints[0]
            .conditions
            .as_ref()
            .unwrap()
            .ready
    };
    assert_eq!(readiness(&[&ready], &alive_gateway()), Some(true));
    assert_eq!(readiness(&[&unready], &alive_gateway()), Some(false));
    assert_eq!(readiness(&[], &alive_gateway()), Some(false));
    assert_eq!(readiness(&[&ready], &dead), Some(false));
}

#[test]
fn headless_gateway_mirror_has_one_endpoint_per_hostname() {
    let spec = spec();
    let remote = headless(exported("db", "pg"));
    let rs = slice(
        "db",
        "pg",
        "pg-x",
        &[
            ("10.1.0.7", true, Some("pg-1"), None),
            ("10.1.0.6", true, Some("pg-0"), None),
        ],
    );
    let objs = mirror_objects(&spec, &remote, Mode::Gateway, &[&rs], &alive_gateway()).unwrap();
    let hosts: Vec<_> = objs.slices[0]
        .endpoints
        .iter()
        .map(|e| (e.hostname.clone().unwrap(), e.addresses[0].clone()))
        .collect();
    assert_eq!(
        hosts,
        [
            ("pg-0".to_string(), "10.9.0.1".to_string()),
            ("pg-1".to_string(), "10.9.0.1".to_string())
        ]
    );
}

#[test]
fn remote_discovery_copies_pod_addresses_zones_and_ports() {
    let spec = spec();
    let remote = service(
        "shop",
        "books",
        &[("mirror.meshlink.io/exported", "remote-discovery")],
        &[("http", 8080)],
    );
    let a = slice(
        "shop",
        "books",
        "a",
        &[("10.1.0.6", true, None, Some("z2"))],
    );
    let b = slice(
        "shop",
        "books",
        "b",
        &[("10.1.0.5", false, None, Some("z1"))],
    );
    let objs = mirror_objects(
        &spec,
        &remote,
        Mode::RemoteDiscovery,
        &[&a, &b],
        &GatewayState::default(),
    )
    .unwrap();
    assert_eq!(
        objs.slices.len(),
        1,
        "same address type and ports: one slice"
    );
    let s = &objs.slices[0];
    assert!(s.metadata.annotations.is_none(), "no gateway identity");
    let eps: Vec<_> = s
        .endpoints
        .iter()
        .map(|e| {
            (
                e.addresses[0].as_str(),
                e.zone.as_deref(),
                e.conditions.as_ref().unwrap().ready,
            )
        })
        .collect();
    assert_eq!(
        eps,
        [
            ("10.1.0.5", Some("z1"), Some(false)),
            ("10.1.0.6", Some("z2"), Some(true))
        ]
    );
    assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(8080));
    assert_eq!(
        objs.service.metadata.labels.unwrap()["mirror.meshlink.io/mode"],
        "remote-discovery"
    );
}

#[test]
fn remote_discovery_splits_large_endpoint_sets() {
    let spec = spec();
    let remote = service(
        "shop",
        "books",
        &[("mirror.meshlink.io/exported", "remote-discovery")],
        &[("http", 8080)],
    );
    let addrs: Vec<String> = (0..250)
        .map(|i| format!("10.2.{}.{}", i / 200, i % 200))
        .collect();
    let eps: Vec<(&str, bool, Option<&str>, Option<&str>)> = addrs
        .iter()
        .map(|a| (a.as_str(), true, None, None))
        .collect();
    let big = slice("shop", "books", "big", &eps);
    let objs = mirror_objects(
        &spec,
        &remote,
        Mode::RemoteDiscovery,
        &[&big],
        &GatewayState::default(),
    )
    .unwrap();
    let sizes: Vec<_> = objs.slices.iter().map(|s| s.endpoints.len()).collect();
    assert_eq!(sizes, [100, 100, 50]);
    let mut names: Vec<_> = objs
        .slices
        .iter()
        .map(|s| s.metadata.name.clone())
        .collect();
    names.dedup();
    assert_eq!(names.len(), 3, "slice names are distinct");
}

#[test]
fn external_name_and_portless_services_are_invalid() {
    let spec = spec();
    let mut ext = exported("a", "b");
    ext.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
    assert!(mirror_service(&spec, &ext, Mode::Gateway).is_err());
    let portless = service("a", "b", &[("mirror.meshlink.io/exported", "true")], &[]);
    assert!(
        mirror_service(&spec, &portless, Mode::Gateway)
            .unwrap_err()
            .0
            .contains("no ports")
    );
}
