//! The harness's single etcd. Clusters share it, each apiserver under its own
//! `--etcd-prefix`: one etcd starts faster and uses less memory than one per cluster,
//! and stopping an apiserver never touches the data.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cleanup::Cleanup;
use crate::error::{Error, Result};
use crate::process::Proc;

const READY_DEADLINE: Duration = Duration::from_secs(30);

/// A running etcd.
#[derive(Debug)]
pub(crate) struct Etcd {
    pub proc: Proc,
    pub client_url: String,
}

impl Etcd {
    /// Starts etcd with data under `dir`, serving clients on `client` and peers on
    /// `peer`, and waits until its client port accepts connections.
    pub(crate) async fn start(
        binary: &Path,
        dir: &Path,
        client: SocketAddr,
        peer: SocketAddr,
        cleanup: &Cleanup,
    ) -> Result<Self> {
        let client_url = format!("http://{client}");
        let peer_url = format!("http://{peer}");
        let mut cmd = Command::new(binary);
        cmd.arg("--name=harness")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=harness={peer_url}"))
            // Test data need not survive a power cut; fsync dominates start-up time.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        let mut proc = Proc::spawn("etcd", cmd, &dir.join("etcd.log"), cleanup)?;
        let started = Instant::now();
        while !crate::net::connects(client).await {
            proc.check_running()?;
            if started.elapsed() > READY_DEADLINE {
                return Err(Error::Timeout {
                    what: "etcd".into(),
                    seconds: READY_DEADLINE.as_secs(),
                    detail: proc.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { proc, client_url })
    }
}
