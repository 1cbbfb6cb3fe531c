//! The engine's sections of the configuration: `[smtp]` and `[limits]`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rate::Rate;
use crate::route::{RelayConfig, RelayTls};
use crate::smtp::{Credentials, HeloName, SessionConfig, Timeouts, TlsConnectors, TlsPolicy};

/// `[smtp]`: how sessions are opened and pooled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// The name given in EHLO. Default: this machine's host name.
    pub helo_name: String,
    /// The port MX hosts are reached on. Default 25; tests point it at a sink.
    pub port: u16,
    /// STARTTLS policy. Default `opportunistic`.
    pub tls: TlsPolicy,
    /// Extra trust roots (PEM) for `verify`. Default none.
    pub ca_file: Option<PathBuf>,
    /// Most connections open to one site at once. Default 20.
    pub max_connections_per_site: usize,
    /// Most connections open at once, all sites together. Default 1,000.
    pub max_connections: usize,
    /// Messages sent on one connection before it is closed. Default 1000.
    pub max_messages_per_connection: u64,
    /// Use BDAT when offered. Default true.
    pub prefer_chunking: bool,
    /// Messages handed to one connection in one go (pipelined) to begin with, and
    /// whenever the round trip is short. Default 16.
    pub batch_size: usize,
    /// The most a connection's window may grow to while the round trip is long and the
    /// server keeps up (never below `batch_size`). Default 64.
    pub max_pipeline: usize,
    /// Close pooled connections idle this long. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// After a throttling reply (421, 4.7.x rate), how long the site pauses.
    /// Default 30 s.
    #[serde(with = "humantime_serde")]
    pub throttle_pause: Duration,
    /// After the pause, one more connection is allowed every this long until the
    /// limit is back. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub throttle_step: Duration,
    /// Local address to connect from. Default: chosen by the system.
    pub local_address: Option<IpAddr>,
    /// Per-phase timeouts (RFC 5321 defaults).
    pub timeouts: Timeouts,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            helo_name: default_helo_name(),
            port: 25,
            tls: TlsPolicy::Opportunistic,
            ca_file: None,
            max_connections_per_site: 20,
            max_connections: 1000,
            max_messages_per_connection: 1000,
            prefer_chunking: true,
            batch_size: 16,
            max_pipeline: 64,
            idle_timeout: Duration::from_secs(30),
            throttle_pause: Duration::from_secs(30),
            throttle_step: Duration::from_secs(10),
            local_address: None,
            timeouts: Timeouts::default(),
        }
    }
}

/// The host name of this machine, or `localhost` when it cannot be read.
fn default_helo_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| HeloName::new(s).is_ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `[limits]`: message rates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// All messages together. Default `"0"` (unlimited).
    pub global: Rate,
    /// Each site (MX set). Default unlimited.
    pub per_site: Rate,
    /// Per recipient domain, e.g. `"gmail.com" = "100/s"`.
    pub domains: HashMap<String, Rate>,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An invalid value, named.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending key in dotted form, e.g. `smtp.helo_name` or `smtp.ca_file`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Session configurations for direct delivery and for the relay.
#[derive(Clone, Debug)]
pub struct SessionConfigs {
    /// For MX hosts.
    pub direct: Arc<SessionConfig>,
    /// For MX hosts whose domain demands verified TLS (an MTA-STS policy in `enforce`
    /// mode): the certificate checked against the MX host name, or nothing is sent.
    pub verified: Arc<SessionConfig>,
    /// For the smarthost.
    pub relay: Arc<SessionConfig>,
}

impl SmtpConfig {
    /// The window's start (`batch_size`) and its most (`max_pipeline`, never below the
    /// start), both at least 1.
    pub fn window_limits(&self) -> (usize, usize) {
        let start = self.batch_size.max(1);
        (start, self.max_pipeline.max(start))
    }

    /// Builds the session configurations (TLS roots are read here, once).
    pub fn session_configs(&self, relay: &RelayConfig) -> Result<SessionConfigs, ConfigError> {
        let helo = HeloName::new(&self.helo_name).map_err(|e| ConfigError::Invalid {
            field: "smtp.helo_name",
            message: e.0,
        })?;
        let ca = self
            .ca_file
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty());
        let connectors = TlsConnectors::new(ca).map_err(|e| ConfigError::Invalid {
            field: "smtp.ca_file",
            message: e.to_string(),
        })?;
        for (field, value) in [
            (
                "smtp.max_connections_per_site",
                self.max_connections_per_site,
            ),
            ("smtp.max_connections", self.max_connections),
        ] {
            if value == 0 {
                let message = "must be at least 1".to_owned();
                return Err(ConfigError::Invalid { field, message });
            }
        }
        let mut direct = SessionConfig::new(helo, connectors);
        direct.tls = self.tls;
        direct.prefer_chunking = self.prefer_chunking;
        direct.max_in_flight = self.window_limits().1;
        direct.timeouts = self.timeouts;
        direct.local_addr = self.local_address;
        let mut relayed = direct.clone();
        // A relay gets our mail and, with AUTH, our credentials: it is verified unless
        // the configuration says otherwise in so many words.
        let relay_policy = if relay.tls_verify {
            TlsPolicy::Verify
        } else {
            TlsPolicy::Required
        };
        match relay.tls {
            RelayTls::Starttls => relayed.tls = relay_policy,
            RelayTls::Implicit => {
                relayed.implicit_tls = true;
                relayed.tls = relay_policy;
            }
            RelayTls::None => {
                relayed.tls = TlsPolicy::Disabled;
                // `tls = "none"` with credentials is the explicit choice to send them in clear.
                relayed.auth_without_tls = true;
            }
        }
        if relay.is_enabled() && !relay.tls_verify && relay.tls != RelayTls::None {
            tracing::warn!(
                relay = %relay.host,
                "relay.tls_verify = false: the relay's certificate is not checked; mail and credentials go to whoever answers"
            );
        }
        if !relay.username.is_empty() {
            relayed.credentials = Some(Credentials::new(&relay.username, &relay.password));
        }
        let mut verified = direct.clone();
        verified.tls = TlsPolicy::Verify;
        Ok(SessionConfigs {
            verified: Arc::new(verified),
            direct: Arc::new(direct),
            relay: Arc::new(relayed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_contract_keys() {
        let smtp: SmtpConfig = serde_json::from_str(
            r#"{"helo_name": "mail.example.com", "port": 2525, "tls": "required",
                "max_connections_per_site": 5, "max_messages_per_connection": 10,
                "prefer_chunking": false, "timeouts": {"connect": "2s"}}"#,
        )
        .unwrap();
        assert_eq!(
            (smtp.port, smtp.tls, smtp.max_connections_per_site),
            (2525, TlsPolicy::Required, 5)
        );
        assert_eq!(smtp.timeouts.connect, Duration::from_secs(2));
        assert!(serde_json::from_str::<SmtpConfig>(r#"{"prot": 25}"#).is_err());
        let limits: LimitsConfig =
            serde_json::from_str(r#"{"global": "500/s", "domains": {"gmail.com": "100/s"}}"#)
                .unwrap();
        assert!(limits.global.is_limited() && !limits.per_site.is_limited());
        assert!(limits.domains["gmail.com"].is_limited());
    }

    #[test]
    fn relay_modes_shape_the_session() {
        let smtp = SmtpConfig {
            helo_name: "volley.test".into(),
            ..SmtpConfig::default()
        };
        let relay = RelayConfig {
            host: "127.0.0.1:2525".into(),
            tls: RelayTls::None,
            username: "u".into(),
            password: "p".into(),
            ..RelayConfig::default()
        };
        let configs = smtp.session_configs(&relay).unwrap();
        assert_eq!(configs.relay.tls, TlsPolicy::Disabled);
        assert!(configs.relay.auth_without_tls && configs.relay.credentials.is_some());
        assert!(configs.direct.credentials.is_none());
        let relay = RelayConfig {
            tls: RelayTls::Implicit,
            ..relay
        };
        let configs = smtp.session_configs(&relay).unwrap();
        assert!(configs.relay.implicit_tls && !configs.relay.auth_without_tls);
        assert_eq!(
            configs.relay.tls,
            TlsPolicy::Verify,
            "relays are verified by default"
        );
        let insecure = RelayConfig {
            tls: RelayTls::Starttls,
            tls_verify: false,
            ..relay.clone()
        };
        let configs = smtp.session_configs(&insecure).unwrap();
        assert_eq!(
            configs.relay.tls,
            TlsPolicy::Required,
            "the explicit opt-out"
        );
        let bad = SmtpConfig {
            helo_name: "bad name".into(),
            ..smtp
        };
        assert!(
            bad.session_configs(&relay)
                .unwrap_err()
                .to_string()
                .contains("smtp.helo_name")
        );
    }
}
