//! DANE for SMTP (RFC 7672): which MX hosts of a domain publish DNSSEC-validated TLSA
//! records, asked of a validating resolver of our own.
//!
//! DANE applies only when the domain's MX answer is DNSSEC-secure: an attacker who can
//! forge an insecure MX answer can name his own host. Then each MX host's TLSA records
//! at `_25._tcp.HOST` decide its TLS: secure and usable records (DANE-TA, DANE-EE) mean
//! TLS verified against them and nothing in clear text; secure records none of which is
//! usable mean TLS without authentication (section 3.1.3); no records, or insecure ones,
//! leave the host as it was. A bogus answer, or a TLSA lookup that fails, is never
//! taken for "no DANE": the MX answer's failure defers the domain, a host's failure
//! takes that host out (section 2.2). Verified certificates are checked in
//! [`crate::smtp::dane`]; where DANE applies it takes precedence over MTA-STS (RFC 8461
//! section 2).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use serde::{Deserialize, Serialize};

use super::HostTls;
use super::config::DnsConfig;
use super::resolve::resolver_builder;
use crate::metrics::{Counter, Metrics};
use crate::smtp::dane::TlsaRecord;

/// How long a failed lookup is remembered before it is asked again.
const FAILURE_TTL: Duration = Duration::from_secs(60);
/// The longest an answer is kept, whatever its TTL.
const MAX_TTL: Duration = Duration::from_secs(3600);
/// Domains kept in the cache at most; the soonest to expire go first.
const CACHE_LIMIT: usize = 50_000;

/// `[dane]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaneConfig {
    /// Look TLSA records up for direct-to-MX delivery, with DNSSEC validation. Default
    /// false: validation needs a path to the root that returns DNSSEC records.
    pub enabled: bool,
    /// A file of DNSKEY records (zone-file format) to trust instead of the root's
    /// built-in keys. For tests and private roots.
    pub trust_anchor: Option<PathBuf>,
}

/// A domain's DANE answer, as the dispatcher applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Secure MX, and some hosts have TLSA records: each host's requirement by name;
    /// hosts whose lookup failed are named in `failed` and must not be used.
    Applies {
        /// The MX host names of the validated answer: mail goes to these only.
        mx: Vec<String>,
        /// Hosts with records: [`HostTls::Dane`] or [`HostTls::DaneEncrypt`].
        hosts: HashMap<String, HostTls>,
        /// Hosts whose TLSA lookup failed (bogus, or no answer), with why.
        failed: HashMap<String, String>,
    },
    /// The MX answer could not be validated (bogus) or not asked: defer.
    Failed(String),
}

/// A cached verdict (`None`: DANE does not apply) and when it expires.
type Cached = (Option<Arc<Verdict>>, Instant);

/// Looks TLSA records up and keeps the verdicts.
pub struct Dane {
    resolver: TokioResolver,
    /// Per domain: the verdict (`None`: DANE does not apply) and when it expires.
    cache: Mutex<HashMap<String, Cached>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Dane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dane").finish_non_exhaustive()
    }
}

/// What one validated lookup came to.
enum Validated {
    /// Records, all DNSSEC-secure, and how long they may be kept.
    Secure(Vec<Record>, Instant),
    /// Records not proven secure (an unsigned zone): they cannot be trusted for DANE.
    Insecure(Instant),
    /// No such records (NXDOMAIN or NODATA).
    Absent,
    /// Bogus, or no answer at all.
    Failed(String),
}

impl Dane {
    /// A validating resolver asking `[dns] nameservers` with the root's keys, or those
    /// of `[dane] trust_anchor`.
    pub fn new(
        dns: &DnsConfig,
        config: &DaneConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let anchors = match &config.trust_anchor {
            Some(path) => TrustAnchors::from_file(path)
                .map_err(|e| format!("dane.trust_anchor: {}: {e}", path.display()))?,
            None => TrustAnchors::default(),
        };
        let mut builder = resolver_builder(dns)?.with_trust_anchor(Arc::new(anchors));
        let opts = builder.options_mut();
        opts.validate = true;
        opts.timeout = Duration::from_secs(5);
        opts.attempts = 2;
        opts.cache_size = dns.cache_capacity() as u64;
        let resolver = builder.build().map_err(|e| format!("DANE resolver: {e}"))?;
        Ok(Self {
            resolver,
            cache: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// The verdict for `domain` when a fresh one is cached: `Some(None)` when DANE does not
    /// apply; `None` when it must be asked with [`Self::verdict`].
    pub fn cached(&self, domain: &str) -> Option<Option<Arc<Verdict>>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (verdict, expires) = cache.get(domain)?;
        (*expires > Instant::now()).then(|| verdict.clone())
    }

    /// Whether DANE applies to `domain`, asked of DNS unless cached.
    pub async fn verdict(&self, domain: &str) -> Option<Arc<Verdict>> {
        if let Some(verdict) = self.cached(domain) {
            return verdict;
        }
        let (verdict, expires) = self.lookup(domain).await;
        let verdict = verdict.map(Arc::new);
        match verdict.as_deref() {
            Some(Verdict::Failed(reason)) => {
                self.metrics.add(Counter::DaneFailures, 1);
                tracing::warn!(
                    domain,
                    reason,
                    "DANE lookup failed; the domain's mail waits"
                );
            }
            Some(Verdict::Applies { hosts, failed, .. }) => {
                self.metrics.add(Counter::DaneFailures, failed.len() as u64);
                tracing::info!(domain, hosts = ?hosts.keys(), failed = ?failed, "DANE applies");
            }
            None => {}
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT && !cache.contains_key(domain) {
            let now = Instant::now();
            cache.retain(|_, (_, expires)| *expires > now);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(domain.to_owned(), (verdict.clone(), expires));
        verdict
    }

    async fn lookup(&self, domain: &str) -> (Option<Verdict>, Instant) {
        let now = Instant::now();
        let (names, mut expires) = match self.ask(domain, RecordType::MX).await {
            Validated::Secure(records, expires) => {
                let names = records
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) if !mx.exchange.is_root() => Some(
                            mx.exchange
                                .to_ascii()
                                .trim_end_matches('.')
                                .to_ascii_lowercase(),
                        ),
                        _ => None,
                    })
                    .collect::<Vec<String>>();
                (names, expires)
            }
            // An unsigned zone: DANE does not apply (the router decides the rest).
            Validated::Insecure(expires) => return (None, expires.min(now + MAX_TTL)),
            // No MX: the domain is its own mail host (RFC 5321 5.1), a DANE one when
            // its address answer is secure (RFC 7672 section 2.2.1).
            Validated::Absent => match self.implicit(domain).await {
                Ok(Some(expires)) => (vec![domain.to_ascii_lowercase()], expires),
                Ok(None) => return (None, now + FAILURE_TTL),
                Err(reason) => return (Some(Verdict::Failed(reason)), now + FAILURE_TTL),
            },
            Validated::Failed(reason) => {
                let reason = format!("the MX answer of {domain} could not be validated: {reason}");
                return (Some(Verdict::Failed(reason)), now + FAILURE_TTL);
            }
        };
        let tlsa_names: Vec<String> = names.iter().map(|h| format!("_25._tcp.{h}")).collect();
        let lookups = tlsa_names
            .iter()
            .map(|name| self.ask(name, RecordType::TLSA));
        let answers = futures::future::join_all(lookups).await;
        let (mut hosts, mut failed) = (HashMap::new(), HashMap::new());
        for (name, answer) in names.iter().cloned().zip(answers) {
            match answer {
                Validated::Secure(records, until) => {
                    expires = expires.min(until);
                    let records: Vec<TlsaRecord> = records
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::TLSA(t) => Some(TlsaRecord {
                                usage: u8::from(t.cert_usage),
                                selector: u8::from(t.selector),
                                matching: u8::from(t.matching),
                                data: t.cert_data.clone(),
                            }),
                            _ => None,
                        })
                        .collect();
                    let dane = if records.iter().any(TlsaRecord::is_usable) {
                        HostTls::Dane(records.into())
                    } else {
                        HostTls::DaneEncrypt
                    };
                    hosts.insert(name, dane);
                }
                Validated::Insecure(_) | Validated::Absent => {}
                Validated::Failed(reason) => {
                    expires = expires.min(now + FAILURE_TTL);
                    failed.insert(name, reason);
                }
            }
        }
        if hosts.is_empty() && failed.is_empty() {
            return (None, expires.min(now + MAX_TTL));
        }
        let verdict = Verdict::Applies {
            mx: names,
            hosts,
            failed,
        };
        (Some(verdict), expires.min(now + MAX_TTL))
    }

    /// For a domain without MX records: whether its own address answer (A, else AAAA) is
    /// secure, and until when; `Err` when it could not be validated.
    async fn implicit(&self, domain: &str) -> Result<Option<Instant>, String> {
        for kind in [RecordType::A, RecordType::AAAA] {
            match self.ask(domain, kind).await {
                Validated::Secure(_, expires) => return Ok(Some(expires)),
                Validated::Insecure(_) => return Ok(None),
                Validated::Absent => {}
                Validated::Failed(reason) => {
                    return Err(format!(
                        "the address answer of {domain} (no MX) could not be validated: {reason}"
                    ));
                }
            }
        }
        Ok(None)
    }

    /// One validated lookup of `name`'s `kind` records.
    async fn ask(&self, name: &str, kind: RecordType) -> Validated {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.lookup(fqdn.as_str(), kind).await {
            Ok(lookup) => {
                // Every record of the answer counts, CNAMEs included: a secure TLSA
                // record reached through a forged, insecure CNAME is an attacker's.
                let answers: Vec<&Record> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() != RecordType::RRSIG)
                    .collect();
                let records: Vec<Record> = answers
                    .iter()
                    .filter(|r| r.record_type() == kind)
                    .map(|r| (*r).clone())
                    .collect();
                if answers.iter().any(|r| r.proof == Proof::Bogus) {
                    return Validated::Failed(format!("{name} {kind}: DNSSEC-bogus"));
                }
                if records.is_empty() {
                    return self.absent(name).await;
                }
                let until = lookup.valid_until();
                if answers.iter().all(|r| r.proof == Proof::Secure) {
                    Validated::Secure(records, until)
                } else {
                    Validated::Insecure(until)
                }
            }
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => self.absent(name).await,
            Err(NetError::Dns(DnsError::Nsec { proof, .. })) if proof != Proof::Bogus => {
                self.absent(name).await
            }
            Err(e) => Validated::Failed(format!("{name} {kind}: {e}")),
        }
    }

    /// "No such records" at `name`, unless a CNAME there fails validation: a resolver
    /// that followed a forged CNAME to nothing reports no records and loses the CNAME's
    /// bogus mark, which would turn a DANE host into one without TLSA records.
    async fn absent(&self, name: &str) -> Validated {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.lookup(fqdn.as_str(), RecordType::CNAME).await {
            Ok(lookup) if lookup.answers().iter().any(|r| r.proof == Proof::Bogus) => {
                Validated::Failed(format!("{name} CNAME: DNSSEC-bogus"))
            }
            Ok(_) => Validated::Absent,
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Validated::Absent,
            Err(NetError::Dns(DnsError::Nsec { proof, .. })) if proof != Proof::Bogus => {
                Validated::Absent
            }
            Err(e) => Validated::Failed(format!("{name} CNAME: {e}")),
        }
    }
}
