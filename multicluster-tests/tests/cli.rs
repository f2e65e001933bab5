//! The built `meshlink` binary against real clusters: `link` output applied to the
//! source cluster yields a valid Link and working least-privilege credentials,
//! `export`/`unexport` flip the label, `unlink --apply` removes exactly what the
//! link owns, and bad input fails with one line and nothing applied.
//!
//! The binary comes from the same target directory (`cargo build -p link-cli`).

// A failed unwrap is a failed test, which is what tests are for.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

use api::labels;
use api::link::Link;
use k8s_openapi::api::core::v1::{Namespace, Node, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, CustomResourceExt};
use multicluster_tests::{Cluster, Harness, meshlink_binary};
use serde_json::{Value, json};

const MC_NS: &str = "meshlink-multicluster";
const DEADLINE: Duration = Duration::from_secs(30);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs meshlink against `cluster`'s admin kubeconfig, in its context unless
/// `args` name another.
fn meshlink(cluster: &Cluster, args: &[&str]) -> Run {
    let kubeconfig = cluster.kubeconfig_path().to_str().unwrap();
    let mut command = Command::new(meshlink_binary("meshlink").unwrap());
    command.args(["--kubeconfig", kubeconfig]);
    if !args.contains(&"--context") {
        command.args(["--context", cluster.name()]);
    }
    let out = command.args(args).output().unwrap();
    Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Polls `check` until it returns `Some`, or panics after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn apply_value(client: &Client, object: Value) {
    let params = PatchParams::apply("cli-test").force();
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    let ns = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let resource = match object["kind"].as_str().unwrap() {
        "Namespace" => ApiResource::erase::<Namespace>(&()),
        "Secret" => ApiResource::erase::<Secret>(&()),
        "Service" => ApiResource::erase::<Service>(&()),
        "EndpointSlice" => ApiResource::erase::<EndpointSlice>(&()),
        "Link" => ApiResource::erase::<Link>(&()),
        other => panic!("unexpected kind {other}"),
    };
    let api: Api<DynamicObject> = if resource.kind == "Namespace" {
        Api::all_with(client.clone(), &resource)
    } else {
        Api::namespaced_with(client.clone(), &ns, &resource)
    };
    api.patch(&name, &params, &Patch::Apply(&object))
        .await
        .unwrap();
}

async fn namespace(client: &Client, name: &str) {
    apply_value(
        client,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .await;
}

/// Installs the Link CRD and waits until Links are served.
async fn install_link_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "links.multicluster.meshlink.io",
        &PatchParams::apply("cli-test"),
        &Patch::Apply(Link::crd()),
    )
    .await
    .unwrap();
    let links: Api<Link> = Api::all(client.clone());
    eventually("Link CRD served", || {
        let links = links.clone();
        async move { links.list(&ListParams::default()).await.ok() }
    })
    .await;
}

/// Server-side applies every document of a multi-document YAML stream.
async fn apply_yaml(client: &Client, yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    let mut applied = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = Value::deserialize(doc).unwrap();
        apply_value(client, value.clone()).await;
        applied.push(value);
    }
    applied
}

async fn client_from_kubeconfig(yaml: &str) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(yaml).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// East and west, each with the multicluster namespace.
async fn pair() -> Harness {
    let harness = Harness::builder()
        .cluster("east")
        .cluster("west")
        .start()
        .await
        .unwrap();
    for cluster in harness.clusters() {
        namespace(&cluster.client(), MC_NS).await;
    }
    harness
}

fn api_code<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> u16 {
    match result {
        Err(kube::Error::Api(status)) => status.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn link_output_applied_to_west_gives_a_valid_link_with_read_only_credentials() {
    let harness = pair().await;
    let (east, west) = (harness.cluster("east"), harness.cluster("west"));
    install_link_crd(&west.client()).await;

    let gateway = east.gateway_address().to_string();
    let args = [
        "link",
        "--cluster-name",
        "east",
        "--gateway-addresses",
        &gateway,
    ];
    let run = meshlink(east, &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Linking again reuses the ServiceAccount and RBAC (server-side apply).
    let again = meshlink(east, &args);
    assert_eq!(again.code, 0, "{}", again.stderr);

    let applied = apply_yaml(&west.client(), &run.stdout).await;
    let kinds: Vec<&str> = applied
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["Secret", "Link"]);

    let link = Api::<Link>::namespaced(west.client(), MC_NS)
        .get("east")
        .await
        .unwrap();
    link.spec.validate().unwrap();
    assert_eq!(link.spec.target_cluster_name, "east");
    assert_eq!(link.spec.gateway_addresses, [gateway]);
    assert_eq!(link.spec.gateway_port, api::link::DEFAULT_GATEWAY_PORT);

    let secret = Api::<Secret>::namespaced(west.client(), MC_NS)
        .get(&link.spec.credentials_secret)
        .await
        .unwrap();
    assert_eq!(
        secret.type_.as_deref(),
        Some(labels::REMOTE_KUBECONFIG_SECRET_TYPE)
    );
    let kubeconfig = &secret.data.unwrap()[labels::REMOTE_KUBECONFIG_KEY].0;
    let remote = client_from_kubeconfig(std::str::from_utf8(kubeconfig).unwrap()).await;

    // The credentials read what mirroring needs in east, and nothing more.
    let services: Api<Service> = Api::all(remote.clone());
    let listed = services.list(&ListParams::default()).await.unwrap();
    assert!(
        listed
            .items
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some("kubernetes"))
    );
    Api::<EndpointSlice>::all(remote.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(
        api_code(
            Api::<Secret>::all(remote.clone())
                .list(&ListParams::default())
                .await
        ),
        403
    );
    let patch = Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}}));
    let write = Api::<Service>::namespaced(remote, "default")
        .patch("kubernetes", &PatchParams::default(), &patch)
        .await;
    assert_eq!(api_code(write), 403);
}

#[tokio::test]
async fn export_then_unexport_changes_only_the_exported_label() {
    let harness = Harness::builder().cluster("east").start().await.unwrap();
    let east = harness.cluster("east");
    namespace(&east.client(), "shop").await;
    apply_value(
        &east.client(),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
               "spec": {"ports": [{"name": "http", "port": 8080}]}}),
    )
    .await;
    let services: Api<Service> = Api::namespaced(east.client(), "shop");
    let labels_of = || async {
        services
            .get("web")
            .await
            .unwrap()
            .metadata
            .labels
            .unwrap_or_default()
    };

    let run = meshlink(east, &["-n", "shop", "export", "web"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let after = labels_of().await;
    assert_eq!(
        after.get(labels::EXPORTED).map(String::as_str),
        Some("true")
    );
    assert_eq!(after.get("app").map(String::as_str), Some("web"));

    let run = meshlink(east, &["-n", "shop", "export", "web", "--remote-discovery"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(labels_of().await[labels::EXPORTED], "remote-discovery");

    let run = meshlink(east, &["-n", "shop", "unexport", "web"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let after = labels_of().await;
    assert!(!after.contains_key(labels::EXPORTED));
    assert_eq!(after.get("app").map(String::as_str), Some("web"));

    let run = meshlink(east, &["-n", "shop", "export", "nope"]);
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr.lines().collect::<Vec<_>>(),
        [format!(
            "error: service \"nope\" not found in namespace \"shop\" on cluster at {} (context \"east\"); check the name and -n",
            east.server_url()
        )]
    );
}

fn mirror(kind: &str, name: &str, ns: &str, cluster: &str) -> Value {
    let meta = json!({"name": name, "namespace": ns,
        "labels": {labels::MIRRORED: "true", labels::CLUSTER_NAME: cluster}});
    match kind {
        "Service" => json!({"apiVersion": "v1", "kind": "Service", "metadata": meta,
                            "spec": {"ports": [{"name": "http", "port": 8080}]}}),
        _ => json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta,
                    "addressType": "IPv4", "endpoints": []}),
    }
}

#[tokio::test]
async fn unlink_apply_removes_exactly_the_links_objects() {
    let harness = pair().await;
    let (east, west) = (harness.cluster("east"), harness.cluster("west"));
    let client = west.client();
    namespace(&client, "shop").await;
    install_link_crd(&client).await;
    for (cluster, gateway) in [("east", "198.18.0.40"), ("north", "198.18.0.41")] {
        let run = meshlink(
            east,
            &[
                "link",
                "--cluster-name",
                cluster,
                "--gateway-addresses",
                gateway,
            ],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        apply_yaml(&client, &run.stdout).await;
    }
    for object in [
        mirror("Service", "web-east", "shop", "east"),
        mirror("EndpointSlice", "web-east-1", "shop", "east"),
        mirror("Service", "web-north", "shop", "north"),
        // A user's Service sharing only the cluster-name label is not a mirror.
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": "shop", "labels": {labels::CLUSTER_NAME: "east"}},
               "spec": {"ports": [{"name": "http", "port": 8080}]}}),
    ] {
        apply_value(&client, object).await;
    }

    let dry = meshlink(west, &["unlink", "--cluster-name", "east"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    // Header, the Link, its Secret, the mirror Service and slice, footer.
    assert_eq!(dry.stdout.lines().count(), 6, "{}", dry.stdout);
    for name in ["link-east-credentials", "web-east", "web-east-1"] {
        assert!(dry.stdout.contains(name), "{}", dry.stdout);
    }
    assert!(dry.stdout.contains("pass --apply"), "{}", dry.stdout);
    let links: Api<Link> = Api::namespaced(client.clone(), MC_NS);
    assert!(
        links.get_opt("east").await.unwrap().is_some(),
        "dry run deleted the Link"
    );

    let run = meshlink(west, &["unlink", "--cluster-name", "east", "--apply"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), MC_NS);
    let services: Api<Service> = Api::namespaced(client.clone(), "shop");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "shop");
    eventually("east's objects deleted", || async {
        let gone = links.get_opt("east").await.unwrap().is_none()
            && secrets
                .get_opt("link-east-credentials")
                .await
                .unwrap()
                .is_none()
            && services.get_opt("web-east").await.unwrap().is_none()
            && slices.get_opt("web-east-1").await.unwrap().is_none();
        gone.then_some(())
    })
    .await;
    // Everything else is still there.
    assert!(links.get_opt("north").await.unwrap().is_some());
    assert!(
        secrets
            .get_opt("link-north-credentials")
            .await
            .unwrap()
            .is_some()
    );
    assert!(services.get_opt("web-north").await.unwrap().is_some());
    assert!(services.get_opt("web").await.unwrap().is_some());
}

#[tokio::test]
async fn bad_input_fails_with_one_line_and_applies_nothing() {
    let harness = Harness::builder().cluster("east").start().await.unwrap();
    let east = harness.cluster("east");
    namespace(&east.client(), MC_NS).await;
    let sas: Api<ServiceAccount> = Api::namespaced(east.client(), MC_NS);
    let roles: Api<ClusterRole> = Api::all(east.client());
    let one_line = |run: &Run, code: i32, needle: &str| {
        assert_eq!(run.code, code, "{}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(
            run.stderr.starts_with("error: ") && run.stderr.contains(needle),
            "{}",
            run.stderr
        );
        assert!(run.stdout.is_empty());
    };

    let run = meshlink(east, &["link", "--cluster-name", "east"]);
    one_line(
        &run,
        1,
        "gateway Service meshlink-multicluster/meshlink-gateway not found",
    );

    apply_value(
        &east.client(),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "meshlink-gateway", "namespace": MC_NS},
               "spec": {"type": "LoadBalancer", "ports": [{"name": "mc-gateway", "port": 4143}]}}),
    )
    .await;
    let run = meshlink(east, &["link", "--cluster-name", "east"]);
    one_line(
        &run,
        1,
        "is a LoadBalancer without ingress addresses yet; pass --gateway-addresses",
    );

    let run = meshlink(
        east,
        &["--context", "nope", "link", "--cluster-name", "east"],
    );
    one_line(&run, 2, "context \"nope\" not found");

    // Nothing was applied by the failed runs.
    assert!(sas.get_opt("meshlink-mirror").await.unwrap().is_none());
    assert!(
        roles
            .get_opt("meshlink-remote-mirror")
            .await
            .unwrap()
            .is_none()
    );

    east.stop_apiserver();
    let run = meshlink(
        east,
        &[
            "link",
            "--cluster-name",
            "east",
            "--gateway-addresses",
            "198.18.0.40",
        ],
    );
    one_line(
        &run,
        3,
        &format!("cannot reach cluster at {}", east.server_url()),
    );
}

/// Runs `link` without `--gateway-addresses` and returns the Link it printed.
fn discovered_link(east: &Cluster) -> Link {
    let run = meshlink(east, &["-o", "json", "link", "--cluster-name", "east"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let list: Value = serde_json::from_str(&run.stdout).unwrap();
    serde_json::from_value(list["items"][1].clone()).unwrap()
}

#[tokio::test]
async fn link_reads_the_gateway_from_its_load_balancer_or_node_port_service() {
    let harness = Harness::builder().cluster("east").start().await.unwrap();
    let east = harness.cluster("east");
    let client = east.client();
    namespace(&client, MC_NS).await;
    let gateway_service = |type_: &str| {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "meshlink-gateway", "namespace": MC_NS},
               "spec": {"type": type_, "ports": [
                   {"name": "mc-gateway", "port": 4143},
                   {"name": "mc-probe", "port": 4191}]}})
    };
    let services: Api<Service> = Api::namespaced(client.clone(), MC_NS);

    // LoadBalancer: the ingress addresses and the service ports.
    apply_value(&client, gateway_service("LoadBalancer")).await;
    let status = json!({"status": {"loadBalancer": {"ingress": [
        {"ip": "203.0.113.7"}, {"hostname": "gw.east.example"}]}}});
    services
        .patch_status(
            "meshlink-gateway",
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .unwrap();
    let link = discovered_link(east);
    assert_eq!(
        link.spec.gateway_addresses,
        ["203.0.113.7", "gw.east.example"]
    );
    assert_eq!((link.spec.gateway_port, link.spec.probe.port), (4143, 4191));

    // NodePort: the nodes' addresses and the node ports, for traffic and probes.
    services
        .delete("meshlink-gateway", &Default::default())
        .await
        .unwrap();
    apply_value(&client, gateway_service("NodePort")).await;
    let svc = services.get("meshlink-gateway").await.unwrap();
    let node_ports: Vec<u16> = svc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .map(|p| u16::try_from(p.node_port.unwrap()).unwrap())
        .collect();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "node-1"}})).unwrap(),
        )
        .await
        .unwrap();
    let addresses = json!({"status": {"addresses": [
        {"type": "InternalIP", "address": "10.0.0.5"},
        {"type": "ExternalIP", "address": "198.51.100.5"}]}});
    nodes
        .patch_status("node-1", &PatchParams::default(), &Patch::Merge(&addresses))
        .await
        .unwrap();
    let link = discovered_link(east);
    assert_eq!(link.spec.gateway_addresses, ["198.51.100.5"]);
    assert_eq!(
        (link.spec.gateway_port, link.spec.probe.port),
        (node_ports[0], node_ports[1])
    );
}

/// Installs the Link CRD in west and applies `meshlink link` output from east
/// there; returns west's Links.
async fn link_east_into_west(harness: &Harness) -> Api<Link> {
    let (east, west) = (harness.cluster("east"), harness.cluster("west"));
    install_link_crd(&west.client()).await;
    let args = [
        "link",
        "--cluster-name",
        "east",
        "--gateway-addresses",
        "198.18.0.40",
    ];
    let run = meshlink(east, &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    apply_yaml(&west.client(), &run.stdout).await;
    mirror_lease(west, Some("meshlink-mirror-east-0")).await;
    Api::namespaced(west.client(), MC_NS)
}

/// Holds (or with `holder: None` releases) the Lease of east's mirror controller
/// in west, as a running mirror does; long-lived so slow runs do not expire it.
async fn mirror_lease(west: &Cluster, holder: Option<&str>) {
    // MicroTime: exactly six fractional digits.
    let now = format!("{:.6}", k8s_openapi::jiff::Timestamp::now());
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "meshlink-mirror-east", "namespace": MC_NS},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 3600,
                 "acquireTime": now, "renewTime": now},
    });
    apply_strict(&west.client(), &lease).await.unwrap();
}

/// Applies `meshlink install` output to `cluster`, as `kubectl apply -f -` would.
async fn install(cluster: &Cluster, args: &[&str]) -> Vec<String> {
    let mut all = vec!["install"];
    all.extend(args);
    let run = meshlink(cluster, &all);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut applied = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&run.stdout) {
        let object = <Value as serde::Deserialize>::deserialize(doc).unwrap();
        let key = format!("{}/{}", object["kind"], object["metadata"]["name"]);
        let result = apply_strict(&cluster.client(), &object).await;
        assert!(result.is_ok(), "{key}: {result:?}");
        applied.push(key);
    }
    applied
}

async fn set_gateway_alive(links: &Api<Link>, alive: bool) {
    let status = json!({"status": {"gatewayAlive": alive}});
    links
        .patch_status("east", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// The line of a table that starts with `name`.
fn check_line<'a>(run: &'a Run, name: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no check {name:?} in:\n{}", run.stdout))
}

#[tokio::test]
async fn check_passes_on_a_healthy_link_and_names_the_failing_check_with_its_hint() {
    let harness = pair().await;
    let (east, west) = (harness.cluster("east"), harness.cluster("west"));

    let run = meshlink(west, &["check"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(check_line(&run, "Link CRD").contains("FAIL"));

    install(west, &["--set", "links[0].name=east"]).await;
    let links = link_east_into_west(&harness).await;

    // What the mirror controller would report: a live gateway.
    set_gateway_alive(&links, true).await;
    let run = meshlink(west, &["check"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    for name in [
        "link east: spec",
        "link east: trust bundles",
        "link east: gateway",
        "link east: mirror controller",
        "link east: mirror endpoints",
        "link east: credentials",
        "link east: remote API",
        "link east: remote permissions",
        "orphan mirrors",
        "versions",
    ] {
        assert!(check_line(&run, name).contains(" ok "), "{}", run.stdout);
    }

    // The mirror controller stops leading: the check says so and how to start it.
    mirror_lease(west, None).await;
    let run = meshlink(west, &["check"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let line = check_line(&run, "link east: mirror controller");
    assert!(
        line.contains("FAIL") && line.contains("no holder"),
        "{line}"
    );
    assert!(
        line.contains("meshlink install --set links[0].name=east"),
        "{line}"
    );
    mirror_lease(west, Some("meshlink-mirror-east-1")).await;

    // A mirror Service without EndpointSlices is named.
    apply_value(&west.client(), mirror("Service", "web-east", MC_NS, "east")).await;
    let run = meshlink(west, &["check"]);
    let line = check_line(&run, "link east: mirror endpoints");
    assert!(
        line.contains("FAIL") && line.contains("meshlink-multicluster/web-east"),
        "{line}"
    );
    let slices: Api<EndpointSlice> = Api::namespaced(west.client(), MC_NS);
    let mut slice = mirror("EndpointSlice", "web-east-gw", MC_NS, "east");
    slice["metadata"]["labels"][labels::SERVICE_NAME] = "web-east".into();
    slice["endpoints"] = json!([{"addresses": ["198.18.0.40"], "conditions": {"ready": true}}]);
    apply_value(&west.client(), slice).await;
    let run = meshlink(west, &["check"]);
    assert!(
        check_line(&run, "link east: mirror endpoints").contains(" ok "),
        "{}",
        run.stdout
    );
    slices
        .delete("web-east-gw", &Default::default())
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(west.client(), MC_NS);
    services
        .delete("web-east", &Default::default())
        .await
        .unwrap();

    // Probe latency as the mirror reports it (mirror.rs checks a real probe's).
    let latency = json!({"status": {"probeLatency": {"p50Ms": 1.25, "p99Ms": 8.5, "samples": 40}}});
    links
        .patch_status("east", &PatchParams::default(), &Patch::Merge(&latency))
        .await
        .unwrap();
    let run = meshlink(west, &["gateways"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let row: Vec<&str> = check_line(&run, "east").split_whitespace().collect();
    assert_eq!(
        row[..7],
        [
            "east",
            MC_NS,
            "198.18.0.40:4143",
            "yes",
            "0",
            "1.2ms",
            "8.5ms"
        ],
        "{}",
        run.stdout
    );
    // -n narrows gateways and check to one namespace's Links.
    let run = meshlink(west, &["-n", MC_NS, "gateways"]);
    assert!(run.stdout.contains("198.18.0.40:4143"), "{}", run.stdout);
    let run = meshlink(west, &["-n", "elsewhere", "gateways"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "no Links\n"));
    let run = meshlink(west, &["-n", "elsewhere", "check"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(check_line(&run, "Link CRD").contains("0 Link(s) in namespace elsewhere"));
    assert!(!run.stdout.contains("link east"), "{}", run.stdout);

    set_gateway_alive(&links, false).await;
    let run = meshlink(west, &["check"]);
    assert_eq!(run.code, 1);
    assert!(
        check_line(&run, "link east: gateway").contains("FAIL"),
        "{}",
        run.stdout
    );
    assert!(check_line(&run, "link east: gateway").contains("check the gateway pods"));
    assert_eq!(
        run.stderr.trim(),
        "error: 1 check(s) failed: link east: gateway"
    );
    set_gateway_alive(&links, true).await;

    // Revoke the token: deleting its ServiceAccount invalidates every token for it.
    let sas: Api<ServiceAccount> = Api::namespaced(east.client(), MC_NS);
    sas.delete("meshlink-mirror", &Default::default())
        .await
        .unwrap();
    // The apiserver caches token authentication for a few seconds, during which
    // other checks may already fail: wait for the remote API check itself.
    let run = eventually("check to see the revoked token", || async {
        let run = meshlink(west, &["check"]);
        let remote_api = check_line(&run, "link east: remote API").contains("FAIL");
        (run.code == 1 && remote_api).then_some(run)
    })
    .await;
    let line = check_line(&run, "link east: remote API");
    assert!(
        line.contains("FAIL") && line.contains("(401)"),
        "{}",
        run.stdout
    );
    assert!(
        line.contains("rerun `meshlink link --cluster-name east`"),
        "{line}"
    );
}

// block_in_place (reading the child's pipes) needs the multi-threaded runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_wait_retries_until_the_failing_check_passes() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let harness = pair().await;
    let west = harness.cluster("west");
    let links = link_east_into_west(&harness).await;
    set_gateway_alive(&links, false).await;

    let kubeconfig = west.kubeconfig_path().to_str().unwrap();
    let mut child = Command::new(meshlink_binary("meshlink").unwrap())
        .args([
            "--kubeconfig",
            kubeconfig,
            "--context",
            "west",
            "check",
            "--wait",
            "30s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its first "waiting" line proves it saw the failure and is retrying.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    tokio::task::block_in_place(|| stderr.read_line(&mut first)).unwrap();
    assert_eq!(first.trim(), "waiting: 1 check(s) failing");

    set_gateway_alive(&links, true).await;
    let out = tokio::task::block_in_place(|| child.wait_with_output()).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("link east: gateway") && l.contains(" ok ")),
        "{stdout}"
    );
}

/// Server-side applies `object` with strict schema validation: unknown or
/// duplicate fields are errors, not warnings.
async fn apply_strict(client: &Client, object: &Value) -> Result<DynamicObject, kube::Error> {
    let gvk = kube::api::GroupVersionKind::try_from(&kube::api::TypeMeta {
        api_version: object["apiVersion"].as_str().unwrap().to_owned(),
        kind: object["kind"].as_str().unwrap().to_owned(),
    })
    .unwrap();
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
    let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
        Some(ns) if caps.scope == kube::discovery::Scope::Namespaced => {
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        _ => Api::all_with(client.clone(), &resource),
    };
    let name = object["metadata"]["name"].as_str().unwrap();
    let params = PatchParams::apply("meshlink-install-test").validation_strict();
    api.patch(name, &params, &Patch::Apply(object)).await
}

#[tokio::test]
async fn install_output_applies_to_a_real_apiserver_with_strict_validation() {
    let harness = Harness::builder()
        .cluster("west")
        .without_controller_manager()
        .start()
        .await
        .unwrap();
    let west = harness.cluster("west");
    let client = west.client();
    // Strict validation is really on: a misspelled field is refused.
    let typo = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "typo", "namespace": "default"}, "dta": {"a": "b"}});
    let err = apply_strict(&client, &typo).await.unwrap_err();
    assert!(err.to_string().contains("dta"), "{err}");

    let applied = install(
        west,
        &["--ha", "--set", "links[0].name=east,links[1].name=north"],
    )
    .await;
    for kind in [
        "\"PodDisruptionBudget\"",
        "\"CustomResourceDefinition\"",
        "\"ClusterRole\"",
    ] {
        assert!(applied.iter().any(|k| k.starts_with(kind)), "{applied:?}");
    }
    let applied = install(west, &["--gateway=false"]).await;
    assert!(
        !applied.iter().any(|k| k.contains("meshlink-gateway")),
        "{applied:?}"
    );
    // Another control-plane namespace, the multicluster one derived from it.
    let applied = install(west, &["-n", "mesh", "--set", "links[0].name=east"]).await;
    assert!(
        applied.contains(&"\"Namespace\"/\"mesh-multicluster\"".to_owned()),
        "{applied:?}"
    );
    let moved: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "mesh-multicluster");
    assert!(
        moved
            .get_opt("meshlink-mirror-east")
            .await
            .unwrap()
            .is_some()
    );
    // Both control planes keep their own cluster-scoped RBAC, bound to their own account.
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(client.clone());
    for namespace in ["meshlink", "mesh"] {
        let binding = bindings
            .get(&format!("meshlink-controller-{namespace}"))
            .await
            .unwrap();
        let subject = &binding.subjects.unwrap()[0];
        assert_eq!(subject.namespace.as_deref(), Some(namespace));
        assert_eq!(
            binding.role_ref.name,
            format!("meshlink-controller-{namespace}")
        );
    }
    // What the chart set is what the apiserver stored.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), MC_NS);
    let mirror = deployments.get("meshlink-mirror-north").await.unwrap();
    let pod = mirror.spec.unwrap().template.spec.unwrap();
    let security = pod.containers[0].security_context.clone().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert!(pod.affinity.unwrap().pod_anti_affinity.is_some());
    let pdbs: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(client.clone(), MC_NS);
    assert!(pdbs.get_opt("meshlink-gateway").await.unwrap().is_some());
    let services: Api<Service> = Api::namespaced(client.clone(), MC_NS);
    let gateway = services.get("meshlink-gateway").await.unwrap();
    assert!(
        kube::ResourceExt::annotations(&gateway)[labels::ENDPOINT_IDENTITY]
            .ends_with("/sa/meshlink-gateway"),
        "{:?}",
        gateway.metadata.annotations
    );
}

#[tokio::test]
async fn check_wait_draws_a_spinner_only_on_a_terminal() {
    let harness = pair().await;
    let west = harness.cluster("west");
    let links = link_east_into_west(&harness).await;
    set_gateway_alive(&links, false).await;
    let meshlink_path = meshlink_binary("meshlink").unwrap();
    let command = format!(
        "{} --kubeconfig {} --context west check --wait 2s",
        meshlink_path.display(),
        west.kubeconfig_path().display()
    );
    // util-linux `script` runs the command on a pseudo-terminal and copies it out.
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .unwrap();
    let terminal = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{terminal}");
    assert!(
        terminal.contains("\r\x1b[2K⠋ waiting for 1 failing check(s): link east: gateway ("),
        "{terminal:?}"
    );
    assert!(!terminal.contains("waiting: 1 check(s)"), "{terminal:?}");
    // Not a terminal: plain lines, no control characters.
    let run = meshlink(west, &["check", "--wait", "2s"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with("waiting: 1 check(s) failing\n"),
        "{:?}",
        run.stderr
    );
    assert!(!run.stderr.contains('\x1b'), "{:?}", run.stderr);
}

/// The whole operator path with the real `mirror` binary: `install` in west,
/// `export` and `link` in east, the link output applied to west; the mirror
/// mirrors east's exported Service and `check` sees it lead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_output_lets_the_mirror_binary_mirror_easts_exported_service() {
    let harness = pair().await;
    let (east, west) = (harness.cluster("east"), harness.cluster("west"));
    install(west, &["--set", "links[0].name=east"]).await;
    install_link_crd(&west.client()).await;
    for cluster in [east, west] {
        namespace(&cluster.client(), "shop").await;
    }
    let web = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"ports": [{"name": "http", "port": 8080}]}});
    apply_value(&east.client(), web).await;
    let run = meshlink(east, &["-n", "shop", "export", "web"]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let gateway = east.gateway_address().to_string();
    let run = meshlink(
        east,
        &[
            "link",
            "--cluster-name",
            "east",
            "--gateway-addresses",
            &gateway,
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    apply_yaml(&west.client(), &run.stdout).await;

    // Without --identity-dir the mirror does not probe: endpoints stay not ready.
    let _mirror = tokio::process::Command::new(meshlink_binary("mirror").unwrap())
        .args(["--link", "east", "-n", MC_NS, "--identity", "mirror-0"])
        .arg("--admin-addr=127.0.0.1:0")
        .env("KUBECONFIG", west.kubeconfig_path())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mirrors: Api<Service> = Api::namespaced(west.client(), "shop");
    let mirror = eventually("web-east mirrored into west", || {
        let mirrors = mirrors.clone();
        async move { mirrors.get_opt("web-east").await.ok().flatten() }
    })
    .await;
    let mirror_labels = mirror.metadata.labels.unwrap();
    assert_eq!(mirror_labels[labels::CLUSTER_NAME], "east");
    assert_eq!(mirror_labels[labels::MIRRORED], "true");

    let run = eventually("check to see the mirror lead", || async {
        let run = meshlink(west, &["check"]);
        let leads = run
            .stdout
            .lines()
            .any(|l| l.starts_with("link east: mirror controller") && l.contains("mirror-0 leads"));
        leads.then_some(run)
    })
    .await;
    assert!(
        check_line(&run, "link east: mirror controller").contains(" ok "),
        "{}",
        run.stdout
    );
    // The status the mirror writes reaches `gateways` (MIRRORED column).
    eventually("gateways to count the mirror", || async {
        let run = meshlink(west, &["gateways"]);
        let row: Vec<&str> = check_line(&run, "east").split_whitespace().collect();
        (row[4] == "1").then_some(())
    })
    .await;
}
