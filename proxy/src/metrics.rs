//! Metrics of the identity layer: TLS handshake refusals and transport-header
//! errors, labelled only with bounded values (direction and reason), so a hostile
//! peer cannot grow the label space. Registered under the caller's (sub-)registry.

use crate::tls::{ReadHeaderError, RejectReason};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

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
