//! Connecting to a cluster the way kubectl does: `--kubeconfig`, else `$KUBECONFIG`,
//! else `~/.kube/config`; `--context`, else the current context; `-n`, else the
//! context's namespace.
//!
//! Kubeconfig and context problems are caught here, before any request, so they
//! come out as usage errors that name the flag to fix.

use std::time::Duration;

use kube::Resource;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::NamespaceResourceScope;

use crate::cli::GlobalArgs;
use crate::error::{CliError, Endpoint};

/// A connected cluster: its client, configuration and where errors should point.
pub struct Target {
    /// Client for the selected context.
    pub client: kube::Client,
    /// The resolved configuration (server URL, CA, default namespace).
    pub config: kube::Config,
    /// Server and context, for error lines.
    pub endpoint: Endpoint,
}

impl Target {
    /// An API for `K` in `namespace`, or in every namespace when it is `None`
    /// (listings that take `-n` as a filter).
    pub fn api_in<K>(&self, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// The namespace from `-n`, else the context's namespace.
    pub fn namespace(&self, global: &GlobalArgs) -> String {
        global
            .namespace
            .clone()
            .unwrap_or_else(|| self.config.default_namespace.clone())
    }
}

/// Loads the kubeconfig and context selected by the global flags and builds a
/// client. Makes no request, so an unreachable cluster is reported by the first call.
pub async fn connect(global: &GlobalArgs) -> Result<Target, CliError> {
    let (kubeconfig, source) = read_kubeconfig(global)?;
    let context = match &global.context {
        Some(name) => {
            if !kubeconfig.contexts.iter().any(|c| &c.name == name) {
                let known: Vec<&str> = kubeconfig
                    .contexts
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect();
                return Err(CliError::Usage(format!(
                    "context {name:?} not found in {source} (contexts: {}); check --context",
                    known.join(", ")
                )));
            }
            name.clone()
        }
        None => kubeconfig.current_context.clone().ok_or_else(|| {
            CliError::Usage(format!("{source} has no current-context; pass --context"))
        })?,
    };
    let options = KubeConfigOptions {
        context: Some(context.clone()),
        ..KubeConfigOptions::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| {
            CliError::Usage(format!(
                "context {context:?} in {source} is unusable: {e}; check --kubeconfig/--context"
            ))
        })?;
    // An unreachable cluster should fail fast, not after kube's 30 s default.
    config.connect_timeout = Some(Duration::from_secs(10));
    let server = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_owned();
    let endpoint = Endpoint { server, context };
    let client = kube::Client::try_from(config.clone())
        .map_err(|e| endpoint.error("building a client", e))?;
    Ok(Target {
        client,
        config,
        endpoint,
    })
}

fn read_kubeconfig(global: &GlobalArgs) -> Result<(Kubeconfig, String), CliError> {
    match &global.kubeconfig {
        Some(path) => {
            let source = format!("kubeconfig {}", path.display());
            let config = Kubeconfig::read_from(path).map_err(|e| {
                CliError::Usage(format!(
                    "cannot read {source}: {}; check --kubeconfig",
                    crate::error::root_cause(&e)
                ))
            })?;
            Ok((config, source))
        }
        None => {
            let config = Kubeconfig::read().map_err(|e| {
                CliError::Usage(format!(
                    "cannot read the default kubeconfig ($KUBECONFIG or ~/.kube/config): {}; pass --kubeconfig",
                    crate::error::root_cause(&e)
                ))
            })?;
            Ok((config, "the default kubeconfig".to_owned()))
        }
    }
}
