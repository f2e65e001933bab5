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
//! The pieces:
//! - [`Harness::builder`] → [`HarnessBuilder`]: `cluster(name)` (zones `<name>-a`,
//!   `<name>-b`), `cluster_with_zones(name, zones)`, `flat_network(bool)`,
//!   `without_controller_manager()`, `binaries(Binaries)`, then `start().await`.
//! - [`Harness`]: `cluster(name)` (panics if absent), `get(name)`, `clusters()`,
//!   `dir()`, `address_plan()`, `netns_names()`, `pids()`, `is_flat_network()`.
//! - [`Cluster`]: `name()`, `zones()`, `server_url()`, `kubeconfig_path()`,
//!   `kubeconfig_yaml()`, `client()`, `new_client()`, `kube_config()`,
//!   `service_account_token(ns, sa)`, `kubeconfig_for_token(token)`,
//!   `client_with_token(token)`, `stop_apiserver()`, `start_apiserver()`,
//!   `apiserver_running()`, `gateway_address()`, `pod_subnet()`,
//!   `create_pod(name, zone)`, `create_gateway_pod(name, zone)`,
//!   `publish(ns, service, port, pods)`.
//! - [`Pod`]: `ip()`, `gateway_address()`, `zone()`, `netns()`, `spawn(program,
//!   args)`, `command(program)`, `wait_listening(port, deadline)`, `pids()`.
//! - [`Scenario`] (module [`scenario`]): meshlink on `east` and `west`, every
//!   component a real process in its own pod, shared by the end-to-end test and
//!   the demo; [`traffic`] has the HTTP and opaque TCP clients both use.
//!
//! - [`zonelab`]: endpoints in every zone of one cluster with run-time latency
//!   injection, its controller and client proxies per zone, for cost-tier tests.
//!
//! Everything a harness creates is removed when it is dropped, when a test panics
//! (unwinding drops it) and on SIGINT/SIGTERM. Tests must run as root. See
//! `docs/testing.md` for the topology, address plan and measurements.

mod binaries;
mod cleanup;
mod cluster;
mod components;
mod error;
mod etcd;
pub mod failover;
mod harness;
mod net;
mod pki;
mod pod;
mod process;
pub mod procstat;
mod publish;
pub mod scenario;
pub mod traffic;
pub mod zonelab;

pub use binaries::{Binaries, meshlink_binary};
pub use cluster::Cluster;
pub use components::{ControllerProcess, admin_get, free_addr, ready};
pub use error::{Error, Result};
pub use harness::{Harness, HarnessBuilder};
pub use net::{AddressPlan, MAX_CLUSTERS, MAX_GATEWAYS, SLOTS, netns_names};
pub use pod::Pod;
pub use process::Proc;
pub use publish::MANAGER;
pub use scenario::Scenario;

/// Installs a stderr `tracing` subscriber for the harness's binaries, filtered by
/// `RUST_LOG` (default: warnings, with kube-client's per-request errors silenced:
/// readiness polling makes many expected ones). Does nothing if one is installed.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "warn,kube_client=off".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
