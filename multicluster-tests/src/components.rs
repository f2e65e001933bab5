//! meshlink's own binaries run as processes against harness clusters, the way
//! tests, benchmarks and the demo start them: free ports, readiness via the admin
//! server's `/ready`, SIGTERM for a graceful stop, SIGKILL on drop.

use rand::Rng;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::binaries::meshlink_binary;
use crate::cluster::Cluster;
use crate::error::{Error, Result};

/// How long a component may take to report ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A running `controller` for one cluster, listening on loopback.
#[derive(Debug)]
pub struct ControllerProcess {
    child: Child,
    /// Where proxies reach its discovery API.
    pub discovery: SocketAddr,
    /// Its admin server (/ready, /live, /metrics).
    pub admin: SocketAddr,
}

impl ControllerProcess {
    /// Starts the controller for `cluster` (admin kubeconfig) and waits until it is
    /// ready: its watches have listed the cluster.
    pub async fn start(cluster: &Cluster) -> Result<Self> {
        Self::start_with(cluster, &[]).await
    }

    /// Like [`ControllerProcess::start`], with `args` added to the command line.
    pub async fn start_with(cluster: &Cluster, args: &[std::ffi::OsString]) -> Result<Self> {
        let (discovery, admin) = (free_addr()?, free_addr()?);
        let child = Command::new(meshlink_binary("controller")?)
            .args(["--cluster-name", cluster.name(), "--kubeconfig"])
            .arg(cluster.kubeconfig_path())
            .args(args)
            .arg("--discovery-addr")
            .arg(discovery.to_string())
            .arg("--admin-addr")
            .arg(admin.to_string())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Invalid(format!("starting controller: {e}")))?;
        let mut this = Self {
            child,
            discovery,
            admin,
        };
        this.wait_ready().await?;
        Ok(this)
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> Result<ExitStatus> {
        let pid = self
            .pid()
            .ok_or_else(|| Error::Invalid("controller already exited".into()))?;
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .map_err(|e| Error::Invalid(format!("signalling controller: {e}")))?;
        tokio::time::timeout(READY_WITHIN, self.child.wait())
            .await
            .map_err(|_| Error::Invalid("controller ignored SIGTERM".into()))?
            .map_err(|e| Error::Invalid(format!("waiting for controller: {e}")))
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Invalid(format!(
                    "controller exited before ready: {status}"
                )));
            }
            if ready(self.admin).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Error::Invalid(format!(
            "controller not ready within {READY_WITHIN:?}"
        )))
    }
}

/// Whether the admin server at `addr` answers `/ready` with 200.
pub async fn ready(addr: SocketAddr) -> bool {
    admin_get(addr, "/ready")
        .await
        .is_some_and(|(status, _)| status == 200)
}

/// GETs `path` from the admin server at `addr`: the status and the body, or
/// `None` when it could not be asked or did not answer HTTP.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\n\r\n");
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await.ok()?;
    let status = reply.split(' ').nth(1)?.parse().ok()?;
    let body = reply.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// A loopback address with a port free at the time of the call, drawn from
/// below the kernel's ephemeral range: a port the kernel handed out (`:0`)
/// could be taken by an outgoing connection's local port before the process
/// it is meant for binds it, which busy load tests made happen.
pub fn free_addr() -> Result<SocketAddr> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let range = low.saturating_sub(12_000).max(1024)..low;
    let mut rng = rand::rng();
    for _ in 0..200 {
        let addr = SocketAddr::from(([127, 0, 0, 1], rng.random_range(range.clone())));
        if std::net::TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    Err(Error::Invalid(format!(
        "finding a free port: none of 200 tries in {range:?} was free"
    )))
}
