//! Parsing what a proxy subscribes to: an authority `name.ns.svc.<domain>:port`
//! (shorter forms `name.ns.svc:port` and `name.ns:port` too) or a cluster IP and
//! port. Names are resolved against the index later; this only splits the text.

use std::net::IpAddr;

/// A subscription target, split but not yet resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Service named by DNS.
    Name {
        /// The Service's namespace.
        namespace: String,
        /// The Service's name.
        name: String,
        /// The Service port.
        port: u16,
    },
    /// A Service named by one of its cluster IPs.
    ClusterIp {
        /// The cluster IP.
        ip: IpAddr,
        /// The Service port.
        port: u16,
    },
}

/// Why a target could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// No `:port`, or a port that is not a number in 1..=65535.
    #[error("target {0:?} has no valid port (expected name:port or ip:port)")]
    Port(String),
    /// A name that is not `name.namespace[.svc[.<cluster-domain>]]`.
    #[error("target {0:?} is not a service name in this cluster (expected name.namespace.svc.{1})")]
    Name(String, String),
}

impl Target {
    /// Splits `target`, accepting DNS names only under `cluster_domain`.
    pub fn parse(target: &str, cluster_domain: &str) -> Result<Self, TargetError> {
        let port_err = || TargetError::Port(target.to_string());
        let (host, port) = target.rsplit_once(':').ok_or_else(port_err)?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(port_err)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Self::ClusterIp { ip, port });
        }
        let name_err = || TargetError::Name(target.to_string(), cluster_domain.to_string());
        let host = host.trim_end_matches('.');
        let rest = host
            .strip_suffix(cluster_domain)
            .and_then(|r| r.strip_suffix('.'))
            .unwrap_or(host);
        let rest = rest.strip_suffix(".svc").unwrap_or(rest);
        match rest.split('.').collect::<Vec<_>>()[..] {
            [name, namespace] if !name.is_empty() && !namespace.is_empty() => Ok(Self::Name {
                namespace: namespace.to_string(),
                name: name.to_string(),
                port,
            }),
            _ => Err(name_err()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(ns: &str, n: &str, port: u16) -> Target {
        Target::Name {
            namespace: ns.into(),
            name: n.into(),
            port,
        }
    }

    #[test]
    fn accepts_every_service_name_form() {
        for t in [
            "books.shop.svc.cluster.local:8080",
            "books.shop.svc.cluster.local.:8080",
            "books.shop.svc:8080",
            "books.shop:8080",
        ] {
            assert_eq!(
                Target::parse(t, "cluster.local"),
                Ok(name("shop", "books", 8080)),
                "{t}"
            );
        }
    }

    #[test]
    fn accepts_cluster_ips() {
        assert_eq!(
            Target::parse("10.0.0.7:80", "cluster.local"),
            Ok(Target::ClusterIp {
                ip: "10.0.0.7".parse().unwrap(),
                port: 80
            })
        );
        assert_eq!(
            Target::parse("[fd00::7]:80", "cluster.local"),
            Ok(Target::ClusterIp {
                ip: "fd00::7".parse().unwrap(),
                port: 80
            })
        );
    }

    #[test]
    fn rejects_bad_targets_with_a_reason() {
        for t in [
            "books.shop.svc.cluster.local",
            "books.shop:0",
            "books.shop:x",
            "a:99999",
        ] {
            assert!(
                matches!(Target::parse(t, "cluster.local"), Err(TargetError::Port(_))),
                "{t}"
            );
        }
        for t in [
            "books:80",
            "a.b.c.svc.cluster.local:80",
            "books.shop.svc.other.domain:80",
            ".shop:80",
        ] {
            assert!(
                matches!(
                    Target::parse(t, "cluster.local"),
                    Err(TargetError::Name(..))
                ),
                "{t}"
            );
        }
    }
}
