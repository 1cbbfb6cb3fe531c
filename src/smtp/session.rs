//! An SMTP client session: connect, greeting, EHLO (HELO fallback), STARTTLS or
//! implicit TLS, AUTH, and the simple commands. Mail transactions are in
//! [`super::transaction`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

use super::auth::{self, Credentials};
use super::capabilities::{Capabilities, Mechanism};
use super::command::{Argument, Command, HeloName};
use super::connection::Connection;
use super::error::SmtpError;
use super::reply::Reply;
use super::timeouts::{Phase, Timeouts};
use super::tls::{TlsConnectors, TlsPolicy, server_name};

/// Everything a session needs to know; shared by all sessions to one site.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The name sent in EHLO/HELO.
    pub helo_name: HeloName,
    /// STARTTLS policy.
    pub tls: TlsPolicy,
    /// TLS from the first byte (port 465) instead of STARTTLS.
    pub implicit_tls: bool,
    /// The TLS client configurations.
    pub connectors: TlsConnectors,
    /// AUTH credentials (relays); `None` for direct delivery.
    pub credentials: Option<Credentials>,
    /// Allow AUTH over an unencrypted connection. Off unless the config says so.
    pub auth_without_tls: bool,
    /// Use only this SASL mechanism; `None` picks the best one offered.
    pub auth_mechanism: Option<Mechanism>,
    /// Use BDAT when CHUNKING is offered (`[smtp] prefer_chunking`).
    pub prefer_chunking: bool,
    /// Most BDAT transactions written in one go.
    pub max_in_flight: usize,
    /// Per-phase timeouts.
    pub timeouts: Timeouts,
    /// Local address to connect from.
    pub local_addr: Option<IpAddr>,
}

impl SessionConfig {
    /// A configuration with the documented defaults: opportunistic TLS, no AUTH,
    /// BDAT preferred, 16 BDAT transactions in flight, RFC 5321 timeouts.
    pub fn new(helo_name: HeloName, connectors: TlsConnectors) -> Self {
        Self {
            helo_name,
            tls: TlsPolicy::Opportunistic,
            implicit_tls: false,
            connectors,
            credentials: None,
            auth_without_tls: false,
            auth_mechanism: None,
            prefer_chunking: true,
            max_in_flight: 16,
            timeouts: Timeouts::default(),
            local_addr: None,
        }
    }
}

/// What a VRFY or EXPN answer says (RFC 5321 section 3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// 250: the mailbox exists.
    Valid,
    /// 251: not local, will forward.
    WillForward,
    /// 252: cannot verify, but will accept and try.
    CannotVerify,
    /// 502 or 500: the server does not do VRFY/EXPN.
    NotImplemented,
    /// 550, 551 or 553: no such mailbox.
    NoSuchUser,
    /// Anything else (4xx, policy refusals).
    Other,
}

impl Verification {
    /// Reads a VRFY/EXPN reply.
    pub fn from_reply(reply: &Reply) -> Self {
        match reply.code().get() {
            250 => Self::Valid,
            251 => Self::WillForward,
            252 => Self::CannotVerify,
            500 | 502 | 504 => Self::NotImplemented,
            550 | 551 | 553 => Self::NoSuchUser,
            _ => Self::Other,
        }
    }
}

/// How long each step of opening the session took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// TCP connect (zero when the stream was handed in).
    pub connect: Duration,
    /// TLS handshake, implicit or after STARTTLS.
    pub tls: Option<Duration>,
    /// EHLO/HELO round trips (both of them around STARTTLS).
    pub ehlo: Duration,
}

/// An established session, ready for mail transactions.
pub struct Session<S> {
    pub(super) conn: Connection<S>,
    pub(super) config: Arc<SessionConfig>,
    pub(super) caps: Capabilities,
    pub(super) greeting: Reply,
    /// A transport failure, a protocol error or a 421: nothing more may be sent.
    pub(super) broken: bool,
    /// The last transaction ended before its data: RSET before the next MAIL.
    pub(super) needs_rset: bool,
    pub(super) transactions: u64,
    /// The round trips of the last pipelined send.
    pub(super) exchange: super::transaction::Exchange,
    authenticated: bool,
    timings: Timings,
    /// The local end of the socket, when this session connected it.
    local: Option<SocketAddr>,
}

impl<S> std::fmt::Debug for Session<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("conn", &self.conn)
            .field("caps", &self.caps)
            .field("broken", &self.broken)
            .field("transactions", &self.transactions)
            .finish_non_exhaustive()
    }
}

impl Session<TcpStream> {
    /// Connects to `addr` (timeout `connect`, from `local_addr` when set) and
    /// establishes the session. `host` is the server's name, for TLS.
    pub async fn connect(
        addr: SocketAddr,
        host: &str,
        config: Arc<SessionConfig>,
    ) -> Result<Self, SmtpError> {
        let io_err = |e: std::io::Error| SmtpError::io(Phase::Connect, &e);
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        let socket = socket.map_err(io_err)?;
        if let Some(local) = config.local_addr {
            socket.bind(SocketAddr::new(local, 0)).map_err(io_err)?;
        }
        let started = Instant::now();
        let stream = match tokio::time::timeout(config.timeouts.connect, socket.connect(addr)).await
        {
            Err(_) => {
                return Err(SmtpError::Timeout {
                    phase: Phase::Connect,
                });
            }
            Ok(result) => result.map_err(io_err)?,
        };
        // Pipelined groups are written whole; Nagle would only delay the last segment.
        stream.set_nodelay(true).map_err(io_err)?;
        let connect = started.elapsed();
        let local = stream.local_addr().ok();
        let mut session = Self::establish(stream, host, config).await?;
        session.timings.connect = connect;
        session.local = local;
        Ok(session)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Runs the opening of a session over a connected stream: implicit TLS, greeting,
    /// EHLO (HELO fallback), STARTTLS and EHLO again, AUTH.
    pub async fn establish(
        stream: S,
        host: &str,
        config: Arc<SessionConfig>,
    ) -> Result<Self, SmtpError> {
        let mut conn = Connection::new(stream, config.timeouts);
        let mut timings = Timings::default();
        if config.implicit_tls {
            let name = server_name(host).map_err(SmtpError::Tls)?;
            let started = Instant::now();
            conn.start_tls(config.connectors.for_policy(config.tls), name)
                .await?;
            timings.tls = Some(started.elapsed());
        }
        let greeting = conn.read_reply(Phase::Greeting).await?;
        if !greeting.is_positive() {
            return Err(SmtpError::Reply {
                phase: Phase::Greeting,
                reply: greeting,
            });
        }
        let mut session = Self {
            conn,
            config,
            caps: Capabilities::default(),
            greeting,
            broken: false,
            needs_rset: false,
            transactions: 0,
            exchange: super::transaction::Exchange::default(),
            authenticated: false,
            timings,
            local: None,
        };
        session.hello().await?;
        session.maybe_start_tls(host).await?;
        if session.config.credentials.is_some() {
            session.authenticate().await?;
        }
        Ok(session)
    }

    /// EHLO, and HELO when the server does not know EHLO.
    async fn hello(&mut self) -> Result<(), SmtpError> {
        let started = Instant::now();
        let result = self.hello_inner().await;
        self.timings.ehlo += started.elapsed();
        result
    }

    async fn hello_inner(&mut self) -> Result<(), SmtpError> {
        let config = Arc::clone(&self.config);
        let reply = self
            .command(Command::Ehlo(&config.helo_name), Phase::Ehlo)
            .await?;
        if reply.is_positive() {
            self.caps = Capabilities::from_ehlo(&reply);
            return Ok(());
        }
        if !matches!(reply.code().get(), 500 | 502 | 504 | 550) {
            return Err(SmtpError::Reply {
                phase: Phase::Ehlo,
                reply,
            });
        }
        let reply = self
            .command(Command::Helo(&config.helo_name), Phase::Helo)
            .await?;
        if !reply.is_positive() {
            return Err(SmtpError::Reply {
                phase: Phase::Helo,
                reply,
            });
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    async fn maybe_start_tls(&mut self, host: &str) -> Result<(), SmtpError> {
        let policy = self.config.tls;
        if self.conn.is_tls() || policy == TlsPolicy::Disabled {
            return Ok(());
        }
        if !self.caps.has(Capabilities::STARTTLS) {
            if policy.requires_tls() {
                return Err(SmtpError::Tls("the server does not offer STARTTLS".into()));
            }
            return Ok(());
        }
        let reply = self.command(Command::StartTls, Phase::StartTls).await?;
        if reply.code().get() != 220 {
            if policy.requires_tls() {
                return Err(SmtpError::Reply {
                    phase: Phase::StartTls,
                    reply,
                });
            }
            return Ok(());
        }
        let name = server_name(host).map_err(SmtpError::Tls)?;
        let connectors = self.config.connectors.clone();
        let started = Instant::now();
        if let Err(e) = self
            .conn
            .start_tls(connectors.for_policy(policy), name)
            .await
        {
            self.broken = true;
            return Err(e);
        }
        self.timings.tls = Some(started.elapsed());
        // RFC 3207: forget everything learned before TLS and say EHLO again.
        self.hello().await
    }

    async fn authenticate(&mut self) -> Result<(), SmtpError> {
        let Some(creds) = self.config.credentials.clone() else {
            return Ok(());
        };
        let encrypted = self.conn.is_tls();
        if !encrypted && !self.config.auth_without_tls {
            return Err(SmtpError::Auth(
                "refusing to send credentials over an unencrypted connection".into(),
            ));
        }
        let Some(mechanism) = auth::choose(&self.caps, encrypted) else {
            return Err(SmtpError::Auth(
                "the server offers no PLAIN, LOGIN or CRAM-MD5".into(),
            ));
        };
        let reply = match mechanism {
            Mechanism::Plain => {
                let initial = auth::plain(&creds);
                let reply = self
                    .command(Command::Auth(mechanism, Some(&initial)), Phase::Auth)
                    .await?;
                if reply.code().get() == 334 {
                    self.command(Command::AuthResponse(&initial), Phase::Auth)
                        .await?
                } else {
                    reply
                }
            }
            Mechanism::Login => {
                let mut reply = self
                    .command(Command::Auth(mechanism, None), Phase::Auth)
                    .await?;
                for answer in [&creds.username, &creds.password] {
                    if reply.code().get() != 334 {
                        break;
                    }
                    let line = auth::login_line(answer);
                    reply = self
                        .command(Command::AuthResponse(&line), Phase::Auth)
                        .await?;
                }
                reply
            }
            Mechanism::CramMd5 => {
                let reply = self
                    .command(Command::Auth(mechanism, None), Phase::Auth)
                    .await?;
                if reply.code().get() != 334 {
                    reply
                } else if let Some(answer) = auth::cram_md5(&creds, reply.text()) {
                    self.command(Command::AuthResponse(&answer), Phase::Auth)
                        .await?
                } else {
                    // Cancel the exchange (RFC 4954 section 4) and report the bad challenge.
                    self.command(Command::AuthResponse("*"), Phase::Auth)
                        .await?;
                    return Err(SmtpError::Auth(
                        "the CRAM-MD5 challenge is not base64".into(),
                    ));
                }
            }
        };
        if reply.code().get() != 235 {
            return Err(SmtpError::Reply {
                phase: Phase::Auth,
                reply,
            });
        }
        self.authenticated = true;
        Ok(())
    }

    /// Sends one command and reads its reply, whatever its code. A transport error,
    /// a protocol error or a 421 makes the session unusable.
    pub(super) async fn command(
        &mut self,
        command: Command<'_>,
        phase: Phase,
    ) -> Result<Reply, SmtpError> {
        if self.broken {
            return Err(SmtpError::Unusable);
        }
        command.encode(self.conn.wbuf());
        if let Err(e) = self.conn.flush(phase).await {
            self.broken = true;
            return Err(e);
        }
        self.read(phase).await
    }

    /// Reads one reply, marking the session broken on failure or 421.
    pub(super) async fn read(&mut self, phase: Phase) -> Result<Reply, SmtpError> {
        match self.conn.read_reply(phase).await {
            Ok(reply) => {
                if reply.code().get() == 421 {
                    self.broken = true;
                }
                Ok(reply)
            }
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// What the server advertised in its last EHLO.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// The 220 greeting.
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    /// How long opening the session took, step by step.
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }

    /// The TLS policy the session was opened under.
    pub fn tls_policy(&self) -> TlsPolicy {
        self.config.tls
    }

    /// The local address and port of the connection (the source address mail left
    /// from), when the session connected the socket itself.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// Whether AUTH succeeded.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Whether the session can carry more transactions (no transport failure, no
    /// protocol error, no 421). A pool takes back only usable sessions.
    pub fn is_usable(&self) -> bool {
        !self.broken
    }

    /// Transactions attempted on this connection.
    pub fn transactions(&self) -> u64 {
        self.transactions
    }

    /// RSET: abandon any transaction.
    pub async fn rset(&mut self) -> Result<Reply, SmtpError> {
        let reply = self.command(Command::Rset, Phase::Rset).await?;
        self.needs_rset = !reply.is_positive();
        Ok(reply)
    }

    /// NOOP: checks that the server is still there.
    pub async fn noop(&mut self) -> Result<Reply, SmtpError> {
        self.command(Command::Noop, Phase::Noop).await
    }

    /// VRFY: asks whether a mailbox exists. Delivery never needs it.
    pub async fn vrfy(&mut self, who: &str) -> Result<(Verification, Reply), SmtpError> {
        let arg = Argument::new(who).map_err(bad_argument)?;
        let reply = self.command(Command::Vrfy(&arg), Phase::Vrfy).await?;
        Ok((Verification::from_reply(&reply), reply))
    }

    /// EXPN: asks for a mailing list's members. Delivery never needs it.
    pub async fn expn(&mut self, list: &str) -> Result<(Verification, Reply), SmtpError> {
        let arg = Argument::new(list).map_err(bad_argument)?;
        let reply = self.command(Command::Expn(&arg), Phase::Expn).await?;
        Ok((Verification::from_reply(&reply), reply))
    }

    /// QUIT and close. Errors are ignored: the session is over either way.
    pub async fn quit(mut self) {
        if !self.broken {
            let _ = self.command(Command::Quit, Phase::Quit).await;
        }
        self.conn.shutdown().await;
    }
}

/// A bad VRFY/EXPN argument becomes a local 501 syntax refusal.
fn bad_argument(err: super::command::InvalidArgument) -> SmtpError {
    SmtpError::local(501, super::reply::EnhancedCode::new(5, 5, 4), &err.0)
}
