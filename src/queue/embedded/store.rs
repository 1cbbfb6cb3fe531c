//! The embedded store's worker-side operations: opening (with crash recovery), leasing,
//! renewing, completing and releasing deliveries. Each function is one redb write
//! transaction and runs on a blocking thread.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::time::{Duration, SystemTime};

use redb::{
    Database, DatabaseError, Durability, ReadableTable, ReadableTableMetadata, Table,
    WriteTransaction,
};

use super::records::{
    DELIVERIES, DONE, Delivery, EVENTS, EventRecord, IDEM_AT, IDEMPOTENCY, JOBS, JobRecord, LEASED,
    PAYLOADS, PENDING, READY, SCHED, SUPPRESSED_V1, SUPPRESSIONS, SuppressionRecord, after_ms_key,
    index_key, split_index_key, suppression_key,
};
use super::submit;
use crate::queue::error::{QueueError, Result};
use crate::queue::id::{DeliveryId, JobId};
use crate::queue::types::{
    Completion, Held, LeaseToken, Leased, RecipientState, Resolution, SuppressionScope, from_ms,
    to_ms,
};

/// The store's file inside the data directory.
pub(super) const FILE: &str = "queue.redb";

/// The page cache of the store.
const CACHE_BYTES: usize = 32 << 20;

/// A table of (time, delivery) index keys.
pub(super) type Index<'t> = Table<'t, &'static [u8], ()>;
/// A table of byte keys and byte values.
type Bytes<'t> = Table<'t, &'static [u8], &'static [u8]>;

/// Opens (or, only when the file does not exist yet, creates) the store, then returns every
/// lease a previous process left and rolls back submissions it left half-written: this process
/// holds the file lock, so nobody else can be working on them.
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
    // while a million-recipient campaign sits on disk. At 64 MiB the process held
    // 218 MB with a million queued, at 32 MiB 102 MB, with the same throughput.
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
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    // Creating every table here lets readers assume they exist.
    tx.open_table(PAYLOADS)?;
    tx.open_table(IDEMPOTENCY)?;
    tx.open_table(EVENTS)?;
    tx.open_table(DONE)?;
    tx.open_table(IDEM_AT)?;
    migrate_suppressions(&tx)?;
    {
        let mut deliveries = tx.open_table(DELIVERIES)?;
        let mut ready = tx.open_table(READY)?;
        let mut sched = tx.open_table(SCHED)?;
        let mut leased = tx.open_table(LEASED)?;
        let mut jobs = tx.open_table(JOBS)?;
        while let Some((k, _)) = leased.pop_first()? {
            let (_, id) = split_index_key(k.value())?;
            let mut d = read_delivery(&deliveries, id, "leased")?;
            unlease(&mut d, &mut ready, &mut sched, &mut jobs, id, None, 0)?;
            deliveries.insert(&id.to_bytes()[..], &d.encode()[..])?;
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

/// Moves a store's suppression list of the first layout (address → reason, no scope)
/// into the scoped table, once.
fn migrate_suppressions(tx: &WriteTransaction) -> Result<()> {
    let mut scoped = tx.open_table(SUPPRESSIONS)?;
    let mut old = tx.open_table(SUPPRESSED_V1)?;
    while let Some((address, reason)) = old.pop_first()? {
        let key = suppression_key(address.value(), &SuppressionScope::All.as_text());
        let record = SuppressionRecord {
            at_ms: 0,
            reason: reason.value().to_owned(),
        };
        scoped.insert(key.as_str(), &record.encode()[..])?;
    }
    Ok(())
}

fn read_delivery(deliveries: &Bytes<'_>, id: DeliveryId, table: &'static str) -> Result<Delivery> {
    match deliveries.get(&id.to_bytes()[..])? {
        Some(v) => Delivery::decode(v.value()),
        None => Err(QueueError::corrupt(table, format!("{id} has no delivery"))),
    }
}

/// Puts a delivery (leased; its [`LEASED`] entry already gone) back among those waiting:
/// due when it was due before, or not before `not_before`. The caller writes `d` back.
fn unlease(
    d: &mut Delivery,
    ready: &mut Index<'_>,
    sched: &mut Index<'_>,
    jobs: &mut Bytes<'_>,
    id: DeliveryId,
    not_before: Option<u64>,
    now_ms: u64,
) -> Result<()> {
    if d.state != RecipientState::Leased {
        return Ok(());
    }
    d.state = RecipientState::unleased(d.attempts);
    move_count(jobs, id.job, RecipientState::Leased, d.state)?;
    d.lease_until_ms = 0;
    if let Some(at) = not_before {
        d.due_ms = d.due_ms.max(at);
    }
    wait_for(d.due_ms, id, now_ms, ready, sched)
}

/// Enters a delivery due at `due_ms` in the index it belongs to now.
fn wait_for(
    due_ms: u64,
    id: DeliveryId,
    now_ms: u64,
    ready: &mut Index<'_>,
    sched: &mut Index<'_>,
) -> Result<()> {
    let key = index_key(due_ms, id);
    if due_ms > now_ms {
        sched.insert(&key[..], ())?;
    } else {
        ready.insert(&key[..], ())?;
    }
    Ok(())
}

/// Removes a waiting delivery's entry from whichever index holds it.
pub(super) fn stop_waiting(
    due_ms: u64,
    id: DeliveryId,
    ready: &mut Index<'_>,
    sched: &mut Index<'_>,
) -> Result<()> {
    let key = index_key(due_ms, id);
    if ready.remove(&key[..])?.is_none() {
        sched.remove(&key[..])?;
    }
    Ok(())
}

/// Moves one delivery between two states' counts in its job's record, when the states are
/// counted apart (queued and leased share one count, so the common lease costs nothing).
fn move_count(
    jobs: &mut Bytes<'_>,
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

/// Moves up to `max` scheduled deliveries that fell due by `now_ms` into [`READY`].
fn promote_due(
    sched: &mut Index<'_>,
    ready: &mut Index<'_>,
    max: usize,
    now_ms: u64,
) -> Result<()> {
    let due: Vec<Vec<u8>> = sched
        .range(..&after_ms_key(now_ms)[..])?
        .take(max)
        .map(|e| e.map(|(k, _)| k.value().to_vec()))
        .collect::<std::result::Result<_, _>>()?;
    for key in due {
        sched.remove(&key[..])?;
        ready.insert(&key[..], ())?;
    }
    Ok(())
}

/// Leases up to `max` due deliveries: first those whose lease ran out, then the earliest due,
/// each with the next token of its delivery. The transaction is not synced: a lease lost in a
/// crash is returned at the next open anyway, and the next synced commit (a `complete`) makes
/// it durable with no extra sync.
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
        let mut sched = tx.open_table(SCHED)?;
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
            let mut d = read_delivery(&deliveries, id, "leased")?;
            unlease(&mut d, &mut ready, &mut sched, &mut jobs, id, None, now_ms)?;
            deliveries.insert(&id.to_bytes()[..], &d.encode()[..])?;
        }
        promote_due(&mut sched, &mut ready, max, now_ms)?;
        let due = due_entries(&ready, &pending, max, now_ms)?;
        let mut created: HashMap<JobId, SystemTime> = HashMap::new();
        for (due_ms, id) in due {
            ready.remove(&index_key(due_ms, id)[..])?;
            let mut d = read_delivery(&deliveries, id, "ready")?;
            move_count(&mut jobs, id.job, d.state, RecipientState::Leased)?;
            d.state = RecipientState::Leased;
            d.lease_until_ms = until;
            d.token += 1;
            deliveries.insert(&id.to_bytes()[..], &d.encode()[..])?;
            leased.insert(&index_key(until, id)[..], ())?;
            let created = match created.get(&id.job) {
                Some(t) => *t,
                None => {
                    let t = from_ms(job_record(&jobs, id.job)?.created_ms);
                    created.insert(id.job, t);
                    t
                }
            };
            out.push(Leased {
                id,
                token: LeaseToken(d.token),
                to: d.to,
                vars: d.vars,
                attempts: d.attempts,
                created,
                first_attempt: (d.first_ms > 0).then(|| from_ms(d.first_ms)),
                queued_at: from_ms(d.due_ms),
            });
        }
    }
    tx.commit()?;
    Ok(out)
}

fn job_record(jobs: &Bytes<'_>, job: JobId) -> Result<JobRecord> {
    jobs.get(&job.to_bytes()[..])?
        .map(|v| JobRecord::decode(v.value()))
        .transpose()?
        .ok_or_else(|| QueueError::corrupt("jobs", format!("{job} missing")))
}

/// Up to `max` ready entries due by `now`, earliest first, skipping jobs still being
/// written: each such job is jumped over with one seek, so this stays O(max).
fn due_entries(
    ready: &Index<'_>,
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

/// Extends the leases still held; returns the deliveries whose lease is gone. Not synced:
/// a renewal lost in a crash changes nothing, since recovery returns every lease anyway.
pub(super) fn renew(
    db: &Database,
    held: Vec<Held>,
    now: SystemTime,
    lease: Duration,
) -> Result<Vec<DeliveryId>> {
    let until = to_ms(now + lease);
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::None)?;
    let mut lost = Vec::new();
    {
        let mut deliveries = tx.open_table(DELIVERIES)?;
        let mut leased = tx.open_table(LEASED)?;
        for (id, token) in held {
            let Some(v) = deliveries.get(&id.to_bytes()[..])? else {
                lost.push(id);
                continue;
            };
            let mut d = Delivery::decode(v.value())?;
            drop(v);
            if d.state != RecipientState::Leased || d.token != token.0 {
                lost.push(id);
                continue;
            }
            leased.remove(&index_key(d.lease_until_ms, id)[..])?;
            d.lease_until_ms = until;
            leased.insert(&index_key(until, id)[..], ())?;
            deliveries.insert(&id.to_bytes()[..], &d.encode()[..])?;
        }
    }
    tx.commit()?;
    Ok(lost)
}

/// Records a batch of outcomes, their events, the jobs' counts and the suppressions hard
/// bounces ask for, in one synced transaction. A completion that does not quote the
/// delivery's current lease is refused and counted (a retried batch, or a worker that lost
/// its lease): it can never overwrite a newer state.
pub(super) fn complete(db: &Database, batch: Vec<Completion>, now: SystemTime) -> Result<usize> {
    let now_ms = to_ms(now);
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    let mut stale = 0;
    {
        let mut deliveries = tx.open_table(DELIVERIES)?;
        let mut ready = tx.open_table(READY)?;
        let mut sched = tx.open_table(SCHED)?;
        let mut leased = tx.open_table(LEASED)?;
        let mut jobs = tx.open_table(JOBS)?;
        let mut done = tx.open_table(DONE)?;
        let mut events = tx.open_table(EVENTS)?;
        let mut suppressions = tx.open_table(SUPPRESSIONS)?;
        let mut cursor = events.last()?.map_or(0, |(k, _)| k.value());
        let mut touched: HashMap<JobId, JobRecord> = HashMap::new();
        for Completion {
            id,
            token,
            resolution,
            via,
        } in batch
        {
            let key = id.to_bytes();
            let Some(v) = deliveries.get(&key[..])? else {
                stale += 1;
                continue;
            };
            let mut d = Delivery::decode(v.value())?;
            drop(v);
            if d.state != RecipientState::Leased || d.token != token.0 {
                stale += 1;
                continue;
            }
            leased.remove(&index_key(d.lease_until_ms, id)[..])?;
            let (state, kind, reply) = resolution.outcome();
            let record = match touched.get_mut(&id.job) {
                Some(r) => r,
                None => touched.entry(id.job).or_insert(job_record(&jobs, id.job)?),
            };
            record.counts.moved(d.state, state);
            d.state = state;
            d.lease_until_ms = 0;
            if resolution.is_attempt() {
                d.attempts += 1;
                if d.first_ms == 0 {
                    d.first_ms = now_ms;
                }
            }
            if let Some(r) = reply {
                d.last_reply = Some(r.to_string());
            }
            match &resolution {
                Resolution::Retry { at, .. } => {
                    d.due_ms = to_ms(*at);
                    wait_for(d.due_ms, id, now_ms, &mut ready, &mut sched)?;
                }
                Resolution::Bounced {
                    reply,
                    suppress: true,
                } => {
                    let address = crate::address::suppression_key(&d.to);
                    let entry = suppression_key(&address, &SuppressionScope::All.as_text());
                    let value = SuppressionRecord {
                        at_ms: now_ms,
                        reason: reply.clone(),
                    };
                    suppressions.insert(entry.as_str(), &value.encode()[..])?;
                }
                _ => {}
            }
            cursor += 1;
            let event = EventRecord {
                id,
                kind,
                at_ms: now_ms,
                to: d.to.clone(),
                reply: reply.map(str::to_string),
                late: false,
                via: via.as_deref().map(str::to_owned),
            };
            events.insert(cursor, &event.encode()[..])?;
            deliveries.insert(&key[..], &d.encode()[..])?;
        }
        for (job, mut rec) in touched {
            if rec.done_ms == 0 && rec.counts.queued + rec.counts.deferred == 0 {
                rec.done_ms = now_ms;
                done.insert(&done_key(now_ms, job)[..], ())?;
            }
            jobs.insert(&job.to_bytes()[..], &rec.encode()[..])?;
        }
    }
    tx.commit()?;
    Ok(stale)
}

/// The key of a finished job in [`DONE`].
pub(super) fn done_key(done_ms: u64, job: JobId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&done_ms.to_be_bytes());
    k[8..].copy_from_slice(&job.to_bytes());
    k
}

/// Gives leases back unattempted, due as before or not before `not_before`. Not synced,
/// for the reason `lease` is not.
pub(super) fn release(
    db: &Database,
    held: Vec<Held>,
    not_before: Option<SystemTime>,
    now: SystemTime,
) -> Result<()> {
    let now_ms = to_ms(now);
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::None)?;
    {
        let mut deliveries = tx.open_table(DELIVERIES)?;
        let mut ready = tx.open_table(READY)?;
        let mut sched = tx.open_table(SCHED)?;
        let mut leased = tx.open_table(LEASED)?;
        let mut jobs = tx.open_table(JOBS)?;
        for (id, token) in held {
            let Some(v) = deliveries.get(&id.to_bytes()[..])? else {
                continue;
            };
            let mut d = Delivery::decode(v.value())?;
            drop(v);
            if d.state != RecipientState::Leased || d.token != token.0 {
                continue;
            }
            leased.remove(&index_key(d.lease_until_ms, id)[..])?;
            let at = not_before.map(to_ms);
            unlease(&mut d, &mut ready, &mut sched, &mut jobs, id, at, now_ms)?;
            deliveries.insert(&id.to_bytes()[..], &d.encode()[..])?;
        }
    }
    tx.commit()?;
    Ok(())
}
