//! The dispatcher: between the queue and the engine.
//!
//! A feeder leases due deliveries in batches (only as many as the engine has room
//! for), skips suppressed addresses, builds each message (cached per job for
//! one-off messages, rendered per recipient for campaigns) and hands it to the
//! engine. A completer turns the engine's reports into queue resolutions with the
//! retry schedule and commits them in groups: one durable write per batch, never an
//! acknowledgement before it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::compose::{ComposeError, Composer};
use crate::engine::{Delivery, Engine, Report};
use crate::job::JobSpec;
use crate::message::ReturnPath;
use crate::metrics::{Counted, Metrics};
use crate::outcome::Outcome;
use crate::queue::{AnyQueue, DeliveryId, JobId, JobKind, Leased, Queue, Resolution};
use crate::retry::{Decision, RetryConfig, expiry_detail};
use crate::smtp::Address;

/// Leases asked for at once: large enough that each site gets several messages per
/// connection write (512 gave about one write per message across 50 sites).
const LEASE_BATCH: usize = 1024;
/// Resolutions committed at once (or after [`COMMIT_EVERY`]).
const COMMIT_BATCH: usize = 512;
const COMMIT_EVERY: Duration = Duration::from_millis(10);
/// How often an empty queue is asked again.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// What the engine carries for each delivery.
#[derive(Debug, Clone)]
pub struct DeliveryKey {
    /// The queue's id.
    pub id: DeliveryId,
    /// Attempts before this one.
    pub attempts: u32,
    /// When the job was accepted (for the maximum age).
    pub created: SystemTime,
}

/// What the dispatcher needs.
#[derive(Debug)]
pub struct DispatchDeps {
    /// The queue.
    pub queue: Arc<AnyQueue>,
    /// Builds messages.
    pub composer: Arc<Composer>,
    /// The engine, and its reports.
    pub engine: Engine<DeliveryKey>,
    /// Reports from the engine.
    pub reports: mpsc::UnboundedReceiver<Report<DeliveryKey>>,
    /// The engine's backlog (most deliveries inside it).
    pub capacity: usize,
    /// `[retry]`.
    pub retry: RetryConfig,
    /// `[message] return_path`.
    pub return_path: Option<ReturnPath>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Notified when a submission was stored, so the feeder leases at once
    /// instead of at its next poll.
    pub wake: Arc<Notify>,
}

/// The running dispatcher.
#[derive(Debug)]
pub struct Dispatch {
    feeder: JoinHandle<()>,
    completer: JoinHandle<()>,
}

impl Dispatch {
    /// Starts feeder and completer; they stop when `shutdown` turns true, after the
    /// engine finished what it had in flight and every lease was resolved or released.
    pub fn start(deps: DispatchDeps, shutdown: watch::Receiver<bool>) -> Self {
        let inflight = Arc::new(AtomicUsize::new(0));
        let (direct_tx, direct_rx) = mpsc::unbounded_channel();
        let completer = Completer {
            queue: Arc::clone(&deps.queue),
            retry: deps.retry,
            metrics: Arc::clone(&deps.metrics),
            inflight: Arc::clone(&inflight),
        };
        let completer = tokio::spawn(completer.run(deps.reports, direct_rx));
        let feeder = Feeder {
            queue: deps.queue,
            composer: deps.composer,
            return_path: deps.return_path,
            capacity: deps.capacity,
            inflight,
            direct: direct_tx,
            wake: deps.wake,
            specs: HashMap::new(),
            bodies: HashMap::new(),
        };
        let feeder = tokio::spawn(feeder.run(deps.engine, shutdown));
        Self { feeder, completer }
    }

    /// Waits until both halves have stopped.
    pub async fn join(self) {
        let _ = self.feeder.await;
        let _ = self.completer.await;
    }
}

struct Feeder {
    queue: Arc<AnyQueue>,
    composer: Arc<Composer>,
    return_path: Option<ReturnPath>,
    capacity: usize,
    inflight: Arc<AtomicUsize>,
    /// Resolutions decided without the engine (suppressed, unbuildable).
    direct: mpsc::UnboundedSender<(DeliveryId, Resolution, String)>,
    wake: Arc<Notify>,
    specs: HashMap<JobId, Option<Arc<JobSpec>>>,
    bodies: HashMap<JobId, Arc<[u8]>>,
}

impl Feeder {
    async fn run(mut self, engine: Engine<DeliveryKey>, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            let room = self
                .capacity
                .saturating_sub(self.inflight.load(Ordering::Relaxed));
            let leased = if room >= 64 {
                match self
                    .queue
                    .lease(room.min(LEASE_BATCH), SystemTime::now())
                    .await
                {
                    Ok(leased) => leased,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot lease from the queue; retrying in 1 s");
                        wait(&mut shutdown, Duration::from_secs(1)).await;
                        continue;
                    }
                }
            } else {
                Vec::new()
            };
            if leased.is_empty() {
                if room >= 64 {
                    // Idle: a new submission wakes us; due retries are found by polling.
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = wait(&mut shutdown, IDLE_POLL) => {}
                    }
                } else {
                    wait(&mut shutdown, Duration::from_millis(5)).await;
                }
                continue;
            }
            // One suppression lookup for the whole batch: a lookup per delivery was
            // the largest cost of the feeder (a blocking-pool round trip each).
            let addresses = leased.iter().map(|l| l.to.clone()).collect();
            let suppressed = match self.queue.suppressed_among(addresses).await {
                Ok(flags) => flags,
                Err(e) => {
                    tracing::warn!(error = %e, "suppression check failed; sending anyway");
                    vec![false; leased.len()]
                }
            };
            let mut staged = Vec::with_capacity(leased.len());
            for (lease, suppressed) in leased.into_iter().zip(suppressed) {
                if let Some(ready) = self.stage(lease, suppressed).await {
                    staged.push(ready);
                }
            }
            for delivery in self.build_all(staged).await {
                self.inflight.fetch_add(1, Ordering::Relaxed);
                if engine.submit(delivery).await.is_err() {
                    break;
                }
            }
            if self.specs.len() > 10_000 {
                self.specs.clear();
                self.bodies.clear();
            }
        }
        // Finish what is in flight; what was never attempted comes back without an
        // outcome and is released.
        engine.shutdown().await;
    }

    /// Checks a lease before its message is built: suppression, the address, the
    /// job's payload. `None` when it was resolved here.
    async fn stage(&mut self, lease: Leased, suppressed: bool) -> Option<Staged> {
        let Leased {
            id,
            to,
            vars,
            attempts,
            created,
            queued_at,
        } = lease;
        if suppressed {
            self.resolve(id, Resolution::Suppressed, &to);
            return None;
        }
        // An internationalised domain goes on the wire as A-labels: no SMTPUTF8
        // needed unless the local part itself is non-ASCII.
        let Ok(address) = Address::parse(&to).map(|a| a.with_ascii_domain()) else {
            let reply = format!("5.1.3 invalid recipient address {to:?}");
            self.resolve(id, Resolution::Bounced { reply }, &to);
            return None;
        };
        let Some(spec) = self.spec(&id.job).await else {
            let reply = "5.3.0 the job's payload is missing".to_owned();
            self.resolve(id, Resolution::Bounced { reply }, &to);
            return None;
        };
        Some(Staged {
            key: DeliveryKey {
                id,
                attempts,
                created,
            },
            to,
            address,
            spec,
            vars,
            queued_at,
        })
    }

    fn resolve(&self, id: DeliveryId, resolution: Resolution, to: &str) {
        let _ = self.direct.send((id, resolution, to.to_owned()));
    }

    /// Builds the messages of a batch. One-off messages are built once per job and
    /// shared; campaign messages are built on every core, because rendering, MIME and
    /// above all RSA signing (about 1 ms each) would otherwise hold one thread.
    async fn build_all(&mut self, staged: Vec<Staged>) -> Vec<Delivery<DeliveryKey>> {
        let (messages, campaigns): (Vec<Staged>, Vec<Staged>) = staged
            .into_iter()
            .partition(|s| s.spec.kind == JobKind::Message);
        let mut built = Vec::with_capacity(messages.len() + campaigns.len());
        for s in messages {
            let body = self.message_body(&s);
            built.push((s, body));
        }
        let workers = std::thread::available_parallelism().map_or(2, usize::from);
        if campaigns.len() < 32 || workers < 2 {
            for s in campaigns {
                let body = compose(&self.composer, &s).map(Arc::from);
                built.push((s, body));
            }
        } else {
            let per_worker = campaigns.len().div_ceil(workers);
            let mut chunks = Vec::with_capacity(workers);
            let mut rest = campaigns;
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
            for task in tasks {
                match task.await {
                    Ok(done) => built.extend(done),
                    Err(e) => {
                        tracing::error!(error = %e, "a message-building task failed; its leases return when they expire");
                    }
                }
            }
        }
        built
            .into_iter()
            .filter_map(|(s, body)| self.finish(s, body))
            .collect()
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
                let reply = format!("5.6.0 the message cannot be built: {e}");
                tracing::warn!(job = %s.key.id.job, index = s.key.id.index, error = %e, "cannot build message");
                let resolution = if e.is_permanent() {
                    Resolution::Bounced { reply }
                } else {
                    Resolution::Retry {
                        at: SystemTime::now() + Duration::from_secs(60),
                        reply,
                    }
                };
                self.resolve(s.key.id, resolution, &s.to);
                return None;
            }
        };
        let from = match &self.return_path {
            Some(path) => Some(path.envelope_sender(&s.address)),
            None => Address::parse(&s.spec.from.address).ok(),
        };
        let waited = SystemTime::now()
            .duration_since(s.queued_at)
            .unwrap_or_default();
        let queued_at = Instant::now()
            .checked_sub(waited)
            .unwrap_or_else(Instant::now);
        Some(Delivery {
            key: s.key,
            from,
            to: s.address,
            body,
            queued_at,
        })
    }

    async fn spec(&mut self, job: &JobId) -> Option<Arc<JobSpec>> {
        if let Some(spec) = self.specs.get(job) {
            return spec.clone();
        }
        let spec = match self.queue.job_payload(job).await {
            Ok(Some(bytes)) => serde_json::from_slice::<JobSpec>(&bytes).ok().map(Arc::new),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%job, error = %e, "cannot read the job payload");
                return None;
            }
        };
        self.specs.insert(*job, spec.clone());
        spec
    }

    /// A one-off message's bytes, built once per job: every recipient gets the same.
    fn message_body(&mut self, s: &Staged) -> Result<Arc<[u8]>, ComposeError> {
        if let Some(body) = self.bodies.get(&s.key.id.job) {
            return Ok(Arc::clone(body));
        }
        let body: Arc<[u8]> = compose(&self.composer, s)?.into();
        self.bodies.insert(s.key.id.job, Arc::clone(&body));
        Ok(body)
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

fn compose(composer: &Composer, s: &Staged) -> Result<Vec<u8>, ComposeError> {
    let vars: Map<String, Value> = serde_json::from_slice(&s.vars).unwrap_or_default();
    composer.compose(&s.key.id.job.to_string(), &s.spec, &s.address, &vars)
}

async fn wait(shutdown: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        _ = shutdown.changed() => {}
    }
}

struct Completer {
    queue: Arc<AnyQueue>,
    retry: RetryConfig,
    metrics: Arc<Metrics>,
    inflight: Arc<AtomicUsize>,
}

impl Completer {
    async fn run(
        self,
        mut reports: mpsc::UnboundedReceiver<Report<DeliveryKey>>,
        mut direct: mpsc::UnboundedReceiver<(DeliveryId, Resolution, String)>,
    ) {
        let mut batch: Vec<(DeliveryId, Resolution)> = Vec::with_capacity(COMMIT_BATCH);
        let mut open = (true, true);
        let mut tick = tokio::time::interval(COMMIT_EVERY);
        while open.0 || open.1 {
            tokio::select! {
                report = reports.recv(), if open.0 => match report {
                    Some(report) => {
                        self.inflight.fetch_sub(1, Ordering::Relaxed);
                        if let Some(done) = self.resolve(report).await {
                            batch.push(done);
                        }
                    }
                    None => open.0 = false,
                },
                item = direct.recv(), if open.1 => match item {
                    Some((id, resolution, to)) => {
                        log_resolution(&id, &to, &resolution);
                        if resolution == Resolution::Suppressed {
                            self.metrics.count(Counted::Suppressed);
                        }
                        batch.push((id, resolution));
                    }
                    None => open.1 = false,
                },
                _ = tick.tick() => self.commit(&mut batch).await,
            }
            if batch.len() >= COMMIT_BATCH {
                self.commit(&mut batch).await;
            }
        }
        self.commit(&mut batch).await;
    }

    /// The resolution of one report; `None` when it was never attempted and was
    /// released instead.
    async fn resolve(&self, report: Report<DeliveryKey>) -> Option<(DeliveryId, Resolution)> {
        let Report {
            key, to, outcome, ..
        } = report;
        let Some(outcome) = outcome else {
            if let Err(e) = self.queue.release(vec![key.id]).await {
                tracing::warn!(error = %e, "cannot release a lease; it will return when it expires");
            }
            return None;
        };
        let now = SystemTime::now();
        let resolution = match self
            .retry
            .decide(&outcome, key.attempts + 1, key.created, now)
        {
            Decision::Delivered => Resolution::Delivered {
                reply: outcome.detail.clone(),
            },
            Decision::Bounce => {
                if outcome.suppress
                    && let Err(e) = self.queue.suppress(to.as_str(), &outcome.detail).await
                {
                    tracing::warn!(error = %e, "cannot add to the suppression list");
                }
                Resolution::Bounced {
                    reply: outcome.detail.clone(),
                }
            }
            Decision::RetryAt(at) => Resolution::Retry {
                at,
                reply: outcome.detail.clone(),
            },
            Decision::Expire => {
                self.metrics.count(Counted::Expired);
                Resolution::Expired {
                    reply: expiry_detail(&outcome),
                }
            }
        };
        log_outcome(&key.id, to.as_str(), &outcome, &resolution);
        Some((key.id, resolution))
    }

    /// One durable write for the batch; on failure, keep it and try again later:
    /// nothing is acknowledged before it is stored.
    async fn commit(&self, batch: &mut Vec<(DeliveryId, Resolution)>) {
        if batch.is_empty() {
            return;
        }
        let mut delay = Duration::from_millis(100);
        loop {
            match self.queue.complete(batch.clone(), SystemTime::now()).await {
                Ok(()) => {
                    batch.clear();
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, pending = batch.len(), "cannot record outcomes; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

fn log_outcome(id: &DeliveryId, to: &str, outcome: &Outcome, resolution: &Resolution) {
    let event = match resolution {
        Resolution::Delivered { .. } => "delivered",
        Resolution::Retry { .. } => "deferred",
        Resolution::Bounced { .. } => "bounced",
        Resolution::Expired { .. } => "expired",
        Resolution::Suppressed => "suppressed",
    };
    tracing::info!(job = %id.job, index = id.index, to, event, reply = %outcome.detail, "delivery");
}

fn log_resolution(id: &DeliveryId, to: &str, resolution: &Resolution) {
    let (event, reply) = match resolution {
        Resolution::Suppressed => ("suppressed", ""),
        Resolution::Bounced { reply } => ("bounced", reply.as_str()),
        Resolution::Retry { reply, .. } => ("deferred", reply.as_str()),
        Resolution::Delivered { reply } | Resolution::Expired { reply } => {
            ("resolved", reply.as_str())
        }
    };
    tracing::info!(job = %id.job, index = id.index, to, event, reply, "delivery");
}
