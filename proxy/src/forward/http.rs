//! Per-request HTTP proxying. The client's connection is served by hyper (HTTP/1 or
//! HTTP/2, as detected); each request is balanced over the target's endpoints and
//! sent through that endpoint's pooled hyper client, so upstream connections are
//! reused across requests and HTTP/2 streams (gRPC included, trailers intact) are
//! multiplexed.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::ForwardContext;
use super::connect::{Connector, Upstream};
use super::orig_proto;
use crate::Error;
use crate::accept::Drain;
use crate::balance::Pick;
use crate::detect::Protocol;
use crate::discovery::Endpoint;
use crate::metrics::Listener;
use crate::retry;
use crate::route::Target;

/// The response body type of the proxy's HTTP service.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// An HTTP/2 connection to a meshed peer that has received nothing for this long
/// is pinged, idle or not; one that does not answer within [`H2_PING_TIMEOUT`] is
/// closed, failing its requests (so a retry or the next request opens a new
/// connection). All requests to a peer share its connection, so a peer that
/// vanished without closing it would otherwise stall every one of them, and an
/// idle pooled connection to it would stall the next request for the same time.
/// Apps are not pinged: their servers may take pings for abuse (gRPC-Go closes
/// a connection pinged more often than every 5 minutes by default).
const H2_PING_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Streams one meshed peer may have open on one HTTP/2 connection to the inbound
/// listener or the gateway. A peer carries all its HTTP/1 requests on that
/// connection, where each used to have a connection of its own, so the bound is
/// the listener's default connection cap rather than hyper's 200: long polls
/// beyond 200 would otherwise wait for one another. Listeners facing the local
/// app keep hyper's default.
const PEER_STREAMS: u32 = crate::accept::MAX_CONNECTIONS as u32;

/// The largest header list an HTTP/2 hop between peers carries, either way:
/// about what an HTTP/1 hop reads (hyper's ~408 KiB head buffer), so a request
/// that crossed as HTTP/1 still crosses. HTTP/2's usual 16 KiB would answer 431.
const PEER_HEADER_BYTES: u32 = 400 * 1024;

/// The connection-level flow-control window of every HTTP/2 connection the
/// proxy serves or opens: the most HTTP/2 allows, so that only each stream's own
/// window (hyper's 2 MiB) holds data back. One connection carries streams that
/// would each have had a connection of their own (a peer's HTTP/1 requests, or
/// an app's streams to several upstreams); with a bounded connection window a
/// few readers that stop reading large responses would use it up and stall
/// every other stream on the connection.
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// Opens connections to one endpoint for one session protocol; the connector of
/// that endpoint's pooled clients. The request URI is ignored: the endpoint is
/// fixed, so the URI's authority stays the one the app sent.
#[derive(Clone, Debug)]
pub struct EndpointConnect {
    endpoint: Endpoint,
    connector: Connector,
    protocol: Protocol,
    hop: u8,
}

impl EndpointConnect {
    /// Opens one connection.
    pub async fn open(&self) -> Result<Upstream, Error> {
        self.connector
            .connect(&self.endpoint, self.protocol, self.hop)
            .await
    }
}

impl tower_service::Service<Uri> for EndpointConnect {
    type Response = TokioIo<Upstream>;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Self::Response, Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.open().await.map(TokioIo::new) })
    }
}

/// What the balancer keeps per endpoint: pooled clients per HTTP version and a
/// connector for opaque sessions.
#[derive(Debug)]
pub struct EndpointService {
    h1: Client<EndpointConnect, ProxyBody>,
    h2: Client<EndpointConnect, ProxyBody>,
    opaque: EndpointConnect,
}

impl EndpointService {
    /// Builds the clients for `endpoint`; `hop` is written in transport headers.
    pub fn new(endpoint: &Endpoint, connector: &Connector, hop: u8) -> Self {
        let connect = |protocol| EndpointConnect {
            endpoint: endpoint.clone(),
            connector: connector.clone(),
            protocol,
            hop,
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new());
        let h1 = builder.build(connect(Protocol::Http1));
        builder
            .http2_only(true)
            .http2_max_header_list_size(PEER_HEADER_BYTES)
            .http2_initial_connection_window_size(CONNECTION_WINDOW)
            .timer(TokioTimer::new());
        if endpoint.identity.is_some() {
            builder
                .http2_keep_alive_interval(H2_PING_INTERVAL)
                .http2_keep_alive_timeout(H2_PING_TIMEOUT)
                .http2_keep_alive_while_idle(true);
        }
        let h2 = builder.build(connect(Protocol::Http2));
        Self {
            h1,
            h2,
            opaque: connect(Protocol::Opaque),
        }
    }

    /// The connector for opaque sessions.
    pub fn opaque(&self) -> &EndpointConnect {
        &self.opaque
    }
}

/// Serves one client connection, proxying each request to `target`.
pub async fn serve<I>(
    io: I,
    protocol: Protocol,
    target: Arc<Target>,
    ctx: &ForwardContext,
    mut drain: Drain,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx2 = ctx.clone();
    let service = hyper::service::service_fn(move |req| {
        let (target, ctx) = (target.clone(), ctx2.clone());
        async move { Ok::<_, Infallible>(proxy_request(req, protocol, &target, &ctx).await) }
    });
    let io = TokioIo::new(io);
    if protocol == Protocol::Http2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_connection_window_size(CONNECTION_WINDOW);
        if ctx.listener != Listener::Outbound {
            builder
                .max_concurrent_streams(PEER_STREAMS)
                .max_header_list_size(PEER_HEADER_BYTES);
        }
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => return res,
            _ = drain.signaled() => conn.as_mut().graceful_shutdown(),
        }
        conn.await
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => return res,
            _ = drain.signaled() => conn.as_mut().graceful_shutdown(),
        }
        conn.await
    }
}

async fn proxy_request(
    mut req: Request<Incoming>,
    protocol: Protocol,
    target: &Arc<Target>,
    ctx: &ForwardContext,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let metrics = target.metrics(&ctx.metrics, ctx.listener);
    metrics.request();
    match absolute_uri(&req, &target.name) {
        Ok(uri) => *req.uri_mut() = uri,
        Err(()) => return status(StatusCode::BAD_REQUEST),
    }
    let failover = &target.failover;
    failover.deposit();
    // An idempotent request without a body can be sent again as it is.
    let again =
        (retry::is_idempotent(req.method()) && req.body().is_end_stream()).then(|| copy_of(&req));
    let mut outcome = send(req.map(BodyExt::boxed), protocol, target).await;
    // One more try after a failure; a refused connection (nothing was sent) may
    // try up to MAX_ATTEMPTS, so a chain with several dead tiers still serves.
    let mut attempts = 1;
    while let (Err(Failed::Upstream { connect, .. }), Some(template)) = (&outcome, &again) {
        let allowed = attempts < MAX_ATTEMPTS && (*connect || attempts == 1);
        if !allowed || !failover.withdraw() {
            break;
        }
        attempts += 1;
        outcome = send(copy_of(template), protocol, target).await;
    }
    match outcome {
        Ok(rsp) => {
            metrics.response(Some(rsp.status().as_u16()), start.elapsed());
            rsp.map(|b| b.boxed())
        }
        Err(Failed::NoEndpoints) => {
            metrics.response(Some(503), start.elapsed());
            status(StatusCode::SERVICE_UNAVAILABLE)
        }
        Err(Failed::Upstream { error, .. }) => {
            tracing::info!(target = %target.name, %error, attempts, "upstream request failed");
            metrics.response(None, start.elapsed());
            status(StatusCode::BAD_GATEWAY)
        }
    }
}

/// How many times one request may be sent, retries included.
const MAX_ATTEMPTS: u32 = 3;

/// Why a request got no upstream response.
enum Failed {
    NoEndpoints,
    /// The upstream failed; `connect` when no connection could be made, so the
    /// request was never sent.
    Upstream {
        error: String,
        connect: bool,
    },
}

/// A bodiless copy of `req` (method, URI, version, headers).
fn copy_of<B>(req: &Request<B>) -> Request<ProxyBody> {
    let mut copy = Request::new(empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Sends `req` to an endpoint of the backend `target` routes it to, marking the
/// endpoint dead or alive by the outcome.
async fn send(
    mut req: Request<ProxyBody>,
    protocol: Protocol,
    target: &Arc<Target>,
) -> Result<Response<Incoming>, Failed> {
    let backend = target.route().await.map_err(|e| Failed::Upstream {
        error: e.to_string(),
        connect: false,
    })?;
    let Some(pick) = pick_live(&backend) else {
        return Err(Failed::NoEndpoints);
    };
    let svc = pick.service();
    let meshed = pick.endpoint().identity.is_some();
    let client = match orig_proto::prepare(&mut req, protocol, meshed) {
        Protocol::Http2 => &svc.h2,
        _ => &svc.h1,
    };
    let addr = pick.endpoint().addr;
    let started = Instant::now();
    match client.request(req).await {
        Ok(rsp) => {
            pick.record();
            target.failover.succeeded(addr, started);
            Ok(rsp)
        }
        Err(error) => {
            target.failover.failed(addr);
            Err(Failed::Upstream {
                connect: error.is_connect(),
                error: format!("{addr}: {error}"),
            })
        }
    }
}

/// A pick that avoids endpoints marked dead, in the cheapest tier that has live
/// ones (the balancer picks among all when none is alive).
fn pick_live(target: &Target) -> Option<Pick<EndpointService>> {
    let failover = &target.failover;
    if failover.any_dead() {
        target
            .balancer
            .pick_avoiding(|ep| failover.is_dead(ep.addr))
    } else {
        target.balancer.pick()
    }
}

fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The pooled client needs an absolute URI; keep the app's authority (Host or
/// :authority) so the upstream sees the request unchanged.
fn absolute_uri(req: &Request<Incoming>, fallback: &str) -> Result<Uri, ()> {
    let mut parts = req.uri().clone().into_parts();
    if parts.authority.is_none() {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(fallback);
        parts.authority = Some(host.parse::<Authority>().map_err(|_| ())?);
    }
    parts.scheme = Some(Scheme::HTTP);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).map_err(|_| ())
}

fn status(code: StatusCode) -> Response<ProxyBody> {
    let mut rsp = Response::new(empty());
    *rsp.status_mut() = code;
    rsp
}
