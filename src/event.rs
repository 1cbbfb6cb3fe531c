//! The words for what happened to a delivery: one enum, one spelling. Events, the job
//! counts, the Redis backend, metrics labels, logs, the `volley send` summary and the
//! dashboard all name outcomes through [`EventKind::as_str`].

use serde::{Deserialize, Serialize};

/// What an attempt (or a decision not to attempt) came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The receiving server took responsibility for the message.
    Delivered,
    /// A transient failure: retried later.
    Deferred,
    /// A permanent failure (a 5xx reply, or a local refusal such as null MX): not retried.
    Bounced,
    /// Retried until the maximum age, then given up (4.4.7).
    Expired,
    /// Not sent: the address is on the suppression list.
    Suppressed,
    /// The recipient reported the message as spam (an ARF feedback report, received
    /// after delivery).
    Complained,
}

impl EventKind {
    /// Every kind, in the order the API lists counts.
    pub const ALL: [EventKind; 6] = [
        EventKind::Delivered,
        EventKind::Deferred,
        EventKind::Bounced,
        EventKind::Expired,
        EventKind::Suppressed,
        EventKind::Complained,
    ];

    /// The lower-case name used in JSON, metrics labels, logs and Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Delivered => "delivered",
            EventKind::Deferred => "deferred",
            EventKind::Bounced => "bounced",
            EventKind::Expired => "expired",
            EventKind::Suppressed => "suppressed",
            EventKind::Complained => "complained",
        }
    }

    /// The kind named `name` (the inverse of [`Self::as_str`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Its position in [`Self::ALL`]: a compact code for storage and arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// True when nothing more will happen to the delivery.
    pub fn is_final(self) -> bool {
        self != EventKind::Deferred
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for (i, kind) in EventKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), i);
            assert_eq!(EventKind::from_name(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert_eq!(EventKind::from_name("Delivered"), None);
    }
}
