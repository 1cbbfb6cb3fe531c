//! The dispatcher's ledger: every lease it holds (so they can be renewed while they
//! wait in the engine, and so a report is completed with the right fencing token), and
//! each recipient domain's share of the engine's backlog.
//!
//! Shares: a domain may hold as much of the backlog as it can send in [`HORIZON`] at the
//! rate it has shown (never less than [`FLOOR`]); before its rate is known, an eighth of
//! the backlog. Deliveries over the share go back to the queue for a while, all of one
//! round for the same wait; the wait doubles with each round the domain is still over
//! when the last round's deliveries come back, up to [`MAX_WAIT`], and starts again
//! once the domain uses less than half its share. So the queue's head moves on to other
//! domains: a throttled or rate-limited site cannot fill the engine and starve the
//! others, it is asked about a shrinking number of times, and a fast one is not held
//! back once its rate is known.
//!
//! Shared by the feeder, the completer and the renewer through a std mutex: each holds it
//! for a few map operations and never across an `.await`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::queue::{DeliveryId, Held, LeaseToken};

/// How much work a domain may have in the engine: what it sends in this long.
pub(super) const HORIZON: Duration = Duration::from_secs(10);
/// A domain may always hold this many deliveries in the engine.
pub(super) const FLOOR: usize = 100;
/// The longest a delivery over its domain's share waits before it is leased again.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(60);
/// The first wait of a delivery over its domain's share.
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// A domain's rate is the completions of the last second, smoothed.
const RATE_STEP: Duration = Duration::from_secs(1);

/// One lease the dispatcher holds.
#[derive(Debug)]
struct Lease {
    token: LeaseToken,
    domain: Arc<str>,
    /// Admitted into the engine (counted in its domain's share).
    in_engine: bool,
    /// The bytes of its own built message (0 while not built, or when its body is
    /// shared with other deliveries of its job).
    bytes: usize,
    /// Set when the lease is lost: the engine then skips the delivery if it has not
    /// started sending it.
    cancelled: Arc<AtomicBool>,
}

/// A domain's use of the engine.
#[derive(Debug)]
struct Share {
    in_engine: usize,
    /// Completions per second, smoothed; `None` until a first second has passed.
    rate: Option<f64>,
    counted: u64,
    since: Instant,
    /// The wait of deliveries over the share in the current round.
    wait: Duration,
    /// When the current round of postponements started; `None` when under the share.
    round: Option<Instant>,
}

impl Share {
    fn new(now: Instant) -> Self {
        Self {
            in_engine: 0,
            rate: None,
            counted: 0,
            since: now,
            wait: FIRST_WAIT,
            round: None,
        }
    }

    fn update_rate(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < RATE_STEP {
            return;
        }
        let measured = self.counted as f64 / elapsed.as_secs_f64();
        self.rate = Some(match self.rate {
            Some(rate) => 0.5 * rate + 0.5 * measured,
            None => measured,
        });
        self.counted = 0;
        self.since = now;
    }

    fn limit(&self, capacity: usize) -> usize {
        match self.rate {
            None => (capacity / 8).max(FLOOR),
            Some(rate) => {
                let sendable = (rate * HORIZON.as_secs_f64()).min(capacity as f64);
                // Saturating float to integer: `as` is the conversion wanted here.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let sendable = sendable as usize;
                sendable.clamp(FLOOR, capacity.max(FLOOR))
            }
        }
    }
}

/// What the dispatcher holds and how the engine's backlog is shared.
#[derive(Debug)]
pub(super) struct Ledger {
    capacity: usize,
    leases: HashMap<DeliveryId, Lease>,
    shares: HashMap<Arc<str>, Share>,
    /// The sum of the held leases' `bytes`.
    bytes: usize,
}

impl Ledger {
    /// A ledger for an engine that holds at most `capacity` deliveries.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            leases: HashMap::new(),
            shares: HashMap::new(),
            bytes: 0,
        }
    }

    /// The bytes of the built messages held now (each per-recipient body once).
    pub(super) fn held_bytes(&self) -> usize {
        self.bytes
    }

    /// Records that a held delivery's own message, `bytes` long, is built and held
    /// until its lease is taken back or lost.
    pub(super) fn carry(&mut self, id: &DeliveryId, bytes: usize) {
        if let Some(lease) = self.leases.get_mut(id) {
            self.bytes = self.bytes - lease.bytes + bytes;
            lease.bytes = bytes;
        }
    }

    /// Leases held now, from the moment they were leased until they are resolved,
    /// released or lost.
    pub(super) fn held_count(&self) -> usize {
        self.leases.len()
    }

    /// Records a lease as soon as it is taken, so it is renewed while it is checked,
    /// built and sent; returns the flag that cancels it when the lease is lost.
    pub(super) fn hold(
        &mut self,
        id: DeliveryId,
        token: LeaseToken,
        domain: &str,
    ) -> Arc<AtomicBool> {
        let domain = match self.shares.get_key_value(domain) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(domain),
        };
        let cancelled = Arc::new(AtomicBool::new(false));
        self.leases.insert(
            id,
            Lease {
                token,
                domain,
                in_engine: false,
                bytes: 0,
                cancelled: Arc::clone(&cancelled),
            },
        );
        cancelled
    }

    /// The cancel flag of a held lease; `None` once it is lost.
    pub(super) fn hold_flag(&self, id: &DeliveryId) -> Option<Arc<AtomicBool>> {
        self.leases.get(id).map(|l| Arc::clone(&l.cancelled))
    }

    /// Whether a held delivery may go into the engine now, within its domain's share
    /// (then it counts there until it is taken back); if not, how long it should wait
    /// in the queue.
    pub(super) fn admit(&mut self, id: &DeliveryId, now: Instant) -> Result<(), Duration> {
        let capacity = self.capacity;
        let Some(lease) = self.leases.get_mut(id) else {
            return Ok(());
        };
        let share = self
            .shares
            .entry(Arc::clone(&lease.domain))
            .or_insert_with(|| Share::new(now));
        share.update_rate(now);
        let limit = share.limit(capacity);
        if share.in_engine < limit {
            if share.in_engine < limit / 2 {
                share.wait = FIRST_WAIT;
                share.round = None;
            }
            share.in_engine += 1;
            lease.in_engine = true;
            return Ok(());
        }
        match share.round {
            // The last round's deliveries are back and the domain is still over.
            Some(started) if now >= started + share.wait => {
                share.wait = (share.wait * 2).min(MAX_WAIT);
                share.round = Some(now);
            }
            Some(_) => {}
            None => share.round = Some(now),
        }
        Err(share.wait)
    }

    /// Takes back the lease of a resolved or released delivery: its token, or `None`
    /// when the lease was lost meanwhile (then nothing about the delivery may be
    /// recorded: its new holder decides). `attempted` counts it towards its domain's rate.
    pub(super) fn take(
        &mut self,
        id: &DeliveryId,
        attempted: bool,
        now: Instant,
    ) -> Option<LeaseToken> {
        let lease = self.leases.remove(id)?;
        self.bytes -= lease.bytes;
        if lease.in_engine
            && let Some(share) = self.shares.get_mut(&lease.domain)
        {
            share.in_engine = share.in_engine.saturating_sub(1);
            if attempted {
                share.counted += 1;
                share.update_rate(now);
            }
        }
        Some(lease.token)
    }

    /// Every lease held, for renewal.
    pub(super) fn held(&self) -> Vec<Held> {
        self.leases.iter().map(|(id, l)| (*id, l.token)).collect()
    }

    /// The leases the queue says are lost: cancelled in the engine (if not yet sent) and
    /// forgotten, so that no report of theirs is recorded. Returns how many were held.
    pub(super) fn lose(&mut self, lost: &[DeliveryId]) -> usize {
        let mut n = 0;
        for id in lost {
            if let Some(lease) = self.leases.remove(id) {
                self.bytes -= lease.bytes;
                lease.cancelled.store(true, Ordering::Relaxed);
                if lease.in_engine
                    && let Some(share) = self.shares.get_mut(&lease.domain)
                {
                    share.in_engine = share.in_engine.saturating_sub(1);
                }
                n += 1;
            }
        }
        n
    }

    /// Forgets the domains with nothing in the engine and no news for a minute.
    pub(super) fn tidy(&mut self, now: Instant) {
        self.shares.retain(|_, s| {
            s.in_engine > 0 || now.saturating_duration_since(s.since) < Duration::from_secs(60)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::JobId;

    fn id(index: u32) -> DeliveryId {
        DeliveryId {
            job: JobId::from_bytes([7; 16]),
            index,
        }
    }

    /// Holds and admits delivery `i` of `domain`.
    fn enter(ledger: &mut Ledger, i: u32, domain: &str, now: Instant) -> Result<(), Duration> {
        ledger.hold(id(i), LeaseToken(1), domain);
        ledger.admit(&id(i), now)
    }

    #[test]
    fn an_unknown_domain_gets_an_eighth_then_waits_longer_each_round() {
        let t0 = Instant::now();
        let mut ledger = Ledger::new(800);
        for i in 0..100 {
            assert_eq!(enter(&mut ledger, i, "slow.example", t0), Ok(()), "{i}");
        }
        // One round: every delivery over the share waits the same.
        let round: Vec<_> = (100..105)
            .map(|i| enter(&mut ledger, i, "slow.example", t0))
            .collect();
        assert_eq!(round, [Err(Duration::from_secs(1)); 5]);
        // Each time they come back to a domain still over, the wait doubles.
        let mut at = t0;
        let mut waits = Vec::new();
        for i in 0..8 {
            at += Duration::from_secs(61);
            let wait = enter(&mut ledger, 200 + i, "slow.example", at).unwrap_err();
            waits.push(wait.as_secs());
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(
            enter(&mut ledger, 300, "other.example", at),
            Ok(()),
            "others go on"
        );
        // Once the domain drains below half its share, the waits start again.
        for i in 0..60 {
            ledger.take(&id(i), true, at);
        }
        assert_eq!(enter(&mut ledger, 400, "slow.example", at), Ok(()));
        for i in 0..60 {
            let _ = enter(&mut ledger, 500 + i, "slow.example", at);
        }
        assert_eq!(
            enter(&mut ledger, 600, "slow.example", at),
            Err(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_slow_domain_is_held_to_what_it_sends_and_a_fast_one_is_not() {
        let t0 = Instant::now();
        let mut ledger = Ledger::new(20_000);
        // Slow: 2 completions a second; fast: 5,000 a second.
        let mut next = 0;
        for (domain, per_second) in [("slow.example", 2), ("fast.example", 5_000)] {
            for second in 0..3u32 {
                let now = t0 + Duration::from_secs(u64::from(second));
                for _ in 0..per_second {
                    enter(&mut ledger, next, domain, now).unwrap();
                    ledger.take(&id(next), true, now);
                    next += 1;
                }
            }
        }
        let now = t0 + Duration::from_secs(3);
        // The slow domain may hold the floor (2/s over the horizon is below it).
        for i in 0..u32::try_from(FLOOR).unwrap() {
            assert_eq!(enter(&mut ledger, 100_000 + i, "slow.example", now), Ok(()));
        }
        assert!(enter(&mut ledger, 199_999, "slow.example", now).is_err());
        // The fast one may fill the engine.
        for i in 0..15_000u32 {
            assert_eq!(
                enter(&mut ledger, 200_000 + i, "fast.example", now),
                Ok(()),
                "{i}"
            );
        }
    }

    #[test]
    fn lost_leases_are_cancelled_and_their_reports_ignored() {
        let t0 = Instant::now();
        let mut ledger = Ledger::new(100);
        let kept = ledger.hold(id(1), LeaseToken(3), "a.example");
        let lost = ledger.hold(id(2), LeaseToken(4), "a.example");
        ledger.admit(&id(2), t0).unwrap();
        assert_eq!(ledger.held().len(), 2);
        assert_eq!(ledger.lose(&[id(2), id(9)]), 1);
        assert!(lost.load(Ordering::Relaxed) && !kept.load(Ordering::Relaxed));
        assert!(
            ledger.take(&id(2), true, t0).is_none(),
            "its report is not recorded"
        );
        assert_eq!(ledger.take(&id(1), true, t0), Some(LeaseToken(3)));
        assert_eq!(ledger.held_count(), 0);
    }

    #[test]
    fn built_messages_count_until_their_lease_is_taken_back_or_lost() {
        let t0 = Instant::now();
        let mut ledger = Ledger::new(100);
        for i in 1..=3 {
            ledger.hold(id(i), LeaseToken(u64::from(i)), "a.example");
        }
        ledger.carry(&id(1), 100_000);
        ledger.carry(&id(2), 50_000);
        ledger.carry(&id(2), 60_000);
        assert_eq!(
            ledger.held_bytes(),
            160_000,
            "a rebuilt message counts once"
        );
        ledger.carry(&id(9), 1_000);
        assert_eq!(
            ledger.held_bytes(),
            160_000,
            "a lease not held counts nothing"
        );
        ledger.take(&id(1), true, t0);
        assert_eq!(ledger.held_bytes(), 60_000);
        ledger.lose(&[id(2)]);
        assert_eq!(ledger.held_bytes(), 0);
        ledger.take(&id(3), true, t0);
        assert_eq!((ledger.held_bytes(), ledger.held_count()), (0, 0));
    }
}
