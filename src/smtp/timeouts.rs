//! Per-phase timeouts, with the defaults of RFC 5321 section 4.5.3.2.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A phase of an SMTP session; every timeout and every error names one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// TCP connect.
    Connect,
    /// Waiting for the 220 greeting (after the TLS handshake for implicit TLS).
    Greeting,
    /// EHLO.
    Ehlo,
    /// HELO, after EHLO was refused.
    Helo,
    /// STARTTLS command and the TLS handshake (also implicit TLS).
    StartTls,
    /// AUTH exchange.
    Auth,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA, up to the 354.
    Data,
    /// Writing a block of content.
    DataBlock,
    /// The final reply after the end of data (or after BDAT LAST).
    DataEnd,
    /// RSET.
    Rset,
    /// NOOP.
    Noop,
    /// VRFY.
    Vrfy,
    /// EXPN.
    Expn,
    /// QUIT.
    Quit,
}

impl Phase {
    /// A short lowercase name for logs, errors and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Greeting => "greeting",
            Self::Ehlo => "ehlo",
            Self::Helo => "helo",
            Self::StartTls => "starttls",
            Self::Auth => "auth",
            Self::Mail => "mail",
            Self::Rcpt => "rcpt",
            Self::Data => "data",
            Self::DataBlock => "data_block",
            Self::DataEnd => "data_end",
            Self::Rset => "rset",
            Self::Noop => "noop",
            Self::Vrfy => "vrfy",
            Self::Expn => "expn",
            Self::Quit => "quit",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Timeouts for each phase; `[smtp.timeouts]` in the configuration. Values are
/// durations such as `"30s"` or `"5m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// TCP connect. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// The 220 greeting. Default 5 min (RFC 5321).
    #[serde(with = "humantime_serde")]
    pub greeting: Duration,
    /// EHLO and HELO replies. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub ehlo: Duration,
    /// STARTTLS reply and the TLS handshake. Default 2 min.
    #[serde(with = "humantime_serde")]
    pub starttls: Duration,
    /// Each step of AUTH. Default 2 min.
    #[serde(with = "humantime_serde")]
    pub auth: Duration,
    /// MAIL reply. Default 5 min (RFC 5321).
    #[serde(with = "humantime_serde")]
    pub mail: Duration,
    /// RCPT reply. Default 5 min (RFC 5321).
    #[serde(with = "humantime_serde")]
    pub rcpt: Duration,
    /// DATA reply (the 354). Default 2 min (RFC 5321).
    #[serde(with = "humantime_serde")]
    pub data: Duration,
    /// Each write of content. Default 3 min (RFC 5321).
    #[serde(with = "humantime_serde")]
    pub data_block: Duration,
    /// The reply after the final dot or BDAT LAST. Default 10 min (RFC 5321).
    #[serde(with = "humantime_serde")]
    pub data_end: Duration,
    /// RSET, NOOP, VRFY and EXPN replies. Default 2 min.
    #[serde(with = "humantime_serde")]
    pub command: Duration,
    /// QUIT reply. Default 10 s: nothing depends on it.
    #[serde(with = "humantime_serde")]
    pub quit: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Self {
            connect: Duration::from_secs(30),
            greeting: minutes(5),
            ehlo: minutes(5),
            starttls: minutes(2),
            auth: minutes(2),
            mail: minutes(5),
            rcpt: minutes(5),
            data: minutes(2),
            data_block: minutes(3),
            data_end: minutes(10),
            command: minutes(2),
            quit: Duration::from_secs(10),
        }
    }
}

impl Timeouts {
    /// The timeout for one phase.
    pub fn for_phase(&self, phase: Phase) -> Duration {
        match phase {
            Phase::Connect => self.connect,
            Phase::Greeting => self.greeting,
            Phase::Ehlo | Phase::Helo => self.ehlo,
            Phase::StartTls => self.starttls,
            Phase::Auth => self.auth,
            Phase::Mail => self.mail,
            Phase::Rcpt => self.rcpt,
            Phase::Data => self.data,
            Phase::DataBlock => self.data_block,
            Phase::DataEnd => self.data_end,
            Phase::Rset | Phase::Noop | Phase::Vrfy | Phase::Expn => self.command,
            Phase::Quit => self.quit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_rfc5321() {
        let t = Timeouts::default();
        assert_eq!(t.for_phase(Phase::Mail), Duration::from_secs(300));
        assert_eq!(t.for_phase(Phase::Data), Duration::from_secs(120));
        assert_eq!(t.for_phase(Phase::DataBlock), Duration::from_secs(180));
        assert_eq!(t.for_phase(Phase::DataEnd), Duration::from_secs(600));
    }

    #[test]
    fn reads_partial_config_with_human_durations() {
        let t: Timeouts =
            serde_json::from_str(r#"{"connect": "2s", "data_end": "1m 30s"}"#).unwrap();
        assert_eq!(t.connect, Duration::from_secs(2));
        assert_eq!(t.data_end, Duration::from_secs(90));
        assert_eq!(t.rcpt, Timeouts::default().rcpt);
        assert!(serde_json::from_str::<Timeouts>(r#"{"conect": "2s"}"#).is_err());
    }
}
