//! The completer: turns the engine's reports (and the feeder's own resolutions) into
//! queue resolutions and commits them in groups, one durable write per batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::DeliveryKey;
use super::decide::after_attempt;
use super::feeder::Direct;
use crate::engine::Report;
use crate::event::EventKind;
use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::queue::{AnyQueue, DeliveryId, Queue, Resolution};
use crate::retry::RetryConfig;

/// Resolutions committed at once (or after [`COMMIT_EVERY`]).
const COMMIT_BATCH: usize = 512;
const COMMIT_EVERY: Duration = Duration::from_millis(10);

pub(super) struct Completer {
    pub(super) queue: Arc<AnyQueue>,
    pub(super) retry: RetryConfig,
    pub(super) metrics: Arc<Metrics>,
    pub(super) inflight: Arc<AtomicUsize>,
}

impl Completer {
    pub(super) async fn run(
        self,
        mut reports: mpsc::UnboundedReceiver<Report<DeliveryKey>>,
        mut direct: mpsc::UnboundedReceiver<Direct>,
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
                            self.metrics.count(EventKind::Suppressed);
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
        let verdict = after_attempt(
            &outcome,
            key.attempts + 1,
            key.created,
            &self.retry,
            SystemTime::now(),
        );
        if verdict.suppress
            && let Err(e) = self.queue.suppress(to.as_str(), &outcome.detail).await
        {
            tracing::warn!(error = %e, "cannot add to the suppression list");
        }
        if matches!(verdict.resolution, Resolution::Expired { .. }) {
            self.metrics.count(EventKind::Expired);
        }
        let resolution = verdict.resolution;
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
    let event = resolution.kind().as_str();
    tracing::info!(job = %id.job, index = id.index, to, event, reply = %outcome.detail, "delivery");
}

fn log_resolution(id: &DeliveryId, to: &str, resolution: &Resolution) {
    let event = resolution.kind().as_str();
    let reply = resolution.reply().unwrap_or_default();
    tracing::info!(job = %id.job, index = id.index, to, event, reply, "delivery");
}
