//! Egress pools (`[egress]`): the source addresses mail leaves from.
//!
//! A pool is a set of source addresses, each optionally with its own EHLO name.
//! A message names its pool (or gets `default_pool`); its site is then the pair (pool,
//! destination), so that connection caps, rates and throttles apply per pool, and one
//! pool's reputation problems never slow another. Connections of a pool bind its
//! addresses in turn. A pool may carry a warm-up schedule: from each date on, the pool
//! sends at most that step's rate (`"1000/d"`), spread evenly, and in a cluster
//! counted once for all workers.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize};

use super::config::ConfigError;
use crate::rate::{Limiter, PermitSource, Rate};
use crate::smtp::HeloName;

/// The name of the pool used when `[egress]` names none.
pub const DEFAULT_POOL: &str = "default";

/// `[egress]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// The pool of mail that names none. Default `"default"`.
    pub default_pool: String,
    /// The pools by name. A pool named `default` with no addresses exists even when
    /// not listed.
    pub pools: BTreeMap<String, PoolConfig>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            default_pool: DEFAULT_POOL.to_owned(),
            pools: BTreeMap::new(),
        }
    }
}

/// `[egress.pools.NAME]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Source addresses, used in turn: `"192.0.2.10"` or
    /// `{ address = "192.0.2.10", helo_name = "mta1.example.com" }`. Empty: the
    /// system's choice (or `[smtp] local_address`).
    pub addresses: Vec<SourceAddress>,
    /// Warm-up: `[["2026-01-01", "1000/d"], ["2026-01-08", "5000/d"]]`. From each date
    /// (UTC) on, the pool sends at most that rate; before the first date nothing is
    /// capped; the last step holds until it is removed.
    pub warmup: Vec<WarmupStep>,
}

/// One source address of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceAddress {
    /// The local address connections bind.
    pub address: IpAddr,
    /// The EHLO name given from it; default `[smtp] helo_name`. Receivers check that it
    /// matches the address's reverse DNS.
    pub helo_name: Option<String>,
}

impl<'de> Deserialize<'de> for SourceAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            address: IpAddr,
            helo_name: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Bare(IpAddr),
            Full(Full),
        }
        match Form::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "a source address is \"192.0.2.10\" or { address = \"192.0.2.10\", helo_name = \"mta.example.com\" }",
            )
        })? {
            Form::Bare(address) => Ok(Self {
                address,
                helo_name: None,
            }),
            Form::Full(f) => Ok(Self {
                address: f.address,
                helo_name: f.helo_name,
            }),
        }
    }
}

/// One step of a warm-up schedule: from `from` (a UTC date) on, at most `rate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmupStep {
    /// Days since 1970-01-01.
    pub from: i64,
    /// The cap from that day on.
    pub rate: Rate,
}

impl Serialize for WarmupStep {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (format_day(self.from), self.rate).serialize(s)
    }
}

impl<'de> Deserialize<'de> for WarmupStep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (date, rate) = <(String, Rate)>::deserialize(d)?;
        let from = parse_day(&date).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "warm-up date {date:?}: expected YYYY-MM-DD, e.g. \"2026-01-01\""
            ))
        })?;
        Ok(Self { from, rate })
    }
}

/// `YYYY-MM-DD` (UTC) as days since 1970-01-01, read by humantime's RFC 3339 parser.
fn parse_day(text: &str) -> Option<i64> {
    let text = text.trim();
    if text.len() != 10 {
        return None;
    }
    let at = humantime::parse_rfc3339(&format!("{text}T00:00:00Z")).ok()?;
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs / 86_400).ok()
}

/// Days since 1970-01-01 as `YYYY-MM-DD`.
fn format_day(days: i64) -> String {
    let secs = u64::try_from(days).unwrap_or(0).saturating_mul(86_400);
    let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    crate::time::rfc3339(at)[..10].to_owned()
}

/// Today (UTC) as days since 1970-01-01.
fn today() -> i64 {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(secs / 86_400).unwrap_or(i64::MAX)
}

/// Whether `name` can name a pool: 1 to 64 letters, digits, `.`, `_` or `-`.
pub fn valid_pool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl EgressConfig {
    /// Checks names, addresses and schedules; an error names the key.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid =
            |field: &'static str, message: String| ConfigError::Invalid { field, message };
        for (name, pool) in &self.pools {
            if !valid_pool_name(name) {
                return Err(invalid(
                    "egress.pools",
                    format!("pool name {name:?}: 1 to 64 of a-z A-Z 0-9 . _ -"),
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for source in &pool.addresses {
                if !seen.insert(source.address) {
                    return Err(invalid(
                        "egress.pools.addresses",
                        format!("pool {name}: {} is listed twice", source.address),
                    ));
                }
                if source.address.is_unspecified() || source.address.is_multicast() {
                    return Err(invalid(
                        "egress.pools.addresses",
                        format!("pool {name}: {} cannot be a source address", source.address),
                    ));
                }
                if let Some(helo) = &source.helo_name {
                    HeloName::new(helo).map_err(|e| {
                        invalid(
                            "egress.pools.addresses.helo_name",
                            format!("pool {name}, {}: {}", source.address, e.0),
                        )
                    })?;
                }
            }
            for pair in pool.warmup.windows(2) {
                if pair[1].from <= pair[0].from {
                    return Err(invalid(
                        "egress.pools.warmup",
                        format!(
                            "pool {name}: the steps' dates must increase ({} after {})",
                            format_day(pair[1].from),
                            format_day(pair[0].from)
                        ),
                    ));
                }
            }
        }
        if !self.knows(&self.default_pool) {
            return Err(invalid(
                "egress.default_pool",
                format!("{:?} is not a pool in [egress.pools]", self.default_pool),
            ));
        }
        Ok(())
    }

    /// Whether mail may name the pool `name`.
    pub fn knows(&self, name: &str) -> bool {
        self.pools.contains_key(name) || name == DEFAULT_POOL
    }

    /// Every pool's name, the implicit `default` included.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.pools.keys().cloned().collect();
        if !self.pools.contains_key(DEFAULT_POOL) {
            names.push(DEFAULT_POOL.to_owned());
            names.sort();
        }
        names
    }
}

/// One source a connection may bind: its address (`None`: the system's choice) and
/// EHLO name (`None`: the session's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The local address.
    pub address: Option<IpAddr>,
    /// The EHLO name from it.
    pub helo_name: Option<HeloName>,
}

/// A pool as the engine runs it.
#[derive(Debug)]
pub struct Pool {
    /// Its name.
    pub name: Arc<str>,
    /// Whether it is the default pool (its sites keep their plain names).
    pub is_default: bool,
    /// Its sources, used in turn.
    pub sources: Vec<Source>,
    next: AtomicUsize,
    /// Warm-up steps with their rates and limiters (`None`: that step is unlimited).
    warmup: Vec<(i64, Rate, Option<Limiter>)>,
}

impl Pool {
    /// The next source in turn (its index in [`Self::sources`]) that can reach an
    /// address of the given family; `None` when the pool has none of that family.
    pub fn next_source(&self, v4: bool) -> Option<usize> {
        let n = self.sources.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.sources[i].address.is_none_or(|a| a.is_ipv4() == v4))
    }

    /// The warm-up limiter in force today, if any.
    pub fn warmup_limiter(&self) -> Option<&Limiter> {
        self.warmup_step().and_then(|(_, limiter)| limiter.as_ref())
    }

    /// The warm-up cap in force today, if any.
    pub fn warmup_rate(&self) -> Option<Rate> {
        self.warmup_step()
            .map(|(rate, _)| *rate)
            .filter(Rate::is_limited)
    }

    fn warmup_step(&self) -> Option<(&Rate, &Option<Limiter>)> {
        // Asked for every message: no clock read for a pool without a schedule.
        if self.warmup.is_empty() {
            return None;
        }
        let today = today();
        self.warmup
            .iter()
            .rev()
            .find(|(from, _, _)| *from <= today)
            .map(|(_, rate, limiter)| (rate, limiter))
    }

    /// The lane key of `site` for mail of this pool: the site's own name for the default
    /// pool, `SITE via POOL` for the others.
    pub fn site_key(&self, site: &Arc<str>) -> Arc<str> {
        if self.is_default {
            Arc::clone(site)
        } else {
            Arc::from(format!("{site} via {}", self.name))
        }
    }
}

/// Every pool, by name.
#[derive(Debug)]
pub struct Egress {
    default: Arc<Pool>,
    pools: HashMap<String, Arc<Pool>>,
}

impl Egress {
    /// Builds the pools of `config` (checked here); `local_address` is the source of a
    /// pool without addresses. In a cluster, warm-up caps are counted by `permits`.
    pub fn new(
        config: &EgressConfig,
        local_address: Option<IpAddr>,
        permits: Option<&Arc<dyn PermitSource>>,
    ) -> Result<Self, ConfigError> {
        config.check()?;
        let mut pools = HashMap::new();
        for name in config.names() {
            let pool = config.pools.get(&name).cloned().unwrap_or_default();
            let mut sources: Vec<Source> = pool
                .addresses
                .iter()
                .map(|a| Source {
                    address: Some(a.address),
                    helo_name: a
                        .helo_name
                        .as_deref()
                        .map(|h| HeloName::new(h).expect("checked above")),
                })
                .collect();
            if sources.is_empty() {
                sources.push(Source {
                    address: local_address,
                    helo_name: None,
                });
            }
            let warmup = pool
                .warmup
                .iter()
                .enumerate()
                .map(|(i, step)| {
                    let limiter = match permits {
                        Some(p) => step
                            .rate
                            .shared_limiter(format!("pool:{name}:warmup:{i}"), Arc::clone(p)),
                        None => step.rate.limiter(),
                    };
                    (step.from, step.rate, limiter)
                })
                .collect();
            let pool = Pool {
                name: Arc::from(name.as_str()),
                is_default: name == config.default_pool,
                sources,
                next: AtomicUsize::new(0),
                warmup,
            };
            pools.insert(name, Arc::new(pool));
        }
        let default = Arc::clone(&pools[&config.default_pool]);
        Ok(Self { default, pools })
    }

    /// The pool named `name`, or the default one for `None`; `None` when no such pool
    /// is configured (any more).
    pub fn pool(&self, name: Option<&str>) -> Option<&Arc<Pool>> {
        match name {
            None => Some(&self.default),
            Some(name) => self.pools.get(name),
        }
    }
}

impl Default for Egress {
    fn default() -> Self {
        Self::new(&EgressConfig::default(), None, None).expect("the default egress is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<EgressConfig, String> {
        let config: EgressConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.check().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(parse_day("1970-01-01"), Some(0));
        assert_eq!(parse_day("2026-01-01"), Some(20_454));
        assert_eq!(parse_day("2024-02-29"), Some(19_782));
        assert_eq!(parse_day("2025-02-29"), None);
        assert_eq!(parse_day("2026-13-01"), None);
        assert_eq!(parse_day("yesterday"), None);
        for day in [0, 19_782, 20_454, 25_000] {
            assert_eq!(parse_day(&format_day(day)), Some(day));
        }
    }

    #[test]
    fn reads_pools_and_refuses_mistakes() {
        let config = parse(
            r#"
            default_pool = "bulk"
            [pools.bulk]
            addresses = ["127.0.0.2", { address = "127.0.0.3", helo_name = "b.example" }]
            warmup = [["2026-01-01", "1000/d"], ["2026-01-08", "5000/d"]]
            [pools.transactional]
            addresses = ["::1"]
            "#,
        )
        .unwrap();
        assert_eq!(config.pools["bulk"].addresses.len(), 2);
        assert_eq!(
            config.pools["bulk"].addresses[1].helo_name.as_deref(),
            Some("b.example")
        );
        assert_eq!(config.names(), ["bulk", "default", "transactional"]);
        for (text, says) in [
            ("default_pool = \"nope\"", "egress.default_pool"),
            (
                "[pools.a]\naddresses = [\"127.0.0.2\", \"127.0.0.2\"]",
                "listed twice",
            ),
            ("[pools.a]\naddresses = [\"0.0.0.0\"]", "cannot be a source"),
            (
                "[pools.a]\naddresses = [\"mail.example\"]",
                "source address is",
            ),
            (
                "[pools.a]\naddresses = [{ address = \"127.0.0.2\", helo_name = \"a b\" }]",
                "helo_name",
            ),
            (
                "[pools.a]\nwarmup = [[\"2026-01-08\", \"1/d\"], [\"2026-01-01\", \"2/d\"]]",
                "must increase",
            ),
            ("[pools.a]\nwarmup = [[\"soon\", \"1/d\"]]", "YYYY-MM-DD"),
            ("[pools.\"a b\"]", "pool name"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn sources_go_in_turn_and_by_family() {
        let config = parse(
            r#"
            [pools.mixed]
            addresses = ["127.0.0.2", "127.0.0.3", "::1"]
            "#,
        )
        .unwrap();
        let egress = Egress::new(&config, None, None).unwrap();
        let pool = egress.pool(Some("mixed")).unwrap();
        let firsts: Vec<_> = (0..4)
            .map(|_| {
                pool.sources[pool.next_source(true).unwrap()]
                    .address
                    .unwrap()
            })
            .map(|a| a.to_string())
            .collect();
        // Three sources in turn; the v6 one is skipped for a v4 destination.
        assert_eq!(firsts, ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.2"]);
        assert_eq!(pool.next_source(false), Some(2));
        let v4_only = parse("[pools.v4]\naddresses = [\"127.0.0.2\"]").unwrap();
        let v4_only = Egress::new(&v4_only, None, None).unwrap();
        assert_eq!(v4_only.pool(Some("v4")).unwrap().next_source(false), None);
        let default = egress.pool(None).unwrap();
        assert!(default.is_default && default.sources[0].address.is_none());
        let site: Arc<str> = Arc::from("mx.example");
        assert_eq!(&*default.site_key(&site), "mx.example");
        assert_eq!(&*pool.site_key(&site), "mx.example via mixed");
        assert!(egress.pool(Some("gone")).is_none());
    }

    #[test]
    fn the_step_of_today_applies() {
        let day = today();
        let config = EgressConfig {
            pools: BTreeMap::from([(
                "warm".to_owned(),
                PoolConfig {
                    addresses: Vec::new(),
                    warmup: vec![
                        WarmupStep {
                            from: day - 10,
                            rate: "1/d".parse().unwrap(),
                        },
                        WarmupStep {
                            from: day,
                            rate: "0".parse().unwrap(),
                        },
                    ],
                },
            )]),
            ..EgressConfig::default()
        };
        let egress = Egress::new(&config, None, None).unwrap();
        // Today's step is unlimited: no limiter.
        assert!(
            egress
                .pool(Some("warm"))
                .unwrap()
                .warmup_limiter()
                .is_none()
        );
        assert_eq!(egress.pool(Some("warm")).unwrap().warmup_rate(), None);
        let mut config = config;
        config.pools.get_mut("warm").unwrap().warmup[1].from = day + 1;
        let egress = Egress::new(&config, None, None).unwrap();
        let warm = egress.pool(Some("warm")).unwrap();
        assert_eq!(
            warm.warmup_rate().map(|r| r.to_string()).as_deref(),
            Some("1/d")
        );
        let limiter = warm.warmup_limiter().unwrap();
        assert!(limiter.try_acquire(), "one a day: the first goes");
        assert!(!limiter.try_acquire(), "and the second waits");
    }
}
