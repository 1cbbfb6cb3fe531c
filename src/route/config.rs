//! The routing sections of the configuration: `[dns]`, `[relay]`, `[security]`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[dns]`: which resolver to ask.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers as `ip:port`; empty uses the system's resolver. Default empty.
    pub nameservers: Vec<SocketAddr>,
    /// Cached domains at most. Default 50,000.
    pub cache_size: usize,
    /// Lookups in flight at most; a campaign over 100,000 new domains waits for a
    /// turn instead of flooding the resolver. Default 64.
    pub max_lookups: usize,
}

impl DnsConfig {
    /// The cache size, with its default when unset.
    pub fn cache_capacity(&self) -> usize {
        if self.cache_size == 0 {
            50_000
        } else {
            self.cache_size
        }
    }

    /// The lookup concurrency, with its default when unset.
    pub fn lookup_capacity(&self) -> usize {
        if self.max_lookups == 0 {
            64
        } else {
            self.max_lookups
        }
    }
}

/// How to speak TLS to the relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    /// STARTTLS, required.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS at all; credentials, if any, go in clear text because the config says so.
    None,
}

/// `[relay]`: send everything through one smarthost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// `host:port` of the smarthost; empty means direct-to-MX delivery.
    pub host: String,
    /// TLS mode. Default `starttls`.
    pub tls: RelayTls,
    /// Check the relay's certificate (webpki roots plus `[smtp] ca_file`) and its name
    /// (or IP address) before anything, the credentials above all, is sent. Default
    /// true; false is an explicit, logged opt-out.
    pub tls_verify: bool,
    /// AUTH user; empty for no AUTH.
    pub username: String,
    /// AUTH password (override with `VOLLEY_RELAY_PASSWORD`).
    pub password: String,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            tls: RelayTls::Starttls,
            tls_verify: true,
            username: String::new(),
            password: String::new(),
        }
    }
}

impl RelayConfig {
    /// Whether a relay is configured.
    pub fn is_enabled(&self) -> bool {
        !self.host.trim().is_empty()
    }

    /// Splits `host:port` (port 587 when absent); IPv6 literals in brackets.
    pub fn host_port(&self) -> Result<(String, u16), String> {
        let host = self.host.trim();
        let bad = || format!("relay.host {host:?} is not host:port");
        if let Some(rest) = host.strip_prefix('[') {
            let (ip, port) = rest.split_once(']').ok_or_else(bad)?;
            let port = port
                .strip_prefix(':')
                .map(str::parse)
                .transpose()
                .map_err(|_| bad())?;
            return Ok((ip.to_owned(), port.unwrap_or(587)));
        }
        match host.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => Ok((h.to_owned(), p.parse().map_err(|_| bad())?)),
            Some(_) => Err(bad()),
            None => Ok((host.to_owned(), 587)),
        }
    }
}

/// `[security]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Allow MX hosts that resolve to loopback, unspecified or private addresses.
    /// Off by default: a hostile DNS answer must not make us connect inward.
    pub allow_loopback_mx: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_relay_host_and_port() {
        let relay = |h: &str| RelayConfig {
            host: h.into(),
            ..RelayConfig::default()
        };
        assert_eq!(
            relay("smtp.example.com:2525").host_port().unwrap(),
            ("smtp.example.com".into(), 2525)
        );
        assert_eq!(
            relay("smtp.example.com").host_port().unwrap(),
            ("smtp.example.com".into(), 587)
        );
        assert_eq!(relay("[::1]:25").host_port().unwrap(), ("::1".into(), 25));
        assert!(relay("smtp.example.com:x").host_port().is_err());
        assert!(!relay(" ").is_enabled());
    }
}
