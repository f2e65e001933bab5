//! The [`Harness`]: builds and owns a set of clusters, their etcd, their network and
//! their temp directory, and tears all of it down on drop (or on a signal).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures::future::try_join_all;

use crate::binaries::Binaries;
use crate::cleanup::{Cleanup, CleanupGuard};
use crate::cluster::{Cluster, ClusterParams};
use crate::error::{Error, Result};
use crate::etcd::Etcd;
use crate::net::{AddressPlan, MAX_CLUSTERS, Network};

/// Fixed ports on the harness's own host address (198.18.S.1), below the ephemeral
/// range so an outgoing connection can never take one while an apiserver is stopped.
const ETCD_CLIENT_PORT: u16 = 12379;
const ETCD_PEER_PORT: u16 = 12380;
const APISERVER_BASE_PORT: u16 = 16443;
/// Name prefix of harness temp dirs.
pub(crate) const DIR_PREFIX: &str = "meshlink-harness-";

/// One cluster requested from the builder.
#[derive(Clone, Debug)]
struct ClusterSpec {
    name: String,
    zones: Vec<String>,
}

/// Configures a [`Harness`]; see the crate documentation for an example.
#[derive(Debug, Default)]
#[must_use]
pub struct HarnessBuilder {
    clusters: Vec<ClusterSpec>,
    flat_network: bool,
    no_controller_manager: bool,
    binaries: Option<Binaries>,
}

impl HarnessBuilder {
    /// Adds a cluster with two zones, `<name>-a` and `<name>-b`.
    pub fn cluster(self, name: &str) -> Self {
        let zones = vec![format!("{name}-a"), format!("{name}-b")];
        self.cluster_with_zones(name, zones)
    }

    /// Adds a cluster whose pods may be placed in `zones`.
    pub fn cluster_with_zones<Z: Into<String>>(
        mut self,
        name: &str,
        zones: impl IntoIterator<Item = Z>,
    ) -> Self {
        self.clusters.push(ClusterSpec {
            name: name.to_owned(),
            zones: zones.into_iter().map(Into::into).collect(),
        });
        self
    }

    /// With `true`, pod addresses are routable between clusters (flat network).
    pub fn flat_network(mut self, flat: bool) -> Self {
        self.flat_network = flat;
        self
    }

    /// Skips kube-controller-manager even when it is built (faster start; then
    /// namespaces never finish deleting and no default ServiceAccounts appear).
    pub fn without_controller_manager(mut self) -> Self {
        self.no_controller_manager = true;
        self
    }

    /// Uses these binaries instead of locating them with `go/build.sh`.
    pub fn binaries(mut self, binaries: Binaries) -> Self {
        self.binaries = Some(binaries);
        self
    }

    /// Starts etcd, then every cluster's apiserver concurrently, and waits until all
    /// are ready.
    pub async fn start(mut self) -> Result<Harness> {
        validate(&self.clusters)?;
        let binaries = match self.binaries.take() {
            Some(b) => b,
            None => Binaries::locate()?,
        };
        let cleanup = Cleanup::register();
        // Undoes a half-built harness if start fails or its future is dropped.
        let guard = CleanupGuard::new(&cleanup);
        let harness = self.start_parts(binaries, cleanup).await?;
        guard.disarm();
        Ok(harness)
    }

    async fn start_parts(self, binaries: Binaries, cleanup: Cleanup) -> Result<Harness> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .map_err(Error::io("creating the harness temp dir"))?;
        cleanup.add_dir(dir.path().to_path_buf());

        let net = Arc::new(Network::create(
            self.clusters.len() as u8,
            self.flat_network,
            dir.path(),
            &cleanup,
        )?);
        tracing::debug!(elapsed = ?started.elapsed(), slot = net.plan.slot(), "network ready");
        let host = IpAddr::V4(net.plan.host());
        let etcd = Etcd::start(
            &binaries.etcd,
            dir.path(),
            SocketAddr::new(host, ETCD_CLIENT_PORT),
            SocketAddr::new(host, ETCD_PEER_PORT),
            &cleanup,
        )
        .await?;
        tracing::debug!(elapsed = ?started.elapsed(), "etcd accepting connections");
        let mut starts = Vec::new();
        for (index, spec) in self.clusters.iter().enumerate() {
            starts.push(Cluster::start(ClusterParams {
                name: spec.name.clone(),
                index,
                zones: spec.zones.clone(),
                dir: dir.path().join(&spec.name),
                listen: SocketAddr::new(host, APISERVER_BASE_PORT + index as u16),
                etcd_url: etcd.client_url.clone(),
                service_cidr: net.plan.service_cidr(index as u8),
                binaries: &binaries,
                controller_manager: !self.no_controller_manager,
                cleanup: &cleanup,
                net: net.clone(),
            }));
        }
        let clusters = try_join_all(starts).await?;
        tracing::info!(elapsed = ?started.elapsed(), "harness started");
        Ok(Harness {
            clusters,
            etcd: Some(etcd),
            cleanup,
            dir,
            net,
        })
    }
}

/// Running clusters; everything is torn down when this is dropped.
#[derive(Debug)]
pub struct Harness {
    clusters: Vec<Cluster>,
    etcd: Option<Etcd>,
    cleanup: Cleanup,
    dir: tempfile::TempDir,
    // Dropped last: the slot stays claimed until everything else is gone.
    net: Arc<Network>,
}

impl Harness {
    /// Starts configuring a harness.
    pub fn builder() -> HarnessBuilder {
        HarnessBuilder::default()
    }

    /// The cluster called `name`.
    ///
    /// # Panics
    /// If no such cluster was requested: a test naming a missing cluster is a bug
    /// in the test. Use [`Harness::get`] to ask instead.
    pub fn cluster(&self, name: &str) -> &Cluster {
        match self.get(name) {
            Some(c) => c,
            None => panic!("harness has no cluster named {name:?}"),
        }
    }

    /// The cluster called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name() == name)
    }

    /// All clusters, in builder order.
    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    /// Whether pod addresses are routable between clusters.
    pub fn is_flat_network(&self) -> bool {
        self.net.flat
    }

    /// This harness's address plan (slot, addresses, namespace prefix).
    pub fn address_plan(&self) -> AddressPlan {
        self.net.plan
    }

    /// Network namespaces of this harness that exist right now.
    pub fn netns_names(&self) -> Vec<String> {
        let prefix = self.net.plan.netns_prefix();
        crate::net::netns_names()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect()
    }

    /// The harness's temp directory (certificates, kubeconfigs, logs, etcd data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process ids of every control-plane process (etcd, apiservers, controller
    /// managers), for checks that nothing outlives the harness.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.clusters.iter().flat_map(Cluster::pids).collect();
        pids.extend(self.etcd.as_ref().map(|e| e.proc.pid()));
        pids
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.clusters.clear();
        self.etcd = None;
        self.cleanup.run();
    }
}

fn validate(clusters: &[ClusterSpec]) -> Result<()> {
    if clusters.is_empty() || clusters.len() > MAX_CLUSTERS.into() {
        return Err(Error::Invalid(format!(
            "a harness needs 1 to {MAX_CLUSTERS} clusters"
        )));
    }
    for (i, c) in clusters.iter().enumerate() {
        if !is_dns_label(&c.name, 20) {
            return Err(Error::Invalid(format!(
                "cluster name {:?} must be 1-20 characters of a-z, 0-9 and '-', starting with a letter",
                c.name
            )));
        }
        if clusters[..i].iter().any(|o| o.name == c.name) {
            return Err(Error::Invalid(format!(
                "cluster {:?} appears twice",
                c.name
            )));
        }
        if c.zones.is_empty() {
            return Err(Error::Invalid(format!("cluster {:?} has no zones", c.name)));
        }
    }
    Ok(())
}

/// Whether `s` is a lowercase DNS label of at most `max` characters starting with a
/// letter (usable in Kubernetes names, namespace names and file names).
pub(crate) fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(|ch: char| ch.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests share a harness across tasks (`Arc<Harness>`), so it must stay Send + Sync.
    #[test]
    fn harness_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Harness>();
        check::<Cluster>();
        check::<crate::Pod>();
    }

    #[test]
    fn names_must_be_dns_labels() {
        assert!(is_dns_label("east-1", 20));
        for bad in ["", "East", "1east", "east-", "a b", "x".repeat(21).as_str()] {
            assert!(!is_dns_label(bad, 20), "{bad:?}");
        }
    }
}
