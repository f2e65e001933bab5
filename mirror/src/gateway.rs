//! The gateway watcher of one Link: resolves the gateway's addresses (DNS names
//! through hickory, re-resolved periodically) and probes its admin port with an
//! HTTPS GET over mTLS every period (with jitter). `failureThreshold` consecutive
//! failed rounds make the gateway not alive; one passing round makes it alive.
//! Results go out on a `watch` channel as [`GatewayReport`]s. TLS is
//! `proxy::tls`: the gateway must present the Link's `gatewayIdentity`.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use api::identity::SpiffeId;
use api::link::{LinkSpec, ProbeLatency};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use rand::Rng;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::desired::GatewayState;
use crate::error::Error;
use crate::metrics::ClusterMetrics;

/// What the gateway watcher last found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayReport {
    /// Liveness and resolved addresses.
    pub state: GatewayState,
    /// When the last probe round ended.
    pub last_probe: Option<Time>,
    /// Percentiles of the last [`LATENCY_WINDOW`] successful probes.
    pub latency: Option<ProbeLatency>,
}

/// How many recent successful probe latencies the reported percentiles cover.
pub const LATENCY_WINDOW: usize = 100;

/// p50 and p99 (nearest rank) of `samples`, in milliseconds; `None` when empty.
pub fn percentiles(samples: &VecDeque<Duration>) -> Option<ProbeLatency> {
    let mut sorted: Vec<Duration> = samples.iter().copied().collect();
    sorted.sort();
    let rank = |p: usize| {
        let index = (p * sorted.len()).div_ceil(100).saturating_sub(1);
        sorted.get(index).map(|d| d.as_secs_f64() * 1000.0)
    };
    Some(ProbeLatency {
        p50_ms: rank(50)?,
        p99_ms: rank(99)?,
        samples: u32::try_from(sorted.len()).unwrap_or(u32::MAX),
    })
}

/// Consecutive-failure bookkeeping, separate from I/O so it is unit-tested.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    failures: u32,
    alive: bool,
}

impl Liveness {
    /// Records one probe round; returns whether the gateway is now alive.
    pub fn record(&mut self, passed: bool, threshold: u32) -> bool {
        if passed {
            self.failures = 0;
            self.alive = true;
        } else {
            self.failures = self.failures.saturating_add(1);
            if self.failures >= threshold {
                self.alive = false;
            }
        }
        self.alive
    }
}

/// How often DNS gateway names are resolved again.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// A resolver asking `server` over UDP, or following /etc/resolv.conf.
fn resolver(server: Option<SocketAddr>) -> Result<TokioResolver, Error> {
    let builder = match server {
        None => TokioResolver::builder_tokio().map_err(|e| Error::Resolver(e.to_string()))?,
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut ns = NameServerConfig::udp(addr.ip());
            ns.connections = vec![udp];
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
    };
    builder.build().map_err(|e| Error::Resolver(e.to_string()))
}

/// Resolves and probes one Link's gateway.
pub struct GatewayProber {
    spec: Arc<LinkSpec>,
    tls: Arc<ClientConfig>,
    identity: SpiffeId,
    resolver: TokioResolver,
    resolve_interval: Duration,
    metrics: ClusterMetrics,
}

impl GatewayProber {
    /// A prober resolving names through `dns_server`, or the system DNS
    /// configuration when it is `None`.
    pub fn new(
        spec: Arc<LinkSpec>,
        tls: Arc<ClientConfig>,
        identity: SpiffeId,
        resolve_interval: Duration,
        dns_server: Option<SocketAddr>,
        metrics: ClusterMetrics,
    ) -> Result<Self, Error> {
        let resolver = resolver(dns_server)?;
        Ok(Self {
            spec,
            tls,
            identity,
            resolver,
            resolve_interval,
            metrics,
        })
    }

    /// Probes forever, publishing every change on `tx`.
    pub async fn run(self, tx: watch::Sender<GatewayReport>) {
        let mut liveness = Liveness::default();
        let mut addresses: Vec<IpAddr> = Vec::new();
        let mut resolved_at: Option<Instant> = None;
        let mut latencies: VecDeque<Duration> = VecDeque::with_capacity(LATENCY_WINDOW);
        let period = Duration::from_secs(u64::from(self.spec.probe.period_seconds));
        loop {
            if resolved_at.is_none_or(|t| t.elapsed() >= self.resolve_interval)
                || addresses.is_empty()
            {
                addresses = self.resolve().await;
                resolved_at = Some(Instant::now());
            }
            let latency = self.probe_round(&addresses).await;
            if let Some(latency) = latency {
                if latencies.len() == LATENCY_WINDOW {
                    latencies.pop_front();
                }
                latencies.push_back(latency);
            }
            let passed = latency.is_some();
            let alive = liveness.record(passed, self.spec.probe.failure_threshold);
            self.metrics.gateway_alive.set(i64::from(alive));
            tx.send_modify(|r| {
                r.state = GatewayState {
                    alive,
                    addresses: addresses.clone(),
                };
                r.last_probe = Some(Time(Timestamp::now()));
                r.latency = percentiles(&latencies);
            });
            tokio::time::sleep(jittered(period)).await;
        }
    }

    /// Every configured address as IPs; names that fail to resolve are logged
    /// and left out (the other addresses still serve).
    async fn resolve(&self) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for addr in &self.spec.gateway_addresses {
            if let Ok(ip) = addr.parse::<IpAddr>() {
                out.push(ip);
                continue;
            }
            match self.resolver.lookup_ip(addr.as_str()).await {
                Ok(found) => out.extend(found.iter()),
                Err(e) => tracing::warn!(name = %addr, error = %e, "cannot resolve gateway"),
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// One round passes if any address answers the probe; `Some(latency)` of the
    /// answer that passed it.
    async fn probe_round(&self, addresses: &[IpAddr]) -> Option<Duration> {
        let timeout = Duration::from_secs(u64::from(self.spec.probe.timeout_seconds));
        for ip in addresses {
            let addr = SocketAddr::new(*ip, self.spec.probe.port);
            let probe = probe_once(
                self.tls.clone(),
                &self.identity,
                addr,
                &self.spec.probe.path,
                timeout,
            );
            match probe.await {
                Ok(latency) => {
                    self.metrics.probe_success.inc();
                    self.metrics.probe_latency.observe(latency.as_secs_f64());
                    return Some(latency);
                }
                Err(e) => {
                    self.metrics.probe_failure.inc();
                    tracing::debug!(error = %e, "gateway probe failed");
                }
            }
        }
        None
    }
}

/// Up to ±20% around `period`, so many mirrors do not probe in lockstep.
fn jittered(period: Duration) -> Duration {
    let factor = rand::rng().random_range(0.8..1.2);
    period.mul_f64(factor)
}

/// One HTTPS GET of `path` at `addr`, which must prove `identity`;
/// `Ok(latency)` on a 2xx answer.
pub async fn probe_once(
    tls: Arc<ClientConfig>,
    identity: &SpiffeId,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<Duration, Error> {
    let fail = |reason: String| Error::Probe { addr, reason };
    let start = Instant::now();
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| fail(format!("connect: {e}")))?;
        let (tls, _) = proxy::tls::connect(tls, tcp, identity, timeout)
            .await
            .map_err(|e| fail(format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(format!("HTTP handshake: {e}")))?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(format!("request: {e}")))?;
        let rsp = sender
            .send_request(req)
            .await
            .map_err(|e| fail(format!("request: {e}")))?;
        if rsp.status().is_success() {
            Ok(start.elapsed())
        } else {
            Err(fail(format!("status {}", rsp.status())))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| fail(format!("no answer within {timeout:?}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank_over_the_window() {
        assert_eq!(percentiles(&VecDeque::new()), None);
        let ms = |n: u64| Duration::from_millis(n);
        let one: VecDeque<_> = [ms(7)].into();
        let p = percentiles(&one).unwrap();
        assert_eq!((p.p50_ms, p.p99_ms, p.samples), (7.0, 7.0, 1));
        // 1..=100 ms, shuffled: the median is 50 ms, p99 is 99 ms.
        let many: VecDeque<_> = (1..=100).rev().map(ms).collect();
        let p = percentiles(&many).unwrap();
        assert_eq!((p.p50_ms, p.p99_ms, p.samples), (50.0, 99.0, 100));
    }

    #[test]
    fn alive_after_one_pass_dead_after_threshold_failures() {
        let mut l = Liveness::default();
        assert!(!l.record(false, 3), "never seen alive");
        assert!(l.record(true, 3));
        assert!(l.record(false, 3));
        assert!(l.record(false, 3));
        assert!(!l.record(false, 3), "third miss crosses the threshold");
        assert!(l.record(true, 3), "one pass revives it");
    }

    /// A one-shot mTLS server answering `status` to every request.
    async fn gateway(status: &'static str) -> (SocketAddr, Arc<ClientConfig>) {
        use proxy::pki::{Ca, Validity};
        use proxy::tls::{Credentials, TrustBundle};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ca = Ca::root("test root", Validity::days(1)).unwrap();
        let creds = |id: &str| {
            let leaf = ca
                .issue(&SpiffeId::parse(id).unwrap(), &[], Validity::days(1))
                .unwrap();
            let bundle = TrustBundle::from_pem(None, ca.root_pem().as_bytes()).unwrap();
            Credentials::from_pem(
                leaf.chain_pem.as_bytes(),
                leaf.key_pem.as_bytes(),
                vec![bundle],
            )
            .unwrap()
        };
        let server = creds("spiffe://east.example/ns/meshlink/sa/gateway");
        let client = creds("spiffe://west.example/ns/meshlink/sa/mirror");
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config(&[]).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 1024];
                    let _ = tls.read(&mut buf).await;
                    let rsp = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    let _ = tls.write_all(rsp.as_bytes()).await;
                });
            }
        });
        (addr, client.client_config(&[]).unwrap())
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn probe_passes_over_mtls_with_the_expected_identity() {
        let (addr, tls) = gateway("200 OK").await;
        let id = SpiffeId::parse("spiffe://east.example/ns/meshlink/sa/gateway").unwrap();
        probe_once(tls, &id, addr, "/ready", TIMEOUT).await.unwrap();
    }

    #[tokio::test]
    async fn probe_fails_on_wrong_identity_or_unhealthy_answer() {
        let (addr, tls) = gateway("200 OK").await;
        let other = SpiffeId::parse("spiffe://east.example/ns/meshlink/sa/impostor").unwrap();
        let err = probe_once(tls, &other, addr, "/ready", TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("TLS"), "{err}");

        let (addr, tls) = gateway("503 Service Unavailable").await;
        let id = SpiffeId::parse("spiffe://east.example/ns/meshlink/sa/gateway").unwrap();
        let err = probe_once(tls, &id, addr, "/ready", TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("503"), "{err}");
    }

    #[test]
    fn jitter_stays_within_bounds() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12));
        }
    }
}
