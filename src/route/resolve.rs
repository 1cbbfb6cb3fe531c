//! The router: DNS lookups with hickory-resolver, the cache in front of them, and
//! the relay shortcut.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{ResolverBuilder, TokioResolver};
use rand::seq::SliceRandom;

use super::cache::{Answer, NEGATIVE_TTL, RouteCache, TEMPORARY_TTL};
use super::config::{DnsConfig, RelayConfig, SecurityConfig};
use super::{MxHost, RouteError, Site, SiteKind};
use crate::metrics::{Metrics, Stage};

/// Resolves domains to sites.
pub struct Router {
    resolver: TokioResolver,
    port: u16,
    allow_private: bool,
    relay: Option<(String, u16)>,
    // Held only to read or insert one entry; never across a lookup's await.
    cache: Mutex<RouteCache>,
    /// Lookups in flight at most (`[dns] max_lookups`).
    lookups: tokio::sync::Semaphore,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("port", &self.port)
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

/// Loopback, unspecified, private, link-local, shared (CGNAT) or unique-local: an
/// address a public MX must never point us at.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_forbidden(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// A resolver builder asking `[dns] nameservers`, or the system's when there are none.
pub(super) fn resolver_builder(
    dns: &DnsConfig,
) -> Result<ResolverBuilder<TokioRuntimeProvider>, String> {
    if dns.nameservers.is_empty() {
        return TokioResolver::builder_tokio()
            .map_err(|e| format!("system resolver configuration: {e}"));
    }
    let servers = dns
        .nameservers
        .iter()
        .map(|addr| {
            let mut server = NameServerConfig::udp_and_tcp(addr.ip());
            for connection in &mut server.connections {
                connection.port = addr.port();
            }
            server
        })
        .collect();
    Ok(TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(servers),
        TokioRuntimeProvider::default(),
    ))
}

impl Router {
    /// A router from the configuration. `port` is `[smtp] port` (25 unless a test
    /// says otherwise).
    pub fn new(
        dns: &DnsConfig,
        relay: &RelayConfig,
        security: &SecurityConfig,
        port: u16,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let mut builder = resolver_builder(dns)?;
        let opts = builder.options_mut();
        opts.timeout = Duration::from_secs(5);
        opts.attempts = 2;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.cache_size = dns.cache_capacity() as u64;
        let resolver = builder.build().map_err(|e| format!("resolver: {e}"))?;
        let relay = relay.is_enabled().then(|| relay.host_port()).transpose()?;
        Ok(Self {
            resolver,
            port,
            allow_private: security.allow_loopback_mx,
            relay,
            cache: Mutex::new(RouteCache::new(dns.cache_capacity())),
            lookups: tokio::sync::Semaphore::new(dns.lookup_capacity()),
            metrics,
        })
    }

    /// The TXT records of `name` (each one's strings joined); `Ok(None)` when the name
    /// or the record does not exist; `Err` when the lookup failed.
    pub async fn txt(&self, name: &str) -> Result<Option<Vec<String>>, String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.lookup(fqdn.as_str(), RecordType::TXT).await {
            Ok(lookup) => Ok(Some(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => Some(
                            txt.txt_data
                                .iter()
                                .map(|part| String::from_utf8_lossy(part).into_owned())
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .collect(),
            )),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The addresses of `host` we may connect to (loopback and private ones only when
    /// `security.allow_loopback_mx` says so).
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        let ips = self
            .resolver
            .lookup_ip(fqdn.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let all: Vec<IpAddr> = ips.iter().collect();
        let allowed: Vec<IpAddr> = all
            .iter()
            .copied()
            .filter(|ip| self.allow_private || !is_forbidden(*ip))
            .collect();
        match (allowed.is_empty(), all.first()) {
            (true, Some(ip)) => Err(format!(
                "{host} resolves to {ip}, a loopback or private address (security.allow_loopback_mx is off)"
            )),
            (true, None) => Err(format!("{host} has no address")),
            (false, _) => Ok(allowed),
        }
    }

    /// The cached answer for a domain, if there is a fresh one.
    pub fn cached(&self, domain: &str) -> Option<Answer> {
        let key = normalise(domain).ok()?;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key, Instant::now())
    }

    /// Where mail for `domain` goes: the cache, or DNS.
    pub async fn route(&self, domain: &str) -> Answer {
        let key = normalise(domain)?;
        if let Some(answer) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key, Instant::now())
        {
            return answer;
        }
        // Never closed, so acquiring only waits for a turn.
        let _turn = self.lookups.acquire().await.ok();
        let started = Instant::now();
        let (answer, expires) = match self.resolve(&key).await {
            Ok(site) => {
                let expires = site.expires;
                (Ok(Arc::new(site)), expires)
            }
            Err(e) if e.is_transient() => (Err(e), started + TEMPORARY_TTL),
            Err(e) => (Err(e), started + NEGATIVE_TTL),
        };
        self.metrics.record(Stage::Dns, started.elapsed());
        let now = Instant::now();
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(
            key,
            answer.clone(),
            expires,
            now,
        );
        answer
    }

    async fn resolve(&self, domain: &str) -> Result<Site, RouteError> {
        if let Some((host, port)) = &self.relay {
            return self.relay_site(host, *port).await;
        }
        if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip: IpAddr = literal
                .trim_start_matches("IPv6:")
                .parse()
                .map_err(|_| RouteError::InvalidDomain(domain.to_owned()))?;
            let addrs = self.allowed(domain, vec![ip])?;
            let far = Instant::now() + Duration::from_secs(86_400);
            return Ok(site(
                vec![MxHost {
                    name: literal.to_owned(),
                    preference: 0,
                    addrs,
                    tls: None,
                }],
                SiteKind::Mx,
                far,
            ));
        }
        let temporary = |e: &dyn std::fmt::Display| RouteError::Temporary {
            domain: domain.to_owned(),
            reason: e.to_string(),
        };
        let fqdn = format!("{domain}.");
        let lookup = match self.resolver.lookup(fqdn.as_str(), RecordType::MX).await {
            Ok(lookup) => lookup,
            Err(e) if e.is_nx_domain() => return Err(RouteError::NoSuchDomain(domain.to_owned())),
            Err(e) if e.is_no_records_found() => return self.implicit_mx(domain, &fqdn).await,
            Err(e) => return Err(temporary(&e)),
        };
        let mut expires = lookup.valid_until();
        let mut mx: Vec<(u16, String)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                _ => None,
            })
            .collect();
        // RFC 7505: a lone MX of "." says the domain takes no mail.
        if mx.len() == 1 && (mx[0].1 == "." || mx[0].1.is_empty()) {
            return Err(RouteError::NullMx(domain.to_owned()));
        }
        mx.retain(|(_, host)| host != "." && !host.is_empty());
        if mx.is_empty() {
            return self.implicit_mx(domain, &fqdn).await;
        }
        order_by_preference(&mut mx);
        let lookups = mx
            .iter()
            .map(|(_, host)| self.resolver.lookup_ip(host.as_str()));
        let results = futures::future::join_all(lookups).await;
        let mut hosts = Vec::new();
        let mut refused = None;
        let mut unknown = None;
        for ((preference, host), result) in mx.into_iter().zip(results) {
            // An MX host without an address is skipped; the others may work.
            let ips = match result {
                Ok(ips) => ips,
                Err(e) => {
                    // One whose lookup failed for now may have a good address.
                    if !e.is_nx_domain() && !e.is_no_records_found() {
                        unknown = Some(temporary(&e));
                    }
                    continue;
                }
            };
            expires = expires.min(ips.valid_until());
            match self.allowed(domain, ips.iter().collect()) {
                Ok(addrs) => hosts.push(MxHost {
                    name: trim_dot(&host),
                    preference,
                    addrs,
                    tls: None,
                }),
                Err(e) => refused = Some(e),
            }
        }
        if hosts.is_empty() {
            // Refused (a permanent bounce) only when every other host is known to have
            // no address: one that could not be looked up now defers the message.
            return Err(unknown
                .or(refused)
                .unwrap_or_else(|| temporary(&"no MX host has an address")));
        }
        Ok(site(hosts, SiteKind::Mx, expires))
    }

    /// RFC 5321 section 5.1: no MX, so the domain itself, if it has an address.
    async fn implicit_mx(&self, domain: &str, fqdn: &str) -> Result<Site, RouteError> {
        match self.resolver.lookup_ip(fqdn).await {
            Ok(ips) => {
                let addrs = self.allowed(domain, ips.iter().collect())?;
                let host = MxHost {
                    name: domain.to_owned(),
                    preference: 0,
                    addrs,
                    tls: None,
                };
                Ok(site(vec![host], SiteKind::Mx, ips.valid_until()))
            }
            Err(e) if e.is_nx_domain() => Err(RouteError::NoSuchDomain(domain.to_owned())),
            Err(e) if e.is_no_records_found() => Err(RouteError::NoMailHost(domain.to_owned())),
            Err(e) => Err(RouteError::Temporary {
                domain: domain.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    async fn relay_site(&self, host: &str, port: u16) -> Result<Site, RouteError> {
        let temporary = |reason: String| RouteError::Temporary {
            domain: host.to_owned(),
            reason,
        };
        let (ips, expires) = match host.parse::<IpAddr>() {
            Ok(ip) => (vec![ip], Instant::now() + Duration::from_secs(86_400)),
            Err(_) => {
                let ips = self
                    .resolver
                    .lookup_ip(host)
                    .await
                    .map_err(|e| temporary(e.to_string()))?;
                (ips.iter().collect(), ips.valid_until())
            }
        };
        if ips.is_empty() {
            return Err(temporary("the relay host has no address".into()));
        }
        // The relay is the operator's choice, not a DNS answer: no address filter.
        let addrs = ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        let mut site = site(
            vec![MxHost {
                name: host.to_owned(),
                preference: 0,
                addrs,
                tls: None,
            }],
            SiteKind::Relay,
            expires,
        );
        site.key = Arc::from(format!("relay:{host}:{port}"));
        Ok(site)
    }

    /// Keeps the addresses we may connect to, with the SMTP port.
    fn allowed(&self, domain: &str, ips: Vec<IpAddr>) -> Result<Vec<SocketAddr>, RouteError> {
        let mut first_refused = None;
        let addrs: Vec<SocketAddr> = ips
            .into_iter()
            .filter(|ip| {
                let ok = self.allow_private || !is_forbidden(*ip);
                if !ok {
                    first_refused.get_or_insert(*ip);
                }
                ok
            })
            .map(|ip| SocketAddr::new(ip, self.port))
            .collect();
        match (addrs.is_empty(), first_refused) {
            (true, Some(addr)) => Err(RouteError::Forbidden {
                domain: domain.to_owned(),
                addr,
            }),
            _ => Ok(addrs),
        }
    }
}

fn site(hosts: Vec<MxHost>, kind: SiteKind, expires: Instant) -> Site {
    let mut names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    Site {
        key: Arc::from(names.join(",")),
        hosts,
        kind,
        expires,
    }
}

/// Sorts by preference and shuffles hosts of equal preference (RFC 5321 5.1).
fn order_by_preference(mx: &mut [(u16, String)]) {
    mx.sort_by_key(|(p, _)| *p);
    let mut rng = rand::rng();
    for group in mx.chunk_by_mut(|a, b| a.0 == b.0) {
        group.shuffle(&mut rng);
    }
}

fn trim_dot(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Lower-case A-label form of a domain (IDN converted), or an address literal.
fn normalise(domain: &str) -> Result<String, RouteError> {
    let domain = domain.trim();
    if domain.starts_with('[') {
        return Ok(domain.to_owned());
    }
    let ascii =
        idna::domain_to_ascii(domain).map_err(|_| RouteError::InvalidDomain(domain.to_owned()))?;
    if ascii.is_empty() || ascii.ends_with('.') {
        return Err(RouteError::InvalidDomain(domain.to_owned()));
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_addresses() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "0.0.0.0",
            "169.254.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_forbidden(bad.parse().unwrap()), "{bad}");
        }
        for good in ["192.0.2.1", "8.8.8.8", "2001:db8::1", "172.32.0.1"] {
            assert!(!is_forbidden(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn normalises_idn_and_case() {
        assert_eq!(normalise("Example.COM").unwrap(), "example.com");
        assert_eq!(
            normalise("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert!(normalise("").is_err());
    }

    #[test]
    fn orders_by_preference_shuffling_ties() {
        let mut seen_first = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut mx = vec![
                (20, "c".into()),
                (10, "a".into()),
                (10, "b".into()),
                (30, "d".into()),
            ];
            order_by_preference(&mut mx);
            assert_eq!((mx[2].0, mx[3].0), (20, 30));
            seen_first.insert(mx[0].1.clone());
        }
        assert_eq!(seen_first.len(), 2, "equal preferences are shuffled");
    }

    #[test]
    fn sites_are_keyed_by_sorted_host_names() {
        let far = Instant::now();
        let h = |n: &str| MxHost {
            name: n.into(),
            preference: 10,
            addrs: vec![],
            tls: None,
        };
        assert_eq!(
            site(vec![h("b.mx"), h("a.mx")], SiteKind::Mx, far).key,
            site(vec![h("a.mx"), h("b.mx")], SiteKind::Mx, far).key
        );
    }
}
