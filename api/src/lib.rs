//! The contract every meshlink crate shares: the Link and TrafficSplit custom
//! resources, label and annotation keys, SPIFFE identity names, the discovery and identity protocols
//! and the transport-header codec. It performs no I/O, so every other crate can depend
//! on it without pulling in a runtime.

pub mod certify;
pub mod discovery;
pub mod identity;
pub mod labels;
pub mod link;
pub mod split;
pub mod transport_header;

/// The check both CRD tests share: the checked-in YAML at `path` must be what
/// the Rust type `name` generates (`MESHLINK_REGENERATE_CRDS=1` rewrites it).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn check_crd_yaml(
    path: &str,
    name: &str,
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) {
    let generated = format!(
        "# Generated from {name}; do not edit.\n{}",
        serde_yaml_ng::to_string(crd).unwrap()
    );
    if std::env::var_os("MESHLINK_REGENERATE_CRDS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
        std::fs::write(path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{path} is stale: run MESHLINK_REGENERATE_CRDS=1 cargo test -p api crd_yaml"
    );
}
