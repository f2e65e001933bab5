//! `meshlink failover status`: the TrafficSplits the failover controller
//! manages, read from their annotations: the chain, the tier now receiving
//! traffic with its backends, and the last shift and how long ago it was.

use api::split::{ACTIVE_TIER, CONTROLLED_BY, LAST_SHIFT, Policy, Shift, TrafficSplit};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::cli::{GlobalArgs, OutputFormat};
use crate::error::{CliError, is_not_found};
use crate::gateways::age;
use crate::output;
use crate::target::connect;

const HEADERS: [&str; 6] = [
    "NAMESPACE",
    "SPLIT",
    "CHAIN",
    "ACTIVE",
    "BACKENDS",
    "LAST SHIFT",
];

/// Runs `failover status`; returns what to print.
pub async fn run(global: &GlobalArgs) -> Result<String, CliError> {
    let target = connect(global).await?;
    let api: Api<TrafficSplit> = target.api_in(global.namespace.as_deref());
    let splits = match api.list(&ListParams::default().labels(CONTROLLED_BY)).await {
        Ok(list) => list.items,
        Err(e) if is_not_found(&e) => {
            return Err(CliError::Failed(format!(
                "the TrafficSplit CRD (split.smi-spec.io) is not installed on cluster at {}; apply api/crds/trafficsplit.yaml",
                target.endpoint.server
            )));
        }
        Err(e) => return Err(target.endpoint.error("listing TrafficSplits", e)),
    };
    render(&splits, Timestamp::now(), global.output)
}

/// The table (or YAML/JSON list) for `splits` as of `now`.
pub fn render(
    splits: &[TrafficSplit],
    now: Timestamp,
    format: Option<OutputFormat>,
) -> Result<String, CliError> {
    let rows: Vec<Vec<String>> = splits.iter().map(|s| row(s, now)).collect();
    let objects = || -> serde_json::Value {
        rows.iter()
            .map(|r| {
                let keys = HEADERS.iter().map(|h| h.to_lowercase().replace(' ', "_"));
                serde_json::Value::Object(keys.zip(r.iter().map(|v| v.clone().into())).collect())
            })
            .collect()
    };
    match format {
        Some(OutputFormat::Yaml) => output::to_yaml(&objects()),
        Some(OutputFormat::Json) => output::to_json(&objects()),
        None | Some(OutputFormat::Table) if splits.is_empty() => {
            Ok("no managed TrafficSplits\n".to_owned())
        }
        None | Some(OutputFormat::Table) => Ok(output::table(&HEADERS, &rows)),
    }
}

fn row(split: &TrafficSplit, now: Timestamp) -> Vec<String> {
    let annotations = split.annotations();
    let policy = Policy::of(split);
    let chain = match &policy {
        Ok(p) => p
            .tiers
            .iter()
            .map(|t| t.join("|"))
            .collect::<Vec<_>>()
            .join(" > "),
        Err(e) => format!("invalid: {}", e.0),
    };
    let active = annotations
        .get(ACTIVE_TIER)
        .and_then(|t| t.parse::<usize>().ok());
    let backends = split
        .spec
        .backends
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| format!("{}={}", b.service, b.weight))
        .collect::<Vec<_>>()
        .join(",");
    let shift = annotations
        .get(LAST_SHIFT)
        .and_then(|s| serde_json::from_str::<Shift>(s).ok())
        .map_or_else(
            || "never".to_owned(),
            |s| {
                let ago = s
                    .time
                    .parse::<Timestamp>()
                    .map(|t| format!(" {} ago", age(now.as_second() - t.as_second())))
                    .unwrap_or_default();
                format!("{} {}>{}{ago}", s.reason, s.from, s.to)
            },
        );
    vec![
        split.namespace().unwrap_or_default(),
        split.name_any(),
        chain,
        active.map_or_else(|| "-".to_owned(), |t| t.to_string()),
        if backends.is_empty() {
            "-".to_owned()
        } else {
            backends
        },
        shift,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(name: &str, annotations: serde_json::Value, weights: &[(&str, u32)]) -> TrafficSplit {
        let backends: Vec<_> = weights
            .iter()
            .map(|(s, w)| serde_json::json!({"service": s, "weight": w}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
            "metadata": {"name": name, "namespace": "shop", "annotations": annotations,
                         "labels": {CONTROLLED_BY: "meshlink"}},
            "spec": {"service": name, "backends": backends},
        }))
        .unwrap()
    }

    #[test]
    fn table_matches_golden() {
        let now: Timestamp = "2026-11-22T06:00:00Z".parse().unwrap();
        let shift = r#"{"time":"2026-11-22T05:57:00Z","from":0,"to":1,"reason":"Failover"}"#;
        let splits = [
            split(
                "web",
                serde_json::json!({
                    "failover.meshlink.io/order": "web-west, web-east-a | web-east-b",
                    ACTIVE_TIER: "1", LAST_SHIFT: shift,
                }),
                &[("web-west", 0), ("web-east-a", 80), ("web-east-b", 20)],
            ),
            split(
                "books",
                serde_json::json!({"failover.meshlink.io/primary": "books-west", ACTIVE_TIER: "0"}),
                &[("books-west", 100), ("books-east", 0)],
            ),
            split("bad", serde_json::json!({}), &[("a", 1)]),
        ];
        let out = render(&splits, now, None).unwrap()
            + &render(&[], now, None).unwrap()
            + &render(&splits[..1], now, Some(OutputFormat::Json)).unwrap();
        crate::golden::check("failover-status.txt", &out);
    }
}
