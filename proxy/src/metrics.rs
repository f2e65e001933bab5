//! The data plane's Prometheus metrics: requests and responses by status class,
//! response latency, TCP connections and bytes, transport-header and TLS refusals by
//! reason. Labels are bounded: directions and reasons are fixed sets, and target
//! authorities and peer identities are capped at [`MAX_NAMES`] distinct values per
//! kind, after which they are reported as `other`.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How many distinct target or identity label values are kept before `other`.
pub const MAX_NAMES: usize = 100;

/// Which listener a metric comes from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Direction {
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
    pub direction: Direction,
    /// The target authority (capped).
    pub target: String,
}

/// Labels of response metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    /// The listener.
    pub direction: Direction,
    /// The target authority (capped).
    pub target: String,
    /// `1xx` .. `5xx`, or `error` when no response came back.
    pub status: String,
}

/// Labels of per-connection metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    /// The listener.
    pub direction: Direction,
}

/// Labels of refusals.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The listener.
    pub direction: Direction,
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
    header_errors: Family<ReasonLabels, Counter>,
    tls_failures: Family<ReasonLabels, Counter>,
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
            header_errors: Family::default(),
            tls_failures: Family::default(),
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
            "header_errors",
            "Transport headers refused",
            this.header_errors.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes failed",
            this.tls_failures.clone(),
        );
        r.register(
            "refused",
            "Connections refused by policy",
            this.refused.clone(),
        );
        this
    }

    /// Counts one request and returns the labels for its response.
    pub fn request(&self, direction: Direction, target: &str) -> RequestLabels {
        let labels = RequestLabels {
            direction,
            target: self.targets.label(target),
        };
        self.requests.get_or_create(&labels).inc();
        labels
    }

    /// Counts one response (or `None` for a failed request) and its latency.
    pub fn response(&self, req: &RequestLabels, status: Option<u16>, latency: Duration) {
        let status = match status {
            Some(s) => format!("{}xx", s / 100),
            None => "error".to_string(),
        };
        let labels = ResponseLabels {
            direction: req.direction,
            target: req.target.clone(),
            status,
        };
        self.responses.get_or_create(&labels).inc();
        let conn = ConnLabels {
            direction: req.direction,
        };
        self.latency
            .get_or_create(&conn)
            .observe(latency.as_secs_f64());
    }

    /// Counts an accepted connection.
    pub fn tcp_open(&self, direction: Direction) {
        self.tcp_open.get_or_create(&ConnLabels { direction }).inc();
    }

    /// Counts a closed connection and the bytes it carried each way.
    pub fn tcp_close(&self, direction: Direction, read: u64, written: u64) {
        let l = ConnLabels { direction };
        self.tcp_close.get_or_create(&l).inc();
        self.bytes_in.get_or_create(&l).inc_by(read);
        self.bytes_out.get_or_create(&l).inc_by(written);
    }

    /// Counts a refused transport header.
    pub fn header_error(&self, direction: Direction, reason: &'static str, peer: Option<&str>) {
        self.header_errors
            .get_or_create(&self.reason(direction, reason, peer))
            .inc();
    }

    /// Counts a failed TLS handshake.
    pub fn tls_failure(&self, direction: Direction, reason: &'static str) {
        self.tls_failures
            .get_or_create(&self.reason(direction, reason, None))
            .inc();
    }

    /// Counts a connection refused by policy (identity, target, hop count).
    pub fn refusal(&self, direction: Direction, reason: &'static str, peer: Option<&str>) {
        self.refused
            .get_or_create(&self.reason(direction, reason, peer))
            .inc();
    }

    fn reason(&self, direction: Direction, reason: &str, peer: Option<&str>) -> ReasonLabels {
        ReasonLabels {
            direction,
            reason: reason.to_string(),
            peer: peer.map(|p| self.peers.label(p)).unwrap_or_default(),
        }
    }
}

/// Caps the distinct values of a label.
#[derive(Debug, Default)]
struct NameCap(Mutex<HashSet<String>>);

impl NameCap {
    fn label(&self, name: &str) -> String {
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
mod tests {
    use super::*;

    #[test]
    fn target_labels_are_capped() {
        let m = Metrics::register(&mut Registry::default());
        for i in 0..MAX_NAMES {
            assert_eq!(
                m.request(Direction::Outbound, &format!("t{i}:80")).target,
                format!("t{i}:80")
            );
        }
        assert_eq!(
            m.request(Direction::Outbound, "one-too-many:80").target,
            "other"
        );
        assert_eq!(m.request(Direction::Outbound, "t0:80").target, "t0:80");
    }

    #[test]
    fn encodes_refusals_by_reason() {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg);
        m.refusal(
            Direction::Gateway,
            "hop_limit",
            Some("spiffe://west/ns/a/sa/b"),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(text.contains(r#"refused_total{direction="Gateway",reason="hop_limit",peer="spiffe://west/ns/a/sa/b"} 1"#), "{text}");
    }
}
