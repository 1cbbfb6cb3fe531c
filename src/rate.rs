//! Rate limits: specs like `"500/s"` or `"10000/h"` and the limiters built from
//! them (governor's GCRA), on tokio's clock so that paused-time tests control them.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

    /// The limiter for this rate, `None` when unlimited. The burst is one second's
    /// worth (at least one message), so `"10000/h"` does not send 10000 at once.
    pub fn limiter(&self) -> Option<Limiter> {
        let (count, per) = self.limit?;
        let period = per / count.get();
        let per_second = Duration::from_secs(1).as_nanos() / period.as_nanos().max(1);
        let per_second = u32::try_from(per_second).unwrap_or(u32::MAX);
        let burst = NonZeroU32::new(per_second.clamp(1, count.get())).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)?.allow_burst(burst);
        Some(Limiter(RateLimiter::direct_with_clock(quota, TokioClock)))
    }
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
pub struct Limiter(
    RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>,
);

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Limiter")
    }
}

impl Limiter {
    /// Waits (with tokio's sleep) until one message may go.
    pub async fn acquire(&self) {
        while let Err(not_until) = self.0.check() {
            let wait = not_until.wait_time_from(TokioClock.now());
            tokio::time::sleep(wait.max(Duration::from_micros(50))).await;
        }
    }

    /// Takes a slot if one is free now.
    pub fn try_acquire(&self) -> bool {
        self.0.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // A burst of 10, then 20 more at 10 per second.
        assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(2100), "{elapsed:?}");
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
}
