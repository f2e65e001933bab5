//! The last stage of the request path: open a connection to a chosen endpoint.
//! Plaintext for unmeshed endpoints; mutual TLS verifying the endpoint's SPIFFE
//! identity for meshed ones; and for a remote gateway, TLS with the transport-header
//! ALPN followed by the header naming the real target, so the gateway knows where
//! to forward.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::Error;
use crate::detect::Protocol;
use crate::discovery::Endpoint;
use crate::header::{self, TransportTarget};

/// Builds client TLS configurations. The identity module implements this with
/// rotating credentials and SPIFFE peer verification.
pub trait ClientTls: Send + Sync + 'static {
    /// A TLS 1.3 client configuration that presents this proxy's certificate,
    /// accepts only a peer proving `identity`, and offers `alpn` when given.
    fn config(
        &self,
        identity: &str,
        alpn: Option<&[u8]>,
    ) -> Result<Arc<rustls::ClientConfig>, Error>;
}

/// Opens upstream connections.
#[derive(Clone)]
pub struct Connector {
    timeout: Duration,
    tls: Option<Arc<dyn ClientTls>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("timeout", &self.timeout)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Connector {
    /// A connector with a connect timeout; without `tls`, meshed endpoints fail.
    pub fn new(timeout: Duration, tls: Option<Arc<dyn ClientTls>>) -> Self {
        Self { timeout, tls }
    }

    /// Connects to `ep` for a session of `protocol`. `hop` is the hop count to
    /// write when `ep` is a gateway.
    pub async fn connect(
        &self,
        ep: &Endpoint,
        protocol: Protocol,
        hop: u8,
    ) -> Result<Upstream, Error> {
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(ep.addr))
            .await
            .map_err(|_| Error::ConnectTimeout(ep.addr))?
            .map_err(|source| Error::Connect {
                addr: ep.addr,
                source,
            })?;
        tcp.set_nodelay(true)?;
        let Some(identity) = &ep.identity else {
            return Ok(Upstream::Plain(tcp));
        };
        let tls = self.tls.as_ref().ok_or_else(|| Error::ClientTls {
            identity: identity.clone(),
            reason: "this proxy has no client TLS configured".into(),
        })?;
        let alpn = ep.remote_authority.as_ref().map(|_| header::ALPN);
        let config = tls.config(identity, alpn)?;
        let name = ServerName::IpAddress(ep.addr.ip().into());
        let handshake = TlsConnector::from(config).connect(name, tcp);
        let mut stream = tokio::time::timeout(self.timeout, handshake)
            .await
            .map_err(|_| Error::ConnectTimeout(ep.addr))?
            .map_err(|source| Error::Tls {
                addr: ep.addr,
                source,
            })?;
        if let Some(authority) = &ep.remote_authority {
            let target = TransportTarget::new(authority, protocol, hop)?;
            stream.write_all(&target.encode()).await?;
        }
        Ok(Upstream::Tls(Box::new(stream)))
    }
}

/// An upstream connection, plaintext or TLS.
#[derive(Debug)]
pub enum Upstream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl hyper_util::client::legacy::connect::Connection for Upstream {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
