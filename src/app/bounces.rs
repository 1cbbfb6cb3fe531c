//! Builds the bounce intake from `[bounces]`, and the signed return path it needs: a
//! bounce can only be tied to its delivery if the message went out with a signed VERP
//! envelope sender in one of the bounce domains. Each refusal names its key.

use std::sync::Arc;

use super::config::Config;
use crate::inbound::{BounceIntake, Listener, Users};
use crate::message::{BounceKey, ReturnPath};
use crate::metrics::Metrics;
use crate::queue::AnyQueue;
use crate::smtp::server::ServerSettings;

/// The shortest `[bounces] secret`, in bytes.
const MIN_SECRET: usize = 32;

/// A `[bounces]` setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BouncesError {
    /// The key.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn error(field: &'static str, message: impl Into<String>) -> BouncesError {
    BouncesError {
        field,
        message: message.into(),
    }
}

/// The envelope sender messages go out with: `[message] return_path`, signed when
/// `[bounces]` is configured (then it must be a VERP address in a bounce domain).
pub fn return_path(config: &Config) -> Result<Option<ReturnPath>, BouncesError> {
    let Some(b) = &config.bounces else {
        return Ok(config.message.return_path.clone());
    };
    if b.secret.len() < MIN_SECRET {
        return Err(error(
            "bounces.secret",
            format!(
                "must be at least {MIN_SECRET} bytes: it signs the return paths bounces come back to (VOLLEY_BOUNCES_SECRET)"
            ),
        ));
    }
    if b.domains.is_empty() {
        return Err(error(
            "bounces.domains",
            "name at least one domain to take bounces for",
        ));
    }
    let needed = || {
        format!(
            "with [bounces], set return_path = {{ address = \"bounces@{}\", verp = true }}: bounces are tied to their delivery by a signed VERP address",
            b.domains[0]
        )
    };
    let base = match &config.message.return_path {
        Some(ReturnPath::Verp(base)) => base.clone(),
        _ => return Err(error("message.return_path", needed())),
    };
    if !b
        .domains
        .iter()
        .any(|d| d.eq_ignore_ascii_case(base.domain()))
    {
        return Err(error(
            "message.return_path",
            format!("{base} is not in bounces.domains: {}", needed()),
        ));
    }
    let key = BounceKey::new(b.secret.as_bytes());
    ReturnPath::signed(base, key)
        .map(Some)
        .map_err(|e| error("message.return_path", e.to_string()))
}

/// Checks `[bounces]` and the return path it needs (`volley check`, and at start).
pub fn check(config: &Config) -> Result<(), BouncesError> {
    return_path(config)?;
    let Some(b) = &config.bounces else {
        return Ok(());
    };
    if b.max_connections == 0 {
        return Err(error("bounces.max_connections", "must be at least 1"));
    }
    if b.timeout.is_zero() {
        return Err(error("bounces.timeout", "must be longer than 0s"));
    }
    Ok(())
}

/// The bounce listener `[bounces]` describes; `None` when the section is absent.
pub fn listener(
    config: &Config,
    queue: Arc<AnyQueue>,
    metrics: Arc<Metrics>,
) -> Result<Option<Listener<BounceIntake>>, BouncesError> {
    check(config)?;
    let Some(b) = &config.bounces else {
        return Ok(None);
    };
    let hostname = if b.hostname.is_empty() {
        config.smtp.helo_name.clone()
    } else {
        b.hostname.clone()
    };
    let settings = ServerSettings {
        hostname,
        max_message_size: b.max_message_size,
        // A report goes to one address; a few more do no harm.
        max_recipients: 10,
        starttls: false,
        auth: false,
    };
    let key = BounceKey::new(b.secret.as_bytes());
    Ok(Some(Listener {
        settings: Arc::new(settings),
        tls: None,
        users: Arc::new(Users::default()),
        trusted: Vec::new(),
        max_connections: b.max_connections,
        timeout: b.timeout,
        intake: Arc::new(BounceIntake::new(queue, metrics, key, &b.domains)),
    }))
}
