use std::net::IpAddr;

use api::link::MirrorReason;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::fixtures::*;

fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

fn mirror_of(index: &Index, key: &ServiceKey) -> MirrorObjects {
    match index.desired(key) {
        Desired::Mirror { objects, .. } => *objects,
        other => panic!("expected a mirror, got {other:?}"),
    }
}

fn books() -> ServiceKey {
    ServiceKey::new("shop", "books")
}

#[test]
fn apply_marks_dirty_and_desires_a_mirror() {
    let mut index = Index::new(arc_spec());
    index.reset_namespaces(vec![namespace("shop")]);
    index.apply_service(exported("shop", "books"));
    assert_eq!(index.take_dirty(), [books()]);
    assert!(index.take_dirty().is_empty());
    let m = mirror_of(&index, &books());
    assert_eq!(m.service.metadata.name.as_deref(), Some("books-east"));
}

#[test]
fn unexport_and_delete_make_the_mirror_absent() {
    let mut index = Index::new(arc_spec());
    index.apply_service(exported("shop", "books"));
    index.take_dirty();
    index.apply_service(service("shop", "books", &[], &[("http", 8080)]));
    assert_eq!(index.take_dirty(), [books()]);
    assert_eq!(index.desired(&books()), Desired::Absent);

    index.apply_service(exported("shop", "books"));
    index.delete_service(&books());
    assert_eq!(index.take_dirty(), [books()]);
    assert_eq!(index.desired(&books()), Desired::Absent);
}

#[test]
fn reset_dirties_vanished_services() {
    let mut index = Index::new(arc_spec());
    index.apply_service(exported("shop", "books"));
    index.apply_service(exported("shop", "maps"));
    index.take_dirty();
    index.reset_services(vec![exported("shop", "maps")]);
    assert_eq!(
        index.take_dirty(),
        [books(), ServiceKey::new("shop", "maps")]
    );
    assert_eq!(index.desired(&books()), Desired::Absent);
}

#[test]
fn slices_update_the_owning_mirror() {
    let mut index = Index::new(arc_spec());
    index.set_gateway(GatewayState {
        alive: true,
        addresses: vec!["10.9.0.1".parse::<IpAddr>().unwrap()],
    });
    index.apply_service(exported("shop", "books"));
    let ready = |index: &Index| {
        mirror_of(index, &books()).slices[0].endpoints[0]
            .conditions
            .as_ref()
            .unwrap()
            .ready
    };
    assert_eq!(ready(&index), Some(false), "no remote endpoints yet");
    index.take_dirty();
    let s = slice(
        "shop",
        "books",
        "books-1",
        &[("10.1.0.5", true, None, None)],
    );
    index.apply_slice(s.clone());
    assert_eq!(index.take_dirty(), [books()]);
    assert_eq!(ready(&index), Some(true));
    index.delete_slice(&s);
    assert_eq!(index.take_dirty(), [books()]);
    assert_eq!(ready(&index), Some(false));
}

#[test]
fn gateway_death_dirties_every_mirror() {
    let mut index = Index::new(arc_spec());
    index.apply_service(exported("shop", "books"));
    index.apply_service(exported("shop", "maps"));
    index.take_dirty();
    let mut gw = GatewayState {
        alive: true,
        addresses: vec!["10.9.0.1".parse::<IpAddr>().unwrap()],
    };
    index.set_gateway(gw.clone());
    assert_eq!(index.take_dirty().len(), 2);
    index.set_gateway(gw.clone());
    assert!(
        index.take_dirty().is_empty(),
        "unchanged state is not a change"
    );
    gw.alive = false;
    index.set_gateway(gw);
    assert_eq!(index.take_dirty().len(), 2);
}

#[test]
fn missing_namespace_skips_until_it_appears() {
    let mut index = Index::new(arc_spec());
    index.reset_namespaces(vec![namespace("default")]);
    index.apply_service(exported("shop", "books"));
    match index.desired(&books()) {
        Desired::Skipped { reason, message } => {
            assert_eq!(reason, MirrorReason::MissingNamespace);
            assert!(message.contains("shop"));
        }
        other => panic!("{other:?}"),
    }
    index.take_dirty();
    index.apply_namespace(&namespace("shop"));
    assert_eq!(index.take_dirty(), [books()]);
    assert!(matches!(
        index.desired(&books()),
        Desired::Mirror {
            create_namespace: false,
            ..
        }
    ));
}

#[test]
fn missing_namespace_is_created_when_the_link_says_so() {
    let mut spec = spec();
    spec.create_missing_namespaces = true;
    let mut index = Index::new(Arc::new(spec));
    index.reset_namespaces(vec![]);
    index.apply_service(exported("shop", "books"));
    assert!(matches!(
        index.desired(&books()),
        Desired::Mirror {
            create_namespace: true,
            ..
        }
    ));
}

#[test]
fn invalid_services_are_skipped_with_a_reason() {
    let mut index = Index::new(arc_spec());
    let long = "b".repeat(60);
    index.apply_service(exported("shop", &long));
    assert!(matches!(
        index.desired(&ServiceKey::new("shop", long)),
        Desired::Skipped {
            reason: MirrorReason::InvalidService,
            ..
        }
    ));
}

#[test]
fn orphans_are_local_mirrors_without_an_export() {
    let mut index = Index::new(arc_spec());
    index.apply_service(exported("shop", "books"));
    index.apply_service(service("shop", "private", &[], &[("http", 80)]));
    let local = vec![
        books(),
        ServiceKey::new("shop", "private"),
        ServiceKey::new("shop", "gone"),
        ServiceKey::new("shop", "gone"),
    ];
    assert_eq!(
        index.orphans(local),
        [
            ServiceKey::new("shop", "gone"),
            ServiceKey::new("shop", "private")
        ]
    );
}

#[test]
fn mirrored_key_reads_the_labels_written_by_desired() {
    let mut index = Index::new(arc_spec());
    index.set_gateway(GatewayState {
        alive: true,
        addresses: vec!["10.9.0.1".parse::<IpAddr>().unwrap()],
    });
    index.apply_service(exported("shop", "books"));
    let m = mirror_of(&index, &books());
    assert_eq!(mirrored_key(&m.service.metadata), Some(books()));
    assert_eq!(
        mirrored_key(&m.slices.first().unwrap().metadata),
        Some(books())
    );
}
