//! The SMTP client: a sans-IO core (replies, capabilities, commands, content
//! encoding) and the session that drives it over a connection.
//!
//! This module knows nothing of queues, templates or HTTP: it sends envelopes and
//! content and returns replies.
//!
//! - [`reply`]: the reply type and its incremental parser.
//! - [`capabilities`]: what an EHLO reply offers.
//! - [`command`]: commands and their encoding.
//! - [`body`]: CRLF normalisation, dot-stuffing and BDAT framing.
//! - [`timeouts`]: per-phase timeouts.
//! - [`error`]: session errors.
//! - [`tls`]: TLS policy and client configurations.
//! - [`dane`]: certificates checked against TLSA records (RFC 7672).
//! - [`auth`]: SASL encodings.
//! - [`connection`]: the socket with its buffers.
//! - [`session`]: greeting, EHLO, STARTTLS, AUTH, simple commands.
//! - [`transaction`]: pipelined MAIL/RCPT/DATA and BDAT.

pub mod auth;
pub mod body;
pub mod capabilities;
pub mod command;
pub mod connection;
pub mod dane;
pub mod error;
pub mod reply;
pub mod server;
pub mod session;
pub mod timeouts;
pub mod tls;
pub mod transaction;

pub use auth::Credentials;
pub use capabilities::{Capabilities, Mechanism};
pub use command::{Command, HeloName};
pub use error::SmtpError;
pub use reply::{EnhancedCode, Reply, ReplyCode, ReplyParser};
pub use session::{Session, SessionConfig, Timings, Verification};
pub use timeouts::{Phase, Timeouts};
pub use tls::{TlsConnectors, TlsPolicy};
pub use transaction::{Exchange, RecipientResult, Transaction};

#[cfg(test)]
mod session_tests;
