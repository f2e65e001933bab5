//! Reading and writing the transport header on a stream. The reader takes exactly
//! the header's bytes (never a byte of the session behind it), rejects garbage as
//! soon as the bytes allow, and gives up at a deadline.

use api::transport_header::{
    HeaderError, MAX_HEADER_LEN, PREFIX_LEN, TransportHeader, decode_prefix,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Why no header was read.
#[derive(Debug, thiserror::Error)]
pub enum ReadHeaderError {
    /// The bytes are not a valid header (or the stream ended early: `Truncated`).
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The deadline passed first.
    #[error("no complete transport header before the deadline")]
    Timeout,
    /// The socket failed.
    #[error("reading transport header: {0}")]
    Io(#[from] std::io::Error),
}

impl ReadHeaderError {
    /// Bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Header(e) => e.reason(),
            Self::Timeout => "timeout",
            Self::Io(_) => "io",
        }
    }
}

/// Reads one header from `io`, consuming exactly its bytes.
pub async fn read_header<IO>(
    io: &mut IO,
    deadline: Instant,
) -> Result<TransportHeader, ReadHeaderError>
where
    IO: AsyncRead + Unpin,
{
    tokio::time::timeout_at(deadline, read_exact_header(io))
        .await
        .map_err(|_| ReadHeaderError::Timeout)?
}

async fn read_exact_header<IO>(io: &mut IO) -> Result<TransportHeader, ReadHeaderError>
where
    IO: AsyncRead + Unpin,
{
    let mut buf = [0u8; MAX_HEADER_LEN];
    let mut filled = 0;
    let mut need = PREFIX_LEN;
    loop {
        let n = io.read(&mut buf[filled..need]).await?;
        if n == 0 {
            return Err(HeaderError::Truncated { got: filled, need }.into());
        }
        filled += n;
        if filled == PREFIX_LEN && need == PREFIX_LEN {
            let mut prefix = [0u8; PREFIX_LEN];
            prefix.copy_from_slice(&buf[..PREFIX_LEN]);
            need = PREFIX_LEN + decode_prefix(&prefix)?;
        }
        // Reports bad magic or version as soon as the offending byte arrives.
        if let Some((header, _)) = TransportHeader::decode(&buf[..filled])? {
            return Ok(header);
        }
    }
}

/// Writes one header (a single write of at most 264 bytes).
pub async fn write_header<IO>(io: &mut IO, header: &TransportHeader) -> std::io::Result<()>
where
    IO: AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(header.encoded_len());
    header.encode(&mut buf);
    io.write_all(&buf).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::transport_header::{SessionProtocol, TargetName};
    use std::time::Duration;

    fn header() -> TransportHeader {
        TransportHeader {
            name: TargetName::parse("books.shop.svc.cluster.local").unwrap(),
            port: 8080.try_into().unwrap(),
            protocol: SessionProtocol::Http2,
            hops: 0,
        }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn reads_exactly_the_header_across_split_writes() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut wire = Vec::new();
        header().encode(&mut wire);
        wire.extend_from_slice(b"PRI * HTTP/2.0");
        let writer = tokio::spawn(async move {
            for chunk in wire.chunks(3) {
                client.write_all(chunk).await.unwrap();
                client.flush().await.unwrap();
            }
            client
        });
        assert_eq!(read_header(&mut server, soon()).await.unwrap(), header());
        let _client = writer.await.unwrap();
        let mut rest = [0u8; 14];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(
            &rest, b"PRI * HTTP/2.0",
            "session bytes must stay in the stream"
        );
    }

    #[tokio::test]
    async fn garbage_fails_on_first_byte_without_waiting() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"G").await.unwrap();
        // The client keeps the stream open: only early detection can answer.
        let err = read_header(&mut server, soon()).await.unwrap_err();
        assert_eq!(err.reason(), "bad_magic");
    }

    #[tokio::test]
    async fn eof_mid_header_is_truncated() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut wire = Vec::new();
        header().encode(&mut wire);
        client.write_all(&wire[..10]).await.unwrap();
        drop(client);
        let err = read_header(&mut server, soon()).await.unwrap_err();
        assert!(
            matches!(
                err,
                ReadHeaderError::Header(HeaderError::Truncated { got: 10, need: 39 })
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn silent_peer_times_out() {
        let (_client, mut server) = tokio::io::duplex(64);
        let err = read_header(&mut server, Instant::now() + Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "timeout");
    }

    #[tokio::test]
    async fn oversized_is_refused_from_the_prefix() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"MLTH\x01\xff\xff").await.unwrap();
        let err = read_header(&mut server, soon()).await.unwrap_err();
        assert_eq!(err.reason(), "oversized");
    }
}
