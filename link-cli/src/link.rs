//! `meshlink link`, run against the target cluster: find its gateway, grant the
//! source's mirror controller read access, mint its token, and print the Link and
//! credentials Secret for the source cluster.
//!
//! Every check that can fail on input (gateway, selector, TTL, namespace) runs
//! before the first write, so a failed `link` leaves the target untouched.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Resource;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use crate::cli::{GlobalArgs, LinkArgs};
use crate::error::CliError;
use crate::rbac::{RemoteAccess, remote_mirror_access};
use crate::render::{
    Gateway, LinkPlan, gateway_from_service, parse_selector, parse_ttl, pem_bundle,
    token_kubeconfig,
};
use crate::target::{Target, connect};
use crate::{FIELD_MANAGER, output};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// What `link` takes from its flags alone, checked before touching the cluster.
struct Inputs {
    namespace: String,
    ttl: i64,
    selector: Option<LabelSelector>,
    trust_bundle: Option<String>,
}

fn inputs(global: &GlobalArgs, args: &LinkArgs) -> Result<Inputs, CliError> {
    output::manifest_format(global.output)?;
    let selector = args.selector.as_deref().map(parse_selector).transpose();
    Ok(Inputs {
        namespace: global.multicluster_namespace().to_owned(),
        ttl: parse_ttl(&args.token_ttl).map_err(CliError::Usage)?,
        selector: selector.map_err(CliError::Usage)?,
        trust_bundle: args
            .remote_trust_bundle
            .as_deref()
            .map(read_trust_bundle)
            .transpose()?,
    })
}

/// Runs `link`; returns what to print.
pub async fn run(global: &GlobalArgs, args: &LinkArgs) -> Result<String, CliError> {
    let Inputs {
        namespace,
        ttl,
        selector,
        trust_bundle,
    } = inputs(global, args)?;
    let target = connect(global).await?;
    let gateway = find_gateway(&target, &namespace, args).await?;
    let plan = LinkPlan {
        cluster_name: args.cluster_name.clone(),
        namespace: namespace.clone(),
        cluster_domain: args.cluster_domain.clone(),
        gateway,
        selector,
        trust_bundle,
    };
    let link = plan
        .link()
        .map_err(|e| CliError::Usage(format!("{e}; check --cluster-name and the gateway flags")))?;
    ensure_namespace(&target, &namespace).await?;
    apply_access(
        &target,
        &remote_mirror_access(&namespace, &args.service_account),
    )
    .await?;
    let token = mint_token(&target, &namespace, &args.service_account, ttl).await?;
    let server = args
        .api_server_address
        .as_ref()
        .unwrap_or(&target.endpoint.server);
    let ca = target.config.root_cert.as_deref().map(pem_bundle);
    let kubeconfig = token_kubeconfig(&args.cluster_name, server, ca.as_deref(), &token);
    let objects = [
        output::value(&plan.secret(&kubeconfig))?,
        output::value(&link)?,
    ];
    output::manifests(&objects, global.output)
}

fn read_trust_bundle(path: &std::path::Path) -> Result<String, CliError> {
    let bad =
        |why: String| CliError::Usage(format!("--remote-trust-bundle {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    crate::render::check_pem_bundle(&text).map_err(bad)?;
    Ok(text)
}

async fn find_gateway(
    target: &Target,
    namespace: &str,
    args: &LinkArgs,
) -> Result<Gateway, CliError> {
    let mut gateway = if args.gateway_addresses.is_empty() {
        discover_gateway(target, namespace, args).await?
    } else {
        Gateway {
            addresses: args.gateway_addresses.clone(),
            port: api::link::DEFAULT_GATEWAY_PORT,
            probe_port: api::link::DEFAULT_PROBE_PORT,
            identity: None,
        }
    };
    if let Some(port) = args.gateway_port {
        gateway.port = port;
    }
    if let Some(port) = args.probe_port {
        gateway.probe_port = port;
    }
    if args.gateway_identity.is_some() {
        gateway.identity.clone_from(&args.gateway_identity);
    }
    Ok(gateway)
}

async fn discover_gateway(
    target: &Target,
    namespace: &str,
    args: &LinkArgs,
) -> Result<Gateway, CliError> {
    let ns = args.gateway_namespace.as_deref().unwrap_or(namespace);
    let name = &args.gateway_service;
    let services: Api<Service> = Api::namespaced(target.client.clone(), ns);
    let what = format!("reading gateway Service {ns}/{name}");
    let service = services
        .get_opt(name)
        .await
        .map_err(|e| target.endpoint.error(&what, e))?;
    let service = service.ok_or_else(|| {
        CliError::Failed(format!(
            "gateway Service {ns}/{name} not found on cluster at {} (context {:?}); install the gateway, or pass --gateway-service/--gateway-namespace or --gateway-addresses",
            target.endpoint.server, target.endpoint.context
        ))
    })?;
    let nodes = if service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("NodePort") {
        let api: Api<Node> = Api::all(target.client.clone());
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| target.endpoint.error("listing Nodes", e))?;
        list.items
    } else {
        Vec::new()
    };
    gateway_from_service(&service, &nodes).map_err(|reason| {
        CliError::Failed(format!(
            "gateway Service {ns}/{name} {reason}; pass --gateway-addresses"
        ))
    })
}

async fn ensure_namespace(target: &Target, namespace: &str) -> Result<(), CliError> {
    let api: Api<Namespace> = Api::all(target.client.clone());
    let found = api.get_opt(namespace).await.map_err(|e| {
        target
            .endpoint
            .error(&format!("reading namespace {namespace}"), e)
    })?;
    match found {
        Some(_) => Ok(()),
        None => Err(CliError::Failed(format!(
            "namespace {namespace:?} does not exist on cluster at {}; create it (or install meshlink-multicluster) or pass -n",
            target.endpoint.server
        ))),
    }
}

/// Server-side applies the ServiceAccount and RBAC; reapplying is a no-op, so
/// linking twice reuses the same account.
async fn apply_access(target: &Target, access: &RemoteAccess) -> Result<(), CliError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let sa_ns = access
        .service_account
        .metadata
        .namespace
        .as_deref()
        .unwrap_or_default();
    apply(
        Api::<ServiceAccount>::namespaced(target.client.clone(), sa_ns),
        &access.service_account,
        &params,
        target,
    )
    .await?;
    apply(
        Api::<ClusterRole>::all(target.client.clone()),
        &access.cluster_role,
        &params,
        target,
    )
    .await?;
    apply(
        Api::<ClusterRoleBinding>::all(target.client.clone()),
        &access.binding,
        &params,
        target,
    )
    .await
}

async fn apply<K>(
    api: Api<K>,
    object: &K,
    params: &PatchParams,
    target: &Target,
) -> Result<(), CliError>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let what = format!("applying {} {name}", K::kind(&()));
    api.patch(&name, params, &Patch::Apply(object))
        .await
        .map_err(|e| target.endpoint.error(&what, e))?;
    Ok(())
}

async fn mint_token(
    target: &Target,
    namespace: &str,
    account: &str,
    ttl: i64,
) -> Result<String, CliError> {
    let api: Api<ServiceAccount> = Api::namespaced(target.client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(ttl),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let what = format!("requesting a token for ServiceAccount {namespace}/{account}");
    let issued = api
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .map_err(|e| target.endpoint.error(&what, e))?;
    issued
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| CliError::Failed(format!("{what}: the apiserver returned no token")))
}
