//! The operational surface every long-running meshlink binary shares: the admin
//! HTTP server (`/ready`, `/live`, `/metrics`), the SIGTERM/SIGINT shutdown signal,
//! and log setup. Kept generic so the proxy, gateway, mirror and controller wire it
//! the same way: `main` binds the admin listener, builds one `Registry`, owns the
//! readiness `watch`, and passes a shutdown future.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::tls::{Policy, TlsConfigs};

/// How long a client of [`serve_tls`] may take to complete its handshake.
const TLS_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(5);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin server reports.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Exposed at `/metrics`. Register everything before serving.
    pub registry: Arc<Registry>,
    /// `/ready` answers 200 while this is `true`, 503 otherwise.
    pub ready: watch::Receiver<bool>,
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves, then stops
/// accepting and lets open connections finish their current request.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(listener, state, None, shutdown).await
}

/// Serves the same endpoints over mutual TLS (the gateway's probe port: a remote
/// mirror must see the gateway's identity, and the gateway requires a client
/// certificate from a trusted bundle). `tls` is the rotating credentials watch.
pub async fn serve_tls(
    listener: TcpListener,
    state: AdminState,
    tls: watch::Receiver<Arc<TlsConfigs>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(listener, state, Some(tls), shutdown).await
}

async fn serve_with(
    listener: TcpListener,
    state: AdminState,
    tls: Option<watch::Receiver<Arc<TlsConfigs>>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (state, stop) = (state.clone(), stop_rx.clone());
        match &tls {
            None => drop(tokio::spawn(serve_connection(tcp, state, stop))),
            Some(tls) => {
                let config = tls.borrow().server.clone();
                tokio::spawn(async move {
                    match crate::tls::accept(config, tcp, &Policy::AnyTrusted, TLS_HANDSHAKE).await
                    {
                        Ok((io, _)) => serve_connection(io, state, stop).await,
                        Err(error) => tracing::debug!(%error, "admin TLS handshake failed"),
                    }
                });
            }
        }
    }
    // Tell connections to close after their in-flight request; they hold receivers.
    let _ = stop_tx.send(true);
    Ok(())
}

async fn serve_connection<IO>(io: IO, state: AdminState, mut stop: watch::Receiver<bool>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(&state, &req)) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "admin connection ended with an error");
    }
}

fn route(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if *state.ready.borrow() => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => metrics(&state.registry),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn metrics(registry: &Registry) -> Response<Full<Bytes>> {
    let mut body = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut body, registry) {
        tracing::warn!(%error, "encoding metrics failed");
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed\n",
        );
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(OPENMETRICS),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// Installs SIGTERM and SIGINT handlers now (so a failure surfaces before any port
/// is bound) and returns a future resolving with the name of the first signal.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = &'static str> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// Log line format, from `MESHLINK_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = LogError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "plain" => Ok(Self::Plain),
            "json" => Ok(Self::Json),
            other => Err(LogError::UnknownFormat(other.to_owned())),
        }
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `MESHLINK_LOG_FORMAT` is neither `plain` nor `json`.
    #[error("MESHLINK_LOG_FORMAT={0:?} is not one of: plain, json")]
    UnknownFormat(String),
    /// `RUST_LOG` is not a valid filter.
    #[error("RUST_LOG is not a valid filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// A global subscriber was already installed.
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// The body of every long-running meshlink binary's `main`: sets up logging,
/// runs `run` on a Tokio [`runtime`] of `workers` threads, and turns the outcome into the
/// exit code (0 success; 1 when `run` fails, logged with its causes; 2 when
/// logging itself cannot start).
pub fn run_main<F>(name: &str, workers: usize, run: F) -> std::process::ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    use std::process::ExitCode;
    if let Err(error) = init_tracing() {
        eprintln!("{name}: {error}");
        return ExitCode::from(2);
    }
    let result = runtime(workers)
        .map_err(|e| anyhow::anyhow!("starting the runtime: {e}"))
        .and_then(|rt| rt.block_on(run));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A Tokio runtime with `workers` threads: `1` runs everything on the calling
/// thread (no work stealing or cross-thread wake-ups, the cheapest per request),
/// `0` one worker per CPU.
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if workers > 1 {
        builder.worker_threads(workers);
    }
    builder.enable_all().build()
}

/// Installs the global subscriber: format from `MESHLINK_LOG_FORMAT` (`plain` or
/// `json`), filter from `RUST_LOG` (default `info`).
pub fn init_tracing() -> Result<(), LogError> {
    let format: LogFormat = std::env::var("MESHLINK_LOG_FORMAT")
        .unwrap_or_default()
        .parse()?;
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    init_tracing_with(format, &filter)
}

/// Installs the global subscriber with explicit settings.
pub fn init_tracing_with(format: LogFormat, filter: &str) -> Result<(), LogError> {
    let filter = tracing_subscriber::EnvFilter::builder().parse(filter)?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let installed = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|_| LogError::AlreadyInstalled)
}

#[cfg(test)]
mod tests;
