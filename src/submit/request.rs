//! The shapes of a submission as the API and the command line receive it, before
//! validation: mailboxes, attachments, send times, messages, campaigns and their
//! recipients.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Invalid, invalid};
use crate::address::Address;

/// A mailbox as given: `"a@example.com"`, `"Alice <a@example.com>"` or
/// `{"name": "Alice", "address": "a@example.com"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MailboxInput {
    /// A string: a bare address or `Name <address>`.
    Text(String),
    /// An object with an optional display name and an address.
    Parts {
        /// Display name.
        #[serde(default)]
        name: Option<String>,
        /// Address.
        address: String,
    },
}

impl MailboxInput {
    /// Validates into a display name and an address.
    pub fn parse(&self, field: &str) -> Result<(Option<String>, Address), Invalid> {
        let (name, address) = match self {
            Self::Parts { name, address } => (name.clone(), address.trim().to_owned()),
            Self::Text(text) => split_mailbox(text),
        };
        if let Some(name) = &name
            && name.contains(['\r', '\n', '\0'])
        {
            return Err(invalid(field, "the display name contains CR, LF or NUL"));
        }
        let address = Address::parse(&address).map_err(|e| invalid(field, e))?;
        Ok((name.filter(|n| !n.trim().is_empty()), address))
    }
}

/// `Name <addr>` or `addr`.
fn split_mailbox(text: &str) -> (Option<String>, String) {
    let text = text.trim();
    match (text.rfind('<'), text.strip_suffix('>')) {
        (Some(open), Some(_)) => {
            let name = text[..open].trim().trim_matches('"').trim();
            let address = &text[open + 1..text.len() - 1];
            (
                (!name.is_empty()).then(|| name.to_owned()),
                address.trim().to_owned(),
            )
        }
        _ => (None, text.to_owned()),
    }
}

/// An attachment as given (content in base64).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentInput {
    /// File name.
    pub filename: String,
    /// MIME type. Default `application/octet-stream`.
    #[serde(default = "octet_stream")]
    pub content_type: String,
    /// The content, base64.
    pub content: String,
}

fn octet_stream() -> String {
    "application/octet-stream".into()
}

/// When to send: RFC 3339 text or Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SendAt {
    /// Unix seconds.
    Unix(u64),
    /// RFC 3339, e.g. `2026-12-01T09:00:00Z`.
    Text(String),
}

impl SendAt {
    /// The time it names (not checked against now: see the submission's bounds).
    pub fn parse(&self) -> Result<SystemTime, Invalid> {
        match self {
            Self::Unix(s) => SystemTime::UNIX_EPOCH
                .checked_add(std::time::Duration::from_secs(*s))
                .ok_or_else(|| invalid("send_at", format!("{s} is beyond any date"))),
            Self::Text(t) => humantime::parse_rfc3339_weak(t)
                .map_err(|e| invalid("send_at", format!("{t:?}: {e}"))),
        }
    }
}

/// `POST /v1/messages`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageRequest {
    /// The author (`From:`); required.
    pub from: Option<MailboxInput>,
    /// Recipients shown in To.
    #[serde(default)]
    pub to: Vec<MailboxInput>,
    /// Recipients shown in Cc.
    #[serde(default)]
    pub cc: Vec<MailboxInput>,
    /// Recipients in the envelope only: never shown in any header.
    #[serde(default)]
    pub bcc: Vec<MailboxInput>,
    /// Where replies go (`Reply-To:`), when not to the author.
    pub reply_to: Option<MailboxInput>,
    /// The subject; required without a template, overrides the template's with one.
    pub subject: Option<String>,
    /// The plain-text part.
    pub text: Option<String>,
    /// The HTML part; with `text` as well, the two make a `multipart/alternative`.
    pub html: Option<String>,
    /// A template's name, instead of `text`/`html`.
    pub template: Option<String>,
    /// The template's variables.
    #[serde(default)]
    pub vars: Map<String, Value>,
    /// Extra headers (`X-...`, `List-Id`...); volley's own may not be given.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Files attached to the message.
    #[serde(default)]
    pub attachments: Vec<AttachmentInput>,
    /// The caller's labels, for its own bookkeeping.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Not sent before this time.
    pub send_at: Option<SendAt>,
    /// The list this message belongs to, if any: then an unsubscribe from that list
    /// stops it. Without one it is transactional: only hard bounces, complaints and the
    /// operator's entries stop it.
    pub list: Option<String>,
    /// The egress pool it leaves from (`[egress.pools]`); default `[egress] default_pool`.
    pub pool: Option<String>,
}

/// One campaign recipient.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientInput {
    /// The recipient's address (validated: RFC 5321 syntax, no CR/LF).
    pub to: String,
    /// Variables for this recipient (over the shared ones): a JSON object, kept as the
    /// text it came as until it is checked, so that a campaign of 100,000 recipients is
    /// not 100,000 maps in memory at once. Read it with [`RecipientInput::vars`].
    #[serde(default)]
    pub vars: Option<Box<serde_json::value::RawValue>>,
}

impl RecipientInput {
    /// A recipient with these variables.
    pub fn new(to: String, vars: &Map<String, Value>) -> Self {
        let vars = (!vars.is_empty())
            .then(|| serde_json::value::to_raw_value(vars).expect("a JSON map serialises"));
        Self { to, vars }
    }

    /// Its variables; an error when they are not a JSON object.
    pub fn vars(&self) -> Result<Map<String, Value>, serde_json::Error> {
        match &self.vars {
            None => Ok(Map::new()),
            Some(raw) => serde_json::from_str(raw.get()),
        }
    }
}

/// `POST /v1/campaigns`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignRequest {
    /// The template every recipient's message is rendered from; required.
    pub template: Option<String>,
    /// The author (`From:`); required.
    pub from: Option<MailboxInput>,
    /// A subject that replaces the template's.
    pub subject: Option<String>,
    /// Where replies go (`Reply-To:`), when not to the author.
    pub reply_to: Option<MailboxInput>,
    /// Variables shared by every recipient.
    #[serde(default)]
    pub vars: Map<String, Value>,
    /// Who receives it, each with its own variables; each recipient is its own `To:`.
    #[serde(default)]
    pub recipients: Vec<RecipientInput>,
    /// Extra headers on every message; volley's own may not be given.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The caller's labels, for its own bookkeeping.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Not sent before this time.
    pub send_at: Option<SendAt>,
    /// The list the campaign belongs to (`"default"` when absent): what its
    /// unsubscribe links leave, and whose unsubscribes stop it.
    pub list: Option<String>,
    /// The egress pool it leaves from (`[egress.pools]`); default `[egress] default_pool`.
    pub pool: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_forms() {
        let table = [
            (
                MailboxInput::Text("a@example.com".into()),
                None,
                "a@example.com",
            ),
            (
                MailboxInput::Text("Alice <a@example.com>".into()),
                Some("Alice"),
                "a@example.com",
            ),
            (
                MailboxInput::Text("\"Bob, Jr\" <b@example.com>".into()),
                Some("Bob, Jr"),
                "b@example.com",
            ),
            (
                MailboxInput::Parts {
                    name: Some("Zoë".into()),
                    address: "z@example.com".into(),
                },
                Some("Zoë"),
                "z@example.com",
            ),
        ];
        for (input, name, address) in table {
            let (n, a) = input.parse("from").unwrap();
            assert_eq!((n.as_deref(), a.as_str()), (name, address));
        }
        let bad = MailboxInput::Text("Eve\r\nBcc: x@y <e@example.com>".into());
        assert_eq!(bad.parse("from").unwrap_err().field, "from");
        assert!(
            MailboxInput::Text("not an address".into())
                .parse("to[0]")
                .is_err()
        );
    }

    #[test]
    fn send_at_forms() {
        assert_eq!(
            SendAt::Unix(60).parse().unwrap(),
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(60)
        );
        assert!(SendAt::Text("2026-12-01T09:00:00Z".into()).parse().is_ok());
        assert_eq!(
            SendAt::Text("tomorrow".into()).parse().unwrap_err().field,
            "send_at"
        );
    }
}
