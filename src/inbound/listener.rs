//! The socket side of an SMTP listener: accepts connections under a cap, runs a
//! [`Session`] on each (plain, then TLS after STARTTLS), answers its events with its
//! [`Policy`]'s decisions (submission or bounce intake), and times out idle clients. At
//! shutdown it stops accepting, lets messages being stored finish, and says 421 to the
//! rest.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::intake::Sender;
use super::users::Users;
use crate::smtp::server::{Envelope, Event, ServerReply, ServerSettings, Session};

/// What a listener decides and does with what it receives: submission and bounce
/// intake differ only in this.
pub trait Policy: Send + Sync + 'static {
    /// MAIL FROM by `sender` (`None`: neither authenticated nor trusted).
    fn mail(&self, sender: Option<&Sender>, from: &str) -> Result<(), ServerReply>;
    /// RCPT TO.
    fn rcpt(&self, sender: Option<&Sender>, to: &str) -> Result<(), ServerReply>;
    /// A complete message: the text after `250 2.0.0 queued as`, or the refusal.
    fn store(
        &self,
        sender: Option<&Sender>,
        envelope: Envelope,
    ) -> impl Future<Output = Result<String, ServerReply>> + Send;
}

/// How long a stop waits for connections to finish what they are storing.
const DRAIN: Duration = Duration::from_secs(10);

/// How long a failed AUTH waits before its 535 (the session closes after a few).
const AUTH_FAILURE_DELAY: Duration = Duration::from_secs(1);

/// Everything a listener's connections share.
pub struct Listener<P> {
    /// What the sessions offer.
    pub settings: Arc<ServerSettings>,
    /// STARTTLS, when a certificate is configured.
    pub tls: Option<TlsAcceptor>,
    /// Who may authenticate.
    pub users: Arc<Users>,
    /// Clients that may send without authenticating.
    pub trusted: Vec<IpNet>,
    /// Connections at once; more are told 421.
    pub max_connections: usize,
    /// How long a client may stay silent.
    pub timeout: Duration,
    /// Decisions and storage.
    pub intake: Arc<P>,
}

impl<P> std::fmt::Debug for Listener<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("settings", &self.settings)
            .field("tls", &self.tls.is_some())
            .field("trusted", &self.trusted)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl<P: Policy> Listener<P> {
    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Accepts on `socket` until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, socket: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(self.max_connections.max(1)));
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = socket.accept() => accepted,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            // Reap finished connections as we go, so the set stays small.
            while connections.try_join_next().is_some() {}
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an SMTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                let busy = Session::busy(&self.settings);
                connections.spawn(async move {
                    let mut stream = stream;
                    let _ = stream.write_all(&busy).await;
                });
                continue;
            };
            let this = Arc::clone(&self);
            let stop = shutdown.clone();
            connections.spawn(async move {
                this.connection(stream, peer, stop).await;
                drop(slot);
            });
        }
        drop(socket);
        if tokio::time::timeout(DRAIN, async {
            while connections.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("SMTP connections still open at stop were closed");
        }
    }

    async fn connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        mut stop: watch::Receiver<bool>,
    ) {
        let trusted = self.is_trusted(peer.ip());
        let mut session = Session::new(Arc::clone(&self.settings), false);
        let plain = match self
            .drive(&mut session, stream, peer.ip(), trusted, &mut stop)
            .await
        {
            Ok(Some(stream)) => stream,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "SMTP connection ended");
                return;
            }
        };
        let Some(acceptor) = &self.tls else {
            return;
        };
        match acceptor.accept(plain).await {
            Ok(tls) => {
                session.tls_started();
                if let Err(e) = self
                    .drive(&mut session, tls, peer.ip(), trusted, &mut stop)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "SMTP connection ended");
                }
            }
            Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        }
    }

    /// Runs the session on `stream` until it ends (`None`) or asks for TLS (the stream,
    /// its replies written).
    async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        session: &mut Session,
        mut stream: S,
        ip: IpAddr,
        trusted: bool,
        stop: &mut watch::Receiver<bool>,
    ) -> std::io::Result<Option<S>> {
        // Filled through its spare capacity: never zeroed (at thousands of connections
        // a second, zeroing a fresh buffer each time showed up as page faults).
        let mut buf = Vec::with_capacity(16 * 1024);
        loop {
            let sender = Sender::of(session.user(), ip, trusted);
            match session.next_event() {
                Event::NeedInput => {
                    write_out(session, &mut stream).await?;
                    buf.clear();
                    let read = tokio::select! {
                        read = tokio::time::timeout(self.timeout, stream.read_buf(&mut buf)) => read,
                        _ = stop.wait_for(|stop| *stop) => {
                            session.shut_down("shutting down; try again later");
                            continue;
                        }
                    };
                    match read {
                        Ok(Ok(0)) => return Ok(None),
                        Ok(Ok(_)) => session.feed(&buf),
                        Ok(Err(e)) => return Err(e),
                        Err(_) => session.shut_down("timeout; closing the connection"),
                    }
                }
                Event::StartTls => {
                    write_out(session, &mut stream).await?;
                    return Ok(Some(stream));
                }
                Event::Authenticate { user, password } => {
                    let users = Arc::clone(&self.users);
                    let check = user.clone();
                    let ok = tokio::task::spawn_blocking(move || users.verify(&check, &password))
                        .await
                        .unwrap_or(false);
                    if !ok {
                        tracing::info!(%ip, user, "SMTP authentication failed");
                        // As Postfix's smtpd_error_sleep_time: a guesser waits for each no.
                        tokio::time::sleep(AUTH_FAILURE_DELAY).await;
                    }
                    session.authenticated(ok.then_some(user));
                }
                Event::Mail { from, .. } => {
                    let decision = self.intake.mail(sender.as_ref(), &from);
                    session.mail_decided(from, decision);
                }
                Event::Rcpt { to } => {
                    let decision = self.intake.rcpt(sender.as_ref(), &to);
                    session.rcpt_decided(to, decision);
                }
                Event::Message(envelope) => {
                    let result = self.intake.store(sender.as_ref(), envelope).await;
                    session.stored(result);
                }
                Event::Close => {
                    write_out(session, &mut stream).await?;
                    let _ = stream.shutdown().await;
                    return Ok(None);
                }
            }
        }
    }
}

async fn write_out<S: AsyncWrite + Unpin>(
    session: &mut Session,
    stream: &mut S,
) -> std::io::Result<()> {
    let out = session.take_output();
    if !out.is_empty() {
        stream.write_all(&out).await?;
        stream.flush().await?;
    }
    Ok(())
}
