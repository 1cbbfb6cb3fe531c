//! A lane's worker: sends a batch of deliveries on one pooled session, as fast as the
//! rate limits allow and no faster, classifies every recipient's result and reports it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use deadpool::managed::{Object, PoolError};

use super::window::Sample;
use super::{Delivery, Job, LaneContext, PooledSession, Report, SessionManager, Via};
use crate::event::EventKind;
use crate::metrics::Stage;
use crate::outcome::{Disposition, Outcome, classify, is_stale_connection};
use crate::rate::{Passage, next_group};
use crate::smtp::{Phase, RecipientResult, SmtpError, Transaction};

/// How a worker's batch ended.
#[derive(Debug)]
pub(super) struct Done<K> {
    /// The site asked us to slow down.
    pub(super) throttled: bool,
    /// Deliveries not attempted because the site throttled us first: back to the
    /// lane's queue, to go when the site allows.
    pub(super) unsent: Vec<Job<K>>,
}

/// Sends `batch` on one session, in groups as the rate limits free permits: each group
/// is one pipelined exchange. Stops early when the site throttles us.
pub(super) async fn work<K: Sync>(ctx: &LaneContext<K>, batch: Vec<Job<K>>) -> Done<K> {
    let mut pending: VecDeque<Job<K>> = batch.into();
    // Past the rate limits already, but more than the connection had left to carry.
    let mut passed: Vec<Job<K>> = Vec::new();
    let mut held = None;
    let mut session: Option<Object<SessionManager>> = None;
    let mut stopping = ctx.stopping.subscribe();
    while !pending.is_empty() || !passed.is_empty() {
        let mut group = if passed.is_empty() {
            tokio::select! {
                group = next_group(&mut pending, &mut held, |job| passage(ctx, job)) => group,
                _ = stopping.wait_for(|stop| *stop) => {
                    // Shutting down while waiting for a permit: nothing was sent of these.
                    return Done {
                        throttled: false,
                        unsent: pending.into(),
                    };
                }
            }
        } else {
            std::mem::take(&mut passed)
        };
        let live = match session.take() {
            Some(s) => s,
            None => match checkout(ctx).await {
                Ok(s) => s,
                Err(e) => {
                    let throttled = fail_all(ctx, group.into_iter().chain(pending), &e);
                    return Done {
                        throttled,
                        unsent: Vec::new(),
                    };
                }
            },
        };
        if paused(ctx) {
            // The site asked for a pause (here, or another worker of the cluster) while
            // these waited for permits or a connection: nothing more goes until it ends.
            drop(live);
            for job in group.into_iter().chain(passed).rev() {
                pending.push_front(job);
            }
            return Done {
                throttled: false,
                unsent: pending.into(),
            };
        }
        // A connection carries `max_messages_per_connection` and no more, whatever the
        // window: the rest goes on the next one.
        let left = usize::try_from(ctx.max_messages.saturating_sub(live.transactions()))
            .unwrap_or(usize::MAX)
            .max(1);
        let capped = group.len() > left;
        if capped {
            passed = group.split_off(left);
        }
        let (live, throttled) = send_group(ctx, live, group, capped).await;
        session = live;
        if throttled {
            let unsent = passed.into_iter().chain(pending).collect();
            return Done { throttled, unsent };
        }
    }
    Done {
        throttled: false,
        unsent: Vec::new(),
    }
}

/// Whether the site is in a pause it asked for.
fn paused<K>(ctx: &LaneContext<K>) -> bool {
    let now = crate::time::unix_ms(std::time::SystemTime::now());
    ctx.counters.paused_until_ms.load(Relaxed) > now
        || ctx.provider.as_ref().is_some_and(|p| p.paused_at(now))
}

/// The limits one delivery must pass: global, its site's, its domain's, its pool's
/// warm-up.
fn passage<'a, K>(ctx: &'a LaneContext<K>, job: &Job<K>) -> Passage<'a> {
    let domain = job.delivery.to.domain().to_ascii_lowercase();
    Passage::new(
        ctx.shared_limits
            .global
            .iter()
            .chain(&ctx.site_limit)
            .chain(ctx.shared_limits.domains.get(&domain))
            .chain(ctx.egress.warmup_limiter())
            .chain(ctx.provider.as_ref().and_then(|p| p.limiter.as_ref())),
    )
}

/// Sends one group in one pipelined exchange and reports every delivery. Returns the
/// session when it can be used again, and whether the site throttled us.
async fn send_group<K: Sync>(
    ctx: &LaneContext<K>,
    mut session: Object<SessionManager>,
    group: Vec<Job<K>>,
    capped: bool,
) -> (Option<Object<SessionManager>>, bool) {
    // Deliveries cancelled while they waited are handed back unattempted.
    let (cancelled, group): (Vec<Job<K>>, Vec<Job<K>>) = group
        .into_iter()
        .partition(|job| job.delivery.cancelled.load(Relaxed));
    for job in cancelled {
        report(ctx, job.delivery, None);
    }
    if group.is_empty() {
        return (Some(session), false);
    }
    let started = std::time::Instant::now();
    for job in &group {
        ctx.metrics.record(
            Stage::QueueWait,
            started.saturating_duration_since(job.delivery.queued_at),
        );
    }
    let n = group.len();
    let _in_flight = ctx.metrics.in_flight(n);
    let reused = session.transactions() > 0;
    let mut results = send(&mut session, &group).await;
    if reused && results.iter().all(is_stale_connection) {
        // The server closed an idle pooled connection before we used it: nothing
        // was accepted, so the group goes again on a fresh connection, once.
        drop(Object::take(session));
        session = match checkout(ctx).await {
            Ok(session) => session,
            Err(e) => return (None, fail_all(ctx, group, &e)),
        };
        results = send(&mut session, &group).await;
    }
    let elapsed = started.elapsed();
    // The group's replies all arrive in one pipelined exchange: one sample per message.
    ctx.metrics.record_many(
        Stage::Transaction,
        elapsed,
        u64::try_from(n).unwrap_or(u64::MAX),
    );
    let (tls, policy) = match session.host_tls() {
        Some((policy, label)) => (policy, Some(label)),
        None => (ctx.tls, ctx.policy),
    };
    let via = Arc::new(Via::new(
        Arc::clone(&ctx.egress.name),
        session.local_addr().map(|a| a.ip()),
        tls,
        session.is_tls(),
        policy,
    ));
    ctx.metrics.count_egress(
        &via.pool,
        via.source,
        (via.tls.as_str(), via.policy.unwrap_or_default()),
        via.encrypted,
        u64::try_from(n).unwrap_or(u64::MAX),
    );
    let mut throttled = false;
    let mut clean = session.is_usable();
    for (i, (job, result)) in group.into_iter().zip(results).enumerate() {
        let mut outcome = classify(&result);
        if let Some(provider) = &ctx.provider
            && outcome.disposition == Disposition::Transient
            && let Some((action, pause)) = provider.rule_for(&outcome.detail, ctx.throttle_pause)
        {
            // The provider's own way of saying "slow down": every site of it pauses.
            let until = crate::time::unix_ms(std::time::SystemTime::now() + pause);
            provider.pause_until(until);
            ctx.counters.paused_until_ms.fetch_max(until, Relaxed);
            if let Some(cluster) = &ctx.shared_limits.cluster {
                cluster
                    .slots
                    .report_throttle(&provider.cluster_key(), pause);
            }
            outcome.throttle = true;
            tracing::info!(site = %ctx.site_key, provider = %provider.name, ?action, ?pause, reply = %outcome.detail, "provider rule: pausing");
        }
        throttled |= outcome.throttle;
        clean &= outcome.disposition != Disposition::Transient && !outcome.throttle;
        if i + 1 == n {
            // For operators: the site's latest reply, recorded once per group.
            ctx.counters.set_last_reply(&outcome.detail);
        }
        report_via(ctx, job.delivery, Some(outcome), Some(&via));
    }
    let window = ctx.window.observe(&Sample {
        sent: n,
        capped,
        exchange: session.last_exchange(),
        elapsed,
        clean,
    });
    if ctx.counters.window.swap(window as u64, Relaxed) != window as u64 {
        tracing::debug!(site = %ctx.site_key, window, sent = n, ?elapsed, exchange = ?session.last_exchange(), clean, "pipelining window changed");
    }
    if !session.is_usable() || session.transactions() >= ctx.max_messages {
        // The next group goes on a new connection now, not a round trip later.
        ctx.quitting.spawn(Object::take(session).quit());
        return (None, throttled);
    }
    (Some(session), throttled)
}

async fn checkout<K>(ctx: &LaneContext<K>) -> Result<Object<SessionManager>, SmtpError> {
    ctx.pool.get().await.map_err(|e| match e {
        PoolError::Backend(e) => e,
        other => SmtpError::Io {
            phase: Phase::Connect,
            kind: std::io::ErrorKind::Other,
            message: other.to_string(),
        },
    })
}

async fn send<K: Sync>(session: &mut PooledSession, batch: &[Job<K>]) -> Vec<RecipientResult> {
    let txs: Vec<Transaction<'_>> = batch
        .iter()
        .map(|job| Transaction {
            from: job.delivery.from.as_ref(),
            to: std::slice::from_ref(&job.delivery.to),
            body: &job.delivery.body,
        })
        .collect();
    session
        .send(&txs)
        .await
        .into_iter()
        .map(|mut r| r.swap_remove(0))
        .collect()
}

/// No session could be opened: every delivery of the batch gets that failure.
fn fail_all<K>(
    ctx: &LaneContext<K>,
    batch: impl IntoIterator<Item = Job<K>>,
    err: &SmtpError,
) -> bool {
    let outcome = classify(&Err(err.clone()));
    tracing::debug!(site = %ctx.site_key, error = %err, "could not open a session");
    let throttled = outcome.throttle;
    ctx.counters.set_last_reply(&outcome.detail);
    for job in batch {
        report(ctx, job.delivery, Some(outcome.clone()));
    }
    throttled
}

/// Reports one delivery to the engine's caller, counting its outcome.
pub(super) fn report<K>(ctx: &LaneContext<K>, delivery: Delivery<K>, outcome: Option<Outcome>) {
    report_via(ctx, delivery, outcome, None);
}

/// Reports one delivery attempted on a connection, with how it left.
fn report_via<K>(
    ctx: &LaneContext<K>,
    delivery: Delivery<K>,
    outcome: Option<Outcome>,
    via: Option<&Arc<Via>>,
) {
    if let Some(outcome) = &outcome {
        let (counted, site_counter) = match outcome.disposition {
            Disposition::Delivered => (EventKind::Delivered, &ctx.counters.delivered),
            Disposition::Transient => (EventKind::Deferred, &ctx.counters.deferred),
            Disposition::Permanent => (EventKind::Bounced, &ctx.counters.bounced),
        };
        ctx.metrics.count(counted);
        site_counter.fetch_add(1, Relaxed);
        ctx.metrics
            .record(Stage::Delivery, delivery.queued_at.elapsed());
    }
    let Delivery { key, to, .. } = delivery;
    let _ = ctx.reports.send(Report {
        key,
        to,
        site: Some(Arc::clone(&ctx.site_key)),
        outcome,
        via: via.cloned(),
    });
}
