//! Protocol detection: the stage between TLS and routing. It peeks at the first
//! bytes a client sends and decides HTTP/2 (by the connection preface), HTTP/1 (by a
//! method token and a space) or opaque TCP. Server-speaks-first protocols send
//! nothing, so a timeout decides opaque. The peeked bytes are replayed to the next
//! stage through [`PrefixedIo`], so detection is invisible to the application.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest HTTP/1 method token detection accepts; real methods are shorter.
const MAX_METHOD_LEN: usize = 16;

/// Ports taken as opaque unless configured otherwise, as a Linkerd user would
/// expect: protocols whose server speaks first (SMTP 25 and 587, MySQL 3306,
/// Galera 4444, PostgreSQL 5432, the memcached and Redis ports 11211 and 6379)
/// or that are never HTTP (Elasticsearch transport 9300). Detecting them would
/// only delay every connection by the detection timeout.
pub const DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

/// How detection behaves on a listener.
#[derive(Clone, Debug)]
pub struct DetectConfig {
    /// How long to wait for the first bytes before deciding opaque.
    pub timeout: Duration,
    /// The most bytes read while deciding.
    pub max_bytes: usize,
    /// Destination ports that are always opaque (detection skipped).
    pub opaque_ports: std::collections::HashSet<u16>,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(1),
            max_bytes: 1024,
            opaque_ports: Default::default(),
        }
    }
}

impl DetectConfig {
    /// Detects the protocol of `io`, a connection to `port`, unless the port is
    /// configured opaque.
    pub async fn run<I: AsyncRead + Unpin>(
        &self,
        io: I,
        port: u16,
    ) -> io::Result<(Protocol, PrefixedIo<I>)> {
        if self.opaque_ports.contains(&port) {
            return Ok((Protocol::Opaque, PrefixedIo::new(BytesMut::new(), io)));
        }
        detect(io, self.timeout, self.max_bytes).await
    }
}

/// The session protocol of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.x, proxied per request.
    Http1,
    /// HTTP/2 (including gRPC), proxied per request.
    Http2,
    /// Anything else, proxied per connection.
    Opaque,
}

impl Protocol {
    /// Whether this protocol is proxied per request.
    pub fn is_http(self) -> bool {
        !matches!(self, Protocol::Opaque)
    }
}

/// What the bytes seen so far say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The protocol is known.
    Known(Protocol),
    /// The bytes are a prefix of something HTTP-shaped: read more.
    NeedMore,
}

/// Classifies a connection's first bytes. Pure, so it is unit-tested and fuzzed
/// without I/O.
pub fn classify(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if buf.len() >= H2_PREFACE.len() {
            Verdict::Known(Protocol::Http2)
        } else {
            Verdict::NeedMore
        };
    }
    // An HTTP/1 request line starts with an uppercase token then a space.
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'A'..=b'Z' | b'-' | b'_' if i < MAX_METHOD_LEN => continue,
            // Bounded like the token, so a verdict never changes as bytes arrive.
            b' ' if i > 0 && i < MAX_METHOD_LEN => return Verdict::Known(Protocol::Http1),
            _ => return Verdict::Known(Protocol::Opaque),
        }
    }
    if buf.len() >= MAX_METHOD_LEN {
        Verdict::Known(Protocol::Opaque)
    } else {
        Verdict::NeedMore
    }
}

/// Reads from `io` until [`classify`] decides, the peer closes, or `timeout`
/// passes, and returns the protocol with the stream wrapped so the peeked bytes
/// are read again. Reads at most `max` bytes (a bounded buffer).
pub async fn detect<I>(
    mut io: I,
    timeout: Duration,
    max: usize,
) -> io::Result<(Protocol, PrefixedIo<I>)>
where
    I: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(max.max(H2_PREFACE.len()));
    let deadline = tokio::time::Instant::now() + timeout;
    let protocol = loop {
        match classify(&buf) {
            Verdict::Known(p) => break p,
            Verdict::NeedMore if buf.len() >= max => break Protocol::Opaque,
            Verdict::NeedMore => {}
        }
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        match read {
            Err(_elapsed) => break Protocol::Opaque,
            Ok(Ok(0)) => break Protocol::Opaque,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok((protocol, PrefixedIo::new(buf, io)))
}

/// A stream that first yields a buffered prefix, then reads from the inner stream.
/// Writes go straight through.
#[derive(Debug)]
pub struct PrefixedIo<I> {
    prefix: BytesMut,
    inner: I,
}

impl<I> PrefixedIo<I> {
    /// Wraps `inner`, replaying `prefix` before its own bytes.
    pub fn new(prefix: BytesMut, inner: I) -> Self {
        Self { prefix, inner }
    }

    /// The bytes not yet replayed.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &I {
        &self.inner
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Replayed: free the detection buffer for the connection's life.
                self.prefix = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn default_opaque_ports_skip_detection_and_others_wait_for_it() {
        let config = DetectConfig {
            opaque_ports: DEFAULT_OPAQUE_PORTS.into(),
            ..DetectConfig::default()
        };
        // A server-speaks-first client: connected, silent.
        for (port, waited) in [(5432, Duration::ZERO), (8080, config.timeout)] {
            let (client, _server) = tokio::io::duplex(64);
            let started = tokio::time::Instant::now();
            let (protocol, _) = config.run(client, port).await.unwrap();
            assert_eq!(protocol, Protocol::Opaque, "port {port}");
            assert_eq!(started.elapsed(), waited, "port {port}");
        }
    }

    #[test]
    fn a_verdict_never_changes_as_bytes_arrive() {
        // Found by the fuzz target: a maximal token, then a space, was opaque at
        // 16 bytes and HTTP/1 at 17.
        let input = [b"ABCDEFGHIJKLMNOP".as_slice(), b" / HTTP/1.1\r\n"].concat();
        let first = (1..=input.len()).find_map(|n| match classify(&input[..n]) {
            Verdict::Known(p) => Some(p),
            Verdict::NeedMore => None,
        });
        assert_eq!(first, Some(Protocol::Opaque));
        for n in MAX_METHOD_LEN..=input.len() {
            assert_eq!(
                classify(&input[..n]),
                Verdict::Known(Protocol::Opaque),
                "at {n} bytes"
            );
        }
    }

    #[test]
    fn classifies_http2_preface() {
        assert_eq!(classify(H2_PREFACE), Verdict::Known(Protocol::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), Verdict::NeedMore);
    }

    #[test]
    fn classifies_http1_methods() {
        for line in [
            "GET / HTTP/1.1\r\n",
            "POST /x HTTP/1.1",
            "M-SEARCH * HTTP/1.1",
        ] {
            assert_eq!(
                classify(line.as_bytes()),
                Verdict::Known(Protocol::Http1),
                "{line}"
            );
        }
        // "P" could still become "POST" or "PRI": wait for more.
        assert_eq!(classify(b"P"), Verdict::NeedMore);
        assert_eq!(classify(b"GE"), Verdict::NeedMore);
    }

    #[test]
    fn classifies_garbage_as_opaque() {
        for bytes in [
            &b"\x16\x03\x01"[..],
            b"get / HTTP/1.1",
            b" GET",
            b"SSH-2.0-x",
        ] {
            assert_eq!(
                classify(bytes),
                Verdict::Known(Protocol::Opaque),
                "{bytes:?}"
            );
        }
        assert_eq!(
            classify(b"ABCDEFGHIJKLMNOPQRS"),
            Verdict::Known(Protocol::Opaque)
        );
    }

    #[tokio::test]
    async fn replays_peeked_bytes() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        let (proto, mut io) = detect(server, Duration::from_secs(5), 64).await.unwrap();
        assert_eq!(proto, Protocol::Http1);
        let mut got = vec![0; 19];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET /a HTTP/1.1\r\n\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_is_opaque_after_timeout() {
        let (_client, server) = tokio::io::duplex(64);
        let (proto, io) = detect(server, Duration::from_millis(300), 64)
            .await
            .unwrap();
        assert_eq!(proto, Protocol::Opaque);
        assert!(io.prefix().is_empty());
    }
}
