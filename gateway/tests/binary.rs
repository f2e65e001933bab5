//! The `gateway` binary as the harness runs it: real credential files from
//! `proxy::pki`, a discovery file, /ready on the admin port, traffic through it,
//! and a clean exit on SIGTERM.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::Duration;

use api::identity::SpiffeId;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use proxy::pki::Validity;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A port free right now (the binary binds it a moment later).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

#[tokio::test]
async fn gateway_binary_serves_ready_forwards_and_exits_on_sigterm() {
    let app = tcp_echo().await;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let id = SpiffeId::parse(GATEWAY_ID).unwrap();
    let files = pki
        .ca
        .issue(&id, &[], Validity::days(1))
        .unwrap()
        .write(dir.path(), pki.ca.root_pem())
        .unwrap();
    let discovery = dir.path().join("discovery.yaml");
    std::fs::write(
        &discovery,
        format!("services:\n  - target: {TARGET}\n    endpoints:\n      - addr: {app}\n"),
    )
    .unwrap();
    let (addr, admin) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--addr",
            &addr.to_string(),
            "--admin-addr",
            &admin.to_string(),
        ])
        .arg("--discovery-file")
        .arg(&discovery)
        .arg("--tls-cert")
        .arg(&files.cert_chain)
        .arg("--tls-key")
        .arg(&files.key)
        .arg("--tls-trust")
        .arg(&files.bundle)
        .spawn()
        .unwrap();
    let mut child = Kill(child);

    let ready = eventually_async(|| async {
        get(admin, "/ready")
            .await
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    })
    .await;
    assert!(ready, "gateway never became ready");

    // An opaque session through the real binary.
    let configs = pki.configs_from(WEB_ID, Validity::days(1), &pki);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut s, _) = proxy::tls::connect(configs.client.clone(), tcp, &id, Duration::from_secs(5))
        .await
        .unwrap();
    let header = proxy::header::header_for(TARGET, proxy::detect::Protocol::Opaque, 1).unwrap();
    proxy::tls::write_header(&mut s, &header).await.unwrap();
    s.write_all(b"through the binary").await.unwrap();
    let mut got = [0u8; 18];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"through the binary");
    drop(s);

    let metrics = get(admin, "/metrics").await.unwrap();
    assert!(metrics.contains("gateway_tcp_open_total"), "{metrics}");

    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// Polls an async check until it is true or 10 s pass.
async fn eventually_async<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
