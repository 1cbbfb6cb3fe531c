//! A minimal HTTP/1.1 client for volley's API: one request per connection
//! (`Connection: close`), the whole answer read to the end, chunked bodies decoded.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::LoadError;

/// An answer.
#[derive(Debug)]
pub(crate) struct Response {
    /// The status code.
    pub status: u16,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON.
    pub(super) fn json(&self) -> Result<serde_json::Value, LoadError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            LoadError::Api(format!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            ))
        })
    }

    /// The body as text.
    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client of one API address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Client {
    addr: SocketAddr,
}

impl Client {
    /// A client of `addr`.
    pub(super) fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    /// `GET path`, within `timeout`.
    pub(super) async fn get(&self, path: &str, timeout: Duration) -> Result<Response, LoadError> {
        self.request("GET", path, &[], timeout).await
    }

    /// `POST path` with a JSON body, within `timeout`.
    pub(super) async fn post_json(
        &self,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Response, LoadError> {
        self.request("POST", path, body, timeout).await
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Response, LoadError> {
        let exchange = async {
            let mut stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            let mut head = format!(
                "{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-length: {}\r\n",
                self.addr,
                body.len()
            );
            if !body.is_empty() {
                head.push_str("content-type: application/json\r\n");
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes()).await?;
            // A server may answer (413) before reading the whole body and close.
            let _ = stream.write_all(body).await;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            Ok::<_, std::io::Error>(raw)
        };
        let raw = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| LoadError::Api(format!("{method} {path}: no answer within {timeout:?}")))?
            .map_err(LoadError::io(format!("{method} {path}")))?;
        parse_response(&raw).ok_or_else(|| {
            LoadError::Api(format!(
                "{method} {path}: malformed answer: {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(200)])
            ))
        })
    }
}

/// Splits a raw HTTP/1.1 answer into status and body.
fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = memchr::memmem::find(raw, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")
        })
    });
    let body = &raw[split + 4..];
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Some(Response { status, body })
}

/// Decodes a chunked body.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    loop {
        let line_end = memchr::memmem::find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let plain =
            parse_response(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((plain.status, plain.body.as_slice()), (202, &b"{}"[..]));
        let chunked = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(chunked.body, b"abcde");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_none());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
                .is_none()
        );
    }
}
