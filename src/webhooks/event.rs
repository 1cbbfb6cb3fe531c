//! One delivery event as a webhook carries it, and the RFC 3339 timestamps in it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One event as sent, in JSON:
/// `{"cursor": 17, "job": "...", "index": 3, "to": "a@b", "event": "delivered",
/// "reply": "250 2.0.0 ok", "at": "2026-11-30T12:00:00Z"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Position in the event log; strictly increasing. Receivers deduplicate by it.
    pub cursor: u64,
    /// The job (message or campaign) the recipient belongs to.
    pub job: String,
    /// The recipient's index within the job.
    pub index: u32,
    /// The recipient's address.
    pub to: String,
    /// `delivered`, `deferred`, `bounced`, `expired` or `suppressed`.
    pub event: String,
    /// The last SMTP reply, when there was one (`null` otherwise).
    pub reply: Option<String>,
    /// When it happened, RFC 3339 in UTC (see [`rfc3339`]).
    pub at: String,
}

/// Formats `t` as RFC 3339 in UTC to the second, e.g. `2026-11-30T12:34:56Z`
/// (humantime's formatter). Sub-second parts are dropped; a time before 1970 (a
/// clock gone badly wrong) is written as the epoch rather than failing.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t.max(UNIX_EPOCH)).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: i64) -> SystemTime {
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs as u64)
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
    fn serializes_missing_reply_as_null() {
        let event = WebhookEvent {
            cursor: 17,
            job: "j1".into(),
            index: 3,
            to: "a@b.example".into(),
            event: "deferred".into(),
            reply: None,
            at: "2026-11-30T12:00:00Z".into(),
        };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(
            json,
            r#"{"cursor":17,"job":"j1","index":3,"to":"a@b.example","event":"deferred","reply":null,"at":"2026-11-30T12:00:00Z"}"#
        );
    }
}
