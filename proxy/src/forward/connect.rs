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

use api::identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;

use crate::Error;
use crate::detect::Protocol;
use crate::discovery::Endpoint;
use crate::header;
use crate::tls::{self, TlsConfigs};

/// Opens upstream connections.
#[derive(Clone, Debug)]
pub struct Connector {
    timeout: Duration,
    tls: Option<watch::Receiver<Arc<TlsConfigs>>>,
}

impl Connector {
    /// A connector with a connect (and handshake) timeout. `tls` carries this
    /// proxy's current credentials; its client config must offer the
    /// transport-header ALPN ([`header::ALPN`]) for gateway endpoints to work.
    /// Without it, meshed endpoints fail.
    pub fn new(timeout: Duration, tls: Option<watch::Receiver<Arc<TlsConfigs>>>) -> Self {
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
        let client_tls = |reason: String| Error::ClientTls {
            identity: identity.clone(),
            reason,
        };
        let tls = self
            .tls
            .as_ref()
            .ok_or_else(|| client_tls("this proxy has no client TLS configured".into()))?;
        let expected = SpiffeId::parse(identity).map_err(|e| client_tls(e.to_string()))?;
        // Build the header first: a bad authority fails before any handshake.
        let header = match &ep.remote_authority {
            Some(authority) => Some(header::header_for(authority, protocol, hop)?),
            None => None,
        };
        // Pinned to the expected identity inside the handshake, and without
        // session resumption (a reused address must not inherit an identity).
        let alpn = header.as_ref().map(|_| header::ALPN);
        let config = tls.borrow().client_for(&expected, alpn);
        let (mut stream, _) = tls::connect(config, tcp, &expected, self.timeout)
            .await
            .map_err(|source| Error::Tls {
                addr: ep.addr,
                source,
            })?;
        if let Some(header) = header {
            tls::write_header(&mut stream, &header).await?;
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
