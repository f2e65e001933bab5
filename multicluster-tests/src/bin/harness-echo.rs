//! A tiny TCP server and client for harness pods, so tests need nothing installed.
//!
//! `harness-echo serve PORT NAME`: on each connection writes `NAME\n`, then echoes.
//! `harness-echo probe HOST:PORT [TIMEOUT_MS]`: connects, prints the first line it
//! reads and exits 0; exits 1 with the error if it cannot connect or read.
//! `harness-echo http PORT NAME`: the end-to-end tests' and the demo's app, one port
//! for both kinds of traffic. A connection whose first line is an HTTP/1 request
//! line gets HTTP/1.1 answers (keep-alive, body `NAME METHOD PATH`); any other
//! first line gets the `serve` behaviour (`NAME\n`, then the line and everything
//! after it echoed), so an opaque TCP client can check whom it reached.
//! `harness-echo slow-http PORT NAME DELAY_FILE`: `http`, but each HTTP answer
//! waits the milliseconds written in DELAY_FILE (read per request, absent = 0):
//! the cost-tier tests' user-space latency injection, changed while it runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
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
        ["http", port, name] => serve_http(port.parse().context("PORT")?, name, None),
        ["slow-http", port, name, file] => serve_http(
            port.parse().context("PORT")?,
            name,
            Some(PathBuf::from(file)),
        ),
        ["probe", addr] => probe(addr.parse().context("HOST:PORT")?, 2000),
        ["probe", addr, ms] => probe(addr.parse().context("HOST:PORT")?, ms.parse()?),
        _ => bail!(
            "usage: harness-echo serve PORT NAME | http PORT NAME | slow-http PORT NAME DELAY_FILE | probe HOST:PORT [TIMEOUT_MS]"
        ),
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

fn serve_http(port: u16, name: &str, delay: Option<PathBuf>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).context("binding")?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let name = name.to_owned();
        let delay = delay.clone();
        std::thread::spawn(move || {
            let _ = http_or_echo(conn, &name, delay.as_deref());
        });
    }
    Ok(())
}

/// Answers HTTP/1 requests until the client closes, or echoes a non-HTTP stream.
fn http_or_echo(conn: TcpStream, name: &str, delay: Option<&Path>) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut out = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(());
    }
    let trimmed = line.trim_end();
    if !(trimmed.ends_with(" HTTP/1.1") || trimmed.ends_with(" HTTP/1.0")) {
        out.write_all(format!("{name}\n").as_bytes())?;
        out.write_all(line.as_bytes())?;
        std::io::copy(&mut reader, &mut out)?;
        return Ok(());
    }
    loop {
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let body = format!("{name} {method} {path}\n");
        skip_headers_and_body(&mut reader)?;
        if let Some(file) = delay {
            std::thread::sleep(read_delay(file));
        }
        // One write per answer: with Nagle, a second small write would wait for
        // the peer's delayed ACK (tens of milliseconds).
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        out.write_all(answer.as_bytes())?;
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
    }
}

/// The delay written in `file` as milliseconds; none if absent or not a number.
fn read_delay(file: &Path) -> Duration {
    let ms = std::fs::read_to_string(file).ok();
    Duration::from_millis(ms.and_then(|s| s.trim().parse().ok()).unwrap_or(0))
}

/// Reads a request's header lines and discards its `content-length` body.
fn skip_headers_and_body(reader: &mut BufReader<TcpStream>) -> std::io::Result<()> {
    let mut length = 0u64;
    let mut header = String::new();
    loop {
        header.clear();
        if reader.read_line(&mut header)? == 0 || header.trim_end().is_empty() {
            break;
        }
        if let Some((key, value)) = header.split_once(':')
            && key.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    std::io::copy(&mut reader.by_ref().take(length), &mut std::io::sink())?;
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
