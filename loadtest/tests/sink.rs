//! End-to-end tests of the sink over raw TCP (and TLS) on 127.0.0.1.

// The quick run reports its figures on stderr.
#![allow(clippy::print_stderr)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::BytesMut;
use hmac::{Hmac, Mac};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use volley_loadtest::blast::{BlastConfig, blast};
use volley_loadtest::{Sink, SinkConfig, process_cpu_seconds};

const TIMEOUT: Duration = Duration::from_secs(10);

/// One reply: its code and its lines (text after the code and separator).
#[derive(Debug)]
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A raw SMTP test client with one persistent read buffer.
struct Client<S> {
    stream: S,
    buf: BytesMut,
}

impl Client<TcpStream> {
    /// Connects and reads the greeting.
    async fn connect(addr: SocketAddr) -> (Self, Reply) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut client = Client {
            stream,
            buf: BytesMut::new(),
        };
        let greeting = client.reply().await;
        (client, greeting)
    }

    /// Upgrades to TLS (after a 220 to STARTTLS, or for implicit TLS).
    async fn tls(self, sink: &Sink) -> Client<TlsStream<TcpStream>> {
        assert!(
            self.buf.is_empty(),
            "bytes buffered before the TLS handshake"
        );
        let stream = tls_connect(sink, self.stream).await;
        Client {
            stream,
            buf: BytesMut::new(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads one complete reply.
    async fn reply(&mut self) -> Reply {
        tokio::time::timeout(TIMEOUT, self.read_reply())
            .await
            .expect("timed out waiting for a reply")
            .expect("connection closed while waiting for a reply")
    }

    async fn read_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(end + 1);
                let line = String::from_utf8(line.to_vec()).expect("UTF-8 reply");
                let line = line.trim_end_matches("\r\n");
                assert!(line.len() >= 3, "short reply line {line:?}");
                let code: u16 = line[..3].parse().expect("reply code");
                lines.push(line.get(4..).unwrap_or_default().to_owned());
                if line.len() == 3 || line.as_bytes()[3] == b' ' {
                    return Some(Reply { code, lines });
                }
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Sends one command line and reads its reply.
    async fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Sends a command and asserts the reply code.
    async fn ok(&mut self, line: &str, code: u16) -> Reply {
        let reply = self.cmd(line).await;
        assert_eq!(reply.code, code, "{line} -> {reply:?}");
        reply
    }

    /// Asserts that the server closes the connection (EOF or reset) without another reply.
    async fn expect_closed(&mut self) {
        let mut scratch = [0u8; 1024];
        let deadline = Instant::now() + TIMEOUT;
        loop {
            assert!(self.buf.is_empty(), "unexpected bytes {:?}", self.buf);
            let read = tokio::time::timeout_at(deadline.into(), self.stream.read(&mut scratch))
                .await
                .expect("connection not closed");
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => self.buf.extend_from_slice(&scratch[..n]),
            }
        }
    }

    /// Sends MAIL, RCPTs (all expected 250), DATA and the content; returns the final reply.
    async fn send_message(&mut self, from: &str, rcpts: &[&str], content: &str) -> Reply {
        self.ok(&format!("MAIL FROM:<{from}>"), 250).await;
        for rcpt in rcpts {
            self.ok(&format!("RCPT TO:<{rcpt}>"), 250).await;
        }
        self.ok("DATA", 354).await;
        self.send(content.as_bytes()).await;
        self.send(b".\r\n").await;
        self.reply().await
    }
}

async fn start(config: SinkConfig) -> (Sink, SocketAddr) {
    let sink = Sink::start(config).await.expect("sink starts");
    let addr = sink.addrs()[0];
    (sink, addr)
}

async fn tls_connect(sink: &Sink, tcp: TcpStream) -> TlsStream<TcpStream> {
    tls_connect_as(sink, tcp, "localhost").await
}

/// TLS handshake verifying the sink's certificate for `name` against `ca_pem()`.
async fn tls_connect_as(sink: &Sink, tcp: TcpStream, name: &str) -> TlsStream<TcpStream> {
    let ca = CertificateDer::from_pem_slice(sink.ca_pem().as_bytes()).expect("CA PEM");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("add CA");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let server_name = ServerName::try_from(name.to_owned()).expect("server name");
    TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake verifying {name}: {e}"))
}

/// A connected client that already said EHLO.
async fn ehlo_client(addr: SocketAddr) -> Client<TcpStream> {
    let (mut client, greeting) = Client::connect(addr).await;
    assert_eq!(greeting.code, 220);
    client.ok("EHLO client.test", 250).await;
    client
}

fn capturing() -> SinkConfig {
    SinkConfig {
        capture: true,
        ..SinkConfig::default()
    }
}

#[tokio::test]
async fn greeting_and_ehlo_extensions() {
    let (sink, addr) = start(SinkConfig::default()).await;
    let (mut client, greeting) = Client::connect(addr).await;
    assert_eq!(greeting.code, 220);
    assert_eq!(greeting.text(), "sink.test ESMTP volley-sink");
    let ehlo = client.ok("EHLO client.test", 250).await;
    assert_eq!(ehlo.lines[0], "sink.test greets client.test");
    for ext in [
        "PIPELINING",
        "SIZE 67108864",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "STARTTLS",
    ] {
        assert!(
            ehlo.lines.iter().any(|l| l == ext),
            "{ext} missing: {ehlo:?}"
        );
    }
    assert!(
        !ehlo
            .lines
            .iter()
            .any(|l| l == "DSN" || l.starts_with("AUTH"))
    );
    client.ok("NOOP", 250).await;
    client.ok("HELP", 214).await;
    client.ok("VRFY bob@x", 252).await;
    client.ok("VRFY <permfail-bob@x>", 550).await;
    client.ok("EXPN list", 502).await;
    client.ok("XYZZY", 500).await;
    client.ok("RSET", 250).await;
    client.ok("QUIT", 221).await;
    client.expect_closed().await;
    let stats = sink.stats();
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.commands, 9);
    assert_eq!(stats.rsets, 1);
    assert_eq!(stats.quits, 1);
    sink.shutdown().await;
}

#[tokio::test]
async fn ehlo_advertises_configured_extensions() {
    let config = SinkConfig {
        hostname: "mx.example.test".into(),
        auth: Some(("u".into(), "p".into())),
        dsn: true,
        pipelining: false,
        chunking: false,
        starttls: false,
        max_size: 1000,
        ..SinkConfig::default()
    };
    let (sink, addr) = start(config).await;
    let (mut client, greeting) = Client::connect(addr).await;
    assert_eq!(greeting.text(), "mx.example.test ESMTP volley-sink");
    let ehlo = client.ok("EHLO c", 250).await;
    let has = |ext: &str| ehlo.lines.iter().any(|l| l == ext);
    assert!(has("AUTH PLAIN LOGIN CRAM-MD5"));
    assert!(has("DSN"));
    assert!(has("SIZE 1000"));
    assert!(!has("PIPELINING") && !has("CHUNKING") && !has("STARTTLS"));
    client.ok("STARTTLS", 502).await;
    sink.shutdown().await;
}

#[tokio::test]
async fn helo_only_forces_helo_fallback() {
    let config = SinkConfig {
        helo_only: true,
        capture: true,
        ..SinkConfig::default()
    };
    let (sink, addr) = start(config).await;
    let (mut client, _) = Client::connect(addr).await;
    let reply = client.ok("EHLO c", 500).await;
    assert_eq!(reply.text(), "5.5.1 not recognized");
    client.ok("MAIL FROM:<a@b>", 503).await;
    let helo = client.ok("HELO c.test", 250).await;
    assert_eq!(helo.lines.len(), 1);
    // No extension is in effect after HELO.
    client.ok("MAIL FROM:<a@b> BODY=8BITMIME", 555).await;
    let reply = client
        .send_message("a@b", &["x@y"], "Subject: s\r\n\r\nhi\r\n")
        .await;
    assert_eq!(reply.code, 250);
    assert_eq!(sink.messages()[0].helo, "c.test");
    // BDAT without CHUNKING: the chunk is still consumed, then refused.
    client.send(b"BDAT 3 LAST\r\nabc").await;
    assert_eq!(client.reply().await.code, 502);
    client.ok("NOOP", 250).await;
    sink.shutdown().await;
}

#[tokio::test]
async fn pipelined_group_is_answered_in_order_and_counted() {
    let (sink, addr) = start(capturing()).await;
    let mut client = ehlo_client(addr).await;
    client
        .send(
            b"MAIL FROM:<sender@example.test> SIZE=100\r\nRCPT TO:<a@x.test>\r\n\
RCPT TO:<permfail-b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n",
        )
        .await;
    let codes: Vec<u16> = [(); 5].iter().map(|_| 0).collect();
    let mut got = Vec::new();
    for _ in codes {
        got.push(client.reply().await.code);
    }
    assert_eq!(got, [250, 250, 550, 250, 354]);
    client
        .send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nMAIL FROM:<s2@x>\r\nRCPT TO:<d@x.test>\r\nDATA\r\n")
        .await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(client.reply().await.code);
    }
    assert_eq!(got, [250, 250, 250, 354]);
    client.send(b"second\r\n.\r\nQUIT\r\n").await;
    assert_eq!(client.reply().await.code, 250);
    assert_eq!(client.reply().await.code, 221);
    client.expect_closed().await;

    let stats = sink.stats();
    assert_eq!(stats.pipelined_groups, 3);
    assert_eq!(stats.messages, 2);
    assert_eq!(stats.recipients_accepted, 3);
    assert_eq!(stats.recipients_rejected, 1);
    assert_eq!(stats.pipelining_violations, 0);
    let messages = sink.messages();
    assert_eq!(messages[0].mail_from, "sender@example.test");
    assert_eq!(messages[0].mail_params, ["SIZE=100"]);
    assert_eq!(messages[0].rcpt_to, ["a@x.test", "c@x.test"]);
    assert_eq!(messages[0].data, b"Subject: pipelined\r\n\r\nbody\r\n");
    assert_eq!(messages[1].data, b"second\r\n");
    sink.shutdown().await;
}

#[tokio::test]
async fn pipelining_violations_are_counted_when_not_advertised() {
    let config = SinkConfig {
        pipelining: false,
        ..SinkConfig::default()
    };
    let (sink, addr) = start(config).await;
    let mut client = ehlo_client(addr).await;
    client
        .send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRSET\r\n")
        .await;
    for _ in 0..3 {
        assert_eq!(client.reply().await.code, 250);
    }
    client.ok("NOOP", 250).await;
    assert_eq!(sink.stats().pipelining_violations, 2);
    sink.shutdown().await;

    // With PIPELINING advertised, commands sent along with EHLO still violate it: the client
    // could not have seen the EHLO reply yet.
    let (sink, addr) = start(SinkConfig::default()).await;
    let (mut client, _) = Client::connect(addr).await;
    client.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\n").await;
    assert_eq!(client.reply().await.code, 250);
    assert_eq!(client.reply().await.code, 250);
    client.send(b"RCPT TO:<c@d>\r\nRSET\r\n").await;
    assert_eq!(client.reply().await.code, 250);
    assert_eq!(client.reply().await.code, 250);
    let stats = sink.stats();
    assert_eq!(stats.pipelining_violations, 1);
    assert_eq!(stats.pipelined_groups, 2);
    sink.shutdown().await;
}

#[tokio::test]
async fn dot_unstuffing_and_empty_message() {
    let (sink, addr) = start(capturing()).await;
    let mut client = ehlo_client(addr).await;
    let content = "Subject: dots\r\n\r\n..leading dot\r\n..\r\n...\r\nmiddle.\r\n";
    assert_eq!(
        client.send_message("a@b", &["c@d"], content).await.code,
        250
    );
    // An empty message: the end marker right after DATA.
    assert_eq!(client.send_message("a@b", &["c@d"], "").await.code, 250);
    // A message whose content is split over many small writes, marker included.
    client.ok("MAIL FROM:<a@b>", 250).await;
    client.ok("RCPT TO:<c@d>", 250).await;
    client.ok("DATA", 354).await;
    for piece in [
        "..x\r", "\n", "y\r\n.", ".", "\r\n", "\r", "\n.", "\r", "\n",
    ] {
        client.send(piece.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(client.reply().await.code, 250);
    let messages = sink.messages();
    assert_eq!(
        messages[0].data,
        b"Subject: dots\r\n\r\n.leading dot\r\n.\r\n..\r\nmiddle.\r\n"
    );
    assert_eq!(messages[1].data, b"");
    assert_eq!(messages[2].data, b".x\r\ny\r\n.\r\n\r\n");
    assert!(!messages[0].bdat);
    sink.shutdown().await;
}

#[tokio::test]
async fn bdat_chunks_with_last() {
    let (sink, addr) = start(capturing()).await;
    let mut client = ehlo_client(addr).await;
    client.ok("MAIL FROM:<a@b> BODY=BINARYMIME", 250).await;
    client.ok("RCPT TO:<c@d>", 250).await;
    client.ok("DATA", 503).await;
    client
        .send(b"BDAT 7\r\nhello\r\nBDAT 9 LAST\r\n.world\n\r\n")
        .await;
    let first = client.reply().await;
    assert_eq!(first.code, 250);
    assert_eq!(first.text(), "2.0.0 7 octets received");
    assert_eq!(client.reply().await.code, 250);
    // 7-bit content via BDAT, split over several writes.
    client.ok("MAIL FROM:<a@b>", 250).await;
    client.ok("RCPT TO:<c@d>", 250).await;
    client.send(b"BDAT 12").await;
    client.send(b" LAST\r\nSubject:").await;
    client.send(b" x\r\n").await;
    assert_eq!(client.reply().await.code, 250);
    // BDAT 0 LAST ends a message too.
    client.ok("MAIL FROM:<a@b>", 250).await;
    client.ok("RCPT TO:<c@d>", 250).await;
    client.send(b"BDAT 3\r\nabcBDAT 0 LAST\r\n").await;
    assert_eq!(client.reply().await.code, 250);
    assert_eq!(client.reply().await.code, 250);
    // Without an accepted recipient: consumed, then refused; the session goes on.
    client.ok("MAIL FROM:<a@b>", 250).await;
    client.ok("RCPT TO:<permfail@d>", 550).await;
    client.send(b"BDAT 4 LAST\r\nQUIT").await;
    assert_eq!(client.reply().await.code, 554);
    // Without MAIL at all.
    client.send(b"BDAT 4 LAST\r\nRSET").await;
    assert_eq!(client.reply().await.code, 503);
    client.ok("NOOP", 250).await;

    let messages = sink.messages();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[0].data, b"hello\r\n.world\n\r\n");
    assert!(messages[0].bdat);
    assert_eq!(messages[1].data, b"Subject: x\r\n");
    assert_eq!(messages[2].data, b"abc");
    assert_eq!(sink.stats().messages, 3);
    sink.shutdown().await;
}

#[tokio::test]
async fn tempfail_n_fails_n_times_across_connections() {
    let (sink, addr) = start(SinkConfig::default()).await;
    for expected in [451, 451, 250, 250] {
        let mut client = ehlo_client(addr).await;
        client.ok("MAIL FROM:<a@b>", 250).await;
        let reply = client.ok("RCPT TO:<tempfail-2-bob@x.test>", expected).await;
        if expected == 451 {
            assert!(reply.text().starts_with("4.3.0"), "{reply:?}");
        }
        client.ok("QUIT", 221).await;
    }
    let stats = sink.stats();
    assert_eq!(stats.recipients_rejected, 2);
    assert_eq!(stats.recipients_accepted, 2);
    sink.shutdown().await;
}

#[tokio::test]
async fn scripted_rejections() {
    let (sink, addr) = start(SinkConfig::default()).await;
    let mut client = ehlo_client(addr).await;
    client.ok("MAIL FROM:<a@b>", 250).await;
    let reply = client.ok("RCPT TO:<PermFail-x@y>", 550).await;
    assert!(reply.text().starts_with("5.1.1"));
    let reply = client.ok("RCPT TO:<greylist-x@y>", 451).await;
    assert!(reply.text().starts_with("4.7.1"));
    client.ok("RCPT TO:<greylist-x@y>", 250).await;
    let reply = client.ok("RCPT TO:<quota-x@y>", 452).await;
    assert!(reply.text().starts_with("4.2.2"));
    client.ok("RSET", 250).await;
    client.ok("DATA", 503).await;
    sink.shutdown().await;
}

#[tokio::test]
async fn reply_delay_is_applied_per_flush() {
    let config = SinkConfig {
        reply_delay: Duration::from_millis(300),
        ..SinkConfig::default()
    };
    let (sink, addr) = start(config).await;
    let mut client = ehlo_client(addr).await;
    let started = Instant::now();
    client.send(b"NOOP\r\nNOOP\r\nNOOP\r\n").await;
    for _ in 0..3 {
        assert_eq!(client.reply().await.code, 250);
    }
    let elapsed = started.elapsed();
    // One delay for the group, not one per reply.
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(850), "{elapsed:?}");
    sink.shutdown().await;
}

#[tokio::test]
async fn slow_recipient_is_delayed() {
    let config = SinkConfig {
        slow_delay: Duration::from_millis(150),
        ..SinkConfig::default()
    };
    let (sink, addr) = start(config).await;
    let mut client = ehlo_client(addr).await;
    client.ok("MAIL FROM:<a@b>", 250).await;
    let started = Instant::now();
    client.ok("RCPT TO:<slow@y>", 250).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    sink.shutdown().await;
}

#[tokio::test]
async fn bye_closes_the_connection() {
    let (sink, addr) = start(SinkConfig::default()).await;
    let mut client = ehlo_client(addr).await;
    client.ok("MAIL FROM:<a@b>", 250).await;
    let reply = client.ok("RCPT TO:<bye@y>", 421).await;
    assert!(reply.text().starts_with("4.7.0"));
    client.expect_closed().await;
    sink.shutdown().await;
}

#[tokio::test]
async fn drop_closes_during_the_body() {
    let (sink, addr) = start(SinkConfig::default()).await;
    let mut client = ehlo_client(addr).await;
    client.ok("MAIL FROM:<a@b>", 250).await;
    client.ok("RCPT TO:<drop-me@y>", 250).await;
    client.ok("DATA", 354).await;
    client.send(b"Subject: doomed\r\n\r\nbody\r\n").await;
    client.expect_closed().await;
    assert_eq!(sink.stats().dropped, 1);

    // BDAT: dropped as soon as the chunk arrives.
    let mut client = ehlo_client(addr).await;
    client.ok("MAIL FROM:<a@b>", 250).await;
    client.ok("RCPT TO:<drop@y>", 250).await;
    client.send(b"BDAT 5 LAST\r\nhello").await;
    client.expect_closed().await;
    let stats = sink.stats();
    assert_eq!(stats.dropped, 2);
    assert_eq!(stats.messages, 0);
    sink.shutdown().await;
}

#[tokio::test]
async fn data_without_recipients_then_lone_dot() {
    let (sink, addr) = start(SinkConfig::default()).await;
    let mut client = ehlo_client(addr).await;
    client.ok("MAIL FROM:<a@b>", 250).await;
    client.ok("RCPT TO:<permfail@y>", 550).await;
    let reply = client.ok("DATA", 554).await;
    assert!(reply.text().starts_with("5.5.1"));
    // A client that sends the content anyway: each line is a (bad) command, nothing breaks.
    client.ok("Subject: x", 500).await;
    client.ok(".", 500).await;
    client.ok("RSET", 250).await;
    client.ok("QUIT", 221).await;
    sink.shutdown().await;
}

#[tokio::test]
async fn starttls_then_message() {
    let (sink, addr) = start(capturing()).await;
    let mut client = ehlo_client(addr).await;
    client.ok("STARTTLS", 220).await;
    let mut client = client.tls(&sink).await;
    client.ok("MAIL FROM:<a@b>", 503).await;
    let ehlo = client.ok("EHLO client.test", 250).await;
    assert!(!ehlo.lines.iter().any(|l| l == "STARTTLS"));
    client.ok("STARTTLS", 503).await;
    let reply = client
        .send_message("a@b", &["c@d"], "Subject: tls\r\n\r\nx\r\n")
        .await;
    assert_eq!(reply.code, 250);
    client.ok("QUIT", 221).await;
    let messages = sink.messages();
    assert!(messages[0].tls);
    assert_eq!(sink.stats().tls_sessions, 1);
    sink.shutdown().await;
}

#[tokio::test]
async fn starttls_injection_is_discarded() {
    let (sink, addr) = start(capturing()).await;
    let mut client = ehlo_client(addr).await;
    // The MAIL and RCPT are sent in clear text right after STARTTLS, before the handshake.
    client
        .send(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\n")
        .await;
    assert_eq!(client.reply().await.code, 220);
    let mut client = client.tls(&sink).await;
    let ehlo = client.ok("EHLO client.test", 250).await;
    assert_eq!(ehlo.lines[0], "sink.test greets client.test");
    // Had the injected MAIL run, this RCPT would be accepted.
    client.ok("RCPT TO:<c@d>", 503).await;
    client.ok("DATA", 503).await;
    sink.shutdown().await;
}

#[tokio::test]
async fn implicit_tls() {
    let config = SinkConfig {
        implicit_tls: true,
        capture: true,
        ..SinkConfig::default()
    };
    let (sink, addr) = start(config).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut client = Client {
        stream: tls_connect(&sink, tcp).await,
        buf: BytesMut::new(),
    };
    assert_eq!(client.reply().await.code, 220);
    let ehlo = client.ok("EHLO c", 250).await;
    assert!(!ehlo.lines.iter().any(|l| l == "STARTTLS"));
    let reply = client.send_message("a@b", &["c@d"], "x\r\n").await;
    assert_eq!(reply.code, 250);
    assert!(sink.messages()[0].tls);
    // The certificate also covers the configured host name and the loopback addresses.
    for name in ["sink.test", "127.0.0.1"] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut client = Client {
            stream: tls_connect_as(&sink, tcp, name).await,
            buf: BytesMut::new(),
        };
        assert_eq!(client.reply().await.code, 220);
    }
    assert_eq!(sink.stats().tls_sessions, 3);
    sink.shutdown().await;
}

fn auth_config() -> SinkConfig {
    SinkConfig {
        auth: Some(("alice".into(), "s3cret".into())),
        capture: true,
        ..SinkConfig::default()
    }
}

#[tokio::test]
async fn auth_plain_success_and_failure() {
    let (sink, addr) = start(auth_config()).await;
    let mut client = ehlo_client(addr).await;
    let reply = client.ok("MAIL FROM:<a@b>", 530).await;
    assert!(reply.text().starts_with("5.7.0"));
    let bad = STANDARD.encode(b"\0alice\0wrong");
    let reply = client.ok(&format!("AUTH PLAIN {bad}"), 535).await;
    assert!(reply.text().starts_with("5.7.8"));
    client.ok("AUTH PLAIN !!notbase64", 501).await;
    // Challenge form, cancelled.
    let challenge = client.ok("AUTH PLAIN", 334).await;
    assert_eq!(challenge.text(), "");
    client.ok("*", 501).await;
    // Challenge form, success.
    client.ok("AUTH PLAIN", 334).await;
    let good = STANDARD.encode(b"\0alice\0s3cret");
    let reply = client.ok(&good, 235).await;
    assert!(reply.text().starts_with("2.7.0"));
    client.ok(&format!("AUTH PLAIN {good}"), 503).await;
    let reply = client.send_message("a@b", &["c@d"], "x\r\n").await;
    assert_eq!(reply.code, 250);
    let messages = sink.messages();
    assert_eq!(messages[0].authenticated.as_deref(), Some("alice"));
    assert!(!messages[0].tls);
    let stats = sink.stats();
    assert_eq!(stats.auth_successes, 1);
    assert_eq!(stats.auth_failures, 2);
    sink.shutdown().await;
}

#[tokio::test]
async fn auth_login_and_cram_md5() {
    let (sink, addr) = start(auth_config()).await;
    let mut client = ehlo_client(addr).await;
    let reply = client.ok("AUTH LOGIN", 334).await;
    assert_eq!(reply.text(), "VXNlcm5hbWU6");
    let reply = client.ok(&STANDARD.encode("alice"), 334).await;
    assert_eq!(reply.text(), "UGFzc3dvcmQ6");
    client.ok(&STANDARD.encode("s3cret"), 235).await;
    client.ok("QUIT", 221).await;

    let mut client = ehlo_client(addr).await;
    let reply = client.ok("AUTH CRAM-MD5", 334).await;
    let challenge = STANDARD.decode(reply.text()).unwrap();
    assert!(challenge.starts_with(b"<") && challenge.ends_with(b"@sink.test>"));
    let mut mac = Hmac::<md5::Md5>::new_from_slice(b"s3cret").unwrap();
    mac.update(&challenge);
    let digest: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    client
        .ok(&STANDARD.encode(format!("alice {digest}")), 235)
        .await;
    client.ok("AUTH XOAUTH2", 503).await;
    assert_eq!(sink.stats().auth_successes, 2);

    let mut client = ehlo_client(addr).await;
    client.ok("AUTH XOAUTH2", 504).await;
    client.ok("AUTH CRAM-MD5", 334).await;
    client.ok(&STANDARD.encode("alice 0123"), 535).await;
    sink.shutdown().await;
}

#[tokio::test]
async fn strict_mode_refuses_bare_newlines() {
    let (sink, addr) = start(capturing()).await;
    let mut client = ehlo_client(addr).await;
    let reply = client
        .send_message("a@b", &["c@d"], "Subject: x\n\nbody\r\n")
        .await;
    assert_eq!(reply.code, 554);
    assert!(reply.text().starts_with("5.6.11"));
    let reply = client.send_message("a@b", &["c@d"], "bare\rcr\r\n").await;
    assert_eq!(reply.code, 554);
    // The session is usable afterwards.
    let reply = client.send_message("a@b", &["c@d"], "fine\r\n").await;
    assert_eq!(reply.code, 250);
    let stats = sink.stats();
    assert_eq!(stats.bare_newlines, 2);
    assert_eq!(stats.messages, 1);
    sink.shutdown().await;

    let config = SinkConfig {
        strict: false,
        capture: true,
        ..SinkConfig::default()
    };
    let (sink, addr) = start(config).await;
    let mut client = ehlo_client(addr).await;
    let reply = client
        .send_message("a@b", &["c@d"], "Subject: x\n\nbody\r\n")
        .await;
    assert_eq!(reply.code, 250);
    assert_eq!(sink.messages()[0].data, b"Subject: x\n\nbody\r\n");
    sink.shutdown().await;
}

#[tokio::test]
async fn size_limits() {
    let config = SinkConfig {
        max_size: 100,
        ..SinkConfig::default()
    };
    let (sink, addr) = start(config).await;
    let mut client = ehlo_client(addr).await;
    let reply = client.ok("MAIL FROM:<a@b> SIZE=101", 552).await;
    assert!(reply.text().starts_with("5.3.4"));
    client.ok("MAIL FROM:<a@b> SIZE=abc", 501).await;
    let big = "x".repeat(98) + "\r\n" + &"y".repeat(98) + "\r\n";
    let reply = client.send_message("a@b", &["c@d"], &big).await;
    assert_eq!(reply.code, 552);
    client.ok("MAIL FROM:<a@b>", 250).await;
    client.ok("RCPT TO:<c@d>", 250).await;
    client.send(b"BDAT 60\r\n").await;
    client.send(&[b'z'; 60]).await;
    assert_eq!(client.reply().await.code, 250);
    client.send(b"BDAT 60 LAST\r\n").await;
    client.send(&[b'z'; 60]).await;
    assert_eq!(client.reply().await.code, 552);
    assert_eq!(sink.stats().messages, 0);
    sink.shutdown().await;
}

#[tokio::test]
async fn parameters_and_addresses() {
    let (sink, addr) = start(SinkConfig::default()).await;
    let mut client = ehlo_client(addr).await;
    client.ok("MAIL FROM:<a@b> RET=FULL", 555).await;
    client.ok("MAIL FROM:<a@b> FOO=1", 555).await;
    client.ok("MAIL FROM:a@b", 501).await;
    client.ok("MAIL FROM:<é@b>", 553).await;
    client
        .ok("MAIL FROM:<é@b> SMTPUTF8 BODY=8BITMIME", 250)
        .await;
    client.ok("MAIL FROM:<a@b>", 503).await;
    client.ok("RCPT TO:<ü@b>", 250).await;
    client.ok("RCPT TO:<x@b> NOTIFY=NEVER", 555).await;
    client.ok("RCPT TO:<>", 501).await;
    client.ok("RSET", 250).await;
    client.ok("MAIL FROM:<>", 250).await;
    client.ok("RCPT TO:<ü@b>", 553).await;
    sink.shutdown().await;
}

#[tokio::test]
async fn long_lines_and_invalid_bytes() {
    let (sink, addr) = start(SinkConfig::default()).await;
    let mut client = ehlo_client(addr).await;
    let long = format!("NOOP {}", "a".repeat(5000));
    let reply = client.ok(&long, 500).await;
    assert!(reply.text().starts_with("5.5.2"));
    client.ok("NOOP", 250).await;
    // A line longer than the limit sent in pieces, without its end for a while.
    client.send("b".repeat(3000).as_bytes()).await;
    client.send("b".repeat(3000).as_bytes()).await;
    assert_eq!(client.reply().await.code, 500);
    client.send(b"bbbb\r\nNOOP\r\n").await;
    assert_eq!(client.reply().await.code, 250);
    client.send(b"\xff\xfe\r\n").await;
    assert_eq!(client.reply().await.code, 500);
    // Exactly at the limit is fine.
    let at_limit = format!("NOOP {}", "a".repeat(4091));
    client.ok(&at_limit, 250).await;
    assert_eq!(sink.session_panics(), 0);
    sink.shutdown().await;
}

#[tokio::test]
async fn capture_and_spool_dir() {
    let dir = std::env::temp_dir().join(format!(
        "volley-sink-spool-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let config = SinkConfig {
        capture: true,
        spool_dir: Some(dir.join("nested")),
        ..SinkConfig::default()
    };
    let (sink, addr) = start(config).await;
    let mut client = ehlo_client(addr).await;
    let content = "Subject: spool\r\n\r\n..dot\r\n";
    let reply = client
        .send_message("from@x", &["r1@y", "r2@y"], content)
        .await;
    assert_eq!(reply.code, 250);
    assert_eq!(reply.text(), "2.0.0 Ok queued as 1");
    let eml = std::fs::read(dir.join("nested/1.eml")).unwrap();
    assert_eq!(eml, b"Subject: spool\r\n\r\n.dot\r\n");
    let env = std::fs::read_to_string(dir.join("nested/1.env")).unwrap();
    assert_eq!(env, "MAIL FROM:<from@x>\nRCPT TO:<r1@y>\nRCPT TO:<r2@y>\n");
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].helo, "client.test");
    assert_eq!(messages[0].rcpt_to, ["r1@y", "r2@y"]);
    assert_eq!(messages[0].data, eml);
    sink.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn track_recipients_counts_deliveries() {
    let config = SinkConfig {
        track_recipients: true,
        listen: vec![
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        ],
        ..SinkConfig::default()
    };
    let sink = Sink::start(config).await.unwrap();
    let addrs = sink.addrs();
    assert_eq!(addrs.len(), 2);
    assert_ne!(addrs[0].port(), addrs[1].port());
    for addr in &addrs {
        let mut client = ehlo_client(*addr).await;
        let reply = client.send_message("a@b", &["x@y", "z@y"], "m\r\n").await;
        assert_eq!(reply.code, 250);
        client.ok("MAIL FROM:<a@b>", 250).await;
        client.ok("RCPT TO:<x@y>", 250).await;
        client.ok("RCPT TO:<permfail@y>", 550).await;
        client.ok("DATA", 354).await;
        client.send(b"n\r\n.\r\n").await;
        assert_eq!(client.reply().await.code, 250);
    }
    let counts = sink.delivery_counts();
    assert_eq!(counts.get("x@y"), Some(&4));
    assert_eq!(counts.get("z@y"), Some(&2));
    assert_eq!(counts.get("permfail@y"), None);
    assert_eq!(sink.stats().messages, 4);
    assert_eq!(sink.stats().connections, 2);
    sink.shutdown().await;
}

#[tokio::test]
async fn random_failure_rates() {
    let config = SinkConfig {
        permfail_percent: 100.0,
        ..SinkConfig::default()
    };
    let (sink, addr) = start(config).await;
    let mut client = ehlo_client(addr).await;
    client.ok("MAIL FROM:<a@b>", 250).await;
    client.ok("RCPT TO:<anyone@y>", 550).await;
    sink.shutdown().await;

    let config = SinkConfig {
        tempfail_percent: 100.0,
        ..SinkConfig::default()
    };
    let (sink, addr) = start(config).await;
    let mut client = ehlo_client(addr).await;
    client.ok("MAIL FROM:<a@b>", 250).await;
    client.ok("RCPT TO:<anyone@y>", 451).await;
    sink.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections() {
    let (sink, addr) = start(SinkConfig::default()).await;
    let mut client = ehlo_client(addr).await;
    let shutdown = tokio::spawn(sink.shutdown());
    let reply = client.reply().await;
    assert_eq!(reply.code, 421);
    client.expect_closed().await;
    tokio::time::timeout(TIMEOUT, shutdown)
        .await
        .expect("shutdown finishes")
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}

/// Deterministic pseudo-random bytes (xorshift) for the garbage test.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let alphabet: &[u8] = b"\r\n\r\n.:<>@ =\0\xffMAILFROM:RCPTTO:DATABDAT 3 LAST\r\nAUTHPLAIN*EHLO";
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) {
                x.to_be_bytes()[4]
            } else {
                alphabet[(x >> 32) as usize % alphabet.len()]
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_input_never_panics() {
    let config = SinkConfig {
        auth: Some(("u".into(), "p".into())),
        capture: true,
        slow_delay: Duration::from_millis(1),
        ..SinkConfig::default()
    };
    let (sink, addr) = start(config).await;
    let mut tasks = Vec::new();
    for seed in 1..=40u64 {
        tasks.push(tokio::spawn(async move {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return;
            };
            let prelude: &[u8] = if seed.is_multiple_of(2) {
                b"EHLO x\r\nAUTH PLAIN AHUAcA==\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
            } else {
                b"EHLO x\r\n"
            };
            let _ = stream.write_all(prelude).await;
            let _ = stream.write_all(&garbage(seed, 20_000)).await;
            let _ = stream.shutdown().await;
            let mut sink_out = Vec::new();
            let _ = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut sink_out)).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Still serving correctly.
    let mut client = ehlo_client(addr).await;
    client.ok("NOOP", 250).await;
    assert_eq!(sink.session_panics(), 0);
    sink.shutdown().await;
}

/// Not a benchmark: a quick in-process run printing throughput and CPU, to catch gross
/// regressions by eye (`cargo test -- --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_throughput_report() {
    let (sink, addr) = start(SinkConfig::default()).await;
    let messages = 2_000;
    let cpu_before = process_cpu_seconds();
    let report = blast(&BlastConfig {
        target: addr,
        messages,
        connections: 10,
        size: 2048,
        pipelining: true,
        reconnect: false,
    })
    .await
    .expect("blast run");
    let cpu = process_cpu_seconds() - cpu_before;
    assert_eq!(report.messages, messages);
    let stats = sink.stats();
    assert_eq!(stats.messages, messages);
    assert_eq!(stats.bare_newlines, 0);
    let json: serde_json::Value = serde_json::from_str(&stats.to_json()).unwrap();
    assert_eq!(json["messages"], messages);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["messages"], messages);
    eprintln!(
        "quick run: {messages} messages in {:.3}s ({:.0} msg/s); process CPU (sink + client, \
         debug build) {cpu:.3}s = {:.3}s per 10k messages; pipelined groups {}",
        report.elapsed_s,
        report.messages_per_second,
        cpu / messages as f64 * 10_000.0,
        stats.pipelined_groups
    );

    // Non-pipelined reference works too.
    let report = blast(&BlastConfig {
        target: addr,
        messages: 50,
        connections: 2,
        size: 500,
        pipelining: false,
        reconnect: false,
    })
    .await
    .expect("non-pipelined blast run");
    assert_eq!(report.messages, 50);
    sink.shutdown().await;
}
