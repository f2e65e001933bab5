//! Cluster networks built from Linux network namespaces, veth pairs and bridges.
//!
//! ```text
//!  root namespace (apiservers, etcd, test code) -- veth mlh<S> 198.18.S.1
//!        |
//!  mlh<S>-hub: bridge "wan" 198.18.S.0/24 (the network between clusters)
//!     |                      |                          |
//!  mlh<S>-c0-rt .10+0     mlh<S>-c1-rt .10+1     gateway pods: wan0 198.18.S.(32+8c+k)
//!  bridge "pods"           bridge "pods"          (also on their cluster's pod bridge)
//!  198.19.(8S+0).1/24      198.19.(8S+1).1/24
//!     |    |                  |
//!   pods (one namespace each, eth0 198.19.(8S+c).n, default via .1)
//! ```
//!
//! Isolation is routing, not filtering (no iptables needed): a cluster router knows
//! only its own pod subnet and the WAN, so a pod address of another cluster is
//! unreachable. Gateway pods sit on the WAN as well, with routes back to every pod
//! subnet, so any pod reaches any cluster's gateway address. With a flat network
//! the routers also route to each other's pod subnets. The root namespace routes to
//! every pod subnet so test code can reach pods, and pods reach the apiservers on
//! 198.18.S.1. `S` is the harness's slot, claimed with a lock file, so concurrent
//! harnesses (even in different test binaries) use disjoint names and addresses.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::cleanup::Cleanup;
use crate::error::{Error, Result};

/// Number of harness slots (concurrent harnesses on one machine).
pub const SLOTS: u8 = 16;
/// Maximum clusters per harness.
pub const MAX_CLUSTERS: u8 = 8;
/// Maximum gateway pods per cluster.
pub const MAX_GATEWAYS: u8 = 8;

const SLOT_DIR: &str = "/run/meshlink-harness";

/// The address plan of one slot; pure arithmetic, see the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressPlan {
    slot: u8,
}

impl AddressPlan {
    /// The plan for `slot` (must be below [`SLOTS`]).
    pub fn new(slot: u8) -> Result<Self> {
        if slot >= SLOTS {
            return Err(Error::Invalid(format!("slot {slot} is not below {SLOTS}")));
        }
        Ok(Self { slot })
    }

    /// The slot number.
    pub fn slot(&self) -> u8 {
        self.slot
    }

    /// Address of the root namespace on the WAN (apiservers and etcd bind here).
    pub fn host(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.slot, 1)
    }

    /// WAN address of cluster `c`'s router.
    pub fn router_wan(&self, c: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.slot, 10 + c)
    }

    /// WAN (gateway) address of gateway pod `k` of cluster `c`.
    pub fn gateway(&self, c: u8, k: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.slot, 32 + 8 * c + k)
    }

    /// Third octet of cluster `c`'s pod subnet 198.19.X.0/24.
    fn pod_octet(&self, c: u8) -> u8 {
        8 * self.slot + c
    }

    /// Cluster `c`'s pod subnet in CIDR notation.
    pub fn pod_subnet(&self, c: u8) -> String {
        format!("198.19.{}.0/24", self.pod_octet(c))
    }

    /// Address of pod number `n` (1-based) of cluster `c`; `.1` is the router.
    pub fn pod(&self, c: u8, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.pod_octet(c), n + 1)
    }

    /// The pod subnet's router address.
    pub fn pod_gateway(&self, c: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.pod_octet(c), 1)
    }

    /// Cluster `c`'s Service cluster-IP range (virtual, never routed).
    pub fn service_cidr(&self, c: u8) -> String {
        format!("198.19.{}.0/24", 128 + self.pod_octet(c))
    }

    /// Prefix of every network namespace of this slot.
    pub fn netns_prefix(&self) -> String {
        format!("mlh{}-", self.slot)
    }

    /// The root-namespace end of the veth into the hub.
    pub fn root_link(&self) -> String {
        format!("mlh{}", self.slot)
    }

    fn hub(&self) -> String {
        format!("mlh{}-hub", self.slot)
    }

    fn router(&self, c: u8) -> String {
        format!("mlh{}-c{c}-rt", self.slot)
    }
}

/// An exclusive claim on a slot: a lock on `/run/meshlink-harness/slot-N.lock`,
/// released by the kernel when the process dies, so a crashed harness never keeps
/// its slot. The file holds the owner's temp dir, so whoever claims the slot after a
/// crash can remove that too.
#[derive(Debug)]
struct SlotLock {
    file: File,
}

impl SlotLock {
    /// Replaces the recorded temp dir with `dir`, returning the previous one.
    fn swap_dir(&mut self, dir: &Path) -> Result<Option<String>> {
        let mut previous = String::new();
        let _ = self.file.read_to_string(&mut previous);
        let ctx = || Error::io("recording the harness dir in its slot file");
        self.file.set_len(0).map_err(|e| ctx()(e))?;
        self.file.rewind().map_err(|e| ctx()(e))?;
        self.file
            .write_all(dir.to_string_lossy().as_bytes())
            .map_err(|e| ctx()(e))?;
        let previous = previous.trim();
        Ok((!previous.is_empty()).then(|| previous.to_owned()))
    }
}

fn claim_slot() -> Result<(SlotLock, AddressPlan)> {
    std::fs::create_dir_all(SLOT_DIR).map_err(Error::io(format!("creating {SLOT_DIR}")))?;
    for slot in 0..SLOTS {
        let path = Path::new(SLOT_DIR).join(format!("slot-{slot}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(Error::io(format!("opening {}", path.display())))?;
        match file.try_lock() {
            Ok(()) => return Ok((SlotLock { file }, AddressPlan::new(slot)?)),
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(e)) => {
                return Err(Error::io(format!("locking {}", path.display()))(e));
            }
        }
    }
    Err(Error::NoFreeSlot(SLOTS.into()))
}

/// The harness's network: slot, hub and one router per cluster.
#[derive(Debug)]
pub(crate) struct Network {
    pub plan: AddressPlan,
    pub flat: bool,
    clusters: u8,
    _slot: SlotLock,
}

impl Network {
    /// Claims a slot, removes anything a dead owner of it left behind, and builds the
    /// hub, the root veth and one router per cluster. `dir` is the harness temp dir.
    pub(crate) fn create(clusters: u8, flat: bool, dir: &Path, cleanup: &Cleanup) -> Result<Self> {
        let (mut lock, plan) = claim_slot()?;
        let stale_dir = lock.swap_dir(dir)?;
        remove_leftovers(&plan, stale_dir.as_deref());
        let net = Self {
            plan,
            flat,
            clusters,
            _slot: lock,
        };
        net.create_hub(cleanup)?;
        for c in 0..clusters {
            net.create_router(c, cleanup)?;
        }
        Ok(net)
    }

    fn create_hub(&self, cleanup: &Cleanup) -> Result<()> {
        let (hub, root) = (self.plan.hub(), self.plan.root_link());
        add_netns(&hub, cleanup)?;
        ip(&["-n", &hub, "link", "add", "wan", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "wan", "up"])?;
        cleanup.add_root_link(&root);
        ip(&[
            "link", "add", &root, "type", "veth", "peer", "name", "root", "netns", &hub,
        ])?;
        ip(&["-n", &hub, "link", "set", "root", "master", "wan", "up"])?;
        let host = format!("{}/24", self.plan.host());
        ip(&["addr", "add", &host, "dev", &root])?;
        ip(&["link", "set", &root, "up"])?;
        for c in 0..self.clusters {
            let via = self.plan.router_wan(c).to_string();
            ip(&["route", "add", &self.plan.pod_subnet(c), "via", &via])?;
        }
        Ok(())
    }

    fn create_router(&self, c: u8, cleanup: &Cleanup) -> Result<()> {
        let (hub, rt) = (self.plan.hub(), self.plan.router(c));
        add_netns(&rt, cleanup)?;
        let wan = self.plan.router_wan(c);
        plug((&hub, "wan", &format!("c{c}")), (&rt, "wan"), wan)?;
        ip(&["-n", &rt, "link", "add", "pods", "type", "bridge"])?;
        let gw = format!("{}/24", self.plan.pod_gateway(c));
        ip(&["-n", &rt, "addr", "add", &gw, "dev", "pods"])?;
        ip(&["-n", &rt, "link", "set", "pods", "up"])?;
        run(Command::new("ip")
            .args(["netns", "exec", &rt, "sh", "-c"])
            .arg("echo 1 > /proc/sys/net/ipv4/ip_forward"))?;
        if self.flat {
            self.route_other_clusters(c, &rt)?;
        }
        Ok(())
    }

    /// Creates namespace `ns` as pod `n` of cluster `c`, attached to the pod bridge,
    /// and, for gateway `k`, to the WAN too. Returns (pod address, gateway address).
    pub(crate) fn attach_pod(
        &self,
        c: u8,
        n: u8,
        ns: &str,
        gateway: Option<u8>,
        cleanup: &Cleanup,
    ) -> Result<(Ipv4Addr, Option<Ipv4Addr>)> {
        let rt = self.plan.router(c);
        add_netns(ns, cleanup)?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        let addr = self.plan.pod(c, n);
        plug((&rt, "pods", &format!("p{n}")), (ns, "eth0"), addr)?;
        let via = self.plan.pod_gateway(c).to_string();
        ip(&["-n", ns, "route", "add", "default", "via", &via])?;
        let gateway = match gateway {
            Some(k) => Some(self.attach_gateway(c, k, ns)?),
            None => None,
        };
        Ok((addr, gateway))
    }

    /// Puts pod namespace `ns` on the WAN as gateway `k` of cluster `c`, with routes
    /// back to every other cluster's pods so it can answer them.
    fn attach_gateway(&self, c: u8, k: u8, ns: &str) -> Result<Ipv4Addr> {
        let addr = self.plan.gateway(c, k);
        plug(
            (&self.plan.hub(), "wan", &format!("c{c}g{k}")),
            (ns, "wan0"),
            addr,
        )?;
        self.route_other_clusters(c, ns)?;
        Ok(addr)
    }

    /// In namespace `ns`, routes the pods of every cluster but `c` via their
    /// routers' WAN addresses.
    fn route_other_clusters(&self, c: u8, ns: &str) -> Result<()> {
        for other in (0..self.clusters).filter(|o| *o != c) {
            let (subnet, via) = (self.plan.pod_subnet(other), self.plan.router_wan(other));
            ip(&["-n", ns, "route", "add", &subnet, "via", &via.to_string()])?;
        }
        Ok(())
    }
}

/// Plugs a namespace into a bridge with a veth pair: `(host, bridge, port)` is
/// the bridge's namespace, the bridge and the veth end enslaved to it; `(ns,
/// dev)` the namespace and its end, which gets `addr`/24. Both ends are up.
fn plug(bridge: (&str, &str, &str), end: (&str, &str), addr: Ipv4Addr) -> Result<()> {
    let ((host, bridge, port), (ns, dev)) = (bridge, end);
    ip(&[
        "-n", host, "link", "add", port, "type", "veth", "peer", "name", dev, "netns", ns,
    ])?;
    ip(&["-n", host, "link", "set", port, "master", bridge, "up"])?;
    ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
    ip(&["-n", ns, "link", "set", dev, "up"])
}

fn add_netns(name: &str, cleanup: &Cleanup) -> Result<()> {
    cleanup.add_netns(name);
    ip(&["netns", "add", name])
}

/// Deletes namespaces (and the processes in them), the root link and the temp dir
/// that a previous, dead owner of this slot left behind.
fn remove_leftovers(plan: &AddressPlan, stale_dir: Option<&str>) {
    // Only ever a harness temp dir, whatever the file says.
    if let Some(dir) = stale_dir.map(Path::new)
        && dir.starts_with(std::env::temp_dir())
        && dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(crate::harness::DIR_PREFIX))
    {
        let _ = std::fs::remove_dir_all(dir);
    }
    let prefix = plan.netns_prefix();
    for ns in netns_names().into_iter().filter(|n| n.starts_with(&prefix)) {
        kill_netns_processes(&ns);
        let _ = ip(&["netns", "del", &ns]);
    }
    let _ = ip(&["link", "del", &plan.root_link()]);
}

/// Kills every process inside network namespace `ns`.
pub(crate) fn kill_netns_processes(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Names of all network namespaces on the machine (`ip netns list`).
pub fn netns_names() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run(&mut cmd)
}

fn run(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    let out = cmd.output().map_err(Error::io(format!("running {line}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: line,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Whether a TCP connection to `addr` succeeds within 200 ms (without blocking the
/// runtime, which is single-threaded in `#[tokio::test]`).
pub(crate) async fn connects(addr: SocketAddr) -> bool {
    let connect = tokio::net::TcpStream::connect(addr);
    matches!(
        tokio::time::timeout(Duration::from_millis(200), connect).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_never_share_addresses() -> Result<()> {
        let a = AddressPlan::new(0)?;
        let b = AddressPlan::new(SLOTS - 1)?;
        assert_ne!(a.host(), b.host());
        assert_ne!(a.pod_subnet(MAX_CLUSTERS - 1), b.pod_subnet(0));
        assert_eq!(b.pod(MAX_CLUSTERS - 1, 1), Ipv4Addr::new(198, 19, 127, 2));
        assert_eq!(b.service_cidr(MAX_CLUSTERS - 1), "198.19.255.0/24");
        assert_eq!(
            a.gateway(MAX_CLUSTERS - 1, MAX_GATEWAYS - 1),
            Ipv4Addr::new(198, 18, 0, 95)
        );
        assert!(AddressPlan::new(SLOTS).is_err());
        Ok(())
    }
}
