//! The adaptive throttle of one site: a throttling reply halves the site's
//! concurrency and pauses it; afterwards the concurrency comes back one step at a
//! time. Other sites are untouched, and nothing bounces because of it.

use std::time::Duration;

use tokio::time::Instant;

/// The throttle state of one site.
#[derive(Clone, Debug)]
pub struct Throttle {
    max: usize,
    current: usize,
    paused_until: Option<Instant>,
    last_step: Instant,
    pause: Duration,
    step: Duration,
}

impl Throttle {
    /// A throttle allowing `max` connections, with the pause and step durations.
    pub fn new(max: usize, pause: Duration, step: Duration, now: Instant) -> Self {
        let max = max.max(1);
        Self {
            max,
            current: max,
            paused_until: None,
            last_step: now,
            pause,
            step: step.max(Duration::from_millis(1)),
        }
    }

    /// How many connections may be busy now (0 while paused).
    pub fn allowed(&mut self, now: Instant) -> usize {
        if let Some(until) = self.paused_until {
            if now < until {
                return 0;
            }
            self.paused_until = None;
            self.last_step = until;
        }
        while self.current < self.max && now.duration_since(self.last_step) >= self.step {
            self.current += 1;
            self.last_step += self.step;
        }
        self.current
    }

    /// The site asked us to slow down.
    pub fn on_throttle(&mut self, now: Instant) {
        self.on_throttle_for(now, self.pause);
    }

    /// The site asked another worker of the cluster to slow down, and its pause has
    /// `pause` left: the same halving, for the rest of that pause.
    pub fn on_throttle_for(&mut self, now: Instant, pause: Duration) {
        self.current = (self.current / 2).max(1);
        self.paused_until = Some(now + pause);
        self.last_step = now + pause;
    }

    /// When [`Self::allowed`] will next change, if it is below the maximum.
    pub fn next_change(&self) -> Option<Instant> {
        match self.paused_until {
            Some(until) => Some(until),
            None if self.current < self.max => Some(self.last_step + self.step),
            None => None,
        }
    }

    /// Whether the site is paused or below its limit.
    pub fn is_throttled(&self) -> bool {
        self.paused_until.is_some() || self.current < self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_pauses_and_recovers_step_by_step() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut throttle = Throttle::new(20, s(30), s(10), t0);
        assert_eq!(throttle.allowed(t0), 20);
        throttle.on_throttle(t0);
        assert_eq!(throttle.allowed(t0 + s(29)), 0, "paused");
        assert_eq!(throttle.next_change(), Some(t0 + s(30)));
        assert_eq!(throttle.allowed(t0 + s(30)), 10, "half after the pause");
        assert_eq!(throttle.allowed(t0 + s(40)), 11);
        assert_eq!(throttle.allowed(t0 + s(65)), 13);
        throttle.on_throttle(t0 + s(65));
        assert_eq!(throttle.allowed(t0 + s(95)), 6);
        assert_eq!(
            throttle.allowed(t0 + s(1000)),
            20,
            "back to the limit, not beyond"
        );
        assert!(!throttle.is_throttled());
        let mut one = Throttle::new(1, s(1), s(1), t0);
        one.on_throttle(t0);
        assert_eq!(one.allowed(t0 + s(1)), 1, "never below one connection");
        // Another worker's report: the same halving, for what is left of its pause.
        let mut other = Throttle::new(8, s(30), s(10), t0);
        other.on_throttle_for(t0, s(5));
        assert_eq!(other.allowed(t0 + s(4)), 0);
        assert_eq!(other.allowed(t0 + s(5)), 4);
    }
}
