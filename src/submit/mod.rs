//! Submission: what a user hands volley (one message, or a campaign of a template and
//! recipients), validated before anything is stored.
//!
//! - [`request`]: the shapes the API and the command line receive.
//! - [`recipients`]: recipient lists for `volley send` (CSV, JSON Lines).
//! - this module: validation into a [`Prepared`] job for the queue, with the stored spec
//!   of [`crate::compose`].
//!
//! Everything a user can get wrong is checked here, before anything is stored:
//! addresses, header values, the template and every recipient's variables (strict
//! mode), attachments, sizes. An error names the field. This module knows nothing of
//! HTTP or SMTP sessions.

pub mod recipients;
pub mod request;

use std::time::SystemTime;

use base64::Engine as _;
use serde_json::{Map, Value};

pub use self::request::{
    AttachmentInput, CampaignRequest, MailboxInput, MessageRequest, RecipientInput, SendAt,
};

use crate::address::Address;
use crate::compose::{
    ComposeError, Composer, JobSpec, StoredAttachment, StoredMailbox, merge, vars_to_bytes,
};
use crate::message::MessageError;
use crate::queue::{JobId, JobKind, NewJob, NewRecipient};

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

pub(crate) fn invalid(field: impl Into<String>, message: impl ToString) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.to_string(),
    }
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
            vars: vars_to_bytes(&r.vars),
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
        attachments: req
            .attachments
            .into_iter()
            .map(|a| StoredAttachment {
                filename: a.filename,
                content_type: a.content_type,
                content: a.content,
            })
            .collect(),
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
        .map_err(|e| compose_invalid(e, None))?;
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
    let payload = spec.to_payload();
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
                .map_err(|e| compose_invalid(e, Some(i)))?;
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
    let payload = spec.to_payload();
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
        _ => "message".to_owned(),
    };
    Invalid {
        field,
        message: e.to_string(),
    }
}
