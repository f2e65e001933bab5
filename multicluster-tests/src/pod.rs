//! "Pods": network namespaces on a cluster's pod network with processes inside, and
//! publishing them as endpoints of a Service the way EndpointSlice controllers do.
//! There are no kubelets; a pod is whatever the test runs in its namespace.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::cleanup::Cleanup;
use crate::error::{Error, Result};
use crate::net;
use crate::process::Proc;

/// A pod: its own network namespace with an address on its cluster's pod network
/// (and, for gateway pods, a gateway address on the network between clusters).
/// Dropping it kills its processes and deletes the namespace.
#[derive(Debug)]
pub struct Pod {
    pub(crate) name: String,
    pub(crate) cluster: String,
    pub(crate) zone: String,
    pub(crate) netns: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) gateway: Option<Ipv4Addr>,
    pub(crate) log_dir: PathBuf,
    pub(crate) procs: Mutex<Vec<Proc>>,
    pub(crate) cleanup: Cleanup,
}

impl Pod {
    /// The name given when the pod was created.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster it belongs to.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Its zone (`topology.kubernetes.io/zone`).
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// The network namespace name (for `ip netns exec`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The pod address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The gateway address, for pods created with `Cluster::create_gateway_pod`.
    pub fn gateway_address(&self) -> Option<Ipv4Addr> {
        self.gateway
    }

    /// A command that runs `program` inside this pod's namespace; the caller runs it
    /// (for short-lived clients whose output a test reads).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// Starts a long-running process in the pod (more than one may run, like an app
    /// and its sidecar). Output goes to `<harness dir>/<cluster>/pods/<pod>.log`.
    /// Returns its pid; it is killed when the pod is dropped.
    pub fn spawn<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<u32>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args);
        std::fs::create_dir_all(&self.log_dir)
            .map_err(Error::io(format!("creating {}", self.log_dir.display())))?;
        let log = self.log_dir.join(format!("{}.log", self.name));
        let proc = Proc::spawn(format!("pod {}", self.name), cmd, &log, &self.cleanup)?;
        let pid = proc.pid();
        self.procs().push(proc);
        Ok(pid)
    }

    /// Kills every process started with [`Pod::spawn`] (SIGKILL, as a crash
    /// would), keeping the namespace and its address: connections to the pod
    /// are refused until something is spawned again.
    pub fn kill_processes(&self) {
        self.procs().clear();
    }

    /// Process ids of the processes started with [`Pod::spawn`].
    pub fn pids(&self) -> Vec<u32> {
        self.procs().iter().map(Proc::pid).collect()
    }

    /// Waits until something accepts TCP connections on `port` at the pod address
    /// (connecting from the root namespace), failing early if a process exited.
    pub async fn wait_listening(&self, port: u16, deadline: Duration) -> Result<()> {
        let addr = SocketAddr::from((self.ip, port));
        let started = Instant::now();
        loop {
            if net::connects(addr).await {
                return Ok(());
            }
            for proc in self.procs().iter_mut() {
                proc.check_running()?;
            }
            if started.elapsed() > deadline {
                return Err(Error::Timeout {
                    what: format!("pod {} listening on {addr}", self.name),
                    seconds: deadline.as_secs(),
                    detail: "connection refused or timed out".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn procs(&self) -> MutexGuard<'_, Vec<Proc>> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.procs().clear();
        // Anything the processes left running inside would keep the namespace alive.
        net::kill_netns_processes(&self.netns);
        let _ = net::ip(&["netns", "del", &self.netns]);
    }
}
