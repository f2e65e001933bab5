//! `meshlink top zones`: where balanced traffic goes, by zone. Reads the
//! `*_balance_zone_picks_total` counters from the admin `/metrics` endpoints of
//! proxies and gateways (given with `--metrics`), sums them per (source zone,
//! destination zone) and prints each pair's share of its source zone's traffic
//! and the overall cross-zone share.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::OutputFormat;
use crate::error::CliError;
use crate::output;

/// How long one metrics endpoint may take to answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests per (source zone, destination zone).
pub type ZoneCounts = BTreeMap<(String, String), f64>;

/// Runs `top zones` over the metrics endpoints `urls`; returns what to print.
pub async fn zones(urls: &[String], format: Option<OutputFormat>) -> Result<String, CliError> {
    let mut counts = ZoneCounts::new();
    for url in urls {
        let text = fetch(url).await?;
        for (pair, n) in parse(&text) {
            *counts.entry(pair).or_default() += n;
        }
    }
    render(&counts, format)
}

/// GETs `url` (`[http://]host:port[/path]`, path `/metrics` by default).
async fn fetch(url: &str) -> Result<String, CliError> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/metrics"),
    };
    if url.starts_with("https://") || !authority.contains(':') {
        return Err(CliError::Usage(format!(
            "--metrics {url:?} is not http://host:port[/path] (a proxy's admin address, e.g. 10.0.0.5:4191)"
        )));
    }
    let unreachable =
        |e: std::io::Error| CliError::Unreachable(format!("cannot read metrics from {url}: {e}"));
    let get = async {
        let mut stream = TcpStream::connect(authority).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok(response)
    };
    let response = tokio::time::timeout(FETCH_TIMEOUT, get)
        .await
        .map_err(|_| unreachable(std::io::ErrorKind::TimedOut.into()))?
        .map_err(unreachable)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(CliError::Failed(format!("metrics from {url}: {status:?}")));
    }
    Ok(body.to_string())
}

/// The zone-pair counters in a Prometheus text exposition.
pub fn parse(text: &str) -> Vec<((String, String), f64)> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once('{')?;
            if !name.ends_with("balance_zone_picks_total") {
                return None;
            }
            let (labels, value) = rest.rsplit_once('}')?;
            let value = value.trim().parse::<f64>().ok()?;
            Some((
                (label(labels, "src_zone")?, label(labels, "dst_zone")?),
                value,
            ))
        })
        .collect()
}

fn label(labels: &str, name: &str) -> Option<String> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The table (or YAML/JSON list) of `counts`.
pub fn render(counts: &ZoneCounts, format: Option<OutputFormat>) -> Result<String, CliError> {
    const HEADERS: [&str; 4] = ["SOURCE ZONE", "DESTINATION ZONE", "REQUESTS", "SHARE"];
    let mut per_source: BTreeMap<&str, f64> = BTreeMap::new();
    for ((src, _), n) in counts {
        *per_source.entry(src).or_default() += n;
    }
    let zone = |z: &str| {
        if z.is_empty() {
            "-".to_string()
        } else {
            z.to_string()
        }
    };
    let rows: Vec<Vec<String>> = counts
        .iter()
        .map(|((src, dst), n)| {
            let share = n / per_source[src.as_str()].max(1.0);
            vec![zone(src), zone(dst), format!("{n}"), percent(share)]
        })
        .collect();
    let total: f64 = counts.values().sum();
    let cross: f64 = counts
        .iter()
        .filter(|((src, dst), _)| src != dst)
        .map(|(_, n)| n)
        .sum();
    let objects = || -> serde_json::Value {
        rows.iter()
            .map(|r| {
                serde_json::json!({"source_zone": r[0], "destination_zone": r[1], "requests": r[2], "share": r[3]})
            })
            .collect()
    };
    match format {
        Some(OutputFormat::Yaml) => output::to_yaml(&objects()),
        Some(OutputFormat::Json) => output::to_json(&objects()),
        None | Some(OutputFormat::Table) if counts.is_empty() => {
            Ok("no balanced requests yet\n".to_owned())
        }
        None | Some(OutputFormat::Table) => Ok(format!(
            "{}cross-zone: {} of {total} requests\n",
            output::table(&HEADERS, &rows),
            percent(cross / total.max(1.0))
        )),
    }
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;

    const PROXY_A: &str = "# HELP proxy_balance_zone_picks Requests\n\
        # TYPE proxy_balance_zone_picks counter\n\
        proxy_balance_zone_picks_total{src_zone=\"zone-a\",dst_zone=\"zone-a\"} 990\n\
        proxy_balance_zone_picks_total{src_zone=\"zone-a\",dst_zone=\"zone-b\"} 10\n\
        proxy_requests_total{listener=\"outbound\",target=\"x\"} 5\n";
    const PROXY_B: &str = "proxy_balance_zone_picks_total{src_zone=\"zone-b\",dst_zone=\"zone-b\"} 500\n\
        gateway_balance_zone_picks_total{src_zone=\"\",dst_zone=\"zone-a\"} 7\n";

    fn counts() -> ZoneCounts {
        let mut c = ZoneCounts::new();
        for (pair, n) in parse(PROXY_A).into_iter().chain(parse(PROXY_B)) {
            *c.entry(pair).or_default() += n;
        }
        c
    }

    #[test]
    fn parses_only_zone_counters() {
        assert_eq!(parse(PROXY_A).len(), 2);
        assert_eq!(
            parse(PROXY_B)[1],
            ((String::new(), "zone-a".to_string()), 7.0)
        );
    }

    #[test]
    fn table_golden() {
        let out = render(&counts(), None).unwrap()
            + &render(&ZoneCounts::new(), None).unwrap()
            + &render(&counts(), Some(OutputFormat::Json)).unwrap();
        crate::golden::check("top-zones.txt", &out);
    }

    #[tokio::test]
    async fn reads_a_metrics_endpoint_and_names_bad_ones() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /metrics HTTP/1.0"));
            let body = format!("HTTP/1.0 200 OK\r\n\r\n{PROXY_A}");
            s.write_all(body.as_bytes()).await.unwrap();
        });
        let out = zones(&[addr.to_string()], None).await.unwrap();
        assert!(out.contains("cross-zone: 1.0% of 1000 requests"), "{out}");
        let err = zones(&["https://x:1".into()], None).await.unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = closed.local_addr().unwrap().to_string();
        drop(closed);
        let err = zones(&[gone], None).await.unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
    }
}
