//! The embedded store's read side (status, recipients, events, depth) and the suppression
//! list. Reads run in redb read transactions, which never wait for the writer.

use std::time::SystemTime;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::records::{
    DELIVERIES, Delivery, EVENTS, EventRecord, JOBS, JobRecord, LEASED, PAYLOADS, READY, SCHED,
    SUPPRESSIONS, SuppressionRecord, split_suppression_key, suppression_key,
};
use crate::address::suppression_key as address_key;
use crate::queue::error::{QueueError, Result};
use crate::queue::id::{DeliveryId, JobId};
use crate::queue::types::{
    Depth, Event, JobStatus, LateOutcome, LateReport, RecipientStatus, Suppression,
    SuppressionScope, from_ms, to_ms,
};

pub(super) fn job(db: &Database, id: JobId) -> Result<Option<JobStatus>> {
    let tx = db.begin_read()?;
    let jobs = tx.open_table(JOBS)?;
    let Some(v) = jobs.get(&id.to_bytes()[..])? else {
        return Ok(None);
    };
    Ok(Some(status(id, JobRecord::decode(v.value())?)))
}

fn status(id: JobId, rec: JobRecord) -> JobStatus {
    JobStatus {
        id,
        kind: rec.kind,
        created: from_ms(rec.created_ms),
        send_at: (rec.send_at_ms > 0).then(|| from_ms(rec.send_at_ms)),
        state: rec.counts.state(),
        counts: rec.counts,
    }
}

/// Newest first: job keys are ids, whose bytes sort by creation time.
pub(super) fn recent_jobs(db: &Database, limit: usize) -> Result<Vec<JobStatus>> {
    let tx = db.begin_read()?;
    let jobs = tx.open_table(JOBS)?;
    let mut out = Vec::with_capacity(limit.min(1024));
    for e in jobs.iter()?.rev().take(limit) {
        let (k, v) = e?;
        let id = <[u8; 16]>::try_from(k.value())
            .map(JobId::from_bytes)
            .map_err(|_| QueueError::corrupt("jobs", "a key that is not a job id"))?;
        out.push(status(id, JobRecord::decode(v.value())?));
    }
    Ok(out)
}

/// Several payloads in one read transaction, in the order asked.
pub(super) fn payloads(db: &Database, ids: &[JobId]) -> Result<Vec<Option<Vec<u8>>>> {
    let tx = db.begin_read()?;
    let payloads = tx.open_table(PAYLOADS)?;
    ids.iter()
        .map(|id| {
            Ok(payloads
                .get(&id.to_bytes()[..])?
                .map(|v| v.value().to_vec()))
        })
        .collect()
}

pub(super) fn recipients(
    db: &Database,
    job: JobId,
    after: Option<u32>,
    limit: usize,
) -> Result<Vec<RecipientStatus>> {
    let tx = db.begin_read()?;
    // A submission still being written has deliveries but no job: it does not exist yet.
    if tx.open_table(JOBS)?.get(&job.to_bytes()[..])?.is_none() {
        return Ok(Vec::new());
    }
    let first = match after {
        None => 0,
        Some(u32::MAX) => return Ok(Vec::new()),
        Some(i) => i + 1,
    };
    let lo = DeliveryId { job, index: first }.to_bytes();
    let hi = DeliveryId {
        job,
        index: u32::MAX,
    }
    .to_bytes();
    let deliveries = tx.open_table(DELIVERIES)?;
    let mut out = Vec::with_capacity(limit.min(1024));
    for e in deliveries.range(&lo[..]..=&hi[..])?.take(limit) {
        let (k, v) = e?;
        let index = DeliveryId::from_bytes(k.value()).map_or(0, |d| d.index);
        let d = Delivery::decode(v.value())?;
        out.push(RecipientStatus {
            index,
            to: d.to,
            state: d.state,
            attempts: d.attempts,
            last_reply: d.last_reply,
        });
    }
    Ok(out)
}

pub(super) fn events(db: &Database, after: u64, limit: usize) -> Result<Vec<Event>> {
    let tx = db.begin_read()?;
    let events = tx.open_table(EVENTS)?;
    let mut out = Vec::with_capacity(limit.min(1024));
    for e in events.range(after.saturating_add(1)..)?.take(limit) {
        let (k, v) = e?;
        let r = EventRecord::decode(v.value())?;
        out.push(Event {
            cursor: k.value(),
            job: r.id.job,
            index: r.id.index,
            to: r.to,
            kind: r.kind,
            reply: r.reply,
            at: from_ms(r.at_ms),
            late: r.late,
            via: r.via,
        });
    }
    Ok(out)
}

/// Three table lengths, each kept by redb in the table's header: O(1), whatever the queue
/// holds. Deliveries fall from scheduled to ready when the next lease takes them.
pub(super) fn depth(db: &Database) -> Result<Depth> {
    let tx = db.begin_read()?;
    Ok(Depth {
        ready: tx.open_table(READY)?.len()?,
        scheduled: tx.open_table(SCHED)?.len()?,
        leased: tx.open_table(LEASED)?.len()?,
    })
}

pub(super) fn suppress(db: &Database, entry: &Suppression) -> Result<()> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    let key = suppression_key(&address_key(&entry.address), &entry.scope.as_text());
    let record = SuppressionRecord {
        at_ms: to_ms(entry.at),
        reason: entry.reason.clone(),
    };
    tx.open_table(SUPPRESSIONS)?
        .insert(key.as_str(), &record.encode()[..])?;
    tx.commit()?;
    Ok(())
}

/// A late report: its event, and the address's suppression when asked, in one write.
pub(super) fn record_late(
    db: &Database,
    report: &LateReport,
    now: SystemTime,
) -> Result<LateOutcome> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    let to = {
        let deliveries = tx.open_table(DELIVERIES)?;
        let record = deliveries.get(&report.id.to_bytes()[..])?;
        record
            .map(|v| Delivery::decode(v.value()))
            .transpose()?
            .map(|d| d.to)
    };
    let Some(to) = to else {
        tx.abort()?;
        return Ok(LateOutcome::UnknownDelivery);
    };
    {
        let mut events = tx.open_table(EVENTS)?;
        let cursor = events.last()?.map_or(0, |(k, _)| k.value()) + 1;
        let event = EventRecord {
            id: report.id,
            kind: report.kind,
            at_ms: to_ms(now),
            to: to.clone(),
            reply: Some(report.reply.clone()),
            late: true,
            via: None,
        };
        events.insert(cursor, &event.encode()[..])?;
    }
    if let Some(reason) = &report.suppress {
        let key = suppression_key(&address_key(&to), &SuppressionScope::All.as_text());
        let record = SuppressionRecord {
            at_ms: to_ms(now),
            reason: reason.clone(),
        };
        tx.open_table(SUPPRESSIONS)?
            .insert(key.as_str(), &record.encode()[..])?;
    }
    tx.commit()?;
    Ok(LateOutcome::Recorded { to })
}

/// An address's entries as (table key, entry), every scope.
fn entries_of(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    address: &str,
) -> Result<Vec<(String, Suppression)>> {
    let start = format!("{address}\0");
    let end = format!("{address}\u{1}");
    let mut out = Vec::new();
    for e in table.range(start.as_str()..end.as_str())? {
        let (k, v) = e?;
        out.push((k.value().to_owned(), entry(k.value(), v.value())?));
    }
    Ok(out)
}

fn entry(key: &str, value: &[u8]) -> Result<Suppression> {
    let (address, scope) = split_suppression_key(key)?;
    let record = SuppressionRecord::decode(value)?;
    Ok(Suppression {
        address: address.to_owned(),
        scope: scope
            .parse()
            .map_err(|e| QueueError::corrupt("suppressions", e))?,
        reason: record.reason,
        at: from_ms(record.at_ms),
    })
}

pub(super) fn unsuppress(
    db: &Database,
    address: &str,
    scope: Option<&SuppressionScope>,
) -> Result<usize> {
    let address = address_key(address);
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    let mut removed = 0;
    {
        let mut table = tx.open_table(SUPPRESSIONS)?;
        for (key, e) in entries_of(&table, &address)? {
            if scope.is_none_or(|s| *s == e.scope) {
                table.remove(key.as_str())?;
                removed += 1;
            }
        }
    }
    tx.commit()?;
    Ok(removed)
}

pub(super) fn suppressions_of(db: &Database, address: &str) -> Result<Vec<Suppression>> {
    let tx = db.begin_read()?;
    let table = tx.open_table(SUPPRESSIONS)?;
    Ok(entries_of(&table, &address_key(address))?
        .into_iter()
        .map(|(_, e)| e)
        .collect())
}

pub(super) fn suppressions(
    db: &Database,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Suppression>> {
    let tx = db.begin_read()?;
    let table = tx.open_table(SUPPRESSIONS)?;
    // After every entry of `after`: its key prefix then the highest byte a scope uses.
    let start = after.map(|a| format!("{}\u{1}", address_key(a)));
    let range = match &start {
        Some(s) => table.range(s.as_str()..)?,
        None => table.range::<&str>(..)?,
    };
    let mut out = Vec::with_capacity(limit.min(1024));
    for e in range.take(limit) {
        let (k, v) = e?;
        out.push(entry(k.value(), v.value())?);
    }
    Ok(out)
}

/// For each (address, list): suppressed for all mail, or for that list.
pub(super) fn suppressed_among(
    db: &Database,
    addresses: &[(String, Option<String>)],
) -> Result<Vec<bool>> {
    let tx = db.begin_read()?;
    let table = tx.open_table(SUPPRESSIONS)?;
    let all = SuppressionScope::All.as_text();
    addresses
        .iter()
        .map(|(address, list)| {
            let address = address_key(address);
            if table
                .get(suppression_key(&address, &all).as_str())?
                .is_some()
            {
                return Ok(true);
            }
            match list {
                Some(list) => {
                    let scope = SuppressionScope::List(list.clone()).as_text();
                    Ok(table
                        .get(suppression_key(&address, &scope).as_str())?
                        .is_some())
                }
                None => Ok(false),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::records::{after_ms_key, index_key};
    use super::*;

    #[test]
    fn index_keys_order_by_time_first() {
        let a = DeliveryId {
            job: JobId::from_bytes([0xFF; 16]),
            index: 9,
        };
        let b = DeliveryId {
            job: JobId::from_bytes([0; 16]),
            index: 0,
        };
        assert!(index_key(1, a) < index_key(2, b));
        assert!(index_key(1, a) < after_ms_key(1));
        assert!(after_ms_key(1) < index_key(2, b));
    }
}
