//! The feeder: leases due deliveries, checks them (the job's spec, suppression, the
//! address, the domain's share of the engine), builds their messages and hands them to
//! the engine, never more than the engine has room for.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc, watch};

use super::DeliveryKey;
use super::cache::ByteCache;
use super::decide::{after_build_failure, before_build};
use super::ledger::Ledger;
use crate::address::Address;
use crate::compose::{ComposeError, Composer, JobSpec, vars_from_bytes};
use crate::engine::{Delivery, Engine};
use crate::message::ReturnPath;
use crate::metrics::{Counter, Metrics};
use crate::queue::{AnyQueue, DeliveryId, Held, JobId, Leased, Queue, Resolution};

/// Leases asked for at once: large enough that each site gets several messages per
/// connection write (512 gave about one write per message across 50 sites).
const LEASE_BATCH: usize = 1024;
/// The most bytes of per-recipient messages built and not yet done with: leasing waits
/// above it, and leases no more than fit under it. With 100 KB messages the engine
/// would otherwise hold thousands of them (its backlog counts deliveries, not bytes).
/// 32 MiB is still ~16,000 messages of 2 KB and ~330 of 100 KB: at 64 MiB `volley
/// send` of 100,000 × 2 KB to one relay peaked at 154 MB, at 32 MiB at 132 MB, with
/// the same throughput there and with 100 KB messages.
const BODY_BUDGET: usize = 32 * 1024 * 1024;
/// How often an empty queue is asked again.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// How long a delivery waits when the queue could not say what it needs (its job, its
/// suppression state): our storage's trouble, tried again soon.
const STORAGE_RETRY: Duration = Duration::from_secs(5);

/// A resolution decided without the engine (suppressed, unbuildable), for the completer:
/// the delivery, its resolution, its address (for the log).
pub(super) type Direct = (DeliveryId, Resolution, String);

/// What the feeder is built from.
pub(super) struct FeederParts {
    pub(super) queue: Arc<AnyQueue>,
    pub(super) composer: Arc<Composer>,
    pub(super) return_path: Option<ReturnPath>,
    pub(super) capacity: usize,
    pub(super) ledger: Arc<Mutex<Ledger>>,
    pub(super) direct: mpsc::UnboundedSender<Direct>,
    pub(super) wake: Arc<Notify>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) cache_bytes: usize,
}

pub(super) struct Feeder {
    queue: Arc<AnyQueue>,
    composer: Arc<Composer>,
    return_path: Option<ReturnPath>,
    capacity: usize,
    ledger: Arc<Mutex<Ledger>>,
    direct: mpsc::UnboundedSender<Direct>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// Jobs' specs, by the size of their stored payload.
    specs: ByteCache<JobId, Arc<JobSpec>>,
    /// One-off messages' bytes: the same for every recipient of the job.
    bodies: ByteCache<JobId, Arc<[u8]>>,
    /// The recent per-recipient message size, smoothed (0 before the first).
    mean_body: std::sync::atomic::AtomicUsize,
}

impl Feeder {
    pub(super) fn new(parts: FeederParts) -> Self {
        // Half the budget each: specs and built bodies.
        let half = parts.cache_bytes / 2;
        Self {
            queue: parts.queue,
            composer: parts.composer,
            return_path: parts.return_path,
            capacity: parts.capacity,
            ledger: parts.ledger,
            direct: parts.direct,
            wake: parts.wake,
            metrics: parts.metrics,
            specs: ByteCache::new(half),
            bodies: ByteCache::new(half),
            mean_body: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) async fn run(
        mut self,
        engine: Engine<DeliveryKey>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        while !*shutdown.borrow() {
            let (held, held_bytes) = {
                let ledger = self.ledger();
                (ledger.held_count(), ledger.held_bytes())
            };
            let room = self.capacity.saturating_sub(held);
            if room < 64 || held_bytes >= BODY_BUDGET {
                wait(&mut shutdown, Duration::from_millis(5)).await;
                continue;
            }
            let mean = self.mean_body.load(Ordering::Relaxed).max(1);
            let fits = ((BODY_BUDGET - held_bytes) / mean).max(1);
            let leased = match self
                .queue
                .lease(room.min(LEASE_BATCH).min(fits), SystemTime::now())
                .await
            {
                Ok(leased) => leased,
                Err(e) => {
                    self.metrics.add(Counter::QueueErrors, 1);
                    tracing::error!(error = %e, "cannot lease from the queue; retrying in 1 s");
                    wait(&mut shutdown, Duration::from_secs(1)).await;
                    continue;
                }
            };
            if leased.is_empty() {
                // Idle: a new submission wakes us; due retries are found by polling.
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = wait(&mut shutdown, IDLE_POLL) => {}
                }
                self.ledger().tidy(tokio::time::Instant::now());
                continue;
            }
            let staged = self.check(leased).await;
            for delivery in self.build_all(staged).await {
                if engine.submit(delivery).await.is_err() {
                    break;
                }
            }
        }
        // Finish what is in flight; what was never attempted comes back without an
        // outcome and is released.
        engine.shutdown().await;
    }

    /// Checks a leased batch before its messages are built: the jobs' specs, the
    /// suppression list (one lookup for the batch), the addresses, the domains' shares
    /// of the engine. Returns what may be built now; the rest is resolved, deferred or
    /// postponed here.
    async fn check(&mut self, leased: Vec<Leased>) -> Vec<Staged> {
        {
            let mut ledger = self.ledger();
            for lease in &leased {
                let domain = lease.to.rsplit_once('@').map_or("", |(_, d)| d);
                ledger.hold(lease.id, lease.token, &domain.to_ascii_lowercase());
            }
        }
        let mut with_spec = Vec::with_capacity(leased.len());
        let mut deferred = Vec::new();
        let specs = self.specs_of(&leased).await;
        for lease in leased {
            let spec = specs
                .get(&lease.id.job)
                .cloned()
                .unwrap_or_else(|| Err("the job's spec was not looked up".to_owned()));
            match spec {
                Ok(spec) => with_spec.push((lease, spec)),
                Err(reason) => {
                    // Our storage's trouble, never the recipient's: try again later.
                    tracing::error!(job = %lease.id.job, index = lease.id.index, %reason, "cannot read the job");
                    deferred.push(lease.id);
                }
            }
        }
        // Fail closed: a delivery whose suppression state is unknown is not sent.
        let queries = with_spec
            .iter()
            .map(|(l, spec)| (l.to.clone(), spec.unsubscribe_list().map(str::to_owned)))
            .collect();
        let suppressed = match self.queue.suppressed_among(queries).await {
            Ok(flags) => flags,
            Err(e) => {
                self.metrics.add(Counter::QueueErrors, 1);
                tracing::error!(error = %e, deliveries = with_spec.len(), "suppression lookup failed; deferring");
                deferred.extend(with_spec.iter().map(|(l, _)| l.id));
                self.put_back(deferred, STORAGE_RETRY).await;
                return Vec::new();
            }
        };
        self.put_back(deferred, STORAGE_RETRY).await;
        let now = tokio::time::Instant::now();
        let mut staged = Vec::with_capacity(with_spec.len());
        let mut postponed: HashMap<Duration, Vec<DeliveryId>> = HashMap::new();
        for ((lease, spec), suppressed) in with_spec.into_iter().zip(suppressed) {
            let address = match before_build(&lease.to, suppressed) {
                Ok(address) => address,
                Err(resolution) => {
                    self.resolve(lease.id, resolution, &lease.to);
                    continue;
                }
            };
            if let Err(wait) = self.ledger().admit(&lease.id, now) {
                postponed.entry(wait).or_default().push(lease.id);
                continue;
            }
            staged.push(Staged::new(lease, address, spec));
        }
        for (wait, ids) in postponed {
            self.metrics.add(Counter::Postponed, ids.len() as u64);
            self.put_back(ids, wait).await;
        }
        staged
    }

    /// Gives leases back to the queue, not to be leased again for `wait`. No attempt, no
    /// event: they were not tried. A release that fails leaves the leases to run out.
    async fn put_back(&self, ids: Vec<DeliveryId>, wait: Duration) {
        if ids.is_empty() {
            return;
        }
        let held: Vec<Held> = {
            let mut ledger = self.ledger();
            let now = tokio::time::Instant::now();
            ids.iter()
                .filter_map(|id| ledger.take(id, false, now).map(|t| (*id, t)))
                .collect()
        };
        let now = SystemTime::now();
        if let Err(e) = self.queue.release(held, Some(now + wait), now).await {
            self.metrics.add(Counter::QueueErrors, 1);
            tracing::warn!(error = %e, "cannot give leases back; they return when they run out");
        }
    }

    fn resolve(&self, id: DeliveryId, resolution: Resolution, to: &str) {
        let _ = self.direct.send((id, resolution, to.to_owned()));
    }

    /// Builds the messages of a batch. A one-off message's bytes are built once per job
    /// and shared by its recipients (no header names a recipient of its own; Bcc
    /// recipients appear nowhere; messages whose headers would differ are built per
    /// recipient, see [`Composer::per_recipient`]). What must be built is built on every
    /// core, because rendering, MIME and above all DKIM signing would otherwise hold one
    /// thread: SMTP submissions are one-off jobs, one per message.
    async fn build_all(&mut self, staged: Vec<Staged>) -> Vec<Delivery<DeliveryKey>> {
        let mut built = Vec::with_capacity(staged.len());
        // What must be built: every campaign message, and the first delivery of each
        // one-off job whose body is not cached; its other deliveries wait for it.
        let mut work = Vec::new();
        let mut waiting = Vec::new();
        let mut building = std::collections::HashSet::new();
        for s in staged {
            if self.composer.per_recipient(&s.spec) {
                work.push(s);
            } else if let Some(body) = self.bodies.get(&s.key.id.job) {
                let body = Arc::clone(body);
                built.push((s, Ok(body)));
            } else if building.insert(s.key.id.job) {
                work.push(s);
            } else {
                waiting.push(s);
            }
        }
        let done = self.build_on_every_core(work).await;
        let mut one_off: HashMap<JobId, Arc<[u8]>> = HashMap::new();
        for (s, body) in done {
            if let (Ok(body), false) = (&body, self.composer.per_recipient(&s.spec)) {
                self.bodies
                    .insert(s.key.id.job, Arc::clone(body), body.len());
                one_off.insert(s.key.id.job, Arc::clone(body));
            }
            built.push((s, body));
        }
        for s in waiting {
            let body = match one_off.get(&s.key.id.job) {
                Some(body) => Ok(Arc::clone(body)),
                // Its job's build failed: build it again to get its own error.
                None => compose(&self.composer, &s).map(Arc::from),
            };
            built.push((s, body));
        }
        built
            .into_iter()
            .filter_map(|(s, body)| self.finish(s, body))
            .collect()
    }

    /// Builds messages, on every core when there are enough of them to be worth it: a
    /// few dozen, or two once messages are DKIM-signed (RSA costs about half a
    /// millisecond each).
    async fn build_on_every_core(
        &self,
        work: Vec<Staged>,
    ) -> Vec<(Staged, Result<Arc<[u8]>, ComposeError>)> {
        let workers = std::thread::available_parallelism().map_or(2, usize::from);
        let enough = if self.composer.signs() { 2 } else { 32 };
        if work.len() < enough || workers < 2 {
            return work
                .into_iter()
                .map(|s| {
                    let body = compose(&self.composer, &s).map(Arc::from);
                    (s, body)
                })
                .collect();
        }
        let per_worker = work.len().div_ceil(workers);
        let mut chunks = Vec::with_capacity(workers);
        let mut rest = work;
        while !rest.is_empty() {
            let tail = rest.split_off(per_worker.min(rest.len()));
            chunks.push(std::mem::replace(&mut rest, tail));
        }
        let tasks: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let composer = Arc::clone(&self.composer);
                tokio::task::spawn_blocking(move || {
                    chunk
                        .into_iter()
                        .map(|s| {
                            let body = compose(&composer, &s).map(Arc::from);
                            (s, body)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut built = Vec::new();
        for task in tasks {
            match task.await {
                Ok(done) => built.extend(done),
                Err(e) => {
                    tracing::error!(error = %e, "a message-building task failed; its leases return when they run out");
                }
            }
        }
        built
    }

    /// The delivery for a built message, or its resolution when it could not be built.
    fn finish(
        &self,
        s: Staged,
        body: Result<Arc<[u8]>, ComposeError>,
    ) -> Option<Delivery<DeliveryKey>> {
        let body = match body {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(job = %s.key.id.job, index = s.key.id.index, error = %e, "cannot build message");
                let resolution = after_build_failure(&e, SystemTime::now());
                self.resolve(s.key.id, resolution, &s.to);
                return None;
            }
        };
        let from = match &self.return_path {
            Some(path) => {
                let job = s.key.id.job.to_string();
                Some(path.envelope_sender(&job, s.key.id.index, &s.address))
            }
            None => Address::parse(&s.spec.from.address).ok(),
        };
        let waited = SystemTime::now()
            .duration_since(s.queued_at)
            .unwrap_or_default();
        let queued_at = std::time::Instant::now()
            .checked_sub(waited)
            .unwrap_or_else(std::time::Instant::now);
        let cancelled = {
            let mut ledger = self.ledger();
            let cancelled = ledger.hold_flag(&s.key.id)?;
            if self.composer.per_recipient(&s.spec) {
                ledger.carry(&s.key.id, body.len());
                let mean = self.mean_body.load(Ordering::Relaxed);
                let mean = if mean == 0 {
                    body.len()
                } else {
                    (mean * 7 + body.len()) / 8
                };
                self.mean_body.store(mean, Ordering::Relaxed);
            }
            cancelled
        };
        Some(Delivery {
            key: s.key,
            from,
            to: s.address,
            body,
            queued_at,
            cancelled,
            pool: s.spec.pool.clone(),
        })
    }

    /// The spec of every leased job, or why it cannot be read: from the cache, and those
    /// not cached all in one read, then kept in the cache (a job's spec never changes).
    /// Taken out of the cache first, so that what this read adds cannot evict them.
    async fn specs_of(
        &mut self,
        leased: &[Leased],
    ) -> HashMap<JobId, Result<Arc<JobSpec>, String>> {
        let mut specs = HashMap::new();
        let mut missing = Vec::new();
        let mut looked_up = std::collections::HashSet::new();
        for job in leased.iter().map(|l| l.id.job) {
            if !looked_up.insert(job) {
                continue;
            }
            match self.specs.get(&job) {
                Some(spec) => {
                    specs.insert(job, Ok(Arc::clone(spec)));
                }
                None => missing.push(job),
            }
        }
        if missing.is_empty() {
            return specs;
        }
        let payloads = match self.queue.job_payloads(missing.clone()).await {
            Ok(payloads) => payloads,
            Err(e) => {
                self.metrics.add(Counter::QueueErrors, 1);
                let reason = format!("cannot read the job's payload: {e}");
                specs.extend(missing.into_iter().map(|job| (job, Err(reason.clone()))));
                return specs;
            }
        };
        for (job, bytes) in missing.into_iter().zip(payloads) {
            let spec = match bytes {
                None => Err("the job's payload is missing from the queue".to_owned()),
                Some(bytes) => match JobSpec::from_payload(&bytes) {
                    Ok(spec) => {
                        let spec = Arc::new(spec);
                        self.specs.insert(job, Arc::clone(&spec), bytes.len());
                        Ok(spec)
                    }
                    Err(e) => Err(format!("the job's stored payload does not decode: {e}")),
                },
            };
            specs.insert(job, spec);
        }
        specs
    }
}

/// A lease checked and ready for its message to be built.
struct Staged {
    key: DeliveryKey,
    /// The address as stored (for logs and resolutions).
    to: String,
    /// The address as sent (A-label domain).
    address: Address,
    spec: Arc<JobSpec>,
    vars: Vec<u8>,
    queued_at: SystemTime,
}

impl Staged {
    fn new(lease: Leased, address: Address, spec: Arc<JobSpec>) -> Self {
        let Leased {
            id,
            token,
            to,
            vars,
            attempts,
            created,
            first_attempt,
            queued_at,
        } = lease;
        Staged {
            key: DeliveryKey {
                id,
                token,
                attempts,
                created,
                first_attempt,
            },
            to,
            address,
            spec,
            vars,
            queued_at,
        }
    }
}

fn compose(composer: &Composer, s: &Staged) -> Result<Vec<u8>, ComposeError> {
    let vars = vars_from_bytes(&s.vars)
        .map_err(|e| ComposeError::Stored(format!("recipient variables: {e}")))?;
    composer.compose(&s.key.id.job.to_string(), &s.spec, &s.address, &vars)
}

async fn wait(shutdown: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        _ = shutdown.changed() => {}
    }
}
