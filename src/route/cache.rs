//! A bounded cache of routing answers, each kept until its TTL runs out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{RouteError, Site};

/// How long a permanent failure (NXDOMAIN, null MX) is remembered.
pub(super) const NEGATIVE_TTL: Duration = Duration::from_secs(300);
/// How long a temporary failure is remembered, so that a burst of messages to a
/// broken domain asks the resolver once, not once per message.
pub(super) const TEMPORARY_TTL: Duration = Duration::from_secs(5);

pub(super) type Answer = Result<Arc<Site>, RouteError>;

pub(super) struct RouteCache {
    entries: HashMap<String, (Answer, Instant)>,
    capacity: usize,
}

impl RouteCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub(super) fn get(&self, domain: &str, now: Instant) -> Option<Answer> {
        let (answer, expires) = self.entries.get(domain)?;
        (now < *expires).then(|| answer.clone())
    }

    pub(super) fn insert(
        &mut self,
        domain: String,
        answer: Answer,
        expires: Instant,
        now: Instant,
    ) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&domain) {
            self.entries.retain(|_, (_, e)| *e > now);
            if self.entries.len() >= self.capacity {
                // Still full of live entries: drop an arbitrary half rather than
                // keep a list ordered by use; a dropped domain is just looked up again.
                let drop: Vec<String> = self
                    .entries
                    .keys()
                    .take(self.capacity / 2 + 1)
                    .cloned()
                    .collect();
                for key in drop {
                    self.entries.remove(&key);
                }
            }
        }
        self.entries.insert(domain, (answer, expires));
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nx(d: &str) -> Answer {
        Err(RouteError::NoSuchDomain(d.into()))
    }

    #[test]
    fn expires_and_stays_bounded() {
        let now = Instant::now();
        let mut cache = RouteCache::new(4);
        cache.insert(
            "a.test".into(),
            nx("a.test"),
            now + Duration::from_secs(1),
            now,
        );
        assert!(cache.get("a.test", now).is_some());
        assert!(cache.get("a.test", now + Duration::from_secs(2)).is_none());
        for i in 0..100 {
            cache.insert(
                format!("d{i}.test"),
                nx("x"),
                now + Duration::from_secs(60),
                now,
            );
            assert!(cache.len() <= 4);
        }
        assert!(
            cache.get("d99.test", now).is_some(),
            "the newest entry is kept"
        );
    }
}
