//! The delivery loop: walks the event log after a cursor, posts batches, retries a
//! refused batch with capped exponential backoff, and records progress only after an
//! acknowledgement. It runs in its own task, so a slow or dead receiver delays
//! nothing but its own events.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;

use crate::queue::Event;

use super::WebhookClient;

/// Where the loop reads events and records how far it got; the serve layer
/// implements it over the queue's event log.
pub trait EventSource: Send + Sync + 'static {
    /// Up to `limit` events whose cursor is greater than `cursor`, in cursor order.
    fn events_after(
        &self,
        cursor: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Event>, String>> + Send;

    /// Records that every event up to `cursor` has been acknowledged, so that a
    /// restart resumes after it.
    fn save_cursor(&self, cursor: u64) -> impl Future<Output = Result<(), String>> + Send;
}

/// First wait after a failure; doubles on each further failure up to `max_backoff`.
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);

/// Delivers events after `start_cursor` until `shutdown` turns true (or its sender
/// is dropped). When the log has nothing new it waits `poll` before asking again.
/// A batch is retried until the receiver acknowledges it (1s, 2s, 4s… capped at
/// `max_backoff`, with jitter); events behind it wait, so they arrive in order.
/// The cursor is saved after each acknowledged batch, never before. A batch in
/// flight at shutdown is abandoned, and sent again after a restart.
///
/// Spawn it: `tokio::spawn(webhooks::run(client, source, cursor, poll, shutdown))`.
pub async fn run<S: EventSource>(
    client: WebhookClient,
    source: Arc<S>,
    start_cursor: u64,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut cursor = start_cursor;
    let mut backoff = Backoff::new(INITIAL_BACKOFF, client.max_backoff);
    loop {
        let fetched = until_shutdown(
            &mut shutdown,
            source.events_after(cursor, client.batch_size),
        );
        let mut batch = match fetched.await {
            None => return,
            Some(Ok(batch)) => batch,
            Some(Err(error)) => {
                let wait = backoff.next_delay();
                tracing::warn!(%error, cursor, ?wait, "webhooks: reading events failed");
                if !sleep_until_shutdown(&mut shutdown, wait).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        // A source returning more than asked must not make a batch larger than the
        // receiver was promised; the rest comes on the next read.
        batch.truncate(client.batch_size);
        let Some(last) = batch.iter().map(|e| e.cursor).max() else {
            if !sleep_until_shutdown(&mut shutdown, poll).await {
                return;
            }
            continue;
        };
        if !post_until_acknowledged(&client, &batch, &mut backoff, &mut shutdown).await {
            return;
        }
        cursor = last;
        // A failed save only means a restart sends these events again: delivery is at
        // least once anyway, so go on rather than stall the stream.
        if let Err(error) = source.save_cursor(cursor).await {
            tracing::warn!(%error, cursor, "webhooks: saving the cursor failed");
        }
    }
}

/// Posts `batch` until it is acknowledged (true) or shutdown is asked (false).
async fn post_until_acknowledged(
    client: &WebhookClient,
    batch: &[Event],
    backoff: &mut Backoff,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        match until_shutdown(shutdown, client.post(batch)).await {
            None => return false,
            Some(Ok(())) => {
                tracing::debug!(
                    events = batch.len(),
                    attempt,
                    "webhooks: batch acknowledged"
                );
                backoff.reset();
                return true;
            }
            Some(Err(error)) => {
                let wait = backoff.next_delay();
                tracing::warn!(%error, attempt, ?wait, "webhooks: batch not acknowledged");
                if !sleep_until_shutdown(shutdown, wait).await {
                    return false;
                }
            }
        }
    }
}

/// Runs `work` unless shutdown is asked first (then `None`, and `work` is dropped).
async fn until_shutdown<F: Future>(
    shutdown: &mut watch::Receiver<bool>,
    work: F,
) -> Option<F::Output> {
    tokio::select! {
        // Shutdown first, so that a ready answer does not start one more round.
        biased;
        _ = shutdown.wait_for(|stop| *stop) => None,
        out = work => Some(out),
    }
}

/// Sleeps `wait`; false if shutdown was asked meanwhile.
async fn sleep_until_shutdown(shutdown: &mut watch::Receiver<bool>, wait: Duration) -> bool {
    until_shutdown(shutdown, tokio::time::sleep(wait))
        .await
        .is_some()
}

/// Capped exponential backoff with jitter.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            failures: 0,
        }
    }

    /// The wait before the next attempt: `initial * 2^failures` capped at `max`, then
    /// drawn from its upper half, so that many senders failing together (a receiver
    /// restarting) do not all come back in the same instant.
    fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut backoff = Backoff::new(secs(1), secs(10));
        for ceiling in [1, 2, 4, 8, 10, 10, 10] {
            let wait = backoff.next_delay();
            assert!(
                wait >= secs(ceiling) / 2 && wait <= secs(ceiling),
                "{wait:?} outside the upper half of {ceiling}s"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= secs(1));
    }

    #[test]
    fn backoff_survives_very_many_failures() {
        let mut backoff = Backoff::new(secs(1), secs(300));
        for _ in 0..10_000 {
            assert!(backoff.next_delay() <= secs(300));
        }
    }
}
