//! The values that cross the queue's API: submissions, leases, outcomes, status and events.
//! Payloads and variables are opaque bytes (JSON by convention); the queue never parses them.

use std::time::{Duration, SystemTime};

use super::error::{QueueError, Result};
use super::id::{DeliveryId, JobId};
pub use crate::event::EventKind;

/// What kind of submission a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// One transactional message (possibly to several recipients).
    Message,
    /// A template sent to a list of recipients.
    Campaign,
    /// A message an application submitted whole over SMTP.
    Smtp,
}

impl JobKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            JobKind::Message => 0,
            JobKind::Campaign => 1,
            JobKind::Smtp => 2,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(JobKind::Message),
            1 => Some(JobKind::Campaign),
            2 => Some(JobKind::Smtp),
            _ => None,
        }
    }
}

/// A submission, before its recipients.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Its id (`JobId::new(now)`).
    pub id: JobId,
    /// Message or campaign.
    pub kind: JobKind,
    /// Opaque JSON: template, from, subject, shared variables, headers...
    pub payload: Vec<u8>,
    /// Not before this time; `None` means now.
    pub send_at: Option<SystemTime>,
    /// The `Idempotency-Key` and a hash of the request body.
    pub idempotency: Option<(String, [u8; 32])>,
}

/// One recipient of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecipient {
    /// The address (already validated by the caller; the queue only refuses what it cannot
    /// store safely: empty, over 998 bytes, or containing CR, LF or NUL).
    pub to: String,
    /// Opaque JSON: this recipient's template variables.
    pub vars: Vec<u8>,
}

/// What `submit` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// The job and its deliveries are stored durably.
    Created {
        /// The job's id.
        id: JobId,
        /// How many deliveries it has.
        recipients: u32,
    },
    /// The same idempotency key and request hash were seen within 24 h: nothing new was made.
    Existing {
        /// The first submission's id.
        id: JobId,
        /// Its number of deliveries.
        recipients: u32,
    },
    /// The idempotency key was used within 24 h for a different request.
    IdempotencyConflict,
    /// A submission with the same idempotency key is still being stored: nothing was
    /// made; ask again in a moment.
    IdempotencyInProgress,
}

/// A lease's fencing token: which lease of its delivery it is. Every lease of a
/// delivery gets a larger one; the queue accepts a completion, a renewal or a release
/// only with the token of the delivery's current lease, so a worker whose lease was
/// taken over can never overwrite what the new holder records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LeaseToken(pub u64);

impl std::fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A lease the caller holds: the delivery and its token.
pub type Held = (DeliveryId, LeaseToken);

/// A leased delivery: the caller must `complete`, `release` or `renew` it before the
/// lease ends, quoting its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    /// Which delivery.
    pub id: DeliveryId,
    /// This lease's fencing token.
    pub token: LeaseToken,
    /// The address to send this delivery to (its RCPT TO), as stored at submission.
    pub to: String,
    /// The recipient's opaque variables.
    pub vars: Vec<u8>,
    /// Attempts completed before this one.
    pub attempts: u32,
    /// When the job was accepted.
    pub created: SystemTime,
    /// When the first attempt was recorded; `None` before any (the maximum age counts
    /// from it).
    pub first_attempt: Option<SystemTime>,
    /// When this delivery became due (send time or retry time): queue wait = lease time − this.
    pub queued_at: SystemTime,
}

/// How one attempt ended, as the delivery engine classified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Accepted by the destination.
    Delivered {
        /// The final SMTP reply.
        reply: String,
    },
    /// Try again at `at`.
    Retry {
        /// When to retry.
        at: SystemTime,
        /// Why it was deferred.
        reply: String,
    },
    /// Permanently refused.
    Bounced {
        /// The server's 5xx reply, or a local reason (an invalid address, a null MX...).
        reply: String,
        /// The mailbox does not exist: suppress the address for all mail, in the same
        /// write as the outcome.
        suppress: bool,
    },
    /// Gave up: retried until the maximum age.
    Expired {
        /// `4.4.7 message expired; last attempt:` followed by the last attempt's reply.
        reply: String,
    },
    /// Not sent: the address is on the suppression list.
    Suppressed,
}

/// One lease's outcome, as the caller commits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The delivery whose attempt this records.
    pub id: DeliveryId,
    /// The token of the lease it was attempted under.
    pub token: LeaseToken,
    /// What came of it.
    pub resolution: Resolution,
    /// How the attempt left (a JSON object, stored with its event; shared by the
    /// deliveries of one pipelined group); `None` when it never reached a connection.
    pub via: Option<std::sync::Arc<str>>,
}

/// Whom a suppression stops.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SuppressionScope {
    /// All mail: hard bounces, complaints, the operator's own entries.
    All,
    /// Mail of one list (a campaign's `list`): an unsubscribe.
    List(String),
}

impl SuppressionScope {
    /// The list a delivery without one belongs to, for unsubscribes from campaigns.
    pub const DEFAULT_LIST: &'static str = "default";

    /// `all` or `list:NAME`, as the API, the CSV files and the stores write it.
    pub fn as_text(&self) -> String {
        match self {
            SuppressionScope::All => "all".to_owned(),
            SuppressionScope::List(name) => format!("list:{name}"),
        }
    }
}

impl std::str::FromStr for SuppressionScope {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "all" => Ok(SuppressionScope::All),
            other => match other.strip_prefix("list:") {
                Some(name) if valid_list_name(name) => Ok(SuppressionScope::List(name.to_owned())),
                _ => Err(format!(
                    "scope {s:?}: expected \"all\" or \"list:NAME\" (NAME: 1 to 64 of a-z A-Z 0-9 . _ -)"
                )),
            },
        }
    }
}

/// Whether `name` can name a list: 1 to 64 letters, digits, `.`, `_` or `-`.
pub fn valid_list_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl serde::Serialize for SuppressionScope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_text())
    }
}

/// One entry of the suppression list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Suppression {
    /// The address, as its suppression key ([`crate::address::suppression_key`]).
    pub address: String,
    /// Whom it stops.
    pub scope: SuppressionScope,
    /// Why: the bounce reply, `unsubscribed`, `complaint`, an operator's note.
    pub reason: String,
    /// When it was added.
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub at: SystemTime,
}

/// `[retention]`: how long finished work is kept before the background pruning removes
/// it. Suppressions are kept until deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Events older than this are removed from the event log. Default `"30d"`.
    #[serde(with = "humantime_serde")]
    pub events: Duration,
    /// Jobs done longer ago than this are removed with their deliveries. Default `"30d"`.
    #[serde(with = "humantime_serde")]
    pub jobs: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let days = |n: u64| Duration::from_secs(n * 86_400);
        Self {
            events: days(30),
            jobs: days(30),
        }
    }
}

/// What one pruning pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Events.
    pub events: u64,
    /// Jobs, each with its deliveries and payload.
    pub jobs: u64,
}

/// Where a job stands as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// No delivery attempted yet.
    Queued,
    /// Some deliveries resolved, some not.
    Sending,
    /// Every delivery reached a final state.
    Done,
}

/// Deliveries of a job by state. `queued` includes leased deliveries; `deferred` are waiting
/// for a retry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// All deliveries.
    pub total: u32,
    /// Not yet attempted or being attempted.
    pub queued: u32,
    /// Delivered.
    pub delivered: u32,
    /// Waiting for a retry.
    pub deferred: u32,
    /// Bounced.
    pub bounced: u32,
    /// Expired.
    pub expired: u32,
    /// Suppressed.
    pub suppressed: u32,
}

impl Counts {
    /// The job's state implied by the counts.
    pub fn state(&self) -> JobState {
        if self.queued + self.deferred == 0 {
            JobState::Done
        } else if self.queued == self.total {
            JobState::Queued
        } else {
            JobState::Sending
        }
    }

    pub(crate) fn bucket(&mut self, state: RecipientState) -> &mut u32 {
        match state {
            RecipientState::Queued | RecipientState::Leased => &mut self.queued,
            RecipientState::Deferred => &mut self.deferred,
            RecipientState::Delivered => &mut self.delivered,
            RecipientState::Bounced => &mut self.bounced,
            RecipientState::Expired => &mut self.expired,
            RecipientState::Suppressed => &mut self.suppressed,
        }
    }

    /// Moves one delivery from one state's count to another's.
    pub(crate) fn moved(&mut self, from: RecipientState, to: RecipientState) {
        let f = self.bucket(from);
        *f = f.saturating_sub(1);
        *self.bucket(to) += 1;
    }
}

/// A job's status, serialised as the API and the dashboard show it:
/// `{"id", "kind", "created", "send_at", "state", "counts"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobStatus {
    /// Its id.
    pub id: JobId,
    /// Message or campaign.
    pub kind: JobKind,
    /// When it was accepted (RFC 3339).
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub created: SystemTime,
    /// Not sent before this time, when the submission said so (RFC 3339 or `null`).
    #[serde(serialize_with = "crate::time::serialize_rfc3339_opt")]
    pub send_at: Option<SystemTime>,
    /// Queued, sending or done.
    pub state: JobState,
    /// Deliveries by state.
    pub counts: Counts,
}

/// Where one delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientState {
    /// Waiting to be sent.
    Queued,
    /// A worker holds it.
    Leased,
    /// Waiting for a retry.
    Deferred,
    /// Delivered.
    Delivered,
    /// Bounced.
    Bounced,
    /// Expired.
    Expired,
    /// Suppressed.
    Suppressed,
}

impl RecipientState {
    /// The outcome a final state records; `None` while the delivery is still to be sent.
    pub fn final_kind(self) -> Option<EventKind> {
        match self {
            RecipientState::Delivered => Some(EventKind::Delivered),
            RecipientState::Bounced => Some(EventKind::Bounced),
            RecipientState::Expired => Some(EventKind::Expired),
            RecipientState::Suppressed => Some(EventKind::Suppressed),
            RecipientState::Queued | RecipientState::Leased | RecipientState::Deferred => None,
        }
    }

    /// True when nothing more will happen to the delivery.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RecipientState::Delivered
                | RecipientState::Bounced
                | RecipientState::Expired
                | RecipientState::Suppressed
        )
    }

    pub(crate) const ALL: [RecipientState; 7] = [
        RecipientState::Queued,
        RecipientState::Leased,
        RecipientState::Deferred,
        RecipientState::Delivered,
        RecipientState::Bounced,
        RecipientState::Expired,
        RecipientState::Suppressed,
    ];

    pub(crate) fn code(self) -> u8 {
        // Seven states: the discriminant is the code.
        self as u8
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        Self::ALL.get(usize::from(c)).copied()
    }

    /// The state a delivery returns to when its lease is given back or lost.
    pub(crate) fn unleased(attempts: u32) -> Self {
        if attempts == 0 {
            RecipientState::Queued
        } else {
            RecipientState::Deferred
        }
    }
}

/// One delivery's status, for paged listings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecipientStatus {
    /// Its index in the job.
    pub index: u32,
    /// The address this delivery is sent to.
    pub to: String,
    /// Its state.
    pub state: RecipientState,
    /// Attempts made.
    pub attempts: u32,
    /// The last SMTP reply, if any.
    pub last_reply: Option<String>,
}

/// One entry of the ordered event log, serialised as the API and the webhooks show it:
/// `{"cursor": 17, "job": "...", "index": 3, "to": "a@b", "event": "delivered",
/// "reply": "250 2.0.0 ok", "at": "2026-11-30T12:00:00Z"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    /// Its position in the log: strictly increasing; pass it as `after` to read on.
    pub cursor: u64,
    /// The id of the job the recipient belongs to.
    pub job: JobId,
    /// The recipient's index.
    pub index: u32,
    /// The address the event is about (`to` in the JSON).
    pub to: String,
    /// What happened.
    #[serde(rename = "event")]
    pub kind: EventKind,
    /// The SMTP reply, if any (`null` otherwise).
    pub reply: Option<String>,
    /// When it was recorded (RFC 3339, UTC, to the second).
    #[serde(serialize_with = "crate::time::serialize_rfc3339")]
    pub at: SystemTime,
    /// Reported after the SMTP handoff (a DSN or a complaint arriving as mail): `async`
    /// in the JSON, present only when true.
    #[serde(rename = "async", skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
    /// How the attempt left (egress pool, source address, TLS), as a JSON object the
    /// caller wrote; opaque to the queue. Absent when it was not attempted on a
    /// connection.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_json_text"
    )]
    pub via: Option<String>,
}

/// Writes JSON text kept as a string as the JSON it is (`null` when it is not JSON).
fn serialize_json_text<S: serde::Serializer>(
    text: &Option<String>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::Serialize;
    let raw = text
        .as_ref()
        .and_then(|t| serde_json::value::RawValue::from_string(t.clone()).ok());
    raw.serialize(s)
}

/// A report that arrives after a message was handed over: a delivery status
/// notification (RFC 3464) or a complaint (RFC 5965), tied to its delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateReport {
    /// The delivery it is about.
    pub id: DeliveryId,
    /// `Bounced` (a failed DSN), `Deferred` (a delayed DSN) or `Complained`.
    pub kind: EventKind,
    /// The status and diagnostic it gives, or the feedback type.
    pub reply: String,
    /// Suppress the address for all mail, with this reason (hard bounces, complaints).
    pub suppress: Option<String>,
}

/// What recording a late report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LateOutcome {
    /// The event is in the log (and the suppression stored, when asked).
    Recorded {
        /// The recipient's address.
        to: String,
    },
    /// No such delivery (pruned, or never existed): nothing stored.
    UnknownDelivery,
}

/// How much work is waiting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Depth {
    /// Due now and not leased.
    pub ready: u64,
    /// Due later (a future `send_at` or a retry).
    pub scheduled: u64,
    /// Held by workers.
    pub leased: u64,
}

impl Resolution {
    /// The state the delivery ends up in and the event it records (none for a retry's state).
    pub(crate) fn outcome(&self) -> (RecipientState, EventKind, Option<&str>) {
        match self {
            Resolution::Delivered { reply } => {
                (RecipientState::Delivered, EventKind::Delivered, Some(reply))
            }
            Resolution::Retry { reply, .. } => {
                (RecipientState::Deferred, EventKind::Deferred, Some(reply))
            }
            Resolution::Bounced { reply, .. } => {
                (RecipientState::Bounced, EventKind::Bounced, Some(reply))
            }
            Resolution::Expired { reply } => {
                (RecipientState::Expired, EventKind::Expired, Some(reply))
            }
            Resolution::Suppressed => (RecipientState::Suppressed, EventKind::Suppressed, None),
        }
    }

    /// The event it records.
    pub fn kind(&self) -> EventKind {
        self.outcome().1
    }

    /// The reply it records, if any.
    pub fn reply(&self) -> Option<&str> {
        self.outcome().2
    }

    /// Whether the outcome counts as an attempt (suppression never touched the network).
    pub(crate) fn is_attempt(&self) -> bool {
        !matches!(self, Resolution::Suppressed)
    }
}

pub(crate) use crate::time::{from_unix_ms as from_ms, unix_ms as to_ms};

/// How long an idempotency key is remembered.
pub(crate) const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Refuses what the queue cannot store safely; address syntax is the caller's job.
pub(crate) fn check_recipient(index: u32, r: &NewRecipient) -> Result<()> {
    let field = || format!("recipients[{index}].to");
    if r.to.is_empty() {
        return Err(QueueError::invalid(field(), "empty address"));
    }
    if r.to.len() > 998 {
        return Err(QueueError::invalid(field(), "longer than 998 bytes"));
    }
    if r.to.bytes().any(|b| matches!(b, b'\r' | b'\n' | b'\0')) {
        return Err(QueueError::invalid(field(), "contains CR, LF or NUL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_read_and_write_as_text() {
        for text in ["all", "list:default", "list:news.weekly-2"] {
            let scope: SuppressionScope = text.parse().unwrap();
            assert_eq!(scope.as_text(), text);
        }
        for bad in ["", "list:", "list:a b", "everything", "list:a\nb"] {
            assert!(bad.parse::<SuppressionScope>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn state_codes_round_trip() {
        for s in RecipientState::ALL {
            assert_eq!(RecipientState::from_code(s.code()), Some(s));
        }
        assert_eq!(RecipientState::from_code(7), None);
    }

    #[test]
    fn counts_give_the_job_state() {
        let mut c = Counts {
            total: 2,
            queued: 2,
            ..Counts::default()
        };
        assert_eq!(c.state(), JobState::Queued);
        c.moved(RecipientState::Queued, RecipientState::Deferred);
        assert_eq!(c.state(), JobState::Sending);
        c.moved(RecipientState::Queued, RecipientState::Delivered);
        c.moved(RecipientState::Deferred, RecipientState::Bounced);
        assert_eq!(c.state(), JobState::Done);
        assert_eq!((c.delivered, c.bounced, c.queued), (1, 1, 0));
    }
}
