//! Tier overrides in the index: annotations and zone-pair costs change the tiers
//! subscribers see, at once and without resubscribing.

use super::*;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};

fn namespace(name: &str, tiers: Option<&str>) -> Namespace {
    let mut meta = meta("", name, &[], &[]);
    meta.namespace = None;
    meta.annotations = tiers.map(|t| [(BALANCER_TIERS.to_string(), t.to_string())].into());
    Namespace {
        metadata: meta,
        ..Default::default()
    }
}

fn zone_costs(text: &str) -> ConfigMap {
    ConfigMap {
        metadata: meta("meshlink", "meshlink-zone-costs", &[], &[]),
        data: Some([("costs".to_string(), text.to_string())].into()),
        ..Default::default()
    }
}

/// An index with `books` (annotated with `svc_tiers`, if any) having one
/// endpoint in each of zones a, b and c, and a subscription from zone a.
fn three_zones(svc_tiers: Option<&str>) -> (Index, watch::Receiver<Arc<Destination>>) {
    let mut index = Index::new("west", "cluster.local");
    let annotations: Vec<(&str, &str)> =
        svc_tiers.map(|t| (BALANCER_TIERS, t)).into_iter().collect();
    index.apply_service(&service("books", "10.0.0.7", &[], &annotations));
    index.apply_slice(&slice(
        "books",
        "books-1",
        &[
            ("198.18.0.1", "a", true),
            ("198.18.0.2", "b", true),
            ("198.18.0.3", "c", true),
        ],
    ));
    let rx = index.subscribe(&books(), "a");
    (index, rx)
}

fn tiers(rx: &watch::Receiver<Arc<Destination>>) -> Vec<u32> {
    endpoints(rx).into_iter().map(|(_, t)| t).collect()
}

#[test]
fn zone_costs_apply_at_run_time_and_bad_ones_keep_the_last_good() {
    let (mut index, mut rx) = three_zones(None);
    assert_eq!(tiers(&rx), [0, 1, 1]);
    rx.mark_unchanged();

    index.apply_zone_costs(&zone_costs("a b 1\na c 5\n"));
    assert!(rx.has_changed().unwrap());
    assert_eq!(tiers(&rx), [0, 1, 5]);
    rx.mark_unchanged();

    index.apply_zone_costs(&zone_costs("a c"));
    assert!(
        !rx.has_changed().unwrap(),
        "a malformed ConfigMap changes nothing"
    );
    index.apply_zone_costs(&ConfigMap::default());
    assert!(!rx.has_changed().unwrap(), "nor does one without costs");

    index.delete_zone_costs(&zone_costs(""));
    assert_eq!(tiers(&rx), [0, 1, 1]);
    index.reset_zone_costs(&[zone_costs("a b 3")]);
    assert_eq!(tiers(&rx), [0, 3, 1]);
    index.reset_zone_costs(&[]);
    assert_eq!(tiers(&rx), [0, 1, 1]);
}

#[test]
fn service_annotation_beats_namespace_annotation() {
    let (mut index, rx) = three_zones(None);
    index.apply_namespace(&namespace("shop", Some("same-cluster=0")));
    assert_eq!(tiers(&rx), [0, 0, 0], "the namespace flattens the zones");
    index.apply_namespace(&namespace("other", Some("same-cluster=7")));
    assert_eq!(tiers(&rx), [0, 0, 0], "another namespace does not matter");

    index.apply_service(&service(
        "books",
        "10.0.0.7",
        &[],
        &[(BALANCER_TIERS, "same-cluster=4")],
    ));
    assert_eq!(tiers(&rx), [0, 4, 4], "the Service wins");
    index.apply_service(&service("books", "10.0.0.7", &[], &[]));
    assert_eq!(tiers(&rx), [0, 0, 0]);

    index.delete_namespace(&namespace("shop", None));
    assert_eq!(tiers(&rx), [0, 1, 1]);
    index.reset_namespaces(&[namespace("shop", Some("same-zone=2"))]);
    assert_eq!(tiers(&rx), [2, 1, 1]);
    index.reset_namespaces(&[]);
    assert_eq!(tiers(&rx), [0, 1, 1]);
}

#[test]
fn malformed_annotations_are_ignored() {
    let (mut index, rx) = three_zones(Some("same-cluster=lots"));
    assert_eq!(tiers(&rx), [0, 1, 1]);
    index.apply_namespace(&namespace("shop", Some("bogus")));
    assert_eq!(tiers(&rx), [0, 1, 1]);
}

#[test]
fn annotations_reach_mirrored_endpoints() {
    let mut index = Index::new("west", "cluster.local");
    index.apply_service(&service(
        "books",
        "10.0.0.7",
        &[(CLUSTER_NAME, "east")],
        &[
            (REMOTE_SVC_FQ_NAME, "books.shop.svc.cluster.local"),
            (BALANCER_TIERS, "other-cluster=9"),
        ],
    ));
    index.apply_slice(&slice("books", "books-1", &[("198.18.0.9", "", true)]));
    let rx = index.subscribe(&books(), "a");
    assert_eq!(tiers(&rx), [9]);
}
