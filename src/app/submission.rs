//! Builds the SMTP submission listener from `[submission]`: TLS files, users, trusted
//! networks and limits, each refused in one line naming its key.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::Notify;

use super::config::Config;
use crate::inbound::{Intake, Listener, Users};
use crate::queue::AnyQueue;
use crate::smtp::server::ServerSettings;

/// Room kept under `message.max_size` for what volley adds to a submitted message
/// (`Date`, `Message-ID`, DKIM signatures): a message taken with a 250 must never turn
/// out too big to send.
const ADDED_HEADERS: usize = 16 << 10;

/// A `[submission]` setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("submission.{field}: {message}")]
pub struct SubmissionError {
    /// The key.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn error(field: &'static str, message: impl Into<String>) -> SubmissionError {
    SubmissionError {
        field,
        message: message.into(),
    }
}

/// Checks `[submission]` as the listener would be built (`volley check`).
pub fn check(config: &Config) -> Result<(), SubmissionError> {
    parts(config).map(|_| ())
}

/// The listener `[submission]` describes; `None` when the section is absent.
pub fn listener(
    config: &Config,
    queue: Arc<AnyQueue>,
    wake: Arc<Notify>,
) -> Result<Option<Listener<Intake>>, SubmissionError> {
    let Some(p) = parts(config)? else {
        return Ok(None);
    };
    let hostname = p.settings.hostname.clone();
    Ok(Some(Listener {
        settings: Arc::new(p.settings),
        tls: p.tls,
        users: Arc::new(p.users),
        trusted: p.trusted,
        max_connections: p.max_connections,
        timeout: p.timeout,
        intake: Arc::new(Intake::new(queue, wake, hostname, p.rate).with_pools(p.pools)),
    }))
}

use crate::inbound::Pools;

/// The checked settings of a listener.
struct Parts {
    settings: ServerSettings,
    tls: Option<tokio_rustls::TlsAcceptor>,
    users: Users,
    pools: Pools,
    trusted: Vec<IpNet>,
    max_connections: usize,
    timeout: std::time::Duration,
    rate: crate::rate::Rate,
}

/// `[submission]` checked, without a queue; `None` when the section is absent.
fn parts(config: &Config) -> Result<Option<Parts>, SubmissionError> {
    let Some(c) = &config.submission else {
        return Ok(None);
    };
    let tls = match (&c.tls_cert, &c.tls_key) {
        (Some(cert), Some(key)) => Some(
            crate::smtp::tls::acceptor(cert, key).map_err(|e| error("tls_cert", e.to_string()))?,
        ),
        (None, None) => None,
        (Some(_), None) => return Err(error("tls_key", "needed with tls_cert")),
        (None, Some(_)) => return Err(error("tls_cert", "needed with tls_key")),
    };
    let users = Users::new(
        c.users
            .iter()
            .map(|(name, user)| (name.clone(), user.hash().to_owned())),
    )
    .map_err(|e| error("users", e.to_string()))?;
    for pool in c
        .pool
        .as_deref()
        .into_iter()
        .chain(c.users.values().filter_map(|u| u.pool()))
    {
        if !config.egress.knows(pool) {
            return Err(error(
                "users",
                format!("egress pool {pool:?} is not in [egress.pools]"),
            ));
        }
    }
    let pools = Pools {
        users: c
            .users
            .iter()
            .filter_map(|(name, user)| Some((name.clone(), user.pool()?.to_owned())))
            .collect(),
        others: c.pool.clone(),
    };
    if !users.is_empty() && tls.is_none() && !c.listen.ip().is_loopback() {
        return Err(error(
            "tls_cert",
            format!(
                "users send passwords: listening on {} (beyond loopback) needs STARTTLS",
                c.listen
            ),
        ));
    }
    let trusted = c
        .trusted_networks
        .iter()
        .map(|n| {
            parse_network(n).ok_or_else(|| {
                error(
                    "trusted_networks",
                    format!("{n:?} is not a network (\"10.0.0.0/8\", \"::1/128\" or an address)"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if c.max_connections == 0 {
        return Err(error("max_connections", "must be at least 1"));
    }
    if config.message.max_size <= 2 * ADDED_HEADERS {
        return Err(error(
            "max_message_size",
            format!(
                "message.max_size must be above {} bytes: a submitted message may be that \
                 much smaller, for the Date, Message-ID and DKIM headers volley adds",
                2 * ADDED_HEADERS
            ),
        ));
    }
    if c.max_recipients == 0 {
        return Err(error("max_recipients", "must be at least 1"));
    }
    if c.timeout.is_zero() {
        return Err(error("timeout", "must be longer than 0s"));
    }
    let hostname = if c.hostname.is_empty() {
        config.smtp.helo_name.clone()
    } else {
        c.hostname.clone()
    };
    let settings = ServerSettings {
        hostname,
        max_message_size: c
            .max_message_size
            .min(config.message.max_size.saturating_sub(ADDED_HEADERS)),
        max_recipients: c.max_recipients,
        starttls: tls.is_some(),
        auth: !users.is_empty(),
    };
    Ok(Some(Parts {
        settings,
        tls,
        users,
        pools,
        trusted,
        max_connections: c.max_connections,
        timeout: c.timeout,
        rate: c.rate,
    }))
}

/// `10.0.0.0/8`, `::1/128`, or a bare address (one host).
fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_may_have_their_own_pool_and_it_must_exist() {
        let hash = crate::inbound::hash_password("pw");
        let text = format!(
            "[submission]\nlisten = \"127.0.0.1:0\"\nusers = {{ app = {{ hash = \"{hash}\", pool = \"tx\" }}, other = \"{hash}\" }}\n[egress.pools.tx]\n"
        );
        let config = Config::parse(&text).unwrap();
        let checked = parts(&config).unwrap().unwrap();
        assert_eq!(
            checked.pools.users.get("app").map(String::as_str),
            Some("tx")
        );
        assert!(!checked.pools.users.contains_key("other"));
        assert!(checked.users.verify("app", "pw"));
        let unknown = text.replace("[egress.pools.tx]", "");
        let err = parts(&Config::parse(&unknown).unwrap()).err().unwrap();
        assert!(err.to_string().contains("egress pool \"tx\""), "{err}");
    }

    #[test]
    fn the_size_limit_leaves_room_for_the_headers_volley_adds() {
        let text = "[submission]\nlisten = \"127.0.0.1:0\"\n[message]\nmax_size = \"100KiB\"\n";
        let checked = parts(&Config::parse(text).unwrap()).unwrap().unwrap();
        assert_eq!(
            checked.settings.max_message_size,
            (100 << 10) - ADDED_HEADERS
        );
        let smaller = text.replace(
            "[submission]\n",
            "[submission]\nmax_message_size = \"50KiB\"\n",
        );
        let checked = parts(&Config::parse(&smaller).unwrap()).unwrap().unwrap();
        assert_eq!(checked.settings.max_message_size, 50 << 10);
        let tiny = text.replace("100KiB", "20KiB");
        let err = parts(&Config::parse(&tiny).unwrap()).err().unwrap();
        assert!(err.to_string().contains("message.max_size"), "{err}");
    }

    #[test]
    fn networks_are_cidrs_or_addresses() {
        assert!(parse_network("10.0.0.0/8").is_some());
        assert!(parse_network("::1/128").is_some());
        let one = parse_network("192.0.2.7").unwrap();
        assert!(one.contains(&"192.0.2.7".parse::<IpAddr>().unwrap()));
        assert!(!one.contains(&"192.0.2.8".parse::<IpAddr>().unwrap()));
        assert!(parse_network("10.0.0.0/33").is_none());
        assert!(parse_network("everyone").is_none());
    }
}
