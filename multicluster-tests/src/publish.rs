//! Publishing pods as the endpoints of a selector-less Service, with an EndpointSlice
//! written the way an EndpointSlice controller would (zone, ready condition,
//! `kubernetes.io/service-name`), managed by `harness.meshlink.io`.

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::error::{Error, Result};
use crate::pod::Pod;

/// Field manager and `endpointslice.kubernetes.io/managed-by` value of the harness.
pub const MANAGER: &str = "harness.meshlink.io";

/// Server-side applies namespace `ns`: creates it, or leaves it as it is.
pub(crate) async fn apply_namespace(client: &kube::Client, ns: &str) -> Result<()> {
    let pp = PatchParams::apply(MANAGER).force();
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
    Api::<Namespace>::all(client.clone())
        .patch(ns, &pp, &Patch::Apply(namespace))
        .await
        .map_err(Error::kube(format!("applying namespace {ns}")))?;
    Ok(())
}

/// Server-side applies namespace `ns`, Service `ns/name` (one TCP port named `tcp`,
/// no selector) and EndpointSlice `ns/<name>-harness` listing `pods` as ready
/// endpoints in their zones. Calling again replaces the endpoint list.
pub(crate) async fn publish(
    client: kube::Client,
    ns: &str,
    name: &str,
    port: u16,
    pods: &[&Pod],
) -> Result<()> {
    let pp = PatchParams::apply(MANAGER).force();
    apply_namespace(&client, ns).await?;

    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": [{"name": "tcp", "port": port, "targetPort": port, "protocol": "TCP"}]},
    });
    Api::<Service>::namespaced(client.clone(), ns)
        .patch(name, &pp, &Patch::Apply(service))
        .await
        .map_err(Error::kube(format!("applying service {ns}/{name}")))?;

    let slice_name = format!("{name}-harness");
    let slice = endpoint_slice(ns, name, &slice_name, port, pods);
    Api::<EndpointSlice>::namespaced(client, ns)
        .patch(&slice_name, &pp, &Patch::Apply(slice))
        .await
        .map_err(Error::kube(format!(
            "applying endpointslice {ns}/{slice_name}"
        )))?;
    Ok(())
}

fn endpoint_slice(
    ns: &str,
    service: &str,
    name: &str,
    port: u16,
    pods: &[&Pod],
) -> serde_json::Value {
    let endpoints: Vec<_> = pods
        .iter()
        .map(|p| {
            json!({
                "addresses": [p.ip().to_string()],
                "zone": p.zone(),
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "hostname": p.name(),
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": name, "namespace": ns,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": MANAGER,
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "tcp", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}
