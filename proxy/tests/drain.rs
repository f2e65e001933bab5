//! Graceful shutdown of a listener on loopback: once shutdown is signalled the
//! listener stops accepting, an in-flight HTTP request still completes, and a
//! connection that never finishes is cut at the drain deadline.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::accept::AcceptConfig;
use proxy::balance::BalanceConfig;
use proxy::detect::DetectConfig;
use proxy::discovery::StaticDiscovery;
use proxy::forward::connect::Connector;
use proxy::metrics::Metrics;
use proxy::outbound::{Outbound, OutboundConfig, TargetMode};
use proxy::route::Router;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};

/// An HTTP/1 app that reports each request and answers only when released.
async fn held_app() -> (std::net::SocketAddr, mpsc::Receiver<()>, Arc<Notify>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = mpsc::channel(16);
    let release = Arc::new(Notify::new());
    let rel = release.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let (seen, rel) = (seen_tx.clone(), rel.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let (seen, rel) = (seen.clone(), rel.clone());
                    async move {
                        seen.send(()).await.unwrap();
                        rel.notified().await;
                        Ok::<_, std::convert::Infallible>(
                            http::Response::new(Empty::<Bytes>::new()),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen_rx, release)
}

async fn outbound(
    target: String,
    deadline: Duration,
) -> (
    std::net::SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let router = Arc::new(Router::new(
        Arc::new(StaticDiscovery::new()),
        Connector::new(Duration::from_secs(5), None),
        BalanceConfig::default(),
        1,
    ));
    let config = OutboundConfig {
        target: TargetMode::Fixed(target),
        detect: DetectConfig {
            timeout: Duration::from_millis(100),
            ..DetectConfig::default()
        },
        accept: AcceptConfig {
            max_connections: 100,
            drain_deadline: deadline,
        },
        idle_timeout: Duration::from_secs(60),
        buffer_size: 16 * 1024,
    };
    let metrics = Arc::new(Metrics::register(&mut Default::default()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = Outbound::new(config, router, metrics).serve(listener, async move {
        let _ = stop_rx.await;
    });
    (addr, stop_tx, tokio::spawn(server))
}

#[tokio::test]
async fn in_flight_request_finishes_and_new_connections_are_refused() {
    let (app, mut seen, release) = held_app().await;
    let (addr, stop, server) = outbound(app.to_string(), Duration::from_secs(30)).await;

    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let uri: http::Uri = format!("http://{addr}/slow").parse().unwrap();
    let in_flight = tokio::spawn(async move { client.get(uri).await });
    seen.recv().await.unwrap();

    stop.send(()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener still accepting"
        );
        tokio::task::yield_now().await;
    }
    assert!(
        !server.is_finished(),
        "server returned with a request in flight"
    );

    release.notify_one();
    let rsp = in_flight.await.unwrap().unwrap();
    assert_eq!(rsp.status(), 200);
    rsp.into_body().collect().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn stuck_connection_is_cut_at_the_deadline() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (accepted_tx, accepted) = oneshot::channel();
    tokio::spawn(async move {
        let (held, _) = upstream.accept().await.unwrap();
        accepted_tx.send(held).unwrap();
    });
    let (addr, stop, server) =
        outbound(upstream_addr.to_string(), Duration::from_millis(200)).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"\x00opaque and never done").await.unwrap();
    // The proxy has accepted and connected upstream: the connection is in flight.
    let _held = accepted.await.unwrap();

    let started = tokio::time::Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "returned before the deadline"
    );
}
