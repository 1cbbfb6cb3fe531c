//! The completer: turns the engine's reports (and the feeder's own resolutions) into
//! queue completions under each lease's fencing token, and commits them in groups, one
//! durable write per batch. At shutdown it tries for at most the shutdown timeout.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::DeliveryKey;
use super::decide::after_attempt;
use super::feeder::Direct;
use super::ledger::Ledger;
use crate::engine::Report;
use crate::event::EventKind;
use crate::metrics::{Counter, Metrics};
use crate::outcome::Outcome;
use crate::queue::{AnyQueue, Completion, DeliveryId, Queue, Resolution};
use crate::retry::RetryConfig;

/// Resolutions committed at once (or after [`COMMIT_EVERY`]).
const COMMIT_BATCH: usize = 512;
const COMMIT_EVERY: Duration = Duration::from_millis(10);

/// What the completer ends with.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unstored {
    /// Outcomes that could not be stored before the shutdown timeout: their leases run
    /// out and the deliveries are tried again.
    pub outcomes: usize,
}

pub(super) struct Completer {
    pub(super) queue: Arc<AnyQueue>,
    pub(super) retry: RetryConfig,
    pub(super) metrics: Arc<Metrics>,
    pub(super) ledger: Arc<Mutex<Ledger>>,
    pub(super) shutdown_timeout: Duration,
}

impl Completer {
    fn take(&self, id: &DeliveryId, attempted: bool) -> Option<crate::queue::LeaseToken> {
        let mut ledger = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        ledger.take(id, attempted, Instant::now())
    }

    pub(super) async fn run(
        self,
        mut reports: mpsc::UnboundedReceiver<Report<DeliveryKey>>,
        mut direct: mpsc::UnboundedReceiver<Direct>,
    ) -> Unstored {
        let mut batch: Vec<Completion> = Vec::with_capacity(COMMIT_BATCH);
        let mut backoff = Backoff::default();
        let mut open = (true, true);
        let mut tick = tokio::time::interval(COMMIT_EVERY);
        while open.0 || open.1 {
            tokio::select! {
                report = reports.recv(), if open.0 => match report {
                    Some(report) => {
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
                            self.metrics.count(EventKind::Suppressed);
                        }
                        let attempted = resolution.is_attempt();
                        if let Some(token) = self.take(&id, attempted) {
                            batch.push(Completion { id, token, resolution, via: None });
                        }
                    }
                    None => open.1 = false,
                },
                _ = tick.tick() => self.try_commit(&mut batch, &mut backoff).await,
            }
            if batch.len() >= COMMIT_BATCH {
                self.try_commit(&mut batch, &mut backoff).await;
            }
        }
        // Everything is reported: the last commit may keep trying only so long.
        let deadline = Instant::now() + self.shutdown_timeout;
        self.commit_until(&mut batch, deadline).await;
        Unstored {
            outcomes: batch.len(),
        }
    }

    /// The completion of one report; `None` when it was never attempted (released
    /// instead) or its lease was lost (the new holder decides).
    async fn resolve(&self, report: Report<DeliveryKey>) -> Option<Completion> {
        let Report {
            key,
            to,
            outcome,
            via,
            ..
        } = report;
        let Some(outcome) = outcome else {
            let token = self.take(&key.id, false)?;
            let release = self
                .queue
                .release(vec![(key.id, token)], None, SystemTime::now());
            if let Err(e) = release.await {
                self.metrics.add(Counter::QueueErrors, 1);
                tracing::warn!(error = %e, "cannot release a lease; it will return when it runs out");
            }
            return None;
        };
        let Some(token) = self.take(&key.id, true) else {
            tracing::warn!(job = %key.id.job, index = key.id.index, to = to.as_str(), event = %outcome.detail, "an outcome after the lease was lost is not recorded");
            return None;
        };
        let verdict = after_attempt(
            &outcome,
            key.attempts + 1,
            key.first_attempt,
            &self.retry,
            SystemTime::now(),
        );
        if matches!(verdict, Resolution::Expired { .. }) {
            self.metrics.count(EventKind::Expired);
        }
        log_outcome(&key.id, to.as_str(), &outcome, &verdict);
        Some(Completion {
            id: key.id,
            token,
            resolution: verdict,
            via: via.map(|v| Arc::clone(v.json())),
        })
    }

    /// One durable write for the batch, unless a failed one asked to wait; on failure
    /// the batch is kept for a later try (nothing is acknowledged before it is stored)
    /// and the wait doubles. Never waits itself: the loop must keep seeing reports and
    /// the end of its channels, or a stop during a storage outage would never end.
    async fn try_commit(&self, batch: &mut Vec<Completion>, backoff: &mut Backoff) {
        if batch.is_empty() || backoff.until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        if self.commit_once(batch).await {
            *backoff = Backoff::default();
        } else {
            backoff.until = Some(Instant::now() + backoff.delay);
            backoff.delay = (backoff.delay * 2).min(MAX_BACKOFF);
        }
    }

    /// At shutdown: tries until the batch is stored or `deadline` passes, leaving it
    /// unstored then.
    async fn commit_until(&self, batch: &mut Vec<Completion>, deadline: Instant) {
        let mut delay = Backoff::default().delay;
        while !batch.is_empty() && !self.commit_once(batch).await {
            if Instant::now() + delay > deadline {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    }

    /// One write; clears the batch and returns true when it is stored.
    async fn commit_once(&self, batch: &mut Vec<Completion>) -> bool {
        match self.queue.complete(batch.clone(), SystemTime::now()).await {
            Ok(stale) => {
                if stale > 0 {
                    self.metrics.add(Counter::StaleCompletions, stale as u64);
                    tracing::warn!(stale, "outcomes refused: their leases had been taken over");
                }
                batch.clear();
                true
            }
            Err(e) => {
                self.metrics.add(Counter::QueueErrors, 1);
                tracing::error!(error = %e, pending = batch.len(), "cannot record outcomes; retrying");
                false
            }
        }
    }
}

/// The longest wait between two tries of a failing commit.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// When the next commit may be tried after a failure.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    until: Option<Instant>,
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            until: None,
            delay: Duration::from_millis(100),
        }
    }
}

fn log_outcome(id: &DeliveryId, to: &str, outcome: &Outcome, resolution: &Resolution) {
    let event = resolution.kind().as_str();
    tracing::info!(job = %id.job, index = id.index, to, event, reply = %outcome.detail, "delivery");
}

fn log_resolution(id: &DeliveryId, to: &str, resolution: &Resolution) {
    let event = resolution.kind().as_str();
    let reply = resolution.reply().unwrap_or_default();
    tracing::info!(job = %id.job, index = id.index, to, event, reply, "delivery");
}
