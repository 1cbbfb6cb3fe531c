//! The durable queue: submissions (jobs) expanded into deliveries, leased to delivery
//! workers, resolved in batches, with job counts, per-recipient status, an ordered event log
//! and the suppression list.
//!
//! Two backends behind one [`Queue`] trait, chosen at run time through [`AnyQueue`]:
//! - [`EmbeddedQueue`] (the default): a redb file in the data directory, owned by one process.
//! - [`RedisQueue`]: Redis Streams with a consumer group, shared by many processes and
//!   machines. Its module doc states the durability it gives and the Redis settings it needs.
//!
//! Deliveries are leased, never removed on hand-out: a lease that is not completed or
//! released in time (a crashed worker) returns its delivery to the queue, so a delivery may be
//! attempted twice but is never lost. An accepted submission is durable before `submit`
//! returns.
//!
//! The queue knows nothing of SMTP, templates or HTTP: payloads and recipient variables are
//! opaque bytes, replies are opaque text, and the clock is always passed in (`now`).

mod embedded;
mod error;
mod id;
mod redis_streams;
mod types;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub use self::embedded::EmbeddedQueue;
pub use self::error::{QueueError, Result};
pub use self::id::{DeliveryId, JobId, ParseIdError};
pub use self::redis_streams::RedisQueue;
pub use self::types::{
    Completion, Counts, Depth, Event, EventKind, Held, JobKind, JobState, JobStatus, LateOutcome,
    LateReport, LeaseToken, Leased, NewJob, NewRecipient, Pruned, RecipientState, RecipientStatus,
    Resolution, RetentionConfig, SubmitOutcome, Suppression, SuppressionScope, valid_list_name,
};

/// Which storage the queue uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A file-backed store in `path`; one process.
    #[default]
    Embedded,
    /// Redis Streams at `redis_url`; many processes.
    Redis,
}

/// The `[queue]` section of `volley.toml`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// `embedded` (default) or `redis`.
    pub backend: Backend,
    /// The embedded store's directory. Default `volley-data`.
    pub path: PathBuf,
    /// The Redis server. Default `redis://127.0.0.1:6379`.
    pub redis_url: String,
    /// Prefix of every Redis key, so several deployments (or tests) can share one server.
    /// Default `volley`.
    pub redis_prefix: String,
    /// How long a worker holds a delivery before it returns to the queue. Default `5m`.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            backend: Backend::Embedded,
            path: PathBuf::from("volley-data"),
            redis_url: "redis://127.0.0.1:6379".to_string(),
            redis_prefix: "volley".to_string(),
            lease: Duration::from_secs(5 * 60),
        }
    }
}

/// The queue's operations. Every method is atomic: it happens whole or not at all.
///
/// Leases are fenced: every lease of a delivery carries a larger [`LeaseToken`], and
/// `complete`, `renew` and `release` act only on the delivery's current lease. A worker
/// that keeps renewing what it holds never loses it; one that stalls past its lease can
/// lose it to another, and then nothing it reports is recorded.
///
/// Suppression entries are keyed by [`crate::address::suppression_key`], applied here to
/// every address handed in, so every caller matches the same way.
pub trait Queue: Send + Sync {
    /// Stores a job and one delivery per recipient, atomically, and returns once that is
    /// durable. Recipients are consumed as a stream. Refuses an empty list or a recipient the
    /// queue cannot store (nothing is stored then). With an idempotency key seen within 24 h,
    /// answers `Existing` (same request hash) or `IdempotencyConflict` and stores nothing;
    /// while the first submission with the key is still being stored, `IdempotencyInProgress`.
    fn submit(
        &self,
        job: NewJob,
        recipients: impl Iterator<Item = NewRecipient> + Send,
        now: SystemTime,
    ) -> impl Future<Output = Result<SubmitOutcome>> + Send;

    /// Stores several small submissions (each at most a few thousand recipients, as an
    /// SMTP message has) with as few durable writes as the backend allows; each gets its
    /// own answer, as [`Queue::submit`] would give it (an error there is that job's
    /// alone). The outer error fails them all: none is stored.
    fn submit_batch(
        &self,
        jobs: Vec<(NewJob, Vec<NewRecipient>)>,
        now: SystemTime,
    ) -> impl Future<Output = Result<Vec<Result<SubmitOutcome>>>> + Send {
        async move {
            let mut answers = Vec::with_capacity(jobs.len());
            for (job, recipients) in jobs {
                answers.push(self.submit(job, recipients.into_iter(), now).await);
            }
            Ok(answers)
        }
    }

    /// Leases up to `max` deliveries due by `now` (send time or retry time), for the
    /// configured lease time, each with a new token. Suppression is not checked here: the
    /// caller asks [`Queue::suppressed_among`] and completes with [`Resolution::Suppressed`].
    fn lease(
        &self,
        max: usize,
        now: SystemTime,
    ) -> impl Future<Output = Result<Vec<Leased>>> + Send;

    /// Extends the leases still held (matching token) by the lease time from `now`;
    /// returns the deliveries whose lease was lost (taken over, resolved, released).
    fn renew(
        &self,
        held: Vec<Held>,
        now: SystemTime,
    ) -> impl Future<Output = Result<Vec<DeliveryId>>> + Send;

    /// Jobs' opaque payloads in one read (one per id, in order; callers cache them: they
    /// never change): a batch of one-off messages (each SMTP submission is its own job)
    /// costs one round trip, not one per message.
    fn job_payloads(
        &self,
        ids: Vec<JobId>,
    ) -> impl Future<Output = Result<Vec<Option<Vec<u8>>>>> + Send;

    /// Records outcomes in one durable write (with the suppressions that hard bounces
    /// ask for). A completion whose token is not the delivery's current lease is refused
    /// and counted: the number refused is returned.
    fn complete(
        &self,
        batch: Vec<Completion>,
        now: SystemTime,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// Gives leases back unattempted (shutdown, a site too busy to start them soon): due
    /// as before, or not before `not_before`. No attempt, no event.
    fn release(
        &self,
        held: Vec<Held>,
        not_before: Option<SystemTime>,
        now: SystemTime,
    ) -> impl Future<Output = Result<()>> + Send;

    /// A job's state and counts; `None` for an unknown job (or one still being submitted).
    fn job(&self, id: &JobId) -> impl Future<Output = Result<Option<JobStatus>>> + Send;

    /// The `limit` most recently created jobs, newest first (jobs still being submitted are
    /// not listed).
    fn recent_jobs(&self, limit: usize) -> impl Future<Output = Result<Vec<JobStatus>>> + Send;

    /// Up to `limit` recipients of a job in index order, after `after_index` if given.
    fn recipients(
        &self,
        id: &JobId,
        after_index: Option<u32>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecipientStatus>>> + Send;

    /// Up to `limit` events with a cursor greater than `after` (0 for the start), in order.
    fn events(&self, after: u64, limit: usize) -> impl Future<Output = Result<Vec<Event>>> + Send;

    /// Adds (or replaces) a suppression entry, durably.
    fn suppress(&self, entry: Suppression) -> impl Future<Output = Result<()>> + Send;

    /// Records a report received after the handoff as an event marked late, with the
    /// address's suppression (scope `all`) when it asks for one, in one durable write.
    /// The delivery's state and its job's counts stay what the SMTP exchange made them.
    fn record_late(
        &self,
        report: LateReport,
        now: SystemTime,
    ) -> impl Future<Output = Result<LateOutcome>> + Send;

    /// Removes an address's entries: of one scope, or all of them. Returns how many.
    fn unsuppress(
        &self,
        address: &str,
        scope: Option<SuppressionScope>,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// An address's entries, every scope.
    fn suppressions_of(
        &self,
        address: &str,
    ) -> impl Future<Output = Result<Vec<Suppression>>> + Send;

    /// Up to `limit` entries in address order, after the address key `after`.
    fn suppressions(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Suppression>>> + Send;

    /// For each address and the list its mail belongs to (`None`: transactional mail, not
    /// stopped by unsubscribes), whether it is suppressed: one read for a whole leased
    /// batch, instead of one per delivery.
    fn suppressed_among(
        &self,
        addresses: Vec<(String, Option<String>)>,
    ) -> impl Future<Output = Result<Vec<bool>>> + Send;

    /// Deliveries ready, scheduled for later and leased. Counts kept by the writes, so
    /// this costs the same whatever the queue holds.
    fn depth(&self, now: SystemTime) -> impl Future<Output = Result<Depth>> + Send;

    /// Removes events and finished jobs older than `retention` says, a bounded amount per
    /// call (call again while it removes something).
    fn prune(
        &self,
        now: SystemTime,
        retention: RetentionConfig,
    ) -> impl Future<Output = Result<Pruned>> + Send;
}

/// A queue whose backend is chosen by configuration.
#[derive(Debug, Clone)]
pub enum AnyQueue {
    /// The embedded store (redb, one process).
    Embedded(EmbeddedQueue),
    /// Redis Streams.
    Redis(RedisQueue),
}

impl AnyQueue {
    /// Opens the configured backend.
    pub async fn open(config: &QueueConfig) -> Result<Self> {
        Ok(match config.backend {
            Backend::Embedded => {
                AnyQueue::Embedded(EmbeddedQueue::open(&config.path, config.lease).await?)
            }
            Backend::Redis => AnyQueue::Redis(
                RedisQueue::open(&config.redis_url, &config.redis_prefix, config.lease).await?,
            ),
        })
    }
}

macro_rules! delegate {
    ($self:ident, $q:ident => $call:expr) => {
        match $self {
            AnyQueue::Embedded($q) => $call.await,
            AnyQueue::Redis($q) => $call.await,
        }
    };
}

impl Queue for AnyQueue {
    async fn submit(
        &self,
        job: NewJob,
        recipients: impl Iterator<Item = NewRecipient> + Send,
        now: SystemTime,
    ) -> Result<SubmitOutcome> {
        delegate!(self, q => q.submit(job, recipients, now))
    }
    async fn submit_batch(
        &self,
        jobs: Vec<(NewJob, Vec<NewRecipient>)>,
        now: SystemTime,
    ) -> Result<Vec<Result<SubmitOutcome>>> {
        delegate!(self, q => q.submit_batch(jobs, now))
    }
    async fn lease(&self, max: usize, now: SystemTime) -> Result<Vec<Leased>> {
        delegate!(self, q => q.lease(max, now))
    }
    async fn renew(&self, held: Vec<Held>, now: SystemTime) -> Result<Vec<DeliveryId>> {
        delegate!(self, q => q.renew(held, now))
    }
    async fn job_payloads(&self, ids: Vec<JobId>) -> Result<Vec<Option<Vec<u8>>>> {
        delegate!(self, q => q.job_payloads(ids))
    }
    async fn complete(&self, batch: Vec<Completion>, now: SystemTime) -> Result<usize> {
        delegate!(self, q => q.complete(batch, now))
    }
    async fn release(
        &self,
        held: Vec<Held>,
        not_before: Option<SystemTime>,
        now: SystemTime,
    ) -> Result<()> {
        delegate!(self, q => q.release(held, not_before, now))
    }
    async fn job(&self, id: &JobId) -> Result<Option<JobStatus>> {
        delegate!(self, q => q.job(id))
    }
    async fn recent_jobs(&self, limit: usize) -> Result<Vec<JobStatus>> {
        delegate!(self, q => q.recent_jobs(limit))
    }
    async fn recipients(
        &self,
        id: &JobId,
        after_index: Option<u32>,
        limit: usize,
    ) -> Result<Vec<RecipientStatus>> {
        delegate!(self, q => q.recipients(id, after_index, limit))
    }
    async fn events(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        delegate!(self, q => q.events(after, limit))
    }
    async fn record_late(&self, report: LateReport, now: SystemTime) -> Result<LateOutcome> {
        delegate!(self, q => q.record_late(report, now))
    }
    async fn suppress(&self, entry: Suppression) -> Result<()> {
        delegate!(self, q => q.suppress(entry))
    }
    async fn unsuppress(&self, address: &str, scope: Option<SuppressionScope>) -> Result<usize> {
        delegate!(self, q => q.unsuppress(address, scope))
    }
    async fn suppressions_of(&self, address: &str) -> Result<Vec<Suppression>> {
        delegate!(self, q => q.suppressions_of(address))
    }
    async fn suppressions(&self, after: Option<String>, limit: usize) -> Result<Vec<Suppression>> {
        delegate!(self, q => q.suppressions(after, limit))
    }
    async fn suppressed_among(
        &self,
        addresses: Vec<(String, Option<String>)>,
    ) -> Result<Vec<bool>> {
        delegate!(self, q => q.suppressed_among(addresses))
    }
    async fn depth(&self, now: SystemTime) -> Result<Depth> {
        delegate!(self, q => q.depth(now))
    }
    async fn prune(&self, now: SystemTime, retention: RetentionConfig) -> Result<Pruned> {
        delegate!(self, q => q.prune(now, retention))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_names() {
        let c: QueueConfig = serde_json::from_str("{}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c, QueueConfig::default());
        assert_eq!(c.lease, Duration::from_secs(300));
        let c: QueueConfig =
            serde_json::from_str(r#"{"backend":"redis","lease":"30s","path":"d"}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.backend, Backend::Redis);
        assert_eq!(c.lease, Duration::from_secs(30));
        assert!(serde_json::from_str::<QueueConfig>(r#"{"bakend":"redis"}"#).is_err());
        assert!(serde_json::from_str::<QueueConfig>(r#"{"backend":"sqlite"}"#).is_err());
    }
}
