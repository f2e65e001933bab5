//! The top of one Link's mirror controller: leader election, reading the Link
//! and its credentials, starting a [`Session`], restarting it when the Link or
//! Secret changes, reporting unusable input on the Link's status (with backoff,
//! never a crash loop), and cleaning up every mirror when the Link is deleted.

use std::sync::Arc;
use std::time::Duration;

use api::labels;
use api::link::{CONDITION_REMOTE_REACHABLE, Link};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher::watch_object;
use kube::{Api, Client, Config, ResourceExt};
use tokio::sync::watch;

use crate::error::Error;
use crate::lease::{Elector, LeaseConfig};
use crate::metrics::Metrics;
use crate::session::{Session, SessionConfig};
use crate::writer::delete_all_mirrors;
use api::identity::SpiffeId;
use proxy::tls::{Credentials, TrustBundle};

/// Name used for Events, the Lease prefix and logs.
pub const CONTROLLER_NAME: &str = "meshlink-mirror";

/// How one controller process runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Link name.
    pub link: String,
    /// Link namespace (also where the Secret and Lease live).
    pub namespace: String,
    /// This replica's identity for the Lease (pod name).
    pub identity: String,
    /// Lease validity.
    pub lease_duration: Duration,
    /// The controller's own credentials for probing gateways (`None`: no probes,
    /// gateway endpoints stay not ready).
    pub probe_identity: Option<ProbeIdentity>,
    /// Session knobs.
    pub session: SessionConfig,
}

/// PEM credentials presented to gateways; the Link's remote trust bundle is
/// added to `bundles` per session.
#[derive(Clone, Debug)]
pub struct ProbeIdentity {
    /// Leaf first, then intermediates.
    pub chain_pem: Vec<u8>,
    /// Private key.
    pub key_pem: Vec<u8>,
    /// The local mesh's trust bundles.
    pub bundles: Vec<TrustBundle>,
}

/// Runs until `shutdown` turns true: waits for leadership, mirrors while
/// leader, steps down if the lease is lost, releases it on shutdown.
pub async fn run(
    local: Client,
    opts: Options,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let lease_api: Api<Lease> = Api::namespaced(local.clone(), &opts.namespace);
    let mut elector = Elector::new(
        lease_api,
        LeaseConfig {
            name: format!("{CONTROLLER_NAME}-{}", opts.link),
            identity: opts.identity.clone(),
            duration: opts.lease_duration,
            renew_every: opts.lease_duration / 3,
        },
    );
    loop {
        tokio::select! {
            _ = elector.acquire() => {}
            _ = stopped(&mut shutdown) => return,
        }
        tracing::info!(identity = %opts.identity, "leading");
        tokio::select! {
            _ = elector.hold() => tracing::warn!("lost leadership; stopping writes"),
            _ = link_loop(&local, &opts, &metrics) => {}
            _ = stopped(&mut shutdown) => {
                elector.release().await;
                return;
            }
        }
    }
}

/// Resolves once shutdown is requested (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// What the Link currently asks for.
enum Prepared {
    Missing,
    Deleting(Box<Link>),
    Ready(Box<Session>, String),
}

/// Reads the Link and runs sessions forever.
async fn link_loop(local: &Client, opts: &Options, metrics: &Metrics) {
    let recorder = Recorder::new(
        local.clone(),
        Reporter {
            controller: CONTROLLER_NAME.into(),
            instance: Some(opts.identity.clone()),
        },
    );
    let mut failures: u32 = 0;
    loop {
        tracing::debug!(failures, "reading link");
        let delay = backoff(failures);
        match prepare(local, opts, metrics, &recorder).await {
            Ok(Prepared::Missing) => {
                tracing::info!(link = %opts.link, "link not found; waiting");
                wait_link_change(local, opts, delay).await;
            }
            Ok(Prepared::Deleting(link)) => {
                if let Err(e) = finalize(local, &link).await {
                    tracing::warn!(error = %e, "link cleanup failed; retrying");
                    failures = failures.saturating_add(1);
                }
                wait_link_change(local, opts, delay).await;
            }
            Ok(Prepared::Ready(session, secret_rv)) => {
                tracing::debug!("link and credentials loaded");
                failures = 0;
                let link = session.link.clone();
                tokio::select! {
                    _ = session.run() => {}
                    _ = inputs_changed(local, &link, secret_rv) => {
                        tracing::info!("link or credentials changed; restarting");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot mirror link");
                report_error(local, opts, &e, &recorder).await;
                failures = failures.saturating_add(1);
                wait_link_change(local, opts, delay).await;
            }
        }
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(500)
        .saturating_mul(1 << failures.min(6))
        .min(Duration::from_secs(30))
}

async fn prepare(
    local: &Client,
    opts: &Options,
    metrics: &Metrics,
    recorder: &Recorder,
) -> Result<Prepared, Error> {
    let links: Api<Link> = Api::namespaced(local.clone(), &opts.namespace);
    let Some(link) = links.get_opt(&opts.link).await? else {
        return Ok(Prepared::Missing);
    };
    if link.metadata.deletion_timestamp.is_some() {
        return Ok(Prepared::Deleting(Box::new(link)));
    }
    let link_name = format!("{}/{}", opts.namespace, opts.link);
    link.spec.validate().map_err(|e| Error::InvalidLink {
        name: link_name,
        reason: e.0,
    })?;
    tracing::debug!("link read; loading credentials");
    let (remote, secret_rv) =
        remote_client(local, &opts.namespace, &link.spec.credentials_secret).await?;
    tracing::debug!("remote client built");
    let tls = probe_tls(opts, &link)?;
    ensure_finalizer(&links, &link).await?;
    let session = Session {
        metrics: metrics.for_cluster(&link.spec.target_cluster_name),
        link: Arc::new(link),
        local: local.clone(),
        remote,
        tls,
        recorder: recorder.clone(),
        config: opts.session.clone(),
    };
    Ok(Prepared::Ready(Box::new(session), secret_rv))
}

/// The probe's TLS config and the gateway identity it must see; `None` when
/// this controller has no credentials or the Link names no gateway identity.
fn probe_tls(
    opts: &Options,
    link: &Link,
) -> Result<Option<(Arc<rustls::ClientConfig>, SpiffeId)>, Error> {
    let (Some(own), Some(gateway)) = (&opts.probe_identity, &link.spec.gateway_identity) else {
        return Ok(None);
    };
    let invalid = |reason: String| Error::InvalidLink {
        name: format!("{}/{}", opts.namespace, opts.link),
        reason,
    };
    let gateway = SpiffeId::parse(gateway)
        .map_err(|e| invalid(format!("gatewayIdentity {gateway:?}: {e}")))?;
    let mut bundles = own.bundles.clone();
    if let Some(pem) = &link.spec.remote_trust_bundle {
        let domain = Some(gateway.trust_domain().to_string());
        let bundle = TrustBundle::from_pem(domain, pem.as_bytes())
            .map_err(|e| invalid(format!("remoteTrustBundle: {e}")))?;
        bundles.push(bundle);
    }
    let creds = Credentials::from_pem(&own.chain_pem, &own.key_pem, bundles).map_err(Error::Tls)?;
    let config = creds.client_config(&[]).map_err(Error::Tls)?;
    Ok(Some((config, gateway)))
}

/// Builds a client for the target cluster from the Link's Secret; returns it
/// with the Secret's resourceVersion. Errors name the problem, never the contents.
pub async fn remote_client(
    local: &Client,
    namespace: &str,
    secret: &str,
) -> Result<(Client, String), Error> {
    let name = format!("{namespace}/{secret}");
    let bad = |reason: &str| Error::InvalidCredentials {
        name: name.clone(),
        reason: reason.into(),
    };
    let secrets: Api<Secret> = Api::namespaced(local.clone(), namespace);
    let secret = secrets
        .get_opt(secret)
        .await?
        .ok_or_else(|| bad("not found"))?;
    let type_ = secret.type_.as_deref().unwrap_or_default();
    if type_ != labels::REMOTE_KUBECONFIG_SECRET_TYPE {
        return Err(bad(&format!(
            "type is {type_:?}, expected {:?}",
            labels::REMOTE_KUBECONFIG_SECRET_TYPE
        )));
    }
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(labels::REMOTE_KUBECONFIG_KEY))
        .ok_or_else(|| bad(&format!("has no {:?} key", labels::REMOTE_KUBECONFIG_KEY)))?;
    let text = std::str::from_utf8(&bytes.0).map_err(|_| bad("kubeconfig is not UTF-8"))?;
    let kubeconfig = Kubeconfig::from_yaml(text).map_err(|e| Error::Kubeconfig {
        name: name.clone(),
        source: e,
    })?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig {
            name: name.clone(),
            source: e,
        })?;
    let client = Client::try_from(config).map_err(Error::Client)?;
    Ok((client, secret.metadata.resource_version.unwrap_or_default()))
}

async fn ensure_finalizer(links: &Api<Link>, link: &Link) -> Result<(), Error> {
    let mut finalizers = link.metadata.finalizers.clone().unwrap_or_default();
    if finalizers.iter().any(|f| f == labels::LINK_FINALIZER) {
        return Ok(());
    }
    finalizers.push(labels::LINK_FINALIZER.into());
    set_finalizers(links, link, &finalizers).await
}

/// Replaces the Link's finalizers, provided it has not changed since it was read
/// (the resourceVersion makes the write conditional).
async fn set_finalizers(
    links: &Api<Link>,
    link: &Link,
    finalizers: &[String],
) -> Result<(), Error> {
    let patch = serde_json::json!({ "metadata": {
        "finalizers": finalizers,
        "resourceVersion": link.metadata.resource_version,
    }});
    links
        .patch(
            &link.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// The Link is being deleted: remove its mirrors, then its finalizer.
async fn finalize(local: &Client, link: &Link) -> Result<(), Error> {
    let finalizers = link.metadata.finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == labels::LINK_FINALIZER) {
        return Ok(());
    }
    let deleted = delete_all_mirrors(local, &link.spec.target_cluster_name).await?;
    tracing::info!(deleted, "link deleted; mirrors removed");
    let remaining: Vec<String> = finalizers
        .into_iter()
        .filter(|f| f != labels::LINK_FINALIZER)
        .collect();
    let links: Api<Link> = Api::namespaced(
        local.clone(),
        link.metadata.namespace.as_deref().unwrap_or_default(),
    );
    set_finalizers(&links, link, &remaining).await
}

/// Puts an unusable Link or Secret on the Link's status and as an Event.
async fn report_error(local: &Client, opts: &Options, err: &Error, recorder: &Recorder) {
    let links: Api<Link> = Api::namespaced(local.clone(), &opts.namespace);
    let condition = Condition {
        type_: CONDITION_REMOTE_REACHABLE.into(),
        status: "False".into(),
        reason: err.condition_reason().into(),
        message: err.to_string(),
        last_transition_time: Time(Timestamp::now()),
        observed_generation: None,
    };
    let patch = serde_json::json!({ "status": {
        "remoteReachable": false,
        "conditions": [condition],
    }});
    match links
        .patch_status(&opts.link, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(link) => {
            let event = kube::runtime::events::Event {
                type_: kube::runtime::events::EventType::Warning,
                reason: err.condition_reason().into(),
                note: Some(err.to_string()),
                action: "Mirror".into(),
                secondary: None,
            };
            use kube::Resource;
            if let Err(e) = recorder.publish(&event, &link.object_ref(&())).await {
                tracing::debug!(error = %e, "cannot publish event");
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot report on link status"),
    }
}

/// Resolves after `delay`, or earlier when the Link changes.
async fn wait_link_change(local: &Client, opts: &Options, delay: Duration) {
    let links: Api<Link> = Api::namespaced(local.clone(), &opts.namespace);
    let changes = watch_object(links, &opts.link).skip(1);
    futures::pin_mut!(changes);
    let _ = tokio::time::timeout(delay, changes.next()).await;
}

/// Resolves when the Link's spec or deletion state, or its Secret, changes.
async fn inputs_changed(local: &Client, link: &Link, secret_rv: String) {
    let namespace = link.metadata.namespace.clone().unwrap_or_default();
    let links: Api<Link> = Api::namespaced(local.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(local.clone(), &namespace);
    let generation = link.metadata.generation;
    let link_changed = watch_object(links, &link.name_any()).filter(move |l| {
        let changed = match l {
            Ok(Some(l)) => {
                l.metadata.generation != generation || l.metadata.deletion_timestamp.is_some()
            }
            Ok(None) => true,
            Err(_) => false,
        };
        futures::future::ready(changed)
    });
    let secret_changed = watch_object(secrets, &link.spec.credentials_secret).filter(move |s| {
        let changed = match s {
            Ok(Some(s)) => s.metadata.resource_version.as_deref() != Some(secret_rv.as_str()),
            Ok(None) => true,
            Err(_) => false,
        };
        futures::future::ready(changed)
    });
    futures::pin_mut!(link_changed, secret_changed);
    tokio::select! {
        _ = link_changed.next() => {}
        _ = secret_changed.next() => {}
    }
}
