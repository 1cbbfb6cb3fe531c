//! Submissions: the request shapes of the API and the command line, their validation,
//! and the job payload the queue stores.
//!
//! Everything a user can get wrong is checked here, before anything is stored:
//! addresses, header values, the template and every recipient's variables (strict
//! mode), attachments, sizes. An error names the field. This module knows nothing of
//! HTTP or SMTP sessions.

use std::collections::BTreeMap;
use std::time::SystemTime;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::compose::Composer;
use crate::queue::{JobId, JobKind, NewJob, NewRecipient};
use crate::smtp::Address;

/// Most recipients in one message (To, Cc and Bcc together).
pub const MAX_MESSAGE_RECIPIENTS: usize = 1000;

/// An invalid field of a submission.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The field, as a path (`recipients[3].to`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl ToString) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.to_string(),
    }
}

/// A mailbox as given: `"a@example.com"`, `"Alice <a@example.com>"` or
/// `{"name": "Alice", "address": "a@example.com"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MailboxInput {
    /// A string.
    Text(String),
    /// An object.
    Parts {
        /// Display name.
        #[serde(default)]
        name: Option<String>,
        /// Address.
        address: String,
    },
}

/// A stored mailbox: display name and address text (validated before storing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMailbox {
    /// Display name.
    pub name: Option<String>,
    /// The address.
    pub address: String,
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
    fn parse(&self) -> Result<SystemTime, Invalid> {
        match self {
            Self::Unix(s) => Ok(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(*s)),
            Self::Text(t) => humantime::parse_rfc3339_weak(t)
                .map_err(|e| invalid("send_at", format!("{t:?}: {e}"))),
        }
    }
}

/// `POST /v1/messages`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageRequest {
    /// Sender.
    pub from: Option<MailboxInput>,
    /// Recipients shown in To.
    #[serde(default)]
    pub to: Vec<MailboxInput>,
    /// Recipients shown in Cc.
    #[serde(default)]
    pub cc: Vec<MailboxInput>,
    /// Hidden recipients.
    #[serde(default)]
    pub bcc: Vec<MailboxInput>,
    /// Reply-To.
    pub reply_to: Option<MailboxInput>,
    /// Subject (overrides the template's).
    pub subject: Option<String>,
    /// Text part.
    pub text: Option<String>,
    /// HTML part.
    pub html: Option<String>,
    /// Template name, instead of subject/text/html.
    pub template: Option<String>,
    /// Template variables.
    #[serde(default)]
    pub vars: Map<String, Value>,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Attachments.
    #[serde(default)]
    pub attachments: Vec<AttachmentInput>,
    /// Labels for the caller.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Not before.
    pub send_at: Option<SendAt>,
}

/// One campaign recipient.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientInput {
    /// The address.
    pub to: String,
    /// Variables for this recipient (over the shared ones).
    #[serde(default)]
    pub vars: Map<String, Value>,
}

/// `POST /v1/campaigns`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignRequest {
    /// Template name.
    pub template: Option<String>,
    /// Sender.
    pub from: Option<MailboxInput>,
    /// Subject instead of the template's.
    pub subject: Option<String>,
    /// Reply-To.
    pub reply_to: Option<MailboxInput>,
    /// Variables shared by every recipient.
    #[serde(default)]
    pub vars: Map<String, Value>,
    /// The recipients.
    #[serde(default)]
    pub recipients: Vec<RecipientInput>,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Labels for the caller.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Not before.
    pub send_at: Option<SendAt>,
}

/// What the queue stores for a job (its opaque payload, JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Message or campaign.
    pub kind: JobKind,
    /// Sender.
    pub from: StoredMailbox,
    /// Visible To (messages); empty for campaigns (each recipient is its own To).
    #[serde(default)]
    pub to: Vec<StoredMailbox>,
    /// Visible Cc (messages).
    #[serde(default)]
    pub cc: Vec<StoredMailbox>,
    /// Reply-To.
    pub reply_to: Option<StoredMailbox>,
    /// Subject (overrides the template's).
    pub subject: Option<String>,
    /// Text part.
    pub text: Option<String>,
    /// HTML part.
    pub html: Option<String>,
    /// Template.
    pub template: Option<String>,
    /// Shared variables.
    #[serde(default)]
    pub vars: Map<String, Value>,
    /// Extra headers, in order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Attachments (content base64, validated).
    #[serde(default)]
    pub attachments: Vec<AttachmentInput>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A validated submission, ready for [`crate::queue::Queue::submit`].
#[derive(Debug)]
pub struct Prepared {
    /// The job (payload serialised).
    pub job: NewJob,
    /// Recipients with their variables.
    pub recipients: Vec<PreparedRecipient>,
}

/// One validated recipient.
#[derive(Debug)]
pub struct PreparedRecipient {
    /// The address text.
    pub to: String,
    /// Its own variables (the shared ones are in the payload).
    pub vars: Map<String, Value>,
}

impl Prepared {
    /// The recipients as the queue takes them, serialised one at a time.
    pub fn into_parts(self) -> (NewJob, impl Iterator<Item = NewRecipient> + Send) {
        let recipients = self.recipients.into_iter().map(|r| NewRecipient {
            to: r.to,
            vars: if r.vars.is_empty() {
                b"{}".to_vec()
            } else {
                serde_json::to_vec(&r.vars).unwrap_or_default()
            },
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

fn mailboxes(
    list: &[MailboxInput],
    field: &str,
) -> Result<Vec<(Option<String>, Address)>, Invalid> {
    list.iter()
        .enumerate()
        .map(|(i, m)| m.parse(&format!("{field}[{i}]")))
        .collect()
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

fn from_field(from: &Option<MailboxInput>) -> Result<(Option<String>, Address), Invalid> {
    from.as_ref()
        .ok_or_else(|| invalid("from", "is required"))?
        .parse("from")
}

/// Validates a one-off message and prepares it for the queue.
pub fn prepare_message(
    req: MessageRequest,
    composer: &Composer,
    idempotency: Option<(String, [u8; 32])>,
    now: SystemTime,
) -> Result<Prepared, Invalid> {
    let (from_name, from) = from_field(&req.from)?;
    let to = mailboxes(&req.to, "to")?;
    let cc = mailboxes(&req.cc, "cc")?;
    let bcc = mailboxes(&req.bcc, "bcc")?;
    let total = to.len() + cc.len() + bcc.len();
    if total == 0 {
        return Err(invalid(
            "to",
            "at least one recipient (to, cc or bcc) is required",
        ));
    }
    if total > MAX_MESSAGE_RECIPIENTS {
        return Err(invalid(
            "to",
            format!("at most {MAX_MESSAGE_RECIPIENTS} recipients per message; use a campaign"),
        ));
    }
    let reply_to = req
        .reply_to
        .as_ref()
        .map(|r| r.parse("reply_to"))
        .transpose()?;
    if let Some(name) = &req.template
        && !composer.templates().contains(name)
    {
        return Err(invalid("template", format!("unknown template {name:?}")));
    }
    if req.template.is_none() && req.text.is_none() && req.html.is_none() {
        return Err(invalid("text", "give text, html or a template"));
    }
    if req.template.is_none() && req.subject.is_none() {
        return Err(invalid("subject", "is required without a template"));
    }
    check_attachments(&req.attachments)?;
    check_tags(&req.tags)?;
    let send_at = req.send_at.as_ref().map(SendAt::parse).transpose()?;
    let spec = JobSpec {
        kind: JobKind::Message,
        from: stored(from_name, &from),
        to: to.iter().map(|(n, a)| stored(n.clone(), a)).collect(),
        cc: cc.iter().map(|(n, a)| stored(n.clone(), a)).collect(),
        reply_to: reply_to.map(|(n, a)| stored(n, &a)),
        subject: req.subject,
        text: req.text,
        html: req.html,
        template: req.template,
        vars: req.vars,
        headers: req.headers.into_iter().collect(),
        attachments: req.attachments,
        tags: req.tags,
    };
    let id = JobId::new(now);
    // The same bytes go to every recipient: build them once now to refuse what
    // cannot be built (template variables, headers, size) before storing anything.
    let first = &to
        .iter()
        .chain(&cc)
        .chain(&bcc)
        .next()
        .expect("at least one recipient")
        .1;
    composer
        .compose(&id.to_string(), &spec, first, &Map::new())
        .map_err(|e| e.into_invalid(None))?;
    let mut seen = std::collections::HashSet::new();
    let recipients = to
        .iter()
        .chain(&cc)
        .chain(&bcc)
        .filter(|(_, a)| seen.insert(a.as_str().to_ascii_lowercase()))
        .map(|(_, a)| PreparedRecipient {
            to: a.as_str().to_owned(),
            vars: Map::new(),
        })
        .collect();
    let payload = serde_json::to_vec(&spec).map_err(|e| invalid("", e))?;
    Ok(Prepared {
        job: NewJob {
            id,
            kind: JobKind::Message,
            payload,
            send_at,
            idempotency,
        },
        recipients,
    })
}

/// Validates a campaign (every recipient's variables against the template, strict)
/// and prepares it for the queue.
pub fn prepare_campaign(
    req: CampaignRequest,
    composer: &Composer,
    idempotency: Option<(String, [u8; 32])>,
    now: SystemTime,
) -> Result<Prepared, Invalid> {
    let template = req
        .template
        .clone()
        .ok_or_else(|| invalid("template", "is required"))?;
    if !composer.templates().contains(&template) {
        return Err(invalid(
            "template",
            format!("unknown template {template:?}"),
        ));
    }
    let (from_name, from) = from_field(&req.from)?;
    let reply_to = req
        .reply_to
        .as_ref()
        .map(|r| r.parse("reply_to"))
        .transpose()?;
    if req.recipients.is_empty() {
        return Err(invalid("recipients", "at least one recipient is required"));
    }
    check_tags(&req.tags)?;
    let send_at = req.send_at.as_ref().map(SendAt::parse).transpose()?;
    let spec = JobSpec {
        kind: JobKind::Campaign,
        from: stored(from_name, &from),
        to: Vec::new(),
        cc: Vec::new(),
        reply_to: reply_to.map(|(n, a)| stored(n, &a)),
        subject: req.subject,
        text: None,
        html: None,
        template: Some(template.clone()),
        vars: req.vars,
        headers: req.headers.into_iter().collect(),
        attachments: Vec::new(),
        tags: req.tags,
    };
    let id = JobId::new(now);
    let mut recipients = Vec::with_capacity(req.recipients.len());
    for (i, r) in req.recipients.into_iter().enumerate() {
        let field = format!("recipients[{i}].to");
        let address = Address::parse(r.to.trim()).map_err(|e| invalid(&field, e))?;
        if i == 0 {
            // One full build catches header and size problems shared by all.
            composer
                .compose(&id.to_string(), &spec, &address, &r.vars)
                .map_err(|e| e.into_invalid(Some(i)))?;
        } else {
            let vars = merge(&spec.vars, &r.vars);
            composer
                .templates()
                .check(&template, &vars)
                .map_err(|e| invalid(format!("recipients[{i}].vars"), e))?;
        }
        recipients.push(PreparedRecipient {
            to: address.as_str().to_owned(),
            vars: r.vars,
        });
    }
    let payload = serde_json::to_vec(&spec).map_err(|e| invalid("", e))?;
    Ok(Prepared {
        job: NewJob {
            id,
            kind: JobKind::Campaign,
            payload,
            send_at,
            idempotency,
        },
        recipients,
    })
}

/// Shared variables overlaid with a recipient's.
pub fn merge(shared: &Map<String, Value>, own: &Map<String, Value>) -> Value {
    let mut all = shared.clone();
    for (k, v) in own {
        all.insert(k.clone(), v.clone());
    }
    Value::Object(all)
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

    #[test]
    fn merging_prefers_the_recipient() {
        let shared: Map<String, Value> = serde_json::from_str(r#"{"a": 1, "b": 2}"#).unwrap();
        let own: Map<String, Value> = serde_json::from_str(r#"{"b": 3}"#).unwrap();
        assert_eq!(merge(&shared, &own), serde_json::json!({"a": 1, "b": 3}));
    }
}
