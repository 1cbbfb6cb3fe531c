//! What happens to accepted messages: the in-memory capture ([`Received`]), per-recipient
//! delivery counts, and the optional spool directory.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::behaviour::lock;

/// One accepted message, as captured when [`SinkConfig::capture`](crate::SinkConfig::capture)
/// is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The reverse path (empty for the null sender `<>`).
    pub mail_from: String,
    /// The MAIL parameters exactly as sent (e.g. `SIZE=1234`, `BODY=8BITMIME`).
    pub mail_params: Vec<String>,
    /// The accepted recipients, in RCPT order.
    pub rcpt_to: Vec<String>,
    /// The content as the client meant it: dot-stuffing removed and without the terminating
    /// `.\r\n` (DATA), or the concatenated chunks (BDAT).
    pub data: Vec<u8>,
    /// Whether TLS was active when the message was received.
    pub tls: bool,
    /// The user that authenticated on this connection, if any.
    pub authenticated: Option<String>,
    /// Whether the message came with BDAT (CHUNKING) rather than DATA.
    pub bdat: bool,
    /// The domain given in EHLO or HELO.
    pub helo: String,
    /// The client's address and port: which source address the message came from.
    pub peer: Option<std::net::SocketAddr>,
}

/// Keeps track of accepted messages. Shared by all connections of a sink.
#[derive(Debug)]
pub(crate) struct Store {
    capture: bool,
    track_recipients: bool,
    spool_dir: Option<PathBuf>,
    next_seq: AtomicU64,
    messages: Mutex<Vec<Received>>,
    delivery_counts: Mutex<HashMap<String, u64>>,
}

impl Store {
    pub(super) fn new(capture: bool, track_recipients: bool, spool_dir: Option<PathBuf>) -> Self {
        Self {
            capture,
            track_recipients,
            spool_dir,
            next_seq: AtomicU64::new(1),
            messages: Mutex::new(Vec::new()),
            delivery_counts: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the content of messages must be kept (capture or spool).
    pub(super) fn needs_content(&self) -> bool {
        self.capture || self.spool_dir.is_some()
    }

    /// Records an accepted message and returns its sequence number (also its queue id and
    /// spool file name). Fails only when the spool cannot be written; the message then counts
    /// as not accepted.
    pub(super) async fn accept(&self, message: Received) -> std::io::Result<u64> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        if let Some(dir) = &self.spool_dir {
            let mut envelope = String::new();
            let _ = writeln!(envelope, "MAIL FROM:<{}>", message.mail_from);
            for rcpt in &message.rcpt_to {
                let _ = writeln!(envelope, "RCPT TO:<{rcpt}>");
            }
            tokio::fs::write(dir.join(format!("{seq}.eml")), &message.data).await?;
            tokio::fs::write(dir.join(format!("{seq}.env")), envelope).await?;
        }
        if self.track_recipients {
            let mut counts = lock(&self.delivery_counts);
            for rcpt in &message.rcpt_to {
                *counts.entry(rcpt.clone()).or_insert(0) += 1;
            }
        }
        if self.capture {
            lock(&self.messages).push(message);
        }
        Ok(seq)
    }

    /// Captured messages in arrival order.
    pub(super) fn messages(&self) -> Vec<Received> {
        lock(&self.messages).clone()
    }

    /// Accepted deliveries per recipient address.
    pub(super) fn delivery_counts(&self) -> HashMap<String, u64> {
        lock(&self.delivery_counts).clone()
    }
}
