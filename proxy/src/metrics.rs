//! Metrics of the proxy. The identity layer's [`TlsMetrics`] count TLS handshake
//! refusals and transport-header errors, labelled only with bounded values
//! (direction and reason), so a hostile peer cannot grow the label space. The data
//! plane's [`Metrics`] count requests and responses by status class, response
//! latency, TCP connections and bytes, and policy refusals, per [`Listener`];
//! target authorities and peer identities are capped at [`MAX_NAMES`] distinct
//! values per kind, after which they are reported as `other`. Everything is
//! registered under the caller's (sub-)registry.

use crate::tls::{ReadHeaderError, RejectReason};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// Which side of the connection we were.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    /// We accepted the connection.
    Inbound,
    /// We opened the connection.
    Outbound,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        })
    }
}

/// Labels of the failure counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Inbound or outbound.
    pub direction: Direction,
    /// A [`RejectReason`] or header error label.
    pub reason: &'static str,
}

/// Counters for TLS refusals and header errors.
#[derive(Debug, Clone, Default)]
pub struct TlsMetrics {
    handshake_failures: Family<FailureLabels, Counter>,
    header_errors: Family<FailureLabels, Counter>,
}

impl TlsMetrics {
    /// Registers `tls_handshake_failures_total` and `transport_header_errors_total`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes refused or failed, by reason",
            metrics.handshake_failures.clone(),
        );
        registry.register(
            "transport_header_errors",
            "Connections closed because of an invalid transport header, by reason",
            metrics.header_errors.clone(),
        );
        metrics
    }

    /// Counts one refused handshake.
    pub fn handshake_failed(&self, direction: Direction, reason: RejectReason) {
        let labels = FailureLabels {
            direction,
            reason: reason.as_str(),
        };
        self.handshake_failures.get_or_create(&labels).inc();
    }

    /// Counts one bad transport header.
    pub fn header_failed(&self, direction: Direction, err: &ReadHeaderError) {
        let labels = FailureLabels {
            direction,
            reason: err.reason(),
        };
        self.header_errors.get_or_create(&labels).inc();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;
    use api::transport_header::HeaderError;

    #[test]
    fn failures_are_exposed_by_reason() {
        let mut registry = Registry::default();
        let metrics = TlsMetrics::register(&mut registry);
        metrics.handshake_failed(Direction::Inbound, RejectReason::Expired);
        metrics.handshake_failed(Direction::Inbound, RejectReason::Expired);
        metrics.header_failed(Direction::Inbound, &HeaderError::BadMagic.into());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "tls_handshake_failures_total{direction=\"inbound\",reason=\"expired\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "transport_header_errors_total{direction=\"inbound\",reason=\"bad_magic\"} 1"
            ),
            "{text}"
        );
    }
}

/// How many distinct target or identity label values are kept before `other`.
pub const MAX_NAMES: usize = 100;

/// Which listener a data-plane metric comes from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Listener {
    /// Traffic from the local app to the mesh.
    Outbound,
    /// Traffic from the mesh to the local app.
    Inbound,
    /// Traffic through the cross-cluster gateway.
    Gateway,
}

/// Labels of per-request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The listener.
    pub listener: Listener,
    /// The target authority (capped).
    pub target: String,
}

/// Labels of response metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    /// The listener.
    pub listener: Listener,
    /// The target authority (capped).
    pub target: String,
    /// `1xx` .. `5xx`, or `error` when no response came back.
    pub status: String,
}

/// Labels of per-connection metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    /// The listener.
    pub listener: Listener,
}

/// Labels of refusals.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The listener.
    pub listener: Listener,
    /// A fixed reason string chosen by the code that refused.
    pub reason: String,
    /// The peer identity when known (capped), else empty.
    pub peer: String,
}

/// All data-plane metric families.
#[derive(Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<ConnLabels, Histogram>,
    tcp_open: Family<ConnLabels, Counter>,
    tcp_close: Family<ConnLabels, Counter>,
    bytes_in: Family<ConnLabels, Counter>,
    bytes_out: Family<ConnLabels, Counter>,
    /// Handshake refusals and transport-header errors.
    pub tls: TlsMetrics,
    refused: Family<ReasonLabels, Counter>,
    targets: NameCap,
    peers: NameCap,
}

impl Metrics {
    /// Registers every family under `registry` (callers pass a prefixed
    /// sub-registry) and returns the handles.
    pub fn register(registry: &mut Registry) -> Self {
        let latency = Family::<ConnLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        let this = Self {
            requests: Family::default(),
            responses: Family::default(),
            latency,
            tcp_open: Family::default(),
            tcp_close: Family::default(),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            tls: TlsMetrics::register(registry),
            refused: Family::default(),
            targets: NameCap::default(),
            peers: NameCap::default(),
        };
        let r = registry;
        r.register("requests", "HTTP requests received", this.requests.clone());
        r.register(
            "responses",
            "HTTP responses by status class",
            this.responses.clone(),
        );
        r.register(
            "response_latency_seconds",
            "Time to response headers",
            this.latency.clone(),
        );
        r.register(
            "tcp_open",
            "TCP connections accepted",
            this.tcp_open.clone(),
        );
        r.register(
            "tcp_close",
            "TCP connections closed",
            this.tcp_close.clone(),
        );
        r.register(
            "tcp_read_bytes",
            "Bytes read from clients (opaque)",
            this.bytes_in.clone(),
        );
        r.register(
            "tcp_write_bytes",
            "Bytes written to clients (opaque)",
            this.bytes_out.clone(),
        );
        r.register(
            "refused",
            "Connections refused by policy",
            this.refused.clone(),
        );
        this
    }

    /// The request metrics of `target` on `listener`, resolved once so each
    /// request updates them without building labels or looking up a family.
    pub fn target(&self, listener: Listener, target: &str) -> TargetMetrics {
        let labels = RequestLabels {
            listener,
            target: self.targets.label(target),
        };
        let response = |status: &str| {
            let labels = ResponseLabels {
                listener,
                target: labels.target.clone(),
                status: status.to_string(),
            };
            self.responses.get_or_create(&labels).clone()
        };
        TargetMetrics {
            requests: self.requests.get_or_create(&labels).clone(),
            responses: ["1xx", "2xx", "3xx", "4xx", "5xx", "error"].map(response),
            latency: self.latency.get_or_create(&ConnLabels { listener }).clone(),
            all_responses: self.responses.clone(),
            labels,
        }
    }

    /// Counts an accepted connection.
    pub fn tcp_open(&self, listener: Listener) {
        self.tcp_open.get_or_create(&ConnLabels { listener }).inc();
    }

    /// Counts a closed connection and the bytes it carried each way.
    pub fn tcp_close(&self, listener: Listener, read: u64, written: u64) {
        let l = ConnLabels { listener };
        self.tcp_close.get_or_create(&l).inc();
        self.bytes_in.get_or_create(&l).inc_by(read);
        self.bytes_out.get_or_create(&l).inc_by(written);
    }

    /// Counts a connection refused by policy (identity, target, hop count).
    pub fn refusal(&self, listener: Listener, reason: &'static str, peer: Option<&str>) {
        self.refused
            .get_or_create(&self.reason(listener, reason, peer))
            .inc();
    }

    fn reason(&self, listener: Listener, reason: &str, peer: Option<&str>) -> ReasonLabels {
        ReasonLabels {
            listener,
            reason: reason.to_string(),
            peer: peer.map(|p| self.peers.label(p)).unwrap_or_default(),
        }
    }
}

/// The request metrics of one target on one listener (see [`Metrics::target`]).
#[derive(Clone, Debug)]
pub struct TargetMetrics {
    requests: Counter,
    /// Responses of class `1xx` to `5xx`, then failed requests.
    responses: [Counter; 6],
    latency: Histogram,
    /// For the rare status classes above `5xx`.
    all_responses: Family<ResponseLabels, Counter>,
    labels: RequestLabels,
}

impl TargetMetrics {
    /// The listener these metrics are for.
    pub fn listener(&self) -> Listener {
        self.labels.listener
    }

    /// Counts one request.
    pub fn request(&self) {
        self.requests.inc();
    }

    /// Counts one response (or `None` for a failed request) and its latency.
    pub fn response(&self, status: Option<u16>, latency: Duration) {
        let index = match status {
            Some(s @ 100..=599) => usize::from(s / 100) - 1,
            Some(_) => usize::MAX,
            None => 5,
        };
        match self.responses.get(index) {
            Some(counter) => counter.inc(),
            None => {
                let labels = ResponseLabels {
                    listener: self.labels.listener,
                    target: self.labels.target.clone(),
                    status: format!("{}xx", status.unwrap_or_default() / 100),
                };
                self.all_responses.get_or_create(&labels).inc()
            }
        };
        self.latency.observe(latency.as_secs_f64());
    }
}

/// Caps the distinct values of a label.
#[derive(Debug, Default)]
pub(crate) struct NameCap(Mutex<HashSet<String>>);

impl NameCap {
    /// `name`, or `other` once [`MAX_NAMES`] distinct names have been seen.
    pub(crate) fn label(&self, name: &str) -> String {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(name) {
            return name.to_string();
        }
        if seen.len() < MAX_NAMES {
            seen.insert(name.to_string());
            return name.to_string();
        }
        "other".to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on bad fixtures
mod dataplane_tests {
    use super::*;

    #[test]
    fn target_labels_are_capped() {
        let m = Metrics::register(&mut Registry::default());
        for i in 0..MAX_NAMES {
            assert_eq!(
                m.target(Listener::Outbound, &format!("t{i}:80"))
                    .labels
                    .target,
                format!("t{i}:80")
            );
        }
        assert_eq!(
            m.target(Listener::Outbound, "one-too-many:80")
                .labels
                .target,
            "other"
        );
        assert_eq!(m.target(Listener::Outbound, "t0:80").labels.target, "t0:80");
    }

    #[test]
    fn responses_are_counted_by_class() {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg).target(Listener::Inbound, "t:80");
        m.request();
        for status in [Some(200), Some(204), Some(503), Some(600), None] {
            m.response(status, Duration::from_millis(1));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        let series = |status: &str, n: u32| {
            format!(r#"responses_total{{listener="Inbound",target="t:80",status="{status}"}} {n}"#)
        };
        for (status, n) in [("2xx", 2), ("5xx", 1), ("6xx", 1), ("error", 1), ("4xx", 0)] {
            assert!(text.contains(&series(status, n)), "{status}: {text}");
        }
        assert!(
            text.contains(r#"requests_total{listener="Inbound",target="t:80"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"response_latency_seconds_count{listener="Inbound"} 5"#),
            "{text}"
        );
    }

    #[test]
    fn encodes_refusals_by_reason() {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg);
        m.refusal(
            Listener::Gateway,
            "hop_limit",
            Some("spiffe://west/ns/a/sa/b"),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(text.contains(r#"refused_total{listener="Gateway",reason="hop_limit",peer="spiffe://west/ns/a/sa/b"} 1"#), "{text}");
    }
}
