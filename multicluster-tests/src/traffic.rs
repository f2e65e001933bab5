//! Clients for the scenario's traffic, used by the end-to-end test and the demo:
//! HTTP/1.1 requests over a kept-alive connection (reconnecting after an error),
//! an opaque TCP exchange with `harness-echo`, and a way to run a client inside a
//! pod's network namespace (as that pod's app) from the test or demo process.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// An HTTP/1.1 client of one proxy listener, naming `authority` in `Host`.
#[derive(Debug)]
pub struct HttpClient {
    addr: SocketAddr,
    authority: String,
    timeout: Duration,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

/// One answer: status code and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status code.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

impl HttpClient {
    /// A client of the listener at `addr`; each request must complete within
    /// `timeout` (connecting included).
    pub fn new(addr: SocketAddr, authority: &str, timeout: Duration) -> Self {
        Self {
            addr,
            authority: authority.to_owned(),
            timeout,
            sender: None,
        }
    }

    /// The listener this client sends to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET path`, reusing the connection when it is still open. A failed
    /// request drops the connection, so the next one starts afresh.
    pub async fn get(&mut self, path: &str) -> Result<Answer> {
        let attempt = tokio::time::timeout(self.timeout, self.request(path)).await;
        let result = attempt.unwrap_or_else(|_| {
            Err(Error::Invalid(format!(
                "GET {path} via {}: no answer within {:?}",
                self.addr, self.timeout
            )))
        });
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn request(&mut self, path: &str) -> Result<Answer> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Error::Invalid(format!("GET {path} via {}: {what}: {e}", self.addr))
        };
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        sender.ready().await.map_err(|e| fail("connection", &e))?;
        let req = http::Request::get(path)
            .header(http::header::HOST, &self.authority)
            .body(Empty::new())
            .map_err(|e| fail("request", &e))?;
        let rsp = sender
            .send_request(req)
            .await
            .map_err(|e| fail("request", &e))?;
        let status = rsp.status().as_u16();
        let body = rsp
            .into_body()
            .collect()
            .await
            .map_err(|e| fail("body", &e))?
            .to_bytes();
        self.sender = Some(sender);
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(Error::io(format!("connecting to {}", self.addr)))?;
        tcp.set_nodelay(true)
            .map_err(Error::io(format!("TCP_NODELAY to {}", self.addr)))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| Error::Invalid(format!("HTTP handshake with {}: {e}", self.addr)))?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "client connection ended");
            }
        });
        Ok(sender)
    }
}

/// What an opaque TCP exchange ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpOutcome {
    /// `harness-echo` greeted with this name and echoed the line back.
    Echoed(String),
    /// The connection was reset before a greeting.
    Reset,
    /// The connection ended (or failed otherwise) before a proper exchange.
    Ended(String),
}

/// Connects to `addr`, sends a non-HTTP line first (so detection decides opaque
/// at once) and reads the greeting and the echo, all within `timeout`.
pub async fn tcp_exchange(addr: SocketAddr, timeout: Duration) -> Result<TcpOutcome> {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(b"opaque hello\n").await?;
        let mut reader = BufReader::new(tcp);
        let (mut greeting, mut echo) = (String::new(), String::new());
        match reader.read_line(&mut greeting).await {
            Ok(0) => return Ok(TcpOutcome::Ended("end of stream".into())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(TcpOutcome::Reset);
            }
            Err(e) => return Ok(TcpOutcome::Ended(e.to_string())),
        }
        reader.read_line(&mut echo).await?;
        if echo.trim_end() != "opaque hello" {
            return Ok(TcpOutcome::Ended(format!("echo was {echo:?}")));
        }
        Ok(TcpOutcome::Echoed(greeting.trim_end().to_owned()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Error::Invalid(format!("TCP via {addr}: nothing within {timeout:?}")))?
        .map_err(Error::io(format!("TCP via {addr}")))
}

/// Runs `task` on a new thread inside network namespace `netns` (a pod's), on a
/// single-threaded runtime of its own: the sockets it opens belong to the pod,
/// as its app's would (`127.0.0.1` is the pod's loopback). The thread ends with
/// the task.
pub fn spawn_in_netns<T, F, Fut>(netns: &str, task: F) -> Result<std::thread::JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let path = Path::new("/run/netns").join(netns);
    let file =
        std::fs::File::open(&path).map_err(Error::io(format!("opening {}", path.display())))?;
    std::thread::Builder::new()
        .name(format!("netns-{netns}"))
        .spawn(move || {
            // Only this thread moves; the rest of the process stays where it was.
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::Invalid(format!("entering {}: {e}", path.display())))?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::io("starting a runtime in the pod"))?
                .block_on(task())
        })
        .map_err(Error::io("starting a thread"))
}
