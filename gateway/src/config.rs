//! Command-line and environment configuration of the `gateway` binary, parsed
//! into a [`GatewayConfig`] and validated before any port is bound. TLS files and
//! limits share the proxy's flag groups.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use proxy::config::{DiscoveryArgs, LimitArgs, TlsArgs};

use crate::GatewayConfig;

/// The `gateway` binary.
#[derive(Debug, Parser)]
#[command(name = "gateway", about = "meshlink cross-cluster mTLS gateway")]
pub struct GatewayArgs {
    /// The mTLS listener other clusters connect to.
    #[arg(long, env = "MESHLINK_GATEWAY_ADDR", default_value = "0.0.0.0:4143")]
    pub addr: SocketAddr,
    /// Admin listener (/ready, /live, /metrics).
    #[arg(long, env = "MESHLINK_ADMIN_ADDR", default_value = "0.0.0.0:4191")]
    pub admin_addr: SocketAddr,
    /// The probe listener: `/ready` (and the other admin endpoints) over mutual
    /// TLS with the gateway's certificate, for remote mirrors' probes (a Link's
    /// `probe.port`). Not served when unset.
    #[arg(long, env = "MESHLINK_PROBE_ADDR")]
    pub probe_addr: Option<SocketAddr>,
    /// This cluster's domain; only targets under `svc.<domain>` are served.
    #[arg(long, env = "MESHLINK_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Where local targets are resolved.
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
    /// The transport header must arrive within this after the handshake, in ms.
    #[arg(long, env = "MESHLINK_HEADER_TIMEOUT_MS", default_value_t = 5000)]
    pub header_timeout_ms: u64,
    /// TLS credentials.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Timeouts, limits and the peer policy.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Load balancing over local endpoints.
    #[command(flatten)]
    pub balance: proxy::config::BalanceArgs,
}

impl GatewayArgs {
    /// Parses and validates everything but the files (read by the caller).
    pub fn config(&self) -> Result<GatewayConfig, proxy::Error> {
        let domain = self.cluster_domain.trim_matches('.');
        if domain.is_empty() || api::transport_header::TargetName::parse(domain).is_err() {
            return Err(proxy::Error::Config(format!(
                "cluster-domain {:?} is not a DNS name",
                self.cluster_domain
            )));
        }
        if self.addr.port() == self.admin_addr.port() && self.addr.port() != 0 {
            return Err(proxy::Error::Config(
                "addr and admin-addr ports must differ".into(),
            ));
        }
        if self.header_timeout_ms == 0 {
            return Err(proxy::Error::Config(
                "header-timeout-ms must be greater than zero".into(),
            ));
        }
        let (_, handshake_timeout, idle_timeout) = self.limits.timeouts()?;
        Ok(GatewayConfig {
            cluster_domain: domain.to_string(),
            policy: self.limits.policy()?,
            handshake_timeout,
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            accept: self.limits.accept()?,
            idle_timeout,
            buffer_size: self.limits.buffer()?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<GatewayConfig, String> {
        let required = "gateway --discovery-file d.yaml --tls-cert c --tls-key k --tls-trust r";
        let argv = required.split(' ').chain(args.iter().copied());
        GatewayArgs::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .config()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_policy() {
        let c = parse(&["--allow-identity", "spiffe://west.example/ns/shop/*"]).unwrap();
        assert_eq!(c.cluster_domain, "cluster.local");
        assert!(matches!(c.policy, proxy::tls::Policy::Allow(ref p) if p.len() == 1));
    }

    #[test]
    fn bad_values_are_named() {
        for (args, named) in [
            (["--cluster-domain", "Bad_Domain"], "cluster-domain"),
            (["--addr", "0.0.0.0:4191"], "ports must differ"),
            (["--header-timeout-ms", "0"], "header-timeout-ms"),
        ] {
            let error = parse(&args).unwrap_err();
            assert!(error.contains(named), "{args:?}: {error}");
        }
    }
}
