//! `meshlink check`, run against a source cluster: named checks with pass, warn or
//! fail and a hint each, for the Link CRD, every Link of every namespace or of
//! `-n`'s (spec, trust bundles, gateway, mirror controller leadership, mirror
//! endpoints, credentials, remote API, remote permissions), orphan mirrors and
//! component versions. `--wait`
//! retries until nothing fails or the time is up, with a spinner on a terminal.

mod health;
mod progress;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use api::labels;
use api::link::Link;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};

use crate::cli::{CheckArgs, GlobalArgs, OutputFormat};
use crate::error::{CliError, Endpoint, is_not_found};
use crate::output;
use crate::target::{Target, connect};

/// How one check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All good.
    Pass,
    /// Works, but look at it.
    Warn,
    /// Broken.
    Fail,
}

/// One named check's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// e.g. `link east: remote API`.
    pub name: String,
    /// Pass, warn or fail.
    pub outcome: Outcome,
    /// What was found, and for warn/fail what to do about it.
    pub detail: String,
}

fn check(name: &str, outcome: Outcome, detail: impl Into<String>) -> Check {
    Check {
        name: name.to_owned(),
        outcome,
        detail: detail.into(),
    }
}

/// Runs the checks (again, until they pass, with `--wait`); returns the report and,
/// when a check failed, the error that sets the exit code.
pub async fn run(
    global: &GlobalArgs,
    args: &CheckArgs,
) -> Result<(String, Option<CliError>), CliError> {
    let wait = match &args.wait {
        Some(text) => crate::render::parse_duration("--wait", text).map_err(CliError::Usage)?,
        None => 0,
    };
    let deadline = Instant::now() + Duration::from_secs(wait.unsigned_abs());
    let target = connect(global).await?;
    let mut progress = progress::Progress::new(deadline);
    let checks = loop {
        let checks = match all_checks(&target, global.namespace.as_deref()).await {
            Ok(checks) => checks,
            Err(e) => {
                // The error line must not land after a half-drawn spinner.
                progress.finish();
                return Err(e);
            }
        };
        let failing: Vec<&str> = checks
            .iter()
            .filter(|c| c.outcome == Outcome::Fail)
            .map(|c| c.name.as_str())
            .collect();
        if failing.is_empty() || Instant::now() >= deadline {
            progress.finish();
            break checks;
        }
        progress.wait_a_second(&failing).await;
    };
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.outcome == Outcome::Fail)
        .map(|c| c.name.as_str())
        .collect();
    let error = (!failed.is_empty()).then(|| {
        CliError::Failed(format!(
            "{} check(s) failed: {}",
            failed.len(),
            failed.join(", ")
        ))
    });
    Ok((render(&checks, global.output)?, error))
}

/// Every check; with `namespace`, only that namespace's Links are checked (the
/// orphan check still knows every Link, so another namespace's mirrors are not
/// called orphans).
async fn all_checks(target: &Target, namespace: Option<&str>) -> Result<Vec<Check>, CliError> {
    let links: Api<Link> = Api::all(target.client.clone());
    let links = match links.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) if is_not_found(&e) => {
            return Ok(vec![check(
                "Link CRD",
                Outcome::Fail,
                "links.multicluster.meshlink.io is not installed; apply api/crds/link.yaml",
            )]);
        }
        Err(e) => return Err(target.endpoint.error("listing Links", e)),
    };
    let selected: Vec<&Link> = links
        .iter()
        .filter(|l| namespace.is_none_or(|ns| l.namespace().as_deref() == Some(ns)))
        .collect();
    let scope = namespace.map_or_else(String::new, |ns| format!(" in namespace {ns}"));
    let mut checks = vec![check(
        "Link CRD",
        Outcome::Pass,
        format!("{} Link(s){scope}", selected.len()),
    )];
    for link in selected {
        checks.extend(link_checks(target, link).await?);
    }
    checks.push(orphan_mirrors(target, &links).await?);
    checks.push(versions(target).await?);
    Ok(checks)
}

/// Checks of what runs in this cluster for `link`: its mirror controller's Lease
/// and its mirrors' endpoints.
async fn mirror_checks(target: &Target, link: &Link) -> Result<Vec<Check>, CliError> {
    let cluster = &link.spec.target_cluster_name;
    let name = |what: &str| format!("link {cluster}: {what}");
    let ns = link.namespace().unwrap_or_default();
    let link_name = link.name_any();
    let leases: Api<Lease> = Api::namespaced(target.client.clone(), &ns);
    let lease = leases
        .get_opt(&health::lease_name(&link_name))
        .await
        .map_err(|e| target.endpoint.error("reading the mirror Lease", e))?;
    let selector = format!(
        "{}=true,{}={cluster}",
        labels::MIRRORED,
        labels::CLUSTER_NAME
    );
    let params = ListParams::default().labels(&selector);
    let services: Api<Service> = Api::all(target.client.clone());
    let mirrors = services
        .list(&params)
        .await
        .map_err(|e| target.endpoint.error("listing mirror Services", e))?;
    let slices: Api<EndpointSlice> = Api::all(target.client.clone());
    let slices = slices
        .list(&params)
        .await
        .map_err(|e| target.endpoint.error("listing mirror EndpointSlices", e))?;
    Ok(vec![
        health::leader(
            &name("mirror controller"),
            &link_name,
            lease.as_ref(),
            Timestamp::now(),
        ),
        health::endpoints(&name("mirror endpoints"), &mirrors.items, &slices.items),
    ])
}

async fn versions(target: &Target) -> Result<Check, CliError> {
    let deployments: Api<Deployment> = Api::all(target.client.clone());
    let list = deployments
        .list(&ListParams::default().labels(health::PART_OF))
        .await
        .map_err(|e| target.endpoint.error("listing meshlink Deployments", e))?;
    Ok(health::versions(&list.items, env!("CARGO_PKG_VERSION")))
}

async fn link_checks(target: &Target, link: &Link) -> Result<Vec<Check>, CliError> {
    let cluster = &link.spec.target_cluster_name;
    let name = |what: &str| format!("link {cluster}: {what}");
    let mut checks = Vec::new();
    match link.spec.validate() {
        Ok(()) => checks.push(check(&name("spec"), Outcome::Pass, "valid")),
        Err(e) => checks.push(check(
            &name("spec"),
            Outcome::Fail,
            format!("{e}; fix the Link"),
        )),
    }
    checks.push(health::trust(&name("trust bundles"), link));
    checks.push(gateway_check(&name("gateway"), link));
    checks.extend(mirror_checks(target, link).await?);
    let remote = match remote_client(target, link).await? {
        Ok(remote) => remote,
        Err(reason) => {
            checks.push(check(&name("credentials"), Outcome::Fail, reason));
            return Ok(checks);
        }
    };
    checks.push(check(
        &name("credentials"),
        Outcome::Pass,
        "kubeconfig Secret is usable",
    ));
    let services: Api<Service> = Api::all(remote.client.clone());
    match services.list(&ListParams::default().limit(1)).await {
        Ok(_) => checks.push(check(
            &name("remote API"),
            Outcome::Pass,
            remote.endpoint.server.clone(),
        )),
        Err(e) => {
            let hint = remote_hint(&e, cluster);
            // Not `Endpoint::error`: its "check --context" hint is about the local
            // kubeconfig, while this one came from the Secret.
            let line = match &e {
                kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
                other => crate::error::root_cause(other),
            };
            let line = format!("listing Services at {}: {line}", remote.endpoint.server);
            checks.push(check(
                &name("remote API"),
                Outcome::Fail,
                format!("{line}; {hint}"),
            ));
            return Ok(checks);
        }
    }
    checks.push(permissions_check(&name("remote permissions"), &remote).await);
    Ok(checks)
}

fn remote_hint(err: &kube::Error, cluster: &str) -> String {
    match err {
        kube::Error::Api(s) if s.code == 401 => format!(
            "the token was revoked or expired: rerun `meshlink link --cluster-name {cluster}` against {cluster} and apply its output here"
        ),
        kube::Error::Api(s) if s.code == 403 => {
            "the ServiceAccount lacks read access: apply `meshlink allow` in the target".into()
        }
        _ => "check the server URL in the Secret (meshlink link --api-server-address)".into(),
    }
}

fn gateway_check(name: &str, link: &Link) -> Check {
    let status = link.status.clone().unwrap_or_default();
    let at = format!(
        "{:?}:{}",
        link.spec.gateway_addresses, link.spec.gateway_port
    );
    match status.gateway_alive {
        Some(true) => check(name, Outcome::Pass, format!("alive at {at}")),
        Some(false) => check(
            name,
            Outcome::Fail,
            format!("not alive at {at}; check the gateway pods and the addresses in the Link"),
        ),
        None => check(
            name,
            Outcome::Warn,
            "no probe result yet; is the mirror controller for this Link running?",
        ),
    }
}

/// A client for the Link's target built from its Secret; `Ok(Err(reason))` when
/// the Secret is missing or unusable.
async fn remote_client(target: &Target, link: &Link) -> Result<Result<Target, String>, CliError> {
    let ns = link.namespace().unwrap_or_default();
    let secret_name = &link.spec.credentials_secret;
    let secrets: Api<Secret> = Api::namespaced(target.client.clone(), &ns);
    let what = format!("reading Secret {ns}/{secret_name}");
    let Some(secret) = secrets
        .get_opt(secret_name)
        .await
        .map_err(|e| target.endpoint.error(&what, e))?
    else {
        return Ok(Err(format!(
            "Secret {ns}/{secret_name} not found; apply `meshlink link` output again"
        )));
    };
    let data = secret.data.unwrap_or_default();
    let Some(bytes) = data.get(labels::REMOTE_KUBECONFIG_KEY) else {
        return Ok(Err(format!(
            "Secret {ns}/{secret_name} has no key {:?}",
            labels::REMOTE_KUBECONFIG_KEY
        )));
    };
    let text = String::from_utf8_lossy(&bytes.0);
    let bad = |e: String| format!("Secret {ns}/{secret_name} holds an unusable kubeconfig: {e}");
    let kubeconfig = match Kubeconfig::from_yaml(&text) {
        Ok(k) => k,
        Err(e) => return Ok(Err(bad(e.to_string()))),
    };
    let context = kubeconfig.current_context.clone().unwrap_or_default();
    let config =
        match kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await
        {
            Ok(mut c) => {
                c.connect_timeout = Some(Duration::from_secs(5));
                c
            }
            Err(e) => return Ok(Err(bad(e.to_string()))),
        };
    let server = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_owned();
    let client = match Client::try_from(config.clone()) {
        Ok(c) => c,
        Err(e) => return Ok(Err(bad(e.to_string()))),
    };
    Ok(Ok(Target {
        client,
        config,
        endpoint: Endpoint { server, context },
    }))
}

/// What the remote mirror needs, checked with SelfSubjectAccessReviews.
async fn permissions_check(name: &str, remote: &Target) -> Check {
    let needed = [
        ("", "services"),
        ("", "namespaces"),
        ("discovery.k8s.io", "endpointslices"),
    ];
    let api: Api<SelfSubjectAccessReview> = Api::all(remote.client.clone());
    let mut missing = Vec::new();
    for (group, resource) in needed {
        for verb in ["list", "watch"] {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(group.to_owned()),
                        resource: Some(resource.to_owned()),
                        verb: Some(verb.to_owned()),
                        ..ResourceAttributes::default()
                    }),
                    ..SelfSubjectAccessReviewSpec::default()
                },
                ..SelfSubjectAccessReview::default()
            };
            match api.create(&PostParams::default(), &review).await {
                Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => {}
                Ok(_) => missing.push(format!("{verb} {resource}")),
                Err(e) => {
                    let line = remote.endpoint.error("reviewing access", e);
                    return check(name, Outcome::Fail, line.to_string());
                }
            }
        }
    }
    if missing.is_empty() {
        check(
            name,
            Outcome::Pass,
            "can list and watch services, endpointslices, namespaces",
        )
    } else {
        let missing = missing.join(", ");
        check(
            name,
            Outcome::Fail,
            format!("cannot {missing}; apply `meshlink allow` in the target"),
        )
    }
}

async fn orphan_mirrors(target: &Target, links: &[Link]) -> Result<Check, CliError> {
    let services: Api<Service> = Api::all(target.client.clone());
    let selector = format!("{}=true", labels::MIRRORED);
    let mirrors = services
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| target.endpoint.error("listing mirror Services", e))?;
    let linked: BTreeSet<&str> = links
        .iter()
        .map(|l| l.spec.target_cluster_name.as_str())
        .collect();
    let orphans: BTreeSet<String> = mirrors
        .items
        .iter()
        .filter_map(|s| s.labels().get(labels::CLUSTER_NAME).cloned())
        .filter(|c| !linked.contains(c.as_str()))
        .collect();
    Ok(if orphans.is_empty() {
        check(
            "orphan mirrors",
            Outcome::Pass,
            format!("{} mirror Service(s), all linked", mirrors.items.len()),
        )
    } else {
        let clusters: Vec<String> = orphans.into_iter().collect();
        check(
            "orphan mirrors",
            Outcome::Warn,
            format!(
                "mirrors of unlinked cluster(s) {}; remove them with `meshlink unlink --cluster-name <name> --apply`",
                clusters.join(", ")
            ),
        )
    })
}

/// The report: a table (default) or a list of `{name, result, detail}`.
pub fn render(checks: &[Check], format: Option<OutputFormat>) -> Result<String, CliError> {
    let word = |o: Outcome| match o {
        Outcome::Pass => "ok",
        Outcome::Warn => "warn",
        Outcome::Fail => "FAIL",
    };
    let values: Vec<serde_json::Value> = checks
        .iter()
        .map(|c| serde_json::json!({"name": c.name, "result": word(c.outcome), "detail": c.detail}))
        .collect();
    match format {
        Some(OutputFormat::Yaml) => output::to_yaml(&values.into()),
        Some(OutputFormat::Json) => output::to_json(&values.into()),
        None | Some(OutputFormat::Table) => {
            let rows: Vec<Vec<String>> = checks
                .iter()
                .map(|c| vec![c.name.clone(), word(c.outcome).to_owned(), c.detail.clone()])
                .collect();
            Ok(output::table(&["CHECK", "RESULT", "DETAIL"], &rows))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_matches_golden() {
        let checks = [
            check("Link CRD", Outcome::Pass, "1 Link(s)"),
            check(
                "link east: gateway",
                Outcome::Warn,
                "no probe result yet; is the mirror controller for this Link running?",
            ),
            check("link east: remote API", Outcome::Fail, "token rejected"),
        ];
        let out =
            render(&checks, None).unwrap() + &render(&checks, Some(OutputFormat::Json)).unwrap();
        crate::golden::check("check.txt", &out);
    }

    #[test]
    fn revoked_token_hint_says_to_relink() {
        let status = kube::core::Status::failure("Unauthorized", "Unauthorized").with_code(401);
        let hint = remote_hint(&kube::Error::Api(Box::new(status)), "east");
        assert!(
            hint.contains("rerun `meshlink link --cluster-name east`"),
            "{hint}"
        );
    }
}
