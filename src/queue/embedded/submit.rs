//! Writing a submission: its deliveries in bounded chunks (so a million recipients never sit
//! in memory at once), then the job record in the last, synced transaction. Until then the job
//! is listed in [`PENDING`] and `lease` skips its ready entries; a submission that fails or is
//! abandoned is rolled back, and one cut short by a crash is rolled back at the next open.

use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};

use super::records::{
    DELIVERIES, Delivery, IDEM_AT, IDEMPOTENCY, IdemRecord, JOBS, JobRecord, PAYLOADS, PENDING,
    READY, SCHED, idem_at_key, index_key,
};
use super::store::stop_waiting;
use crate::queue::error::{QueueError, Result};
use crate::queue::id::{DeliveryId, JobId};
use crate::queue::types::{
    Counts, IDEMPOTENCY_TTL, NewJob, NewRecipient, RecipientState, SubmitOutcome, check_recipient,
    to_ms,
};

/// Deliveries per write transaction: bounds the memory a large campaign takes while it is
/// written, and lets leases of other jobs interleave with it.
pub(super) const CHUNK: usize = 8192;

/// What an idempotency key says about a submission.
pub(super) fn check_idempotency(
    tx_table: &impl ReadableTable<&'static str, &'static [u8]>,
    job: &NewJob,
    now: SystemTime,
) -> Result<Option<SubmitOutcome>> {
    let Some((key, hash)) = &job.idempotency else {
        return Ok(None);
    };
    let Some(v) = tx_table.get(key.as_str())? else {
        return Ok(None);
    };
    let rec = IdemRecord::decode(v.value())?;
    if rec
        .at_ms
        .saturating_add(to_ms(UNIX_EPOCH + IDEMPOTENCY_TTL))
        <= to_ms(now)
    {
        return Ok(None);
    }
    Ok(Some(if rec.hash == *hash {
        SubmitOutcome::Existing {
            id: rec.job,
            recipients: rec.recipients,
        }
    } else {
        SubmitOutcome::IdempotencyConflict
    }))
}

/// The answer an idempotency key already gives, if any (checked before writing anything).
pub(super) fn precheck(
    db: &Database,
    job: &NewJob,
    now: SystemTime,
) -> Result<Option<SubmitOutcome>> {
    if job.idempotency.is_none() {
        return Ok(None);
    }
    let tx = db.begin_read()?;
    check_idempotency(&tx.open_table(IDEMPOTENCY)?, job, now)
}

/// One chunk of a submission.
#[derive(Debug)]
pub(super) struct Chunk {
    /// Index of the chunk's first recipient.
    pub(super) first_index: u32,
    pub(super) recipients: Vec<NewRecipient>,
    /// The last chunk: write the job record and sync.
    pub(super) last: bool,
}

/// Writes one chunk; the last one also writes the job, its payload and idempotency key, in
/// a transaction that syncs (and so makes the earlier unsynced chunks durable too). Returns
/// `Some` when another submission with the same idempotency key won the race: the caller rolls
/// this one back and answers with that.
pub(super) fn write_chunk(
    db: &Database,
    job: &NewJob,
    due_ms: u64,
    chunk: Chunk,
    now: SystemTime,
) -> Result<Option<SubmitOutcome>> {
    let mut tx = db.begin_write()?;
    let single = chunk.first_index == 0 && chunk.last;
    tx.set_durability(if chunk.last {
        Durability::Immediate
    } else {
        Durability::None
    })?;
    {
        let mut tables = Tables::open(&tx)?;
        if chunk.last
            && let Some(answer) = check_idempotency(&tables.idempotency, job, now)?
        {
            drop(tables);
            tx.abort()?;
            return Ok(Some(answer));
        }
        let total = chunk.first_index + chunk_len(&chunk.recipients);
        if chunk.first_index == 0 && tables.jobs.get(&job.id.to_bytes()[..])?.is_some() {
            return Err(QueueError::invalid(
                "id",
                format!("job {} already exists", job.id),
            ));
        }
        if chunk.first_index == 0 && !single {
            tables.pending.insert(&job.id.to_bytes()[..], due_ms)?;
        }
        insert_deliveries(
            &mut tables,
            job.id,
            due_ms,
            to_ms(now),
            chunk.first_index,
            chunk.recipients,
        )?;
        if chunk.last {
            write_record(&mut tables, job, total, now)?;
        }
    }
    tx.commit()?;
    Ok(None)
}

/// The tables a submission writes, opened once per transaction (opening one costs a
/// lookup and, when dropped, a write of its root: seven of them per message showed in
/// the SMTP intake's profile).
struct Tables<'t> {
    idempotency: redb::Table<'t, &'static str, &'static [u8]>,
    idem_at: redb::Table<'t, &'static [u8], ()>,
    jobs: redb::Table<'t, &'static [u8], &'static [u8]>,
    payloads: redb::Table<'t, &'static [u8], &'static [u8]>,
    pending: redb::Table<'t, &'static [u8], u64>,
    deliveries: redb::Table<'t, &'static [u8], &'static [u8]>,
    ready: redb::Table<'t, &'static [u8], ()>,
    sched: redb::Table<'t, &'static [u8], ()>,
}

impl<'t> Tables<'t> {
    fn open(tx: &'t WriteTransaction) -> Result<Self> {
        Ok(Self {
            idempotency: tx.open_table(IDEMPOTENCY)?,
            idem_at: tx.open_table(IDEM_AT)?,
            jobs: tx.open_table(JOBS)?,
            payloads: tx.open_table(PAYLOADS)?,
            pending: tx.open_table(PENDING)?,
            deliveries: tx.open_table(DELIVERIES)?,
            ready: tx.open_table(READY)?,
            sched: tx.open_table(SCHED)?,
        })
    }
}

/// The job's record, payload and idempotency key, which make its deliveries live.
fn write_record(tables: &mut Tables<'_>, job: &NewJob, total: u32, now: SystemTime) -> Result<()> {
    let record = JobRecord {
        kind: job.kind,
        created_ms: to_ms(now),
        counts: Counts {
            total,
            queued: total,
            ..Counts::default()
        },
        send_at_ms: job.send_at.map_or(0, to_ms),
        done_ms: 0,
    };
    let key = job.id.to_bytes();
    tables.jobs.insert(&key[..], &record.encode()[..])?;
    tables.payloads.insert(&key[..], &job.payload[..])?;
    tables.pending.remove(&key[..])?;
    if let Some((k, hash)) = &job.idempotency {
        let rec = IdemRecord {
            hash: *hash,
            job: job.id,
            at_ms: to_ms(now),
            recipients: total,
        };
        tables.idempotency.insert(k.as_str(), &rec.encode()[..])?;
        tables.idem_at.insert(&idem_at_key(rec.at_ms, k)[..], ())?;
    }
    Ok(())
}

/// Writes small submissions (each at most [`CHUNK`] recipients) in one synced
/// transaction: one disk sync for many messages. Each gets its own answer; a storage
/// error fails them all (nothing is written).
pub(super) fn write_batch(
    db: &Database,
    jobs: Vec<(NewJob, Vec<NewRecipient>)>,
    now: SystemTime,
) -> Result<Vec<Result<SubmitOutcome>>> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    let answers = {
        let mut tables = Tables::open(&tx)?;
        jobs.into_iter()
            .map(|(job, recipients)| write_whole(&mut tables, &job, recipients, now))
            .collect::<Result<Vec<_>>>()?
    };
    tx.commit()?;
    Ok(answers)
}

/// One small submission inside a batch: `Err` inside `Ok` refuses this one alone.
fn write_whole(
    tables: &mut Tables<'_>,
    job: &NewJob,
    recipients: Vec<NewRecipient>,
    now: SystemTime,
) -> Result<Result<SubmitOutcome>> {
    if recipients.is_empty() {
        return Ok(Err(QueueError::invalid("recipients", "no recipients")));
    }
    if recipients.len() > CHUNK {
        let message = format!("more than {CHUNK} in a batched submission");
        return Ok(Err(QueueError::invalid("recipients", message)));
    }
    for (index, r) in (0..).zip(&recipients) {
        if let Err(e) = check_recipient(index, r) {
            return Ok(Err(e));
        }
    }
    if let Some(answer) = check_idempotency(&tables.idempotency, job, now)? {
        return Ok(Ok(answer));
    }
    if tables.jobs.get(&job.id.to_bytes()[..])?.is_some() {
        let message = format!("job {} already exists", job.id);
        return Ok(Err(QueueError::invalid("id", message)));
    }
    let total = chunk_len(&recipients);
    let due_ms = to_ms(job.send_at.unwrap_or(now));
    insert_deliveries(tables, job.id, due_ms, to_ms(now), 0, recipients)?;
    write_record(tables, job, total, now)?;
    Ok(Ok(SubmitOutcome::Created {
        id: job.id,
        recipients: total,
    }))
}

/// A chunk's length as an index offset: chunks hold at most [`CHUNK`] recipients.
fn chunk_len(recipients: &[NewRecipient]) -> u32 {
    u32::try_from(recipients.len()).expect("a chunk holds at most CHUNK recipients")
}

fn insert_deliveries(
    tables: &mut Tables<'_>,
    job: JobId,
    due_ms: u64,
    now_ms: u64,
    first_index: u32,
    recipients: Vec<NewRecipient>,
) -> Result<()> {
    // Due now or later: the index it waits in.
    let Tables {
        deliveries,
        ready,
        sched,
        ..
    } = tables;
    let waiting = if due_ms > now_ms { sched } else { ready };
    for (index, r) in (first_index..).zip(recipients) {
        let id = DeliveryId { job, index };
        let d = Delivery {
            state: RecipientState::Queued,
            attempts: 0,
            due_ms,
            lease_until_ms: 0,
            token: 0,
            first_ms: 0,
            to: r.to,
            last_reply: None,
            vars: r.vars,
        };
        deliveries.insert(&id.to_bytes()[..], &d.encode()[..])?;
        waiting.insert(&index_key(due_ms, id)[..], ())?;
    }
    Ok(())
}

/// Removes every trace of an unfinished submission, `CHUNK` deliveries per transaction, then
/// its [`PENDING`] entry in a synced one.
pub(super) fn rollback(db: &Database, job: JobId, due_ms: u64) -> Result<()> {
    let lo = DeliveryId { job, index: 0 }.to_bytes();
    let hi = DeliveryId {
        job,
        index: u32::MAX,
    }
    .to_bytes();
    loop {
        let mut tx = db.begin_write()?;
        let mut removed = 0;
        {
            let mut deliveries = tx.open_table(DELIVERIES)?;
            let mut ready = tx.open_table(READY)?;
            let mut sched = tx.open_table(SCHED)?;
            let ids: Vec<DeliveryId> = deliveries
                .range(&lo[..]..=&hi[..])?
                .take(CHUNK)
                .map(|e| e.map(|(k, _)| DeliveryId::from_bytes(k.value())))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect();
            for id in ids {
                deliveries.remove(&id.to_bytes()[..])?;
                stop_waiting(due_ms, id, &mut ready, &mut sched)?;
                removed += 1;
            }
        }
        if removed == 0 {
            tx.set_durability(Durability::Immediate)?;
            tx.open_table(PENDING)?.remove(&job.to_bytes()[..])?;
            tx.commit()?;
            return Ok(());
        }
        tx.set_durability(Durability::None)?;
        tx.commit()?;
    }
}
