//! End to end across two clusters, every piece a real process in its own pod
//! (`multicluster_tests::scenario`): a request from west's client sidecar reaches
//! east's app through east's gateway, west's discovery follows east's exports and
//! endpoints through the mirror, and the data plane outlives its control plane.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use api::link::Link;
use kube::Api;
use multicluster_tests::scenario::{
    GATEWAY_PORT, MIRROR_AUTHORITY, MULTICLUSTER_NAMESPACE, REMOTE_AUTHORITY, gateway_identity,
    resolve_until,
};
use multicluster_tests::traffic::{Answer, HttpClient, TcpOutcome, tcp_exchange};
use multicluster_tests::{Harness, Scenario};
use tokio::time::Instant;

/// How long a change may take to travel east → mirror → west discovery → proxy.
const CONVERGE: Duration = Duration::from_secs(30);
/// How long a refusal (503, closed connection) may take: quick, never a hang.
const QUICK: Duration = Duration::from_secs(3);
/// How long a request that should succeed may take, generous for a loaded
/// machine (debug builds, two cores shared with builds).
const ANSWER: Duration = Duration::from_secs(10);
/// Concurrent requests per round when checking that new east pods get traffic.
const BURST: usize = 48;

/// Sends `GET path` through `client` until `done` accepts the answer (requests
/// that fail or time out count as "not yet"); returns it with the time taken.
async fn http_until(
    client: &mut HttpClient,
    path: &str,
    done: impl Fn(&Answer) -> bool,
) -> Result<(Answer, Duration)> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < CONVERGE {
        match client.get(path).await {
            Ok(answer) if done(&answer) => return Ok((answer, started.elapsed())),
            Ok(answer) => last = format!("{answer:?}"),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("GET {path}: last answer {last}, never the expected one within {CONVERGE:?}")
}

fn ok_from(app: &str, path: &str) -> Answer {
    Answer {
        status: 200,
        body: format!("{app} GET {path}\n"),
    }
}

#[tokio::test]
async fn west_reaches_an_exported_east_service_through_the_gateway() -> Result<()> {
    let started = Instant::now();
    let harness = Harness::builder()
        .cluster("east")
        .cluster("west")
        .start()
        .await?;
    let mut scenario = Scenario::start(&harness, &mut |step| eprintln!("==> {step}")).await?;
    eprintln!("scenario up after {:?}", started.elapsed());
    let result = check_traffic(&harness, &mut scenario).await;
    if result.is_err() {
        eprintln!("{}", scenario.log_tails());
    }
    eprintln!("whole test {:?}", started.elapsed());
    result
}

async fn check_traffic(harness: &Harness, scenario: &mut Scenario) -> Result<()> {
    let t = Instant::now();
    let west = scenario.discovery("west")?;
    let client = scenario.client_addr();

    // West resolves the mirror to east's gateway, with its identity and the
    // authority east knows the Service by.
    let set = resolve_until(&west, MIRROR_AUTHORITY, CONVERGE, |s| s.len() == 1).await?;
    let gateway = &set[0];
    let east_gateway = harness.cluster("east").gateway_address();
    assert_eq!(
        gateway.addr,
        SocketAddr::new(IpAddr::V4(east_gateway), GATEWAY_PORT)
    );
    assert_eq!(
        gateway.identity.as_deref(),
        Some(gateway_identity("east").as_str())
    );
    assert_eq!(gateway.remote_authority.as_deref(), Some(REMOTE_AUTHORITY));
    assert_eq!(
        (gateway.cluster.as_deref(), gateway.tier),
        (Some("east"), 2)
    );
    gateway_alive_in_link(harness).await?;
    eprintln!("[{:?}] resolved, gateway alive", t.elapsed());

    // HTTP and opaque TCP through west's sidecar arrive at east's app.
    let mut http = HttpClient::new(client, MIRROR_AUTHORITY, ANSWER);
    let (answer, took) = http_until(&mut http, "/hello", |a| a.status == 200).await?;
    assert_eq!(answer, ok_from("svc-1", "/hello"));
    eprintln!("first answer through the mesh after {took:?}");
    let opaque = tcp_exchange(client, ANSWER).await?;
    assert_eq!(opaque, TcpOutcome::Echoed("svc-1".into()));

    scale_follows_in_west(harness, scenario, &mut http).await?;
    eprintln!("[{:?}] scaled 1 -> 2 -> 0 -> 1", t.elapsed());
    unexport_refuses_quickly(harness, scenario, &mut http).await?;
    eprintln!("[{:?}] unexported and exported again", t.elapsed());

    // With west's control plane gone, known endpoints keep serving, on the
    // kept-alive connection and on new ones.
    assert!(scenario.stop_controller("west")?);
    http.get("/still").await?;
    for i in 0..5 {
        let mut fresh = HttpClient::new(client, MIRROR_AUTHORITY, ANSWER);
        let answer = fresh.get(&format!("/fresh/{i}")).await?;
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    let opaque = tcp_exchange(client, ANSWER).await?;
    assert!(matches!(opaque, TcpOutcome::Echoed(_)), "{opaque:?}");
    eprintln!("[{:?}] served with west's controller stopped", t.elapsed());
    Ok(())
}

/// West's mirror reports east's gateway alive: its mTLS probe of the gateway's
/// probe port saw the gateway identity the Link names.
async fn gateway_alive_in_link(harness: &Harness) -> Result<()> {
    let links: Api<Link> =
        Api::namespaced(harness.cluster("west").client(), MULTICLUSTER_NAMESPACE);
    let started = Instant::now();
    loop {
        let link = links.get("east").await?;
        if link.status.and_then(|s| s.gateway_alive) == Some(true) {
            return Ok(());
        }
        if started.elapsed() > CONVERGE {
            bail!("west's Link never reported east's gateway alive");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// East scaled up: both apps answer through the one gateway endpoint. Scaled to
/// zero: west's discovery stream empties and the proxy answers 503. Scaled up
/// again: the gateway endpoint comes back and a new app answers.
async fn scale_follows_in_west(
    harness: &Harness,
    scenario: &mut Scenario,
    http: &mut HttpClient,
) -> Result<()> {
    let west = scenario.discovery("west")?;
    scenario.scale(harness, 2).await?;
    // The gateway's balancer prefers the warm pod (a new one starts at a 30 ms
    // estimate), so send bursts of concurrent requests: in-flight load makes it
    // spill to the new pod.
    let mut seen = BTreeSet::new();
    let started = Instant::now();
    while seen.len() < 2 && started.elapsed() < CONVERGE {
        let burst = (0..BURST).map(|_| async {
            HttpClient::new(http.addr(), MIRROR_AUTHORITY, ANSWER)
                .get("/who")
                .await
        });
        for answer in futures::future::join_all(burst).await {
            seen.insert(answer?.body.split(' ').next().unwrap_or("").to_owned());
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from(["svc-1".to_owned(), "svc-2".to_owned()])
    );
    let set = resolve_until(&west, MIRROR_AUTHORITY, CONVERGE, |_| true).await?;
    assert_eq!(set.len(), 1, "west sees the gateway, not east's pods");

    scenario.scale(harness, 0).await?;
    resolve_until(&west, MIRROR_AUTHORITY, CONVERGE, |s| s.is_empty())
        .await
        .context("east scaled to zero")?;
    http_until(http, "/none", |a| a.status == 503).await?;

    scenario.scale(harness, 1).await?;
    resolve_until(&west, MIRROR_AUTHORITY, CONVERGE, |s| s.len() == 1)
        .await
        .context("east scaled back to one")?;
    let (answer, _) = http_until(http, "/back", |a| a.status == 200).await?;
    assert_eq!(answer, ok_from("svc-3", "/back"));
    Ok(())
}

/// Unexporting removes the mirror: HTTP gets 503 and TCP a reset, each within
/// [`QUICK`], never a hang. Exporting again restores traffic.
async fn unexport_refuses_quickly(
    harness: &Harness,
    scenario: &Scenario,
    http: &mut HttpClient,
) -> Result<()> {
    let client = scenario.client_addr();
    let started = Instant::now();
    scenario.export(harness, false).await?;
    let (_, took) = http_until(http, "/gone", |a| a.status == 503).await?;
    eprintln!(
        "unexport to 503 in {took:?} ({:?} with the CLI)",
        started.elapsed()
    );
    let refused = Instant::now();
    let answer = http.get("/gone").await?;
    assert_eq!(answer.status, 503);
    let outcome = tcp_exchange(client, QUICK).await?;
    eprintln!("TCP after unexport: {outcome:?}");
    assert_eq!(outcome, TcpOutcome::Reset, "TCP after unexport");
    assert!(
        refused.elapsed() < QUICK,
        "refusals took {:?}",
        refused.elapsed()
    );

    scenario.export(harness, true).await?;
    http_until(http, "/again", |a| a.status == 200).await?;
    Ok(())
}
