//! Rate limits: specs like `"500/s"` or `"10000/h"` and the limiters built from
//! them: governor's GCRA in the process, on tokio's clock so that paused-time tests
//! control them, or one GCRA shared by a cluster ([`PermitSource`], kept in Redis by
//! `cluster`), taken a few permits at a time.

use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How much of a rate may go at once: 10 ms' worth.
const BURST_SPAN: Duration = Duration::from_millis(10);

/// A rate: `count` messages per `per`. `"0"` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    /// Messages allowed per period; `None` is unlimited.
    limit: Option<(NonZeroU32, Duration)>,
}

/// A rate spec that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate {0:?}: expected \"0\" (unlimited) or N/s, N/m, N/h, N/d (e.g. \"500/s\")")]
pub struct RateError(pub String);

impl Rate {
    /// No limit.
    pub const UNLIMITED: Rate = Rate { limit: None };

    /// `count` per `per`; `count == 0` is unlimited.
    pub fn new(count: u32, per: Duration) -> Self {
        Self {
            limit: NonZeroU32::new(count)
                .filter(|_| !per.is_zero())
                .map(|n| (n, per)),
        }
    }

    /// Whether this is a real limit.
    pub fn is_limited(&self) -> bool {
        self.limit.is_some()
    }

    /// One permit's period and the burst: 10 ms' worth (at least one message), so the
    /// receiver sees the rate evenly spread, never a second's worth at once, while a fast
    /// rate still needs no timer finer than tokio's 1 ms.
    fn period_and_burst(&self) -> Option<(Duration, NonZeroU32)> {
        let (count, per) = self.limit?;
        let period = per / count.get();
        let burst = BURST_SPAN.as_nanos() / period.as_nanos().max(1);
        let burst = u32::try_from(burst).unwrap_or(u32::MAX);
        let burst = NonZeroU32::new(burst.clamp(1, count.get())).unwrap_or(NonZeroU32::MIN);
        Some((period, burst))
    }

    /// The limiter for this rate in this process, `None` when unlimited.
    pub fn limiter(&self) -> Option<Limiter> {
        let (period, burst) = self.period_and_burst()?;
        let quota = Quota::with_period(period)?.allow_burst(burst);
        Some(Limiter {
            kind: Kind::Local(RateLimiter::direct_with_clock(quota, TokioClock)),
            turn: tokio::sync::Mutex::new(()),
        })
    }

    /// The limiter for this rate shared by every process that uses `key` in `source`:
    /// `None` when unlimited.
    pub fn shared_limiter(&self, key: String, source: Arc<dyn PermitSource>) -> Option<Limiter> {
        let (period, burst) = self.period_and_burst()?;
        let slack = SHARED_SLACK.as_nanos() / period.as_nanos().max(1);
        let slack = u32::try_from(slack).unwrap_or(u32::MAX);
        let count = self.limit.map_or(u32::MAX, |(count, _)| count.get());
        Some(Limiter {
            kind: Kind::Shared(Shared {
                key,
                source,
                period,
                burst: burst.get(),
                // The burst is at most `count`, so this is never below it.
                tolerance: burst.get().saturating_add(slack).min(count),
                held: Mutex::new(Held::default()),
            }),
            turn: tokio::sync::Mutex::new(()),
        })
    }
}

/// What a [`PermitSource`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// This many permits (at least one, at most those asked) are ours, to use now.
    Granted(u32),
    /// None is free: ask again after this long.
    Wait(Duration),
}

/// A boxed future, for the object-safe [`PermitSource`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A GCRA kept outside the process, shared by every worker of a cluster: one permit per
/// `period` for `key`, at most `burst` permits ahead of time.
pub trait PermitSource: Send + Sync + fmt::Debug {
    /// Takes up to `want` permits of `key`. An error means the store could not be asked:
    /// no permit is taken (the limiter waits and asks again; it never sends without).
    fn take<'a>(
        &'a self,
        key: &'a str,
        period: Duration,
        burst: u32,
        want: u32,
    ) -> BoxFuture<'a, Result<Take, String>>;
}

/// Permits taken from the shared source but not used yet: used within [`HELD_FOR`] of
/// being granted, or dropped (a worker never saves up another's share).
#[derive(Debug, Default)]
struct Held {
    count: u32,
    granted: Option<tokio::time::Instant>,
}

/// How long permits taken from a shared source stay usable.
const HELD_FOR: Duration = Duration::from_millis(50);

/// Permits asked from a shared source at most at once. A worker asks for the whole burst
/// (10 ms' worth), so that one round trip to the source buys as much sending as the limit
/// allows; the others get what frees up next.
const SHARED_BATCH: u32 = 256;

/// How late a worker may ask the shared source without losing what accrued meanwhile.
/// The source keeps this much more than the burst: a worker asks again only after a
/// round trip and a wake-up on a busy machine, and a source that kept no more than the
/// burst lost whatever accrued in that time (at 6,000/s over three workers the cluster
/// sent 65-78 % of the limit; with the slack, 87-90 %). The receiver may see the
/// burst plus this at once after a pause: 40 ms' worth, well within a per-second limit.
const SHARED_SLACK: Duration = Duration::from_millis(30);

/// After the shared source failed, ask again this much later.
const SHARED_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug)]
struct Shared {
    key: String,
    source: Arc<dyn PermitSource>,
    period: Duration,
    /// Permits asked at once: the burst.
    burst: u32,
    /// Permits the source keeps ahead of time: the burst and [`SHARED_SLACK`]'s worth.
    tolerance: u32,
    held: Mutex<Held>,
}

impl Shared {
    /// Uses one held permit if there is a fresh one.
    fn use_held(&self) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = held.granted.is_some_and(|at| at.elapsed() <= HELD_FOR);
        if held.count > 0 && fresh {
            held.count -= 1;
            true
        } else {
            held.count = 0;
            false
        }
    }

    /// Asks the source until a permit is ours; keeps the rest of the grant.
    async fn take(&self) {
        loop {
            let want = self.burst.clamp(1, SHARED_BATCH);
            match self
                .source
                .take(&self.key, self.period, self.tolerance, want)
                .await
            {
                Ok(Take::Granted(n)) if n > 0 => {
                    let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
                    held.count = n - 1;
                    held.granted = Some(tokio::time::Instant::now());
                    return;
                }
                Ok(Take::Granted(_)) => tokio::time::sleep(self.period).await,
                Ok(Take::Wait(wait)) => {
                    // Until half the burst is free rather than one permit: a timer is no
                    // finer than a millisecond anyway, and nothing is lost by waiting less
                    // than the burst's span (the source keeps what was not taken).
                    let half = self.period * (want / 2);
                    tokio::time::sleep(wait + half).await;
                }
                Err(error) => {
                    tracing::warn!(key = %self.key, %error, "shared rate limit unavailable; waiting");
                    tokio::time::sleep(SHARED_RETRY).await;
                }
            }
        }
    }
}

/// A limiter's state: in this process, or shared.
enum Kind {
    Local(RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>),
    Shared(Shared),
}

impl FromStr for Rate {
    type Err = RateError;
    fn from_str(s: &str) -> Result<Self, RateError> {
        let err = || RateError(s.to_owned());
        let trimmed = s.trim();
        if trimmed == "0" || trimmed.is_empty() {
            return Ok(Self::UNLIMITED);
        }
        let (count, unit) = trimmed.split_once('/').ok_or_else(err)?;
        let count: u32 = count.trim().parse().map_err(|_| err())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            _ => return Err(err()),
        };
        Ok(Self::new(count, per))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit {
            None => f.write_str("0"),
            Some((count, per)) => {
                let unit = match per.as_secs() {
                    1 => "s",
                    60 => "m",
                    3600 => "h",
                    86_400 => "d",
                    _ => return write!(f, "{count}/{}s", per.as_secs_f64()),
                };
                write!(f, "{count}/{unit}")
            }
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// governor's clock on tokio's time, so `tokio::time::pause` applies to limits.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;
    fn now(&self) -> Self::Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// A rate limiter for one scope (global, a site, a domain).
pub struct Limiter {
    kind: Kind,
    /// Waiters queue here (tokio's mutex is FIFO), and only the first one sleeps until
    /// the next permit: otherwise every waiter would wake for every permit and all but
    /// one go back to sleep, which under a low limit and many connections cost more CPU
    /// than sending.
    turn: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Limiter")
    }
}

impl Limiter {
    /// Waits (with tokio's sleep) until one message may go; waiters are served in turn.
    pub async fn acquire(&self) {
        if self.try_acquire() {
            return;
        }
        let _turn = self.turn.lock().await;
        match &self.kind {
            Kind::Local(gcra) => {
                while let Err(not_until) = gcra.check() {
                    let wait = not_until.wait_time_from(TokioClock.now());
                    tokio::time::sleep(wait.max(Duration::from_micros(50))).await;
                }
            }
            Kind::Shared(shared) => {
                // A waiter ahead may have left permits behind.
                if !shared.use_held() {
                    shared.take().await;
                }
            }
        }
    }

    /// Takes a slot if one is free now (for a shared limit: one already taken from the
    /// source and not used yet; asking the source means waiting).
    pub fn try_acquire(&self) -> bool {
        match &self.kind {
            Kind::Local(gcra) => gcra.check().is_ok(),
            Kind::Shared(shared) => shared.use_held(),
        }
    }
}

/// One message's way through the limits that apply to it (global, site, domain...):
/// each limiter's permit is taken once, even when a non-blocking attempt got some of
/// them and not the others, so nothing is taken twice or lost.
#[derive(Debug)]
pub struct Passage<'a> {
    limiters: Vec<(&'a Limiter, bool)>,
}

impl<'a> Passage<'a> {
    /// A passage through `limiters`.
    pub fn new(limiters: impl IntoIterator<Item = &'a Limiter>) -> Self {
        Self {
            limiters: limiters.into_iter().map(|l| (l, false)).collect(),
        }
    }

    /// Takes every permit still missing if each is free now; true when all are held.
    pub fn try_pass(&mut self) -> bool {
        for (limiter, held) in &mut self.limiters {
            if !*held {
                if !limiter.try_acquire() {
                    return false;
                }
                *held = true;
            }
        }
        true
    }

    /// Waits for every permit still missing.
    pub async fn pass(&mut self) {
        for (limiter, held) in &mut self.limiters {
            if !*held {
                limiter.acquire().await;
                *held = true;
            }
        }
    }
}

/// Takes from the front of `pending` the messages that may go now, one permit per
/// message: waits for the first, then adds the next ones while their permits are free
/// at once. A message whose permits are only partly free stays first, with what it got
/// kept in `held` for the next call. So a connection sends as the rate allows, never a
/// batch's worth of permits saved up.
pub async fn next_group<'a, T>(
    pending: &mut std::collections::VecDeque<T>,
    held: &mut Option<Passage<'a>>,
    limits: impl Fn(&T) -> Passage<'a>,
) -> Vec<T> {
    let mut group = Vec::new();
    let Some(first) = pending.front() else {
        return group;
    };
    let mut passage = held.take().unwrap_or_else(|| limits(first));
    passage.pass().await;
    group.extend(pending.pop_front());
    while let Some(next) = pending.front() {
        let mut passage = limits(next);
        if !passage.try_pass() {
            *held = Some(passage);
            break;
        }
        group.extend(pending.pop_front());
    }
    group
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The most of `times` (sorted) in any one-second window starting at one of them.
    fn busiest_second(times: &[Duration]) -> usize {
        (0..times.len())
            .map(|i| times[i..].partition_point(|&t| t < times[i] + Duration::from_secs(1)))
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn parses_rate_specs() {
        let table = [
            ("0", Rate::UNLIMITED),
            ("500/s", Rate::new(500, Duration::from_secs(1))),
            ("10000/h", Rate::new(10_000, Duration::from_secs(3600))),
            (" 30 / m ", Rate::new(30, Duration::from_secs(60))),
            ("7/d", Rate::new(7, Duration::from_secs(86_400))),
            ("0/s", Rate::UNLIMITED),
        ];
        for (spec, want) in table {
            assert_eq!(spec.parse::<Rate>().unwrap(), want, "{spec}");
        }
        for bad in ["fast", "10", "10/w", "-1/s", "1.5/s", "/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        assert_eq!("500/s".parse::<Rate>().unwrap().to_string(), "500/s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_limiter_spaces_messages_on_paused_time() {
        let limiter = "10/s".parse::<Rate>().unwrap().limiter().unwrap();
        let start = tokio::time::Instant::now();
        for _ in 0..30 {
            limiter.acquire().await;
        }
        let elapsed = start.elapsed();
        // One at once, then 29 more at 10 per second: no second's worth in a burst.
        assert!(elapsed >= Duration::from_millis(2850), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(3000), "{elapsed:?}");
        assert!(Rate::UNLIMITED.limiter().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn hourly_rates_do_not_burst_the_hour() {
        let limiter = "3600/h".parse::<Rate>().unwrap().limiter().unwrap();
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire(), "one per second, burst of one");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limiter.try_acquire());
    }

    /// Two connections, each with a pipelined batch of 16, share a 10/s limit: in any
    /// one-second window the receiver sees at most the rate plus one per connection.
    #[tokio::test(start_paused = true)]
    async fn groups_follow_the_rate_in_every_second() {
        let limiter = Arc::new("10/s".parse::<Rate>().unwrap().limiter().unwrap());
        let start = tokio::time::Instant::now();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let connections: Vec<_> = (0..2)
            .map(|_| {
                let (limiter, sent) = (Arc::clone(&limiter), Arc::clone(&sent));
                tokio::spawn(async move {
                    let mut pending: std::collections::VecDeque<u32> = (0..16).collect();
                    let mut held = None;
                    while !pending.is_empty() {
                        let group = next_group(&mut pending, &mut held, |_| {
                            Passage::new([limiter.as_ref()])
                        })
                        .await;
                        let at = start.elapsed();
                        sent.lock().unwrap().extend(group.iter().map(|_| at));
                        // The pipelined exchange takes a moment.
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                })
            })
            .collect();
        for c in connections {
            c.await.unwrap();
        }
        let mut times = sent.lock().unwrap().clone();
        times.sort();
        assert_eq!(times.len(), 32);
        let busiest = busiest_second(&times);
        assert!(busiest <= 10 + 2, "{busiest} messages in one second");
        let last = times.iter().max().unwrap();
        assert!(
            *last >= Duration::from_millis(3000),
            "the rate holds: {last:?}"
        );
    }

    /// An in-memory GCRA (the Redis script's arithmetic) whose answers take a round
    /// trip of 1 ms, and every fourth one 15 ms: a worker on a busy machine, woken late.
    #[derive(Debug, Default)]
    struct SlowSource {
        tat: Mutex<Option<tokio::time::Instant>>,
        asked: std::sync::atomic::AtomicU32,
    }

    impl PermitSource for SlowSource {
        fn take<'a>(
            &'a self,
            _key: &'a str,
            period: Duration,
            burst: u32,
            want: u32,
        ) -> BoxFuture<'a, Result<Take, String>> {
            Box::pin(async move {
                let asked = self
                    .asked
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let round_trip = Duration::from_millis(if asked % 4 == 3 { 15 } else { 1 });
                let now = tokio::time::Instant::now();
                let answer = {
                    let mut tat = self.tat.lock().unwrap();
                    let at = tat.unwrap_or(now).max(now);
                    let room = (now + period * burst - at).as_nanos() / period.as_nanos();
                    let n = u32::try_from(room).unwrap().min(want);
                    if n == 0 {
                        Take::Wait(at + period - (now + period * burst))
                    } else {
                        *tat = Some(at + period * n);
                        Take::Granted(n)
                    }
                };
                tokio::time::sleep(round_trip).await;
                Ok(answer)
            })
        }
    }

    /// Some asks of the shared source come back later than the burst's span: the
    /// limiter still reaches the rate (what accrued meanwhile is kept for it) and never
    /// passes more than the rate and the source's slack in any second.
    #[tokio::test(start_paused = true)]
    async fn a_shared_limit_keeps_what_accrues_while_a_worker_is_late() {
        let source = Arc::new(SlowSource::default());
        let limiter = "1000/s"
            .parse::<Rate>()
            .unwrap()
            .shared_limiter("global".into(), source)
            .unwrap();
        let start = tokio::time::Instant::now();
        let mut times = Vec::new();
        while start.elapsed() < Duration::from_secs(3) {
            limiter.acquire().await;
            times.push(start.elapsed());
        }
        let sent = times.len();
        assert!(sent >= 2_700, "{sent} permits in 3 s at 1000/s");
        let busiest = busiest_second(&times);
        assert!(busiest <= 1_000 + 40, "{busiest} permits in one second");
    }

    #[tokio::test(start_paused = true)]
    async fn a_partly_free_passage_keeps_what_it_took() {
        let wide = "1000/s".parse::<Rate>().unwrap().limiter().unwrap();
        let narrow = "1/s".parse::<Rate>().unwrap().limiter().unwrap();
        let mut first = Passage::new([&wide, &narrow]);
        assert!(first.try_pass());
        let mut second = Passage::new([&wide, &narrow]);
        assert!(!second.try_pass(), "the narrow limit is spent");
        // The wide permit it took is kept: passing later takes only the narrow one.
        let before = tokio::time::Instant::now();
        second.pass().await;
        assert!(before.elapsed() >= Duration::from_millis(900));
        assert!(second.try_pass(), "nothing more to take");
    }
}
