//! The embedded store's worker-side operations: opening (with crash recovery), leasing,
//! completing and releasing deliveries. Each function is one redb write transaction and runs
//! on a blocking thread.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::time::{Duration, SystemTime};

use redb::{Database, DatabaseError, Durability, ReadableTable, ReadableTableMetadata, Table};

use super::records::{
    DELIVERIES, Delivery, EVENTS, EventRecord, IDEMPOTENCY, JOBS, JobRecord, LEASED, PAYLOADS,
    PENDING, READY, SUPPRESSED, after_ms_key, index_key, split_index_key,
};
use super::submit;
use crate::queue::error::{QueueError, Result};
use crate::queue::id::{DeliveryId, JobId};
use crate::queue::types::{Leased, RecipientState, Resolution, from_ms, to_ms};

/// The store's file inside the data directory.
pub(super) const FILE: &str = "queue.redb";

/// Opens (or, only when the file does not exist yet, creates) the store, then returns every
/// lease a previous process left and rolls back submissions it left half-written: this process
/// holds the file lock, so nobody else can be working on them.
/// The page cache of the store.
const CACHE_BYTES: usize = 64 << 20;

pub(super) fn open(dir: &Path) -> Result<Database> {
    std::fs::create_dir_all(dir).map_err(|source| QueueError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(FILE);
    let exists = match std::fs::metadata(&path) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        // Never treat a file we cannot see as absent: that would start an empty queue.
        Err(source) => return Err(QueueError::Io { path, source }),
    };
    let mut builder = Database::builder();
    // redb's page cache defaults to 1 GiB; the working set (the ready index's head
    // and recent deliveries) is far smaller, and a bounded cache keeps memory flat
    // while a million-recipient campaign sits on disk.
    builder.set_cache_size(CACHE_BYTES);
    let opened = if exists {
        builder.open(&path)
    } else {
        builder.create(&path)
    };
    let db = opened.map_err(|e| match e {
        DatabaseError::DatabaseAlreadyOpen => QueueError::Locked { path: path.clone() },
        DatabaseError::Storage(redb::StorageError::Io(source)) => QueueError::Io {
            path: path.clone(),
            source,
        },
        other => QueueError::Storage(other.into()),
    })?;
    recover(&db)?;
    Ok(db)
}

fn recover(db: &Database) -> Result<()> {
    let tx = db.begin_write()?;
    // Creating every table here lets readers assume they exist.
    tx.open_table(PAYLOADS)?;
    tx.open_table(IDEMPOTENCY)?;
    tx.open_table(EVENTS)?;
    tx.open_table(SUPPRESSED)?;
    {
        let mut deliveries = tx.open_table(DELIVERIES)?;
        let mut ready = tx.open_table(READY)?;
        let mut leased = tx.open_table(LEASED)?;
        let mut jobs = tx.open_table(JOBS)?;
        while let Some((k, _)) = leased.pop_first()? {
            let (_, id) = split_index_key(k.value())?;
            unlease(&mut deliveries, &mut ready, &mut jobs, id)?;
        }
    }
    let pending: Vec<(JobId, u64)> = {
        let table = tx.open_table(PENDING)?;
        let mut out = Vec::new();
        for e in table.iter()? {
            let (k, v) = e?;
            let job: [u8; 16] = k
                .value()
                .try_into()
                .map_err(|_| QueueError::corrupt("pending", "bad job id"))?;
            out.push((JobId::from_bytes(job), v.value()));
        }
        out
    };
    tx.commit()?;
    for (job, due_ms) in pending {
        submit::rollback(db, job, due_ms)?;
    }
    Ok(())
}

/// Puts a leased delivery back among the ready ones, due when it was due before.
fn unlease(
    deliveries: &mut Table<'_, &'static [u8], &'static [u8]>,
    ready: &mut Table<'_, &'static [u8], ()>,
    jobs: &mut Table<'_, &'static [u8], &'static [u8]>,
    id: DeliveryId,
) -> Result<()> {
    let key = id.to_bytes();
    let Some(v) = deliveries.get(&key[..])? else {
        return Err(QueueError::corrupt(
            "leased",
            format!("{id} has no delivery"),
        ));
    };
    let mut d = Delivery::decode(v.value())?;
    drop(v);
    if d.state != RecipientState::Leased {
        return Ok(());
    }
    d.state = RecipientState::unleased(d.attempts);
    move_count(jobs, id.job, RecipientState::Leased, d.state)?;
    d.lease_until_ms = 0;
    deliveries.insert(&key[..], &d.encode()[..])?;
    ready.insert(&index_key(d.due_ms, id)[..], ())?;
    Ok(())
}

/// Moves one delivery between two states' counts in its job's record, when the states are
/// counted apart (queued and leased share one count, so the common lease costs nothing).
fn move_count(
    jobs: &mut Table<'_, &'static [u8], &'static [u8]>,
    job: JobId,
    from: RecipientState,
    to: RecipientState,
) -> Result<()> {
    let mut probe = crate::queue::types::Counts::default();
    *probe.bucket(from) += 1;
    if *probe.bucket(to) == 1 {
        return Ok(());
    }
    let key = job.to_bytes();
    let Some(v) = jobs.get(&key[..])? else {
        return Err(QueueError::corrupt("jobs", format!("{job} missing")));
    };
    let mut rec = JobRecord::decode(v.value())?;
    drop(v);
    rec.counts.moved(from, to);
    jobs.insert(&key[..], &rec.encode()[..])?;
    Ok(())
}

/// Leases up to `max` due deliveries: first those whose lease ran out, then the earliest due.
/// The transaction is not synced: a lease lost in a crash is returned at the next open anyway,
/// and the next synced commit (a `complete`) makes it durable with no extra sync.
pub(super) fn lease(
    db: &Database,
    max: usize,
    now: SystemTime,
    lease: Duration,
) -> Result<Vec<Leased>> {
    let now_ms = to_ms(now);
    let until = to_ms(now + lease);
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::None)?;
    let mut out = Vec::with_capacity(max);
    {
        let mut deliveries = tx.open_table(DELIVERIES)?;
        let mut ready = tx.open_table(READY)?;
        let mut leased = tx.open_table(LEASED)?;
        let mut jobs = tx.open_table(JOBS)?;
        let pending = tx.open_table(PENDING)?;
        let expired: Vec<(u64, DeliveryId)> = leased
            .range(..&after_ms_key(now_ms)[..])?
            .take(max)
            .map(|e| {
                e.map_err(QueueError::from)
                    .and_then(|(k, _)| split_index_key(k.value()))
            })
            .collect::<Result<_>>()?;
        for (ms, id) in expired {
            leased.remove(&index_key(ms, id)[..])?;
            unlease(&mut deliveries, &mut ready, &mut jobs, id)?;
        }
        let due = due_entries(&ready, &pending, max, now_ms)?;
        let mut created: HashMap<JobId, SystemTime> = HashMap::new();
        for (due_ms, id) in due {
            ready.remove(&index_key(due_ms, id)[..])?;
            let key = id.to_bytes();
            let Some(v) = deliveries.get(&key[..])? else {
                return Err(QueueError::corrupt(
                    "ready",
                    format!("{id} has no delivery"),
                ));
            };
            let mut d = Delivery::decode(v.value())?;
            drop(v);
            move_count(&mut jobs, id.job, d.state, RecipientState::Leased)?;
            d.state = RecipientState::Leased;
            d.lease_until_ms = until;
            deliveries.insert(&key[..], &d.encode()[..])?;
            leased.insert(&index_key(until, id)[..], ())?;
            let created = match created.get(&id.job) {
                Some(t) => *t,
                None => {
                    let rec = jobs
                        .get(&id.job.to_bytes()[..])?
                        .map(|v| JobRecord::decode(v.value()))
                        .transpose()?
                        .ok_or_else(|| {
                            QueueError::corrupt("jobs", format!("{} missing", id.job))
                        })?;
                    let t = from_ms(rec.created_ms);
                    created.insert(id.job, t);
                    t
                }
            };
            out.push(Leased {
                id,
                to: d.to,
                vars: d.vars,
                attempts: d.attempts,
                created,
                queued_at: from_ms(d.due_ms),
            });
        }
    }
    tx.commit()?;
    Ok(out)
}

/// Up to `max` ready entries due by `now_ms`, earliest first, skipping jobs still being
/// written: each such job is jumped over with one seek, so this stays O(max).
fn due_entries(
    ready: &Table<'_, &'static [u8], ()>,
    pending: &Table<'_, &'static [u8], u64>,
    max: usize,
    now_ms: u64,
) -> Result<Vec<(u64, DeliveryId)>> {
    let end = after_ms_key(now_ms);
    let check_pending = !pending.is_empty()?;
    let mut out = Vec::with_capacity(max);
    // Where to resume after skipping a pending job.
    let mut start: Option<[u8; 28]> = None;
    'scan: while out.len() < max {
        let range = match &start {
            None => ready.range::<&[u8]>(..&end[..])?,
            Some(s) => {
                ready.range::<&[u8]>((Bound::Excluded(&s[..]), Bound::Excluded(&end[..])))?
            }
        };
        for e in range {
            let (k, _) = e?;
            let (due_ms, id) = split_index_key(k.value())?;
            if check_pending && pending.get(&id.job.to_bytes()[..])?.is_some() {
                start = Some(index_key(
                    due_ms,
                    DeliveryId {
                        job: id.job,
                        index: u32::MAX,
                    },
                ));
                continue 'scan;
            }
            out.push((due_ms, id));
            if out.len() == max {
                break;
            }
        }
        break;
    }
    Ok(out)
}

/// Records a batch of outcomes, their events and the jobs' counts in one synced transaction.
/// An outcome for a delivery already final is ignored, so a batch retried after an error
/// cannot count twice.
pub(super) fn complete(
    db: &Database,
    batch: Vec<(DeliveryId, Resolution)>,
    now: SystemTime,
) -> Result<()> {
    let now_ms = to_ms(now);
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    {
        let mut deliveries = tx.open_table(DELIVERIES)?;
        let mut ready = tx.open_table(READY)?;
        let mut leased = tx.open_table(LEASED)?;
        let mut jobs = tx.open_table(JOBS)?;
        let mut events = tx.open_table(EVENTS)?;
        let mut cursor = events.last()?.map_or(0, |(k, _)| k.value());
        let mut touched: HashMap<JobId, JobRecord> = HashMap::new();
        for (id, resolution) in batch {
            let key = id.to_bytes();
            let Some(v) = deliveries.get(&key[..])? else {
                continue;
            };
            let mut d = Delivery::decode(v.value())?;
            drop(v);
            if d.state.is_final() {
                continue;
            }
            match d.state {
                RecipientState::Leased => leased.remove(&index_key(d.lease_until_ms, id)[..])?,
                _ => ready.remove(&index_key(d.due_ms, id)[..])?,
            };
            let (state, kind, reply) = resolution.outcome();
            let record = match touched.get_mut(&id.job) {
                Some(r) => r,
                None => {
                    let rec = jobs
                        .get(&id.job.to_bytes()[..])?
                        .map(|v| JobRecord::decode(v.value()))
                        .transpose()?
                        .ok_or_else(|| {
                            QueueError::corrupt("jobs", format!("{} missing", id.job))
                        })?;
                    touched.entry(id.job).or_insert(rec)
                }
            };
            record.counts.moved(d.state, state);
            d.state = state;
            d.lease_until_ms = 0;
            if resolution.is_attempt() {
                d.attempts += 1;
            }
            if let Some(r) = reply {
                d.last_reply = Some(r.to_string());
            }
            if let Resolution::Retry { at, .. } = &resolution {
                d.due_ms = to_ms(*at);
                ready.insert(&index_key(d.due_ms, id)[..], ())?;
            }
            cursor += 1;
            let event = EventRecord {
                id,
                kind,
                at_ms: now_ms,
                to: d.to.clone(),
                reply: reply.map(str::to_string),
            };
            events.insert(cursor, &event.encode()[..])?;
            deliveries.insert(&key[..], &d.encode()[..])?;
        }
        for (job, rec) in touched {
            jobs.insert(&job.to_bytes()[..], &rec.encode()[..])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Gives leases back untouched (graceful shutdown). Not synced, for the reason `lease` is not.
pub(super) fn release(db: &Database, ids: Vec<DeliveryId>) -> Result<()> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::None)?;
    {
        let mut deliveries = tx.open_table(DELIVERIES)?;
        let mut ready = tx.open_table(READY)?;
        let mut leased = tx.open_table(LEASED)?;
        let mut jobs = tx.open_table(JOBS)?;
        for id in ids {
            let Some(v) = deliveries.get(&id.to_bytes()[..])? else {
                continue;
            };
            let d = Delivery::decode(v.value())?;
            drop(v);
            if d.state == RecipientState::Leased {
                leased.remove(&index_key(d.lease_until_ms, id)[..])?;
                unlease(&mut deliveries, &mut ready, &mut jobs, id)?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}
