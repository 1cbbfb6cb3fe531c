//! One-off messages: `POST /v1/messages`.

use std::collections::HashSet;

use serde_json::Map;

use super::{
    Context, Invalid, MAX_MESSAGE_RECIPIENTS, MAX_SHARED_VARS, MailboxInput, MessageRequest,
    Prepared, PreparedRecipient, check_attachments, check_list, check_tags, check_vars,
    compose_invalid, from_field, invalid, send_at, stored,
};
use crate::address::{Address, suppression_key};
use crate::compose::{Composer, JobSpec, StoredAttachment};
use crate::queue::{JobId, JobKind, NewJob};

/// The visible and hidden recipients of a message.
struct Envelope {
    to: Vec<(Option<String>, Address)>,
    cc: Vec<(Option<String>, Address)>,
    bcc: Vec<(Option<String>, Address)>,
}

impl Envelope {
    fn parse(req: &MessageRequest) -> Result<Self, Invalid> {
        let envelope = Envelope {
            to: mailboxes(&req.to, "to")?,
            cc: mailboxes(&req.cc, "cc")?,
            bcc: mailboxes(&req.bcc, "bcc")?,
        };
        let total = envelope.all().count();
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
        Ok(envelope)
    }

    fn all(&self) -> impl Iterator<Item = &Address> {
        self.to
            .iter()
            .chain(&self.cc)
            .chain(&self.bcc)
            .map(|(_, a)| a)
    }

    /// Each mailbox once (one normalisation: that of the suppression list).
    fn recipients(&self) -> Vec<PreparedRecipient> {
        let mut seen = HashSet::new();
        self.all()
            .filter(|a| seen.insert(suppression_key(a.as_str())))
            .map(|a| PreparedRecipient {
                to: a.as_str().to_owned(),
                vars: b"{}".to_vec(),
            })
            .collect()
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

/// What a message needs besides its recipients: content or a template, a subject.
fn check_content(req: &MessageRequest, composer: &Composer) -> Result<(), Invalid> {
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
    check_list(req.list.as_deref())?;
    check_vars(&req.vars, "vars", MAX_SHARED_VARS)
}

/// Validates a one-off message and prepares it for the queue.
pub fn prepare_message(
    req: MessageRequest,
    composer: &Composer,
    idempotency: Option<(String, [u8; 32])>,
    ctx: &Context,
) -> Result<Prepared, Invalid> {
    let (from_name, from) = from_field(req.from.as_ref())?;
    let envelope = Envelope::parse(&req)?;
    let reply_to = req
        .reply_to
        .as_ref()
        .map(|r| r.parse("reply_to"))
        .transpose()?;
    check_content(&req, composer)?;
    super::check_pool(req.pool.as_deref(), ctx)?;
    let send_at = send_at(req.send_at.as_ref(), ctx.now)?;
    let recipients = envelope.recipients();
    let spec = JobSpec {
        kind: JobKind::Message,
        from: stored(from_name, &from),
        to: envelope
            .to
            .iter()
            .map(|(n, a)| stored(n.clone(), a))
            .collect(),
        cc: envelope
            .cc
            .iter()
            .map(|(n, a)| stored(n.clone(), a))
            .collect(),
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
        list: req.list,
        pool: req.pool.map(Into::into),
        raw: None,
    };
    let id = JobId::new(ctx.now);
    // The same bytes go to every recipient: build them once now to refuse what
    // cannot be built (template variables, headers, size) before storing anything.
    let first = envelope.all().next().expect("at least one recipient");
    composer
        .compose(&id.to_string(), &spec, first, &Map::new())
        .map_err(|e| compose_invalid(e, None))?;
    let requested = envelope.all().count();
    Ok(Prepared {
        job: NewJob {
            id,
            kind: JobKind::Message,
            payload: spec.to_payload(),
            send_at,
            idempotency,
        },
        recipients,
        requested,
    })
}
