//! A site's pipelining window: how many transactions a connection is handed in one
//! go. It starts at `[smtp] batch_size`. While the round trip is long and the server
//! answers a whole window in about as many round trips as the exchange needed, the
//! window doubles, up to `[smtp] max_pipeline`: over a real network a connection then
//! carries more mail per round trip. Only BDAT exchanges grow it: with DATA one
//! message is in flight whatever the window. A transient failure, a throttle or a
//! lost connection halves it; it grows back to its start on clean exchanges.
//!
//! The window stays at its start on a short round trip, where a bigger one gains
//! nothing: every transaction in flight is one that a crash leaves undecided.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::smtp::Exchange;

/// A round trip at least this long is worth more transactions per round.
pub(crate) const LONG_ROUND_TRIP: Duration = Duration::from_millis(2);

/// What one pipelined exchange showed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    /// Transactions sent in it.
    pub(crate) sent: usize,
    /// Fewer than the window because the connection had no more to carry: as good
    /// as a full window.
    pub(crate) capped: bool,
    /// Its round trips, from the session.
    pub(crate) exchange: Exchange,
    /// How long the whole exchange took.
    pub(crate) elapsed: Duration,
    /// No transient failure, no throttle, and the connection is still usable.
    pub(crate) clean: bool,
}

/// A site's window, shared by its workers.
#[derive(Debug)]
pub(crate) struct Window {
    current: AtomicUsize,
    start: usize,
    max: usize,
}

impl Window {
    /// A window at `start`, growing to at most `max` (both at least 1).
    pub(crate) fn new(start: usize, max: usize) -> Self {
        let start = start.max(1);
        Self {
            current: AtomicUsize::new(start),
            start,
            max: max.max(start),
        }
    }

    /// Transactions to hand a connection now.
    pub(crate) fn get(&self) -> usize {
        self.current.load(Relaxed)
    }

    /// Learns from one exchange; returns the window after it.
    pub(crate) fn observe(&self, sample: &Sample) -> usize {
        // Several workers report at once: each sample applies to the latest value.
        let step = |now| next(now, self.start, self.max, sample);
        let before = self
            .current
            .fetch_update(Relaxed, Relaxed, |now| Some(step(now)))
            .unwrap_or_else(|now| now);
        step(before)
    }
}

/// The window after `sample`, from `current`.
fn next(current: usize, start: usize, max: usize, sample: &Sample) -> usize {
    if !sample.clean {
        return (current / 2).max(1);
    }
    if sample.sent < current && !sample.capped {
        // Not a full window: it says nothing about a bigger one.
        return current;
    }
    if current < start {
        return (current * 2).min(start);
    }
    let Exchange { rounds, fastest } = sample.exchange;
    // Only an exchange that carried several transactions per round trip (BDAT) argues
    // for a bigger window. With DATA one message is in flight whatever the window: a
    // bigger one saves the hand-off's round trip (1 in 17 at the start) but lets one
    // connection hold a longer batch when the queue runs dry, and in runs of a few
    // seconds that tail cost more than it saved (`loadtest/RESULTS.md`).
    let Some(fastest) = fastest.filter(|_| rounds > 0 && sample.sent > rounds as usize) else {
        return current;
    };
    // Each round took at most twice the fastest: the server and the link kept up,
    // and waiting for replies is what bounds the connection.
    let keeps_up = sample.elapsed <= fastest.saturating_mul(2 * rounds);
    match (fastest >= LONG_ROUND_TRIP, keeps_up) {
        (true, true) => (current * 2).min(max),
        // Past its start and the server no longer keeps up: back off towards it.
        (_, false) if current > start => (current / 2).max(start),
        _ => current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn sample(sent: usize, rounds: u32, fastest_ms: u64, elapsed_ms: u64) -> Sample {
        Sample {
            sent,
            capped: false,
            exchange: Exchange {
                rounds,
                fastest: Some(ms(fastest_ms)),
            },
            elapsed: ms(elapsed_ms),
            clean: true,
        }
    }

    #[test]
    fn a_long_round_trip_that_the_server_keeps_up_with_doubles_the_window_up_to_the_most() {
        let w = Window::new(16, 64);
        assert_eq!(w.observe(&sample(16, 1, 25, 27)), 32);
        assert_eq!(w.observe(&sample(32, 1, 25, 30)), 64);
        assert_eq!(
            w.observe(&sample(64, 2, 25, 60)),
            64,
            "never past max_pipeline"
        );
    }

    #[test]
    fn a_short_round_trip_keeps_the_window_at_its_start() {
        let w = Window::new(16, 64);
        let loopback = Sample {
            exchange: Exchange {
                rounds: 1,
                fastest: Some(Duration::from_micros(150)),
            },
            elapsed: Duration::from_micros(200),
            ..sample(16, 1, 0, 0)
        };
        assert_eq!(w.observe(&loopback), 16);
    }

    #[test]
    fn a_window_not_filled_or_not_pipelined_teaches_nothing() {
        let w = Window::new(16, 64);
        assert_eq!(w.observe(&sample(9, 1, 25, 26)), 16, "a part-filled window");
        let unpipelined = Sample {
            exchange: Exchange::default(),
            ..sample(16, 0, 0, 400)
        };
        assert_eq!(w.observe(&unpipelined), 16);
    }

    #[test]
    fn a_window_cut_short_by_the_connections_message_limit_counts_as_full() {
        let w = Window::new(16, 64);
        let capped = Sample {
            capped: true,
            ..sample(5, 1, 25, 26)
        };
        assert_eq!(w.observe(&capped), 32);
    }

    #[test]
    fn a_server_that_falls_behind_brings_a_grown_window_back_towards_its_start() {
        let w = Window::new(16, 64);
        w.observe(&sample(16, 1, 25, 26));
        w.observe(&sample(32, 1, 25, 26));
        // 64 messages answered over 400 ms on a 25 ms round trip: the server is the bound.
        assert_eq!(w.observe(&sample(64, 1, 25, 400)), 32);
        assert_eq!(w.observe(&sample(32, 1, 25, 400)), 16);
        assert_eq!(
            w.observe(&sample(16, 1, 25, 400)),
            16,
            "never below its start"
        );
    }

    #[test]
    fn failures_halve_it_and_clean_exchanges_bring_it_back_to_its_start() {
        let w = Window::new(16, 64);
        let failed = Sample {
            clean: false,
            ..sample(16, 1, 0, 1)
        };
        assert_eq!(w.observe(&failed), 8);
        assert_eq!(w.observe(&failed), 4);
        for _ in 0..5 {
            w.observe(&failed);
        }
        assert_eq!(w.get(), 1, "never below one");
        let clean = |n| Sample {
            exchange: Exchange {
                rounds: 1,
                fastest: Some(Duration::from_micros(100)),
            },
            elapsed: Duration::from_micros(150),
            ..sample(n, 1, 0, 0)
        };
        assert_eq!(w.observe(&clean(1)), 2);
        assert_eq!(w.observe(&clean(2)), 4);
        assert_eq!(w.observe(&clean(4)), 8);
        assert_eq!(w.observe(&clean(8)), 16);
        assert_eq!(
            w.observe(&clean(16)),
            16,
            "a short round trip stops at the start"
        );
    }

    #[test]
    fn one_message_per_round_trip_never_grows_the_window() {
        // DATA without CHUNKING: 16 messages are 17 rounds of 25 ms.
        let w = Window::new(16, 64);
        assert_eq!(w.observe(&sample(16, 17, 25, 17 * 26)), 16);
    }
}
