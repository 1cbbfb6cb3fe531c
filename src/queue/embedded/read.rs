//! The embedded store's read side (status, recipients, events, depth) and the suppression
//! list. Reads run in redb read transactions, which never wait for the writer.

use std::time::SystemTime;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::records::{
    DELIVERIES, Delivery, EVENTS, EventRecord, JOBS, JobRecord, LEASED, PAYLOADS, READY,
    SUPPRESSED, after_ms_key,
};
use crate::queue::error::{QueueError, Result};
use crate::queue::id::{DeliveryId, JobId};
use crate::queue::types::{
    Depth, Event, JobStatus, RecipientStatus, from_ms, normalize_address, to_ms,
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

pub(super) fn payload(db: &Database, id: JobId) -> Result<Option<Vec<u8>>> {
    let tx = db.begin_read()?;
    let payloads = tx.open_table(PAYLOADS)?;
    Ok(payloads
        .get(&id.to_bytes()[..])?
        .map(|v| v.value().to_vec()))
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
        });
    }
    Ok(out)
}

/// Counts the scheduled entries (due after `now`), which are usually few, and derives the
/// ready ones from the table's length: O(scheduled), not O(queue).
pub(super) fn depth(db: &Database, now: SystemTime) -> Result<Depth> {
    let tx = db.begin_read()?;
    let ready = tx.open_table(READY)?;
    let leased = tx.open_table(LEASED)?;
    let total = ready.len()?;
    let scheduled = ready.range(&after_ms_key(to_ms(now))[..]..)?.count() as u64;
    Ok(Depth {
        ready: total - scheduled,
        scheduled,
        leased: leased.len()?,
    })
}

pub(super) fn suppress(db: &Database, address: &str, reason: &str) -> Result<()> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    tx.open_table(SUPPRESSED)?
        .insert(normalize_address(address).as_str(), reason)?;
    tx.commit()?;
    Ok(())
}

pub(super) fn unsuppress(db: &Database, address: &str) -> Result<bool> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    let was = tx
        .open_table(SUPPRESSED)?
        .remove(normalize_address(address).as_str())?
        .is_some();
    tx.commit()?;
    Ok(was)
}

pub(super) fn is_suppressed(db: &Database, address: &str) -> Result<bool> {
    let tx = db.begin_read()?;
    let table = tx.open_table(SUPPRESSED)?;
    Ok(table.get(normalize_address(address).as_str())?.is_some())
}

pub(super) fn suppressed_among(db: &Database, addresses: &[String]) -> Result<Vec<bool>> {
    let tx = db.begin_read()?;
    let table = tx.open_table(SUPPRESSED)?;
    addresses
        .iter()
        .map(|a| Ok(table.get(normalize_address(a).as_str())?.is_some()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::records::index_key;
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
