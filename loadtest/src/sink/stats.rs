//! Counters: lock-free atomics shared by all connections ([`Counters`]) and the plain
//! snapshot handed to callers ([`Stats`]).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Declares the live counter struct and its snapshot with the same field list, so the two can
/// never drift apart.
macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Live counters. Relaxed ordering: each counter is independent and only read for
        /// reporting, so no ordering between them is needed.
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $( pub(crate) $name: AtomicU64, )*
        }

        impl Counters {
            /// Reads every counter.
            pub(crate) fn snapshot(&self) -> Stats {
                Stats { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }

        /// A snapshot of the sink's counters.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct Stats {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Stats {
            /// The counters as `(name, value)` pairs, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($name), self.$name), )* ]
            }
        }
    };
}

counters! {
    /// Accepted TCP connections.
    connections,
    /// Completed TLS handshakes (STARTTLS or implicit TLS).
    tls_sessions,
    /// Accepted messages (once per message, whatever its number of recipients).
    messages,
    /// RCPT commands answered 250.
    recipients_accepted,
    /// RCPT commands answered with a 4xx or 5xx.
    recipients_rejected,
    /// Reply flushes that answered two or more commands.
    pipelined_groups,
    /// Command lines received (not counting message content or AUTH responses).
    commands,
    /// Bytes received after TLS decryption.
    bytes_received,
    /// Successful AUTH exchanges.
    auth_successes,
    /// Failed AUTH exchanges.
    auth_failures,
    /// Messages refused because of a bare CR or LF in their content (strict mode).
    bare_newlines,
    /// Commands received before the previous reply while PIPELINING was not in effect
    /// (strict mode).
    pipelining_violations,
    /// Connections closed abruptly because of a `drop*` recipient.
    dropped,
    /// RSET commands.
    rsets,
    /// QUIT commands.
    quits,
    /// Connections open now.
    open_connections,
    /// Most connections open at the same time.
    peak_connections,
    /// Most messages accepted within one second (any window of ten consecutive 100 ms
    /// steps since the sink started): what a rate limit must keep down.
    peak_one_second,
}

impl Counters {
    /// Adds `n` to one counter.
    #[inline]
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to one counter.
    #[inline]
    pub(super) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Messages accepted per 100 ms step, in a ring of the last steps, to find the busiest
/// second. Lock-free: each slot packs its step number (high 32 bits) and its count.
#[derive(Debug)]
pub(crate) struct Pace {
    start: std::time::Instant,
    slots: [AtomicU64; PACE_SLOTS],
}

/// Steps per window (ten 100 ms steps: one second) and slots kept (more than a window,
/// so a step being written never overlaps one being summed).
const PACE_WINDOW: u64 = 10;
const PACE_SLOTS: usize = 32;

impl Default for Pace {
    fn default() -> Self {
        Self {
            start: std::time::Instant::now(),
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Pace {
    /// Counts one accepted message; raises `peak` to the busiest second seen.
    pub(crate) fn accepted(&self, peak: &AtomicU64) {
        let step =
            u64::try_from(self.start.elapsed().as_millis() / 100).unwrap_or(u64::MAX) & 0xFFFF_FFFF;
        let slot = &self.slots[usize::try_from(step).unwrap_or(0) % PACE_SLOTS];
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let next = if current >> 32 == step {
                current + 1
            } else {
                (step << 32) | 1
            };
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        let window: u64 = (0..PACE_WINDOW)
            .filter_map(|back| step.checked_sub(back))
            .map(|s| {
                let v = self.slots[usize::try_from(s).unwrap_or(0) % PACE_SLOTS]
                    .load(Ordering::Relaxed);
                if v >> 32 == s { v & 0xFFFF_FFFF } else { 0 }
            })
            .sum();
        peak.fetch_max(window, Ordering::Relaxed);
    }
}

impl Stats {
    /// One JSON object with every counter, e.g. `{"connections":1,"tls_sessions":0,...}`.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (name, value)) in self.fields().into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // Field names are Rust identifiers, so they never need JSON escaping.
            let _ = write!(out, "\"{name}\":{value}");
        }
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lists_every_field() {
        let counters = Counters::default();
        Counters::inc(&counters.messages);
        Counters::add(&counters.bytes_received, 42);
        let json = counters.snapshot().to_json();
        assert!(json.starts_with("{\"connections\":0,"));
        assert!(json.contains("\"messages\":1"));
        assert!(json.contains("\"bytes_received\":42"));
        assert!(json.ends_with("\"peak_one_second\":0}"));
    }

    #[test]
    fn pace_counts_the_busiest_second() {
        let counters = Counters::default();
        let pace = Pace::default();
        for _ in 0..7 {
            pace.accepted(&counters.peak_one_second);
        }
        assert_eq!(counters.snapshot().peak_one_second, 7);
    }
}
