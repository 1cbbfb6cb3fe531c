//! `volley.toml`: every section, every key optional with a documented default, an
//! unknown key refused by name, and secrets overridable from `VOLLEY_`-prefixed
//! environment variables.
//!
//! Each section's struct lives with the module that uses it; this module only
//! assembles them, reads the file and applies the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::cluster::ClusterConfig;
use crate::engine::{LimitsConfig, SmtpConfig};
use crate::message::{DkimConfig, ReturnPath, UnsubscribeConfig};
use crate::queue::{QueueConfig, RetentionConfig};
use crate::retry::RetryConfig;
use crate::route::{DnsConfig, RelayConfig, SecurityConfig};
use crate::template::TemplatesConfig;
use crate::webhooks::WebhooksConfig;

/// The whole of `volley.toml`: one field per section, each with its defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: the HTTP API.
    pub server: ServerConfig,
    /// `[queue]`: embedded or Redis.
    pub queue: QueueConfig,
    /// `[templates]`.
    pub templates: TemplatesConfig,
    /// `[smtp]`: sessions and pools.
    pub smtp: SmtpConfig,
    /// `[dns]`.
    pub dns: DnsConfig,
    /// `[relay]`: a smarthost instead of direct delivery.
    pub relay: RelayConfig,
    /// `[limits]`: message rates.
    pub limits: LimitsConfig,
    /// `[retry]`: schedule and maximum age.
    pub retry: RetryConfig,
    /// `[dkim]` (one key) or `[[dkim]]` (several, each message signed by all): absent
    /// means no signing.
    #[serde(deserialize_with = "crate::message::one_or_many")]
    pub dkim: Vec<DkimConfig>,
    /// `[unsubscribe]`: List-Unsubscribe on campaign messages.
    pub unsubscribe: UnsubscribeConfig,
    /// `[webhooks]`: event delivery to a URL.
    pub webhooks: WebhooksConfig,
    /// `[security]`.
    pub security: SecurityConfig,
    /// `[message]`: envelope sender and size limit.
    pub message: MessageConfig,
    /// `[retention]`: how long events and finished jobs are kept.
    pub retention: RetentionConfig,
    /// `[dispatch]`: what the dispatcher keeps in memory, and whether it runs.
    pub dispatch: DispatchConfig,
    /// `[submission]`: the SMTP submission listener; absent means none.
    pub submission: Option<SubmissionConfig>,
    /// `[bounces]`: the bounce and complaint intake; absent means none.
    pub bounces: Option<BouncesConfig>,
    /// `[cluster]`: how workers on one Redis share limits.
    pub cluster: ClusterConfig,
    /// `[egress]`: source address pools.
    pub egress: crate::engine::EgressConfig,
    /// `[mta_sts]`: MTA-STS policies of recipient domains.
    pub mta_sts: crate::route::MtaStsConfig,
    /// `[shaping]`: overrides of the shipped provider shaping.
    pub shaping: crate::engine::ShapingConfig,
    /// `[dane]`: TLSA records of MX hosts, DNSSEC-validated (off by default).
    pub dane: crate::route::DaneConfig,
    /// The file this was read from; `None` for the built-in defaults.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// The file read when no `--config` is given, if it exists in the working directory.
pub const DEFAULT_FILE: &str = "volley.toml";

/// `[server]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the HTTP API listens. Default `127.0.0.1:8025`.
    pub listen: SocketAddr,
    /// Bearer keys; required when `listen` is not a loopback address. Default none.
    pub api_keys: Vec<String>,
    /// Host names the API answers to besides IP addresses and `localhost` (`name`, or
    /// `name:port`); any other `Host` gets 421. Default none.
    pub allowed_hosts: Vec<String>,
    /// Origins whose pages may call the API besides its own (`https://admin.example.com`);
    /// any other `Origin` gets 403. Default none.
    pub allowed_origins: Vec<String>,
    /// Largest request body. Default `"16MiB"`.
    #[serde(deserialize_with = "byte_size")]
    pub max_body: usize,
    /// Most recipients of one campaign. Default 1,000,000.
    pub max_recipients: usize,
    /// From this many deliveries waiting (ready and scheduled), submissions get 429 with
    /// `Retry-After`. Default 0: no limit.
    pub max_queue_depth: u64,
    /// How long a graceful stop may take to store the last outcomes. Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: std::time::Duration,
    /// Time a client has to send a request's headers; also how long an idle keep-alive
    /// connection stays open. Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub header_timeout: std::time::Duration,
    /// Time a client has to send a request's body. Default `"60s"`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: std::time::Duration,
    /// API connections open at once; more wait to be accepted. Default 1,024.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8025)),
            api_keys: Vec::new(),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_body: 16 << 20,
            max_recipients: 1_000_000,
            max_queue_depth: 0,
            shutdown_timeout: std::time::Duration::from_secs(30),
            header_timeout: std::time::Duration::from_secs(30),
            request_timeout: std::time::Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// `[submission]`: applications hand volley messages over SMTP.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubmissionConfig {
    /// Where it listens. Default `127.0.0.1:2587`.
    pub listen: SocketAddr,
    /// The name in its greeting. Default: `[smtp] helo_name`.
    pub hostname: String,
    /// PEM certificate chain for STARTTLS; with `tls_key`, AUTH is only offered over TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for STARTTLS.
    pub tls_key: Option<PathBuf>,
    /// Users who may authenticate: name → argon2id PHC hash (`volley hash-password`),
    /// or name → `{ hash = "...", pool = "transactional" }` to send a user's mail from
    /// an egress pool.
    pub users: std::collections::BTreeMap<String, SubmissionUser>,
    /// The egress pool of mail from `trusted_networks` clients, and of users without
    /// their own. Default: `[egress] default_pool`.
    pub pool: Option<String>,
    /// Networks (CIDR) whose clients may submit without authenticating. Default none.
    pub trusted_networks: Vec<String>,
    /// Connections at once; more are told 421. Default 100.
    pub max_connections: usize,
    /// Recipients of one message at most. Default 100.
    pub max_recipients: usize,
    /// Largest message. Default `"25MiB"`.
    #[serde(deserialize_with = "byte_size")]
    pub max_message_size: usize,
    /// Messages per user (or per trusted client address). Default `"0"`, unlimited.
    pub rate: crate::rate::Rate,
    /// How long a client may stay silent. Default `"5m"` (RFC 5321).
    #[serde(with = "humantime_serde")]
    pub timeout: std::time::Duration,
}

/// One submission user: a hash alone, or a hash and the user's egress pool.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum SubmissionUser {
    /// `app = "$argon2id$..."`.
    Hash(String),
    /// `app = { hash = "$argon2id$...", pool = "transactional" }`.
    Full {
        /// The argon2id PHC hash.
        hash: String,
        /// The egress pool of the user's mail.
        pool: Option<String>,
    },
}

impl SubmissionUser {
    /// The user's password hash.
    pub fn hash(&self) -> &str {
        match self {
            Self::Hash(hash) | Self::Full { hash, .. } => hash,
        }
    }

    /// The user's own pool, if any.
    pub fn pool(&self) -> Option<&str> {
        match self {
            Self::Hash(_) => None,
            Self::Full { pool, .. } => pool.as_deref(),
        }
    }
}

impl Default for SubmissionConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2587)),
            hostname: String::new(),
            tls_cert: None,
            tls_key: None,
            users: std::collections::BTreeMap::new(),
            pool: None,
            trusted_networks: Vec::new(),
            max_connections: 100,
            max_recipients: 100,
            max_message_size: 25 << 20,
            rate: crate::rate::Rate::UNLIMITED,
            timeout: std::time::Duration::from_secs(300),
        }
    }
}

/// `[bounces]`: receiving servers and feedback loops send bounces and complaints here.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BouncesConfig {
    /// Where it listens. Default `127.0.0.1:2526` (port 25 in production, behind the MX of
    /// the bounce domains).
    pub listen: SocketAddr,
    /// The name in its greeting. Default: `[smtp] helo_name`.
    pub hostname: String,
    /// The domains mail is taken for: the return path's, and the address registered with
    /// feedback loops. Required.
    pub domains: Vec<String>,
    /// Signs VERP return paths (HMAC key, 32+ bytes; `VOLLEY_BOUNCES_SECRET`). Required.
    pub secret: String,
    /// Connections at once. Default 100.
    pub max_connections: usize,
    /// Largest report. Default `"10MiB"`.
    #[serde(deserialize_with = "byte_size")]
    pub max_message_size: usize,
    /// How long a client may stay silent. Default `"5m"`.
    #[serde(with = "humantime_serde")]
    pub timeout: std::time::Duration,
}

impl Default for BouncesConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2526)),
            hostname: String::new(),
            domains: Vec::new(),
            secret: String::new(),
            max_connections: 100,
            max_message_size: 10 << 20,
            timeout: std::time::Duration::from_secs(300),
        }
    }
}

/// `[message]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessageConfig {
    /// The envelope sender: `{ address = "bounces@example.com", verp = true }`.
    /// Default: the message's From address.
    pub return_path: Option<ReturnPath>,
    /// Largest built message. Default `"25MiB"`.
    #[serde(deserialize_with = "byte_size")]
    pub max_size: usize,
}

impl Default for MessageConfig {
    fn default() -> Self {
        Self {
            return_path: None,
            max_size: 25 << 20,
        }
    }
}

/// `[dispatch]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// Memory for the jobs' specs and one-off messages' bodies the dispatcher keeps
    /// while it sends them. Default `"64MiB"`.
    #[serde(deserialize_with = "byte_size")]
    pub cache: usize,
    /// Whether `volley serve` delivers. `false` makes an intake-only process: the API
    /// and the SMTP listeners store, and other workers on the same Redis deliver (or
    /// this one, restarted with `true`). Default true.
    pub deliver: bool,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            cache: 64 << 20,
            deliver: true,
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The configuration file that could not be read, as given or `./volley.toml`.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for volley (unknown keys are named here).
    #[error("{path}: {message}")]
    Parse {
        /// The configuration file that failed to parse, as given or `./volley.toml`.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A value that parses but cannot work.
    #[error("{field}: {message}")]
    Invalid {
        /// The setting at fault: a dotted key such as `server.api_keys`, or an environment
        /// variable such as `VOLLEY_LISTEN`.
        field: &'static str,
        /// Why.
        message: String,
    },
}

impl Config {
    /// Reads `path`; without one, `./volley.toml` when it exists, else the defaults.
    /// Then the environment overrides. [`Config::file`] says which file was read.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let default = Path::new(DEFAULT_FILE);
        let path = path.or_else(|| default.is_file().then_some(default));
        let mut config = match path {
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: shown.clone(),
                    source,
                })?;
                Self::parse(&text).map_err(|message| ConfigError::Parse {
                    path: shown,
                    message,
                })?
            }
            None => Self::default(),
        };
        config.file = path.map(Path::to_path_buf);
        config.apply_env(|key| std::env::var(key).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().to_owned())
    }

    /// Secrets (and a few deployment keys) from the environment:
    /// `VOLLEY_API_KEYS` (comma-separated), `VOLLEY_RELAY_PASSWORD`,
    /// `VOLLEY_RELAY_USERNAME`, `VOLLEY_UNSUBSCRIBE_SECRET`, `VOLLEY_WEBHOOKS_SECRET`,
    /// `VOLLEY_REDIS_URL`, `VOLLEY_DKIM_KEY_FILE`, `VOLLEY_LISTEN`, and `VOLLEY_BOUNCES_SECRET`
    /// when `[bounces]` is present.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(listen) = get("VOLLEY_LISTEN") {
            self.server.listen = listen.trim().parse().map_err(|_| ConfigError::Invalid {
                field: "VOLLEY_LISTEN",
                message: format!("{listen:?} is not an address like 127.0.0.1:8025"),
            })?;
        }
        if let Some(keys) = get("VOLLEY_API_KEYS") {
            self.server.api_keys = keys
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = get("VOLLEY_RELAY_USERNAME") {
            self.relay.username = v;
        }
        if let Some(v) = get("VOLLEY_RELAY_PASSWORD") {
            self.relay.password = v;
        }
        if let Some(v) = get("VOLLEY_UNSUBSCRIBE_SECRET") {
            self.unsubscribe.secret = v;
        }
        if let Some(v) = get("VOLLEY_WEBHOOKS_SECRET") {
            self.webhooks.secret = v;
        }
        if let (Some(v), Some(bounces)) = (get("VOLLEY_BOUNCES_SECRET"), self.bounces.as_mut()) {
            bounces.secret = v;
        }
        if let Some(v) = get("VOLLEY_REDIS_URL") {
            self.queue.redis_url = v;
        }
        if let (Some(v), Some(dkim)) = (get("VOLLEY_DKIM_KEY_FILE"), self.dkim.first_mut()) {
            dkim.key_file = PathBuf::from(v);
        }
        Ok(())
    }

    /// Checks what serde cannot: a listener beyond loopback needs API keys; limits are
    /// positive; listed hosts and origins are what a browser would send.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: String| Err(ConfigError::Invalid { field, message });
        let server = &self.server;
        if server.max_connections == 0 {
            return invalid("server.max_connections", "must be at least 1".into());
        }
        for (field, value) in [
            ("server.header_timeout", server.header_timeout),
            ("server.request_timeout", server.request_timeout),
        ] {
            if value.is_zero() {
                return invalid(field, "must be longer than 0s".into());
            }
        }
        if let Some(host) = server.allowed_hosts.iter().find(|h| !is_host(h)) {
            return invalid(
                "server.allowed_hosts",
                format!("{host:?} is not a host name (`name` or `name:port`)"),
            );
        }
        if let Some(origin) = server.allowed_origins.iter().find(|o| !is_origin(o)) {
            return invalid(
                "server.allowed_origins",
                format!("{origin:?} is not an origin (`https://name` or `https://name:port`)"),
            );
        }
        if !self.server.listen.ip().is_loopback() && self.server.api_keys.is_empty() {
            return Err(ConfigError::Invalid {
                field: "server.api_keys",
                message: format!(
                    "listening on {} (beyond loopback) requires at least one API key",
                    self.server.listen
                ),
            });
        }
        if self.server.api_keys.iter().any(|k| k.len() < 16) {
            return Err(ConfigError::Invalid {
                field: "server.api_keys",
                message: "each key needs at least 16 characters".into(),
            });
        }
        if let Err(crate::engine::ConfigError::Invalid { field, message }) = self.egress.check() {
            return invalid(field, message);
        }
        if let Err(crate::engine::ConfigError::Invalid { field, message }) =
            crate::engine::Shaping::new(&self.shaping, None)
        {
            return invalid(field, message);
        }
        Ok(())
    }
}

/// `name` or `name:port`, as in a `Host` header.
fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// `scheme://host[:port]`, as in an `Origin` header (a trailing `/` is forgiven).
fn is_origin(origin: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        origin
            .strip_prefix(scheme)
            .is_some_and(|rest| is_host(rest.strip_suffix('/').unwrap_or(rest)))
    })
}

/// Parses `"16MiB"`, `"512KiB"`, `"25MB"`, `"1GiB"` or a plain number of bytes.
pub fn parse_byte_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?}"))?;
    let factor: usize = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "invalid size unit in {text:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(usize),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(n) => Ok(n),
        Raw::Text(t) => parse_byte_size(&t).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of DESIGN.md's configuration section parses as is.
    const CONTRACT: &str = r#"
[server]
listen = "127.0.0.1:8025"
api_keys = []
max_body = "16MiB"

[queue]
backend = "embedded"
path = "volley-data"
redis_url = "redis://127.0.0.1:6379"
lease = "5m"

[templates]
path = "templates"

[smtp]
helo_name = "mail.example.com"
port = 25
tls = "opportunistic"
max_connections_per_site = 20
max_messages_per_connection = 1000
prefer_chunking = true
[smtp.timeouts]
connect = "30s"

[dns]
nameservers = []

[relay]
host = "smtp.example.com:587"
tls = "starttls"
username = ""
password = ""

[limits]
global = "0"
per_site = "0"
[limits.domains]
"gmail.com" = "100/s"

[retry]
schedule = ["5m", "10m", "30m", "1h", "2h", "4h"]
max_age = "5d"

[dkim]
domain = "example.com"
selector = "s1"
key_file = "dkim.pem"
algorithm = "rsa-sha256"

[unsubscribe]
url = "https://example.com/unsubscribe/{token}"
mailto = ""
one_click = true

[webhooks]
url = ""
secret = ""

[security]
allow_loopback_mx = false
"#;

    #[test]
    fn the_documented_example_parses() {
        let config = Config::parse(CONTRACT).unwrap();
        assert_eq!(config.server.max_body, 16 << 20);
        assert_eq!(config.smtp.port, 25);
        assert_eq!(config.retry.schedule.len(), 6);
        assert_eq!(config.dkim[0].selector, "s1");
        assert!(config.limits.domains["gmail.com"].is_limited());
    }

    #[test]
    fn dkim_takes_one_key_or_several() {
        let two = Config::parse(
            "[[dkim]]\ndomain = \"example.com\"\nselector = \"rsa\"\nkey_file = \"r.pem\"\n\
             [[dkim]]\ndomain = \"example.com\"\nselector = \"ed\"\nkey_file = \"e.pem\"\n\
             algorithm = \"ed25519-sha256\"\n",
        )
        .unwrap();
        let selectors: Vec<_> = two.dkim.iter().map(|k| k.selector.as_str()).collect();
        assert_eq!(selectors, ["rsa", "ed"]);
        let err = Config::parse("[[dkim]]\ndomain = \"example.com\"\nselector = \"a\"\nkey_file = \"k\"\nkeyfile = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("keyfile"), "{err}");
        let same = [
            DkimConfig::new(
                "example.com",
                "s1",
                "a.pem",
                crate::message::DkimAlgorithm::RsaSha256,
            ),
            DkimConfig::new(
                "EXAMPLE.com",
                "S1",
                "b.pem",
                crate::message::DkimAlgorithm::Ed25519Sha256,
            ),
        ];
        let err = crate::message::load_signers(&same).unwrap_err().to_string();
        assert!(err.contains("own selector"), "{err}");
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8025".parse().unwrap());
        assert!(config.dkim.is_empty());
        assert!(config.validate().is_ok());
    }

    #[test]
    fn unknown_keys_are_named() {
        for (text, key) in [
            ("[smtp]\nprot = 25\n", "prot"),
            ("[nope]\n", "nope"),
            (
                "[server]\nlisten = \"127.0.0.1:1\"\napi_key = []\n",
                "api_key",
            ),
        ] {
            let err = Config::parse(text).unwrap_err();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn environment_overrides_secrets() {
        let mut config =
            Config::parse("[relay]\nhost = \"smtp.example.com\"\npassword = \"file\"\n").unwrap();
        config
            .apply_env(|k| match k {
                "VOLLEY_RELAY_PASSWORD" => Some("from-env".into()),
                "VOLLEY_API_KEYS" => Some("aaaaaaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbbbbbb".into()),
                "VOLLEY_LISTEN" => Some("127.0.0.1:9025".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(config.relay.password, "from-env");
        assert_eq!(config.server.api_keys.len(), 2);
        assert_eq!(config.server.listen, "127.0.0.1:9025".parse().unwrap());
        let err = config
            .apply_env(|k| (k == "VOLLEY_LISTEN").then(|| "port 80".into()))
            .unwrap_err();
        assert!(err.to_string().contains("VOLLEY_LISTEN"), "{err}");
    }

    #[test]
    fn public_listen_needs_keys() {
        let config = Config::parse("[server]\nlisten = \"0.0.0.0:8025\"\n").unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("server.api_keys")
        );
        let config = Config::parse(
            "[server]\nlisten = \"0.0.0.0:8025\"\napi_keys = [\"0123456789abcdef0123\"]\n",
        )
        .unwrap();
        assert!(config.validate().is_ok());
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_byte_size("1000"), Ok(1000));
        assert_eq!(parse_byte_size("2 KB"), Ok(2000));
        assert!(parse_byte_size("12 parsecs").is_err());
        assert!(parse_byte_size("MiB").is_err());
    }
}
