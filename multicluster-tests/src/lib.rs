//! The multi-cluster test harness: several real clusters on one machine (a real
//! kube-apiserver per cluster over a shared etcd, network namespaces for cluster
//! networks), processes started as pods, the end-to-end tests, the demo and the
//! benchmarks.
//!
//! ```no_run
//! # async fn demo() -> multicluster_tests::Result<()> {
//! use multicluster_tests::Harness;
//! let harness = Harness::builder().cluster("east").cluster("west").start().await?;
//! let east = harness.cluster("east");
//! let client: kube::Client = east.client();
//! let token = east.service_account_token("default", "default").await?;
//! east.stop_apiserver();
//! east.start_apiserver().await?;
//! # let _ = (client, token); Ok(()) }
//! ```
//!
//! Everything a harness creates is removed when it is dropped, when a test panics
//! (unwinding drops it) and on SIGINT/SIGTERM. See `docs/testing.md`.

mod binaries;
mod cleanup;
mod cluster;
mod error;
mod etcd;
mod harness;
mod net;
mod pki;
mod pod;
mod process;
mod publish;

pub use binaries::Binaries;
pub use cluster::Cluster;
pub use error::{Error, Result};
pub use harness::{Harness, HarnessBuilder};
pub use net::{AddressPlan, MAX_CLUSTERS, MAX_GATEWAYS, SLOTS, netns_names};
pub use pod::Pod;
pub use publish::MANAGER;
