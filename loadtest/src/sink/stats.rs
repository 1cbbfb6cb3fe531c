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
        assert!(json.ends_with("\"peak_connections\":0}"));
    }
}
