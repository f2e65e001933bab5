//! The `proxy` and `gateway` binaries as the harness runs them: real credential
//! files from `proxy::pki`, discovery files, /ready on the admin ports, HTTP
//! through all three processes, and a clean exit on SIGTERM.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use api::identity::SpiffeId;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use proxy::pki::{Validity, WrittenFiles};
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

/// The `proxy` binary, a sibling of this package's `gateway` binary. Cargo only
/// builds a package's own binaries for its tests, so build it if it is missing.
fn proxy_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_gateway")).with_file_name("proxy");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", "proxy", "--bin", "proxy"])
        .status()
        .unwrap();
    assert!(
        status.success() && path.exists(),
        "could not build {}",
        path.display()
    );
    path
}

/// Credentials for `id` written as files under `dir/<name>/`.
fn creds(pki: &Pki, dir: &Path, name: &str, id: &str) -> WrittenFiles {
    let sub = dir.join(name);
    std::fs::create_dir(&sub).unwrap();
    let leaf = pki
        .ca
        .issue(&SpiffeId::parse(id).unwrap(), &[], Validity::days(1))
        .unwrap();
    leaf.write(&sub, pki.ca.root_pem()).unwrap()
}

/// Starts a binary with its TLS files and discovery file.
fn start(bin: &str, args: &[String], files: &WrittenFiles, discovery: &Path) -> Kill {
    let child = Command::new(bin)
        .args(args)
        .arg("--discovery-file")
        .arg(discovery)
        .args(files.flags())
        .spawn()
        .unwrap();
    Kill(child)
}

async fn ready(admin: SocketAddr) {
    let ok = eventually_async(|| async {
        get(admin, "/ready")
            .await
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    })
    .await;
    assert!(ok, "{admin} never became ready");
}

fn discovery(dir: &Path, name: &str, yaml: String) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    path
}

/// The demo path with real processes: client → `proxy` (west, outbound) →
/// `gateway` (east) → `proxy` (east, inbound) → app, then SIGTERM to each.
#[tokio::test]
async fn binaries_carry_http_across_clusters() {
    let app = http_app().await;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (west_out, west_in, west_admin) = (free_port(), free_port(), free_port());
    let (east_out, east_in, east_admin) = (free_port(), free_port(), free_port());
    let (gw, gw_admin) = (free_port(), free_port());
    let s = |a: SocketAddr| a.to_string();

    let east_disc = discovery(
        dir.path(),
        "east.yaml",
        format!(
            "services:\n  - target: {TARGET}\n    endpoints:\n      - addr: {east_in}\n        identity: {BOOKS_ID}\n"
        ),
    );
    let west_disc = discovery(
        dir.path(),
        "west.yaml",
        format!(
            "services:\n  - target: {MIRROR}\n    endpoints:\n      - addr: {gw}\n        identity: {GATEWAY_ID}\n        remote_authority: {TARGET}\n"
        ),
    );
    let proxy_bin = proxy_binary();
    let proxy_bin = proxy_bin.to_str().unwrap();
    let east = start(
        proxy_bin,
        &[
            "run".into(),
            "--outbound-addr".into(),
            s(east_out),
            "--inbound-addr".into(),
            s(east_in),
            "--admin-addr".into(),
            s(east_admin),
            "--app-addr".into(),
            s(app),
        ],
        &creds(&pki, dir.path(), "books", BOOKS_ID),
        &east_disc,
    );
    let gateway = start(
        env!("CARGO_BIN_EXE_gateway"),
        &["--addr".into(), s(gw), "--admin-addr".into(), s(gw_admin)],
        &creds(&pki, dir.path(), "gateway", GATEWAY_ID),
        &east_disc,
    );
    let west = start(
        proxy_bin,
        &[
            "run".into(),
            "--outbound-addr".into(),
            s(west_out),
            "--inbound-addr".into(),
            s(west_in),
            "--admin-addr".into(),
            s(west_admin),
            "--app-addr".into(),
            "127.0.0.1:9".into(),
            "--outbound-target".into(),
            MIRROR.into(),
        ],
        &creds(&pki, dir.path(), "web", WEB_ID),
        &west_disc,
    );
    for admin in [east_admin, gw_admin, west_admin] {
        ready(admin).await;
    }

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::post(format!("http://{west_out}/echo"))
        .header("host", MIRROR)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            "across processes",
        )))
        .unwrap();
    let rsp = client.request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let body = http_body_util::BodyExt::collect(rsp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "across processes");

    let metrics = get(gw_admin, "/metrics").await.unwrap();
    assert!(metrics.contains(r#"gateway_responses_total{listener="Gateway",target="books.shop.svc.cluster.local:8080",status="2xx"} 1"#), "{metrics}");

    for mut proc in [west, gateway, east] {
        kill(Pid::from_raw(proc.0.id() as i32), Signal::SIGTERM).unwrap();
        let status = tokio::task::spawn_blocking(move || proc.0.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{status}");
    }
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
