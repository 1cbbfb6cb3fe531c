//! Composition: from a stored job and one recipient to the bytes on the wire. Render
//! the template (or take the given content), build the MIME message, add
//! List-Unsubscribe to campaign messages, sign with DKIM, and check the size.
//!
//! - `spec`: the stored job ([`JobSpec`]) and recipient variables, as the queue keeps
//!   them.
//! - [`Composer`]: builds one recipient's message from them.
//!
//! It knows templates and messages, nothing of the network, the engine or HTTP.

mod spec;

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Map, Value};

pub use self::spec::{
    JobSpec, StoredAttachment, StoredMailbox, merge, vars_from_bytes, vars_to_bytes,
};

use crate::address::Address;
use crate::message::{
    Attachment, DkimSigner, ListUnsubscribe, Mailbox, MessageError, MessageSpec, TokenFor,
    UnsubscribeConfig, UnsubscribeTokens, Unsubscription, build_message, sign_all,
};
use crate::queue::JobKind;
use crate::template::{TemplateError, Templates, html_to_text};

/// Why a message could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// The template refused the variables (or is gone).
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The message could not be built or signed.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// A stored field no longer decodes (an address, an attachment, variables): the
    /// store is damaged or from another version.
    #[error("the stored job is unreadable: {0}")]
    Stored(String),
    /// Bigger than `[message] max_size`.
    #[error("the message is {size} octets; the limit is {limit}")]
    TooBig {
        /// Its size.
        size: usize,
        /// The largest message allowed, in octets (`message.max_size`).
        limit: usize,
    },
}

impl ComposeError {
    /// Whether it is the submitter's fault (the content cannot be built), as opposed
    /// to ours: the server's keys or files, or a stored job that no longer decodes.
    pub fn is_submitters_fault(&self) -> bool {
        !matches!(
            self,
            Self::Message(MessageError::DkimKeyRead { .. }) | Self::Stored(_)
        )
    }
}

/// Builds messages; shared by the API (to check submissions) and the dispatcher.
pub struct Composer {
    templates: Arc<Templates>,
    dkim: Vec<DkimSigner>,
    unsubscribe: Option<(UnsubscribeConfig, UnsubscribeTokens)>,
    max_size: usize,
}

impl std::fmt::Debug for Composer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Composer")
            .field("dkim", &self.dkim.len())
            .field("max_size", &self.max_size)
            .finish_non_exhaustive()
    }
}

impl Composer {
    /// A composer with its templates, DKIM signers (none, one or several), unsubscribe
    /// settings and size limit.
    pub fn new(
        templates: Arc<Templates>,
        dkim: Vec<DkimSigner>,
        unsubscribe: &UnsubscribeConfig,
        max_size: usize,
    ) -> Result<Self, MessageError> {
        let configured = unsubscribe.url.as_deref().is_some_and(|u| !u.is_empty())
            || unsubscribe.mailto.as_deref().is_some_and(|m| !m.is_empty());
        let unsubscribe = if configured {
            unsubscribe.validate()?;
            Some((
                unsubscribe.clone(),
                UnsubscribeTokens::new(&unsubscribe.secret, &unsubscribe.previous_secrets),
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

    /// Whether messages are DKIM-signed (building one then costs far more).
    pub fn signs(&self) -> bool {
        !self.dkim.is_empty()
    }

    /// Whether a job's messages differ from one recipient to the next (campaigns; list
    /// mail with an unsubscribe token): then they are never built once for all.
    pub fn per_recipient(&self, spec: &JobSpec) -> bool {
        spec.kind == JobKind::Campaign
            || (self.unsubscribe.is_some() && spec.unsubscribe_list().is_some())
    }

    /// The loaded templates; submissions check template names and variables against them.
    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    /// Verifies an unsubscribe token: what it says when genuine.
    pub fn verify_unsubscribe(&self, token: &str) -> Option<Unsubscription> {
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
        if let Some(raw) = &spec.raw {
            return self.submitted(raw);
        }
        let (subject, text, html) = match &spec.template {
            Some(name) => {
                let rendered = self.templates.render(name, &merge(&spec.vars, vars))?;
                (
                    spec.subject.clone().unwrap_or(rendered.subject),
                    Some(rendered.text),
                    rendered.html,
                )
            }
            // An HTML-only message gets a text part derived from its HTML, as a
            // template without `text.hbs` does: mailbox providers score HTML-only
            // mail worse, and some readers show only text.
            None => (
                spec.subject.clone().unwrap_or_default(),
                spec.text
                    .clone()
                    .or_else(|| spec.html.as_deref().map(html_to_text)),
                spec.html.clone(),
            ),
        };
        // A message shows its own To and Cc, the same in every copy (with only Bcc
        // recipients, `undisclosed-recipients:;`); a campaign's recipient is its To.
        let (to, cc) = match spec.kind {
            JobKind::Message | JobKind::Smtp => (mailboxes(&spec.to)?, mailboxes(&spec.cc)?),
            JobKind::Campaign => (vec![Mailbox::new(recipient.clone())], Vec::new()),
        };
        let list_unsubscribe = match (&self.unsubscribe, spec.unsubscribe_list()) {
            (Some((cfg, tokens)), Some(list)) => {
                let token_for = TokenFor {
                    job: job_id,
                    list,
                    address: recipient.as_str(),
                    issued: std::time::SystemTime::now(),
                };
                ListUnsubscribe::for_recipient(cfg, tokens, token_for)?
            }
            _ => None,
        };
        let attachments = spec
            .attachments
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let content = base64::engine::general_purpose::STANDARD
                    .decode(a.content.trim())
                    .map_err(|e| ComposeError::Stored(format!("attachments[{i}]: {e}")))?;
                Ok(Attachment {
                    filename: a.filename.clone(),
                    content_type: a.content_type.clone(),
                    content,
                })
            })
            .collect::<Result<_, ComposeError>>()?;
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
        self.sign(built)
    }

    /// A message submitted whole: prepared at intake, signed here.
    fn submitted(&self, raw: &str) -> Result<Vec<u8>, ComposeError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|e| ComposeError::Stored(format!("raw message: {e}")))?;
        self.sign(bytes)
    }

    /// DKIM-signs a built message (when a key is configured) and checks its size.
    fn sign(&self, built: Vec<u8>) -> Result<Vec<u8>, ComposeError> {
        let signed = if self.dkim.is_empty() {
            built
        } else {
            sign_all(&self.dkim, &built)?
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
    let address = Address::parse(&m.address)
        .map_err(|e| ComposeError::Stored(format!("address {:?}: {e}", m.address)))?;
    Ok(Mailbox {
        name: m.name.clone(),
        address,
    })
}

fn mailboxes(list: &[StoredMailbox]) -> Result<Vec<Mailbox>, ComposeError> {
    list.iter().map(mailbox).collect()
}
