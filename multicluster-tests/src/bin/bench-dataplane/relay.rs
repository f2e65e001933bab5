//! The floor: the same three hops as plaintext TCP relays, Debian's HAProxy in
//! `mode tcp` with its defaults. No TLS, no HTTP parsing, no per-request work:
//! what any proxy's hop costs on this machine before it does anything useful, so
//! the report can tell a goal the machine cannot reach from one meshlink misses.

use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::process::Command;

use anyhow::{Context, Result};
use multicluster_tests::free_addr;

use crate::path::{Hop, Path, wait_listening};

/// Starts the three relays (west → gateway → east → app) and waits until each
/// listens.
pub async fn start(dir: &FsPath, app: SocketAddr) -> Result<Path> {
    let (west, gateway, east) = (free_addr()?, free_addr()?, free_addr()?);
    let mut hops = vec![
        spawn(dir, "relay-west", west, gateway)?,
        spawn(dir, "relay-gateway", gateway, east)?,
        spawn(dir, "relay-east", east, app)?,
    ];
    wait_listening(&mut hops, "haproxy", [west, gateway, east]).await?;
    Ok(Path {
        name: "tcp relay",
        entry: west,
        hops,
    })
}

/// Writes `dir/<name>.cfg`, a relay from `from` to `to`, and starts HAProxy on it
/// in the foreground.
fn spawn(dir: &FsPath, name: &str, from: SocketAddr, to: SocketAddr) -> Result<Hop> {
    let conf = format!(
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\
         listen relay\n  bind {from}\n  server next {to}\n"
    );
    let path = dir.join(format!("{name}.cfg"));
    std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    Hop::spawn(name, cmd, dir)
}
