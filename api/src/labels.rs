//! Label and annotation keys shared by the mirror controller, discovery and the CLI.
//!
//! They live in `api` so that the writer (the mirror) and every reader (discovery,
//! `meshlink check`) spell them the same way.

/// Label on a remote Service that exports it; see [`EXPORTED_GATEWAY`] and
/// [`EXPORTED_REMOTE_DISCOVERY`] for its values.
pub const EXPORTED: &str = "mirror.meshlink.io/exported";

/// Value of [`EXPORTED`] for services reached through the remote gateway.
pub const EXPORTED_GATEWAY: &str = "true";

/// Value of [`EXPORTED`] for services reached pod-to-pod on a flat network.
pub const EXPORTED_REMOTE_DISCOVERY: &str = "remote-discovery";

/// Label on a mirror Service or EndpointSlice: the target cluster's name.
pub const CLUSTER_NAME: &str = "mirror.meshlink.io/cluster-name";

/// Label on a mirror Service or EndpointSlice: the remote Service's name (the
/// namespace is the same on both sides).
pub const REMOTE_SERVICE_NAME: &str = "mirror.meshlink.io/remote-service-name";

/// Label on a mirror Service: how it is reached, [`MODE_GATEWAY`] or
/// [`MODE_REMOTE_DISCOVERY`].
pub const MIRROR_MODE: &str = "mirror.meshlink.io/mode";

/// Value of [`MIRROR_MODE`]: traffic goes through the remote gateway.
pub const MODE_GATEWAY: &str = "gateway";

/// Value of [`MIRROR_MODE`]: traffic goes straight to remote pods.
pub const MODE_REMOTE_DISCOVERY: &str = "remote-discovery";

/// Label marking any object the mirror controller wrote, so it can list its own.
pub const MIRRORED: &str = "mirror.meshlink.io/mirrored";

/// Annotation on a mirror Service: `<name>.<namespace>.svc.<domain>` of the
/// remote Service. An annotation, not a label, because it can exceed 63 chars.
pub const REMOTE_SVC_FQ_NAME: &str = "mirror.meshlink.io/remote-svc-fq-name";

/// Annotation on an EndpointSlice: the SPIFFE ID its endpoints present, which
/// proxies require of the peer. On a gateway-mode mirror slice it is the remote
/// gateway's identity.
pub const ENDPOINT_IDENTITY: &str = "identity.meshlink.io/spiffe-id";

/// Annotation on a mirror Service: the remote Service's resourceVersion last mirrored.
pub const REMOTE_RESOURCE_VERSION: &str = "mirror.meshlink.io/remote-resource-version";

/// Annotation on a Service or Namespace overriding the cost tiers discovery
/// gives its endpoints: `same-zone=0,same-cluster=1,other-cluster=2` (any subset).
pub const BALANCER_TIERS: &str = "balancer.meshlink.io/tiers";

/// Annotation on a local Service: `"true"` makes discovery balance it over its
/// own endpoints and those of its mirrors from linked clusters (the Services in
/// its namespace mirrored from a remote Service of the same name), which get the
/// other-cluster tier, so traffic crosses clusters only when the local tiers
/// cannot take it.
pub const BALANCER_INCLUDE_MIRRORS: &str = "balancer.meshlink.io/include-mirrors";

/// Standard EndpointSlice label naming the Service a slice belongs to.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// Standard EndpointSlice label naming the controller that manages it.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";

/// Value of [`MANAGED_BY`] on slices the mirror controller writes.
pub const MANAGED_BY_MIRROR: &str = "mirror.meshlink.io";

/// Type of the Secret holding a Link's kubeconfig for the target cluster.
pub const REMOTE_KUBECONFIG_SECRET_TYPE: &str = "meshlink.io/remote-kubeconfig";

/// Key of the kubeconfig inside a [`REMOTE_KUBECONFIG_SECRET_TYPE`] Secret.
pub const REMOTE_KUBECONFIG_KEY: &str = "kubeconfig";

/// Finalizer the mirror controller puts on a Link so it can remove the Link's
/// mirrors before the Link disappears.
pub const LINK_FINALIZER: &str = "multicluster.meshlink.io/mirror-cleanup";
