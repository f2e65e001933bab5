//! The least-privilege access a remote mirror controller needs on a target
//! cluster: read Services, EndpointSlices and Namespaces, nothing else (no
//! Secrets, no writes). `allow` prints it; `link` applies it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Name of the ClusterRole; its rules never vary, so every binding shares it.
pub const CLUSTER_ROLE: &str = "meshlink-remote-mirror";

/// The three objects granting a ServiceAccount read access for mirroring.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteAccess {
    /// The account the remote mirror controller's token belongs to.
    pub service_account: ServiceAccount,
    /// Read-only rules on services, endpointslices and namespaces.
    pub cluster_role: ClusterRole,
    /// Binds the role to the account, named after both so accounts do not collide.
    pub binding: ClusterRoleBinding,
}

/// Builds the access objects for ServiceAccount `namespace/name`.
pub fn remote_mirror_access(namespace: &str, name: &str) -> RemoteAccess {
    let read = || vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()];
    let rule = |group: &str, resources: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: read(),
        ..PolicyRule::default()
    };
    RemoteAccess {
        service_account: ServiceAccount {
            metadata: meta(Some(namespace), name),
            ..ServiceAccount::default()
        },
        cluster_role: ClusterRole {
            metadata: meta(None, CLUSTER_ROLE),
            rules: Some(vec![
                rule("", &["services", "namespaces"]),
                rule("discovery.k8s.io", &["endpointslices"]),
            ]),
            ..ClusterRole::default()
        },
        binding: ClusterRoleBinding {
            metadata: meta(None, &format!("{CLUSTER_ROLE}-{namespace}-{name}")),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".to_owned(),
                kind: "ClusterRole".to_owned(),
                name: CLUSTER_ROLE.to_owned(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".to_owned(),
                name: name.to_owned(),
                namespace: Some(namespace.to_owned()),
                ..Subject::default()
            }]),
        },
    }
}

impl RemoteAccess {
    /// The objects in apply order, as JSON values with apiVersion and kind.
    pub fn to_values(&self) -> Result<Vec<serde_json::Value>, crate::error::CliError> {
        Ok(vec![
            crate::output::value(&self.service_account)?,
            crate::output::value(&self.cluster_role)?,
            crate::output::value(&self.binding)?,
        ])
    }
}

fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(BTreeMap::from([
            (
                "app.kubernetes.io/part-of".to_owned(),
                "meshlink".to_owned(),
            ),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                crate::FIELD_MANAGER.to_owned(),
            ),
        ])),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_only_reads_what_mirroring_needs() {
        let access = remote_mirror_access("meshlink-multicluster", "mirror-west");
        let rules = access.cluster_role.rules.unwrap();
        let mut granted: Vec<String> = rules
            .iter()
            .flat_map(|r| r.resources.clone().unwrap())
            .collect();
        granted.sort();
        assert_eq!(granted, ["endpointslices", "namespaces", "services"]);
        assert!(rules.iter().all(|r| r.verbs == ["get", "list", "watch"]));
        let subject = &access.binding.subjects.unwrap()[0];
        assert_eq!(subject.name, "mirror-west");
        assert_eq!(subject.namespace.as_deref(), Some("meshlink-multicluster"));
    }
}
