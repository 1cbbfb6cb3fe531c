//! Submission: what a user hands volley (one message, or a campaign of a template and
//! recipients), validated before anything is stored.
//!
//! - [`request`]: the shapes the API and the command line receive.
//! - [`recipients`]: recipient lists for `volley send` (CSV, JSON Lines).
//! - `message`, `campaign`: validation into a [`Prepared`] job for the queue, with the
//!   stored spec of [`crate::compose`].
//!
//! Everything a user can get wrong is checked here, before anything is stored:
//! addresses, header values, the template and every recipient's variables (strict
//! mode), attachments, sizes, times, lists. An error names the field. This module knows
//! nothing of HTTP or SMTP sessions.

mod campaign;
mod message;
pub mod recipients;
pub mod request;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde_json::{Map, Value};

pub use self::campaign::prepare_campaign;
pub use self::message::prepare_message;
pub use self::request::{
    AttachmentInput, CampaignRequest, MailboxInput, MessageRequest, RecipientInput, SendAt,
};

use crate::address::Address;
use crate::compose::{ComposeError, StoredMailbox, vars_to_bytes};
use crate::message::MessageError;
use crate::queue::{NewJob, NewRecipient, valid_list_name};

/// Most recipients in one message (To, Cc and Bcc together).
pub const MAX_MESSAGE_RECIPIENTS: usize = 1000;
/// Most keys in one object of template variables (shared or a recipient's).
pub const MAX_VAR_KEYS: usize = 200;
/// Most bytes of one recipient's variables, as JSON.
pub const MAX_RECIPIENT_VARS: usize = 64 << 10;
/// Most bytes of a job's shared variables, as JSON.
pub const MAX_SHARED_VARS: usize = 1 << 20;
/// How far back a `send_at` may be: a little clock skew, or a retried request.
pub const SEND_AT_PAST: Duration = Duration::from_secs(86_400);
/// How far ahead a `send_at` may be.
pub const SEND_AT_FUTURE: Duration = Duration::from_secs(366 * 86_400);

/// An invalid field of a submission.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The field, as a path (`recipients[3].to`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

pub(crate) fn invalid(field: impl Into<String>, message: impl ToString) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.to_string(),
    }
}

/// What a submission is checked against, besides its own content.
#[derive(Debug, Clone)]
pub struct Context {
    /// The time of the submission (ids, `send_at` bounds).
    pub now: SystemTime,
    /// Most recipients of one campaign (`[server] max_recipients`).
    pub max_recipients: usize,
    /// Set when the submitter went away: checking a large campaign stops.
    pub cancelled: Arc<AtomicBool>,
    /// The egress pools mail may name (`[egress.pools]`, and `default`).
    pub pools: Arc<[String]>,
}

impl Context {
    /// A context at `now` with the default limits.
    pub fn at(now: SystemTime) -> Self {
        Self {
            now,
            max_recipients: 1_000_000,
            cancelled: Arc::default(),
            pools: Arc::from([crate::engine::egress::DEFAULT_POOL.to_owned()]),
        }
    }

    fn check_cancelled(&self) -> Result<(), Invalid> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(invalid("", "the submission was cancelled"));
        }
        Ok(())
    }
}

/// A validated submission, ready for [`crate::queue::Queue::submit`].
#[derive(Debug)]
pub struct Prepared {
    /// The job (payload serialised).
    pub job: NewJob,
    /// Recipients with their variables, duplicates merged.
    pub recipients: Vec<PreparedRecipient>,
    /// Recipients as submitted, before duplicates were merged.
    pub requested: usize,
}

/// One validated recipient.
#[derive(Debug)]
pub struct PreparedRecipient {
    /// The validated address as submitted (the first spelling, when duplicates merge).
    pub to: String,
    /// Its own variables (the shared ones are in the payload), as stored: JSON.
    pub vars: Vec<u8>,
}

impl Prepared {
    /// The recipients as the queue takes them, serialised one at a time.
    pub fn into_parts(self) -> (NewJob, impl Iterator<Item = NewRecipient> + Send) {
        let recipients = self.recipients.into_iter().map(|r| NewRecipient {
            to: r.to,
            vars: r.vars,
        });
        (self.job, recipients)
    }
}

fn stored(name: Option<String>, address: &Address) -> StoredMailbox {
    StoredMailbox {
        name,
        address: address.as_str().to_owned(),
    }
}

fn check_attachments(list: &[AttachmentInput]) -> Result<(), Invalid> {
    for (i, a) in list.iter().enumerate() {
        if a.filename.trim().is_empty() || a.filename.contains(['\r', '\n', '\0']) {
            return Err(invalid(
                format!("attachments[{i}].filename"),
                "must be a non-empty single line",
            ));
        }
        base64::engine::general_purpose::STANDARD
            .decode(a.content.trim())
            .map_err(|e| {
                invalid(
                    format!("attachments[{i}].content"),
                    format!("not base64: {e}"),
                )
            })?;
    }
    Ok(())
}

fn check_tags(tags: &[String]) -> Result<(), Invalid> {
    match tags
        .iter()
        .position(|t| t.is_empty() || t.len() > 128 || t.contains(char::is_control))
    {
        Some(i) => Err(invalid(
            format!("tags[{i}]"),
            "tags are 1 to 128 printable characters",
        )),
        None => Ok(()),
    }
}

/// A named egress pool must be configured: mail is never sent from addresses it was
/// not meant to leave from.
fn check_pool(pool: Option<&str>, ctx: &Context) -> Result<(), Invalid> {
    match pool {
        Some(name) if !ctx.pools.iter().any(|p| p == name) => Err(invalid(
            "pool",
            format!(
                "unknown egress pool {name:?} (configured: {})",
                ctx.pools.join(", ")
            ),
        )),
        _ => Ok(()),
    }
}

fn check_list(list: Option<&str>) -> Result<(), Invalid> {
    match list {
        Some(name) if !valid_list_name(name) => Err(invalid(
            "list",
            "a list name is 1 to 64 of a-z A-Z 0-9 . _ -",
        )),
        _ => Ok(()),
    }
}

/// A variables object within its caps: at most [`MAX_VAR_KEYS`] keys and `max_bytes`
/// bytes of JSON.
fn check_vars(vars: &Map<String, Value>, field: &str, max_bytes: usize) -> Result<(), Invalid> {
    if vars.len() > MAX_VAR_KEYS {
        return Err(invalid(
            field,
            format!("{} variables; at most {MAX_VAR_KEYS}", vars.len()),
        ));
    }
    let size = vars_to_bytes(vars).len();
    if size > max_bytes {
        return Err(invalid(
            field,
            format!("{size} bytes of variables; at most {max_bytes}"),
        ));
    }
    Ok(())
}

/// The `send_at` time, within [now − 1 day, now + 1 year].
fn send_at(given: Option<&SendAt>, now: SystemTime) -> Result<Option<SystemTime>, Invalid> {
    let Some(given) = given else {
        return Ok(None);
    };
    let at = given.parse()?;
    let earliest = now
        .checked_sub(SEND_AT_PAST)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let latest = now + SEND_AT_FUTURE;
    if at < earliest || at > latest {
        return Err(invalid(
            "send_at",
            format!(
                "{} is not within a day before and a year after now",
                crate::time::rfc3339(at)
            ),
        ));
    }
    Ok(Some(at))
}

fn from_field(from: Option<&MailboxInput>) -> Result<(Option<String>, Address), Invalid> {
    from.ok_or_else(|| invalid("from", "is required"))?
        .parse("from")
}

/// A message that cannot be built, as a field error pointing at the recipient when
/// known.
fn compose_invalid(e: ComposeError, recipient: Option<usize>) -> Invalid {
    let field = match (&e, recipient) {
        (ComposeError::Template(_), Some(i)) => format!("recipients[{i}].vars"),
        (ComposeError::Template(_), None) => "vars".to_owned(),
        (ComposeError::TooBig { .. }, _) => "size".to_owned(),
        (
            ComposeError::Message(
                MessageError::HeaderName { .. }
                | MessageError::HeaderValue { .. }
                | MessageError::ReservedHeader { .. },
            ),
            _,
        ) => "headers".to_owned(),
        (ComposeError::Message(MessageError::LineBreak { field, .. }), _) => field.to_string(),
        (ComposeError::Message(MessageError::NulInBody { field }), _) => (*field).to_owned(),
        _ => "message".to_owned(),
    };
    Invalid {
        field,
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_at_is_bounded_and_never_wraps() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ok = SendAt::Unix(1_800_000_000 + 3600);
        assert!(send_at(Some(&ok), now).unwrap().is_some());
        for bad in [
            SendAt::Unix(u64::MAX),
            SendAt::Unix(18_446_744_073_709_552),
            SendAt::Unix(0),
            SendAt::Text("2300-01-01T00:00:00Z".into()),
        ] {
            assert_eq!(
                send_at(Some(&bad), now).unwrap_err().field,
                "send_at",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn variables_and_lists_are_capped() {
        let many: Map<String, Value> = (0..=MAX_VAR_KEYS)
            .map(|i| (format!("k{i}"), Value::from(i)))
            .collect();
        assert!(check_vars(&many, "vars", MAX_SHARED_VARS).is_err());
        let big: Map<String, Value> = [("k".to_owned(), Value::from("x".repeat(100)))]
            .into_iter()
            .collect();
        assert_eq!(
            check_vars(&big, "recipients[2].vars", 50)
                .unwrap_err()
                .field,
            "recipients[2].vars"
        );
        assert!(check_list(Some("news.weekly")).is_ok());
        assert!(check_list(Some("no spaces")).is_err());
    }
}
