//! End to end on loopback: app → west outbound proxy → east gateway → east inbound
//! proxy → app, over real sockets and real mutual TLS, for every session protocol;
//! and the gateway's refusals, each counted by the right metric.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use proxy::forward::connect::ClientTls;
use rustls_pki_types::ServerName;
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
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hello east");
    assert_eq!(
        sample(
            &mesh.gateway_registry,
            r#"responses_total{direction="Gateway",target="books.shop.svc.cluster.local:8080",status="2xx"}"#
        ),
        1.0
    );
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

/// Opens TLS to the gateway as a west workload and writes `bytes`; returns
/// whether the gateway closed the connection without sending anything.
async fn send_raw(mesh: &Mesh, bytes: &[u8]) -> bool {
    let tls = mesh.pki.client(WEB_ID);
    let config = tls.config(GATEWAY_ID, Some(proxy::header::ALPN)).unwrap();
    let tcp = TcpStream::connect(mesh.gateway).await.unwrap();
    let name = ServerName::IpAddress(mesh.gateway.ip().into());
    let mut s = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    s.write_all(bytes).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    matches!(s.read_to_end(&mut buf).await, Ok(0) | Err(_)) && buf.is_empty()
}

fn header(authority: &str, hop: u8) -> Vec<u8> {
    proxy::header::TransportTarget::new(authority, proxy::detect::Protocol::Http1, hop)
        .unwrap()
        .encode()
}

async fn assert_refused(mesh: &Mesh, bytes: &[u8], metric: &str) {
    let before = sample(&mesh.gateway_registry, metric);
    assert!(
        send_raw(mesh, bytes).await,
        "gateway answered instead of refusing"
    );
    assert!(
        eventually(|| sample(&mesh.gateway_registry, metric) == before + 1.0).await,
        "{metric} not incremented:\n{}",
        scrape(&mesh.gateway_registry)
    );
}

#[tokio::test]
async fn gateway_refuses_target_outside_cluster_domain() {
    let mesh = Mesh::start(http_app().await).await;
    let metric = r#"refused_total{direction="Gateway",reason="outside_cluster_domain""#;
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
    let metric = r#"refused_total{direction="Gateway",reason="hop_limit""#;
    assert_refused(&mesh, &header(TARGET, 2), metric).await;
}

#[tokio::test]
async fn gateway_refuses_garbage_header() {
    let mesh = Mesh::start(http_app().await).await;
    let metric = r#"header_errors_total{direction="Gateway",reason="bad_magic""#;
    assert_refused(&mesh, b"GARBAGE!", metric).await;
}

#[tokio::test]
async fn gateway_refuses_unknown_target() {
    let mesh = Mesh::start(http_app().await).await;
    let metric = r#"refused_total{direction="Gateway",reason="unknown_target""#;
    assert_refused(&mesh, &header("nope.shop.svc.cluster.local:80", 1), metric).await;
}

#[tokio::test]
async fn gateway_refuses_client_without_certificate() {
    let mesh = Mesh::start(http_app().await).await;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        roots.add(mesh.pki.root.clone()).unwrap();
        roots
    })
    .with_no_client_auth();
    let tcp = TcpStream::connect(mesh.gateway).await.unwrap();
    let name = ServerName::IpAddress(mesh.gateway.ip().into());
    // TLS 1.3: the client finishes first; the server's refusal shows on read.
    if let Ok(mut s) = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        assert!(buf.is_empty());
    }
    let metric = r#"tls_handshake_failures_total{direction="Gateway",reason="no_client_cert""#;
    assert!(
        eventually(|| sample(&mesh.gateway_registry, metric) == 1.0).await,
        "{}",
        scrape(&mesh.gateway_registry)
    );
}

#[tokio::test]
async fn gateway_refuses_untrusted_root() {
    let mesh = Mesh::start(http_app().await).await;
    let rogue = Pki::named("rogue root");
    // A client from another root that still trusts the gateway's root.
    let leaf = rogue.leaf(WEB_ID);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        roots.add(mesh.pki.root.clone()).unwrap();
        roots
    })
    .with_client_auth_cert(leaf.chain, leaf.key)
    .unwrap();
    let tcp = TcpStream::connect(mesh.gateway).await.unwrap();
    let name = ServerName::IpAddress(mesh.gateway.ip().into());
    if let Ok(mut s) = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        assert!(buf.is_empty());
    }
    let metric = r#"tls_handshake_failures_total{direction="Gateway",reason="untrusted_root""#;
    assert!(
        eventually(|| sample(&mesh.gateway_registry, metric) == 1.0).await,
        "{}",
        scrape(&mesh.gateway_registry)
    );
}
