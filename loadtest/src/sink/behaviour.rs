//! Scripted recipient behaviours, chosen by the recipient's local part, plus the random and
//! hashed failure rates. The state that must survive across connections (tempfail attempt
//! counts, greylist memory) lives here.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What to answer to a RCPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RcptVerdict {
    /// `250 2.1.5`.
    Accept,
    /// `250 2.1.5` after the configured slow delay.
    AcceptSlow,
    /// `250 2.1.5`, but the connection is dropped once the message body starts.
    AcceptThenDrop,
    /// Reject with this reply line; the transaction goes on.
    Reject(&'static str),
    /// Reply with this line, then close the connection.
    RejectAndClose(&'static str),
}

pub(crate) const TEMPFAIL: &str = "451 4.3.0 temporary failure, try again later";
pub(crate) const PERMFAIL: &str = "550 5.1.1 no such user";
const GREYLISTED: &str = "451 4.7.1 greylisted, try again later";
const QUOTA: &str = "452 4.2.2 mailbox full";
const BYE: &str = "421 4.7.0 closing connection";

/// Decides RCPT answers. Shared by all connections of a sink.
#[derive(Debug)]
pub(crate) struct Behaviours {
    seed: u64,
    tempfail_percent: f64,
    permfail_percent: f64,
    /// Per-attempt randomness: a counter run through a mixing function. Deterministic for a
    /// given order of attempts, which is all a load test needs.
    attempts: AtomicU64,
    /// `tempfail-N-*` attempts seen so far, by lower-cased full address.
    tempfail_counts: Mutex<HashMap<String, u64>>,
    /// `greylist*` addresses already tried once, lower-cased.
    greylisted: Mutex<HashSet<String>>,
}

impl Behaviours {
    pub(super) fn new(seed: u64, tempfail_percent: f64, permfail_percent: f64) -> Self {
        Self {
            seed,
            tempfail_percent,
            permfail_percent,
            attempts: AtomicU64::new(0),
            tempfail_counts: Mutex::new(HashMap::new()),
            greylisted: Mutex::new(HashSet::new()),
        }
    }

    /// Decides the answer to `RCPT TO:<address>`.
    pub(super) fn decide(&self, address: &str) -> RcptVerdict {
        let local = local_part(address);
        if let Some(rest) = strip_prefix_ci(local, "tempfail") {
            return self.tempfail_n(address, rest);
        }
        if starts_with_ci(local, "permfail") {
            return RcptVerdict::Reject(PERMFAIL);
        }
        if starts_with_ci(local, "greylist") {
            let first = lock(&self.greylisted).insert(address.to_ascii_lowercase());
            return if first {
                RcptVerdict::Reject(GREYLISTED)
            } else {
                RcptVerdict::Accept
            };
        }
        if starts_with_ci(local, "slow") {
            return RcptVerdict::AcceptSlow;
        }
        if starts_with_ci(local, "quota") {
            return RcptVerdict::Reject(QUOTA);
        }
        if starts_with_ci(local, "drop") {
            return RcptVerdict::AcceptThenDrop;
        }
        if starts_with_ci(local, "bye") {
            return RcptVerdict::RejectAndClose(BYE);
        }
        if self.permfail_percent > 0.0 && self.hashed_permfail(address) {
            return RcptVerdict::Reject(PERMFAIL);
        }
        if self.tempfail_percent > 0.0 {
            let n = self.attempts.fetch_add(1, Ordering::Relaxed);
            if unit(mix(self.seed ^ mix(n))) * 100.0 < self.tempfail_percent {
                return RcptVerdict::Reject(TEMPFAIL);
            }
        }
        RcptVerdict::Accept
    }

    /// Whether VRFY should deny this address (the `permfail*` local parts).
    pub(super) fn vrfy_denied(&self, address: &str) -> bool {
        starts_with_ci(local_part(address), "permfail")
    }

    /// `tempfail-N-*`: 451 for the first N attempts on the full address, then accepted.
    /// `tempfail*` without a readable N fails every time.
    fn tempfail_n(&self, address: &str, rest: &str) -> RcptVerdict {
        let limit = rest.strip_prefix('-').and_then(|r| {
            let digits = r.split('-').next().unwrap_or_default();
            digits.parse::<u64>().ok()
        });
        let Some(limit) = limit else {
            return RcptVerdict::Reject(TEMPFAIL);
        };
        let mut counts = lock(&self.tempfail_counts);
        let attempts = counts.entry(address.to_ascii_lowercase()).or_insert(0);
        *attempts = attempts.saturating_add(1);
        if *attempts <= limit {
            RcptVerdict::Reject(TEMPFAIL)
        } else {
            RcptVerdict::Accept
        }
    }

    fn hashed_permfail(&self, address: &str) -> bool {
        let mut h = fnv1a(address.to_ascii_lowercase().as_bytes());
        h = mix(h ^ self.seed);
        unit(h) * 100.0 < self.permfail_percent
    }
}

/// Locks a mutex, recovering the data if another session panicked while holding it (the maps
/// hold plain counters, which stay meaningful).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The part of an address before the last `@` (the whole address if there is none).
pub(crate) fn local_part(address: &str) -> &str {
    address.rsplit_once('@').map_or(address, |(local, _)| local)
}

pub(crate) fn starts_with_ci(s: &str, prefix: &str) -> bool {
    strip_prefix_ci(s, prefix).is_some()
}

/// `s` without `prefix`, compared ignoring ASCII case.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.as_bytes().get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix.as_bytes()) {
        // The prefix is ASCII and matched byte for byte, so this is a char boundary.
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// FNV-1a: a stable hash (unlike std's, which may change between Rust releases), so a seed
/// gives the same permfail set on every build.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64 finaliser: turns correlated inputs (counters, similar hashes) into
/// well-spread values.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps a 64-bit value onto [0, 1).
fn unit(v: u64) -> f64 {
    (v >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> Behaviours {
        Behaviours::new(1, 0.0, 0.0)
    }

    #[test]
    fn prefixes_are_case_insensitive() {
        let b = plain();
        assert_eq!(b.decide("PermFail-x@a"), RcptVerdict::Reject(PERMFAIL));
        assert_eq!(b.decide("QUOTA@a"), RcptVerdict::Reject(QUOTA));
        assert_eq!(b.decide("Slow1@a"), RcptVerdict::AcceptSlow);
        assert_eq!(b.decide("drop@a"), RcptVerdict::AcceptThenDrop);
        assert_eq!(b.decide("bye@a"), RcptVerdict::RejectAndClose(BYE));
        assert_eq!(b.decide("alice@a"), RcptVerdict::Accept);
        // Only the local part decides.
        assert_eq!(b.decide("alice@permfail.example"), RcptVerdict::Accept);
    }

    #[test]
    fn tempfail_n_counts_per_address() {
        let b = plain();
        for _ in 0..2 {
            assert_eq!(b.decide("tempfail-2-bob@x"), RcptVerdict::Reject(TEMPFAIL));
        }
        assert_eq!(b.decide("Tempfail-2-Bob@X"), RcptVerdict::Accept);
        assert_eq!(
            b.decide("tempfail-2-carol@x"),
            RcptVerdict::Reject(TEMPFAIL)
        );
        assert_eq!(b.decide("tempfail-0-dave@x"), RcptVerdict::Accept);
        // No readable N: always fails.
        assert_eq!(b.decide("tempfail@x"), RcptVerdict::Reject(TEMPFAIL));
        assert_eq!(b.decide("tempfail-zz@x"), RcptVerdict::Reject(TEMPFAIL));
        assert_eq!(
            b.decide("tempfail-99999999999999999999999-x@x"),
            RcptVerdict::Reject(TEMPFAIL)
        );
    }

    #[test]
    fn greylist_once() {
        let b = plain();
        assert_eq!(b.decide("greylist@x"), RcptVerdict::Reject(GREYLISTED));
        assert_eq!(b.decide("greylist@x"), RcptVerdict::Accept);
    }

    #[test]
    fn hashed_permfail_is_stable_and_roughly_proportional() {
        let b = Behaviours::new(7, 0.0, 30.0);
        let c = Behaviours::new(7, 0.0, 30.0);
        let mut failed = 0;
        for i in 0..10_000 {
            let addr = format!("user{i}@example.com");
            let verdict = b.decide(&addr);
            assert_eq!(verdict, c.decide(&addr));
            assert_eq!(verdict, b.decide(&addr), "retries get the same answer");
            if verdict != RcptVerdict::Accept {
                failed += 1;
            }
        }
        assert!((2_500..3_500).contains(&failed), "{failed}");
    }

    #[test]
    fn random_tempfail_rate() {
        let b = Behaviours::new(3, 50.0, 0.0);
        let failed = (0..10_000)
            .filter(|_| b.decide("a@b") != RcptVerdict::Accept)
            .count();
        assert!((4_500..5_500).contains(&failed), "{failed}");
    }

    #[test]
    fn non_ascii_local_parts_do_not_panic() {
        let b = plain();
        assert_eq!(b.decide("é@x"), RcptVerdict::Accept);
        assert_eq!(b.decide("tempféil@x"), RcptVerdict::Accept);
        assert_eq!(b.decide(""), RcptVerdict::Accept);
    }
}
