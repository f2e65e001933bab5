use kube::CustomResourceExt;

use super::*;

const CRD_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/trafficsplit.yaml");

fn split(annotations: &[(&str, &str)], backends: &[(&str, u32)]) -> TrafficSplit {
    let mut s = TrafficSplit::new(
        "web",
        TrafficSplitSpec {
            service: "web".into(),
            backends: backends
                .iter()
                .map(|(b, w)| TrafficSplitBackend {
                    service: b.to_string(),
                    weight: *w,
                })
                .collect(),
        },
    );
    s.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    s
}

/// The checked-in CRD must be what the Rust types generate. Regenerate with
/// `MESHLINK_REGENERATE_CRDS=1 cargo test -p api crd_yaml`.
#[test]
fn crd_yaml_matches_types() {
    crate::check_crd_yaml(CRD_PATH, "api::split::TrafficSplit", &TrafficSplit::crd());
}

#[test]
fn crd_is_smi_v1alpha2() {
    let crd = TrafficSplit::crd();
    assert_eq!(crd.spec.group, "split.smi-spec.io");
    assert_eq!(crd.spec.names.plural, "trafficsplits");
    assert_eq!(crd.spec.versions[0].name, "v1alpha2");
    // An SMI object as users write it deserializes.
    let s: TrafficSplit = serde_json::from_value(serde_json::json!({
        "apiVersion": "split.smi-spec.io/v1alpha2",
        "kind": "TrafficSplit",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"service": "web", "backends": [{"service": "web-west", "weight": 100}]}
    }))
    .unwrap();
    assert_eq!(weights(&s)["web-west"], 100);
}

#[test]
fn primary_alone_puts_every_other_backend_in_tier_one() {
    let s = split(&[(PRIMARY, "a")], &[("a", 100), ("b", 80), ("c", 20)]);
    let p = Policy::of(&s).unwrap();
    assert_eq!(p.tiers, [vec!["a"], vec!["b", "c"]]);
    assert_eq!(p.tier_of("c"), Some(1));
    assert_eq!(p.tier_of("z"), None);
}

#[test]
fn order_gives_the_chain_with_shared_tiers() {
    let s = split(
        &[(PRIMARY, "a"), (ORDER, " a , b | c ,d")],
        &[("a", 1), ("b", 1), ("c", 1), ("d", 1)],
    );
    assert_eq!(
        Policy::of(&s).unwrap().tiers,
        [vec!["a"], vec!["b", "c"], vec!["d"]]
    );
}

#[test]
fn bad_policies_name_the_problem() {
    let backends = [("a", 1), ("b", 1)];
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[(ORDER, "a")], "\"b\" is not in"),
        (&[], "neither"),
        (&[(PRIMARY, "z")], "\"z\" is not a backend"),
        (&[(ORDER, "a,,b")], "empty entry"),
        (&[(ORDER, "a,a,b")], "twice"),
        (&[(PRIMARY, "b"), (ORDER, "a,b")], "first tier"),
    ];
    for (annotations, want) in cases {
        let err = Policy::of(&split(annotations, &backends))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{annotations:?}: {err}");
    }
}

#[test]
fn original_weights_and_backend_keys() {
    let s = split(&[(ORIGINAL_WEIGHTS, r#"{"a":80,"b":20}"#)], &[("a", 0)]);
    assert_eq!(
        original_weights(&s).unwrap(),
        BTreeMap::from([("a".into(), 80), ("b".into(), 20)])
    );
    assert_eq!(
        original_weights(&split(&[(ORIGINAL_WEIGHTS, "{")], &[])),
        None
    );
    assert_eq!(backend_key("shop", "web"), ("shop".into(), "web".into()));
    assert_eq!(
        backend_key("shop", "web.other"),
        ("other".into(), "web".into())
    );
}
