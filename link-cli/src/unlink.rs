//! `meshlink unlink`, run against the source cluster: find everything one Link
//! owns (the Link, its credentials Secret, the mirror Services and EndpointSlices
//! labelled with its cluster name), print it, and delete it with `--apply`.
//!
//! Mirrors are matched on both `mirrored=true` and `cluster-name=<name>`, the
//! labels the mirror controller writes, so a user's own object that merely shares
//! one label is never deleted.

use api::labels;
use api::link::Link;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams};
use kube::{Resource, ResourceExt};

use crate::cli::{GlobalArgs, OutputFormat, UnlinkArgs};
use crate::error::{CliError, is_not_found};
use crate::output;
use crate::target::{Target, connect};

/// One object belonging to the link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owned {
    /// Kind, e.g. `Service`.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Runs `unlink`; returns what to print.
pub async fn run(global: &GlobalArgs, args: &UnlinkArgs) -> Result<String, CliError> {
    let target = connect(global).await?;
    let namespace = global.multicluster_namespace();
    let owned = find_owned(&target, namespace, &args.cluster_name).await?;
    if args.apply {
        for object in &owned {
            delete(&target, object).await?;
        }
    }
    render(&owned, &args.cluster_name, args.apply, global.output)
}

async fn find_owned(
    target: &Target,
    namespace: &str,
    cluster: &str,
) -> Result<Vec<Owned>, CliError> {
    let mut owned = Vec::new();
    if let Some(link) = find_link(target, namespace, cluster).await? {
        owned.push(owned_of("Link", &link));
        let secrets: Api<Secret> = Api::namespaced(target.client.clone(), namespace);
        let secret_name = &link.spec.credentials_secret;
        let secret = secrets
            .get_opt(secret_name)
            .await
            .map_err(|e| target.endpoint.error("reading the Link's Secret", e))?;
        owned.extend(secret.as_ref().map(|s| owned_of("Secret", s)));
    }
    let mirrors = ListParams::default().labels(&format!(
        "{}=true,{}={cluster}",
        labels::MIRRORED,
        labels::CLUSTER_NAME
    ));
    let services: Api<Service> = Api::all(target.client.clone());
    let list = services
        .list(&mirrors)
        .await
        .map_err(|e| target.endpoint.error("listing mirror Services", e))?;
    owned.extend(list.items.iter().map(|s| owned_of("Service", s)));
    let slices: Api<EndpointSlice> = Api::all(target.client.clone());
    let list = slices
        .list(&mirrors)
        .await
        .map_err(|e| target.endpoint.error("listing mirror EndpointSlices", e))?;
    owned.extend(list.items.iter().map(|s| owned_of("EndpointSlice", s)));
    Ok(owned)
}

/// The Link named after the cluster, else the one whose spec names it. A cluster
/// without the Link CRD has no Links.
async fn find_link(
    target: &Target,
    namespace: &str,
    cluster: &str,
) -> Result<Option<Link>, CliError> {
    let links: Api<Link> = Api::namespaced(target.client.clone(), namespace);
    match links.list(&ListParams::default()).await {
        Ok(list) => {
            let mut items = list.items;
            let by_name = items.iter().position(|l| l.name_any() == cluster);
            let by_spec = items
                .iter()
                .position(|l| l.spec.target_cluster_name == cluster);
            Ok(by_name.or(by_spec).map(|i| items.swap_remove(i)))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(target.endpoint.error("listing Links", e)),
    }
}

fn owned_of<K: Resource>(kind: &'static str, object: &K) -> Owned {
    Owned {
        kind,
        namespace: object.meta().namespace.clone().unwrap_or_default(),
        name: object.meta().name.clone().unwrap_or_default(),
    }
}

async fn delete(target: &Target, object: &Owned) -> Result<(), CliError> {
    let resource = match object.kind {
        "Link" => ApiResource::erase::<Link>(&()),
        "Secret" => ApiResource::erase::<Secret>(&()),
        "Service" => ApiResource::erase::<Service>(&()),
        _ => ApiResource::erase::<EndpointSlice>(&()),
    };
    let (ns, name) = (object.namespace.as_str(), object.name.as_str());
    let api: Api<DynamicObject> = Api::namespaced_with(target.client.clone(), ns, &resource);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        // Already gone (e.g. the mirror controller removed it first): fine.
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(target
            .endpoint
            .error(&format!("deleting {} {ns}/{name}", object.kind), e)),
    }
}

/// The listing: a table (default), or YAML/JSON references.
pub fn render(
    owned: &[Owned],
    cluster: &str,
    applied: bool,
    format: Option<OutputFormat>,
) -> Result<String, CliError> {
    let refs: Vec<serde_json::Value> = owned
        .iter()
        .map(|o| serde_json::json!({"kind": o.kind, "namespace": o.namespace, "name": o.name}))
        .collect();
    match format {
        Some(OutputFormat::Yaml) => output::to_yaml(&serde_json::Value::from(refs)),
        Some(OutputFormat::Json) => output::to_json(&serde_json::Value::from(refs)),
        None | Some(OutputFormat::Table) => {
            if owned.is_empty() {
                return Ok(format!("nothing belongs to link {cluster:?}\n"));
            }
            let rows: Vec<Vec<String>> = owned
                .iter()
                .map(|o| vec![o.kind.to_owned(), o.namespace.clone(), o.name.clone()])
                .collect();
            let footer = if applied {
                format!("deleted {} objects of link {cluster:?}\n", owned.len())
            } else {
                format!(
                    "{} objects would be deleted; pass --apply to delete them\n",
                    owned.len()
                )
            };
            Ok(output::table(&["KIND", "NAMESPACE", "NAME"], &rows) + &footer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;

    fn owned() -> Vec<Owned> {
        let o = |kind, namespace: &str, name: &str| Owned {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        };
        vec![
            o("Link", "meshlink-multicluster", "east"),
            o("Secret", "meshlink-multicluster", "link-east-credentials"),
            o("Service", "shop", "web-east"),
            o("EndpointSlice", "shop", "web-east-x7k2p"),
        ]
    }

    #[test]
    fn listing_matches_golden_in_each_format() {
        let mut out = render(&owned(), "east", false, None).unwrap();
        out += &render(&owned(), "east", true, None).unwrap();
        out += &render(&[], "east", false, None).unwrap();
        out += &render(&owned(), "east", false, Some(OutputFormat::Yaml)).unwrap();
        golden::check("unlink.txt", &out);
    }
}
