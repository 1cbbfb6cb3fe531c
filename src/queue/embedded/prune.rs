//! Retention: removes events, finished jobs (their deliveries and payload with them) and
//! expired idempotency keys, a bounded amount per call so that one pass never holds the
//! writer long. Suppressions are never pruned.

use std::time::{Duration, SystemTime};

use redb::{Database, Durability, ReadableTable};

use super::records::{
    DELIVERIES, DONE, EVENTS, EventRecord, IDEM_AT, IDEMPOTENCY, IdemRecord, JOBS, PAYLOADS,
};
use crate::queue::error::{QueueError, Result};
use crate::queue::id::{DeliveryId, JobId};
use crate::queue::types::{IDEMPOTENCY_TTL, Pruned, RetentionConfig, to_ms};

/// Events, deliveries or idempotency keys removed at most per call and kind.
const BATCH: usize = 10_000;

/// The time `age` before `now`, in ms (0 when that is before the epoch).
fn cutoff(now: SystemTime, age: Duration) -> u64 {
    now.checked_sub(age).map_or(0, to_ms)
}

pub(super) fn prune(db: &Database, now: SystemTime, retention: RetentionConfig) -> Result<Pruned> {
    let mut tx = db.begin_write()?;
    // Losing a pruning pass in a crash only means doing it again.
    tx.set_durability(Durability::None)?;
    let mut pruned = Pruned::default();
    {
        let mut events = tx.open_table(EVENTS)?;
        let old = cutoff(now, retention.events);
        let mut doomed = Vec::new();
        for e in events.iter()?.take(BATCH) {
            let (k, v) = e?;
            if EventRecord::decode(v.value())?.at_ms >= old {
                break;
            }
            doomed.push(k.value());
        }
        for cursor in &doomed {
            events.remove(cursor)?;
        }
        pruned.events = doomed.len() as u64;
    }
    {
        let mut done = tx.open_table(DONE)?;
        let mut jobs = tx.open_table(JOBS)?;
        let mut payloads = tx.open_table(PAYLOADS)?;
        let mut deliveries = tx.open_table(DELIVERIES)?;
        let old = cutoff(now, retention.jobs);
        let mut budget = BATCH;
        let finished: Vec<(Vec<u8>, JobId)> = done
            .range(..&old.to_be_bytes()[..])?
            .map(|e| {
                let (k, _) = e?;
                let key = k.value().to_vec();
                let job = key
                    .get(8..24)
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                    .map(JobId::from_bytes)
                    .ok_or_else(|| QueueError::corrupt("done", "a key that is not a job"))?;
                Ok((key, job))
            })
            .take(64)
            .collect::<Result<_>>()?;
        for (key, job) in finished {
            let lo = DeliveryId { job, index: 0 }.to_bytes();
            let hi = DeliveryId {
                job,
                index: u32::MAX,
            }
            .to_bytes();
            let ids: Vec<Vec<u8>> = deliveries
                .range(&lo[..]..=&hi[..])?
                .take(budget)
                .map(|e| e.map(|(k, _)| k.value().to_vec()))
                .collect::<std::result::Result<_, _>>()?;
            budget -= ids.len();
            for id in &ids {
                deliveries.remove(&id[..])?;
            }
            if budget == 0 {
                // The rest of this job's deliveries go next time; the job stays listed.
                break;
            }
            done.remove(&key[..])?;
            jobs.remove(&job.to_bytes()[..])?;
            payloads.remove(&job.to_bytes()[..])?;
            pruned.jobs += 1;
        }
    }
    {
        let mut at = tx.open_table(IDEM_AT)?;
        let mut keys = tx.open_table(IDEMPOTENCY)?;
        let old = cutoff(now, IDEMPOTENCY_TTL);
        let expired: Vec<Vec<u8>> = at
            .range(..&old.to_be_bytes()[..])?
            .take(BATCH)
            .map(|e| e.map(|(k, _)| k.value().to_vec()))
            .collect::<std::result::Result<_, _>>()?;
        for entry in expired {
            at.remove(&entry[..])?;
            let Some(name) = entry.get(8..).and_then(|b| std::str::from_utf8(b).ok()) else {
                continue;
            };
            // Only if the key was not used again since.
            let stale = match keys.get(name)? {
                Some(v) => IdemRecord::decode(v.value())?.at_ms < old,
                None => false,
            };
            if stale {
                keys.remove(name)?;
            }
        }
    }
    tx.commit()?;
    Ok(pruned)
}
