//! Protocol detection on the first bytes of a connection.
//!
//! The bytes read while detecting are not lost: [`PrefixedIo`] replays them
//! before reading on from the socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The protocols the proxy tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Starts with the HTTP/2 connection preface (prior knowledge, h2c or gRPC).
    Http2,
    /// Starts with an HTTP/1.x request line.
    Http1,
    /// Starts with a TLS ClientHello record.
    Tls,
    /// Anything else, or a client that waited for the server to speak first.
    Opaque,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http2 => "http2",
            Self::Http1 => "http1",
            Self::Tls => "tls",
            Self::Opaque => "opaque",
        }
    }
}

/// What detection found.
#[derive(Debug)]
pub struct Detection<I> {
    pub protocol: Protocol,
    /// True when the client sent nothing (or not enough to decide) before the
    /// timeout, so the connection falls back to opaque.
    pub timed_out: bool,
    /// The connection, replaying the bytes read during detection.
    pub io: PrefixedIo<I>,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A request line longer than this is not treated as HTTP.
const MAX_REQUEST_LINE: usize = 8 * 1024;

/// Reads until the protocol is known, the peer closes, or `timeout` passes.
pub async fn detect<I>(mut io: I, timeout: Duration) -> io::Result<Detection<I>>
where
    I: AsyncRead + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(1024);
    let (protocol, timed_out) = loop {
        if let Some(protocol) = classify(&buf) {
            break (protocol, false);
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_elapsed) => break (Protocol::Opaque, true),
            Ok(Ok(0)) => break (Protocol::Opaque, false),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok(Detection {
        protocol,
        timed_out,
        io: PrefixedIo::new(buf.freeze(), io),
    })
}

/// Decides from the bytes seen so far; `None` means more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (buf.len() >= H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    // TLS record: handshake (0x16), major version 3.
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => None,
            Some(3) => Some(Protocol::Tls),
            Some(_) => Some(Protocol::Opaque),
        };
    }
    // Only the first MAX_REQUEST_LINE bytes count: a line end beyond them
    // must not turn a decided "too long" into HTTP/1.1 when the same bytes
    // arrive in one read instead of several (found by the detect fuzz target).
    let head = &buf[..buf.len().min(MAX_REQUEST_LINE)];
    match head.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let line = &buf[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            Some(if is_http1_request_line(line) {
                Protocol::Http1
            } else {
                Protocol::Opaque
            })
        }
        None if buf.len() >= MAX_REQUEST_LINE => Some(Protocol::Opaque),
        // Keep reading only while this can still become a request line.
        None if could_be_method(buf) => None,
        None => Some(Protocol::Opaque),
    }
}

fn could_be_method(buf: &[u8]) -> bool {
    let token_end = buf.iter().position(|&b| b == b' ').unwrap_or(buf.len());
    token_end <= 16 && buf[..token_end].iter().all(u8::is_ascii_uppercase)
}

fn is_http1_request_line(line: &[u8]) -> bool {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !method.is_empty()
        && method.len() <= 16
        && method.iter().all(u8::is_ascii_uppercase)
        && !target.is_empty()
        && (version == b"HTTP/1.1" || version == b"HTTP/1.0")
}

pin_project_lite::pin_project! {
    /// An I/O that first yields `prefix`, then reads from the inner I/O.
    /// Writes go straight to the inner I/O.
    #[derive(Debug)]
    pub struct PrefixedIo<I> {
        prefix: Bytes,
        #[pin]
        io: I,
    }
}

impl<I> PrefixedIo<I> {
    pub fn new(prefix: Bytes, io: I) -> Self {
        Self { prefix, io }
    }

    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    pub fn get_ref(&self) -> &I {
        &self.io
    }
}

impl<I: AsyncRead> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // Give the detection buffer back now rather than when the
                // connection ends: idle keep-alive connections hold nothing.
                *this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        this.io.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for PrefixedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classifies_protocols() {
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), None);
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"POST /x?y=1 HTTP/1.0\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GET /long"), None);
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02]), Some(Protocol::Tls));
        assert_eq!(classify(&[0x16]), None);
        assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"hello world\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GET / SMTP/1.1\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"\x00\x01"), Some(Protocol::Opaque));
    }

    #[test]
    fn a_request_line_longer_than_the_limit_is_opaque_however_it_was_read() {
        let mut line = b"GET /".to_vec();
        line.resize(MAX_REQUEST_LINE + 100, b'a');
        line.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        // In one read, and as a client sending a byte at a time sees it.
        assert_eq!(classify(&line), Some(Protocol::Opaque));
        let first = (1..=line.len()).find_map(|n| classify(&line[..n]));
        assert_eq!(first, Some(Protocol::Opaque));
        // A line that ends within the limit is still HTTP/1.1.
        let mut line = b"GET /".to_vec();
        line.resize(MAX_REQUEST_LINE - 20, b'a');
        line.extend_from_slice(b" HTTP/1.1\r\n");
        assert_eq!(classify(&line), Some(Protocol::Http1));
    }

    #[tokio::test]
    async fn replays_the_bytes_it_read() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\nrest").await.unwrap();
        drop(client);
        let mut d = detect(server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(d.protocol, Protocol::Http1);
        let mut all = Vec::new();
        d.io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\nrest");
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_falls_back_to_opaque_after_timeout() {
        let (_client, server) = tokio::io::duplex(64);
        let d = detect(server, Duration::from_secs(10)).await.unwrap();
        assert_eq!(d.protocol, Protocol::Opaque);
        assert!(d.timed_out);
    }
}
