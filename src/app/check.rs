//! `volley check --domain D`: what volley would do with mail for one domain, asked of
//! the same resolver, routing, pools and policies the engine uses.

use std::fmt::Write as _;
use std::sync::Arc;

use super::config::Config;
use crate::engine::Egress;
use crate::metrics::Metrics;
use crate::outcome::{Disposition, classify_route};
use crate::route::dane::Verdict;
use crate::route::mta_sts::Mode;
use crate::route::{Dane, HostTls, MtaSts, Router, Site, SiteKind};

/// Why the domain could not be checked (the configuration, not the domain).
#[derive(Debug, thiserror::Error)]
pub enum DomainCheckError {
    /// The resolver or the relay setting cannot be used.
    #[error("routing: {0}")]
    Route(String),
    /// `[egress]` is invalid.
    #[error("{0}")]
    Egress(#[from] crate::engine::ConfigError),
    /// The pool asked for is not configured.
    #[error("pool: unknown egress pool {0:?} (configured: {1})")]
    UnknownPool(String, String),
}

/// The report, as lines of text: route, MX hosts and addresses, the lane, its pool and
/// source addresses, its limits and its TLS policy.
pub async fn domain(
    config: &Config,
    domain: &str,
    pool: Option<&str>,
) -> Result<String, DomainCheckError> {
    let router = Arc::new(
        Router::new(
            &config.dns,
            &config.relay,
            &config.security,
            config.smtp.port,
            Arc::new(Metrics::default()),
        )
        .map_err(DomainCheckError::Route)?,
    );
    let egress = Egress::new(&config.egress, config.smtp.local_address, None)?;
    let pool = egress.pool(pool).ok_or_else(|| {
        DomainCheckError::UnknownPool(
            pool.unwrap_or_default().to_owned(),
            config.egress.names().join(", "),
        )
    })?;
    let mut out = String::new();
    let _ = writeln!(out, "domain: {domain}");
    let site = match router.route(domain).await {
        Ok(site) => site,
        Err(e) => {
            let outcome = classify_route(&e);
            let verdict = match outcome.disposition {
                Disposition::Transient => "deferred, tried again later",
                _ => "bounced",
            };
            let _ = writeln!(out, "route: none: {} ({verdict})", outcome.detail);
            return Ok(out);
        }
    };
    let route = match site.kind {
        SiteKind::Mx => "direct to its MX hosts",
        SiteKind::Relay => "through the relay (relay.host)",
    };
    let _ = writeln!(out, "route: {route}");
    for host in &site.hosts {
        let addrs: Vec<String> = host.addrs.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "  mx {} {}: {}",
            host.preference,
            host.name,
            addrs.join(", ")
        );
    }
    let _ = writeln!(out, "site: {}", pool.site_key(&site.key));
    let shaping = crate::engine::Shaping::new(&config.shaping, None)?;
    let provider = match site.kind {
        SiteKind::Mx => shaping.provider_of(site.hosts.iter().map(|h| h.name.as_str())),
        SiteKind::Relay => None,
    };
    match provider {
        Some(p) => {
            let _ = writeln!(
                out,
                "provider: {} ({} connections for all its sites, {} messages per connection, rate {}, {} reply rules)",
                p.name,
                p.connections,
                p.messages_per_connection
                    .unwrap_or(config.smtp.max_messages_per_connection),
                p.rate,
                p.rules.len()
            );
        }
        None => {
            let _ = writeln!(out, "provider: none");
        }
    }
    let sources: Vec<String> = pool
        .sources
        .iter()
        .map(|s| {
            let address = s
                .address
                .map_or_else(|| "the system's choice".to_owned(), |a| a.to_string());
            let helo = s
                .helo_name
                .as_ref()
                .map_or(config.smtp.helo_name.as_str(), |h| h.as_str());
            format!("{address} (EHLO {helo})")
        })
        .collect();
    let _ = writeln!(out, "pool: {} from {}", pool.name, sources.join(", "));
    if let Some(rate) = pool.warmup_rate() {
        let _ = writeln!(out, "  warm-up today: at most {rate}");
    }
    let domain_rate = config
        .limits
        .domains
        .iter()
        .find(|(d, _)| d.eq_ignore_ascii_case(domain))
        .map_or_else(|| "none".to_owned(), |(_, r)| r.to_string());
    let _ = writeln!(
        out,
        "limits: {} connections, {} messages per connection, site rate {}, domain rate {}, global rate {}",
        provider.map_or(config.smtp.max_connections_per_site, |p| {
            p.connections.min(config.smtp.max_connections_per_site)
        }),
        provider
            .and_then(|p| p.messages_per_connection)
            .unwrap_or(config.smtp.max_messages_per_connection),
        config.limits.per_site,
        domain_rate,
        config.limits.global
    );
    let policy = match site.kind {
        SiteKind::Mx if config.mta_sts.enabled => {
            let ca = config
                .smtp
                .ca_file
                .as_deref()
                .filter(|p| !p.as_os_str().is_empty());
            let connectors = crate::smtp::TlsConnectors::new(ca)
                .map_err(|e| DomainCheckError::Route(format!("smtp.ca_file: {e}")))?;
            let tls = connectors
                .for_policy(crate::smtp::TlsPolicy::Verify)
                .config();
            let sts = MtaSts::new(
                Arc::clone(&router),
                &config.mta_sts,
                (**tls).clone(),
                Arc::new(Metrics::default()),
            );
            sts.policy(domain).await
        }
        _ => None,
    };
    if dane(config, domain, &site, policy.as_deref(), &mut out).await? {
        return Ok(out);
    }
    match (&policy, site.kind) {
        (_, SiteKind::Relay) => {
            let _ = writeln!(out, "mta-sts: not applied (relay)");
        }
        (None, _) if !config.mta_sts.enabled => {
            let _ = writeln!(out, "mta-sts: not looked up (mta_sts.enabled = false)");
        }
        (None, _) => {
            let _ = writeln!(out, "mta-sts: no policy");
        }
        (Some(p), _) => {
            let _ = writeln!(
                out,
                "mta-sts: {} (id {}, max_age {}s), mx {}",
                p.mode.as_str(),
                p.id,
                p.max_age,
                p.mx.join(", ")
            );
        }
    }
    if let Some(p) = policy.as_ref().filter(|p| p.mode == Mode::Enforce) {
        let matching: Vec<&str> = site
            .hosts
            .iter()
            .filter(|h| p.matches(&h.name))
            .map(|h| h.name.as_str())
            .collect();
        if matching.is_empty() {
            let _ = writeln!(
                out,
                "tls: none: no MX host matches the MTA-STS policy; mail is deferred (4.7.5)"
            );
        } else {
            let _ = writeln!(
                out,
                "tls: verify (MTA-STS enforce): encrypted and the certificate checked against the MX host name, or deferred; only to {}",
                matching.join(", ")
            );
        }
        return Ok(out);
    }
    let tls = match site.kind {
        SiteKind::Relay => match (config.relay.tls, config.relay.tls_verify) {
            (crate::route::RelayTls::None, _) => "none: clear text (relay.tls = \"none\")",
            (_, true) => "required, certificate verified against the relay's name",
            (_, false) => "required, certificate not checked (relay.tls_verify = false)",
        },
        SiteKind::Mx => match config.smtp.tls {
            crate::smtp::TlsPolicy::Opportunistic => {
                "opportunistic: encrypted when offered, certificate not checked, clear text otherwise"
            }
            crate::smtp::TlsPolicy::Required => {
                "required: encrypted or deferred, certificate not checked"
            }
            crate::smtp::TlsPolicy::Verify => {
                "verify: encrypted and the certificate checked against the MX host name, or deferred"
            }
            crate::smtp::TlsPolicy::Disabled => "disabled: clear text",
        },
    };
    let _ = writeln!(out, "tls: {tls}");
    Ok(out)
}

/// The `dane:` lines; true when DANE decides the domain's TLS (nothing more to say).
async fn dane(
    config: &Config,
    domain: &str,
    site: &Site,
    policy: Option<&crate::route::mta_sts::Policy>,
    out: &mut String,
) -> Result<bool, DomainCheckError> {
    if site.kind == SiteKind::Relay {
        let _ = writeln!(out, "dane: not applied (relay)");
        return Ok(false);
    }
    if !config.dane.enabled {
        let _ = writeln!(out, "dane: not looked up (dane.enabled = false)");
        return Ok(false);
    }
    let dane = Dane::new(&config.dns, &config.dane, Arc::new(Metrics::default()))
        .map_err(DomainCheckError::Route)?;
    let Some(verdict) = dane.verdict(domain).await else {
        let _ = writeln!(
            out,
            "dane: does not apply (the MX answer is not DNSSEC-signed, or no MX host has TLSA records)"
        );
        return Ok(false);
    };
    let (mx, hosts, failed) = match &*verdict {
        Verdict::Failed(reason) => {
            let _ = writeln!(out, "dane: failed: {reason}");
            let _ = writeln!(
                out,
                "tls: none: mail is deferred (4.7.5) until DNSSEC validates"
            );
            return Ok(true);
        }
        Verdict::Applies { mx, hosts, failed } => (mx, hosts, failed),
    };
    let _ = writeln!(
        out,
        "dane: applies (the MX answer is DNSSEC-secure: {})",
        mx.join(", ")
    );
    let enforce = policy.filter(|p| p.mode == Mode::Enforce);
    let mut usable = 0;
    for host in &site.hosts {
        let line = if !mx.contains(&host.name) {
            "not in the validated MX answer: not used".to_owned()
        } else if let Some(reason) = failed.get(&host.name) {
            format!("TLSA lookup failed ({reason}): not used")
        } else if !hosts.contains_key(&host.name) && enforce.is_some_and(|p| !p.matches(&host.name))
        {
            "no TLSA records, and the MTA-STS policy (enforce) does not name it: not used"
                .to_owned()
        } else {
            usable += 1;
            match hosts.get(&host.name) {
                Some(HostTls::Dane(records)) => {
                    let records: Vec<String> = records
                        .iter()
                        .map(|r| format!("{} {} {}", r.usage, r.selector, r.matching))
                        .collect();
                    format!(
                        "verify: encrypted and the certificate checked against TLSA {}, or deferred",
                        records.join(", ")
                    )
                }
                Some(HostTls::DaneEncrypt | HostTls::MtaSts) => {
                    "required: no TLSA record usable in SMTP; encrypted, not authenticated"
                        .to_owned()
                }
                None if enforce.is_some() => {
                    "no TLSA records: verify (MTA-STS enforce): encrypted and the certificate checked against the MX host name, or deferred".to_owned()
                }
                None => "no TLSA records: as [smtp] tls says".to_owned(),
            }
        };
        let _ = writeln!(out, "  {}: {line}", host.name);
    }
    let _ = match policy {
        Some(p) => writeln!(
            out,
            "mta-sts: {} (id {}), for the hosts without TLSA records only (DANE takes precedence)",
            p.mode.as_str(),
            p.id
        ),
        None => writeln!(out, "mta-sts: none (DANE decides)"),
    };
    if usable == 0 {
        let _ = writeln!(
            out,
            "tls: none: no usable MX host; mail is deferred (4.7.5)"
        );
    } else {
        let _ = writeln!(out, "tls: per MX host, as DANE says above");
    }
    Ok(true)
}
