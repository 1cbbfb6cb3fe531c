//! The stored job: what the queue keeps (as opaque JSON) for a message or a campaign,
//! and the variables a recipient's template is rendered with. Written once by
//! submission, read by the composer for every delivery; it never changes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::queue::JobKind;

/// A stored mailbox: display name and address text (validated before storing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMailbox {
    /// Display name.
    pub name: Option<String>,
    /// The bare address, `local@domain`; parsed again when the message is built.
    pub address: String,
}

/// A stored attachment, its content in base64 (checked at submission).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAttachment {
    /// File name.
    pub filename: String,
    /// MIME type.
    pub content_type: String,
    /// The content, base64.
    pub content: String,
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
    /// Variables shared by every recipient.
    #[serde(default)]
    pub vars: Map<String, Value>,
    /// Extra headers, in order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Attachments.
    #[serde(default)]
    pub attachments: Vec<StoredAttachment>,
    /// The caller's labels, kept for status listings.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The list its mail belongs to: what an unsubscribe leaves, and what a list's
    /// suppressions stop. `None` on a message is transactional mail.
    #[serde(default)]
    pub list: Option<String>,
    /// The egress pool it leaves from; `None`: `[egress] default_pool` at send time.
    /// Shared, so that each delivery carries it without a copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<std::sync::Arc<str>>,
    /// A message submitted whole over SMTP (kind `smtp`): its bytes, base64, already
    /// prepared at intake (Bcc removed, Date and Message-ID set), so that every attempt
    /// sends the same message.
    #[serde(default)]
    pub raw: Option<String>,
}

impl JobSpec {
    /// The list whose unsubscribes stop this job's mail: a campaign's (`"default"` unless
    /// it named one); a message's only when it named one.
    pub fn unsubscribe_list(&self) -> Option<&str> {
        match (self.kind, &self.list) {
            (_, Some(list)) => Some(list),
            (JobKind::Campaign, None) => Some(crate::queue::SuppressionScope::DEFAULT_LIST),
            (JobKind::Message | JobKind::Smtp, None) => None,
        }
    }

    /// The spec as the queue stores it.
    pub fn to_payload(&self) -> Vec<u8> {
        // A `JobSpec` is strings, lists and JSON values: serialising it cannot fail.
        serde_json::to_vec(self).expect("a job spec serialises")
    }

    /// Reads a stored payload; an error says what does not decode.
    pub fn from_payload(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Shared variables overlaid with a recipient's.
pub fn merge(shared: &Map<String, Value>, own: &Map<String, Value>) -> Value {
    let mut all = shared.clone();
    for (k, v) in own {
        all.insert(k.clone(), v.clone());
    }
    Value::Object(all)
}

/// A recipient's stored variables: `{}` when it has none.
pub fn vars_to_bytes(vars: &Map<String, Value>) -> Vec<u8> {
    if vars.is_empty() {
        return b"{}".to_vec();
    }
    serde_json::to_vec(vars).expect("a JSON map serialises")
}

/// Reads a recipient's stored variables.
pub fn vars_from_bytes(bytes: &[u8]) -> Result<Map<String, Value>, serde_json::Error> {
    if bytes.is_empty() {
        return Ok(Map::new());
    }
    serde_json::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_prefers_the_recipient() {
        let shared: Map<String, Value> = serde_json::from_str(r#"{"a": 1, "b": 2}"#).unwrap();
        let own: Map<String, Value> = serde_json::from_str(r#"{"b": 3}"#).unwrap();
        assert_eq!(merge(&shared, &own), serde_json::json!({"a": 1, "b": 3}));
    }

    #[test]
    fn stored_variables_round_trip_and_refuse_garbage() {
        let vars: Map<String, Value> = serde_json::from_str(r#"{"n": "Ann"}"#).unwrap();
        assert_eq!(vars_from_bytes(&vars_to_bytes(&vars)).unwrap(), vars);
        assert!(vars_from_bytes(b"").unwrap().is_empty());
        assert!(vars_from_bytes(b"{not json").is_err());
        assert!(vars_from_bytes(b"[1]").is_err(), "variables are an object");
    }
}
