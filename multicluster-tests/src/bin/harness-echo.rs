//! A tiny TCP server and client for harness pods, so tests need nothing installed.
//!
//! `harness-echo serve PORT NAME`: on each connection writes `NAME\n`, then echoes.
//! `harness-echo probe HOST:PORT [TIMEOUT_MS]`: connects, prints the first line it
//! reads and exits 0; exits 1 with the error if it cannot connect or read.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", port, name] => serve(port.parse().context("PORT")?, name),
        ["probe", addr] => probe(addr.parse().context("HOST:PORT")?, 2000),
        ["probe", addr, ms] => probe(addr.parse().context("HOST:PORT")?, ms.parse()?),
        _ => bail!("usage: harness-echo serve PORT NAME | probe HOST:PORT [TIMEOUT_MS]"),
    }
}

fn serve(port: u16, name: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).context("binding")?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let greeting = format!("{name}\n");
        std::thread::spawn(move || {
            if conn.write_all(greeting.as_bytes()).is_ok()
                && let Ok(mut reader) = conn.try_clone()
            {
                let _ = std::io::copy(&mut reader, &mut conn);
            }
        });
    }
    Ok(())
}

fn probe(addr: SocketAddr, timeout_ms: u64) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(timeout_ms);
    let conn = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    conn.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(conn)
        .read_line(&mut line)
        .with_context(|| format!("reading from {addr}"))?;
    println!("{}", line.trim_end());
    Ok(())
}
