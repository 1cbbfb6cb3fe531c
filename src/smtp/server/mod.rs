//! The server side of SMTP, sans IO: a session is fed the bytes a client sends and
//! says what to do next — write its replies, upgrade to TLS, check credentials, store a
//! message, close — without touching a socket or a clock. The listener around it
//! (`crate::inbound`) does the IO, the timeouts and the decisions of its policy.
//!
//! Commands are parsed by `smtp-proto`; the state machine is ours. It speaks EHLO/HELO,
//! MAIL, RCPT, DATA, BDAT (CHUNKING), RSET, NOOP, QUIT, VRFY (252), HELP, STARTTLS and
//! AUTH PLAIN/LOGIN, with PIPELINING (replies are collected until the client's input runs
//! out), SIZE, 8BITMIME, SMTPUTF8 and ENHANCEDSTATUSCODES. Lines end with CRLF; content
//! with a bare CR or LF is refused (see `content.rs`).

mod content;

use std::borrow::Cow;

use base64::Engine as _;
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN, Request};

use content::Content;
pub use content::Verdict;

/// The longest command line accepted (RFC 5321 says 512; extensions make it longer).
const MAX_LINE: usize = 4096;

/// Failed AUTH attempts on one connection before it is closed: each is a password hash
/// to compute, and a connection is not a free password-guessing channel.
const MAX_AUTH_FAILURES: u32 = 3;

/// The most digits a BDAT chunk size may have: more would not fit a 64-bit size (and
/// the parser wraps rather than refuses).
const MAX_SIZE_DIGITS: usize = 19;

/// What a server offers, fixed for a listener.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Largest message (SIZE).
    pub max_message_size: usize,
    /// Most recipients of one message.
    pub max_recipients: usize,
    /// Whether STARTTLS is offered (a certificate is configured).
    pub starttls: bool,
    /// Whether AUTH PLAIN and LOGIN are offered.
    pub auth: bool,
}

/// What the listener must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Write the pending replies ([`Session::take_output`]) and read more input.
    NeedInput,
    /// Write the pending replies (the last is `220 ready`), then start TLS and call
    /// [`Session::tls_started`].
    StartTls,
    /// Check these credentials and answer with [`Session::authenticated`].
    Authenticate {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// Decide on a sender (the policy: relaying, limits) with [`Session::mail_decided`].
    Mail {
        /// The reverse path; empty for `<>`.
        from: String,
        /// The SIZE the client declared, 0 when none.
        size: usize,
    },
    /// Decide on a recipient with [`Session::rcpt_decided`].
    Rcpt {
        /// The forward path.
        to: String,
    },
    /// Store the message durably and answer with [`Session::stored`].
    Message(Envelope),
    /// Write the pending replies and close the connection.
    Close,
}

/// A received message.
#[derive(Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse path; empty for `<>`.
    pub from: String,
    /// The accepted recipients, in order.
    pub to: Vec<String>,
    /// The content, dot-unstuffed.
    pub content: Vec<u8>,
    /// The user that authenticated on this connection, if any.
    pub user: Option<String>,
}

/// A reply: code, enhanced status code and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    /// The three-digit code.
    pub code: u16,
    /// The enhanced status code (`2.0.0`).
    pub status: &'static str,
    /// Human-readable text, one line, no CR or LF.
    pub text: Cow<'static, str>,
}

impl ServerReply {
    /// A reply from its parts.
    pub fn new(code: u16, status: &'static str, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            status,
            text: text.into(),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        let text: String = self
            .text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        out.extend_from_slice(format!("{} {} {text}\r\n", self.code, self.status).as_bytes());
    }
}

/// Where in a transaction the session is.
#[derive(Debug)]
enum State {
    /// Waiting for a command.
    Command,
    /// After `AUTH LOGIN`, waiting for the user name.
    LoginUser,
    /// After the user name, waiting for the password.
    LoginPassword(String),
    /// After `AUTH PLAIN` without an initial response.
    PlainResponse,
    /// Waiting for the listener's answer to an event.
    Waiting,
    /// Reading DATA content.
    Data(Content),
    /// Reading a BDAT chunk: bytes still due, and whether it is the last.
    Chunk { left: usize, last: bool },
    /// After QUIT, or a fatal error: nothing more is read.
    Closing,
}

/// One client's SMTP session.
#[derive(Debug)]
pub struct Session {
    settings: std::sync::Arc<ServerSettings>,
    input: Vec<u8>,
    output: Vec<u8>,
    state: State,
    helo: bool,
    tls: bool,
    user: Option<String>,
    from: Option<String>,
    to: Vec<String>,
    /// Content of a BDAT transaction across chunks.
    chunks: Option<Content>,
    /// A BDAT transaction that failed: its chunks are read and dropped until LAST.
    chunks_refused: Option<ServerReply>,
    /// Failed AUTH attempts so far.
    auth_failures: u32,
}

impl Session {
    /// A new session; its greeting is the first output.
    pub fn new(settings: std::sync::Arc<ServerSettings>, tls: bool) -> Self {
        let mut session = Self {
            settings,
            input: Vec::new(),
            output: Vec::new(),
            state: State::Command,
            helo: false,
            tls,
            user: None,
            from: None,
            to: Vec::new(),
            chunks: None,
            chunks_refused: None,
            auth_failures: 0,
        };
        let greeting = format!("{} ESMTP volley", session.settings.hostname);
        session.reply(220, "", greeting);
        session
    }

    /// A session that refuses service (too many connections): the listener writes the
    /// output and closes.
    pub fn busy(settings: &ServerSettings) -> Vec<u8> {
        format!(
            "421 4.3.2 {} too many connections, try again later\r\n",
            settings.hostname
        )
        .into_bytes()
    }

    /// Whether TLS is active.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The user authenticated on this connection.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Replies to write, in order; empties the buffer.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !matches!(self.state, State::Closing) {
            self.input.extend_from_slice(bytes);
        }
    }

    /// The input waiting to be processed, in bytes (the listener stops reading above a
    /// bound it chooses, so that a client cannot make it hold unlimited input).
    pub fn pending_input(&self) -> usize {
        self.input.len()
    }

    fn reply(&mut self, code: u16, status: &'static str, text: impl Into<Cow<'static, str>>) {
        let text = text.into();
        if status.is_empty() {
            self.output
                .extend_from_slice(format!("{code} {text}\r\n").as_bytes());
        } else {
            ServerReply::new(code, status, text).write(&mut self.output);
        }
    }

    fn send(&mut self, reply: &ServerReply) {
        reply.write(&mut self.output);
    }

    fn reset_transaction(&mut self) {
        self.from = None;
        self.to.clear();
        self.chunks = None;
        self.chunks_refused = None;
    }

    /// Processes input until something needs the listener.
    pub fn next_event(&mut self) -> Event {
        loop {
            match std::mem::replace(&mut self.state, State::Waiting) {
                State::Closing => {
                    self.state = State::Closing;
                    return Event::Close;
                }
                State::Waiting => {
                    // An event is out: its answer comes first.
                    return Event::NeedInput;
                }
                State::Data(mut content) => {
                    let (used, done) = content.read_data(&self.input);
                    self.input.drain(..used);
                    if !done {
                        self.state = State::Data(content);
                        return Event::NeedInput;
                    }
                    if let Some(event) = self.finish_content(content) {
                        return event;
                    }
                }
                State::Chunk { left, last } => {
                    let take = left.min(self.input.len());
                    let chunk: Vec<u8> = self.input.drain(..take).collect();
                    if let Some(content) = self.chunks.as_mut() {
                        content.read_chunk(&chunk);
                    }
                    let left = left - take;
                    if left > 0 {
                        self.state = State::Chunk { left, last };
                        return Event::NeedInput;
                    }
                    if let Some(event) = self.chunk_done(last) {
                        return event;
                    }
                }
                state @ (State::Command
                | State::LoginUser
                | State::LoginPassword(_)
                | State::PlainResponse) => {
                    let Some(line) = self.take_line() else {
                        self.state = state;
                        if self.input.len() > MAX_LINE {
                            self.input.clear();
                            self.reply(500, "5.5.6", "line too long");
                            self.state = State::Closing;
                            continue;
                        }
                        return Event::NeedInput;
                    };
                    let event = match state {
                        State::Command => self.command(&line),
                        State::LoginUser => self.login_user(&line),
                        State::LoginPassword(user) => self.login_password(user, &line),
                        _ => self.plain_response(&line),
                    };
                    if let Some(event) = event {
                        return event;
                    }
                }
            }
        }
    }

    /// The next line, CRLF included, when one is complete.
    fn take_line(&mut self) -> Option<Vec<u8>> {
        let lf = memchr::memchr(b'\n', &self.input)?;
        if lf >= MAX_LINE {
            return None;
        }
        Some(self.input.drain(..=lf).collect())
    }

    fn command(&mut self, line: &[u8]) -> Option<Event> {
        self.state = State::Command;
        if !line.ends_with(b"\r\n") {
            self.reply(500, "5.5.2", "lines must end with CRLF");
            return None;
        }
        let bdat = is_bdat(line);
        let parsed = if bdat && !bdat_size_fits(line) {
            Err(smtp_proto::Error::SyntaxError {
                syntax: "BDAT chunk-size [LAST]",
            })
        } else {
            Request::parse(&mut line.iter())
        };
        let request = match parsed {
            Ok(request) => request,
            Err(e) => {
                let reply = syntax_reply(&e);
                self.send(&reply);
                if bdat {
                    // The chunk that follows has no size we can trust: read as commands,
                    // its bytes would be obeyed. Nothing after this line can be framed.
                    self.reply(421, "4.5.0", "cannot find the end of that chunk; closing");
                    self.state = State::Closing;
                }
                return None;
            }
        };
        match request {
            Request::Ehlo { host } => self.ehlo(&host),
            Request::Helo { host } => {
                self.reset_transaction();
                self.helo = true;
                let text = format!("{} greets {host}", self.settings.hostname);
                self.reply(250, "", text);
            }
            Request::Lhlo { .. } => self.reply(500, "5.5.1", "this is not an LMTP server"),
            Request::Mail { from } => {
                if !self.helo {
                    self.reply(503, "5.5.1", "say EHLO first");
                } else if self.from.is_some() {
                    self.reply(503, "5.5.1", "a transaction is already open");
                } else if from.size > self.settings.max_message_size {
                    let text = format!(
                        "message larger than the limit of {} bytes",
                        self.settings.max_message_size
                    );
                    self.reply(552, "5.3.4", text);
                } else {
                    self.state = State::Waiting;
                    return Some(Event::Mail {
                        from: from.address.into_owned(),
                        size: from.size,
                    });
                }
            }
            Request::Rcpt { to } => {
                if self.from.is_none() {
                    self.reply(503, "5.5.1", "MAIL first");
                } else if self.to.len() >= self.settings.max_recipients {
                    self.reply(452, "4.5.3", "too many recipients");
                } else {
                    self.state = State::Waiting;
                    return Some(Event::Rcpt {
                        to: to.address.into_owned(),
                    });
                }
            }
            Request::Data => {
                if self.chunks.is_some() || self.chunks_refused.is_some() {
                    // RFC 3030: a transaction begun with BDAT ends with BDAT LAST.
                    self.reply(503, "5.5.1", "BDAT in progress: end it with BDAT LAST");
                } else if let Some(refusal) = self.transaction_refusal() {
                    self.send(&refusal);
                } else {
                    self.reply(354, "", "end data with <CR><LF>.<CR><LF>");
                    self.state = State::Data(Content::new(self.settings.max_message_size));
                }
            }
            Request::Bdat {
                chunk_size,
                is_last,
            } => {
                if self.chunks.is_none() && self.chunks_refused.is_none() {
                    match self.transaction_refusal() {
                        Some(refusal) => self.chunks_refused = Some(refusal),
                        None => {
                            self.chunks = Some(Content::new(self.settings.max_message_size));
                        }
                    }
                }
                self.state = State::Chunk {
                    left: chunk_size,
                    last: is_last,
                };
            }
            Request::Rset => {
                self.reset_transaction();
                self.reply(250, "2.0.0", "reset");
            }
            Request::Noop { .. } => self.reply(250, "2.0.0", "OK"),
            Request::Quit => {
                self.reply(221, "2.0.0", "bye");
                self.state = State::Closing;
            }
            Request::Vrfy { .. } => self.reply(
                252,
                "2.5.0",
                "cannot verify the user, but will accept the message",
            ),
            Request::Expn { .. } => self.reply(502, "5.5.1", "EXPN is not supported"),
            Request::Help { .. } => self.reply(214, "2.0.0", "see RFC 5321"),
            Request::StartTls => {
                if !self.settings.starttls || self.tls {
                    self.reply(502, "5.5.1", "STARTTLS is not available");
                } else {
                    self.reply(220, "2.0.0", "ready to start TLS");
                    // Anything the client sent after STARTTLS was sent in clear text
                    // and must not be taken as coming over TLS.
                    self.input.clear();
                    self.state = State::Waiting;
                    return Some(Event::StartTls);
                }
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => return self.auth(mechanism, &initial_response),
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.reply(502, "5.5.1", "command not implemented");
            }
        }
        None
    }

    /// Why DATA or BDAT cannot start now, if it cannot.
    fn transaction_refusal(&self) -> Option<ServerReply> {
        if self.from.is_none() {
            Some(ServerReply::new(503, "5.5.1", "MAIL first"))
        } else if self.to.is_empty() {
            Some(ServerReply::new(554, "5.5.1", "no valid recipients"))
        } else {
            None
        }
    }

    fn ehlo(&mut self, host: &str) {
        self.reset_transaction();
        self.helo = true;
        let s = &self.settings;
        let mut lines = vec![
            format!("{} greets {host}", s.hostname),
            "PIPELINING".to_owned(),
            format!("SIZE {}", s.max_message_size),
            "8BITMIME".to_owned(),
            "SMTPUTF8".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
            "CHUNKING".to_owned(),
        ];
        if s.starttls && !self.tls {
            lines.push("STARTTLS".to_owned());
        }
        // Passwords only over TLS when TLS is on offer: AUTH is not even advertised
        // before it (and refused with 538 if tried).
        if s.auth && self.user.is_none() && (self.tls || !s.starttls) {
            lines.push("AUTH PLAIN LOGIN".to_owned());
        }
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            self.output
                .extend_from_slice(format!("250{sep}{line}\r\n").as_bytes());
        }
    }

    fn auth(&mut self, mechanism: u64, initial: &str) -> Option<Event> {
        if !self.settings.auth {
            self.reply(502, "5.5.1", "AUTH is not available");
        } else if self.user.is_some() {
            self.reply(503, "5.5.1", "already authenticated");
        } else if self.from.is_some() {
            self.reply(503, "5.5.1", "not during a transaction");
        } else if self.settings.starttls && !self.tls {
            self.reply(538, "5.7.11", "encryption required: STARTTLS first");
        } else if mechanism == AUTH_PLAIN {
            if initial.is_empty() {
                self.reply(334, "", "");
                self.state = State::PlainResponse;
            } else {
                return self.plain(initial.as_bytes());
            }
        } else if mechanism == AUTH_LOGIN {
            if initial.is_empty() {
                self.reply(334, "", "VXNlcm5hbWU6");
                self.state = State::LoginUser;
            } else {
                return self.login_user(initial.as_bytes());
            }
        } else {
            self.reply(504, "5.5.4", "mechanism not supported (PLAIN, LOGIN)");
        }
        None
    }

    fn plain_response(&mut self, line: &[u8]) -> Option<Event> {
        self.state = State::Command;
        self.plain(trim_crlf(line))
    }

    fn plain(&mut self, encoded: &[u8]) -> Option<Event> {
        self.state = State::Command;
        if encoded == b"*" {
            self.reply(501, "5.0.0", "authentication cancelled");
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded);
        let Some((user, password)) = decoded.ok().and_then(|d| split_plain(&d)) else {
            self.reply(501, "5.5.2", "malformed AUTH PLAIN response");
            return None;
        };
        self.state = State::Waiting;
        Some(Event::Authenticate { user, password })
    }

    fn login_user(&mut self, line: &[u8]) -> Option<Event> {
        self.state = State::Command;
        let encoded = trim_crlf(line);
        if encoded == b"*" {
            self.reply(501, "5.0.0", "authentication cancelled");
            return None;
        }
        match decode_text(encoded) {
            Some(user) => {
                self.reply(334, "", "UGFzc3dvcmQ6");
                self.state = State::LoginPassword(user);
            }
            None => self.reply(501, "5.5.2", "malformed AUTH LOGIN response"),
        }
        None
    }

    fn login_password(&mut self, user: String, line: &[u8]) -> Option<Event> {
        self.state = State::Command;
        let encoded = trim_crlf(line);
        if encoded == b"*" {
            self.reply(501, "5.0.0", "authentication cancelled");
            return None;
        }
        match decode_text(encoded) {
            Some(password) => {
                self.state = State::Waiting;
                Some(Event::Authenticate { user, password })
            }
            None => {
                self.reply(501, "5.5.2", "malformed AUTH LOGIN response");
                None
            }
        }
    }

    fn finish_content(&mut self, content: Content) -> Option<Event> {
        self.state = State::Command;
        let (bytes, verdict) = content.finish();
        match verdict {
            Verdict::Fine => {
                self.state = State::Waiting;
                Some(Event::Message(self.envelope(bytes)))
            }
            Verdict::BareLineEnd => {
                self.reset_transaction();
                self.reply(
                    550,
                    "5.6.0",
                    "bare CR or LF in the message: lines must end with CRLF",
                );
                None
            }
            Verdict::TooBig => {
                self.reset_transaction();
                let text = format!(
                    "message larger than the limit of {} bytes",
                    self.settings.max_message_size
                );
                self.reply(552, "5.3.4", text);
                None
            }
        }
    }

    fn chunk_done(&mut self, last: bool) -> Option<Event> {
        self.state = State::Command;
        if let Some(refusal) = self.chunks_refused.clone() {
            self.send(&refusal);
            if last {
                self.chunks_refused = None;
            }
            return None;
        }
        if !last {
            let size = self.chunks.as_ref().map_or(0, Content::size);
            self.reply(250, "2.0.0", format!("{size} bytes received"));
            return None;
        }
        let content = self.chunks.take()?;
        self.finish_content(content)
    }

    fn envelope(&mut self, content: Vec<u8>) -> Envelope {
        Envelope {
            from: self.from.take().unwrap_or_default(),
            to: std::mem::take(&mut self.to),
            content,
            user: self.user.clone(),
        }
    }

    /// TLS is now active: the session starts over, waiting for EHLO.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.helo = false;
        self.user = None;
        self.reset_transaction();
        self.input.clear();
        self.state = State::Command;
    }

    /// The answer to [`Event::Authenticate`]: the user when the credentials are right.
    pub fn authenticated(&mut self, user: Option<String>) {
        self.state = State::Command;
        match user {
            Some(user) => {
                self.user = Some(user);
                self.reply(235, "2.7.0", "authentication succeeded");
            }
            None => {
                self.auth_failures += 1;
                self.reply(535, "5.7.8", "authentication credentials invalid");
                if self.auth_failures >= MAX_AUTH_FAILURES {
                    self.reply(421, "4.7.0", "too many failed authentication attempts");
                    self.state = State::Closing;
                }
            }
        }
    }

    /// How many AUTH attempts have failed on this connection.
    pub fn auth_failures(&self) -> u32 {
        self.auth_failures
    }

    /// The answer to [`Event::Mail`].
    pub fn mail_decided(&mut self, from: String, decision: Result<(), ServerReply>) {
        self.state = State::Command;
        match decision {
            Ok(()) => {
                // A new transaction: a refusal left by chunks sent before it is not its own.
                self.chunks = None;
                self.chunks_refused = None;
                self.from = Some(from);
                self.reply(250, "2.1.0", "sender OK");
            }
            Err(reply) => self.send(&reply),
        }
    }

    /// The answer to [`Event::Rcpt`].
    pub fn rcpt_decided(&mut self, to: String, decision: Result<(), ServerReply>) {
        self.state = State::Command;
        match decision {
            Ok(()) => {
                self.to.push(to);
                self.reply(250, "2.1.5", "recipient OK");
            }
            Err(reply) => self.send(&reply),
        }
    }

    /// The answer to [`Event::Message`]: the queue id when stored, or the refusal.
    pub fn stored(&mut self, result: Result<String, ServerReply>) {
        self.state = State::Command;
        self.reset_transaction();
        match result {
            Ok(id) => self.reply(250, "2.0.0", format!("queued as {id}")),
            Err(reply) => self.send(&reply),
        }
    }

    /// Ends the session with a 421 (timeout, shutdown): written by the listener before
    /// it closes.
    pub fn shut_down(&mut self, text: &'static str) {
        self.reply(421, "4.4.2", text);
        self.state = State::Closing;
    }
}

/// Whether a command line is a BDAT command (whatever its arguments).
fn is_bdat(line: &[u8]) -> bool {
    line.len() >= 5 && line[..4].eq_ignore_ascii_case(b"BDAT") && matches!(line[4], b' ' | b'\r')
}

/// Whether a BDAT line's chunk size has at most [`MAX_SIZE_DIGITS`] digits.
fn bdat_size_fits(line: &[u8]) -> bool {
    let size = line[4..]
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| b.is_ascii_digit())
        .count();
    size <= MAX_SIZE_DIGITS
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))
        .unwrap_or(line)
}

fn decode_text(encoded: &[u8]) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// `authzid NUL authcid NUL password` (RFC 4616); the authorisation identity, when
/// given, must be the user itself.
fn split_plain(decoded: &[u8]) -> Option<(String, String)> {
    let mut parts = decoded.split(|b| *b == 0);
    let authz = parts.next()?;
    let user = parts.next()?;
    let password = parts.next()?;
    if parts.next().is_some() || user.is_empty() || (!authz.is_empty() && authz != user) {
        return None;
    }
    Some((
        String::from_utf8(user.to_vec()).ok()?,
        String::from_utf8(password.to_vec()).ok()?,
    ))
}

fn syntax_reply(e: &smtp_proto::Error) -> ServerReply {
    use smtp_proto::Error as E;
    match e {
        E::UnknownCommand => ServerReply::new(500, "5.5.1", "command not recognised"),
        E::InvalidSenderAddress => ServerReply::new(501, "5.1.7", "bad sender address syntax"),
        E::InvalidRecipientAddress => {
            ServerReply::new(501, "5.1.3", "bad recipient address syntax")
        }
        E::SyntaxError { syntax } => ServerReply::new(501, "5.5.4", format!("syntax: {syntax}")),
        E::InvalidParameter { param } => {
            ServerReply::new(501, "5.5.4", format!("invalid parameter {param}"))
        }
        E::UnsupportedParameter { param } => {
            let shown: String = param.chars().take(40).collect();
            ServerReply::new(555, "5.5.4", format!("unsupported parameter {shown}"))
        }
        E::ResponseTooLong => ServerReply::new(500, "5.5.6", "line too long"),
        E::NeedsMoreData { .. } | E::InvalidResponse { .. } => {
            ServerReply::new(500, "5.5.2", "syntax error")
        }
    }
}

#[cfg(test)]
mod tests;
