//! End to end on loopback: app → west outbound proxy → east gateway → east inbound
//! proxy → app, over real sockets and real mutual TLS, for every session protocol;
//! the gateway's refusals, each counted by the right metric; and the gateway's
//! certificate rotated on disk in the middle of a transfer.

#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::SinkExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

use api::identity::SpiffeId;
use proxy::pki::Validity;
use proxy::tls::{IdPattern, Policy, TlsConfigs};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn h1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

fn request(mesh: &Mesh, body: impl Into<Bytes>) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("http://{}/echo", mesh.outbound))
        .header("host", MIRROR)
        .body(Full::new(body.into()))
        .unwrap()
}

#[tokio::test]
async fn http1_crosses_the_gateway() {
    let mesh = Mesh::start(http_app().await).await;
    let rsp = h1_client()
        .request(request(&mesh, "hello east"))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["x-seen-version"], "HTTP/1.1");
    assert_eq!(rsp.headers()["x-seen-mark"], "false");
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hello east");
    assert_eq!(
        sample(
            &mesh.gateway_registry,
            r#"responses_total{listener="Gateway",target="books.shop.svc.cluster.local:8080",status="2xx"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn http1_0_reaches_the_app_as_http1_0() {
    // Carried as HTTP/2 between the proxies, marked with its version.
    let mesh = Mesh::start(http_app().await).await;
    let mut conn = TcpStream::connect(mesh.outbound).await.unwrap();
    let req = format!("POST /echo HTTP/1.0\r\nhost: {MIRROR}\r\ncontent-length: 3\r\n\r\nold");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut rsp = String::new();
    conn.read_to_string(&mut rsp).await.unwrap();
    assert!(
        rsp.starts_with("HTTP/1.1 200") || rsp.starts_with("HTTP/1.0 200"),
        "{rsp}"
    );
    assert!(rsp.contains("x-seen-version: HTTP/1.0\r\n"), "{rsp}");
    assert!(rsp.contains("x-seen-mark: false\r\n"), "{rsp}");
    assert!(rsp.ends_with("\r\n\r\nold"), "{rsp}");
}

#[tokio::test]
async fn h2c_crosses_the_gateway_as_http2() {
    let mesh = Mesh::start(http_app().await).await;
    let rsp = h2_client()
        .request(request(&mesh, "over h2"))
        .await
        .unwrap();
    assert_eq!(rsp.headers()["x-seen-version"], "HTTP/2.0");
    assert_eq!(
        rsp.into_body().collect().await.unwrap().to_bytes(),
        "over h2"
    );
}

#[tokio::test]
async fn grpc_trailers_arrive() {
    let mesh = Mesh::start(http_app().await).await;
    let mut req = request(&mesh, &b"\0\0\0\0\x05hello"[..]);
    req.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    req.headers_mut().insert("te", "trailers".parse().unwrap());
    let rsp = h2_client().request(req).await.unwrap();
    let collected = rsp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), &b"\0\0\0\0\x05hello"[..]);
}

#[tokio::test]
async fn fifty_mib_body_arrives_intact() {
    let mesh = Mesh::start(http_app().await).await;
    let body: Vec<u8> = (0..50 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let rsp = h1_client()
        .request(request(&mesh, body.clone()))
        .await
        .unwrap();
    let got = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got.len(), body.len());
    assert!(got == body, "body corrupted");
}

#[tokio::test]
async fn thousand_concurrent_requests() {
    let mesh = Mesh::start(http_app().await).await;
    let client = h2_client();
    let calls = (0..1000).map(|i| {
        let (client, req) = (client.clone(), request(&mesh, format!("req {i}")));
        tokio::spawn(async move {
            let rsp = client.request(req).await.unwrap();
            assert_eq!(rsp.status(), 200);
            rsp.into_body().collect().await.unwrap().to_bytes() == format!("req {i}")
        })
    });
    let results = futures::future::join_all(calls).await;
    assert!(results.into_iter().all(|r| r.unwrap()));
}

#[tokio::test]
async fn opaque_tcp_crosses_the_gateway() {
    let mesh = Mesh::start(tcp_echo().await).await;
    let mut s = TcpStream::connect(mesh.outbound).await.unwrap();
    // Not HTTP-shaped: detection decides opaque at once.
    s.write_all(b"\x00\x01binary protocol").await.unwrap();
    let mut got = [0u8; 17];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"\x00\x01binary protocol");
}

#[tokio::test]
async fn server_speaks_first_crosses_the_gateway() {
    let mesh = Mesh::start(banner_server().await).await;
    let mut s = TcpStream::connect(mesh.outbound).await.unwrap();
    // The client stays silent: only the detection timeout can decide opaque, on
    // the outbound proxy and again on the inbound one.
    let mut banner = vec![0u8; BANNER.len()];
    s.read_exact(&mut banner).await.unwrap();
    assert_eq!(banner, BANNER);
    s.write_all(b"QUIT\r\n").await.unwrap();
    let mut echo = [0u8; 6];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"QUIT\r\n");
}

/// Opens mTLS to the gateway with `configs` and writes `bytes` then a request;
/// returns whether the gateway closed without answering.
async fn send_raw_as(mesh: &Mesh, configs: Arc<TlsConfigs>, bytes: &[u8]) -> bool {
    let tcp = TcpStream::connect(mesh.gateway).await.unwrap();
    let gateway_id = SpiffeId::parse(GATEWAY_ID).unwrap();
    let Ok((mut s, _)) = proxy::tls::connect(
        configs.client.clone(),
        tcp,
        &gateway_id,
        Duration::from_secs(5),
    )
    .await
    else {
        return true;
    };
    // TLS 1.3: the client finishes first, so a refusal of our certificate shows
    // up on the first read or write.
    let _ = s.write_all(bytes).await;
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    matches!(s.read_to_end(&mut buf).await, Ok(0) | Err(_)) && buf.is_empty()
}

async fn send_raw(mesh: &Mesh, bytes: &[u8]) -> bool {
    send_raw_as(
        mesh,
        mesh.pki.configs_from(WEB_ID, Validity::days(1), &mesh.pki),
        bytes,
    )
    .await
}

fn header(authority: &str, hop: u8) -> Vec<u8> {
    let h = proxy::header::header_for(authority, proxy::detect::Protocol::Http1, hop).unwrap();
    let mut out = Vec::new();
    h.encode(&mut out);
    out
}

async fn assert_counted(mesh: &Mesh, metric: &str, before: f64) {
    assert!(
        eventually(|| sample(&mesh.gateway_registry, metric) == before + 1.0).await,
        "{metric} not incremented:\n{}",
        scrape(&mesh.gateway_registry)
    );
}

async fn assert_refused(mesh: &Mesh, bytes: &[u8], metric: &str) {
    let before = sample(&mesh.gateway_registry, metric);
    assert!(
        send_raw(mesh, bytes).await,
        "gateway answered instead of refusing"
    );
    assert_counted(mesh, metric, before).await;
}

#[tokio::test]
async fn gateway_refuses_target_outside_cluster_domain() {
    let mesh = Mesh::start(http_app().await).await;
    let metric = r#"refused_total{listener="Gateway",reason="outside_cluster_domain""#;
    assert_refused(
        &mesh,
        &header("books.shop.svc.other.example:8080", 1),
        metric,
    )
    .await;
    assert_refused(&mesh, &header("127.0.0.1:22", 1), metric).await;
}

#[tokio::test]
async fn gateway_refuses_looping_request() {
    let mesh = Mesh::start(http_app().await).await;
    let metric = r#"refused_total{listener="Gateway",reason="hop_limit""#;
    assert_refused(&mesh, &header(TARGET, 2), metric).await;
    // Hop 1 (one crossing) is fine.
    assert!(!send_raw(&mesh, &header(TARGET, 1)).await);
}

#[tokio::test]
async fn gateway_refuses_garbage_header() {
    let mesh = Mesh::start(http_app().await).await;
    let metric = r#"transport_header_errors_total{direction="inbound",reason="bad_magic"}"#;
    assert_refused(&mesh, b"GARBAGE!", metric).await;
}

#[tokio::test]
async fn gateway_refuses_unknown_target() {
    let mesh = Mesh::start(http_app().await).await;
    let metric = r#"refused_total{listener="Gateway",reason="unknown_target""#;
    assert_refused(&mesh, &header("nope.shop.svc.cluster.local:80", 1), metric).await;
}

const HANDSHAKE: &str = r#"tls_handshake_failures_total{direction="inbound",reason="#;

#[tokio::test]
async fn gateway_refuses_untrusted_root() {
    let mesh = Mesh::start(http_app().await).await;
    let rogue = Pki::named("rogue root");
    // Issued by another root, though the client itself trusts the gateway's.
    let configs = rogue.configs_from(WEB_ID, Validity::days(1), &mesh.pki);
    let metric = format!("{HANDSHAKE}\"untrusted_issuer\"}}");
    assert!(send_raw_as(&mesh, configs, &header(TARGET, 1)).await);
    assert_counted(&mesh, &metric, 0.0).await;
}

#[tokio::test]
async fn gateway_refuses_expired_certificate() {
    let mesh = Mesh::start(http_app().await).await;
    let configs = mesh
        .pki
        .configs_from(WEB_ID, Validity::expired(), &mesh.pki);
    let metric = format!("{HANDSHAKE}\"expired\"}}");
    assert!(send_raw_as(&mesh, configs, &header(TARGET, 1)).await);
    assert_counted(&mesh, &metric, 0.0).await;
}

#[tokio::test]
async fn gateway_refuses_forbidden_identity() {
    let allow = vec![IdPattern::parse("spiffe://west.example/ns/shop/*").unwrap()];
    let mesh = Mesh::start_with(http_app().await, Policy::Allow(allow)).await;
    // web in shop is allowed end to end...
    let rsp = h1_client()
        .request(request(&mesh, "allowed"))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    // ...another namespace is not.
    let other = mesh.pki.configs_from(
        "spiffe://west.example/ns/batch/sa/job",
        Validity::days(1),
        &mesh.pki,
    );
    let metric = format!("{HANDSHAKE}\"forbidden\"}}");
    assert!(send_raw_as(&mesh, other, &header(TARGET, 1)).await);
    assert_counted(&mesh, &metric, 0.0).await;
}

#[tokio::test]
async fn thousand_concurrent_http1_requests() {
    let mesh = Mesh::start_patient(http_app().await).await;
    // HTTP/1 carries one request at a time per connection: 1,000 client
    // connections to the west proxy, which carries them all as HTTP/2 streams on
    // one connection to the gateway; the app sees HTTP/1.1 again. (With the
    // usual 300 ms detection timeout, a busy machine carries the connections
    // whose first bytes come late as opaque TCP, each on its own connection.)
    let client = h1_client();
    let calls = (0..1000).map(|i| {
        let (client, req) = (client.clone(), request(&mesh, format!("req {i}")));
        tokio::spawn(async move {
            let rsp = client.request(req).await.unwrap();
            assert_eq!(rsp.status(), 200);
            assert_eq!(rsp.headers()["x-seen-version"], "HTTP/1.1");
            rsp.into_body().collect().await.unwrap().to_bytes() == format!("req {i}")
        })
    });
    let results = futures::future::join_all(calls).await;
    assert!(results.into_iter().all(|r| r.unwrap()));
    let gateway_connections = sample(
        &mesh.gateway_registry,
        r#"tcp_open_total{listener="Gateway"}"#,
    );
    assert_eq!(gateway_connections, 1.0, "connections into the gateway");
}

/// Serial number and SPIFFE ID of the certificate the gateway presents to a new
/// connection.
async fn gateway_certificate(mesh: &Mesh) -> (Vec<u8>, String) {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let configs = mesh.pki.configs_from(WEB_ID, Validity::days(1), &mesh.pki);
    let tcp = TcpStream::connect(mesh.gateway).await.unwrap();
    let expected = SpiffeId::parse(GATEWAY_ID).unwrap();
    let (tls, id) = proxy::tls::connect(
        configs.client.clone(),
        tcp,
        &expected,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    let serial = X509Certificate::from_der(leaf)
        .unwrap()
        .1
        .raw_serial()
        .to_vec();
    (serial, id.to_string())
}

#[tokio::test]
async fn rotation_during_long_transfer_through_the_mesh() {
    const TOTAL: usize = 32 << 20;
    const CHUNK: usize = 64 << 10;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let issue = || {
        let id = SpiffeId::parse(GATEWAY_ID).unwrap();
        pki.ca.issue(&id, &[], Validity::days(1)).unwrap()
    };
    let first = issue();
    first.write(dir.path(), pki.ca.root_pem()).unwrap();
    let files = proxy::tls::CredentialFiles::in_dir(dir.path());
    let alpn = vec![proxy::header::ALPN.to_vec()];
    let mut creds = proxy::tls::watch_credentials(files, alpn, Duration::from_millis(20)).unwrap();
    let second = issue();
    let mesh = Mesh::start_with_gateway_tls(http_app().await, pki, creds.configs.clone()).await;
    assert_eq!(gateway_certificate(&mesh).await.0, first.serial);

    // An echo through the mesh whose request body the test feeds chunk by chunk,
    // so the transfer is provably unfinished while the certificate changes.
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let client = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{}/echo", mesh.outbound))
        .header("host", MIRROR)
        .body(StreamBody::new(rx))
        .unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let transfer = tokio::spawn(async move {
        let mut body = client.request(req).await.unwrap().into_body();
        let mut got = Vec::with_capacity(TOTAL);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                got.extend_from_slice(&data);
                counter.store(got.len(), Ordering::Relaxed);
            }
        }
        got
    });
    let pattern =
        |i: usize| -> Bytes { (0..CHUNK).map(|j| ((i * CHUNK + j) % 251) as u8).collect() };
    let chunks = TOTAL / CHUNK;
    for i in 0..chunks / 2 {
        tx.send(Ok(Frame::data(pattern(i)))).await.unwrap();
    }
    assert!(
        eventually(|| received.load(Ordering::Relaxed) == TOTAL / 2).await,
        "the first half never came back"
    );

    // Rotate the gateway's files mid-transfer.
    second.write(dir.path(), mesh.pki.ca.root_pem()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), creds.configs.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.configs.borrow_and_update().serial, second.serial);
    let (serial, id) = gateway_certificate(&mesh).await;
    assert_eq!(
        serial, second.serial,
        "a new connection still gets the old certificate"
    );
    assert_eq!(id, GATEWAY_ID);
    // New requests cross the mesh beside the open transfer (a new connection to
    // the gateway, since the pooled one is busy), verified against the new leaf.
    let rsp = h1_client()
        .request(request(&mesh, "after rotation"))
        .await
        .unwrap();
    assert_eq!(
        rsp.into_body().collect().await.unwrap().to_bytes(),
        "after rotation"
    );

    for i in chunks / 2..chunks {
        tx.send(Ok(Frame::data(pattern(i)))).await.unwrap();
    }
    drop(tx);
    let got = tokio::time::timeout(Duration::from_secs(60), transfer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), TOTAL);
    let expected: Vec<u8> = (0..chunks).flat_map(|i| pattern(i).to_vec()).collect();
    assert!(got == expected, "the transfer was corrupted");
}

/// A TCP relay to `to` whose connections can be frozen: once [`Relay::freeze`]
/// is called, the connections open at that moment stop carrying bytes in either
/// direction but stay open (a peer that vanished without closing anything);
/// later connections are relayed normally.
struct Relay {
    addr: std::net::SocketAddr,
    frozen_below: Arc<AtomicUsize>,
    opened: Arc<AtomicUsize>,
    /// Frozen connections whose client (the proxy) has closed its side.
    abandoned: Arc<AtomicUsize>,
    /// Bytes relayed, both ways.
    moved: Arc<AtomicUsize>,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen_below = Arc::new(AtomicUsize::new(0));
        let opened = Arc::new(AtomicUsize::new(0));
        let abandoned = Arc::new(AtomicUsize::new(0));
        let moved = Arc::new(AtomicUsize::new(0));
        let (frozen, count, gone) = (frozen_below.clone(), opened.clone(), abandoned.clone());
        let bytes = moved.clone();
        tokio::spawn(async move {
            loop {
                let (client, _) = listener.accept().await.unwrap();
                let upstream = TcpStream::connect(to).await.unwrap();
                let id = count.fetch_add(1, Ordering::SeqCst);
                let frozen = frozen.clone();
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                tokio::spawn(pipe(ur, cw, id, frozen.clone(), bytes.clone()));
                let (gone, bytes) = (gone.clone(), bytes.clone());
                tokio::spawn(async move {
                    if pipe(cr, uw, id, frozen, bytes).await == Ended::ClosedWhileFrozen {
                        gone.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Self {
            addr,
            frozen_below,
            opened,
            abandoned,
            moved,
        }
    }

    fn freeze(&self) {
        let opened = self.opened.load(Ordering::SeqCst);
        self.frozen_below.store(opened, Ordering::SeqCst);
    }
}

/// How a relayed direction ended.
#[derive(PartialEq)]
enum Ended {
    Closed,
    /// The reading side closed after the connection was frozen.
    ClosedWhileFrozen,
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: usize,
    frozen_below: Arc<AtomicUsize>,
    moved: Arc<AtomicUsize>,
) -> Ended {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if id < frozen_below.load(Ordering::SeqCst) {
            // Hold both sockets and never move another byte; only notice when
            // the reading side gives up.
            while from.read(&mut buf).await.unwrap_or(0) > 0 {}
            return Ended::ClosedWhileFrozen;
        }
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            return Ended::Closed;
        }
        moved.fetch_add(n, Ordering::SeqCst);
    }
}

/// West's client, with the east sidecar reached through a [`Relay`].
struct Relayed {
    mesh: Mesh,
    relay: Relay,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Relayed {
    /// The mesh, after requests until one crossed the relay: the proxies then
    /// hold exactly one connection through it.
    async fn start() -> Self {
        let mesh = Mesh::start(http_app().await).await;
        let relay = Relay::start(mesh.inbound).await;
        let via_relay = proxy::discovery::Endpoint {
            identity: Some(BOOKS_ID.into()),
            ..proxy::discovery::Endpoint::plain(relay.addr)
        };
        mesh.east_discovery.set(TARGET, vec![via_relay]);
        let this = Self {
            mesh,
            relay,
            client: h1_client(),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while this.relay.opened.load(Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no request took the relay"
            );
            assert_eq!(this.get().await.status(), 200);
        }
        assert_eq!(this.relay.opened.load(Ordering::SeqCst), 1);
        this
    }

    /// A GET from west's app, answered within 40 s.
    async fn get(&self) -> http::Response<hyper::body::Incoming> {
        let req = http::Request::get(format!("http://{}/", self.mesh.outbound))
            .header("host", MIRROR)
            .body(Full::new(Bytes::new()))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(40), self.client.request(req))
            .await
            .expect("the request waited on the frozen connection for 40 s")
            .unwrap()
    }
}

#[tokio::test]
async fn a_peer_that_stops_answering_is_left_for_a_new_connection() {
    // All requests to a peer share one HTTP/2 connection; if the peer vanishes
    // without closing it, pings find out and the request is retried on a new
    // connection instead of waiting forever.
    let relayed = Relayed::start().await;
    relayed.relay.freeze();
    let started = tokio::time::Instant::now();
    assert_eq!(relayed.get().await.status(), 200);
    assert_eq!(
        relayed.relay.opened.load(Ordering::SeqCst),
        2,
        "a second connection"
    );
    // Ping interval (10 s) plus ping timeout (5 s), and the retry.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_idle_connection_to_a_vanished_peer_is_closed_before_the_next_request() {
    // The pooled connection is idle when the peer stops answering: pings find
    // that out too, so the next request does not wait for them.
    let relayed = Relayed::start().await;
    relayed.relay.freeze();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while relayed.relay.abandoned.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle connection to the frozen peer was still open after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = tokio::time::Instant::now();
    assert_eq!(relayed.get().await.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(relayed.relay.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn apps_are_not_pinged() {
    // Pings are for connections between meshed peers; an app's HTTP/2 server
    // may count them as abuse and close the connection (gRPC-Go does, streams
    // and all). An HTTP/2 echo whose stream stays open while nothing moves.
    let relay = Relay::start(http_app().await).await;
    let mesh = Mesh::start(relay.addr).await;
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = http::Request::post(format!("http://{}/echo", mesh.outbound))
        .header("host", MIRROR)
        .body(StreamBody::new(rx))
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from("first"))))
        .await
        .unwrap();
    let rsp = client.request(req).await.unwrap();
    assert_eq!(rsp.headers()["x-seen-version"], "HTTP/2.0");
    let mut body = rsp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first");
    let before = relay.moved.load(Ordering::SeqCst);
    // Nothing to wait for: a ping would cross within the ping interval (10 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        relay.moved.load(Ordering::SeqCst),
        before,
        "bytes crossed to the app while its stream was quiet"
    );
    drop(tx);
    assert!(
        body.collect().await.is_ok(),
        "the stream did not end cleanly"
    );
}

/// An HTTP/1 app that answers no request until `n` are waiting, then all of
/// them (long polls that a peer's stream limit must not hold back).
async fn barrier_app(n: usize) -> std::net::SocketAddr {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    http1_app(move |_| {
        let barrier = barrier.clone();
        async move {
            barrier.wait().await;
            http::Response::new(Full::new(Bytes::from("all here")))
        }
    })
    .await
}

#[tokio::test]
async fn more_requests_wait_at_once_than_one_peer_connection_streams_by_default() {
    // 300 HTTP/1 requests that the app holds until all have arrived travel as
    // streams of one HTTP/2 connection between the proxies; a peer limit of
    // 200 concurrent streams would hold 100 back and the app would never answer.
    const WAITING: usize = 300;
    let mesh = Mesh::start_patient(barrier_app(WAITING).await).await;
    let client = h1_client();
    let calls = (0..WAITING).map(|i| {
        let (client, req) = (client.clone(), request(&mesh, format!("req {i}")));
        tokio::spawn(async move { client.request(req).await.map(|r| r.status()) })
    });
    let all = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(calls))
        .await
        .expect("requests held back: the app never saw all of them");
    assert!(all.into_iter().all(|r| r.unwrap().unwrap() == 200));
}

#[tokio::test]
async fn large_headers_cross_as_they_do_over_http1() {
    // 40 KiB of headers each way: more than HTTP/2's usual 16 KiB header list,
    // well within what an HTTP/1 hop accepts.
    let app = http1_app(|req: http::Request<hyper::body::Incoming>| {
        let big = req.headers().get("x-big").cloned();
        async move {
            let mut rsp = http::Response::new(Full::new(Bytes::new()));
            if let Some(big) = big {
                rsp.headers_mut().insert("x-big-back", big);
            }
            rsp
        }
    })
    .await;
    let mesh = Mesh::start(app).await;
    let big = "a".repeat(40 * 1024);
    let mut req = request(&mesh, "");
    req.headers_mut().insert("x-big", big.parse().unwrap());
    let rsp = h1_client().request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(
        rsp.headers().get("x-big-back").map(|v| v.len()),
        Some(big.len())
    );
}

#[tokio::test]
async fn slow_readers_do_not_stall_other_requests_to_the_same_peer() {
    // HTTP/1 clients that stop reading large responses. Over HTTP/1 each would
    // only fill its own connection; carried as streams of one HTTP/2 connection
    // they must not use up its flow-control window for every other request.
    const SLOW: usize = 6;
    let big = Bytes::from(vec![7u8; 32 << 20]);
    let app = http1_app(move |req| {
        let body = if req.uri().path() == "/big" {
            big.clone()
        } else {
            Bytes::from("small")
        };
        async move { http::Response::new(Full::new(body)) }
    })
    .await;
    let mesh = Mesh::start(app).await;
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut s = TcpStream::connect(mesh.outbound).await.unwrap();
        let get = format!("GET /big HTTP/1.1\r\nhost: {MIRROR}\r\n\r\n");
        s.write_all(get.as_bytes()).await.unwrap();
        slow.push(s);
    }
    let client = h1_client();
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut answered = 0;
    while tokio::time::Instant::now() < until {
        let req = http::Request::get(format!("http://{}/small", mesh.outbound))
            .header("host", MIRROR)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let exchange = async {
            let rsp = client.request(req).await.unwrap();
            rsp.into_body().collect().await.unwrap().to_bytes()
        };
        let body = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .unwrap_or_else(|_| panic!("request {answered} waited 5 s behind {SLOW} slow readers"));
        assert_eq!(body, "small");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(slow);
}

#[tokio::test]
async fn a_draining_gateway_finishes_the_streams_it_carries() {
    // West's HTTP/1 requests ride one HTTP/2 connection into the gateway; when
    // the gateway shuts down, every request already on that connection is
    // answered.
    const HELD: usize = 20;
    let seen = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (count, gate) = (seen.clone(), release.clone());
    let app = http1_app(move |_| {
        let (count, gate) = (count.clone(), gate.clone());
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            gate.acquire().await.unwrap().forget();
            http::Response::new(Full::new(Bytes::from("late")))
        }
    })
    .await;
    let mesh = Mesh::start(app).await;
    let client = h1_client();
    let mut held = tokio::task::JoinSet::new();
    for _ in 0..HELD {
        let req = http::Request::get(format!("http://{}/", mesh.outbound))
            .header("host", MIRROR)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let client = client.clone();
        held.spawn(async move {
            let rsp = client.request(req).await.unwrap();
            let status = rsp.status();
            (status, rsp.into_body().collect().await.unwrap().to_bytes())
        });
    }
    assert!(
        eventually(|| seen.load(Ordering::SeqCst) == HELD).await,
        "{} of {HELD} requests reached the app",
        seen.load(Ordering::SeqCst)
    );
    mesh.stop_gateway();
    // The gateway no longer accepts: new connections are refused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(mesh.gateway).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    release.add_permits(HELD);
    let mut answered = 0;
    while let Some(done) = held.join_next().await {
        let (status, body) = done.unwrap();
        assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"late"[..]));
        answered += 1;
    }
    assert_eq!(answered, HELD);
}
