//! Pure translation of one remote Service (and its EndpointSlices) into the local
//! mirror objects a Link wants: no I/O, so every rule is unit-tested by calling
//! these functions.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use api::labels;
use api::link::{LinkSpec, is_dns_label, is_excluded, selector_matches};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Most endpoints written into one mirror EndpointSlice (the Kubernetes default).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// Label and annotation keys never copied from a remote Service: our own keys
/// (copying `exported` would make a two-way link mirror its mirrors) and
/// kubectl bookkeeping.
const ALWAYS_EXCLUDED: &[&str] = &["mirror.meshlink.io/*", "kubectl.kubernetes.io/*"];

/// How an exported Service is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Through the target cluster's gateway.
    Gateway,
    /// Straight to the remote pods (flat network).
    RemoteDiscovery,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Self::Gateway => labels::MODE_GATEWAY,
            Self::RemoteDiscovery => labels::MODE_REMOTE_DISCOVERY,
        }
    }
}

/// What the controller currently knows about the target cluster's gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayState {
    /// Whether the probe currently passes.
    pub alive: bool,
    /// Resolved gateway addresses.
    pub addresses: Vec<IpAddr>,
}

/// The local objects mirroring one remote Service.
#[derive(Clone, Debug, PartialEq)]
pub struct MirrorObjects {
    /// The mirror Service `<name>-<cluster>`.
    pub service: Service,
    /// Its EndpointSlices, with deterministic names.
    pub slices: Vec<EndpointSlice>,
}

/// A remote Service that is exported but cannot be mirrored as it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidService(pub String);

/// Which export selector a remote Service matches, if any. The gateway selector
/// wins when both match.
pub fn export_mode(spec: &LinkSpec, svc: &Service) -> Option<Mode> {
    let empty = BTreeMap::new();
    let labels = svc.metadata.labels.as_ref().unwrap_or(&empty);
    if selector_matches(&spec.selector, labels) {
        Some(Mode::Gateway)
    } else if selector_matches(&spec.remote_discovery_selector, labels) {
        Some(Mode::RemoteDiscovery)
    } else {
        None
    }
}

/// `<name>-<cluster>`, refused (not truncated) when it is not a valid Service name.
pub fn mirror_name(remote_name: &str, cluster: &str) -> Result<String, InvalidService> {
    let name = format!("{remote_name}-{cluster}");
    if name.len() > 63 {
        return Err(InvalidService(format!(
            "mirror name {name:?} is {} characters, longer than the 63 allowed",
            name.len()
        )));
    }
    if !is_dns_label(&name) {
        return Err(InvalidService(format!(
            "mirror name {name:?} is not a DNS label"
        )));
    }
    Ok(name)
}

/// Whether a Service is headless (`clusterIP: None`).
pub fn is_headless(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| ip == "None")
}

/// The mirror objects for `remote`, exported in `mode`, with the remote's
/// `remote_slices` and the current `gateway` state.
pub fn mirror_objects(
    spec: &LinkSpec,
    remote: &Service,
    mode: Mode,
    remote_slices: &[&EndpointSlice],
    gateway: &GatewayState,
) -> Result<MirrorObjects, InvalidService> {
    let service = mirror_service(spec, remote, mode)?;
    let slices = match mode {
        Mode::Gateway => gateway_slices(spec, &service, remote_slices, gateway),
        Mode::RemoteDiscovery => remote_discovery_slices(spec, &service, remote_slices),
    };
    Ok(MirrorObjects { service, slices })
}

/// The mirror Service: selector-less, ports copied, metadata filtered.
pub fn mirror_service(
    spec: &LinkSpec,
    remote: &Service,
    mode: Mode,
) -> Result<Service, InvalidService> {
    let remote_name = remote.metadata.name.as_deref().unwrap_or_default();
    let namespace = remote.metadata.namespace.clone().unwrap_or_default();
    let name = mirror_name(remote_name, &spec.target_cluster_name)?;
    let remote_spec = remote.spec.clone().unwrap_or_default();
    if remote_spec.type_.as_deref() == Some("ExternalName") {
        return Err(InvalidService(
            "ExternalName services cannot be mirrored".into(),
        ));
    }
    let headless = is_headless(remote);
    let ports: Vec<ServicePort> = remote_spec
        .ports
        .iter()
        .flatten()
        .map(|p| ServicePort {
            name: p.name.clone(),
            port: p.port,
            protocol: p.protocol.clone(),
            app_protocol: p.app_protocol.clone(),
            ..ServicePort::default()
        })
        .collect();
    if ports.is_empty() && !headless {
        return Err(InvalidService("service has no ports".into()));
    }

    let mut labels = filtered(remote.metadata.labels.as_ref(), &spec.excluded_labels);
    labels.extend(mirror_labels(&spec.target_cluster_name, remote_name));
    labels.insert(labels::MIRROR_MODE.into(), mode.label().into());
    let mut annotations = filtered(
        remote.metadata.annotations.as_ref(),
        &spec.excluded_annotations,
    );
    annotations.insert(
        labels::REMOTE_SVC_FQ_NAME.into(),
        format!(
            "{remote_name}.{namespace}.svc.{}",
            spec.target_cluster_domain
        ),
    );

    Ok(Service {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: headless.then(|| "None".into()),
            ports: (!ports.is_empty()).then_some(ports),
            publish_not_ready_addresses: remote_spec.publish_not_ready_addresses,
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// Labels every mirror object carries, so the controller can find its own.
pub fn mirror_labels(cluster: &str, remote_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::MIRRORED.into(), "true".into()),
        (labels::CLUSTER_NAME.into(), cluster.to_string()),
        (labels::REMOTE_SERVICE_NAME.into(), remote_name.into()),
    ])
}

fn filtered(
    source: Option<&BTreeMap<String, String>>,
    excluded: &[String],
) -> BTreeMap<String, String> {
    let always: Vec<String> = ALWAYS_EXCLUDED.iter().map(|s| s.to_string()).collect();
    source
        .into_iter()
        .flatten()
        .filter(|(k, _)| !is_excluded(k, excluded) && !is_excluded(k, &always))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether any remote endpoint is ready (a missing condition counts as ready,
/// as the EndpointSlice API specifies).
fn remote_has_ready(remote_slices: &[&EndpointSlice]) -> bool {
    remote_slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .any(endpoint_ready)
}

fn endpoint_ready(e: &Endpoint) -> bool {
    e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
}

/// Remote hostnames (StatefulSet pods of a headless service), sorted.
fn remote_hostnames(remote_slices: &[&EndpointSlice]) -> BTreeSet<String> {
    remote_slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter_map(|e| e.hostname.clone())
        .collect()
}

/// Gateway mode: the gateway's addresses on the gateway port, ready only while
/// the remote has ready endpoints and the probe passes. For a headless service
/// with hostnames, one endpoint per hostname so `<hostname>.<mirror>` resolves.
fn gateway_slices(
    spec: &LinkSpec,
    mirror: &Service,
    remote_slices: &[&EndpointSlice],
    gateway: &GatewayState,
) -> Vec<EndpointSlice> {
    let ready = gateway.alive && remote_has_ready(remote_slices);
    let ports: Vec<EndpointPort> = mirror
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| EndpointPort {
            name: p.name.clone(),
            port: Some(i32::from(spec.gateway_port)),
            protocol: p.protocol.clone(),
            app_protocol: p.app_protocol.clone(),
        })
        .collect();
    let hostnames: Vec<Option<String>> = if is_headless(mirror) {
        let names = remote_hostnames(remote_slices);
        if names.is_empty() {
            vec![None]
        } else {
            names.into_iter().map(Some).collect()
        }
    } else {
        vec![None]
    };
    let mut slices = Vec::new();
    for family in ["IPv4", "IPv6"] {
        let endpoints: Vec<Endpoint> = gateway
            .addresses
            .iter()
            .filter(|ip| address_type(ip) == family)
            .flat_map(|ip| {
                hostnames.iter().map(move |h| Endpoint {
                    addresses: vec![ip.to_string()],
                    hostname: h.clone(),
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(ready),
                        terminating: Some(false),
                    }),
                    ..Endpoint::default()
                })
            })
            .collect();
        if endpoints.is_empty() {
            continue;
        }
        let mut slice = slice_meta(
            spec,
            mirror,
            family,
            &format!("gw-{}", family.to_lowercase()),
        );
        if let Some(id) = &spec.gateway_identity {
            slice
                .metadata
                .annotations
                .get_or_insert_default()
                .insert(labels::ENDPOINT_IDENTITY.into(), id.clone());
        }
        slice.endpoints = endpoints;
        slice.ports = Some(ports.clone());
        slices.push(slice);
    }
    slices
}

fn address_type(ip: &IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// Remote-discovery mode: the remote pod addresses, zones, hostnames and
/// ports, regrouped into deterministic slices (by address type and port set).
fn remote_discovery_slices(
    spec: &LinkSpec,
    mirror: &Service,
    remote_slices: &[&EndpointSlice],
) -> Vec<EndpointSlice> {
    type Group = (String, Option<Vec<EndpointPort>>);
    let mut groups: BTreeMap<String, (Group, Vec<Endpoint>)> = BTreeMap::new();
    for rs in remote_slices {
        let ports = rs.ports.clone().map(|mut p| {
            p.sort_by(|a, b| a.name.cmp(&b.name));
            p
        });
        let key = format!(
            "{}|{}",
            rs.address_type,
            serde_json::to_string(&ports).unwrap_or_default()
        );
        let entry = groups
            .entry(key)
            .or_insert_with(|| ((rs.address_type.clone(), ports), Vec::new()));
        entry.1.extend(rs.endpoints.iter().map(|e| Endpoint {
            addresses: e.addresses.clone(),
            conditions: e.conditions.clone(),
            hostname: e.hostname.clone(),
            zone: e.zone.clone(),
            ..Endpoint::default()
        }));
    }
    let mut slices = Vec::new();
    for (index, ((address_type, ports), mut endpoints)) in groups.into_values().enumerate() {
        endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
        endpoints.dedup_by(|a, b| a.addresses == b.addresses);
        for (chunk_no, chunk) in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE).enumerate() {
            let suffix = format!("rd-{index}-{chunk_no}");
            let mut slice = slice_meta(spec, mirror, &address_type, &suffix);
            slice.endpoints = chunk.to_vec();
            slice.ports = ports.clone();
            slices.push(slice);
        }
    }
    slices
}

fn slice_meta(
    spec: &LinkSpec,
    mirror: &Service,
    address_type: &str,
    suffix: &str,
) -> EndpointSlice {
    let name = mirror.metadata.name.clone().unwrap_or_default();
    let remote_name = mirror
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::REMOTE_SERVICE_NAME))
        .cloned()
        .unwrap_or_default();
    let mut labels = mirror_labels(&spec.target_cluster_name, &remote_name);
    labels.insert(labels::SERVICE_NAME.into(), name.clone());
    labels.insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_MIRROR.into());
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{suffix}")),
            namespace: mirror.metadata.namespace.clone(),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        address_type: address_type.into(),
        endpoints: Vec::new(),
        ports: None,
    }
}

#[cfg(test)]
mod tests;
