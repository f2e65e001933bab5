use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::CustomResourceExt;

use super::*;

const CRD_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/link.yaml");

fn minimal_spec() -> LinkSpec {
    serde_json::from_value(serde_json::json!({
        "targetClusterName": "east",
        "credentialsSecret": "east-kubeconfig",
    }))
    .unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The checked-in CRD must be what the Rust types generate. Regenerate with
/// `MESHLINK_REGENERATE_CRDS=1 cargo test -p api crd_yaml`.
#[test]
fn crd_yaml_matches_types() {
    crate::check_crd_yaml(CRD_PATH, "api::link::Link", &Link::crd());
}

#[test]
fn crd_has_status_subresource_and_columns() {
    let crd = Link::crd();
    assert_eq!(crd.spec.group, "multicluster.meshlink.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Cluster", "Gateway Alive", "Mirrored", "Age"]);
}

#[test]
fn defaults_fill_a_minimal_spec() {
    let spec = minimal_spec();
    assert_eq!(spec.target_cluster_domain, "cluster.local");
    assert_eq!(spec.gateway_port, 4143);
    assert_eq!(spec.probe.path, "/ready");
    assert_eq!(spec.probe.port, 4191);
    assert_eq!(spec.probe.period_seconds, 3);
    assert_eq!(spec.probe.timeout_seconds, 1);
    assert_eq!(spec.probe.failure_threshold, 3);
    assert!(!spec.create_missing_namespaces);
    assert!(selector_matches(
        &spec.selector,
        &labels(&[("mirror.meshlink.io/exported", "true")])
    ));
    assert!(selector_matches(
        &spec.remote_discovery_selector,
        &labels(&[("mirror.meshlink.io/exported", "remote-discovery")])
    ));
    assert!(!selector_matches(
        &spec.selector,
        &labels(&[("mirror.meshlink.io/exported", "remote-discovery")])
    ));
    spec.validate().unwrap();
}

#[test]
fn validate_names_the_bad_field() {
    let mut spec = minimal_spec();
    spec.target_cluster_name = "East_1".into();
    assert!(spec.validate().unwrap_err().0.contains("targetClusterName"));

    let mut spec = minimal_spec();
    spec.probe.failure_threshold = 0;
    assert!(spec.validate().unwrap_err().0.contains("failureThreshold"));

    let mut spec = minimal_spec();
    spec.probe.path = "ready".into();
    assert!(spec.validate().unwrap_err().0.contains("probe path"));
}

#[test]
fn selector_expressions() {
    let sel = LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![
            LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["web".into(), "api".into()]),
            },
            LabelSelectorRequirement {
                key: "internal".into(),
                operator: "DoesNotExist".into(),
                values: None,
            },
        ]),
    };
    assert!(selector_matches(&sel, &labels(&[("tier", "api")])));
    assert!(!selector_matches(&sel, &labels(&[("tier", "db")])));
    assert!(!selector_matches(
        &sel,
        &labels(&[("tier", "api"), ("internal", "")])
    ));
    // An empty selector exports nothing rather than everything.
    assert!(!selector_matches(
        &LabelSelector::default(),
        &labels(&[("tier", "api")])
    ));
}

#[test]
fn exclusions_support_prefix_wildcards() {
    let patterns = vec!["team".to_string(), "example.com/*".to_string()];
    assert!(is_excluded("team", &patterns));
    assert!(is_excluded("example.com/owner", &patterns));
    assert!(!is_excluded("example.company/owner", &patterns));
    assert!(!is_excluded("teams", &patterns));
}
