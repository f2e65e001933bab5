//! Writes what the index desires into the local cluster: server-side apply
//! (field manager [`FIELD_MANAGER`]) for mirror Services, EndpointSlices and
//! created namespaces; deletes for mirrors that should not exist, treating
//! NotFound as success so every write is idempotent.

use std::collections::BTreeSet;

use api::labels;
use api::link::MirrorReason;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client};

use crate::desired::{MirrorObjects, mirror_labels};
use crate::error::{Error, is_not_found};
use crate::index::{Desired, ServiceKey};

/// Field manager of every server-side apply the mirror does.
pub const FIELD_MANAGER: &str = "meshlink-mirror";

/// Writes mirror objects for one Link into the local cluster.
#[derive(Clone)]
pub struct Writer {
    client: Client,
    cluster: String,
    /// Local mirror slices of this Link, to find stale ones without a list call.
    local_slices: Store<PartialObjectMeta<EndpointSlice>>,
}

impl Writer {
    /// A writer for mirrors of `cluster`.
    pub fn new(
        client: Client,
        cluster: String,
        local_slices: Store<PartialObjectMeta<EndpointSlice>>,
    ) -> Self {
        Self {
            client,
            cluster,
            local_slices,
        }
    }

    /// Makes the local cluster match `desired` for `key`. `previous` is what
    /// this writer last wrote for the key, so slices it wrote but the store
    /// has not seen yet are still cleaned up.
    pub async fn write(
        &self,
        key: &ServiceKey,
        desired: &Desired,
        previous: Option<&Desired>,
    ) -> Result<(), Error> {
        match desired {
            Desired::Mirror {
                objects,
                create_namespace,
            } => {
                if *create_namespace {
                    self.create_namespace(&key.namespace).await?;
                }
                self.apply_mirror(key, objects, previous).await
            }
            // A service that became unmirrorable (e.g. turned ExternalName) must
            // lose the mirror it had; nothing can exist in a missing namespace.
            Desired::Skipped {
                reason: MirrorReason::InvalidService,
                ..
            } => self.delete_mirror(key).await,
            Desired::Skipped { .. } => Ok(()),
            Desired::Absent => self.delete_mirror(key).await,
        }
    }

    async fn create_namespace(&self, name: &str) -> Result<(), Error> {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(labels::MIRRORED.to_string(), "true".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .patch(name, &apply_params(), &Patch::Apply(&ns))
            .await?;
        Ok(())
    }

    async fn apply_mirror(
        &self,
        key: &ServiceKey,
        objects: &MirrorObjects,
        previous: Option<&Desired>,
    ) -> Result<(), Error> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
        let name = objects.service.metadata.name.clone().unwrap_or_default();
        services
            .patch(&name, &apply_params(), &Patch::Apply(&objects.service))
            .await?;
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &key.namespace);
        let mut wanted = BTreeSet::new();
        for slice in &objects.slices {
            let slice_name = slice.metadata.name.clone().unwrap_or_default();
            slices
                .patch(&slice_name, &apply_params(), &Patch::Apply(slice))
                .await?;
            wanted.insert(slice_name);
        }
        for stale in self.known_slices(key, previous).difference(&wanted) {
            delete_ignoring_not_found(&slices, stale).await?;
        }
        Ok(())
    }

    /// Slice names of `key`'s mirror seen in the local store or last written.
    fn known_slices(&self, key: &ServiceKey, previous: Option<&Desired>) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self
            .local_slices
            .state()
            .iter()
            .filter(|s| crate::index::mirrored_key(&s.metadata).as_ref() == Some(key))
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        if let Some(Desired::Mirror { objects, .. }) = previous {
            names.extend(
                objects
                    .slices
                    .iter()
                    .filter_map(|s| s.metadata.name.clone()),
            );
        }
        names
    }

    async fn delete_mirror(&self, key: &ServiceKey) -> Result<(), Error> {
        let selector = selector(&mirror_labels(&self.cluster, &key.name));
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &key.namespace);
        slices
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels(&selector),
            )
            .await?;
        let services: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
        // Found by label rather than by the computed name, so a mirror whose name
        // rule changed is still collected.
        let existing = services
            .list_metadata(&ListParams::default().labels(&selector))
            .await?;
        for svc in existing {
            if let Some(name) = svc.metadata.name {
                delete_ignoring_not_found(&services, &name).await?;
            }
        }
        Ok(())
    }
}

/// Deletes every mirror Service and EndpointSlice of `cluster` in the local
/// cluster: the Link is going away.
pub async fn delete_all_mirrors(client: &Client, cluster: &str) -> Result<usize, Error> {
    let params = ListParams::default().labels(&cluster_selector(cluster));
    let slices: Api<EndpointSlice> = Api::all(client.clone());
    for s in slices.list_metadata(&params).await? {
        if let (Some(ns), Some(name)) = (s.metadata.namespace, s.metadata.name) {
            delete_ignoring_not_found(
                &Api::<EndpointSlice>::namespaced(client.clone(), &ns),
                &name,
            )
            .await?;
        }
    }
    let services: Api<Service> = Api::all(client.clone());
    let mut deleted = 0;
    for s in services.list_metadata(&params).await? {
        if let (Some(ns), Some(name)) = (s.metadata.namespace, s.metadata.name) {
            delete_ignoring_not_found(&Api::<Service>::namespaced(client.clone(), &ns), &name)
                .await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// `k=v,k=v` label selector.
fn selector(pairs: &std::collections::BTreeMap<String, String>) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The label selector matching every local mirror object of `cluster`.
pub fn cluster_selector(cluster: &str) -> String {
    format!(
        "{}=true,{}={cluster}",
        labels::MIRRORED,
        labels::CLUSTER_NAME
    )
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn delete_ignoring_not_found<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
