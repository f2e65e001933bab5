//! `meshlink gateways`, run against a source cluster: one row per Link (of every
//! namespace, or of `-n`'s) with what its mirror controller last reported about
//! the target's gateway: liveness, mirrored services, p50/p99 latency of its
//! recent successful probes (the Link status' `probeLatency`) and the age of the
//! last probe.

use api::link::Link;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::cli::{GlobalArgs, OutputFormat};
use crate::error::{CliError, is_not_found};
use crate::output;
use crate::target::connect;

/// Runs `gateways`; returns what to print.
pub async fn run(global: &GlobalArgs) -> Result<String, CliError> {
    let target = connect(global).await?;
    let links: Api<Link> = target.api_in(global.namespace.as_deref());
    let links = match links.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) if is_not_found(&e) => {
            return Err(CliError::Failed(format!(
                "the Link CRD is not installed on cluster at {}; apply api/crds/link.yaml",
                target.endpoint.server
            )));
        }
        Err(e) => return Err(target.endpoint.error("listing Links", e)),
    };
    render(&links, Timestamp::now(), global.output)
}

/// The table (or YAML/JSON list) for `links` as of `now`.
pub fn render(
    links: &[Link],
    now: Timestamp,
    format: Option<OutputFormat>,
) -> Result<String, CliError> {
    let rows: Vec<Vec<String>> = links.iter().map(|l| row(l, now)).collect();
    const HEADERS: [&str; 8] = [
        "CLUSTER",
        "NAMESPACE",
        "GATEWAY",
        "ALIVE",
        "MIRRORED",
        "P50",
        "P99",
        "LAST PROBE",
    ];
    let objects = || -> serde_json::Value {
        rows.iter()
            .map(|r| {
                let pairs = HEADERS
                    .iter()
                    .map(|h| h.to_lowercase().replace(' ', "_"))
                    .zip(r.iter().cloned());
                serde_json::Value::Object(pairs.map(|(k, v)| (k, v.into())).collect())
            })
            .collect()
    };
    match format {
        Some(OutputFormat::Yaml) => output::to_yaml(&objects()),
        Some(OutputFormat::Json) => output::to_json(&objects()),
        None | Some(OutputFormat::Table) if links.is_empty() => Ok("no Links\n".to_owned()),
        None | Some(OutputFormat::Table) => Ok(output::table(&HEADERS, &rows)),
    }
}

fn row(link: &Link, now: Timestamp) -> Vec<String> {
    let status = link.status.clone().unwrap_or_default();
    let alive = match status.gateway_alive {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    };
    let last_probe = status.last_probe_time.map_or_else(
        || "never".to_owned(),
        |t| format!("{} ago", age(now.as_second() - t.0.as_second())),
    );
    let (p50, p99) = status.probe_latency.as_ref().map_or_else(
        || ("-".to_owned(), "-".to_owned()),
        |l| (millis(l.p50_ms), millis(l.p99_ms)),
    );
    let gateway = link
        .spec
        .gateway_addresses
        .iter()
        .map(|a| format!("{a}:{}", link.spec.gateway_port))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        link.spec.target_cluster_name.clone(),
        link.namespace().unwrap_or_default(),
        gateway,
        alive.to_owned(),
        status.mirrored_services.to_string(),
        p50,
        p99,
        last_probe,
    ]
}

/// `0.42ms`, `12.3ms`, `250ms`: three significant digits at most.
fn millis(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.2}ms")
    } else if ms < 100.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{ms:.0}ms")
    }
}

/// `42s`, `3m`, `5h`, `2d`: kubectl's coarse ages.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use api::link::{LinkStatus, ProbeLatency};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn link(cluster: &str, status: Option<LinkStatus>) -> Link {
        let mut link: Link = serde_json::from_value(serde_json::json!({
            "apiVersion": "multicluster.meshlink.io/v1alpha1", "kind": "Link",
            "metadata": {"name": cluster, "namespace": "meshlink-multicluster"},
            "spec": {"targetClusterName": cluster, "credentialsSecret": "s",
                     "gatewayAddresses": ["198.18.0.40", "198.18.0.41"]},
        }))
        .unwrap();
        link.status = status;
        link
    }

    #[test]
    fn table_matches_golden() {
        let now: Timestamp = "2026-11-22T06:00:00Z".parse().unwrap();
        let probed: Timestamp = "2026-11-22T05:59:53Z".parse().unwrap();
        let links = [
            link(
                "east",
                Some(LinkStatus {
                    gateway_alive: Some(true),
                    last_probe_time: Some(Time(probed)),
                    mirrored_services: 12,
                    probe_latency: Some(ProbeLatency {
                        p50_ms: 0.4213,
                        p99_ms: 12.345,
                        samples: 100,
                    }),
                    ..LinkStatus::default()
                }),
            ),
            link("north", None),
        ];
        let out = render(&links, now, None).unwrap()
            + &render(&[], now, None).unwrap()
            + &render(&links[..1], now, Some(OutputFormat::Json)).unwrap();
        crate::golden::check("gateways.txt", &out);
    }

    #[test]
    fn latencies_keep_three_significant_digits() {
        assert_eq!(millis(0.4213), "0.42ms");
        assert_eq!(millis(12.345), "12.3ms");
        assert_eq!(millis(250.4), "250ms");
    }

    #[test]
    fn ages_are_coarse() {
        assert_eq!(age(-3), "0s");
        assert_eq!(age(119), "119s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(3 * 3600), "3h");
        assert_eq!(age(5 * 86_400), "5d");
    }
}
