//! Provider shaping: mailbox providers run many MX host names for many domains, and
//! their limits apply per provider, not per MX set. The shipped `shaping.toml` (built
//! in) groups MX host suffixes into providers with their connection, per-connection
//! and rate limits and the replies that mean "slow down"; `[shaping]` in volley.toml
//! overrides or adds providers. Every site whose MX hosts all belong to one provider
//! shares that provider's limits and pauses, and mail still goes to each domain's own
//! MX hosts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::ConfigError;
use crate::rate::{Limiter, PermitSource, Rate};

/// The built-in provider data.
pub const SHIPPED: &str = include_str!("../../shaping.toml");

/// `[shaping]` in volley.toml.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShapingConfig {
    /// Apply provider shaping. Default true.
    pub enabled: bool,
    /// Overrides of the shipped providers' fields, and new providers.
    pub providers: BTreeMap<String, ProviderConfig>,
}

impl Default for ShapingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            providers: BTreeMap::new(),
        }
    }
}

/// The shipped file's shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShippedFile {
    providers: BTreeMap<String, ProviderConfig>,
}

/// One provider; every field optional so that an override names only what it changes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// MX host name suffixes (label boundary).
    pub mx_suffixes: Option<Vec<String>>,
    /// Connections to the provider at once, all its sites together.
    pub connections: Option<usize>,
    /// Messages on one connection.
    pub messages_per_connection: Option<u64>,
    /// Messages to the provider, all its sites together.
    pub rate: Option<Rate>,
    /// Replies that mean "slow down".
    pub rules: Option<Vec<Rule>>,
}

/// A reply rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Text found in the reply (any case).
    #[serde(rename = "match")]
    pub pattern: String,
    /// What it means.
    pub action: Action,
    /// How long `pause` lasts.
    #[serde(default, rename = "for", with = "humantime_serde")]
    pub duration: Option<Duration>,
}

/// What a matching reply makes volley do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Halve the site's connections and pause the provider for `[smtp] throttle_pause`.
    Slow,
    /// Stop sending to the provider for the rule's `for`.
    Pause,
}

/// A provider as the engine runs it.
#[derive(Debug)]
pub struct Provider {
    /// Its name.
    pub name: Arc<str>,
    /// MX host suffixes, lower case, without leading or trailing dots.
    pub mx_suffixes: Vec<String>,
    /// Most connections at once, all its sites together.
    pub connections: usize,
    /// Messages per connection, when it sets them.
    pub messages_per_connection: Option<u64>,
    /// The configured rate.
    pub rate: Rate,
    /// Its reply rules, patterns lower case.
    pub rules: Vec<Rule>,
    /// Connection permits shared by its sites (idle connections give theirs back when
    /// another site of the provider waits).
    pub(crate) budget: Arc<super::lane::Budget>,
    /// Its rate limiter, shared by its sites (and the cluster's workers).
    pub(crate) limiter: Option<Limiter>,
    /// Until when (Unix ms) it is paused; 0 when not.
    pub(crate) paused_until_ms: AtomicU64,
}

impl Provider {
    /// Whether `host` is one of its MX hosts.
    pub fn owns(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx_suffixes.iter().any(|suffix| {
            host == *suffix
                || host
                    .strip_suffix(suffix.as_str())
                    .is_some_and(|rest| rest.ends_with('.'))
        })
    }

    /// What a transient reply means under its rules: the pause to apply, if a rule
    /// matches (`slow`: `default_pause`).
    pub fn rule_for(&self, reply: &str, default_pause: Duration) -> Option<(Action, Duration)> {
        let reply = reply.to_ascii_lowercase();
        self.rules
            .iter()
            .find(|r| reply.contains(&r.pattern))
            .map(|r| match r.action {
                Action::Slow => (Action::Slow, default_pause),
                Action::Pause => (Action::Pause, r.duration.unwrap_or(default_pause)),
            })
    }

    /// Its key in the cluster's slots and pauses.
    pub fn cluster_key(&self) -> String {
        format!("provider:{}", self.name)
    }

    /// Pauses the provider until `until_ms` (never shortens a pause).
    pub(crate) fn pause_until(&self, until_ms: u64) {
        self.paused_until_ms.fetch_max(until_ms, Ordering::Relaxed);
    }

    /// Whether it is paused at `now_ms`.
    pub(crate) fn paused_at(&self, now_ms: u64) -> bool {
        self.paused_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// How much of its pause is left at `now_ms`.
    pub(crate) fn pause_left(&self, now_ms: u64) -> Option<Duration> {
        let until = self.paused_until_ms.load(Ordering::Relaxed);
        (until > now_ms).then(|| Duration::from_millis(until - now_ms))
    }
}

/// Every provider, in name order.
#[derive(Debug, Default)]
pub struct Shaping {
    providers: Vec<Arc<Provider>>,
}

impl Shaping {
    /// The shipped providers with `config`'s overrides; none when shaping is off. In a
    /// cluster the rates are counted by `permits`.
    pub fn new(
        config: &ShapingConfig,
        permits: Option<&Arc<dyn PermitSource>>,
    ) -> Result<Self, ConfigError> {
        if !config.enabled {
            return Ok(Self::default());
        }
        let shipped: ShippedFile = toml::from_str(SHIPPED).map_err(|e| ConfigError::Invalid {
            field: "shaping",
            message: format!("the built-in shaping.toml: {e}"),
        })?;
        let mut merged = shipped.providers;
        for (name, over) in &config.providers {
            let entry = merged.entry(name.clone()).or_default();
            let over = over.clone();
            entry.mx_suffixes = over.mx_suffixes.or(entry.mx_suffixes.take());
            entry.connections = over.connections.or(entry.connections);
            entry.messages_per_connection = over
                .messages_per_connection
                .or(entry.messages_per_connection);
            entry.rate = over.rate.or(entry.rate);
            entry.rules = over.rules.or(entry.rules.take());
        }
        let invalid = |message: String| ConfigError::Invalid {
            field: "shaping.providers",
            message,
        };
        let mut providers = Vec::new();
        for (name, p) in merged {
            let suffixes: Vec<String> = p
                .mx_suffixes
                .unwrap_or_default()
                .iter()
                .map(|s| s.trim_matches('.').to_ascii_lowercase())
                .collect();
            if suffixes.is_empty() || suffixes.iter().any(String::is_empty) {
                return Err(invalid(format!(
                    "{name}: mx_suffixes must list host name suffixes"
                )));
            }
            let connections = p.connections.unwrap_or(20);
            if connections == 0 || p.messages_per_connection == Some(0) {
                return Err(invalid(format!(
                    "{name}: connections and messages_per_connection must be at least 1"
                )));
            }
            let mut rules = p.rules.unwrap_or_default();
            for rule in &mut rules {
                if rule.pattern.trim().is_empty() {
                    return Err(invalid(format!("{name}: a rule with an empty match")));
                }
                if rule.action == Action::Pause && rule.duration.is_none_or(|d| d.is_zero()) {
                    return Err(invalid(format!(
                        "{name}: the pause rule for {:?} needs `for`",
                        rule.pattern
                    )));
                }
                rule.pattern = rule.pattern.to_ascii_lowercase();
            }
            let rate = p.rate.unwrap_or(Rate::UNLIMITED);
            let limiter = match permits {
                Some(permits) => {
                    rate.shared_limiter(format!("provider:{name}"), Arc::clone(permits))
                }
                None => rate.limiter(),
            };
            providers.push(Arc::new(Provider {
                name: Arc::from(name.as_str()),
                mx_suffixes: suffixes,
                connections,
                messages_per_connection: p.messages_per_connection,
                rate,
                rules,
                budget: Arc::new(super::lane::Budget::new(connections)),
                limiter,
                paused_until_ms: AtomicU64::new(0),
            }));
        }
        Ok(Self { providers })
    }

    /// The provider of a site whose MX hosts are `hosts`: the one that owns them all.
    pub fn provider_of<'a>(
        &self,
        hosts: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| {
            let mut any = false;
            let all = hosts.clone().into_iter().all(|h| {
                any = true;
                p.owns(h)
            });
            any && all
        })
    }

    /// Every provider.
    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_reads_and_groups_mx_hosts() {
        let shaping = Shaping::new(&ShapingConfig::default(), None).unwrap();
        let names: Vec<&str> = shaping.providers().iter().map(|p| &*p.name).collect();
        assert_eq!(names, ["apple", "google", "microsoft", "yahoo"]);
        let of = |hosts: &[&str]| {
            shaping
                .provider_of(hosts.iter().copied())
                .map(|p| p.name.to_string())
        };
        assert_eq!(
            of(&[
                "gmail-smtp-in.l.google.com",
                "alt1.gmail-smtp-in.l.google.com"
            ])
            .as_deref(),
            Some("google")
        );
        assert_eq!(
            of(&["aspmx.l.google.com.", "aspmx2.googlemail.com"]).as_deref(),
            Some("google")
        );
        assert_eq!(
            of(&["example-com.mail.protection.outlook.com"]).as_deref(),
            Some("microsoft")
        );
        assert_eq!(of(&["mta5.am0.yahoodns.net"]).as_deref(), Some("yahoo"));
        assert_eq!(of(&["mx01.mail.icloud.com"]).as_deref(), Some("apple"));
        assert_eq!(of(&["notgoogle.com"]), None, "a label boundary");
        assert_eq!(
            of(&["aspmx.l.google.com", "mx.example.org"]),
            None,
            "all or none"
        );
        assert_eq!(of(&[]), None);
        let yahoo = &shaping.providers()[3];
        let pause = Duration::from_secs(30);
        assert_eq!(
            yahoo.rule_for(
                "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred",
                pause
            ),
            Some((Action::Pause, Duration::from_secs(3600)))
        );
        assert_eq!(yahoo.rule_for("421 4.7.0 try later", pause), None);
    }

    #[test]
    fn user_rules_override_and_add() {
        let config: ShapingConfig = toml::from_str(
            r#"
            [providers.google]
            connections = 3
            [providers.corp]
            mx_suffixes = ["mx.corp.example"]
            rate = "10/s"
            rules = [{ match = "slow down", action = "pause", for = "2m" }]
            "#,
        )
        .unwrap();
        let shaping = Shaping::new(&config, None).unwrap();
        let google = shaping.provider_of(["smtp.google.com"]).unwrap();
        assert_eq!(google.connections, 3);
        assert_eq!(
            google.messages_per_connection,
            Some(100),
            "the rest is kept"
        );
        assert!(!google.rules.is_empty());
        let corp = shaping.provider_of(["a.mx.corp.example"]).unwrap();
        assert!(corp.rate.is_limited() && corp.limiter.is_some());
        assert_eq!(
            corp.rule_for("451 4.3.2 SLOW DOWN please", Duration::ZERO),
            Some((Action::Pause, Duration::from_secs(120)))
        );
        for bad in [
            "[providers.x]\nconnections = 1",
            "[providers.x]\nmx_suffixes = [\"x.example\"]\nconnections = 0",
            "[providers.x]\nmx_suffixes = [\"x.example\"]\nrules = [{ match = \"a\", action = \"pause\" }]",
        ] {
            let config: ShapingConfig = toml::from_str(bad).unwrap();
            assert!(Shaping::new(&config, None).is_err(), "{bad}");
        }
        let off = ShapingConfig {
            enabled: false,
            ..ShapingConfig::default()
        };
        assert!(Shaping::new(&off, None).unwrap().providers().is_empty());
    }
}
