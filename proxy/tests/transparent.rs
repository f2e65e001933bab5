//! Transparent interception in throwaway network namespaces: `proxy init`'s
//! rules applied with the real iptables; an outbound proxy that learns each
//! connection's target from SO_ORIGINAL_DST after the REDIRECT; and an inbound
//! proxy that hands redirected mTLS traffic to the app at the original port.
//! Needs root and iptables (both present on the CI machine and in the harness).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use api::identity::SpiffeId;
use proxy::accept::AcceptConfig;
use proxy::balance::BalanceConfig;
use proxy::detect::DetectConfig;
use proxy::discovery::{Endpoint, StaticDiscovery};
use proxy::forward::connect::Connector;
use proxy::inbound::{AppTarget, Inbound, InboundConfig};
use proxy::init::{InitConfig, apply};
use proxy::metrics::Metrics;
use proxy::outbound::{Outbound, OutboundConfig, TargetMode};
use proxy::pki::{Ca, Validity};
use proxy::route::Router;
use proxy::tls::{Policy, TlsConfigs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A network namespace deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("ml-dp-{tag}-{}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        let ns = Self(name);
        run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
        run(&["ip", "-n", &ns.0, "addr", "add", "10.9.9.9/32", "dev", "lo"]);
        ns
    }

    fn iptables(&self) -> Vec<&str> {
        vec!["ip", "netns", "exec", &self.0, "iptables"]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn init(outbound_port: u16) -> InitConfig {
    InitConfig {
        proxy_uid: 2102,
        inbound_port: 4143,
        outbound_port,
        skip_inbound_ports: vec![4191],
        skip_outbound_ports: vec![],
    }
}

#[test]
fn init_rules_apply_in_a_namespace() {
    let ns = Netns::new("init");
    apply(&init(4140), &ns.iptables()).unwrap();
    let mut list = ns.iptables();
    list.extend(["-t", "nat", "-S"]);
    let rules = run(&list);
    for want in [
        "-A OUTPUT -p tcp -j MESHLINK_OUTPUT",
        "-A MESHLINK_OUTPUT -m owner --uid-owner 2102 -j RETURN",
        "-A MESHLINK_OUTPUT -p tcp -j REDIRECT --to-ports 4140",
        "-A PREROUTING -p tcp -j MESHLINK_INBOUND",
        "-A MESHLINK_INBOUND -p tcp -m tcp --dport 4191 -j RETURN",
    ] {
        assert!(rules.contains(want), "missing {want:?} in:\n{rules}");
    }
}

/// Runs `f` on a thread that has entered `ns`, with its own runtime, so every
/// socket it opens lives in the namespace.
fn in_netns<F>(ns: &Netns, f: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    let path = format!("/var/run/netns/{}", ns.0);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f());
    })
    .join()
    .unwrap();
}

#[test]
fn outbound_follows_the_original_destination() {
    let ns = Netns::new("odst");
    let iptables: Vec<String> = ns.iptables().into_iter().map(String::from).collect();
    in_netns(&ns, move || async move {
        let app = echo_server("127.0.0.1:0").await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let program: Vec<&str> = iptables.iter().map(String::as_str).collect();
        apply(&init(port), &program).unwrap();

        // Discovery knows the "service address" 10.9.9.9:80 as the app.
        let discovery = Arc::new(StaticDiscovery::new());
        discovery.set("10.9.9.9:80", vec![Endpoint::plain(app)]);
        let connector = Connector::new(Duration::from_secs(5), None);
        let router = Arc::new(Router::new(
            discovery,
            connector,
            BalanceConfig::default(),
            1,
        ));
        let metrics = Arc::new(Metrics::register(&mut Default::default()));
        let config = OutboundConfig {
            target: TargetMode::OriginalDst,
            detect: DetectConfig::default(),
            accept: AcceptConfig::default(),
            idle_timeout: Duration::from_secs(60),
            buffer_size: 16 * 1024,
        };
        tokio::spawn(
            Outbound::new(config, router, metrics).serve(listener, std::future::pending()),
        );

        let mut s = TcpStream::connect("10.9.9.9:80").await.unwrap();
        s.write_all(b"\x01hello through iptables").await.unwrap();
        let mut got = [0u8; 23];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\x01hello through iptables");
    });
}

#[test]
fn inbound_hands_redirected_traffic_to_the_original_port() {
    const SERVER: &str = "spiffe://east.example/ns/shop/sa/books";
    const CLIENT: &str = "spiffe://east.example/ns/meshlink/sa/gateway";
    let ns = Netns::new("inb");
    let iptables: Vec<String> = ns.iptables().into_iter().map(String::from).collect();
    in_netns(&ns, move || async move {
        // The app listens on its own port; peers dial the pod address at that port.
        echo_server("127.0.0.1:8080").await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port().to_string();
        let mut redirect: Vec<&str> = iptables.iter().map(String::as_str).collect();
        redirect.extend([
            "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "10.9.9.9", "--dport", "8080",
        ]);
        redirect.extend(["-j", "REDIRECT", "--to-ports", &port]);
        run(&redirect);

        let ca = Ca::root("netns root", Validity::days(1)).unwrap();
        let configs = |id: &str| {
            let creds = ca.credentials(&SpiffeId::parse(id).unwrap(), Validity::days(1));
            Arc::new(TlsConfigs::build(&creds.unwrap(), &[]).unwrap())
        };
        let router = Arc::new(Router::new(
            Arc::new(StaticDiscovery::new()),
            Connector::new(Duration::from_secs(5), None),
            BalanceConfig::default(),
            1,
        ));
        let config = InboundConfig {
            app: AppTarget::OriginalDstPort,
            detect: DetectConfig::default(),
            policy: Policy::AnyTrusted,
            accept: AcceptConfig::default(),
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            buffer_size: 16 * 1024,
        };
        let metrics = Arc::new(Metrics::register(&mut Default::default()));
        let (_tx, server_tls) = tokio::sync::watch::channel(configs(SERVER));
        let inbound = Inbound::new(config, server_tls, router, metrics);
        tokio::spawn(inbound.serve(listener, std::future::pending()));

        let tcp = TcpStream::connect("10.9.9.9:8080").await.unwrap();
        let expected = SpiffeId::parse(SERVER).unwrap();
        let client = configs(CLIENT).client.clone();
        let (mut s, _) = proxy::tls::connect(client, tcp, &expected, Duration::from_secs(5))
            .await
            .unwrap();
        s.write_all(b"\x02to port 8080").await.unwrap();
        let mut got = [0u8; 13];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\x02to port 8080");
    });
}

async fn echo_server(addr: &str) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}
