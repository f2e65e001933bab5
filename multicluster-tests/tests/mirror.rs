//! The service-mirror controller against two real clusters: `east` exports,
//! `west` runs the controller (in-process, as a library task) and receives the
//! mirrors. The gateway is stood in for by an mTLS probe server on loopback
//! whose health the tests switch.

// A failed unwrap is a failed test, which is what tests are for.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use api::link::{Link, LinkStatus};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt};
use mirror::controller::{Options, ProbeIdentity, run};
use mirror::metrics::Metrics;
use mirror::session::SessionConfig;
use multicluster_tests::{Harness, admin_get};
use proxy::tls::TrustBundle;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(45);
const LINK_NS: &str = "meshlink-multicluster";
const SECRET: &str = "east-kubeconfig";
const MIRROR_LABELS: &str = "mirror.meshlink.io/mirrored=true,mirror.meshlink.io/cluster-name=east";

/// Polls `check` every 100 ms until it yields a value or the deadline passes.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(Some(v)) = tokio::time::timeout(Duration::from_secs(5), check()).await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A CA, a gateway serving certificate for the gateway's IP and a client identity.
struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
}

fn pki(gateway_ip: std::net::Ipv4Addr) -> Pki {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, key).unwrap();
    let leaf = |uri: &str, server: bool| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        if server {
            params
                .subject_alt_names
                .push(SanType::IpAddress(gateway_ip.into()));
        }
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca.pem(),
        server: leaf("spiffe://east.example/ns/meshlink/sa/gateway", true),
        client: leaf("spiffe://west.example/ns/meshlink/sa/mirror", false),
    }
}

/// The gateway's admin port: mTLS, answers 200 while healthy, 503 otherwise.
struct ProbeServer {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for ProbeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds a listener (`port` 0: any) inside a pod's network namespace (the socket stays there
/// after the helper thread exits).
fn listen_in_netns(netns: &str, ip: std::net::Ipv4Addr, port: u16) -> std::net::TcpListener {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(path).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = std::net::TcpListener::bind((ip, port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        listener
    })
    .join()
    .unwrap()
}

async fn probe_server(pki: &Pki, listener: std::net::TcpListener) -> ProbeServer {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(pki.server.0.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(pki.server.1.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::from_std(listener).unwrap();
    let addr = listener.local_addr().unwrap();
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let flag = flag.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let status = if flag.load(Ordering::SeqCst) {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let rsp =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = tls.write_all(rsp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    ProbeServer {
        addr,
        healthy,
        task,
    }
}

/// Two clusters, the Link CRD and credentials installed in west, a probe server.
struct Env {
    pki: Pki,
    gateway: ProbeServer,
    _gateway_pod: multicluster_tests::Pod,
    harness: Harness,
}

impl Env {
    async fn start() -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let harness = Harness::builder()
            .cluster("east")
            .cluster("west")
            .start()
            .await
            .unwrap();
        let pod = harness
            .cluster("east")
            .create_gateway_pod("gateway", "east-a")
            .unwrap();
        let ip = pod.gateway_address().unwrap();
        let pki = pki(ip);
        let gateway = probe_server(&pki, listen_in_netns(pod.netns(), ip, 0)).await;
        let env = Self {
            pki,
            gateway,
            _gateway_pod: pod,
            harness,
        };
        let west = env.west();
        let crds: Api<CustomResourceDefinition> = Api::all(west.clone());
        crds.create(&PostParams::default(), &Link::crd())
            .await
            .unwrap();
        create_namespace(&west, LINK_NS).await;
        let links: Api<Link> = Api::namespaced(west.clone(), LINK_NS);
        eventually("Link CRD served", || {
            let links = links.clone();
            async move { links.list(&ListParams::default()).await.ok() }
        })
        .await;
        env
    }

    /// Started, with `namespace` on both sides, credentials and the Link in place.
    async fn linked(namespace: &str) -> Self {
        let env = Self::start().await;
        for c in [&env.east(), &env.west()] {
            create_namespace(c, namespace).await;
        }
        env.put_valid_secret().await;
        env.put_link("east").await;
        env
    }

    fn east(&self) -> Client {
        self.harness.cluster("east").client()
    }

    fn west(&self) -> Client {
        self.harness.cluster("west").client()
    }

    async fn put_secret(&self, kubeconfig: &str, type_: &str) {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(SECRET.into()),
                ..Default::default()
            },
            type_: Some(type_.into()),
            data: Some(BTreeMap::from([(
                "kubeconfig".to_string(),
                ByteString(kubeconfig.as_bytes().to_vec()),
            )])),
            ..Default::default()
        };
        let secrets: Api<Secret> = Api::namespaced(self.west(), LINK_NS);
        // A Secret's type is immutable: replace it whole.
        let _ = secrets.delete(SECRET, &DeleteParams::default()).await;
        eventually("old secret gone", || async {
            secrets.get_opt(SECRET).await.ok()?.is_none().then_some(())
        })
        .await;
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }

    async fn put_valid_secret(&self) {
        let kubeconfig = self.harness.cluster("east").kubeconfig_yaml().to_string();
        self.put_secret(&kubeconfig, "meshlink.io/remote-kubeconfig")
            .await;
    }

    async fn put_link(&self, cluster_name: &str) {
        self.put_link_via(cluster_name, &self.gateway.addr.ip().to_string())
            .await;
    }

    /// Creates or replaces the Link, naming the gateway by `gateway_address`
    /// (an IP or a DNS name).
    async fn put_link_via(&self, cluster_name: &str, gateway_address: &str) {
        let link: Link = serde_json::from_value(serde_json::json!({
            "apiVersion": "multicluster.meshlink.io/v1alpha1",
            "kind": "Link",
            "metadata": {"name": "east", "namespace": LINK_NS},
            "spec": {
                "targetClusterName": cluster_name,
                "credentialsSecret": SECRET,
                "gatewayAddresses": [gateway_address],
                "gatewayIdentity": "spiffe://east.example/ns/meshlink/sa/gateway",
                "probe": {
                    "port": self.gateway.addr.port(),
                    "periodSeconds": 1,
                    "timeoutSeconds": 1,
                    "failureThreshold": 2,
                },
                "excludedLabels": ["team", "internal.example.com/*"],
            },
        }))
        .unwrap();
        let links: Api<Link> = Api::namespaced(self.west(), LINK_NS);
        links
            .patch(
                "east",
                &PatchParams::apply("test").force(),
                &Patch::Apply(&link),
            )
            .await
            .unwrap();
    }

    /// Starts a controller replica; drop or send `true` to stop it gracefully,
    /// abort the handle to simulate a crash.
    fn controller(&self, identity: &str) -> Controller {
        self.controller_with(
            identity,
            SessionConfig {
                concurrency: 16,
                resync_interval: Duration::from_secs(5),
                resolve_interval: Duration::from_secs(30),
                dns_server: None,
            },
        )
    }

    /// As [`Env::controller`], with its own session settings.
    fn controller_with(&self, identity: &str, session: SessionConfig) -> Controller {
        let (tx, rx) = watch::channel(false);
        let opts = Options {
            link: "east".into(),
            namespace: LINK_NS.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(3),
            probe_identity: Some(ProbeIdentity {
                chain_pem: self.pki.client.0.clone().into_bytes(),
                key_pem: self.pki.client.1.clone().into_bytes(),
                bundles: vec![TrustBundle::from_pem(None, self.pki.ca_pem.as_bytes()).unwrap()],
            }),
            session,
        };
        let task = tokio::spawn(run(self.west(), opts, Metrics::default(), rx));
        Controller { task, _stop: tx }
    }

    /// Runs the built `mirror` binary instead of the library task; it is
    /// killed when the returned child is dropped.
    fn controller_binary(
        &self,
        bin: &str,
        dir: &std::path::Path,
        admin: SocketAddr,
    ) -> tokio::process::Child {
        std::fs::write(dir.join("tls.crt"), &self.pki.client.0).unwrap();
        std::fs::write(dir.join("tls.key"), &self.pki.client.1).unwrap();
        std::fs::write(dir.join("ca.crt"), &self.pki.ca_pem).unwrap();
        let kubeconfig = self.harness.cluster("west").kubeconfig_path();
        tokio::process::Command::new(bin)
            .args(["--link", "east", "-n", LINK_NS, "--identity", "binary"])
            .arg(format!("--admin-addr={admin}"))
            .arg("--identity-dir")
            .arg(dir)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    async fn link_status(&self) -> Option<LinkStatus> {
        let links: Api<Link> = Api::namespaced(self.west(), LINK_NS);
        links.get_opt("east").await.ok().flatten()?.status
    }

    /// Waits until the Link status satisfies `check`.
    async fn status_until(&self, what: &str, check: impl Fn(&LinkStatus) -> bool) -> LinkStatus {
        eventually(what, || async {
            self.link_status().await.filter(|s| check(s))
        })
        .await
    }
}

struct Controller {
    task: JoinHandle<()>,
    _stop: watch::Sender<bool>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn create_namespace(client: &Client, name: &str) {
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    let _ = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await;
}

fn exported_service(name: &str, export: &str, extra_labels: &[(&str, &str)]) -> Service {
    let mut labels: BTreeMap<String, String> = extra_labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.insert("mirror.meshlink.io/exported".into(), export.into());
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "grpc", "port": 9090, "protocol": "TCP"},
        ]},
    }))
    .unwrap()
}

/// A remote EndpointSlice: `(ip, ready, hostname, zone)` endpoints on port 8080.
fn remote_slice(service: &str, endpoints: &[(&str, bool, Option<&str>)]) -> EndpointSlice {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(ip, ready, host)| {
            serde_json::json!({
                "addresses": [ip], "hostname": host, "zone": "east-a",
                "conditions": {"ready": ready},
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "labels": {
            "kubernetes.io/service-name": service,
            "endpointslice.kubernetes.io/managed-by": "test",
        }},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .unwrap()
}

/// A namespaced Kubernetes object the helpers below can read, write and delete.
trait Namespaced:
    kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::Serialize
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> Namespaced for K where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug
{
}

/// Exports Service `name` in `ns` on `east` with one ready endpoint, 10.1.0.5.
async fn export_one_ready(east: &Client, ns: &str, name: &str) {
    apply(east, ns, &exported_service(name, "true", &[])).await;
    let slice = remote_slice(name, &[("10.1.0.5", true, None)]);
    apply(east, ns, &slice).await;
}

async fn apply<K: Namespaced>(client: &Client, ns: &str, obj: &K) {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap();
    let params = PatchParams::apply("test").force();
    api.patch(&name, &params, &Patch::Apply(obj)).await.unwrap();
}

async fn delete<K: Namespaced>(client: &Client, ns: &str, name: &str) {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.delete(name, &DeleteParams::default()).await.unwrap();
}

async fn get<K: Namespaced>(client: &Client, ns: &str, name: &str) -> Option<K> {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.get_opt(name).await.ok().flatten()
}

/// The local mirror slice of `mirror`, once it satisfies `check`.
async fn slice_until(
    west: &Client,
    ns: &str,
    mirror: &str,
    what: &str,
    check: impl Fn(&EndpointSlice) -> bool,
) -> EndpointSlice {
    let api: Api<EndpointSlice> = Api::namespaced(west.clone(), ns);
    let params = ListParams::default().labels(&format!("kubernetes.io/service-name={mirror}"));
    eventually(what, || {
        let api = api.clone();
        let params = params.clone();
        let check = &check;
        async move {
            let list = api.list(&params).await.ok()?;
            list.items.into_iter().find(|s| check(s))
        }
    })
    .await
}

fn ready_of(slice: &EndpointSlice) -> Vec<Option<bool>> {
    slice
        .endpoints
        .iter()
        .map(|e| e.conditions.as_ref().and_then(|c| c.ready))
        .collect()
}

async fn mirror_names(west: &Client) -> Vec<String> {
    let api: Api<Service> = Api::all(west.clone());
    let mut names: Vec<String> = api
        .list(&ListParams::default().labels(MIRROR_LABELS))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    names.sort();
    names
}

async fn until_gone(west: &Client, ns: &str, name: &str) {
    eventually(&format!("{name} deleted"), || async {
        get::<Service>(west, ns, name).await.is_none().then_some(())
    })
    .await;
    let slices: Api<EndpointSlice> = Api::namespaced(west.clone(), ns);
    let params = ListParams::default().labels(&format!("kubernetes.io/service-name={name}"));
    eventually(&format!("{name} slices deleted"), || {
        let slices = slices.clone();
        let params = params.clone();
        async move {
            slices
                .list(&params)
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        }
    })
    .await;
}

async fn until_present(west: &Client, ns: &str, name: &str) -> Service {
    eventually(&format!("{name} mirrored"), || async {
        get::<Service>(west, ns, name).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_update_unexport_delete_and_link_delete() {
    let env = Env::linked("shop").await;
    let (east, west) = (env.east(), env.west());
    let _controller = env.controller("replica-a");

    // Export: ports, labels minus exclusions, identity and gateway endpoints.
    let books = exported_service("books", "true", &[("app", "books"), ("team", "blue")]);
    apply(&east, "shop", &books).await;
    apply(
        &east,
        "shop",
        &remote_slice("books", &[("10.1.0.5", true, None)]),
    )
    .await;
    let mirror = until_present(&west, "shop", "books-east").await;
    let labels = mirror.metadata.labels.clone().unwrap();
    assert_eq!(labels["app"], "books");
    assert!(!labels.contains_key("team"), "excluded label copied");
    assert!(!labels.contains_key("mirror.meshlink.io/exported"));
    assert_eq!(labels["mirror.meshlink.io/cluster-name"], "east");
    assert_eq!(
        mirror.metadata.annotations.unwrap()["mirror.meshlink.io/remote-svc-fq-name"],
        "books.shop.svc.cluster.local"
    );
    let spec = mirror.spec.unwrap();
    assert!(spec.selector.is_none());
    let ports: Vec<_> = spec.ports.unwrap().iter().map(|p| p.port).collect();
    assert_eq!(ports, [8080, 9090]);
    let slice = slice_until(&west, "shop", "books-east", "ready gateway endpoint", |s| {
        ready_of(s) == [Some(true)]
    })
    .await;
    assert_eq!(
        slice.endpoints[0].addresses,
        [env.gateway.addr.ip().to_string()]
    );
    assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(4143));
    let slice_labels = slice.metadata.labels.unwrap();
    assert_eq!(
        slice_labels["endpointslice.kubernetes.io/managed-by"],
        "mirror.meshlink.io"
    );
    assert_eq!(
        slice.metadata.annotations.unwrap()[api::labels::ENDPOINT_IDENTITY],
        "spiffe://east.example/ns/meshlink/sa/gateway"
    );
    let status = env
        .status_until("Mirrored status", |s| {
            s.mirrored_services == 1 && s.gateway_alive == Some(true)
        })
        .await;
    assert_eq!(status.services[0].local_name, "books-east");
    assert_eq!(status.services[0].condition.reason, "Mirrored");
    // The probe that made the gateway alive reported its latency (meshlink gateways).
    let latency = status.probe_latency.expect("probe latency in status");
    assert!(latency.samples >= 1 && latency.p50_ms > 0.0, "{latency:?}");
    assert!(latency.p99_ms >= latency.p50_ms, "{latency:?}");

    // Remote update: a new port and label follow; unready remote endpoints
    // make the mirror endpoints unready.
    let mut updated = exported_service("books", "true", &[("app", "books"), ("tier", "gold")]);
    updated
        .spec
        .as_mut()
        .unwrap()
        .ports
        .as_mut()
        .unwrap()
        .push(serde_json::from_value(serde_json::json!({"name": "admin", "port": 9091})).unwrap());
    apply(&east, "shop", &updated).await;
    eventually("mirror updated", || async {
        let svc = get::<Service>(&west, "shop", "books-east").await?;
        let ports = svc.spec?.ports?.len();
        (ports == 3 && svc.metadata.labels?.get("tier").map(String::as_str) == Some("gold"))
            .then_some(())
    })
    .await;
    apply(
        &east,
        "shop",
        &remote_slice("books", &[("10.1.0.5", false, None)]),
    )
    .await;
    slice_until(&west, "shop", "books-east", "unready endpoint", |s| {
        ready_of(s) == [Some(false)]
    })
    .await;

    // Un-export removes the mirror; re-export brings it back; delete removes it.
    apply(&east, "shop", &exported_service("books", "false", &[])).await;
    until_gone(&west, "shop", "books-east").await;
    apply(&east, "shop", &books).await;
    until_present(&west, "shop", "books-east").await;
    delete::<Service>(&east, "shop", "books").await;
    until_gone(&west, "shop", "books-east").await;

    // Deleting the Link removes all its mirrors, then the Link itself.
    for name in ["maps", "pens"] {
        apply(&east, "shop", &exported_service(name, "true", &[])).await;
    }
    until_present(&west, "shop", "maps-east").await;
    until_present(&west, "shop", "pens-east").await;
    let links: Api<Link> = Api::namespaced(west.clone(), LINK_NS);
    links
        .delete("east", &DeleteParams::default())
        .await
        .unwrap();
    until_gone(&west, "shop", "maps-east").await;
    until_gone(&west, "shop", "pens-east").await;
    eventually("Link finalized", || async {
        links.get_opt("east").await.ok()?.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_way_leaves_no_duplicates_and_no_orphans() {
    let env = Env::linked("shop").await;
    let (east, west) = (env.east(), env.west());
    for name in ["books", "maps"] {
        export_one_ready(&east, "shop", name).await;
    }
    let first = env.controller("replica-a");
    until_present(&west, "shop", "books-east").await;
    until_present(&west, "shop", "maps-east").await;

    // Crash (the lease stays held), change the remote while nobody watches.
    first.task.abort();
    drop(first);
    delete::<Service>(&east, "shop", "maps").await;
    apply(&east, "shop", &exported_service("pens", "true", &[])).await;

    // A second replica takes the lease over once it expires, adopts the
    // existing mirrors and collects the orphan.
    let _second = env.controller("replica-b");
    until_present(&west, "shop", "pens-east").await;
    until_gone(&west, "shop", "maps-east").await;
    assert_eq!(mirror_names(&west).await, ["books-east", "pens-east"]);
    // The first replica may have crashed before writing a slice: wait for the
    // second one to have written both, then count.
    for mirror in ["books-east", "pens-east"] {
        slice_until(&west, "shop", mirror, "slice after takeover", |_| true).await;
    }
    let slices: Api<EndpointSlice> = Api::namespaced(west.clone(), "shop");
    let books_slices = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=books-east"))
        .await
        .unwrap();
    assert_eq!(books_slices.items.len(), 1, "no duplicate slices");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(west.clone(), LINK_NS);
    let lease = leases.get("meshlink-mirror-east").await.unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("replica-b")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_outage_keeps_mirrors_and_flips_readiness() {
    let env = Env::linked("shop").await;
    let (east, west) = (env.east(), env.west());
    export_one_ready(&east, "shop", "books").await;
    let _controller = env.controller("replica-a");
    slice_until(&west, "shop", "books-east", "ready", |s| {
        ready_of(s) == [Some(true)]
    })
    .await;

    // The whole remote side goes down: apiserver and gateway.
    env.harness.cluster("east").stop_apiserver();
    env.gateway.healthy.store(false, Ordering::SeqCst);
    slice_until(
        &west,
        "shop",
        "books-east",
        "not ready after the threshold",
        |s| ready_of(s) == [Some(false)],
    )
    .await;
    env.status_until("remote unreachable reported", |s| {
        s.remote_reachable == Some(false) && s.gateway_alive == Some(false)
    })
    .await;
    assert!(
        get::<Service>(&west, "shop", "books-east").await.is_some(),
        "mirror kept during the outage"
    );

    // It comes back: the controller recovers on its own.
    env.harness.cluster("east").start_apiserver().await.unwrap();
    env.gateway.healthy.store(true, Ordering::SeqCst);
    slice_until(&west, "shop", "books-east", "ready again", |s| {
        ready_of(s) == [Some(true)]
    })
    .await;
    env.status_until("remote reachable again", |s| {
        s.remote_reachable == Some(true) && s.gateway_alive == Some(true)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_flat_missing_namespace_and_invalid_names() {
    let env = Env::linked("db").await;
    let (east, west) = (env.east(), env.west());
    create_namespace(&east, "late").await;
    let _controller = env.controller("replica-a");

    // Headless StatefulSet-style service: one endpoint per hostname.
    let mut pg = exported_service("pg", "true", &[]);
    pg.spec.as_mut().unwrap().cluster_ip = Some("None".into());
    apply(&east, "db", &pg).await;
    apply(
        &east,
        "db",
        &remote_slice(
            "pg",
            &[
                ("10.1.0.6", true, Some("pg-0")),
                ("10.1.0.7", true, Some("pg-1")),
            ],
        ),
    )
    .await;
    let mirror = until_present(&west, "db", "pg-east").await;
    assert_eq!(mirror.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    let slice = slice_until(&west, "db", "pg-east", "per-hostname endpoints", |s| {
        s.endpoints.len() == 2
    })
    .await;
    let hosts: Vec<_> = slice
        .endpoints
        .iter()
        .map(|e| e.hostname.clone().unwrap())
        .collect();
    assert_eq!(hosts, ["pg-0", "pg-1"]);

    // Flat mode: remote pod addresses, zones and ports directly.
    apply(
        &east,
        "db",
        &exported_service("cache", "remote-discovery", &[]),
    )
    .await;
    apply(
        &east,
        "db",
        &remote_slice("cache", &[("10.1.0.9", true, None)]),
    )
    .await;
    let flat = slice_until(&west, "db", "cache-east", "pod endpoints", |s| {
        !s.endpoints.is_empty()
    })
    .await;
    assert_eq!(flat.endpoints[0].addresses, ["10.1.0.9"]);
    assert_eq!(flat.endpoints[0].zone.as_deref(), Some("east-a"));
    assert_eq!(flat.ports.as_ref().unwrap()[0].port, Some(8080));

    // Missing namespace: reported, then mirrored once the namespace appears.
    apply(&east, "late", &exported_service("ghost", "true", &[])).await;
    env.status_until("MissingNamespace reported", |s| {
        s.services
            .iter()
            .any(|e| e.remote_name == "ghost" && e.condition.reason == "MissingNamespace")
    })
    .await;
    create_namespace(&west, "late").await;
    until_present(&west, "late", "ghost-east").await;

    // A mirror name over 63 characters is refused with a reason.
    let long = "a".repeat(59);
    apply(&east, "db", &exported_service(&long, "true", &[])).await;
    let status = env
        .status_until("InvalidService reported", |s| {
            s.services
                .iter()
                .any(|e| e.remote_name == long && e.condition.reason == "InvalidService")
        })
        .await;
    let entry = status
        .services
        .iter()
        .find(|e| e.remote_name == long)
        .unwrap();
    assert!(
        entry.condition.message.contains("63"),
        "{}",
        entry.condition.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_link_and_secret_are_reported_without_crashing() {
    let env = Env::start().await;
    let (east, west) = (env.east(), env.west());
    for c in [&east, &west] {
        create_namespace(c, "shop").await;
    }
    apply(&east, "shop", &exported_service("books", "true", &[])).await;
    let controller = env.controller("replica-a");

    // A Link whose cluster name is not a DNS label.
    env.put_link("East_1").await;
    let status = env
        .status_until("InvalidLink reported", |s| {
            s.conditions.iter().any(|c| c.reason == "InvalidLink")
        })
        .await;
    assert!(status.conditions[0].message.contains("targetClusterName"));

    // A good Link without its Secret, then with a Secret of the wrong type,
    // then with garbage for a kubeconfig.
    env.put_link("east").await;
    env.status_until("missing secret reported", |s| {
        s.conditions
            .iter()
            .any(|c| c.reason == "InvalidCredentials" && c.message.contains("not found"))
    })
    .await;
    env.put_secret("irrelevant", "Opaque").await;
    env.status_until("wrong type reported", |s| {
        s.conditions.iter().any(|c| c.message.contains("Opaque"))
    })
    .await;
    env.put_secret("{{{ not yaml", "meshlink.io/remote-kubeconfig")
        .await;
    let status = env
        .status_until("garbage kubeconfig reported", |s| {
            s.conditions
                .iter()
                .any(|c| c.reason == "InvalidCredentials" && c.message.contains("kubeconfig"))
        })
        .await;
    assert!(
        !status.conditions[0].message.contains("not yaml"),
        "secret contents leaked"
    );
    assert!(!controller.task.is_finished(), "controller exited");

    // Fixing the Secret is enough: no restart needed.
    env.put_valid_secret().await;
    until_present(&west, "shop", "books-east").await;
    env.status_until("reachable", |s| s.remote_reachable == Some(true))
        .await;
}

/// Scale and propagation numbers (docs/benchmarks.md). Runs 100 services and 20
/// changes by default; `MESHLINK_MIRROR_BENCH=1` runs the benchmark's 1,000 and 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_services_are_mirrored_and_changes_propagate() {
    use futures::{StreamExt, TryStreamExt};
    let bench = std::env::var_os("MESHLINK_MIRROR_BENCH").is_some();
    let (services, changes) = if bench { (1000, 200) } else { (100, 20) };
    let env = Env::linked("bulk").await;
    let (east, west) = (env.east(), env.west());
    futures::stream::iter(0..services)
        .for_each_concurrent(16, |i| {
            let east = east.clone();
            async move {
                let name = format!("svc-{i}");
                // Headless on both sides: the harness's /24 service range holds
                // only ~250 cluster IPs.
                let mut svc = exported_service(&name, "true", &[]);
                svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
                apply(&east, "bulk", &svc).await;
                apply(
                    &east,
                    "bulk",
                    &remote_slice(&name, &[("10.1.0.5", true, None)]),
                )
                .await;
            }
        })
        .await;

    // MESHLINK_MIRROR_BIN=<path to the built `mirror`> runs the real binary
    // (as a separate process, so its peak RSS can be read).
    let bin = std::env::var("MESHLINK_MIRROR_BIN").ok();
    let dir = tempfile::tempdir().unwrap();
    let started = tokio::time::Instant::now();
    let (_controller, child) = match &bin {
        Some(bin) => {
            let admin = multicluster_tests::free_addr().unwrap();
            let child = env.controller_binary(bin, dir.path(), admin);
            (None, Some(child))
        }
        None => (Some(env.controller("replica-a")), None),
    };
    let slices: Api<EndpointSlice> = Api::namespaced(west.clone(), "bulk");
    let params = ListParams::default().labels(MIRROR_LABELS);
    eventually("every service mirrored and ready", || {
        let (slices, params) = (slices.clone(), params.clone());
        async move {
            let list = slices.list(&params).await.ok()?;
            let ready = list
                .items
                .iter()
                .filter(|s| ready_of(s) == [Some(true)])
                .count();
            (ready == services).then_some(())
        }
    })
    .await;
    let all_mirrored = started.elapsed();

    // Flip one remote endpoint's readiness and time until the mirror follows.
    let watched = kube::runtime::watcher(
        slices.clone(),
        kube::runtime::watcher::Config::default().labels("kubernetes.io/service-name=svc-0-east"),
    );
    let mut watched = watched
        .try_filter_map(|e| async move {
            Ok(match e {
                kube::runtime::watcher::Event::Apply(s)
                | kube::runtime::watcher::Event::InitApply(s) => Some(ready_of(&s)),
                _ => None,
            })
        })
        .boxed();
    let mut latencies = Vec::with_capacity(changes);
    for i in 0..changes {
        let ready = i % 2 == 1;
        let t0 = tokio::time::Instant::now();
        apply(
            &east,
            "bulk",
            &remote_slice("svc-0", &[("10.1.0.5", ready, None)]),
        )
        .await;
        loop {
            let seen = tokio::time::timeout(DEADLINE, watched.next())
                .await
                .unwrap_or_else(|_| panic!("change {i} not mirrored"));
            if seen.unwrap().unwrap() == [Some(ready)] {
                break;
            }
        }
        latencies.push(t0.elapsed());
    }
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    let pid = child.as_ref().and_then(|c| c.id());
    let proc_status = pid.map_or("/proc/self/status".to_string(), |p| {
        format!("/proc/{p}/status")
    });
    let status = std::fs::read_to_string(&proc_status).unwrap();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?");
    eprintln!(
        "mirror bench: {services} services mirrored in {all_mirrored:?}; {changes} changes p50 {:?} p99 {:?}; {proc_status} {hwm}",
        pct(50),
        pct(99)
    );
    assert!(all_mirrored < Duration::from_secs(30), "{all_mirrored:?}");
}

/// A DNS server on loopback UDP that answers every A query with the address in
/// `answer` (TTL 1 s) and every other query with no records: enough for a
/// resolver to follow a gateway name as it moves.
async fn dns_server(
    answer: Arc<std::sync::Mutex<std::net::Ipv4Addr>>,
) -> (SocketAddr, JoinHandle<()>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let query = &buf[..n];
            // The header is 12 bytes; the question is a name (ending in a zero
            // label), a type and a class.
            let Some(zero) = query.get(12..).and_then(|q| q.iter().position(|b| *b == 0)) else {
                continue;
            };
            let end = 12 + zero + 5;
            if end > n {
                continue;
            }
            let is_a = query[end - 4..end - 2] == [0, 1];
            let mut reply = query[..end].to_vec();
            reply[2] = 0x84 | (query[2] & 0x01); // response, authoritative, RD echoed
            reply[3] = 0;
            reply[6..12].copy_from_slice(&[0, u8::from(is_a), 0, 0, 0, 0]);
            if is_a {
                // A pointer to the question's name, type A, class IN, TTL 1, 4 bytes.
                reply.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
                let ip = *answer.lock().unwrap();
                reply.extend_from_slice(&ip.octets());
            }
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    (addr, task)
}

/// The addresses of a mirror slice's endpoints that are ready.
fn ready_addresses(slice: &EndpointSlice) -> Vec<String> {
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_dns_names_are_resolved_and_followed() {
    let env = Env::start().await;
    let (east, west) = (env.east(), env.west());
    for c in [&east, &west] {
        create_namespace(c, "shop").await;
    }
    env.put_valid_secret().await;
    // A second gateway replica at another address, healthy too.
    let second_pod = env
        .harness
        .cluster("east")
        .create_gateway_pod("gateway-b", "east-b")
        .unwrap();
    let second_ip = second_pod.gateway_address().unwrap();
    // The Link has one probe port for every address.
    let port = env.gateway.addr.port();
    let _second = probe_server(
        &env.pki,
        listen_in_netns(second_pod.netns(), second_ip, port),
    )
    .await;
    let std::net::IpAddr::V4(first_ip) = env.gateway.addr.ip() else {
        panic!("gateway addresses are IPv4");
    };
    let answer = Arc::new(std::sync::Mutex::new(first_ip));
    let (dns, _dns_task) = dns_server(answer.clone()).await;
    env.put_link_via("east", "gateway.east.example").await;
    export_one_ready(&east, "shop", "books").await;
    let _controller = env.controller_with(
        "replica-a",
        SessionConfig {
            concurrency: 4,
            resync_interval: Duration::from_secs(5),
            resolve_interval: Duration::from_secs(1),
            dns_server: Some(dns),
        },
    );
    slice_until(
        &west,
        "shop",
        "books-east",
        "the name's first address",
        |s| ready_addresses(s) == [first_ip.to_string()],
    )
    .await;

    // The name moves to the second replica: the mirror follows without a restart.
    *answer.lock().unwrap() = second_ip;
    slice_until(&west, "shop", "books-east", "the name's new address", |s| {
        ready_addresses(s) == [second_ip.to_string()]
    })
    .await;
}

/// `GET path` on an admin server over plain HTTP/1.0: status code and body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_metrics_and_ready_and_stops_on_sigterm() {
    let env = Env::linked("shop").await;
    let east = env.east();
    export_one_ready(&east, "shop", "books").await;
    let bin = multicluster_tests::meshlink_binary("mirror").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let admin = multicluster_tests::free_addr().unwrap();
    let mut child = env.controller_binary(bin.to_str().unwrap(), dir.path(), admin);

    eventually("/ready answers 200", || async {
        (admin_get(admin, "/ready").await?.0 == 200).then_some(())
    })
    .await;
    let text = eventually("the mirror and the probe in /metrics", || async {
        let (status, body) = admin_get(admin, "/metrics").await?;
        let mirrored = body.contains(r#"mirror_mirrored_services{target_cluster="east"} 1"#);
        let alive = body.contains(r#"mirror_gateway_alive{target_cluster="east"} 1"#);
        (status == 200 && mirrored && alive).then_some(body)
    })
    .await;
    assert!(
        text.contains(r#"mirror_probe_latency_seconds_count{target_cluster="east"}"#),
        "{text}"
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the mirror exits within 10 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}
