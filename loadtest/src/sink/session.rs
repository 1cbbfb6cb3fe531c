//! One SMTP connection: reading, command dispatch, message reception and reply batching.
//!
//! A session keeps one read buffer and one write buffer. It executes every complete command
//! in the read buffer, appending replies to the write buffer, and writes them with a single
//! write only when no complete command is left: a PIPELINING client gets one reply packet per
//! command group, at the cost of one syscall.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use super::auth::{self, Credentials, Pending};
use super::behaviour::{RcptVerdict, local_part, mix, starts_with_ci};
use super::command::{Command, Path, SyntaxError, split_param};
use super::config::SinkConfig;
use super::data::{Content, END_OF_DATA, end_finder, unstuff};
use super::server::Shared;
use super::stats::Counters;
use super::store::Received;

/// Longest accepted line, without its CRLF. RFC 5321 only requires 512 octets for commands;
/// the margin tolerates long AUTH responses while keeping memory bounded.
const MAX_LINE: usize = 4096;
/// Most recipients accepted in one transaction (RFC 5321 requires at least 100).
const MAX_RECIPIENTS: usize = 1000;
/// Read-buffer space guaranteed before each read.
const MIN_READ: usize = 8 * 1024;
/// Read-buffer growth step.
const READ_CHUNK: usize = 32 * 1024;
/// A connection with no input for this long is closed (RFC 5321 suggests 5 minutes).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest TLS handshake tolerated.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

const OK: &str = "250 2.0.0 Ok";
const LINE_TOO_LONG: &str = "500 5.5.2 line too long";
const NEED_HELO: &str = "503 5.5.1 send EHLO or HELO first";
const NEED_MAIL: &str = "503 5.5.1 need MAIL command";
const NO_RECIPIENTS: &str = "554 5.5.1 no valid recipients";
const TOO_BIG: &str = "552 5.3.4 message size exceeds fixed maximum message size";
const UNSUPPORTED_PARAM: &str = "555 5.5.4 unsupported parameter";
const NEED_SMTPUTF8: &str = "553 5.6.7 non-ASCII address requires SMTPUTF8";

/// Serves one accepted connection until it closes.
pub(crate) async fn serve(tcp: TcpStream, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    Counters::inc(&shared.counters.connections);
    let open = shared
        .counters
        .open_connections
        .fetch_add(1, Ordering::Relaxed)
        + 1;
    shared
        .counters
        .peak_connections
        .fetch_max(open, Ordering::Relaxed);
    let counters = Arc::clone(&shared);
    serve_inner(tcp, shared, stop).await;
    counters
        .counters
        .open_connections
        .fetch_sub(1, Ordering::Relaxed);
}

async fn serve_inner(tcp: TcpStream, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let implicit_tls = shared.config.implicit_tls;
    let peer = tcp.peer_addr().ok();
    let mut session = Session::new(shared, peer);
    if implicit_tls {
        let Some(mut tls) = session.handshake(tcp).await else {
            return;
        };
        if session.run(&mut tls, &mut stop, true).await == Outcome::Abort {
            abort(tls.get_ref().0);
        }
        return;
    }
    let mut tcp = tcp;
    match session.run(&mut tcp, &mut stop, true).await {
        Outcome::Closed => {}
        Outcome::Abort => abort(&tcp),
        Outcome::StartTls if session.shared.config.broken_tls => {
            // Not a TLS record: the client's handshake fails on it.
            let _ = tcp.write_all(b"this is not TLS\r\n").await;
        }
        Outcome::StartTls => {
            let Some(mut tls) = session.handshake(tcp).await else {
                return;
            };
            if session.run(&mut tls, &mut stop, false).await == Outcome::Abort {
                abort(tls.get_ref().0);
            }
        }
    }
}

/// Makes the coming close a reset rather than an orderly FIN, like a crashing server.
fn abort(tcp: &TcpStream) {
    let _ = tcp.set_zero_linger();
}

/// How [`Session::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The connection is finished (QUIT, EOF, error, shutdown).
    Closed,
    /// STARTTLS was accepted: the caller must run the handshake and continue.
    StartTls,
    /// Close abruptly, without reply (`drop*` recipients).
    Abort,
}

/// What one parsing step achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// No complete unit (line, chunk, end of data) left in the read buffer.
    NeedMore,
    /// Something was consumed; try again.
    Continue,
    /// Flush the replies and close.
    Close,
    /// Flush the replies, discard buffered input and start TLS.
    StartTls,
    /// Close now, without flushing.
    Abort,
}

/// What the bytes in the read buffer are.
#[derive(Debug)]
enum Mode {
    /// Command lines.
    Command,
    /// The rest of an over-long line, to be discarded.
    SkipLine,
    /// DATA content; `at_start` until the first bytes showed whether the content is empty.
    Data { at_start: bool },
    /// DATA content of a transaction with a `drop*` recipient: drop the connection on the
    /// first byte.
    DropOnData,
    /// A BDAT chunk; `refusal` is the reply to give (after consuming it) when it is refused.
    Bdat {
        size: u64,
        remaining: u64,
        last: bool,
        refusal: Option<&'static str>,
    },
    /// An answer line of an AUTH exchange.
    Auth(Pending),
}

/// The extensions in effect for the session (those advertised by the last EHLO).
#[derive(Debug, Default, Clone, Copy)]
struct Extensions {
    pipelining: bool,
    chunking: bool,
    eightbitmime: bool,
    smtputf8: bool,
    dsn: bool,
    auth: bool,
}

impl Extensions {
    fn advertised(config: &SinkConfig) -> Self {
        Self {
            pipelining: config.pipelining,
            chunking: config.chunking,
            eightbitmime: config.eightbitmime,
            smtputf8: config.smtputf8,
            dsn: config.dsn,
            auth: config.auth.is_some(),
        }
    }
}

/// A mail transaction, from MAIL to the end of the message.
#[derive(Debug)]
struct Transaction {
    mail_from: String,
    mail_params: Vec<String>,
    rcpts: Vec<String>,
    smtputf8: bool,
    binarymime: bool,
    /// A `drop*` recipient was accepted.
    drop_connection: bool,
    /// Content received so far: set at DATA, or at the first accepted BDAT chunk.
    content: Option<Content>,
}

struct Session {
    shared: Arc<Shared>,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    /// Replies in `wbuf` not yet written.
    pending_replies: u32,
    /// PIPELINING was in effect when the last replies were written, so the client may know
    /// it may pipeline (a client that sends MAIL along with its EHLO could not know yet).
    pipelining_confirmed: bool,
    mode: Mode,
    tls: bool,
    /// The client's address, as the socket saw it.
    peer: Option<std::net::SocketAddr>,
    helo: Option<String>,
    ext: Extensions,
    authenticated: Option<String>,
    txn: Option<Transaction>,
}

impl Session {
    fn new(shared: Arc<Shared>, peer: Option<std::net::SocketAddr>) -> Self {
        Self {
            shared,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: Vec::with_capacity(1024),
            pending_replies: 0,
            pipelining_confirmed: false,
            mode: Mode::Command,
            tls: false,
            peer,
            helo: None,
            ext: Extensions::default(),
            authenticated: None,
            txn: None,
        }
    }

    /// Runs the TLS handshake and resets the session to its initial state (RFC 3207: the
    /// client must start over with EHLO).
    async fn handshake(&mut self, tcp: TcpStream) -> Option<TlsStream<TcpStream>> {
        let accept = self.shared.acceptor.accept(tcp);
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => {
                tracing::debug!(%err, "TLS handshake failed");
                return None;
            }
            Err(_) => return None,
        };
        Counters::inc(&self.shared.counters.tls_sessions);
        self.tls = true;
        self.helo = None;
        self.ext = Extensions::default();
        self.pipelining_confirmed = false;
        self.authenticated = None;
        self.txn = None;
        self.mode = Mode::Command;
        self.rbuf.clear();
        Some(tls)
    }

    /// Serves the connection over `stream` until it closes or STARTTLS is accepted.
    async fn run<S>(
        &mut self,
        stream: &mut S,
        stop: &mut watch::Receiver<bool>,
        greet: bool,
    ) -> Outcome
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if greet {
            let greeting = format!("220 {} ESMTP volley-sink", self.shared.config.hostname);
            self.reply(&greeting);
        }
        // One timer for the whole connection, pushed forward lazily when it fires: re-arming
        // a timer on every read would cost more than the read itself under load.
        let idle = tokio::time::sleep(IDLE_TIMEOUT);
        tokio::pin!(idle);
        let mut last_input = Instant::now();
        loop {
            loop {
                match self.step().await {
                    Step::NeedMore => break,
                    Step::Continue => {}
                    Step::Close => {
                        if self.flush(stream).await.is_ok() {
                            let _ = stream.shutdown().await;
                        }
                        return Outcome::Closed;
                    }
                    Step::StartTls => {
                        if self.flush(stream).await.is_err() {
                            return Outcome::Closed;
                        }
                        // STARTTLS injection defence: whatever the client sent after STARTTLS
                        // in clear text must not be executed inside the TLS session.
                        self.rbuf.clear();
                        return Outcome::StartTls;
                    }
                    Step::Abort => return Outcome::Abort,
                }
            }
            if self.flush(stream).await.is_err() {
                return Outcome::Closed;
            }
            if self.rbuf.capacity() - self.rbuf.len() < MIN_READ {
                self.rbuf.reserve(READ_CHUNK);
            }
            let read = tokio::select! {
                read = stream.read_buf(&mut self.rbuf) => read,
                () = stopped(stop) => {
                    self.reply("421 4.3.2 sink shutting down");
                    let _ = self.flush(stream).await;
                    return Outcome::Closed;
                }
                () = &mut idle => {
                    let deadline = last_input + IDLE_TIMEOUT;
                    if Instant::now() < deadline {
                        idle.as_mut().reset(deadline);
                        continue;
                    }
                    self.reply("421 4.4.2 idle timeout, closing connection");
                    let _ = self.flush(stream).await;
                    return Outcome::Closed;
                }
            };
            match read {
                Ok(0) | Err(_) => return Outcome::Closed,
                Ok(n) => {
                    last_input = Instant::now();
                    Counters::add(&self.shared.counters.bytes_received, n as u64);
                }
            }
        }
    }

    /// Writes all pending replies with one write.
    async fn flush<S>(&mut self, stream: &mut S) -> std::io::Result<()>
    where
        S: AsyncWrite + Unpin,
    {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let delay = self.shared.config.reply_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.pending_replies >= 2 {
            Counters::inc(&self.shared.counters.pipelined_groups);
        }
        self.pending_replies = 0;
        stream.write_all(&self.wbuf).await?;
        stream.flush().await?;
        self.pipelining_confirmed = self.ext.pipelining;
        self.wbuf.clear();
        if self.wbuf.capacity() > 64 * 1024 {
            // A huge reply group (a long pipelined burst) should not pin memory for the
            // rest of the connection.
            self.wbuf.shrink_to(4096);
        }
        Ok(())
    }

    /// Queues one reply (a complete line, or several joined by CRLF for multi-line replies).
    fn reply(&mut self, line: &str) {
        self.wbuf.extend_from_slice(line.as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
        self.pending_replies += 1;
    }

    /// Consumes the next complete unit of input, if any.
    async fn step(&mut self) -> Step {
        match self.mode {
            Mode::Command | Mode::Auth(_) => self.step_line().await,
            Mode::SkipLine => match memchr::memchr(b'\n', &self.rbuf) {
                Some(end) => {
                    self.rbuf.advance(end + 1);
                    self.mode = Mode::Command;
                    Step::Continue
                }
                None => {
                    self.rbuf.clear();
                    Step::NeedMore
                }
            },
            Mode::Data { .. } => self.step_data().await,
            Mode::DropOnData => {
                if self.rbuf.is_empty() {
                    Step::NeedMore
                } else {
                    Counters::inc(&self.shared.counters.dropped);
                    Step::Abort
                }
            }
            Mode::Bdat { .. } => self.step_bdat().await,
        }
    }

    /// Handles one command line or AUTH answer line.
    async fn step_line(&mut self) -> Step {
        let Some(end) = memchr::memchr(b'\n', &self.rbuf) else {
            if self.rbuf.len() > MAX_LINE + 1 {
                // Over-long line without its end yet: answer now, skip the rest as it comes.
                self.rbuf.clear();
                self.mode = Mode::SkipLine;
                self.reply(LINE_TOO_LONG);
                return Step::Continue;
            }
            return Step::NeedMore;
        };
        let raw = self.rbuf.split_to(end + 1);
        let line = raw[..end].strip_suffix(b"\r").unwrap_or(&raw[..end]);
        let in_auth = matches!(self.mode, Mode::Auth(_));
        if line.len() > MAX_LINE {
            // Also cancels an AUTH exchange.
            self.mode = Mode::Command;
            self.reply(LINE_TOO_LONG);
            return Step::Continue;
        }
        if !in_auth {
            Counters::inc(&self.shared.counters.commands);
            let may_pipeline = self.pipelining_confirmed && self.ext.pipelining;
            if self.shared.config.strict && !may_pipeline && self.pending_replies > 0 {
                // The previous reply is still unsent, so the client did not wait for it.
                Counters::inc(&self.shared.counters.pipelining_violations);
            }
        }
        let Ok(text) = std::str::from_utf8(line) else {
            if in_auth {
                self.mode = Mode::Command;
                self.reply("501 5.5.2 cannot decode response");
            } else {
                self.reply("500 5.5.2 invalid characters in command");
            }
            return Step::Continue;
        };
        if let Mode::Auth(pending) = std::mem::replace(&mut self.mode, Mode::Command) {
            let shared = Arc::clone(&self.shared);
            let Some((user, pass)) = &shared.config.auth else {
                return Step::Continue;
            };
            let creds = Credentials { user, pass };
            self.auth_outcome(auth::respond(pending, text, &creds));
            return Step::Continue;
        }
        self.command(text).await
    }

    async fn command(&mut self, line: &str) -> Step {
        let command = match Command::parse(line) {
            Ok(command) => command,
            Err(SyntaxError(reply)) => {
                self.reply(reply);
                return Step::Continue;
            }
        };
        match command {
            Command::Ehlo(domain) => self.ehlo(domain),
            Command::Helo(domain) => {
                self.txn = None;
                self.helo = Some(domain.to_owned());
                self.ext = Extensions::default();
                let reply = format!("250 {}", self.shared.config.hostname);
                self.reply(&reply);
            }
            Command::Mail(path) => self.mail(&path),
            Command::Rcpt(path) => return self.rcpt(&path).await,
            Command::Data => self.data(),
            Command::Bdat { size, last } => return self.bdat(size, last),
            Command::Rset => {
                Counters::inc(&self.shared.counters.rsets);
                self.txn = None;
                self.reply(OK);
            }
            Command::Noop => self.reply(OK),
            Command::Quit => {
                Counters::inc(&self.shared.counters.quits);
                self.reply("221 2.0.0 Bye");
                return Step::Close;
            }
            Command::Vrfy(arg) => {
                let address = arg.trim_start_matches('<').trim_end_matches('>');
                if self.shared.behaviours.vrfy_denied(address) {
                    self.reply("550 5.1.1 no such user");
                } else {
                    self.reply("252 2.5.0 cannot VRFY user, but will accept message");
                }
            }
            Command::Expn => self.reply("502 5.5.1 EXPN not available"),
            Command::Help => self.reply("214 2.0.0 volley-sink, see RFC 5321"),
            Command::StartTls => return self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial),
            Command::Unknown => self.reply("500 5.5.1 command not recognized"),
        }
        Step::Continue
    }

    fn ehlo(&mut self, domain: &str) {
        let config = &self.shared.config;
        if config.helo_only {
            self.reply("500 5.5.1 not recognized");
            return;
        }
        let mut lines = vec![format!("{} greets {domain}", config.hostname)];
        if config.pipelining {
            lines.push("PIPELINING".into());
        }
        lines.push(format!("SIZE {}", config.max_size));
        if config.eightbitmime {
            lines.push("8BITMIME".into());
        }
        if config.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        if config.enhanced_status_codes {
            lines.push("ENHANCEDSTATUSCODES".into());
        }
        if config.chunking {
            lines.push("CHUNKING".into());
        }
        if config.dsn {
            lines.push("DSN".into());
        }
        if config.starttls && !self.tls {
            lines.push("STARTTLS".into());
        }
        if config.auth.is_some() {
            lines.push("AUTH PLAIN LOGIN CRAM-MD5".into());
        }
        let last = lines.len() - 1;
        let mut reply = String::new();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            if i > 0 {
                reply.push_str("\r\n");
            }
            reply.push_str("250");
            reply.push(sep);
            reply.push_str(line);
        }
        self.ext = Extensions::advertised(config);
        self.txn = None;
        self.helo = Some(domain.to_owned());
        self.reply(&reply);
    }

    fn mail(&mut self, path: &Path<'_>) {
        if self.helo.is_none() {
            return self.reply(NEED_HELO);
        }
        if self.shared.config.auth.is_some() && self.authenticated.is_none() {
            return self.reply("530 5.7.0 authentication required");
        }
        if self.txn.is_some() {
            return self.reply("503 5.5.1 nested MAIL command");
        }
        let mut smtputf8 = false;
        let mut binarymime = false;
        for param in &path.params {
            let (key, value) = split_param(param);
            let is = |name: &str| key.eq_ignore_ascii_case(name);
            if is("SIZE") {
                let Some(size) = value.and_then(parse_decimal) else {
                    return self.reply("501 5.5.4 bad SIZE parameter");
                };
                if size > self.shared.config.max_size as u64 {
                    return self.reply(TOO_BIG);
                }
            } else if is("BODY") {
                let value = value.unwrap_or_default();
                let seven_bit = value.eq_ignore_ascii_case("7BIT");
                let eight_bit = value.eq_ignore_ascii_case("8BITMIME") && self.ext.eightbitmime;
                binarymime = value.eq_ignore_ascii_case("BINARYMIME") && self.ext.chunking;
                if !(seven_bit || eight_bit || binarymime) {
                    return self.reply(UNSUPPORTED_PARAM);
                }
            } else if is("SMTPUTF8") && value.is_none() && self.ext.smtputf8 {
                smtputf8 = true;
            } else if is("RET") && self.ext.dsn {
                let value = value.unwrap_or_default();
                if !value.eq_ignore_ascii_case("FULL") && !value.eq_ignore_ascii_case("HDRS") {
                    return self.reply("501 5.5.4 bad RET parameter");
                }
            } else if (is("ENVID") && self.ext.dsn) || (is("AUTH") && self.ext.auth) {
                if value.is_none() {
                    return self.reply("501 5.5.4 parameter needs a value");
                }
            } else {
                return self.reply(UNSUPPORTED_PARAM);
            }
        }
        if !path.address.is_ascii() && !smtputf8 {
            return self.reply(NEED_SMTPUTF8);
        }
        // A scripted refusal of the sender, in the wording of a server that does not know
        // it: about the sender, never about the recipients to come.
        if starts_with_ci(local_part(path.address), "refused-sender") {
            return self
                .reply("550 5.1.1 Sender address rejected: User unknown in local recipient table");
        }
        self.txn = Some(Transaction {
            mail_from: path.address.to_owned(),
            mail_params: path.params.iter().map(|p| (*p).to_owned()).collect(),
            rcpts: Vec::new(),
            smtputf8,
            binarymime,
            drop_connection: false,
            content: None,
        });
        self.reply("250 2.1.0 Ok");
    }

    async fn rcpt(&mut self, path: &Path<'_>) -> Step {
        let dsn = self.ext.dsn;
        let Some(txn) = &self.txn else {
            self.reply(NEED_MAIL);
            return Step::Continue;
        };
        if txn.content.is_some() {
            self.reply("503 5.5.1 RCPT not allowed after BDAT");
            return Step::Continue;
        }
        let refusal = if txn.rcpts.len() >= MAX_RECIPIENTS {
            Some("452 4.5.3 too many recipients")
        } else if !path.params.iter().all(|p| {
            let (key, value) = split_param(p);
            dsn && value.is_some()
                && (key.eq_ignore_ascii_case("NOTIFY") || key.eq_ignore_ascii_case("ORCPT"))
        }) {
            Some(UNSUPPORTED_PARAM)
        } else if !path.address.is_ascii() && !txn.smtputf8 {
            Some(NEED_SMTPUTF8)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            Counters::inc(&self.shared.counters.recipients_rejected);
            self.reply(refusal);
            return Step::Continue;
        }
        let mut drop_connection = false;
        match self.shared.behaviours.decide(path.address) {
            RcptVerdict::Accept => {}
            RcptVerdict::AcceptSlow => tokio::time::sleep(self.shared.config.slow_delay).await,
            RcptVerdict::AcceptThenDrop => drop_connection = true,
            RcptVerdict::Reject(reply) => {
                Counters::inc(&self.shared.counters.recipients_rejected);
                self.reply(reply);
                return Step::Continue;
            }
            RcptVerdict::RejectAndClose(reply) => {
                Counters::inc(&self.shared.counters.recipients_rejected);
                self.reply(reply);
                return Step::Close;
            }
        }
        if let Some(txn) = &mut self.txn {
            txn.drop_connection |= drop_connection;
            txn.rcpts.push(path.address.to_owned());
        }
        Counters::inc(&self.shared.counters.recipients_accepted);
        self.reply("250 2.1.5 Ok");
        Step::Continue
    }

    fn data(&mut self) {
        let Some(txn) = &mut self.txn else {
            return self.reply(NEED_MAIL);
        };
        if txn.content.is_some() {
            return self.reply("503 5.5.1 DATA not allowed after BDAT");
        }
        if txn.binarymime {
            return self.reply("503 5.5.1 BODY=BINARYMIME requires BDAT");
        }
        if txn.rcpts.is_empty() {
            return self.reply(NO_RECIPIENTS);
        }
        if txn.drop_connection {
            self.mode = Mode::DropOnData;
        } else {
            txn.content = Some(Content::new(
                self.shared.store.needs_content(),
                self.shared.config.max_size,
            ));
            self.mode = Mode::Data { at_start: true };
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>");
    }

    /// Consumes DATA content up to the end-of-data line.
    async fn step_data(&mut self) -> Step {
        if let Mode::Data { at_start: true } = self.mode {
            // The CRLF before the end marker may be the one that ended the DATA command:
            // an empty message is just ".\r\n".
            if self.rbuf.len() < 3 {
                if b".\r\n".starts_with(&self.rbuf) {
                    return Step::NeedMore;
                }
            } else if self.rbuf.starts_with(b".\r\n") {
                self.rbuf.advance(3);
                return self.finish_message(false).await;
            }
            self.mode = Mode::Data { at_start: false };
        }
        match end_finder().find(&self.rbuf) {
            Some(pos) => {
                let chunk = self.rbuf.split_to(pos + END_OF_DATA.len());
                // Keep the CRLF that ends the last line; drop ".\r\n".
                self.push_content(&chunk[..pos + 2]);
                self.finish_message(false).await
            }
            None => {
                // The marker may straddle the next read: keep its longest possible prefix.
                let keep = END_OF_DATA.len() - 1;
                if self.rbuf.len() > keep {
                    let chunk = self.rbuf.split_to(self.rbuf.len() - keep);
                    self.push_content(&chunk);
                }
                Step::NeedMore
            }
        }
    }

    fn push_content(&mut self, chunk: &[u8]) {
        if let Some(content) = self.txn.as_mut().and_then(|t| t.content.as_mut()) {
            content.push(chunk);
        }
    }

    fn bdat(&mut self, size: u64, last: bool) -> Step {
        let refusal = match &mut self.txn {
            _ if !self.ext.chunking => {
                Some("502 5.5.1 BDAT not available: CHUNKING not advertised")
            }
            None => Some(NEED_MAIL),
            Some(txn) if txn.rcpts.is_empty() => Some(NO_RECIPIENTS),
            Some(txn) if txn.drop_connection => {
                Counters::inc(&self.shared.counters.dropped);
                return Step::Abort;
            }
            Some(txn) => {
                if txn.content.is_none() {
                    txn.content = Some(Content::new(
                        self.shared.store.needs_content(),
                        self.shared.config.max_size,
                    ));
                }
                None
            }
        };
        self.mode = Mode::Bdat {
            size,
            remaining: size,
            last,
            refusal,
        };
        Step::Continue
    }

    /// Consumes a BDAT chunk (RFC 3030: always all of it, even when refused) and answers.
    async fn step_bdat(&mut self) -> Step {
        let Mode::Bdat {
            size,
            mut remaining,
            last,
            refusal,
        } = std::mem::replace(&mut self.mode, Mode::Command)
        else {
            return Step::Continue;
        };
        if remaining > 0 {
            let take =
                usize::try_from(remaining).map_or(self.rbuf.len(), |r| r.min(self.rbuf.len()));
            if take > 0 {
                let chunk = self.rbuf.split_to(take);
                remaining -= take as u64;
                if refusal.is_none() {
                    self.push_content(&chunk);
                }
            }
            if remaining > 0 {
                self.mode = Mode::Bdat {
                    size,
                    remaining,
                    last,
                    refusal,
                };
                return Step::NeedMore;
            }
        }
        if let Some(refusal) = refusal {
            if last {
                self.txn = None;
            }
            self.reply(refusal);
            return Step::Continue;
        }
        if last {
            return self.finish_message(true).await;
        }
        let too_big = self
            .txn
            .as_ref()
            .and_then(|t| t.content.as_ref())
            .is_some_and(Content::too_big);
        if too_big {
            self.reply(TOO_BIG);
        } else {
            let _ = write!(self.wbuf, "250 2.0.0 {size} octets received\r\n");
            self.pending_replies += 1;
        }
        Step::Continue
    }

    /// Ends the transaction after the last content byte: accept, or refuse for size or bare
    /// newlines.
    async fn finish_message(&mut self, bdat: bool) -> Step {
        self.mode = Mode::Command;
        let Some(mut txn) = self.txn.take() else {
            return Step::Continue;
        };
        let Some(content) = txn.content.take() else {
            return Step::Continue;
        };
        if content.too_big() {
            self.reply(TOO_BIG);
            return Step::Continue;
        }
        let binary = bdat && txn.binarymime;
        if self.shared.config.strict && !binary && content.has_bare_newline() {
            Counters::inc(&self.shared.counters.bare_newlines);
            self.reply("554 5.6.11 bare CR or LF in message content");
            return Step::Continue;
        }
        let raw = content.into_raw();
        let data = if bdat || raw.is_empty() {
            raw
        } else {
            let mut out = Vec::with_capacity(raw.len());
            unstuff(&raw, &mut out);
            out
        };
        let received = Received {
            mail_from: txn.mail_from,
            mail_params: txn.mail_params,
            rcpt_to: txn.rcpts,
            data,
            tls: self.tls,
            authenticated: self.authenticated.clone(),
            bdat,
            helo: self.helo.clone().unwrap_or_default(),
            peer: self.peer,
        };
        match self.shared.store.accept(received).await {
            Ok(seq) => {
                Counters::inc(&self.shared.counters.messages);
                self.shared
                    .pace
                    .accepted(&self.shared.counters.peak_one_second);
                let _ = write!(self.wbuf, "250 2.0.0 Ok queued as {seq}\r\n");
                self.pending_replies += 1;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot write spool");
                self.reply("451 4.3.0 local error: cannot write spool");
            }
        }
        Step::Continue
    }

    fn starttls(&mut self) -> Step {
        if self.tls {
            self.reply("503 5.5.1 TLS already active");
            return Step::Continue;
        }
        if !self.shared.config.starttls || self.shared.config.helo_only {
            self.reply("502 5.5.1 STARTTLS not available");
            return Step::Continue;
        }
        self.reply("220 2.0.0 Ready to start TLS");
        Step::StartTls
    }

    fn auth(&mut self, mechanism: &str, initial: Option<&str>) {
        let shared = Arc::clone(&self.shared);
        let Some((user, pass)) = &shared.config.auth else {
            return self.reply("502 5.5.1 AUTH not available");
        };
        if self.helo.is_none() {
            return self.reply(NEED_HELO);
        }
        if self.authenticated.is_some() {
            return self.reply("503 5.5.1 already authenticated");
        }
        if self.txn.is_some() {
            return self.reply("503 5.5.1 AUTH not allowed during a mail transaction");
        }
        let creds = Credentials { user, pass };
        let nonce = mix(shared.nonce.fetch_add(1, Ordering::Relaxed));
        let step = auth::start(mechanism, initial, &creds, &shared.config.hostname, nonce);
        self.auth_outcome(step);
    }

    fn auth_outcome(&mut self, step: auth::Step) {
        match step {
            auth::Step::Challenge(line, pending) => {
                self.mode = Mode::Auth(pending);
                self.reply(&line);
            }
            auth::Step::Success(user) => {
                Counters::inc(&self.shared.counters.auth_successes);
                self.authenticated = Some(user);
                self.reply("235 2.7.0 Authentication successful");
            }
            auth::Step::Failure => {
                Counters::inc(&self.shared.counters.auth_failures);
                self.reply("535 5.7.8 authentication credentials invalid");
            }
            auth::Step::Cancelled => self.reply("501 5.7.0 authentication cancelled"),
            auth::Step::Malformed => {
                Counters::inc(&self.shared.counters.auth_failures);
                self.reply("501 5.5.2 cannot decode response");
            }
            auth::Step::Unsupported => {
                self.reply("504 5.5.4 unrecognized authentication mechanism");
            }
        }
    }
}

/// Resolves once the sink shuts down. The watch guard is dropped inside, so the future holds
/// no lock across later awaits (and stays `Send`).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|&stopped| stopped).await;
}

/// Parses a plain decimal number (no sign, no spaces).
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}
