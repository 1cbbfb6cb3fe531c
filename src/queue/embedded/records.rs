//! The embedded store's tables and the fixed binary layout of their records. Keys are
//! big-endian so that byte order is time order (ready and lease indexes) and a job's
//! deliveries are contiguous.

use redb::TableDefinition;

use crate::queue::error::{QueueError, Result};
use crate::queue::id::{DeliveryId, JobId};
use crate::queue::types::{Counts, EventKind, JobKind, RecipientState};

/// Job id → [`JobRecord`].
pub(super) const JOBS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("jobs");
/// Job id → opaque payload.
pub(super) const PAYLOADS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("payloads");
/// Delivery id → [`Delivery`].
pub(super) const DELIVERIES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("deliveries");
/// (due ms, delivery id) → (): deliveries due, waiting to be leased. (Stores written
/// before [`SCHED`] existed also hold future entries here; `lease` only takes due ones.)
pub(super) const READY: TableDefinition<'_, &[u8], ()> = TableDefinition::new("ready");
/// (due ms, delivery id) → (): deliveries due later (a `send_at`, a retry, a postponed
/// release); `lease` moves them to [`READY`] as they fall due. Two tables, so that the
/// queue's depth is three table lengths, not a scan.
pub(super) const SCHED: TableDefinition<'_, &[u8], ()> = TableDefinition::new("scheduled");
/// (done ms, job id) → (): finished jobs, oldest first, for retention.
pub(super) const DONE: TableDefinition<'_, &[u8], ()> = TableDefinition::new("done");
/// (lease end ms, delivery id) → (): every leased delivery, so expiry is a range scan.
pub(super) const LEASED: TableDefinition<'_, &[u8], ()> = TableDefinition::new("leased");
/// Job id → due ms of a submission still being written: its ready entries are skipped.
pub(super) const PENDING: TableDefinition<'_, &[u8], u64> = TableDefinition::new("pending");
/// Idempotency key → (request hash, job id, accepted ms, recipients).
pub(super) const IDEMPOTENCY: TableDefinition<'_, &str, &[u8]> =
    TableDefinition::new("idempotency");
/// (accepted ms, idempotency key) → (): idempotency entries oldest first, for pruning.
pub(super) const IDEM_AT: TableDefinition<'_, &[u8], ()> = TableDefinition::new("idempotency_at");
/// Cursor → [`EventRecord`].
pub(super) const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");
/// Suppression key, NUL, scope text → [`SuppressionRecord`]. Ordered by address.
pub(super) const SUPPRESSIONS: TableDefinition<'_, &str, &[u8]> =
    TableDefinition::new("suppressions");
/// The list of stores before scopes: normalised address → reason. Moved into
/// [`SUPPRESSIONS`] (scope `all`) when such a store is opened.
pub(super) const SUPPRESSED_V1: TableDefinition<'_, &str, &str> =
    TableDefinition::new("suppressed");

/// The key of an idempotency entry in [`IDEM_AT`]: its time then the key itself.
pub(super) fn idem_at_key(at_ms: u64, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// An index key: a time then a delivery id.
pub(super) fn index_key(ms: u64, id: DeliveryId) -> [u8; 28] {
    let mut k = [0u8; 28];
    k[..8].copy_from_slice(&ms.to_be_bytes());
    k[8..].copy_from_slice(&id.to_bytes());
    k
}

/// The first index key after every key of `(ms, ..)`.
pub(super) fn after_ms_key(ms: u64) -> [u8; 28] {
    let mut k = [0xFF; 28];
    k[..8].copy_from_slice(&ms.to_be_bytes());
    k
}

pub(super) fn split_index_key(k: &[u8]) -> Result<(u64, DeliveryId)> {
    let bad = || QueueError::corrupt("index", format!("key of {} bytes", k.len()));
    let ms: [u8; 8] = k.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
    let id = DeliveryId::from_bytes(k.get(8..).ok_or_else(bad)?).ok_or_else(bad)?;
    Ok((u64::from_be_bytes(ms), id))
}

/// A cursor over a record's bytes that reports truncation as corruption.
struct Reader<'a> {
    buf: &'a [u8],
    table: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(QueueError::corrupt(self.table, "record truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn string(&mut self, n: usize) -> Result<String> {
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| QueueError::corrupt(self.table, "text is not UTF-8"))
    }
    fn opt_string(&mut self) -> Result<Option<String>> {
        match self.u8()? {
            0 => Ok(None),
            _ => {
                let n = self.u32()? as usize;
                self.string(n).map(Some)
            }
        }
    }
}

/// An address's length as stored: addresses are at most 998 bytes, refused above that
/// at submission ([`crate::queue::types`]' `check_recipient`).
fn address_len(to: &str) -> u16 {
    u16::try_from(to.len()).expect("addresses are checked to be at most 998 bytes")
}

fn put_opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            let len = u32::try_from(s.len()).expect("stored texts are far below 4 GiB");
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// A job's kind, creation time and counts.
#[derive(Debug, Clone, Copy)]
pub(super) struct JobRecord {
    pub(super) kind: JobKind,
    pub(super) created_ms: u64,
    pub(super) counts: Counts,
    /// The `send_at` the submission asked for; 0 when it asked for none.
    pub(super) send_at_ms: u64,
    /// When its last delivery reached a final state; 0 while it is not done.
    pub(super) done_ms: u64,
}

impl JobRecord {
    pub(super) fn encode(&self) -> Vec<u8> {
        let c = &self.counts;
        let mut out = Vec::with_capacity(53);
        out.push(self.kind.code());
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        for n in [
            c.total,
            c.queued,
            c.delivered,
            c.deferred,
            c.bounced,
            c.expired,
            c.suppressed,
        ] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&self.send_at_ms.to_be_bytes());
        out.extend_from_slice(&self.done_ms.to_be_bytes());
        out
    }

    pub(super) fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader { buf, table: "jobs" };
        let kind = JobKind::from_code(r.u8()?)
            .ok_or_else(|| QueueError::corrupt("jobs", "unknown job kind"))?;
        let created_ms = r.u64()?;
        let counts = Counts {
            total: r.u32()?,
            queued: r.u32()?,
            delivered: r.u32()?,
            deferred: r.u32()?,
            bounced: r.u32()?,
            expired: r.u32()?,
            suppressed: r.u32()?,
        };
        // Records written before `send_at` and `done` were kept end early.
        let send_at_ms = if r.buf.is_empty() { 0 } else { r.u64()? };
        let done_ms = if r.buf.is_empty() { 0 } else { r.u64()? };
        Ok(JobRecord {
            kind,
            created_ms,
            counts,
            send_at_ms,
            done_ms,
        })
    }
}

/// One delivery. `due_ms` is when it became (or becomes) due; `lease_until_ms` is meaningful
/// only while leased and locates its entry in [`LEASED`]; `token` is its latest lease's
/// fencing token; `first_ms` when its first attempt was recorded (0 before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Delivery {
    pub(super) state: RecipientState,
    pub(super) attempts: u32,
    pub(super) due_ms: u64,
    pub(super) lease_until_ms: u64,
    pub(super) token: u64,
    pub(super) first_ms: u64,
    pub(super) to: String,
    pub(super) last_reply: Option<String>,
    pub(super) vars: Vec<u8>,
}

/// Marks a delivery record of the second layout (with token and first attempt) in its
/// first byte; records of the first layout start with the bare state code.
const DELIVERY_V2: u8 = 0x80;

impl Delivery {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.to.len() + self.vars.len());
        out.push(DELIVERY_V2 | self.state.code());
        out.extend_from_slice(&self.attempts.to_be_bytes());
        out.extend_from_slice(&self.due_ms.to_be_bytes());
        out.extend_from_slice(&self.lease_until_ms.to_be_bytes());
        out.extend_from_slice(&self.token.to_be_bytes());
        out.extend_from_slice(&self.first_ms.to_be_bytes());
        out.extend_from_slice(&address_len(&self.to).to_be_bytes());
        out.extend_from_slice(self.to.as_bytes());
        put_opt_string(&mut out, self.last_reply.as_deref());
        out.extend_from_slice(&self.vars);
        out
    }

    pub(super) fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader {
            buf,
            table: "deliveries",
        };
        let first = r.u8()?;
        let state = RecipientState::from_code(first & !DELIVERY_V2)
            .ok_or_else(|| QueueError::corrupt("deliveries", "unknown state"))?;
        let attempts = r.u32()?;
        let due_ms = r.u64()?;
        let lease_until_ms = r.u64()?;
        let (token, first_ms) = if first & DELIVERY_V2 != 0 {
            (r.u64()?, r.u64()?)
        } else {
            (0, 0)
        };
        let n = usize::from(r.u16()?);
        let to = r.string(n)?;
        let last_reply = r.opt_string()?;
        Ok(Delivery {
            state,
            attempts,
            due_ms,
            lease_until_ms,
            token,
            first_ms,
            to,
            last_reply,
            vars: r.buf.to_vec(),
        })
    }
}

/// One event, without its cursor (the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EventRecord {
    pub(super) id: DeliveryId,
    pub(super) kind: EventKind,
    pub(super) at_ms: u64,
    pub(super) to: String,
    pub(super) reply: Option<String>,
    /// Reported after the handoff (a trailing marker byte; absent in older records).
    pub(super) late: bool,
    /// How the attempt left (after the marker byte; absent in older records).
    pub(super) via: Option<String>,
}

impl EventRecord {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.to.len());
        out.extend_from_slice(&self.id.to_bytes());
        out.push(u8::try_from(self.kind.index()).expect("event kinds are few"));
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        out.extend_from_slice(&address_len(&self.to).to_be_bytes());
        out.extend_from_slice(self.to.as_bytes());
        put_opt_string(&mut out, self.reply.as_deref());
        if self.late || self.via.is_some() {
            out.push(u8::from(self.late));
        }
        if self.via.is_some() {
            put_opt_string(&mut out, self.via.as_deref());
        }
        out
    }

    pub(super) fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader {
            buf,
            table: "events",
        };
        let id = DeliveryId::from_bytes(r.take(20)?)
            .ok_or_else(|| QueueError::corrupt("events", "bad delivery id"))?;
        let kind = EventKind::ALL
            .get(usize::from(r.u8()?))
            .copied()
            .ok_or_else(|| QueueError::corrupt("events", "unknown kind"))?;
        let at_ms = r.u64()?;
        let n = usize::from(r.u16()?);
        let to = r.string(n)?;
        let reply = r.opt_string()?;
        let late = !r.buf.is_empty() && r.u8()? == 1;
        let via = if r.buf.is_empty() {
            None
        } else {
            r.opt_string()?
        };
        Ok(EventRecord {
            id,
            kind,
            at_ms,
            to,
            reply,
            late,
            via,
        })
    }
}

/// A suppression entry's value: when and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SuppressionRecord {
    pub(super) at_ms: u64,
    pub(super) reason: String,
}

impl SuppressionRecord {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.reason.len());
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        out.extend_from_slice(self.reason.as_bytes());
        out
    }

    pub(super) fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader {
            buf,
            table: "suppressions",
        };
        let at_ms = r.u64()?;
        let n = r.buf.len();
        Ok(SuppressionRecord {
            at_ms,
            reason: r.string(n)?,
        })
    }
}

/// The key of a suppression entry: the address key, NUL, the scope's text, so that an
/// address's entries are contiguous and the table reads in address order.
pub(super) fn suppression_key(address: &str, scope: &str) -> String {
    format!("{address}\0{scope}")
}

/// The address and scope texts of a suppression key.
pub(super) fn split_suppression_key(key: &str) -> Result<(&str, &str)> {
    key.split_once('\0')
        .ok_or_else(|| QueueError::corrupt("suppressions", format!("key {key:?}")))
}

/// What an idempotency key maps to: the request's hash, the job it created, when (ms)
/// and how many recipients; the same request repeated within 24 h gets that job back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IdemRecord {
    pub(super) hash: [u8; 32],
    pub(super) job: JobId,
    pub(super) at_ms: u64,
    pub(super) recipients: u32,
}

impl IdemRecord {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(60);
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.job.to_bytes());
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        out.extend_from_slice(&self.recipients.to_be_bytes());
        out
    }

    pub(super) fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader {
            buf,
            table: "idempotency",
        };
        let hash: [u8; 32] = r.take(32)?.try_into().unwrap_or_default();
        let job: [u8; 16] = r.take(16)?.try_into().unwrap_or_default();
        Ok(IdemRecord {
            hash,
            job: JobId::from_bytes(job),
            at_ms: r.u64()?,
            recipients: r.u32()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let d = Delivery {
            state: RecipientState::Deferred,
            attempts: 3,
            due_ms: 42,
            lease_until_ms: 7,
            token: 9,
            first_ms: 11,
            to: "a@b.c".into(),
            last_reply: Some("451 4.7.1 later\r\nmore".into()),
            vars: br#"{"x":1}"#.to_vec(),
        };
        assert_eq!(Delivery::decode(&d.encode()).ok(), Some(d.clone()));
        let d2 = Delivery {
            last_reply: None,
            vars: vec![],
            ..d
        };
        assert_eq!(Delivery::decode(&d2.encode()).ok(), Some(d2));
        let id = DeliveryId {
            job: JobId::from_bytes([9; 16]),
            index: 5,
        };
        let e = EventRecord {
            id,
            kind: EventKind::Bounced,
            at_ms: 1,
            to: "x@y".into(),
            reply: None,
            late: false,
            via: None,
        };
        assert_eq!(EventRecord::decode(&e.encode()).ok(), Some(e.clone()));
        let late = EventRecord {
            late: true,
            reply: Some("5.1.1 gone".into()),
            ..e.clone()
        };
        assert_eq!(EventRecord::decode(&late.encode()).ok(), Some(late));
        let via = EventRecord {
            via: Some(r#"{"pool":"tx"}"#.into()),
            reply: Some("250 ok".into()),
            ..e.clone()
        };
        assert_eq!(EventRecord::decode(&via.encode()).ok(), Some(via));
        // A record written before `via` existed (no marker byte) still reads.
        let mut old = e.encode();
        assert_eq!(EventRecord::decode(&old).ok(), Some(e.clone()));
        old.push(1);
        assert_eq!(EventRecord::decode(&old).map(|r| r.late).ok(), Some(true));
        assert_eq!(split_index_key(&index_key(77, id)).ok(), Some((77, id)));
    }

    #[test]
    fn truncated_records_are_corrupt_not_panics() {
        let d = Delivery {
            state: RecipientState::Queued,
            attempts: 0,
            due_ms: 0,
            lease_until_ms: 0,
            token: 0,
            first_ms: 0,
            to: "someone@example.com".into(),
            last_reply: Some("250 ok".into()),
            vars: vec![],
        }
        .encode();
        for n in 0..d.len() - 1 {
            assert!(Delivery::decode(&d[..n]).is_err(), "{n}");
        }
        assert!(JobRecord::decode(&[1, 2, 3]).is_err());
    }

    #[test]
    fn first_layout_deliveries_still_decode() {
        // state Leased (1), 2 attempts, due 5, lease until 6, "a@b", no reply, vars "{}".
        let mut old = vec![1u8];
        old.extend_from_slice(&2u32.to_be_bytes());
        old.extend_from_slice(&5u64.to_be_bytes());
        old.extend_from_slice(&6u64.to_be_bytes());
        old.extend_from_slice(&3u16.to_be_bytes());
        old.extend_from_slice(b"a@b");
        old.push(0);
        old.extend_from_slice(b"{}");
        let d = Delivery::decode(&old).unwrap();
        assert_eq!(
            (
                d.state,
                d.attempts,
                d.due_ms,
                d.token,
                d.first_ms,
                d.to.as_str()
            ),
            (RecipientState::Leased, 2, 5, 0, 0, "a@b")
        );
        assert_eq!(d.vars, b"{}");
    }
}
