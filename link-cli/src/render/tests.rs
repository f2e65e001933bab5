use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, NodeAddress, NodeStatus, ServiceSpec, ServiceStatus,
};

use super::*;
use crate::cli::OutputFormat;
use crate::golden;

fn service(type_: &str, ports: Vec<ServicePort>) -> Service {
    Service {
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn port(name: &str, port: i32, node_port: Option<i32>) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        node_port,
        ..ServicePort::default()
    }
}

fn node(kind: &str, address: &str) -> Node {
    Node {
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: kind.into(),
                address: address.into(),
            }]),
            ..NodeStatus::default()
        }),
        ..Node::default()
    }
}

#[test]
fn load_balancer_gateway_uses_ingress_and_service_ports() {
    let mut svc = service(
        "LoadBalancer",
        vec![
            port("mc-gateway", 4143, Some(30143)),
            port("mc-probe", 4191, Some(30191)),
        ],
    );
    svc.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![
                LoadBalancerIngress {
                    ip: Some("203.0.113.7".into()),
                    ..Default::default()
                },
                LoadBalancerIngress {
                    hostname: Some("gw.east.example".into()),
                    ..Default::default()
                },
            ]),
        }),
        ..ServiceStatus::default()
    });
    let gw = gateway_from_service(&svc, &[]).unwrap();
    assert_eq!(gw.addresses, ["203.0.113.7", "gw.east.example"]);
    assert_eq!((gw.port, gw.probe_port), (4143, 4191));
}

#[test]
fn load_balancer_without_ingress_is_refused() {
    let svc = service("LoadBalancer", vec![port("mc-gateway", 4143, None)]);
    let err = gateway_from_service(&svc, &[]).unwrap_err();
    assert!(err.contains("without ingress"), "{err}");
}

#[test]
fn node_port_gateway_uses_node_ports_and_prefers_external_addresses() {
    let svc = service(
        "NodePort",
        vec![
            port("mc-gateway", 4143, Some(30143)),
            port("mc-probe", 4191, Some(30191)),
        ],
    );
    let nodes = [
        node("InternalIP", "10.0.0.5"),
        node("ExternalIP", "198.51.100.5"),
    ];
    let gw = gateway_from_service(&svc, &nodes).unwrap();
    assert_eq!(gw.addresses, ["198.51.100.5"]);
    // Traffic and probes go to the node ports, not the service ports.
    assert_eq!((gw.port, gw.probe_port), (30143, 30191));
}

#[test]
fn node_port_without_probe_port_probes_the_traffic_node_port() {
    let svc = service("NodePort", vec![port("mc-gateway", 4143, Some(30143))]);
    let gw = gateway_from_service(&svc, &[node("InternalIP", "10.0.0.5")]).unwrap();
    assert_eq!((gw.port, gw.probe_port), (30143, 30143));
}

#[test]
fn cluster_ip_gateway_is_refused() {
    let svc = service("ClusterIP", vec![port("mc-gateway", 4143, None)]);
    assert!(
        gateway_from_service(&svc, &[])
            .unwrap_err()
            .contains("ClusterIP")
    );
}

#[test]
fn selector_parses_equality_inequality_and_existence() {
    let s = parse_selector("app=web, tier!=db,exported,!legacy").unwrap();
    assert_eq!(s.match_labels.unwrap()["app"], "web");
    let ops: Vec<_> = s
        .match_expressions
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.operator))
        .collect();
    assert_eq!(
        ops,
        [
            ("tier".to_owned(), "NotIn".to_owned()),
            ("exported".to_owned(), "Exists".to_owned()),
            ("legacy".to_owned(), "DoesNotExist".to_owned()),
        ]
    );
    assert!(parse_selector("a=b,,c").is_err());
}

#[test]
fn ttl_parses_units_and_enforces_the_minimum() {
    assert_eq!(parse_ttl("365d"), Ok(365 * 86_400));
    assert_eq!(parse_ttl("90m"), Ok(5400));
    assert!(parse_ttl("5m").unwrap_err().contains("10m minimum"));
    assert!(parse_ttl("ten").is_err());
    assert!(parse_ttl("").is_err());
}

fn fixed_plan() -> LinkPlan {
    LinkPlan {
        cluster_name: "east".into(),
        namespace: "meshlink-multicluster".into(),
        cluster_domain: "cluster.local".into(),
        gateway: Gateway {
            addresses: vec!["198.18.0.40".into(), "gw.east.example".into()],
            port: 4143,
            probe_port: 4191,
            identity: Some(
                "spiffe://east.example/ns/meshlink-multicluster/sa/meshlink-gateway".into(),
            ),
        },
        selector: None,
        trust_bundle: None,
    }
}

const FIXED_CA: &str =
    "-----BEGIN CERTIFICATE-----\nMIIBfixedCAforgoldentests\n-----END CERTIFICATE-----\n";

fn rendered(plan: &LinkPlan, format: OutputFormat) -> String {
    let kubeconfig = token_kubeconfig(
        "east",
        "https://198.18.0.1:6443",
        Some(FIXED_CA),
        "fixed-token",
    );
    let objects = [
        crate::output::value(&plan.secret(&kubeconfig)).unwrap(),
        crate::output::value(&plan.link().unwrap()).unwrap(),
    ];
    crate::output::manifests(&objects, Some(format)).unwrap()
}

#[test]
fn link_output_matches_golden_yaml_and_json() {
    golden::check("link.yaml", &rendered(&fixed_plan(), OutputFormat::Yaml));
    golden::check("link.json", &rendered(&fixed_plan(), OutputFormat::Json));
}

#[test]
fn link_output_with_selector_matches_golden() {
    let plan = LinkPlan {
        selector: Some(parse_selector("app=web,tier!=db").unwrap()),
        ..fixed_plan()
    };
    golden::check("link-selector.yaml", &rendered(&plan, OutputFormat::Yaml));
}

#[test]
fn link_secret_holds_a_kubeconfig_with_server_ca_and_token() {
    let kubeconfig = token_kubeconfig(
        "east",
        "https://198.18.0.1:6443",
        Some(FIXED_CA),
        "fixed-token",
    );
    golden::check("kubeconfig.yaml", &kubeconfig);
    let parsed = kube::config::Kubeconfig::from_yaml(&kubeconfig).unwrap();
    let cluster = parsed.clusters[0].cluster.clone().unwrap();
    assert_eq!(cluster.server.as_deref(), Some("https://198.18.0.1:6443"));
    let ca = BASE64
        .decode(cluster.certificate_authority_data.unwrap())
        .unwrap();
    assert_eq!(ca, FIXED_CA.as_bytes());
    let secret = fixed_plan().secret(&kubeconfig);
    assert_eq!(
        secret.type_.as_deref(),
        Some(labels::REMOTE_KUBECONFIG_SECRET_TYPE)
    );
    assert_eq!(
        secret.data.unwrap()[labels::REMOTE_KUBECONFIG_KEY].0,
        kubeconfig.as_bytes()
    );
}

#[test]
fn invalid_cluster_name_is_refused() {
    let plan = LinkPlan {
        cluster_name: "East_1".into(),
        ..fixed_plan()
    };
    assert!(plan.link().unwrap_err().contains("not a DNS label"));
}

#[test]
fn pem_bundle_wraps_at_64_columns() {
    let pem = pem_bundle(&[vec![0u8; 60]]);
    let lines: Vec<&str> = pem.lines().collect();
    assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
    assert_eq!(lines[1].len(), 64);
    assert_eq!(lines[2].len(), 16);
    assert_eq!(lines[3], "-----END CERTIFICATE-----");
}

#[test]
fn allow_output_matches_golden() {
    let access = crate::rbac::remote_mirror_access("meshlink-multicluster", "mirror-west");
    let out = crate::output::manifests(&access.to_values().unwrap(), None).unwrap();
    golden::check("allow.yaml", &out);
}

#[test]
fn pem_bundle_check_accepts_certificates_and_names_what_is_wrong() {
    let two = pem_bundle(&[vec![1u8; 40], vec![2u8; 70]]);
    assert_eq!(check_pem_bundle(&two), Ok(()));
    assert!(check_pem_bundle("").unwrap_err().contains("no certificate"));
    assert!(
        check_pem_bundle("garbage")
            .unwrap_err()
            .contains("expected -----BEGIN")
    );
    let cut = &two[..two.len() - 30];
    assert!(
        check_pem_bundle(cut)
            .unwrap_err()
            .contains("has no -----END")
    );
    let bad = "-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n";
    assert!(check_pem_bundle(bad).unwrap_err().contains("not base64"));
}

#[test]
fn trust_bundle_is_carried_into_the_link() {
    let bundle = pem_bundle(&[vec![3u8; 50]]);
    let plan = LinkPlan {
        trust_bundle: Some(bundle.clone()),
        ..fixed_plan()
    };
    assert_eq!(plan.link().unwrap().spec.remote_trust_bundle, Some(bundle));
}
