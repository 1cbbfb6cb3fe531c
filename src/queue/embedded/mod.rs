//! The `embedded` backend: a redb file (`queue.redb`) in the data directory, no server.
//!
//! One process owns the store: redb locks the file, so a second open fails with
//! [`QueueError::Locked`]. That is what makes crash recovery simple: at open, every lease a
//! previous process left is returned to the ready index at once, and any submission it left
//! half-written is rolled back. While running, a lease also runs out after the configured
//! time and its delivery is leased again.
//!
//! Durability: `submit`, `complete` and the suppression list commit with
//! `Durability::Immediate` (fsync before the call returns). `lease` and `release` commit
//! without a sync: losing one in a crash only returns deliveries to the queue, which recovery
//! does anyway.
//!
//! The store is synchronous; every call runs on tokio's blocking pool. It knows nothing of
//! SMTP, templates or HTTP.

mod prune;
mod read;
mod records;
mod store;
mod submit;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redb::Database;

use self::submit::{CHUNK, Chunk};
use super::Queue;
use super::error::{QueueError, Result};
use super::id::{DeliveryId, JobId};
use super::types::{
    Completion, Depth, Event, Held, JobStatus, LateOutcome, LateReport, Leased, NewJob,
    NewRecipient, Pruned, RecipientStatus, RetentionConfig, SubmitOutcome, Suppression,
    SuppressionScope, check_recipient, to_ms,
};

/// The embedded queue. Cheap to clone: clones share the open store.
#[derive(Clone)]
pub struct EmbeddedQueue {
    db: Arc<Database>,
    lease: Duration,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedQueue")
            .field("path", &self.path)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// Runs a store operation on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| QueueError::Task(e.to_string()))?
}

impl EmbeddedQueue {
    /// Opens the store in `dir` (creating the directory and, if absent, the file), recovering
    /// what a previous process left. Fails if another process has it open, or if the file
    /// exists but cannot be read as a queue store.
    pub async fn open(dir: &Path, lease: Duration) -> Result<Self> {
        let path = dir.to_path_buf();
        let p = path.clone();
        let db = blocking(move || store::open(&p)).await?;
        Ok(EmbeddedQueue {
            db: Arc::new(db),
            lease,
            path,
        })
    }

    /// The path of the redb store file (`queue.redb`) in the data directory.
    pub fn file(&self) -> PathBuf {
        self.path.join(store::FILE)
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        blocking(move || f(&db)).await
    }
}

/// Rolls back a multi-chunk submission unless disarmed: covers errors and a caller that drops
/// the `submit` future (an HTTP client hanging up) between chunks.
struct PendingGuard {
    db: Option<Arc<Database>>,
    job: JobId,
    due_ms: u64,
}

impl PendingGuard {
    async fn rollback(mut self) -> Result<()> {
        match self.db.take() {
            Some(db) => {
                let (job, due) = (self.job, self.due_ms);
                blocking(move || submit::rollback(&db, job, due)).await
            }
            None => Ok(()),
        }
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let (Some(db), Ok(rt)) = (self.db.take(), tokio::runtime::Handle::try_current()) {
            let (job, due) = (self.job, self.due_ms);
            // If this fails too, the next open rolls the job back.
            rt.spawn_blocking(move || submit::rollback(&db, job, due));
        }
    }
}

impl Queue for EmbeddedQueue {
    async fn submit(
        &self,
        job: NewJob,
        recipients: impl Iterator<Item = NewRecipient> + Send,
        now: SystemTime,
    ) -> Result<SubmitOutcome> {
        let job = Arc::new(job);
        let j = job.clone();
        if let Some(answer) = self.run(move |db| submit::precheck(db, &j, now)).await? {
            return Ok(answer);
        }
        let due_ms = to_ms(job.send_at.unwrap_or(now));
        let mut recipients = recipients.peekable();
        let mut next: u32 = 0;
        let mut guard: Option<PendingGuard> = None;
        loop {
            let first_index = next;
            let mut chunk = Vec::with_capacity(CHUNK);
            let mut failed = None;
            for r in recipients.by_ref().take(CHUNK) {
                if let Err(e) = check_recipient(next, &r) {
                    failed = Some(e);
                    break;
                }
                next = match next.checked_add(1) {
                    Some(n) => n,
                    None => {
                        failed = Some(QueueError::invalid("recipients", "more than 2^32 - 1"));
                        break;
                    }
                };
                chunk.push(r);
            }
            if failed.is_none() && next == 0 {
                failed = Some(QueueError::invalid("recipients", "no recipients"));
            }
            if let Some(e) = failed {
                if let Some(g) = guard.take() {
                    g.rollback().await?;
                }
                return Err(e);
            }
            let last = recipients.peek().is_none();
            let c = Chunk {
                first_index,
                recipients: chunk,
                last,
            };
            // Armed before the first unsynced chunk is written, so that even a future dropped
            // while that write runs leaves nothing behind.
            if guard.is_none() && !last {
                guard = Some(PendingGuard {
                    db: Some(self.db.clone()),
                    job: job.id,
                    due_ms,
                });
            }
            let j = job.clone();
            let raced = self
                .run(move |db| submit::write_chunk(db, &j, due_ms, c, now))
                .await;
            match raced {
                Ok(None) if last => {
                    // Committed: nothing left to roll back.
                    if let Some(mut g) = guard.take() {
                        g.db = None;
                    }
                    return Ok(SubmitOutcome::Created {
                        id: job.id,
                        recipients: next,
                    });
                }
                Ok(None) => {}
                Ok(Some(answer)) => {
                    if let Some(g) = guard.take() {
                        g.rollback().await?;
                    }
                    return Ok(answer);
                }
                Err(e) => {
                    if let Some(g) = guard.take() {
                        g.rollback().await?;
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn submit_batch(
        &self,
        jobs: Vec<(NewJob, Vec<NewRecipient>)>,
        now: SystemTime,
    ) -> Result<Vec<Result<SubmitOutcome>>> {
        self.run(move |db| submit::write_batch(db, jobs, now)).await
    }

    async fn lease(&self, max: usize, now: SystemTime) -> Result<Vec<Leased>> {
        let lease = self.lease;
        self.run(move |db| store::lease(db, max, now, lease)).await
    }

    async fn renew(&self, held: Vec<Held>, now: SystemTime) -> Result<Vec<DeliveryId>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let lease = self.lease;
        self.run(move |db| store::renew(db, held, now, lease)).await
    }

    async fn job_payloads(&self, ids: Vec<JobId>) -> Result<Vec<Option<Vec<u8>>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.run(move |db| read::payloads(db, &ids)).await
    }

    async fn complete(&self, batch: Vec<Completion>, now: SystemTime) -> Result<usize> {
        if batch.is_empty() {
            return Ok(0);
        }
        self.run(move |db| store::complete(db, batch, now)).await
    }

    async fn release(
        &self,
        held: Vec<Held>,
        not_before: Option<SystemTime>,
        now: SystemTime,
    ) -> Result<()> {
        if held.is_empty() {
            return Ok(());
        }
        self.run(move |db| store::release(db, held, not_before, now))
            .await
    }

    async fn job(&self, id: &JobId) -> Result<Option<JobStatus>> {
        let id = *id;
        self.run(move |db| read::job(db, id)).await
    }

    async fn recent_jobs(&self, limit: usize) -> Result<Vec<JobStatus>> {
        self.run(move |db| read::recent_jobs(db, limit)).await
    }

    async fn recipients(
        &self,
        id: &JobId,
        after_index: Option<u32>,
        limit: usize,
    ) -> Result<Vec<RecipientStatus>> {
        let id = *id;
        self.run(move |db| read::recipients(db, id, after_index, limit))
            .await
    }

    async fn events(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.run(move |db| read::events(db, after, limit)).await
    }

    async fn suppress(&self, entry: Suppression) -> Result<()> {
        self.run(move |db| read::suppress(db, &entry)).await
    }

    async fn record_late(&self, report: LateReport, now: SystemTime) -> Result<LateOutcome> {
        self.run(move |db| read::record_late(db, &report, now))
            .await
    }

    async fn unsuppress(&self, address: &str, scope: Option<SuppressionScope>) -> Result<usize> {
        let a = address.to_owned();
        self.run(move |db| read::unsuppress(db, &a, scope.as_ref()))
            .await
    }

    async fn suppressions_of(&self, address: &str) -> Result<Vec<Suppression>> {
        let a = address.to_owned();
        self.run(move |db| read::suppressions_of(db, &a)).await
    }

    async fn suppressions(&self, after: Option<String>, limit: usize) -> Result<Vec<Suppression>> {
        self.run(move |db| read::suppressions(db, after.as_deref(), limit))
            .await
    }

    async fn suppressed_among(
        &self,
        addresses: Vec<(String, Option<String>)>,
    ) -> Result<Vec<bool>> {
        if addresses.is_empty() {
            return Ok(Vec::new());
        }
        self.run(move |db| read::suppressed_among(db, &addresses))
            .await
    }

    async fn depth(&self, _now: SystemTime) -> Result<Depth> {
        self.run(read::depth).await
    }

    async fn prune(&self, now: SystemTime, retention: RetentionConfig) -> Result<Pruned> {
        self.run(move |db| prune::prune(db, now, retention)).await
    }
}
