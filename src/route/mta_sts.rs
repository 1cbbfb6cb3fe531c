//! MTA-STS (RFC 8461): a receiving domain's demand for verified TLS to named MX hosts.
//!
//! The `_mta-sts.DOMAIN` TXT record says a policy exists and names its version (`id`);
//! the policy itself comes over HTTPS from `mta-sts.DOMAIN/.well-known/mta-sts.txt`,
//! its certificate verified (webpki roots plus `[smtp] ca_file`), its host resolved by
//! our own resolver. Policies are cached for their `max_age` and fetched again when the
//! TXT id changes; the TXT record is asked again every `[mta_sts] recheck` (five minutes
//! unless configured). As the RFC
//! says, a policy that cannot be fetched leaves the cached one in force, or none.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::resolve::Router;
use crate::metrics::{Counter, Metrics};

/// How long a domain's TXT answer is trusted before it is asked again, by default.
const RECHECK: Duration = Duration::from_secs(300);
/// Largest policy accepted (RFC 8461 asks for small files; 64 KiB is generous).
const MAX_POLICY: usize = 64 * 1024;
/// Time for the whole fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `max_age` the RFC allows (about a year).
const MAX_AGE_LIMIT: u64 = 31_557_600;
/// Domains kept in the cache at most; the oldest checks go first.
const CACHE_LIMIT: usize = 50_000;

/// `[mta_sts]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MtaStsConfig {
    /// Look policies up for direct-to-MX delivery. Default true.
    pub enabled: bool,
    /// The HTTPS port of policy hosts. 443; other values are for tests.
    pub port: u16,
    /// How long a domain's `_mta-sts` TXT answer (or its absence) is kept before it is
    /// asked again, to see whether the policy's id changed. Default 5 minutes.
    #[serde(with = "humantime_serde")]
    pub recheck: Duration,
}

impl Default for MtaStsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            port: 443,
            recheck: RECHECK,
        }
    }
}

/// What a policy asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to matching MX hosts over verified TLS; otherwise defer.
    Enforce,
    /// Deliver as usual; report what enforcing would have refused.
    Testing,
    /// The domain withdrew its policy.
    None,
}

impl Mode {
    /// As the policy file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A fetched policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The TXT record's id it was fetched under.
    pub id: String,
    /// Enforce, testing or none.
    pub mode: Mode,
    /// MX patterns: `mail.example.com` or `*.example.com` (one label).
    pub mx: Vec<String>,
    /// How long it may be cached, in seconds.
    pub max_age: u64,
}

impl Policy {
    /// Parses a policy file (RFC 8461 section 3.2).
    pub fn parse(id: &str, text: &str) -> Result<Self, String> {
        let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(format!("line {line:?} is not key: value"));
            };
            let value = value.trim();
            match key.trim() {
                "version" => version = Some(value.to_owned()),
                "mode" => {
                    mode = Some(match value {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        other => return Err(format!("unknown mode {other:?}")),
                    });
                }
                "max_age" => {
                    let n: u64 = value
                        .parse()
                        .map_err(|_| format!("max_age {value:?} is not a number"))?;
                    max_age = Some(n.min(MAX_AGE_LIMIT));
                }
                "mx" => mx.push(value.trim_end_matches('.').to_ascii_lowercase()),
                // Unknown keys are ignored (extensions).
                _ => {}
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err("version is not STSv1".into());
        }
        let mode = mode.ok_or("no mode")?;
        let max_age = max_age.ok_or("no max_age")?;
        if mx.is_empty() && mode != Mode::None {
            return Err("no mx".into());
        }
        Ok(Self {
            id: id.to_owned(),
            mode,
            mx,
            max_age,
        })
    }

    /// Whether MX host `host` matches one of the policy's patterns: exactly, or
    /// `*.example.com` for one more label (RFC 8461 section 4.1).
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .strip_suffix(parent)
                    .and_then(|label| label.strip_suffix('.'))
                    .is_some_and(|label| !label.is_empty() && !label.contains('.')),
                None => *pattern == host,
            })
    }
}

/// The `id` of a domain's `v=STSv1` TXT record: `Ok(None)` without exactly one such
/// record (then there is no policy); `Err` for a record that does not parse.
fn txt_id(records: &[String]) -> Result<Option<String>, String> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| r.trim_start().starts_with("v=STSv1"))
        .collect();
    let [record] = sts.as_slice() else {
        return Ok(None);
    };
    let id = record
        .split(';')
        .filter_map(|field| field.trim().split_once('='))
        .find(|(k, _)| k.trim() == "id")
        .map(|(_, v)| v.trim().to_owned())
        .ok_or_else(|| format!("TXT record {record:?} has no id"))?;
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!(
            "TXT record id {id:?} is not 1 to 32 letters and digits"
        ));
    }
    Ok(Some(id))
}

/// One domain's cache entry.
#[derive(Debug, Clone)]
struct Entry {
    /// When the TXT record was last asked.
    checked: Instant,
    /// The policy in force and when it expires.
    policy: Option<(Arc<Policy>, Instant)>,
}

impl Entry {
    fn current(&self, now: Instant) -> Option<Arc<Policy>> {
        self.policy
            .as_ref()
            .filter(|(_, expires)| *expires > now)
            .map(|(p, _)| Arc::clone(p))
    }
}

/// Looks policies up and keeps them.
pub struct MtaSts {
    router: Arc<Router>,
    port: u16,
    recheck: Duration,
    tls: rustls::ClientConfig,
    cache: Mutex<HashMap<String, Entry>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MtaSts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtaSts")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// What a fetch came to.
type Fetched = Result<Policy, String>;

impl MtaSts {
    /// Policies asked of `router`'s resolver, fetched on `config.port` over TLS verified
    /// with `tls`; fetches are counted in `metrics`.
    pub fn new(
        router: Arc<Router>,
        config: &MtaStsConfig,
        tls: rustls::ClientConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            router,
            port: config.port,
            recheck: config.recheck,
            tls,
            cache: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The policy of `domain` when a recent answer is cached: `Some(None)` for no policy;
    /// `None` when it must be asked with [`Self::policy`].
    pub fn cached(&self, domain: &str) -> Option<Option<Arc<Policy>>> {
        let now = Instant::now();
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(domain)?;
        (now.duration_since(entry.checked) < self.recheck).then(|| entry.current(now))
    }

    /// The policy of `domain` in force now: asks the TXT record, fetches the policy when
    /// its id is new, keeps the cached one when anything fails.
    pub async fn policy(&self, domain: &str) -> Option<Arc<Policy>> {
        if let Some(answer) = self.cached(domain) {
            return answer;
        }
        let now = Instant::now();
        let previous = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.get(domain).and_then(|e| e.current(now))
        };
        let name = format!("_mta-sts.{domain}");
        let id = match self
            .router
            .txt(&name)
            .await
            .map(|r| txt_id(&r.unwrap_or_default()))
        {
            Ok(Ok(id)) => id,
            Ok(Err(e)) | Err(e) => {
                tracing::info!(domain, error = %e, "MTA-STS TXT lookup failed; the cached policy (if any) applies");
                None
            }
        };
        let policy = match id {
            // No record: a cached policy stays in force until it expires (RFC 8461 5.1).
            None => previous.map(|p| (p, None)),
            Some(id) if previous.as_ref().is_some_and(|p| p.id == id) => {
                previous.map(|p| (p, None))
            }
            Some(id) => match self.fetch(domain, &id).await {
                Ok(policy) => {
                    self.metrics.add(Counter::MtaStsFetched, 1);
                    tracing::info!(domain, id, mode = policy.mode.as_str(), mx = ?policy.mx, max_age = policy.max_age, "MTA-STS policy fetched");
                    let expires = now + Duration::from_secs(policy.max_age);
                    Some((Arc::new(policy), Some(expires)))
                }
                Err(e) => {
                    self.metrics.add(Counter::MtaStsFetchFailed, 1);
                    tracing::warn!(domain, id, error = %e, "MTA-STS policy fetch failed; the cached policy (if any) applies");
                    previous.map(|p| (p, None))
                }
            },
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT && !cache.contains_key(domain) {
            let oldest = cache
                .iter()
                .min_by_key(|(_, e)| e.checked)
                .map(|(d, _)| d.clone());
            if let Some(oldest) = oldest {
                cache.remove(&oldest);
            }
        }
        let entry = cache.entry(domain.to_owned()).or_insert(Entry {
            checked: now,
            policy: None,
        });
        entry.checked = now;
        match policy {
            Some((policy, Some(expires))) => entry.policy = Some((Arc::clone(&policy), expires)),
            Some(_) => {}
            None => entry.policy = None,
        }
        entry.current(now)
    }

    /// Fetches `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`.
    async fn fetch(&self, domain: &str, id: &str) -> Fetched {
        let host = format!("mta-sts.{domain}");
        let ips = self.router.addresses(&host).await?;
        let addrs: Vec<SocketAddr> = ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, self.port))
            .collect();
        let url = if self.port == 443 {
            format!("https://{host}/.well-known/mta-sts.txt")
        } else {
            format!("https://{host}:{}/.well-known/mta-sts.txt", self.port)
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(self.tls.clone())
            .resolve_to_addrs(&host, &addrs)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .user_agent(concat!("volley/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        let mut response = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(format!("{url}: HTTP {}", response.status()));
        }
        let text_plain = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("text/plain"));
        if !text_plain {
            return Err(format!("{url}: not text/plain"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_POLICY {
                return Err(format!("{url}: larger than {MAX_POLICY} bytes"));
            }
        }
        let text = String::from_utf8(body).map_err(|_| format!("{url}: not UTF-8"))?;
        Policy::parse(id, &text).map_err(|e| format!("{url}: {e}"))
    }
}

/// An error and its sources, in one line (reqwest hides the TLS reason in a source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_rfc_example_and_refuses_bad_files() {
        let text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";
        let policy = Policy::parse("20160831085700Z", text).unwrap();
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.max_age, 604_800);
        assert!(policy.matches("mail.example.com"));
        assert!(policy.matches("MAIL.example.com."));
        assert!(policy.matches("mx1.example.net"));
        assert!(!policy.matches("a.b.example.net"), "one label only");
        assert!(!policy.matches("example.net"));
        assert!(!policy.matches("mail.example.org"));
        for (bad, says) in [
            (
                "version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n",
                "STSv1",
            ),
            ("version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n", "mode"),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
            ("version: STSv1\nmode: enforce\nmx: a\n", "max_age"),
            ("version: STSv1\nmode enforce\n", "key: value"),
        ] {
            let err = Policy::parse("1", bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let capped = Policy::parse("1", "version: STSv1\nmode: none\nmax_age: 99999999999\n");
        assert_eq!(capped.unwrap().max_age, MAX_AGE_LIMIT);
    }

    #[test]
    fn one_sts_txt_record_with_an_id() {
        let records = |r: &[&str]| r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            txt_id(&records(&["v=STSv1; id=20160831085700Z;", "v=spf1 -all"])),
            Ok(Some("20160831085700Z".into()))
        );
        assert_eq!(txt_id(&records(&["v=spf1 -all"])), Ok(None));
        assert_eq!(
            txt_id(&records(&["v=STSv1; id=a;", "v=STSv1; id=b;"])),
            Ok(None),
            "two records: no policy"
        );
        assert!(txt_id(&records(&["v=STSv1;"])).is_err());
        assert!(txt_id(&records(&["v=STSv1; id=not-alnum;"])).is_err());
    }
}
