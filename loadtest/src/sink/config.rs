//! [`SinkConfig`]: everything that shapes how the sink listens, what it advertises and how it
//! answers.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Configuration of a [`Sink`](crate::Sink). Start from [`SinkConfig::default()`] and change
/// the fields a test needs.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Addresses to listen on; one listener per address, all sharing state. Port 0 picks a free
    /// port (read the real one back with [`Sink::addrs`](crate::Sink::addrs)).
    /// Default: `[127.0.0.1:0]`.
    pub listen: Vec<SocketAddr>,
    /// Name used in the greeting, the EHLO reply, CRAM-MD5 challenges and the TLS certificate.
    /// Default: `"sink.test"`.
    pub hostname: String,
    /// TLS from the first byte (port-465 style); STARTTLS is then not advertised.
    /// Default: `false`.
    pub implicit_tls: bool,
    /// Advertise and accept STARTTLS. Default: `true`.
    pub starttls: bool,
    /// `Some((user, pass))`: advertise `AUTH PLAIN LOGIN CRAM-MD5` and require a successful AUTH
    /// before MAIL (`530 5.7.0` otherwise). AUTH is accepted with or without TLS: the client
    /// decides its policy, and [`Received::tls`](crate::Received::tls) records what happened.
    /// Default: `None`.
    pub auth: Option<(String, String)>,
    /// Advertise PIPELINING. Default: `true`.
    pub pipelining: bool,
    /// Advertise CHUNKING (BDAT). Default: `true`.
    pub chunking: bool,
    /// Advertise 8BITMIME. Default: `true`.
    pub eightbitmime: bool,
    /// Advertise SMTPUTF8. Default: `true`.
    pub smtputf8: bool,
    /// Advertise ENHANCEDSTATUSCODES. Replies always carry enhanced codes. Default: `true`.
    pub enhanced_status_codes: bool,
    /// Advertise DSN (and accept RET/ENVID/NOTIFY/ORCPT parameters). Default: `false`.
    pub dsn: bool,
    /// Largest accepted message, advertised as `SIZE n`. A larger `SIZE=` on MAIL or a larger
    /// body gets `552 5.3.4`. Default: 64 MiB.
    pub max_size: usize,
    /// Percentage (0–100) of RCPT attempts answered `451 4.3.0`, decided afresh per attempt.
    /// Default: `0.0`.
    pub tempfail_percent: f64,
    /// Percentage (0–100) of addresses answered `550 5.1.1`, decided by a hash of the address
    /// and [`seed`](Self::seed) so that retries get the same answer. Default: `0.0`.
    pub permfail_percent: f64,
    /// Seed for the random and hashed decisions above. Default: `1`.
    pub seed: u64,
    /// Delay injected before every flush of replies. Default: zero.
    pub reply_delay: Duration,
    /// Delay of the RCPT reply for `slow*` recipients. Default: 200 ms.
    pub slow_delay: Duration,
    /// Keep every accepted message in memory (see [`Sink::messages`](crate::Sink::messages)).
    /// Default: `false`.
    pub capture: bool,
    /// Write each accepted message to `DIR/<seq>.eml` and its envelope (`MAIL FROM:<..>` and
    /// `RCPT TO:<..>` lines) to `DIR/<seq>.env`. The directory is created if missing.
    /// Default: `None`.
    pub spool_dir: Option<PathBuf>,
    /// Count accepted deliveries per recipient address (see
    /// [`Sink::delivery_counts`](crate::Sink::delivery_counts)). Default: `false`.
    pub track_recipients: bool,
    /// Default `true`: a bare LF or bare CR in message content is answered `554 5.6.11`
    /// (counted in `bare_newlines`) instead of being accepted, and commands that arrive before
    /// the reply to the previous one when PIPELINING is not in effect are counted in
    /// `pipelining_violations`.
    pub strict: bool,
    /// Answer EHLO with `500 5.5.1 not recognized`, so the client must fall back to HELO; no
    /// extension is then in effect. Default: `false`.
    pub helo_only: bool,
    /// Accept STARTTLS, then answer the handshake with plain text and close, like a
    /// server with a broken TLS set-up. Default: `false`.
    pub broken_tls: bool,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))],
            hostname: "sink.test".to_owned(),
            implicit_tls: false,
            starttls: true,
            auth: None,
            pipelining: true,
            chunking: true,
            eightbitmime: true,
            smtputf8: true,
            enhanced_status_codes: true,
            dsn: false,
            max_size: 64 * 1024 * 1024,
            tempfail_percent: 0.0,
            permfail_percent: 0.0,
            seed: 1,
            reply_delay: Duration::ZERO,
            slow_delay: Duration::from_millis(200),
            capture: false,
            spool_dir: None,
            track_recipients: false,
            strict: true,
            helo_only: false,
            broken_tls: false,
        }
    }
}
