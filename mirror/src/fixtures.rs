//! Test builders for remote objects, shared by the unit tests of `desired` and `index`.

use std::collections::BTreeMap;
use std::sync::Arc;

use api::link::LinkSpec;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub fn spec() -> LinkSpec {
    serde_json::from_value(serde_json::json!({
        "targetClusterName": "east",
        "credentialsSecret": "east-kubeconfig",
        "gatewayAddresses": ["10.9.0.1"],
        "gatewayIdentity": "spiffe://east.example/ns/meshlink/sa/gateway",
        "excludedLabels": ["team", "internal.example.com/*"],
        "excludedAnnotations": ["secret.example.com/*"],
    }))
    .unwrap()
}

pub fn arc_spec() -> Arc<LinkSpec> {
    Arc::new(spec())
}

pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn service(ns: &str, name: &str, labels: &[(&str, &str)], ports: &[(&str, i32)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(map(labels)),
            resource_version: Some("1".into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.0.0.12".into()),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ServicePort {
                        name: Some(n.to_string()),
                        port: *p,
                        protocol: Some("TCP".into()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            selector: Some(map(&[("app", name)])),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

pub fn exported(ns: &str, name: &str) -> Service {
    service(
        ns,
        name,
        &[("mirror.meshlink.io/exported", "true")],
        &[("http", 8080)],
    )
}

pub fn headless(mut svc: Service) -> Service {
    svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
    svc
}

/// A remote slice of `svc` with `(address, ready, hostname, zone)` endpoints.
pub fn slice(
    ns: &str,
    svc: &str,
    name: &str,
    endpoints: &[(&str, bool, Option<&str>, Option<&str>)],
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(map(&[("kubernetes.io/service-name", svc)])),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: endpoints
            .iter()
            .map(|(addr, ready, host, zone)| Endpoint {
                addresses: vec![addr.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    ..EndpointConditions::default()
                }),
                hostname: host.map(str::to_string),
                zone: zone.map(str::to_string),
                ..Endpoint::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}
