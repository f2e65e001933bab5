//! Admin routes over a real socket, shutdown, signals and log settings.

use super::*;
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;

struct Running {
    addr: SocketAddr,
    ready: watch::Sender<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start() -> Running {
    let mut registry = Registry::default();
    let counter = Counter::<u64>::default();
    registry.register("demo_requests", "Demo counter", counter.clone());
    counter.inc();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ready, ready_rx) = watch::channel(false);
    let (stop, stop_rx) = oneshot::channel::<()>();
    let state = AdminState {
        registry: Arc::new(registry),
        ready: ready_rx,
    };
    let task = tokio::spawn(serve(listener, state, async {
        let _ = stop_rx.await;
    }));
    Running {
        addr,
        ready,
        stop: Some(stop),
        task,
    }
}

async fn request(addr: SocketAddr, method: Method, path: &str) -> (StatusCode, String, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "admin")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String, String) {
    request(addr, Method::GET, path).await
}

#[tokio::test]
async fn ready_follows_the_watch() {
    let admin = start().await;
    assert_eq!(
        get(admin.addr, "/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    admin.ready.send(true).unwrap();
    assert_eq!(get(admin.addr, "/ready").await.0, StatusCode::OK);
    admin.ready.send(false).unwrap();
    assert_eq!(
        get(admin.addr, "/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn live_is_ok_even_when_not_ready() {
    let admin = start().await;
    let (status, _, body) = get(admin.addr, "/live").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "live\n"));
}

#[tokio::test]
async fn metrics_expose_the_shared_registry() {
    let admin = start().await;
    let (status, content_type, body) = get(admin.addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("application/openmetrics-text"));
    assert!(body.contains("demo_requests_total 1"), "{body}");
    assert!(body.ends_with("# EOF\n"));
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused() {
    let admin = start().await;
    assert_eq!(get(admin.addr, "/admin").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        request(admin.addr, Method::POST, "/ready").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn stops_accepting_on_shutdown() {
    let mut admin = start().await;
    assert_eq!(get(admin.addr, "/live").await.0, StatusCode::OK);
    admin.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), &mut admin.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // The listener was dropped with the server.
    assert!(tokio::net::TcpStream::connect(admin.addr).await.is_err());
}

#[tokio::test]
async fn shutdown_signal_resolves_on_sigterm() {
    let signal = shutdown_signal().unwrap();
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
    let name = tokio::time::timeout(Duration::from_secs(10), signal)
        .await
        .unwrap();
    assert_eq!(name, "SIGTERM");
}

#[test]
fn log_settings_are_validated() {
    assert_eq!("".parse::<LogFormat>().unwrap(), LogFormat::Plain);
    assert_eq!("plain".parse::<LogFormat>().unwrap(), LogFormat::Plain);
    assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
    let err = "yaml".parse::<LogFormat>().unwrap_err();
    assert!(err.to_string().contains("\"yaml\""), "{err}");
    assert!(matches!(
        init_tracing_with(LogFormat::Json, "info,[bad"),
        Err(LogError::Filter(_))
    ));
}

/// The gateway's probe port: the same routes behind mutual TLS. A client that
/// checks the server identity gets `/ready`; a plaintext client gets nothing.
#[tokio::test]
async fn serve_tls_answers_over_mutual_tls_only() {
    use crate::pki::{Ca, Validity};
    use crate::tls::TlsConfigs;
    use api::identity::SpiffeId;
    crate::tls::install_default_provider();
    let ca = Ca::root("admin test root", Validity::days(1)).unwrap();
    let configs = |id: &str| {
        let creds = ca.credentials(&SpiffeId::parse(id).unwrap(), Validity::days(1));
        Arc::new(TlsConfigs::build(&creds.unwrap(), &[]).unwrap())
    };
    let gateway_id = "spiffe://east.test/ns/mc/sa/gateway";
    let (_tls_tx, tls) = watch::channel(configs(gateway_id));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_ready_tx, ready) = watch::channel(true);
    let state = AdminState {
        registry: Arc::new(Registry::default()),
        ready,
    };
    tokio::spawn(serve_tls(listener, state, tls, std::future::pending()));

    let expected = SpiffeId::parse(gateway_id).unwrap();
    let client = configs("spiffe://west.test/ns/mc/sa/mirror").client_for(&expected, None);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (io, _) = crate::tls::connect(client, tcp, &expected, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(get_ready(io).await.unwrap(), StatusCode::OK);

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let plain = tokio::time::timeout(Duration::from_secs(5), get_ready(tcp))
        .await
        .unwrap();
    assert!(plain.is_err(), "plaintext got an answer: {plain:?}");
}

/// `GET /ready` over an established connection.
async fn get_ready<IO>(io: IO) -> Result<StatusCode, hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let req = Request::get("/ready")
        .header(header::HOST, "probe")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("a valid request");
    Ok(sender.send_request(req).await?.status())
}
