//! Routing: where mail for a domain goes.
//!
//! MX records by preference (equal preferences shuffled), implicit MX when there is
//! none, null MX (RFC 7505) and NXDOMAIN as permanent failures, SERVFAIL and timeouts
//! as transient ones. Answers are cached for their TTL in a bounded cache. Domains
//! whose MX host sets are equal share one [`Site`]. In relay mode every domain goes
//! to the one smarthost. This module knows nothing of sessions or queues.

mod cache;
mod config;
pub mod dane;
pub mod mta_sts;
mod resolve;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub use config::{DnsConfig, RelayConfig, RelayTls, SecurityConfig};
pub use dane::{Dane, DaneConfig};
pub use mta_sts::{MtaSts, MtaStsConfig};
pub use resolve::{Router, is_forbidden};

/// One MX host and the addresses it resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxHost {
    /// The host name (or the domain itself for an implicit MX).
    pub name: String,
    /// MX preference; lower first.
    pub preference: u16,
    /// Addresses with the SMTP port, in the order to try.
    pub addrs: Vec<SocketAddr>,
    /// Its own TLS requirement, when its domain's DNS sets one (DANE).
    pub tls: Option<HostTls>,
}

/// A host's own TLS requirement, set by its domain's DNS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostTls {
    /// DANE: TLS verified against these usable TLSA records, or no mail.
    Dane(Arc<[crate::smtp::dane::TlsaRecord]>),
    /// DANE with no record usable in SMTP: TLS required, not authenticated.
    DaneEncrypt,
    /// A host without TLSA records of a domain where DANE applies, under the domain's
    /// MTA-STS `enforce` policy: TLS verified against its name (web PKI and
    /// `smtp.ca_file`), or no mail.
    MtaSts,
}

impl HostTls {
    /// The session's TLS policy, and the label events and metrics give it.
    pub fn policy(&self) -> (crate::smtp::TlsPolicy, &'static str) {
        match self {
            Self::Dane(_) => (crate::smtp::TlsPolicy::Verify, "dane"),
            Self::DaneEncrypt => (crate::smtp::TlsPolicy::Required, "dane"),
            Self::MtaSts => (crate::smtp::TlsPolicy::Verify, "mta-sts"),
        }
    }
}

/// Whether a site is reached directly or through the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteKind {
    /// The domain's own MX hosts.
    Mx,
    /// Through the smarthost named by `relay.host`, whatever the recipient domain.
    Relay,
}

/// A destination: the MX hosts that serve one or more domains. One lane and one
/// connection pool per site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// Identity: the sorted MX host names (domains with equal MX sets share it).
    pub key: Arc<str>,
    /// Hosts in the order to try.
    pub hosts: Vec<MxHost>,
    /// Direct or relay.
    pub kind: SiteKind,
    /// When the answer this site came from expires.
    pub expires: Instant,
}

impl Site {
    /// Every address to try, in order, with the host each belongs to.
    pub fn targets(&self) -> impl Iterator<Item = (&MxHost, SocketAddr)> {
        self.hosts
            .iter()
            .flat_map(|h| h.addrs.iter().map(move |a| (h, *a)))
    }
}

/// Why a domain has no usable route.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// RFC 7505 null MX: the domain accepts no mail (5.1.10).
    #[error("{0} does not accept mail (null MX)")]
    NullMx(String),
    /// NXDOMAIN (5.1.2).
    #[error("domain {0} does not exist")]
    NoSuchDomain(String),
    /// No MX and no address record (5.1.2).
    #[error("domain {0} has no MX and no address")]
    NoMailHost(String),
    /// Every MX address is loopback or private and that is not allowed (5.4.4).
    #[error(
        "MX of {domain} resolves to {addr}, a loopback or private address (security.allow_loopback_mx is off)"
    )]
    Forbidden {
        /// The recipient domain (or address literal) whose mail hosts resolved only to
        /// refused addresses.
        domain: String,
        /// The first refused address found: loopback, private, link-local or the like.
        addr: std::net::IpAddr,
    },
    /// The domain is not a valid host name (5.1.2).
    #[error("invalid domain {0:?}")]
    InvalidDomain(String),
    /// SERVFAIL, timeout, or no MX host with an address yet: try later (4.4.3).
    #[error("DNS lookup for {domain} failed temporarily: {reason}")]
    Temporary {
        /// The domain being looked up; in relay mode, the smarthost's host name.
        domain: String,
        /// What failed.
        reason: String,
    },
}

impl RouteError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Temporary { .. })
    }
}
