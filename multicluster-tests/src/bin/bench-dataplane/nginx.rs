//! The nginx path: the same three hops with Debian's nginx as each of them. West's
//! sidecar takes plain HTTP and proxies over mutual TLS 1.3 to the "gateway" nginx,
//! which verifies the client certificate and proxies over mutual TLS again to east's
//! sidecar, which hands plain HTTP to the app. Every upstream keeps connections
//! alive (no per-connection request cap), access logs are off, and each instance
//! runs nginx's default `worker_processes auto`.

use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::process::Command;

use anyhow::{Context, Result};
use multicluster_tests::free_addr;
use proxy::pki::WrittenFiles;

use crate::path::{Certs, Hop, Path, wait_listening};

/// Starts the three nginx instances and waits until each listens.
pub async fn start(dir: &FsPath, certs: &Certs, app: SocketAddr) -> Result<Path> {
    let (west, gateway, east) = (free_addr()?, free_addr()?, free_addr()?);
    let west_conf = format!(
        "{}server {{\n  listen {west};\n  location / {{\n{}  }}\n}}\n",
        upstream("gateway", gateway),
        proxy_tls("gateway", &certs.web)
    );
    let gateway_conf = format!(
        "{}server {{\n  listen {gateway} ssl;\n{}  location / {{\n{}  }}\n}}\n",
        upstream("books", east),
        server_tls(&certs.gateway),
        proxy_tls("books", &certs.gateway)
    );
    let east_conf = format!(
        "{}server {{\n  listen {east} ssl;\n{}  location / {{\n    proxy_pass http://app;\n{KEEPALIVE}  }}\n}}\n",
        upstream("app", app),
        server_tls(&certs.books)
    );
    let mut hops = vec![
        spawn(dir, "nginx-west", &west_conf)?,
        spawn(dir, "nginx-gateway", &gateway_conf)?,
        spawn(dir, "nginx-east", &east_conf)?,
    ];
    wait_listening(&mut hops, "nginx", [west, gateway, east]).await?;
    Ok(Path {
        name: "nginx",
        entry: west,
        hops,
    })
}

/// Upstream keep-alive: HTTP/1.1 without the client's `Connection` header.
const KEEPALIVE: &str = "    proxy_http_version 1.1;\n    proxy_set_header Connection \"\";\n    proxy_set_header Host $http_host;\n";

/// An upstream of one server, keeping up to 128 idle connections per worker with
/// no cap on the requests each carries (nginx closes one after 1,000 by default).
fn upstream(name: &str, addr: SocketAddr) -> String {
    format!(
        "upstream {name} {{\n  server {addr};\n  keepalive 128;\n  keepalive_requests 1000000000;\n}}\n"
    )
}

/// `proxy_pass` over mutual TLS 1.3 to upstream `peer`, whose certificate must
/// name `<peer>.bench`.
fn proxy_tls(peer: &str, ours: &WrittenFiles) -> String {
    format!(
        "    proxy_pass https://{peer};\n{KEEPALIVE}\
         \x20   proxy_ssl_protocols TLSv1.3;\n\
         \x20   proxy_ssl_certificate {};\n    proxy_ssl_certificate_key {};\n\
         \x20   proxy_ssl_trusted_certificate {};\n    proxy_ssl_verify on;\n\
         \x20   proxy_ssl_name {peer}.bench;\n    proxy_ssl_session_reuse on;\n",
        ours.cert_chain.display(),
        ours.key.display(),
        ours.bundle.display(),
    )
}

/// A TLS 1.3 listener that requires a client certificate from the bench's root.
fn server_tls(ours: &WrittenFiles) -> String {
    format!(
        "  ssl_protocols TLSv1.3;\n  ssl_certificate {};\n  ssl_certificate_key {};\n\
         \x20 ssl_client_certificate {};\n  ssl_verify_client on;\n",
        ours.cert_chain.display(),
        ours.key.display(),
        ours.bundle.display(),
    )
}

/// Writes `nginx.conf` around `http` under `dir/<name>/` and starts nginx on it.
fn spawn(dir: &FsPath, name: &str, http: &str) -> Result<Hop> {
    let prefix = dir.join(name);
    std::fs::create_dir_all(&prefix)?;
    let p = prefix.display();
    let conf = format!(
        "daemon off;\nuser root;\nworker_processes auto;\npid {p}/nginx.pid;\nerror_log stderr warn;\n\
         events {{\n  worker_connections 4096;\n}}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000000;\n\
         \x20 client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
         \x20 fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
         {http}}}\n"
    );
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&path)
        .args(["-e", "stderr"]);
    Hop::spawn(name, cmd, dir)
}
