//! A path under test: the address the client calls and the processes in between
//! (none for the direct path; west sidecar, gateway, east sidecar otherwise), with
//! their memory and CPU time read from /proc.

use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use multicluster_tests::{Proc, procstat};
use proxy::pki::{Ca, Validity, WrittenFiles};
use tokio::time::Instant;

/// One process of a path (with its children: nginx's workers).
pub struct Hop {
    proc: Proc,
}

impl Hop {
    /// Starts `cmd` as a hop named `name`, logging to `dir/<name>.log`.
    pub fn spawn(name: &str, cmd: Command, dir: &FsPath) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        Ok(Self {
            proc: Proc::spawn_alone(name, cmd, &log)?,
        })
    }

    /// The process and its children.
    fn pids(&self) -> Vec<u32> {
        let pid = self.proc.pid();
        let mut pids = procstat::children(pid);
        pids.push(pid);
        pids
    }

    /// Resident memory of the process and its children, in KiB (`VmRSS` or `VmHWM`).
    pub fn memory_kib(&self, field: &str) -> Result<u64> {
        self.pids()
            .into_iter()
            .map(|pid| Ok(procstat::status_kib(pid, field)?))
            .sum()
    }

    /// CPU time used so far by the process and its children.
    pub fn cpu(&self) -> Result<Duration> {
        self.pids()
            .into_iter()
            .map(|pid| Ok(procstat::cpu_time(pid)?))
            .sum()
    }

    /// Fails with the log tail if the process exited.
    pub fn check_running(&mut self) -> Result<()> {
        Ok(self.proc.check_running()?)
    }
}

/// Where the client connects, and what lies between it and the app.
pub struct Path {
    /// Column name in the report.
    pub name: &'static str,
    /// The client's target.
    pub entry: SocketAddr,
    /// Empty for the direct path, else west sidecar, gateway, east sidecar.
    pub hops: Vec<Hop>,
}

impl Path {
    /// CPU time of each hop so far.
    pub fn cpu(&self) -> Result<Vec<Duration>> {
        self.hops.iter().map(Hop::cpu).collect()
    }

    /// Resident memory of each hop now, in KiB.
    pub fn rss_kib(&self) -> Result<Vec<u64>> {
        self.hops.iter().map(|h| h.memory_kib("VmRSS")).collect()
    }
}

/// Waits until `check` succeeds, failing after 20 s or as soon as a hop exits.
pub async fn wait_until<F, Fut>(hops: &mut [Hop], what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        for hop in hops.iter_mut() {
            hop.check_running()?;
        }
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} not ready within 20 s")
}

/// Waits until every address in `addrs` accepts connections (see [`wait_until`]).
pub async fn wait_listening<const N: usize>(
    hops: &mut [Hop],
    what: &str,
    addrs: [SocketAddr; N],
) -> Result<()> {
    for addr in addrs {
        let listening = || async move { tokio::net::TcpStream::connect(addr).await.is_ok() };
        wait_until(hops, what, listening).await?;
    }
    Ok(())
}

/// Certificates of the three workloads, from one root; each leaf carries its
/// SPIFFE ID (what meshlink checks) and a DNS name (what nginx checks).
pub struct Certs {
    /// The west client's sidecar.
    pub web: WrittenFiles,
    /// East's gateway.
    pub gateway: WrittenFiles,
    /// The east app's sidecar.
    pub books: WrittenFiles,
}

/// SPIFFE IDs of the workloads.
pub const WEB_ID: &str = "spiffe://west.example/ns/shop/sa/web";
/// See [`WEB_ID`].
pub const GATEWAY_ID: &str = "spiffe://east.example/ns/meshlink-multicluster/sa/gateway";
/// See [`WEB_ID`].
pub const BOOKS_ID: &str = "spiffe://east.example/ns/shop/sa/books";

impl Certs {
    /// Issues and writes them under `dir/<name>/`.
    pub fn issue(dir: &FsPath) -> Result<Self> {
        let ca = Ca::root("meshlink bench root", Validity::days(1))?;
        let write = |name: &str, id: &str| -> Result<WrittenFiles> {
            let sub = dir.join(name);
            std::fs::create_dir_all(&sub)?;
            let id = api::identity::SpiffeId::parse(id).context("SPIFFE ID")?;
            let dns = format!("{name}.bench");
            let leaf = ca.issue(&id, &[&dns], Validity::days(1))?;
            Ok(leaf.write(&sub, ca.root_pem())?)
        };
        Ok(Self {
            web: write("web", WEB_ID)?,
            gateway: write("gateway", GATEWAY_ID)?,
            books: write("books", BOOKS_ID)?,
        })
    }
}
