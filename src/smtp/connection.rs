//! The connection: the socket (plain or TLS), its one read buffer and one write
//! buffer, and timed reads and writes. It knows bytes and replies, not sessions.
//!
//! The read buffer lives as long as the connection, so bytes that arrive after the
//! reply being awaited (the next pipelined replies) are kept for the next read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::error::SmtpError;
use super::reply::{Reply, ReplyParser};
use super::timeouts::{Phase, Timeouts};

/// Initial capacity of the read buffer; replies are small, EHLO is the largest.
const READ_CAPACITY: usize = 8 * 1024;

/// A plain or TLS stream over `S`.
enum Stream<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    /// Only while a handshake owns the inner stream, or after it failed.
    Gone,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Self::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Self::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
            Self::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Self::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// One SMTP connection's transport state.
pub struct Connection<S> {
    stream: Stream<S>,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    parser: ReplyParser,
    timeouts: Timeouts,
}

impl<S> std::fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("tls", &matches!(self.stream, Stream::Tls(_)))
            .field("buffered", &self.rbuf.len())
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps a connected stream.
    pub fn new(stream: S, timeouts: Timeouts) -> Self {
        Self {
            stream: Stream::Plain(stream),
            rbuf: BytesMut::with_capacity(READ_CAPACITY),
            wbuf: Vec::with_capacity(16 * 1024),
            parser: ReplyParser::new(),
            timeouts,
        }
    }

    /// The write buffer: encode commands and content into it, then [`Self::flush`].
    pub fn wbuf(&mut self) -> &mut Vec<u8> {
        &mut self.wbuf
    }

    /// The timeouts this connection runs under.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Whether TLS is on.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Writes the whole write buffer and empties it. The phase's timeout bounds each
    /// write call, not the whole buffer (RFC 5321 section 4.5.3.2.5: "the completion of
    /// each TCP SEND call"): a large batch over a slow link goes as long as it moves.
    pub async fn flush(&mut self, phase: Phase) -> Result<(), SmtpError> {
        let limit = self.timeouts.for_phase(phase);
        let stream = &mut self.stream;
        let wbuf = &self.wbuf;
        let result = async {
            let mut written = 0;
            while written < wbuf.len() {
                match timed(limit, phase, stream.write(&wbuf[written..])).await? {
                    0 => {
                        return Err(SmtpError::io(
                            phase,
                            &io::Error::from(io::ErrorKind::WriteZero),
                        ));
                    }
                    n => written += n,
                }
            }
            timed(limit, phase, stream.flush()).await
        }
        .await;
        self.wbuf.clear();
        result
    }

    /// Reads the next reply; bytes after it stay buffered.
    pub async fn read_reply(&mut self, phase: Phase) -> Result<Reply, SmtpError> {
        let limit = self.timeouts.for_phase(phase);
        self.read_reply_within(phase, limit).await
    }

    /// Reads the next reply, waiting at most `limit`.
    pub async fn read_reply_within(
        &mut self,
        phase: Phase,
        limit: Duration,
    ) -> Result<Reply, SmtpError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.parser.parse(&mut self.rbuf) {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {}
                Err(source) => return Err(SmtpError::Protocol { phase, source }),
            }
            self.rbuf.reserve(READ_CAPACITY);
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf));
            match read.await {
                Err(_) => return Err(SmtpError::Timeout { phase }),
                Ok(Err(e)) => return Err(SmtpError::io(phase, &e)),
                Ok(Ok(0)) => return Err(SmtpError::Closed { phase }),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Runs the TLS handshake over the plain stream. Anything the server sent before
    /// it is discarded: such bytes could be an attacker's injected replies (the
    /// STARTTLS injection of CVE-2011-0411's kind).
    pub async fn start_tls(
        &mut self,
        connector: &TlsConnector,
        name: ServerName<'static>,
    ) -> Result<(), SmtpError> {
        self.rbuf.clear();
        self.parser = ReplyParser::new();
        let Stream::Plain(plain) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(SmtpError::Tls(
                "TLS is already on, or the connection is gone".into(),
            ));
        };
        let limit = self.timeouts.starttls;
        match tokio::time::timeout(limit, connector.connect(name, plain)).await {
            Err(_) => Err(SmtpError::Timeout {
                phase: Phase::StartTls,
            }),
            Ok(Err(e)) => Err(SmtpError::Tls(e.to_string())),
            Ok(Ok(tls)) => {
                self.stream = Stream::Tls(Box::new(tls));
                Ok(())
            }
        }
    }

    /// Closes the write side (TLS close_notify, then FIN) without waiting long.
    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(self.timeouts.quit, self.stream.shutdown()).await;
    }
}

async fn timed<T>(
    limit: Duration,
    phase: Phase,
    fut: impl Future<Output = io::Result<T>>,
) -> Result<T, SmtpError> {
    match tokio::time::timeout(limit, fut).await {
        Err(_) => Err(SmtpError::Timeout { phase }),
        Ok(Err(e)) => Err(SmtpError::io(phase, &e)),
        Ok(Ok(value)) => Ok(value),
    }
}
