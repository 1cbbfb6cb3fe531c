//! Time as volley stores and shows it: Unix milliseconds (the queue's unit, the
//! dashboard's axis) and RFC 3339 text (the API's and the webhooks' JSON). One helper
//! each, so every layer converts the same way.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 before it, `u64::MAX` beyond what fits (a clock
/// 584 million years out).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The inverse of [`unix_ms`].
pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// `t` as RFC 3339 in UTC to the second, e.g. `2026-11-30T12:34:56Z` (humantime's
/// formatter). Sub-second parts are dropped; a time before 1970 (a clock gone badly
/// wrong) is written as the epoch, and one after 9999 as its last second, rather than
/// failing: RFC 3339 has four-digit years.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t.clamp(UNIX_EPOCH, last_rfc3339_second())).to_string()
}

/// 9999-12-31T23:59:59Z.
fn last_rfc3339_second() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(253_402_300_799)
}

/// Serde: a `SystemTime` field written as [`rfc3339`] text.
pub fn serialize_rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// Serde: an optional `SystemTime` field written as [`rfc3339`] text or `null`.
pub fn serialize_rfc3339_opt<S: serde::Serializer>(
    t: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&rfc3339(*t)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> SystemTime {
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    }

    #[test]
    fn formats_known_instants() {
        let table = [
            (0, "1970-01-01T00:00:00Z"),
            (86_399, "1970-01-01T23:59:59Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_709_164_800, "2024-02-29T00:00:00Z"),
            (1_709_251_199, "2024-02-29T23:59:59Z"),
            (1_709_251_200, "2024-03-01T00:00:00Z"),
            (1_735_689_599, "2024-12-31T23:59:59Z"),
            (1_796_042_096, "2026-11-30T12:34:56Z"),
            (4_107_542_400, "2100-03-01T00:00:00Z"),
            (-1, "1970-01-01T00:00:00Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
            (i64::from(u32::MAX) * 1000, "9999-12-31T23:59:59Z"),
        ];
        for (secs, want) in table {
            assert_eq!(rfc3339(at(secs)), want, "{secs} s since the epoch");
        }
    }

    #[test]
    fn drops_fractions_toward_the_past() {
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_999)),
            "1970-01-01T00:00:01Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_millis(500)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn milliseconds_round_trip_and_saturate() {
        for ms in [0, 1, 1_796_042_096_123] {
            assert_eq!(unix_ms(from_unix_ms(ms)), ms);
        }
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
