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
    Counts, Depth, Event, EventKind, JobKind, JobState, JobStatus, Leased, NewJob, NewRecipient,
    RecipientState, RecipientStatus, Resolution, SubmitOutcome, normalize_address,
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
pub trait Queue: Send + Sync {
    /// Stores a job and one delivery per recipient, atomically, and returns once that is
    /// durable. Recipients are consumed as a stream. Refuses an empty list or a recipient the
    /// queue cannot store (nothing is stored then). With an idempotency key seen within 24 h,
    /// answers `Existing` (same request hash) or `IdempotencyConflict` and stores nothing.
    fn submit(
        &self,
        job: NewJob,
        recipients: impl Iterator<Item = NewRecipient> + Send,
        now: SystemTime,
    ) -> impl Future<Output = Result<SubmitOutcome>> + Send;

    /// Leases up to `max` deliveries due by `now` (send time or retry time), for the
    /// configured lease time. Suppression is not checked here: the caller asks
    /// [`Queue::is_suppressed`] and completes with [`Resolution::Suppressed`].
    fn lease(
        &self,
        max: usize,
        now: SystemTime,
    ) -> impl Future<Output = Result<Vec<Leased>>> + Send;

    /// A job's opaque payload (callers cache it: it never changes).
    fn job_payload(&self, id: &JobId) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;

    /// Records outcomes in one durable write. An outcome for an unknown or already final
    /// delivery is ignored.
    fn complete(
        &self,
        batch: Vec<(DeliveryId, Resolution)>,
        now: SystemTime,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Gives leases back untouched, due as before (graceful shutdown).
    fn release(&self, ids: Vec<DeliveryId>) -> impl Future<Output = Result<()>> + Send;

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

    /// Adds an address (normalised) to the suppression list.
    fn suppress(&self, address: &str, reason: &str) -> impl Future<Output = Result<()>> + Send;

    /// Whether an address (normalised) is on the suppression list.
    fn is_suppressed(&self, address: &str) -> impl Future<Output = Result<bool>> + Send;

    /// For each address (normalised), whether it is on the suppression list: one
    /// read for a whole leased batch, instead of one per delivery.
    fn suppressed_among(
        &self,
        addresses: Vec<String>,
    ) -> impl Future<Output = Result<Vec<bool>>> + Send;

    /// Removes an address from the suppression list; true if it was there.
    fn unsuppress(&self, address: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Deliveries ready, scheduled for later and leased, as of `now`.
    fn depth(&self, now: SystemTime) -> impl Future<Output = Result<Depth>> + Send;
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
    async fn lease(&self, max: usize, now: SystemTime) -> Result<Vec<Leased>> {
        delegate!(self, q => q.lease(max, now))
    }
    async fn job_payload(&self, id: &JobId) -> Result<Option<Vec<u8>>> {
        delegate!(self, q => q.job_payload(id))
    }
    async fn complete(&self, batch: Vec<(DeliveryId, Resolution)>, now: SystemTime) -> Result<()> {
        delegate!(self, q => q.complete(batch, now))
    }
    async fn release(&self, ids: Vec<DeliveryId>) -> Result<()> {
        delegate!(self, q => q.release(ids))
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
    async fn suppress(&self, address: &str, reason: &str) -> Result<()> {
        delegate!(self, q => q.suppress(address, reason))
    }
    async fn is_suppressed(&self, address: &str) -> Result<bool> {
        delegate!(self, q => q.is_suppressed(address))
    }
    async fn suppressed_among(&self, addresses: Vec<String>) -> Result<Vec<bool>> {
        delegate!(self, q => q.suppressed_among(addresses))
    }
    async fn unsuppress(&self, address: &str) -> Result<bool> {
        delegate!(self, q => q.unsuppress(address))
    }
    async fn depth(&self, now: SystemTime) -> Result<Depth> {
        delegate!(self, q => q.depth(now))
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
