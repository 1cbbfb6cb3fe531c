//! `volley send`: a campaign from the command line, delivered in this process, with
//! deferred recipients retried on the schedule for at most `max_wait`; what is still
//! deferred then stays queued for `volley serve`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::watch;

use super::{App, StartError};
use crate::event::EventKind;
use crate::metrics::Stage;
use crate::queue::{Counts, JobId, Queue, QueueError, SubmitOutcome};
use crate::submit::recipients::RecipientList;
use crate::submit::{CampaignRequest, Context, Invalid, MailboxInput, prepare_campaign};

/// What `volley send` was asked to send.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// The template's name (a directory under the templates path).
    pub template: String,
    /// The recipients, with the file's line of each (they name refusals).
    pub recipients: RecipientList,
    /// The From mailbox, e.g. `News <news@example.com>`.
    pub from: String,
    /// A subject that replaces the template's.
    pub subject: Option<String>,
    /// Variables shared by every recipient (`--var KEY=VALUE`), under each one's own.
    pub vars: Map<String, Value>,
    /// The list the campaign belongs to (`--list`; `"default"` when `None`).
    pub list: Option<String>,
    /// The egress pool (`--pool`; `[egress] default_pool` when `None`).
    pub pool: Option<String>,
    /// How long deferred recipients are retried here.
    pub max_wait: Duration,
    /// One JSON line per recipient is written here.
    pub report: Option<PathBuf>,
}

/// Latency percentiles in milliseconds, of the whole delivery (handed to the engine
/// to the final reply).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Half the messages took at most this long.
    pub p50: f64,
    /// 90 % took at most this long.
    pub p90: f64,
    /// 99 % took at most this long.
    pub p99: f64,
    /// 99.9 % took at most this long.
    pub p999: f64,
}

/// The summary printed at the end (`--json` prints exactly this object).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The job's id, for `GET /v1/jobs/{id}` once `volley serve` runs.
    pub job: String,
    /// Recipients in the list, duplicates merged.
    pub recipients: u32,
    /// Entries of the list that named a recipient already listed.
    pub merged: usize,
    /// Accepted by the receiving servers.
    pub delivered: u32,
    /// Refused permanently.
    pub bounced: u32,
    /// Still waiting for a retry (left queued for `volley serve`).
    pub deferred: u32,
    /// Gave up after the maximum age.
    pub expired: u32,
    /// Skipped: suppressed addresses.
    pub suppressed: u32,
    /// Seconds from submission to the end.
    pub elapsed_s: f64,
    /// Delivered per second.
    pub messages_per_second: f64,
    /// Submission-to-final-reply latency of delivered messages.
    pub latency_ms: Latency,
}

/// Why `volley send` failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Starting the engine.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The campaign is invalid (not a recipient's fault: the template, the sender...).
    #[error("invalid campaign: {0}")]
    Invalid(Invalid),
    /// A recipient of the list is refused; `place` is `FILE:LINE: COLUMN`.
    #[error("{place}: {message}")]
    Recipient {
        /// Where in the recipient file.
        place: String,
        /// What is wrong.
        message: String,
    },
    /// The queue store failed: submitting the job, polling its counts or listing its
    /// recipients for the report.
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    /// Outcomes could not be stored before the shutdown timeout.
    #[error("{0} outcomes could not be stored; their deliveries are tried again by `volley serve`")]
    Unstored(usize),
    /// The per-recipient report (`--report`) could not be created or written.
    #[error("report {path}: {source}")]
    Report {
        /// The report file, as given on the command line.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Submits the campaign, delivers it, and returns the summary. `progress` is called
/// with the counts as they change.
pub async fn run(
    app: &App,
    options: SendOptions,
    mut progress: impl FnMut(&Counts),
) -> Result<Summary, SendError> {
    let mut list = options.recipients;
    // Moved, not copied: only the lines stay, to name a refused recipient's place.
    let recipients = std::mem::take(&mut list.recipients);
    let request = CampaignRequest {
        template: Some(options.template.clone()),
        from: Some(MailboxInput::Text(options.from.clone())),
        subject: options.subject.clone(),
        vars: options.vars.clone(),
        recipients,
        list: options.list.clone(),
        pool: options.pool.clone(),
        ..CampaignRequest::default()
    };
    let composer = std::sync::Arc::clone(&app.composer);
    let mut ctx = Context::at(SystemTime::now());
    ctx.max_recipients = app.config.server.max_recipients;
    ctx.pools = app.config.egress.names().into();
    let prepared =
        tokio::task::spawn_blocking(move || prepare_campaign(request, &composer, None, &ctx))
            .await
            .map_err(|e| {
                SendError::Invalid(Invalid {
                    field: String::new(),
                    message: e.to_string(),
                })
            })?
            .map_err(|invalid| match list.locate(&invalid.field) {
                Some(place) => SendError::Recipient {
                    place,
                    message: invalid.message,
                },
                None => SendError::Invalid(invalid),
            })?;
    let requested = prepared.requested;
    let (job, recipients) = prepared.into_parts();
    let started = Instant::now();
    let (id, total) = match app.queue.submit(job, recipients, SystemTime::now()).await? {
        SubmitOutcome::Created { id, recipients } | SubmitOutcome::Existing { id, recipients } => {
            (id, recipients)
        }
        SubmitOutcome::IdempotencyConflict | SubmitOutcome::IdempotencyInProgress => {
            unreachable!("no idempotency key was given")
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let dispatch = app.start_delivery(stop_rx)?;
    let deadline = started + options.max_wait;
    let mut counts = Counts::default();
    loop {
        if let Some(status) = app.queue.job(&id).await? {
            counts = status.counts;
            progress(&counts);
        }
        let unfinished = counts.queued + counts.deferred;
        if (unfinished == 0 && counts.total > 0) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let unstored = dispatch.join().await;
    if unstored.outcomes > 0 {
        return Err(SendError::Unstored(unstored.outcomes));
    }
    if let Some(status) = app.queue.job(&id).await? {
        counts = status.counts;
        progress(&counts);
    }
    if let Some(path) = &options.report {
        write_report(app, &id, path).await?;
    }
    let p = app.metrics.percentiles(Stage::Delivery);
    Ok(Summary {
        job: id.to_string(),
        recipients: total,
        merged: requested.saturating_sub(usize::try_from(total).unwrap_or(usize::MAX)),
        delivered: counts.delivered,
        bounced: counts.bounced,
        deferred: counts.deferred + counts.queued,
        expired: counts.expired,
        suppressed: counts.suppressed,
        elapsed_s: elapsed,
        messages_per_second: f64::from(counts.delivered) / elapsed.max(1e-9),
        latency_ms: Latency {
            p50: p.p50,
            p90: p.p90,
            p99: p.p99,
            p999: p.p999,
        },
    })
}

/// One JSON line per recipient: `to`, `outcome`, `reply`.
async fn write_report(app: &App, id: &JobId, path: &PathBuf) -> Result<(), SendError> {
    let error = |source| SendError::Report {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::create(path).map_err(error)?;
    let mut out = std::io::BufWriter::new(file);
    let mut after = None;
    loop {
        let page = app.queue.recipients(id, after, 1000).await?;
        for r in &page {
            // Not final yet: still queued for `volley serve`, which counts as deferred.
            let outcome = r.state.final_kind().unwrap_or(EventKind::Deferred);
            let line = serde_json::json!({"to": r.to, "outcome": outcome, "reply": r.last_reply});
            writeln!(out, "{line}").map_err(error)?;
        }
        match page.last() {
            Some(last) if page.len() == 1000 => after = Some(last.index),
            _ => break,
        }
    }
    out.flush().map_err(error)
}
