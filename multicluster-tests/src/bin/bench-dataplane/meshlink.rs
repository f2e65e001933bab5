//! The meshlink path: the release `proxy` binary as west's sidecar (explicit
//! outbound target, the mirror service), the `gateway` binary, and `proxy` again as
//! east's sidecar in front of the app; mTLS between them with the bench's
//! certificates and static discovery files, as `gateway/tests/binary.rs` wires them.

use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::process::Command;

use anyhow::Result;
use multicluster_tests::{free_addr, meshlink_binary, ready};
use proxy::pki::WrittenFiles;

use crate::path::{BOOKS_ID, Certs, GATEWAY_ID, Hop, Path, wait_until};

/// The exported service in east, and its mirror in west.
const TARGET: &str = "books.shop.svc.cluster.local:8080";
const MIRROR: &str = "books-east.shop.svc.cluster.local:8080";

/// Starts the three processes and waits until each admin port is ready.
pub async fn start(dir: &FsPath, certs: &Certs, app: SocketAddr) -> Result<Path> {
    let (west_out, gateway, east_in) = (free_addr()?, free_addr()?, free_addr()?);
    let admins = [free_addr()?, free_addr()?, free_addr()?];
    let east_discovery = dir.join("east-discovery.yaml");
    std::fs::write(
        &east_discovery,
        format!(
            "services:\n  - target: {TARGET}\n    endpoints:\n      - addr: {east_in}\n        identity: {BOOKS_ID}\n"
        ),
    )?;
    let west_discovery = dir.join("west-discovery.yaml");
    std::fs::write(
        &west_discovery,
        format!(
            "services:\n  - target: {MIRROR}\n    endpoints:\n      - addr: {gateway}\n        identity: {GATEWAY_ID}\n        remote_authority: {TARGET}\n"
        ),
    )?;

    let proxy = |out: String, inbound: String, admin: SocketAddr| {
        let mut cmd = Command::new(meshlink_binary("proxy")?);
        cmd.args(["run", "--outbound-addr", &out, "--inbound-addr", &inbound])
            .args(["--admin-addr", &admin.to_string()]);
        anyhow::Ok(cmd)
    };
    let mut west = proxy(west_out.to_string(), free_addr()?.to_string(), admins[0])?;
    west.args(["--app-addr", "127.0.0.1:9", "--outbound-target", MIRROR]);
    let mut gw = Command::new(meshlink_binary("gateway")?);
    gw.args(["--addr", &gateway.to_string()])
        .args(["--admin-addr", &admins[1].to_string()]);
    let mut east = proxy(free_addr()?.to_string(), east_in.to_string(), admins[2])?;
    east.args(["--app-addr", &app.to_string()]);

    let mut hops = vec![
        hop("meshlink-west", west, &certs.web, &west_discovery, dir)?,
        hop("meshlink-gateway", gw, &certs.gateway, &east_discovery, dir)?,
        hop("meshlink-east", east, &certs.books, &east_discovery, dir)?,
    ];
    for admin in admins {
        wait_until(&mut hops, "meshlink", || ready(admin)).await?;
    }
    Ok(Path {
        name: "meshlink",
        entry: west_out,
        hops,
    })
}

fn hop(
    name: &str,
    mut cmd: Command,
    files: &WrittenFiles,
    discovery: &FsPath,
    dir: &FsPath,
) -> Result<Hop> {
    cmd.arg("--discovery-file")
        .arg(discovery)
        .args(files.flags())
        .env("RUST_LOG", "warn");
    // Tuning experiments: `MESHLINK_BENCH_HOP_ENV=K=V,K2=V2` reaches these
    // processes only (not the client, the app or nginx).
    let extra = std::env::var("MESHLINK_BENCH_HOP_ENV").unwrap_or_default();
    for (key, value) in extra.split(',').filter_map(|kv| kv.split_once('=')) {
        cmd.env(key, value);
    }
    Hop::spawn(name, cmd, dir)
}
