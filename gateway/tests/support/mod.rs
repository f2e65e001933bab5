//! Test support: a throwaway PKI, test applications (HTTP echo speaking HTTP/1,
//! h2c and gRPC-shaped HTTP/2, TCP echo, a server-speaks-first banner server),
//! and a two-cluster mesh on loopback: west outbound proxy → east gateway → east
//! inbound proxy → app, every listener on port 0.
//!
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use api::identity::SpiffeId;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use proxy::accept::AcceptConfig;
use proxy::balance::BalanceConfig;
use proxy::detect::DetectConfig;
use proxy::discovery::{Endpoint, StaticDiscovery};
use proxy::forward::connect::Connector;
use proxy::header::ALPN;
use proxy::inbound::{AppTarget, Inbound, InboundConfig};
use proxy::metrics::Metrics;
use proxy::outbound::{Outbound, OutboundConfig, TargetMode};
use proxy::pki::{Ca, Validity};
use proxy::route::Router;
use proxy::tls::{Credentials, Policy, TlsConfigs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const TARGET: &str = "books.shop.svc.cluster.local:8080";
pub const MIRROR: &str = "books-east.shop.svc.cluster.local:8080";
pub const GATEWAY_ID: &str = "spiffe://east.example/ns/meshlink-multicluster/sa/gateway";
pub const BOOKS_ID: &str = "spiffe://east.example/ns/shop/sa/books";
pub const WEB_ID: &str = "spiffe://west.example/ns/shop/sa/web";

/// A test CA (identity's `proxy::pki`) and TLS configs built from it.
pub struct Pki {
    pub ca: Ca,
}

impl Pki {
    pub fn new() -> Self {
        Self::named("meshlink test root")
    }

    pub fn named(cn: &str) -> Self {
        Self {
            ca: Ca::root(cn, Validity::days(1)).unwrap(),
        }
    }

    /// Credentials for `id` issued by this CA with `validity`, trusting `trust`'s root.
    pub fn creds(&self, id: &str, validity: Validity, trust: &Pki) -> Credentials {
        let leaf = self
            .ca
            .issue(&SpiffeId::parse(id).unwrap(), &[], validity)
            .unwrap();
        leaf.credentials(trust.ca.root_pem()).unwrap()
    }

    /// TLS configs for `id`, offering the transport-header ALPN.
    pub fn configs_from(&self, id: &str, validity: Validity, trust: &Pki) -> Arc<TlsConfigs> {
        Arc::new(TlsConfigs::build(&self.creds(id, validity, trust), &[ALPN.to_vec()]).unwrap())
    }

    /// A credentials watch for `id`, the shape `Inbound`, `Gateway` and
    /// `Connector` take.
    pub fn watch(&self, id: &str) -> watch::Receiver<Arc<TlsConfigs>> {
        watch::channel(self.configs_from(id, Validity::days(1), self)).1
    }
}

/// An HTTP/1 + h2c echo server: the response body is the request body, header
/// `x-seen-version` names the version the app saw, `x-seen-mark` whether it saw
/// the proxies' HTTP/1-over-HTTP/2 mark (it must not), and gRPC requests get
/// `grpc-status: 0` as a trailer.
pub async fn http_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(echo);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

async fn echo(req: Request<Incoming>) -> Result<Response<EchoBody>, Infallible> {
    let version = format!("{:?}", req.version());
    let mark = req
        .headers()
        .contains_key(proxy::forward::orig_proto::HEADER);
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let body: EchoBody = if grpc {
        let data = req.into_body().collect().await.unwrap().to_bytes();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        Full::new(data)
            .map_err(|never| match never {})
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed()
    } else {
        req.into_body().boxed()
    };
    let mut rsp = Response::new(body);
    rsp.headers_mut()
        .insert("x-seen-version", version.parse().unwrap());
    rsp.headers_mut()
        .insert("x-seen-mark", mark.to_string().parse().unwrap());
    Ok(rsp)
}

/// A plain HTTP/1 app on loopback answering every request with `handler`.
pub async fn http1_app<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let handler = handler.clone();
            let svc = hyper::service::service_fn(move |req| {
                let rsp = handler(req);
                async move { Ok::<_, Infallible>(rsp.await) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc),
            );
        }
    });
    addr
}

/// A TCP echo server.
pub async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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

/// A server-speaks-first server: sends a banner, then echoes one line back.
pub const BANNER: &[u8] = b"220 banner.example ready\r\n";
pub async fn banner_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                s.write_all(BANNER).await.unwrap();
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let _ = s.write_all(&buf[..n]).await;
            });
        }
    });
    addr
}

/// West outbound → east gateway → east inbound → app, on loopback.
pub struct Mesh {
    pub outbound: SocketAddr,
    pub gateway: SocketAddr,
    pub inbound: SocketAddr,
    pub pki: Pki,
    pub gateway_registry: Registry,
    pub outbound_registry: Registry,
    pub east_discovery: Arc<StaticDiscovery>,
    _shutdown: watch::Sender<()>,
    gateway_shutdown: watch::Sender<()>,
}

/// Protocol detection with `timeout`: short so server-speaks-first sessions start
/// quickly, long where a busy test must not take a slow client for opaque.
pub fn detect(timeout: Duration) -> DetectConfig {
    DetectConfig {
        timeout,
        ..DetectConfig::default()
    }
}

/// The detection timeout of [`Mesh::start`].
const QUICK_DETECT: Duration = Duration::from_millis(300);

impl Mesh {
    pub async fn start(app: SocketAddr) -> Self {
        Self::start_with(app, Policy::AnyTrusted).await
    }

    /// A mesh whose gateway admits only identities `policy` allows.
    pub async fn start_with(app: SocketAddr, policy: Policy) -> Self {
        Self::build(app, policy, Pki::new(), None, QUICK_DETECT).await
    }

    /// A mesh whose proxies wait up to 10 s for a client's first bytes, so that
    /// under a burst of connections every HTTP client is detected as HTTP.
    pub async fn start_patient(app: SocketAddr) -> Self {
        let patient = Duration::from_secs(10);
        Self::build(app, Policy::AnyTrusted, Pki::new(), None, patient).await
    }

    /// A mesh of `pki`'s identities whose gateway serves `gateway_tls` (issued by
    /// `pki` for [`GATEWAY_ID`]; rotating credential files, for instance).
    pub async fn start_with_gateway_tls(
        app: SocketAddr,
        pki: Pki,
        gateway_tls: watch::Receiver<Arc<TlsConfigs>>,
    ) -> Self {
        Self::build(
            app,
            Policy::AnyTrusted,
            pki,
            Some(gateway_tls),
            QUICK_DETECT,
        )
        .await
    }

    async fn build(
        app: SocketAddr,
        policy: Policy,
        pki: Pki,
        gateway_tls: Option<watch::Receiver<Arc<TlsConfigs>>>,
        detect_timeout: Duration,
    ) -> Self {
        let (shutdown, rx) = watch::channel(());
        let connect_timeout = Duration::from_secs(5);

        // East: the app's sidecar (inbound) and the gateway.
        let gateway_tls = gateway_tls.unwrap_or_else(|| pki.watch(GATEWAY_ID));
        let east_connector = Connector::new(connect_timeout, Some(gateway_tls.clone()));
        let inbound_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inbound = inbound_l.local_addr().unwrap();
        let mut reg = Registry::default();
        let inbound_metrics = Arc::new(Metrics::register(&mut reg));
        let router = Router::new(
            Arc::new(StaticDiscovery::new()),
            Connector::new(connect_timeout, None),
            BalanceConfig::default(),
            1,
        );
        let inbound_proxy = Inbound::new(
            InboundConfig {
                app: AppTarget::Fixed(app),
                detect: detect(detect_timeout),
                policy: Policy::AnyTrusted,
                accept: AcceptConfig::default(),
                handshake_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(60),
                buffer_size: 16 * 1024,
            },
            pki.watch(BOOKS_ID),
            Arc::new(router),
            inbound_metrics,
        );
        tokio::spawn(inbound_proxy.serve(inbound_l, signaled(&rx)));

        let east_discovery = Arc::new(StaticDiscovery::new());
        east_discovery.set(
            TARGET,
            vec![Endpoint {
                identity: Some(BOOKS_ID.into()),
                ..Endpoint::plain(inbound)
            }],
        );
        let gateway_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = gateway_l.local_addr().unwrap();
        let mut gateway_registry = Registry::default();
        let gw_metrics = Arc::new(Metrics::register(&mut gateway_registry));
        let gw_router = Arc::new(Router::new(
            east_discovery.clone(),
            east_connector,
            BalanceConfig::default(),
            2,
        ));
        let gw = gateway::Gateway::new(
            gateway::GatewayConfig {
                cluster_domain: "cluster.local".into(),
                policy,
                handshake_timeout: Duration::from_secs(5),
                header_timeout: Duration::from_secs(5),
                accept: AcceptConfig::default(),
                idle_timeout: Duration::from_secs(60),
                buffer_size: 16 * 1024,
            },
            gateway_tls,
            gw_router,
            gw_metrics,
        );
        let (gateway_shutdown, gateway_rx) = watch::channel(());
        tokio::spawn(gw.serve(gateway_l, signaled(&gateway_rx)));

        // West: the client's sidecar (outbound), resolving the mirror service.
        let west_discovery = Arc::new(StaticDiscovery::new());
        west_discovery.set(
            MIRROR,
            vec![Endpoint {
                identity: Some(GATEWAY_ID.into()),
                remote_authority: Some(TARGET.into()),
                cluster: Some("east".into()),
                ..Endpoint::plain(gateway)
            }],
        );
        let west_connector = Connector::new(connect_timeout, Some(pki.watch(WEB_ID)));
        let west_router = Arc::new(Router::new(
            west_discovery,
            west_connector,
            BalanceConfig::default(),
            1,
        ));
        let outbound_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let outbound = outbound_l.local_addr().unwrap();
        let mut outbound_registry = Registry::default();
        let out_metrics = Arc::new(Metrics::register(&mut outbound_registry));
        let out = Outbound::new(
            OutboundConfig {
                target: TargetMode::Fixed(MIRROR.into()),
                detect: detect(detect_timeout),
                accept: AcceptConfig::default(),
                idle_timeout: Duration::from_secs(60),
                buffer_size: 16 * 1024,
            },
            west_router,
            out_metrics,
        );
        tokio::spawn(out.serve(outbound_l, signaled(&rx)));

        Self {
            outbound,
            gateway,
            inbound,
            pki,
            gateway_registry,
            outbound_registry,
            east_discovery,
            _shutdown: shutdown,
            gateway_shutdown,
        }
    }

    /// Shuts the gateway down alone, as SIGTERM does: it stops accepting and
    /// drains what it carries.
    pub fn stop_gateway(&self) {
        self.gateway_shutdown.send_replace(());
    }
}

/// Resolves once `rx`'s sender sends or is dropped: a listener's shutdown.
fn signaled(rx: &watch::Receiver<()>) -> impl Future<Output = ()> + use<> {
    let mut rx = rx.clone();
    async move {
        let _ = rx.changed().await;
    }
}

/// The text exposition of a registry.
pub fn scrape(reg: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, reg).unwrap();
    text
}

/// The value of the sample whose line starts with `prefix`, or 0.
pub fn sample(reg: &Registry, prefix: &str) -> f64 {
    scrape(reg)
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Polls `f` until it is true or 10 s pass.
pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}
