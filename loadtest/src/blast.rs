//! `volley-blast`: a minimal pipelined SMTP client that sends pre-built messages as fast as
//! possible, with no queue and no templates. It is the throughput ceiling that volley's load
//! tests compare against.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process_cpu_seconds;

/// What to send.
#[derive(Debug, Clone)]
pub struct BlastConfig {
    /// SMTP server to send to.
    pub target: SocketAddr,
    /// Total number of messages, spread evenly over the connections.
    pub messages: u64,
    /// Concurrent connections.
    pub connections: usize,
    /// Approximate message size in bytes (headers included).
    pub size: usize,
    /// Send MAIL/RCPT/DATA in one write, and the next envelope with the previous body.
    /// Without it, one command per round trip.
    pub pipelining: bool,
    /// A new connection for every message (and no pipelining): how common SMTP
    /// libraries behave; the naive reference of the load tests.
    pub reconnect: bool,
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct BlastReport {
    /// Messages accepted by the server.
    pub messages: u64,
    /// Wall-clock duration from the first connect to the last QUIT reply.
    pub elapsed_s: f64,
    /// `messages / elapsed_s`.
    pub messages_per_second: f64,
    /// CPU seconds used by this process during the run.
    pub cpu_seconds: f64,
}

impl BlastReport {
    /// One JSON object: `{"messages":..,"elapsed_s":..,"messages_per_second":..,"cpu_seconds":..}`.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"messages\":{},\"elapsed_s\":{},\"messages_per_second\":{},\"cpu_seconds\":{}}}",
            self.messages,
            json_number(self.elapsed_s),
            json_number(self.messages_per_second),
            json_number(self.cpu_seconds)
        )
    }
}

/// Formats a float as a JSON number (JSON has no NaN or infinity).
pub(crate) fn json_number(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.6}")
    } else {
        "null".to_owned()
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum BlastError {
    /// Connecting, reading or writing failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered something other than expected.
    #[error("expected a {expected} reply, got: {got}")]
    UnexpectedReply {
        /// The expected reply code.
        expected: u16,
        /// The last line of the reply received.
        got: String,
    },
    /// The server closed the connection in the middle of the exchange.
    #[error("connection closed by the server")]
    Closed,
    /// A sending task failed to run to completion.
    #[error("connection task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Sends `config.messages` messages and reports the throughput.
pub async fn blast(config: &BlastConfig) -> Result<BlastReport, BlastError> {
    let connections = config.connections.max(1);
    let body: std::sync::Arc<[u8]> = build_body(config.size).into();
    let cpu_start = process_cpu_seconds();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per_connection = config.messages / connections as u64;
    let extra = config.messages % connections as u64;
    let mut first = 0;
    for c in 0..connections as u64 {
        let count = per_connection + u64::from(c < extra);
        let range = first..first + count;
        first += count;
        let body = std::sync::Arc::clone(&body);
        let target = config.target;
        let pipelining = config.pipelining && !config.reconnect;
        if config.reconnect {
            tasks.spawn(async move {
                let mut sent = 0;
                for i in range {
                    sent += send_connection(target, i..i + 1, &body, false).await?;
                }
                Ok(sent)
            });
        } else {
            tasks.spawn(async move { send_connection(target, range, &body, pipelining).await });
        }
    }
    let mut sent = 0;
    let mut failure = None;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(n)) => sent += n,
            Ok(Err(err)) => failure = failure.or(Some(err)),
            Err(err) => failure = failure.or(Some(BlastError::Task(err))),
        }
    }
    if let Some(err) = failure {
        return Err(err);
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    Ok(BlastReport {
        messages: sent,
        elapsed_s,
        messages_per_second: sent as f64 / elapsed_s.max(f64::MIN_POSITIVE),
        cpu_seconds: process_cpu_seconds() - cpu_start,
    })
}

/// Builds the message once: headers plus 76-character lines, some starting with a dot, then
/// dot-stuffed and terminated with `.\r\n`, ready to be written as is.
pub fn build_body(size: usize) -> Vec<u8> {
    let mut content = b"From: <a@b>\r\nTo: <blast@sink.test>\r\nSubject: volley-blast\r\n\
Message-ID: <blast@volley.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
        .to_vec();
    let mut line = 0usize;
    while content.len() < size.saturating_sub(2) {
        let room = size - 2 - content.len();
        let len = room.min(76);
        // Every tenth line starts with a dot, to make the sender stuff and the sink unstuff.
        let first = if line % 10 == 9 {
            b'.'
        } else {
            b'a' + (line % 26) as u8
        };
        content.push(first);
        content.extend(std::iter::repeat_n(b'x', len.saturating_sub(1)));
        content.extend_from_slice(b"\r\n");
        line += 1;
    }
    if !content.ends_with(b"\r\n") {
        content.extend_from_slice(b"\r\n");
    }
    let mut stuffed = Vec::with_capacity(content.len() + content.len() / 50 + 3);
    let mut at_line_start = true;
    for &b in &content {
        if at_line_start && b == b'.' {
            stuffed.push(b'.');
        }
        stuffed.push(b);
        at_line_start = b == b'\n';
    }
    stuffed.extend_from_slice(b".\r\n");
    stuffed
}

/// Sends the messages with indices `range` over one connection; returns how many were
/// accepted.
async fn send_connection(
    target: SocketAddr,
    range: std::ops::Range<u64>,
    body: &[u8],
    pipelining: bool,
) -> Result<u64, BlastError> {
    let mut stream = TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    let mut replies = ReplyReader::default();
    replies.expect(&mut stream, 220).await?;
    stream.write_all(b"EHLO blast.test\r\n").await?;
    replies.expect(&mut stream, 250).await?;
    let mut wbuf = Vec::with_capacity(body.len() + 128);
    let mut sent = 0;
    if pipelining {
        let mut indices = range.peekable();
        if let Some(&first) = indices.peek() {
            push_envelope(&mut wbuf, first);
            stream.write_all(&wbuf).await?;
            expect_envelope(&mut replies, &mut stream).await?;
        }
        while let Some(_current) = indices.next() {
            wbuf.clear();
            wbuf.extend_from_slice(body);
            let next = indices.peek().copied();
            if let Some(next) = next {
                push_envelope(&mut wbuf, next);
            }
            stream.write_all(&wbuf).await?;
            replies.expect(&mut stream, 250).await?;
            sent += 1;
            if next.is_some() {
                expect_envelope(&mut replies, &mut stream).await?;
            }
        }
    } else {
        for i in range {
            stream.write_all(b"MAIL FROM:<a@b>\r\n").await?;
            replies.expect(&mut stream, 250).await?;
            wbuf.clear();
            wbuf.extend_from_slice(format!("RCPT TO:<user{i}@sink.test>\r\n").as_bytes());
            stream.write_all(&wbuf).await?;
            replies.expect(&mut stream, 250).await?;
            stream.write_all(b"DATA\r\n").await?;
            replies.expect(&mut stream, 354).await?;
            stream.write_all(body).await?;
            replies.expect(&mut stream, 250).await?;
            sent += 1;
        }
    }
    stream.write_all(b"QUIT\r\n").await?;
    replies.expect(&mut stream, 221).await?;
    Ok(sent)
}

fn push_envelope(wbuf: &mut Vec<u8>, index: u64) {
    wbuf.extend_from_slice(b"MAIL FROM:<a@b>\r\nRCPT TO:<user");
    wbuf.extend_from_slice(index.to_string().as_bytes());
    wbuf.extend_from_slice(b"@sink.test>\r\nDATA\r\n");
}

async fn expect_envelope(
    replies: &mut ReplyReader,
    stream: &mut TcpStream,
) -> Result<(), BlastError> {
    replies.expect(stream, 250).await?;
    replies.expect(stream, 250).await?;
    replies.expect(stream, 354).await
}

/// Reads SMTP replies from one persistent buffer.
#[derive(Debug, Default)]
pub struct ReplyReader {
    buf: BytesMut,
}

impl ReplyReader {
    /// Reads one complete (possibly multi-line) reply and returns its code and last line.
    pub async fn read<R>(&mut self, stream: &mut R) -> Result<(u16, String), BlastError>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        loop {
            while let Some(end) = memchr::memchr(b'\n', &self.buf) {
                let line = self.buf.split_to(end + 1);
                let line = line.strip_suffix(b"\r\n").unwrap_or(&line[..end]);
                // The last line of a reply has a space (or nothing) after the code.
                if line.len() == 3 || line.get(3) == Some(&b' ') {
                    let code = std::str::from_utf8(&line[..3.min(line.len())])
                        .ok()
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    return Ok((code, String::from_utf8_lossy(line).into_owned()));
                }
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(4096);
            }
            if stream.read_buf(&mut self.buf).await? == 0 {
                return Err(BlastError::Closed);
            }
        }
    }

    /// Reads one reply and checks its code.
    pub async fn expect<R>(&mut self, stream: &mut R, expected: u16) -> Result<(), BlastError>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        let (code, got) = self.read(stream).await?;
        if code == expected {
            Ok(())
        } else {
            Err(BlastError::UnexpectedReply { expected, got })
        }
    }

    /// Discards buffered bytes (e.g. after STARTTLS).
    pub fn clear(&mut self) {
        self.buf.advance(self.buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_stuffed_and_terminated() {
        let body = build_body(2048);
        assert!(body.ends_with(b"\r\n.\r\n"));
        assert!((2040..2200).contains(&body.len()), "{}", body.len());
        assert!(body.windows(4).any(|w| w == b"\r\n.."));
        // No unstuffed dot line other than the terminator.
        let text = String::from_utf8(body).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        let dot_lines = lines.iter().filter(|l| **l == ".").count();
        assert_eq!(dot_lines, 1);
        assert!(
            lines
                .iter()
                .all(|l| !l.starts_with('.') || l.starts_with("..") || *l == ".")
        );
    }

    #[test]
    fn tiny_body_is_valid() {
        let body = build_body(0);
        assert!(body.ends_with(b"\r\n\r\n.\r\n"));
    }
}
