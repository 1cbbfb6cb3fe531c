//! The retry schedule: when a transient failure is tried again, and when a message
//! has waited long enough and expires (4.4.7).

use std::time::{Duration, SystemTime};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::outcome::{Disposition, Outcome};

/// `[retry]`: the delays between attempts and the longest a message may wait.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Delay before each retry; the last step repeats. Default
    /// `["5m", "10m", "30m", "1h", "2h", "4h"]`.
    #[serde(with = "durations")]
    pub schedule: Vec<Duration>,
    /// After this long since the first attempt a transient failure expires instead
    /// of being retried. Default `"5d"`.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Random spread added to each delay, as a fraction (0.1 = up to +/-10%), so that
    /// retries of a large campaign do not all land in the same second. Default 0.1.
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(n * 60);
        Self {
            schedule: vec![m(5), m(10), m(30), m(60), m(120), m(240)],
            max_age: Duration::from_secs(5 * 86_400),
            jitter: 0.1,
        }
    }
}

/// Serde for a list of human durations (`["5m", "1h"]`).
mod durations {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            list.iter()
                .map(|d| humantime::format_duration(*d).to_string()),
        )
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        let list = texts
            .iter()
            .map(|t| {
                humantime::parse_duration(t)
                    .map_err(|e| serde::de::Error::custom(format!("{t:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if list.is_empty() {
            return Err(serde::de::Error::custom(
                "the retry schedule needs at least one step",
            ));
        }
        Ok(list)
    }
}

/// What to do with a recipient after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Delivered: done.
    Delivered,
    /// Permanent failure: bounce.
    Bounce,
    /// Transient failure: try again at this time.
    RetryAt(SystemTime),
    /// Transient failure, but the message is too old: give up (4.4.7).
    Expire,
}

impl RetryConfig {
    /// The delay before retry number `attempts` (1 = after the first attempt),
    /// without jitter.
    pub fn delay(&self, attempts: u32) -> Duration {
        let step = (attempts.max(1) - 1) as usize;
        self.schedule
            .get(step)
            .or(self.schedule.last())
            .copied()
            .unwrap_or(Duration::from_secs(300))
    }

    /// Decides after attempt number `attempts` of a message first tried (or accepted)
    /// at `created`.
    pub fn decide(
        &self,
        outcome: &Outcome,
        attempts: u32,
        created: SystemTime,
        now: SystemTime,
    ) -> Decision {
        match outcome.disposition {
            Disposition::Delivered => Decision::Delivered,
            Disposition::Permanent => Decision::Bounce,
            Disposition::Transient => {
                let mut delay = self.delay(attempts);
                if self.jitter > 0.0 {
                    let spread = rand::rng().random_range(-self.jitter..=self.jitter);
                    delay = delay.mul_f64((1.0 + spread).max(0.0));
                }
                // Too many recipients: a new transaction now, not a later retry.
                if outcome.too_many_recipients {
                    delay = Duration::ZERO;
                }
                let at = now + delay;
                let age = at.duration_since(created).unwrap_or_default();
                if age > self.max_age {
                    Decision::Expire
                } else {
                    Decision::RetryAt(at)
                }
            }
        }
    }
}

/// The detail recorded for an expired recipient: 4.4.7 and the last reply.
pub fn expiry_detail(last: &Outcome) -> String {
    format!("4.4.7 message expired; last attempt: {}", last.detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::classify;
    use crate::smtp::{Phase, ReplyParser, SmtpError};

    fn outcome(wire: &str) -> Outcome {
        let reply = ReplyParser::parse_slice(format!("{wire}\r\n").as_bytes())
            .unwrap()
            .unwrap();
        if reply.is_positive() {
            classify(&Ok(reply))
        } else {
            classify(&Err(SmtpError::Reply {
                phase: Phase::Rcpt,
                reply,
            }))
        }
    }

    #[test]
    fn follows_the_schedule_and_repeats_the_last_step() {
        let retry = RetryConfig {
            jitter: 0.0,
            ..RetryConfig::default()
        };
        let secs: Vec<u64> = (1..=8).map(|a| retry.delay(a).as_secs()).collect();
        assert_eq!(secs, [300, 600, 1800, 3600, 7200, 14_400, 14_400, 14_400]);
    }

    #[test]
    fn decides_by_disposition_and_age() {
        let retry = RetryConfig {
            schedule: vec![Duration::from_secs(1), Duration::from_secs(2)],
            max_age: Duration::from_secs(10),
            jitter: 0.0,
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            retry.decide(&outcome("250 ok"), 1, t0, t0),
            Decision::Delivered
        );
        assert_eq!(
            retry.decide(&outcome("550 5.1.1 no"), 1, t0, t0),
            Decision::Bounce
        );
        let tempfail = outcome("451 4.3.0 later");
        assert_eq!(
            retry.decide(&tempfail, 1, t0, t0),
            Decision::RetryAt(t0 + Duration::from_secs(1))
        );
        assert_eq!(
            retry.decide(&tempfail, 3, t0, t0 + Duration::from_secs(5)),
            Decision::RetryAt(t0 + Duration::from_secs(7))
        );
        assert_eq!(
            retry.decide(&tempfail, 9, t0, t0 + Duration::from_secs(9)),
            Decision::Expire
        );
        let too_many = outcome("452 4.5.3 Too many recipients");
        assert_eq!(retry.decide(&too_many, 1, t0, t0), Decision::RetryAt(t0));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let retry = RetryConfig::default();
        let t0 = SystemTime::now();
        for _ in 0..200 {
            let Decision::RetryAt(at) = retry.decide(&outcome("451 later"), 1, t0, t0) else {
                panic!()
            };
            let delay = at.duration_since(t0).unwrap().as_secs_f64();
            assert!((270.0..=330.0).contains(&delay), "{delay}");
        }
    }

    #[test]
    fn reads_the_config_section() {
        let cfg: RetryConfig =
            serde_json::from_str(r#"{"schedule": ["1s", "2s"], "max_age": "30s"}"#).unwrap();
        assert_eq!(
            cfg.schedule,
            [Duration::from_secs(1), Duration::from_secs(2)]
        );
        assert_eq!(cfg.max_age, Duration::from_secs(30));
    }
}
