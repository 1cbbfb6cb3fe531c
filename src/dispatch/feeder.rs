//! The feeder: leases due deliveries, checks them, builds their messages and hands them
//! to the engine, never more than the engine has room for.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, mpsc, watch};

use super::DeliveryKey;
use super::decide::{BUILD_RETRY, after_build_failure, before_build};
use crate::address::Address;
use crate::compose::{ComposeError, Composer, JobSpec, vars_from_bytes};
use crate::engine::{Delivery, Engine};
use crate::message::ReturnPath;
use crate::queue::{AnyQueue, DeliveryId, JobId, JobKind, Leased, Queue, Resolution};

/// Leases asked for at once: large enough that each site gets several messages per
/// connection write (512 gave about one write per message across 50 sites).
const LEASE_BATCH: usize = 1024;
/// How often an empty queue is asked again.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// A resolution decided without the engine (suppressed, unbuildable), for the completer.
pub(super) type Direct = (DeliveryId, Resolution, String);

pub(super) struct Feeder {
    queue: Arc<AnyQueue>,
    composer: Arc<Composer>,
    return_path: Option<ReturnPath>,
    capacity: usize,
    inflight: Arc<AtomicUsize>,
    /// Resolutions decided without the engine (suppressed, unbuildable).
    direct: mpsc::UnboundedSender<Direct>,
    wake: Arc<Notify>,
    specs: HashMap<JobId, Arc<JobSpec>>,
    bodies: HashMap<JobId, Arc<[u8]>>,
}

impl Feeder {
    pub(super) fn new(
        queue: Arc<AnyQueue>,
        composer: Arc<Composer>,
        return_path: Option<ReturnPath>,
        capacity: usize,
        inflight: Arc<AtomicUsize>,
        direct: mpsc::UnboundedSender<Direct>,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            queue,
            composer,
            return_path,
            capacity,
            inflight,
            direct,
            wake,
            specs: HashMap::new(),
            bodies: HashMap::new(),
        }
    }

    pub(super) async fn run(
        mut self,
        engine: Engine<DeliveryKey>,
        mut shutdown: watch::Receiver<bool>,
    ) {
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
        let address = match before_build(&to, suppressed) {
            Ok(address) => address,
            Err(resolution) => {
                self.resolve(id, resolution, &to);
                return None;
            }
        };
        let spec = match self.spec(&id.job).await {
            Ok(spec) => spec,
            Err(reason) => {
                // Our storage's trouble, never the recipient's: try again later.
                tracing::error!(job = %id.job, index = id.index, %reason, "cannot read the job");
                let resolution = Resolution::Retry {
                    at: SystemTime::now() + BUILD_RETRY,
                    reply: format!("4.3.0 {reason}"),
                };
                self.resolve(id, resolution, &to);
                return None;
            }
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
                tracing::warn!(job = %s.key.id.job, index = s.key.id.index, error = %e, "cannot build message");
                let resolution = after_build_failure(&e, SystemTime::now());
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

    /// The job's stored spec, read once and kept; why not, when it cannot be read.
    async fn spec(&mut self, job: &JobId) -> Result<Arc<JobSpec>, String> {
        if let Some(spec) = self.specs.get(job) {
            return Ok(Arc::clone(spec));
        }
        let bytes = match self.queue.job_payload(job).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err("the job's payload is missing from the queue".into()),
            Err(e) => return Err(format!("cannot read the job's payload: {e}")),
        };
        let spec = JobSpec::from_payload(&bytes)
            .map(Arc::new)
            .map_err(|e| format!("the job's stored payload does not decode: {e}"))?;
        self.specs.insert(*job, Arc::clone(&spec));
        Ok(spec)
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
