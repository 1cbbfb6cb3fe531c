//! From a stored job and one recipient to the bytes on the wire: render the template
//! (or take the given content), build the MIME message, add List-Unsubscribe to
//! campaign messages, sign with DKIM, and check the size.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::job::{Invalid, JobSpec, StoredMailbox, merge};
use crate::message::{
    Attachment, DkimSigner, ListUnsubscribe, Mailbox, MessageError, MessageSpec, UnsubscribeConfig,
    UnsubscribeTokens, build_message,
};
use crate::queue::JobKind;
use crate::smtp::Address;
use crate::template::{TemplateError, Templates};

/// Why a message could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// The template refused the variables (or is gone).
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The message could not be built or signed.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// A stored mailbox no longer parses (the payload was altered).
    #[error("stored address {0:?} is invalid")]
    Address(String),
    /// Bigger than `[message] max_size`.
    #[error("the message is {size} octets; the limit is {limit}")]
    TooBig {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

impl ComposeError {
    /// As a field error for the API, pointing at the recipient when known.
    pub fn into_invalid(self, recipient: Option<usize>) -> Invalid {
        let field = match (&self, recipient) {
            (Self::Template(_), Some(i)) => format!("recipients[{i}].vars"),
            (Self::Template(_), None) => "vars".to_owned(),
            (Self::TooBig { .. }, _) => "size".to_owned(),
            (
                Self::Message(
                    MessageError::HeaderName { .. }
                    | MessageError::HeaderValue { .. }
                    | MessageError::ReservedHeader { .. },
                ),
                _,
            ) => "headers".to_owned(),
            (Self::Message(MessageError::LineBreak { field, .. }), _) => field.to_string(),
            _ => "message".to_owned(),
        };
        Invalid {
            field,
            message: self.to_string(),
        }
    }

    /// Whether it is the submitter's fault (as opposed to the server's keys or files).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Message(MessageError::DkimKeyRead { .. }))
    }
}

/// Builds messages; shared by the API (to check submissions) and the dispatcher.
pub struct Composer {
    templates: Arc<Templates>,
    dkim: Option<DkimSigner>,
    unsubscribe: Option<(UnsubscribeConfig, UnsubscribeTokens)>,
    max_size: usize,
}

impl std::fmt::Debug for Composer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Composer")
            .field("dkim", &self.dkim.is_some())
            .field("max_size", &self.max_size)
            .finish_non_exhaustive()
    }
}

impl Composer {
    /// A composer with its templates, optional signer, unsubscribe settings and size
    /// limit.
    pub fn new(
        templates: Arc<Templates>,
        dkim: Option<DkimSigner>,
        unsubscribe: &UnsubscribeConfig,
        max_size: usize,
    ) -> Result<Self, MessageError> {
        let configured = unsubscribe.url.as_deref().is_some_and(|u| !u.is_empty())
            || unsubscribe.mailto.as_deref().is_some_and(|m| !m.is_empty());
        let unsubscribe = if configured {
            unsubscribe.validate()?;
            Some((
                unsubscribe.clone(),
                UnsubscribeTokens::new(&unsubscribe.secret),
            ))
        } else {
            None
        };
        Ok(Self {
            templates,
            dkim,
            unsubscribe,
            max_size,
        })
    }

    /// The templates.
    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    /// Verifies an unsubscribe token: `(job, address)` when genuine.
    pub fn verify_unsubscribe(&self, token: &str) -> Option<(String, String)> {
        self.unsubscribe.as_ref()?.1.verify(token)
    }

    /// The message for one recipient of a job.
    pub fn compose(
        &self,
        job_id: &str,
        spec: &JobSpec,
        recipient: &Address,
        vars: &Map<String, Value>,
    ) -> Result<Vec<u8>, ComposeError> {
        let (subject, text, html) = match &spec.template {
            Some(name) => {
                let rendered = self.templates.render(name, &merge(&spec.vars, vars))?;
                (
                    spec.subject.clone().unwrap_or(rendered.subject),
                    Some(rendered.text),
                    rendered.html,
                )
            }
            None => (
                spec.subject.clone().unwrap_or_default(),
                spec.text.clone(),
                spec.html.clone(),
            ),
        };
        let (to, cc) = match spec.kind {
            JobKind::Message => (mailboxes(&spec.to)?, mailboxes(&spec.cc)?),
            // Bcc-only messages and campaigns: the recipient is the To.
            JobKind::Campaign => (vec![Mailbox::new(recipient.clone())], Vec::new()),
        };
        let to = if to.is_empty() && cc.is_empty() {
            vec![Mailbox::new(recipient.clone())]
        } else {
            to
        };
        let list_unsubscribe = match (&self.unsubscribe, spec.kind) {
            (Some((cfg, tokens)), JobKind::Campaign) => {
                ListUnsubscribe::for_recipient(cfg, tokens, job_id, recipient.as_str())?
            }
            _ => None,
        };
        let attachments = spec
            .attachments
            .iter()
            .map(|a| Attachment {
                filename: a.filename.clone(),
                content_type: a.content_type.clone(),
                // Validated at submission.
                content: base64::engine::general_purpose::STANDARD
                    .decode(a.content.trim())
                    .unwrap_or_default(),
            })
            .collect();
        let from = mailbox(&spec.from)?;
        let message = MessageSpec {
            from: from.clone(),
            to,
            cc,
            reply_to: spec.reply_to.as_ref().map(mailbox).transpose()?,
            subject,
            text,
            html,
            attachments,
            headers: spec.headers.clone(),
            list_unsubscribe,
        };
        let built = build_message(&message, from.address.domain())?;
        let signed = match &self.dkim {
            Some(signer) => signer.sign(&built)?,
            None => built,
        };
        if signed.len() > self.max_size {
            return Err(ComposeError::TooBig {
                size: signed.len(),
                limit: self.max_size,
            });
        }
        Ok(signed)
    }
}

fn mailbox(m: &StoredMailbox) -> Result<Mailbox, ComposeError> {
    let address =
        Address::parse(&m.address).map_err(|_| ComposeError::Address(m.address.clone()))?;
    Ok(Mailbox {
        name: m.name.clone(),
        address,
    })
}

fn mailboxes(list: &[StoredMailbox]) -> Result<Vec<Mailbox>, ComposeError> {
    list.iter().map(mailbox).collect()
}
