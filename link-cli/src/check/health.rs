//! The pure halves of the checks that read objects rather than call APIs: trust
//! bundles, the mirror controller's leader Lease, mirror endpoints and component
//! versions. Each turns already-fetched objects into one [`Check`], so golden
//! tests pin the exact wording of every hint.

use std::collections::BTreeSet;

use api::labels;
use api::link::Link;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::{Check, Outcome, check};

/// Name of the leader Lease of the mirror controller for Link `link`
/// (`mirror::controller::CONTROLLER_NAME` + link name).
pub fn lease_name(link: &str) -> String {
    format!("meshlink-mirror-{link}")
}

/// Label every chart-installed object carries; its version is `app.kubernetes.io/version`.
pub const PART_OF: &str = "app.kubernetes.io/part-of=meshlink";
const VERSION_LABEL: &str = "app.kubernetes.io/version";

/// The Link's own trust bundle, when it federates with another trust domain,
/// must be well-formed certificates; chain verification happens when the mirror
/// probes the gateway (the gateway check).
pub fn trust(name: &str, link: &Link) -> Check {
    let Some(bundle) = &link.spec.remote_trust_bundle else {
        return check(
            name,
            Outcome::Pass,
            "target shares this cluster's trust roots (no remoteTrustBundle)",
        );
    };
    match crate::render::check_pem_bundle(bundle) {
        Ok(()) => {
            let roots = bundle.matches("-----BEGIN CERTIFICATE-----").count();
            check(
                name,
                Outcome::Pass,
                format!("remoteTrustBundle holds {roots} root certificate(s)"),
            )
        }
        Err(e) => check(
            name,
            Outcome::Fail,
            format!(
                "remoteTrustBundle is not usable: {e}; rerun `meshlink link --remote-trust-bundle <PEM>` against {}",
                link.spec.target_cluster_name
            ),
        ),
    }
}

/// A mirror controller is running and leads when its Lease has a holder whose
/// last renewal is within the lease duration.
pub fn leader(name: &str, link: &str, lease: Option<&Lease>, now: Timestamp) -> Check {
    let lease_name = lease_name(link);
    let start_hint = format!(
        "start it: `meshlink install --set links[0].name={link}` (Deployment meshlink-mirror-{link})"
    );
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return check(
            name,
            Outcome::Fail,
            format!("no mirror controller has taken Lease {lease_name}; {start_hint}"),
        );
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let renewed = spec.renew_time.as_ref().map(|t| t.0);
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    match renewed {
        _ if holder.is_empty() => check(
            name,
            Outcome::Fail,
            format!("Lease {lease_name} has no holder (released); {start_hint}"),
        ),
        Some(t) if now.as_second() - t.as_second() <= duration => check(
            name,
            Outcome::Pass,
            format!("{holder} leads (Lease {lease_name})"),
        ),
        Some(t) => check(
            name,
            Outcome::Fail,
            format!(
                "leader {holder} stopped renewing Lease {lease_name} {}s ago; check the mirror pods' logs or {start_hint}",
                now.as_second() - t.as_second()
            ),
        ),
        None => check(
            name,
            Outcome::Fail,
            format!("Lease {lease_name} was never renewed; {start_hint}"),
        ),
    }
}

/// Every mirror Service of the cluster has an EndpointSlice with a ready endpoint.
pub fn endpoints(name: &str, mirrors: &[Service], slices: &[EndpointSlice]) -> Check {
    if mirrors.is_empty() {
        return check(name, Outcome::Pass, "no mirror Services yet");
    }
    let owner = |s: &EndpointSlice| {
        let svc = s
            .labels()
            .get(labels::SERVICE_NAME)
            .cloned()
            .unwrap_or_default();
        (s.namespace().unwrap_or_default(), svc)
    };
    let with_slice: BTreeSet<(String, String)> = slices.iter().map(owner).collect();
    let with_ready: BTreeSet<(String, String)> = slices
        .iter()
        .filter(|s| {
            s.endpoints
                .iter()
                .any(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        })
        .map(owner)
        .collect();
    let key = |s: &Service| (s.namespace().unwrap_or_default(), s.name_any());
    let show = |set: Vec<&Service>| {
        let names: Vec<String> = set
            .iter()
            .map(|s| format!("{}/{}", key(s).0, key(s).1))
            .collect();
        names.join(", ")
    };
    let no_slice: Vec<&Service> = mirrors
        .iter()
        .filter(|s| !with_slice.contains(&key(s)))
        .collect();
    let not_ready: Vec<&Service> = mirrors
        .iter()
        .filter(|s| !with_ready.contains(&key(s)))
        .collect();
    if !no_slice.is_empty() {
        return check(
            name,
            Outcome::Fail,
            format!(
                "mirror(s) without EndpointSlices: {}; check the mirror controller's logs and the Link's conditions",
                show(no_slice)
            ),
        );
    }
    if !not_ready.is_empty() {
        return check(
            name,
            Outcome::Warn,
            format!(
                "mirror(s) without ready endpoints: {}; the gateway is down or the remote Service has no ready pods",
                show(not_ready)
            ),
        );
    }
    check(
        name,
        Outcome::Pass,
        format!(
            "{} mirror Service(s), all with ready endpoints",
            mirrors.len()
        ),
    )
}

/// Installed components (Deployments labelled part-of=meshlink) run this CLI's version.
pub fn versions(deployments: &[Deployment], cli: &str) -> Check {
    const NAME: &str = "versions";
    if deployments.is_empty() {
        return check(
            NAME,
            Outcome::Warn,
            format!(
                "no meshlink Deployments ({PART_OF}); install with `meshlink install | kubectl apply -f -`"
            ),
        );
    }
    let stale: Vec<String> = deployments
        .iter()
        .filter_map(|d| {
            let version = d
                .labels()
                .get(VERSION_LABEL)
                .map_or("unknown", String::as_str);
            (version != cli).then(|| {
                format!(
                    "{}/{} {version}",
                    d.namespace().unwrap_or_default(),
                    d.name_any()
                )
            })
        })
        .collect();
    if stale.is_empty() {
        check(
            NAME,
            Outcome::Pass,
            format!(
                "{} Deployment(s) at {cli}, as is this CLI",
                deployments.len()
            ),
        )
    } else {
        check(
            NAME,
            Outcome::Warn,
            format!(
                "this CLI is {cli} but {}; upgrade with `meshlink install | kubectl apply -f -` (or use the matching CLI)",
                stale.join(", ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use serde_json::json;

    use super::*;
    use crate::check::render;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn link(bundle: Option<&str>) -> Link {
        let mut link: Link = from(json!({
            "apiVersion": "multicluster.meshlink.io/v1alpha1", "kind": "Link",
            "metadata": {"name": "east", "namespace": "meshlink-multicluster"},
            "spec": {"targetClusterName": "east", "credentialsSecret": "s"},
        }));
        link.spec.remote_trust_bundle = bundle.map(str::to_owned);
        link
    }

    fn lease(holder: Option<&str>, renewed: &str) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(renewed.parse().unwrap())),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    fn service(ns: &str, name: &str) -> Service {
        from(json!({"metadata": {"name": name, "namespace": ns}}))
    }

    fn slice(ns: &str, service: &str, ready: bool) -> EndpointSlice {
        from(
            json!({"metadata": {"name": format!("{service}-x"), "namespace": ns,
                     "labels": {labels::SERVICE_NAME: service}},
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": ["198.18.0.40"], "conditions": {"ready": ready}}]}),
        )
    }

    fn deployment(name: &str, version: &str) -> Deployment {
        from(json!({"metadata": {"name": name, "namespace": "meshlink",
                     "labels": {VERSION_LABEL: version}}}))
    }

    #[test]
    fn report_of_every_outcome_matches_golden() {
        let now: Timestamp = "2026-11-22T06:00:00Z".parse().unwrap();
        let pem = crate::render::pem_bundle(&[vec![1u8; 40], vec![2u8; 40]]);
        let web = || service("shop", "web-east");
        let checks = [
            trust("link east: trust bundles", &link(None)),
            trust("link east: trust bundles", &link(Some(&pem))),
            trust("link east: trust bundles", &link(Some("garbage"))),
            leader(
                "link east: mirror controller",
                "east",
                Some(&lease(Some("mirror-0"), "2026-11-22T05:59:55Z")),
                now,
            ),
            leader(
                "link east: mirror controller",
                "east",
                Some(&lease(Some("mirror-0"), "2026-11-22T05:58:00Z")),
                now,
            ),
            leader(
                "link east: mirror controller",
                "east",
                Some(&lease(None, "2026-11-22T05:59:55Z")),
                now,
            ),
            leader("link east: mirror controller", "east", None, now),
            endpoints("link east: mirror endpoints", &[], &[]),
            endpoints(
                "link east: mirror endpoints",
                &[web()],
                &[slice("shop", "web-east", true)],
            ),
            endpoints(
                "link east: mirror endpoints",
                &[web()],
                &[slice("shop", "web-east", false)],
            ),
            endpoints(
                "link east: mirror endpoints",
                &[web(), service("shop", "db-east")],
                &[slice("shop", "web-east", true)],
            ),
            versions(&[deployment("meshlink-controller", "0.1.0")], "0.1.0"),
            versions(&[deployment("meshlink-controller", "0.0.9")], "0.1.0"),
            versions(&[], "0.1.0"),
        ];
        crate::golden::check("check-health.txt", &render(&checks, None).unwrap());
        let outcomes: Vec<Outcome> = checks.iter().map(|c| c.outcome).collect();
        use Outcome::*;
        assert_eq!(
            outcomes,
            [
                Pass, Pass, Fail, Pass, Fail, Fail, Fail, Pass, Pass, Warn, Fail, Pass, Warn, Warn
            ]
        );
    }
}
