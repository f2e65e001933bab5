//! `meshlink export` / `unexport`: set or remove the `mirror.meshlink.io/exported`
//! label on a Service with a merge patch, leaving every other label alone.

use api::labels;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::cli::{GlobalArgs, OutputFormat};
use crate::error::{CliError, is_not_found};
use crate::output;
use crate::target::connect;

/// Sets the label to `value`, or removes it when `value` is `None`; returns what
/// to print.
pub async fn run(
    global: &GlobalArgs,
    service: &str,
    value: Option<&str>,
) -> Result<String, CliError> {
    let target = connect(global).await?;
    let namespace = target.namespace(global);
    let api: Api<Service> = Api::namespaced(target.client.clone(), &namespace);
    let patch = json!({"metadata": {"labels": {labels::EXPORTED: value}}});
    let verb = if value.is_some() {
        "exporting"
    } else {
        "unexporting"
    };
    let patched = match api
        .patch(service, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(svc) => svc,
        Err(e) if is_not_found(&e) => {
            return Err(CliError::Failed(format!(
                "service {service:?} not found in namespace {namespace:?} on cluster at {} (context {:?}); check the name and -n",
                target.endpoint.server, target.endpoint.context
            )));
        }
        Err(e) => {
            return Err(target
                .endpoint
                .error(&format!("{verb} service {namespace}/{service}"), e));
        }
    };
    match global.output {
        None | Some(OutputFormat::Table) => Ok(match value {
            Some(v) => format!(
                "service/{service} in namespace {namespace} exported ({}={v})\n",
                labels::EXPORTED
            ),
            None => format!("service/{service} in namespace {namespace} unexported\n"),
        }),
        Some(OutputFormat::Yaml) => output::to_yaml(&output::value(&patched)?),
        Some(OutputFormat::Json) => output::to_json(&output::value::<Service>(&patched)?),
    }
}

/// The label value for `export [--remote-discovery]`.
pub fn export_value(remote_discovery: bool) -> &'static str {
    if remote_discovery {
        labels::EXPORTED_REMOTE_DISCOVERY
    } else {
        labels::EXPORTED_GATEWAY
    }
}
