//! Session errors. Each names the phase it happened in; a refusal carries the reply.
//!
//! The questions callers ask (is it transient, is it the connection's fault) are
//! answered in [`crate::outcome`], the one place that classifies.

use std::io;

use super::reply::{EnhancedCode, Reply, ReplyCode, ReplyError};
use super::timeouts::Phase;

/// Something refused or broke during an SMTP session.
///
/// Cloneable, so that one transport failure can be the result of every command that
/// was in flight when it happened.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SmtpError {
    /// The server answered a command with a reply we did not want.
    #[error("{phase}: server replied {reply}")]
    Reply {
        /// The command's phase.
        phase: Phase,
        /// The unwanted reply as received: code, enhanced status code (if any) and text.
        reply: Reply,
    },
    /// No reply (or no progress) within the phase's timeout.
    #[error("{phase}: timed out")]
    Timeout {
        /// The phase that timed out.
        phase: Phase,
    },
    /// Connecting, reading or writing failed with an I/O error (the server closing the
    /// connection is the Closed variant instead).
    #[error("{phase}: {kind}: {message}")]
    Io {
        /// The step of the SMTP session (connect, EHLO, RCPT...) where the socket failed.
        phase: Phase,
        /// The I/O error's kind, e.g. `ConnectionRefused` or `ConnectionReset`.
        kind: io::ErrorKind,
        /// The I/O error's text, as its Display output gives it.
        message: String,
    },
    /// The server closed the connection.
    #[error("{phase}: connection closed by the server")]
    Closed {
        /// The step of the SMTP session (greeting, MAIL, DATA...) when the server hung up.
        phase: Phase,
    },
    /// The bytes from the server are not SMTP; the connection is unusable.
    #[error("{phase}: protocol error: {source}")]
    Protocol {
        /// The step of the SMTP session whose reply could not be parsed.
        phase: Phase,
        /// What was wrong.
        source: ReplyError,
    },
    /// The TLS handshake failed, or TLS is required and not offered.
    #[error("TLS: {0}")]
    Tls(String),
    /// AUTH could not be attempted (not offered, or only over TLS).
    #[error("AUTH: {0}")]
    Auth(String),
    /// The message was refused before anything was sent: a local decision with the
    /// reply a server would have given (5.3.4 too big, 5.6.3 8-bit, 5.6.7 UTF-8).
    #[error("refused locally: {0}")]
    Local(Reply),
    /// The session was already broken by an earlier failure.
    #[error("session is no longer usable")]
    Unusable,
}

impl SmtpError {
    pub(crate) fn io(phase: Phase, err: &io::Error) -> Self {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            return Self::Closed { phase };
        }
        Self::Io {
            phase,
            kind: err.kind(),
            message: err.to_string(),
        }
    }

    pub(crate) fn local(code: u16, enhanced: EnhancedCode, text: &str) -> Self {
        let code = ReplyCode::new(code).expect("local reply codes are valid");
        Self::Local(Reply::new(code, Some(enhanced), text))
    }

    /// The phase the error happened in, when it belongs to one.
    pub fn phase(&self) -> Option<Phase> {
        match self {
            Self::Reply { phase, .. }
            | Self::Timeout { phase }
            | Self::Io { phase, .. }
            | Self::Closed { phase }
            | Self::Protocol { phase, .. } => Some(*phase),
            Self::Tls(_) => Some(Phase::StartTls),
            Self::Auth(_) => Some(Phase::Auth),
            Self::Local(_) | Self::Unusable => None,
        }
    }

    /// The server's (or the local) reply, when there is one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Self::Reply { reply, .. } | Self::Local(reply) => Some(reply),
            _ => None,
        }
    }

    /// Whether this is a timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }
}
