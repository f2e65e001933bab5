//! ServiceAccount tokens from a real apiserver, limited by real RBAC: this is how a
//! mirror controller will read a remote cluster.

// A failed unwrap is a failed test, which is what tests are for.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use multicluster_tests::Harness;
use serde_json::json;

async fn apply<K>(api: Api<K>, obj: serde_json::Value)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug,
    K: serde::de::DeserializeOwned + serde::Serialize,
{
    let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
    api.patch(
        &name,
        &PatchParams::apply("rbac-test").force(),
        &Patch::Apply(obj),
    )
    .await
    .unwrap();
}

fn status_code<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> u16 {
    match result {
        Err(kube::Error::Api(status)) => status.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn service_account_token_reads_services_in_one_namespace_only() {
    let harness = Harness::builder().cluster("east").start().await.unwrap();
    let east = harness.cluster("east");
    let admin = east.client();
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    for ns in ["shop", "other"] {
        apply(
            Api::<Namespace>::all(admin.clone()),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await;
    }
    // kube-controller-manager's serviceaccount controller creates `default` in new
    // namespaces: wait for it on a watch.
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "shop");
    let mut events = watcher::watcher(sas, watcher::Config::default()).boxed();
    let default_sa = async {
        while let Some(event) = events.try_next().await.unwrap() {
            if let Event::Apply(sa) | Event::InitApply(sa) = event
                && sa.metadata.name.as_deref() == Some("default")
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), default_sa)
        .await
        .expect("default ServiceAccount from kube-controller-manager");

    apply(
        Api::<ServiceAccount>::namespaced(admin.clone(), "shop"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "mirror"}}),
    )
    .await;
    apply(Api::<Role>::namespaced(admin.clone(), "shop"), json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "read-services"},
        "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]}],
    })).await;
    apply(Api::<RoleBinding>::namespaced(admin.clone(), "shop"), json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "mirror-reads-services"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-services"},
        "subjects": [{"kind": "ServiceAccount", "name": "mirror", "namespace": "shop"}],
    })).await;

    let token = east.service_account_token("shop", "mirror").await.unwrap();
    let mirror = east.client_with_token(&token).await.unwrap();
    let lp = ListParams::default();
    Api::<Service>::namespaced(mirror.clone(), "shop")
        .list(&lp)
        .await
        .unwrap();
    let secrets = Api::<Secret>::namespaced(mirror.clone(), "shop")
        .list(&lp)
        .await;
    assert_eq!(status_code(secrets), 403);
    let elsewhere = Api::<Service>::namespaced(mirror.clone(), "other")
        .list(&lp)
        .await;
    assert_eq!(status_code(elsewhere), 403);

    let bogus = east.client_with_token("not-a-token").await.unwrap();
    let anonymous = Api::<Service>::namespaced(bogus, "shop").list(&lp).await;
    assert_eq!(status_code(anonymous), 401);
}
