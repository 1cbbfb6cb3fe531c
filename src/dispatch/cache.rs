//! A cache bounded by the bytes of what it holds, not by its number of entries: 200 jobs
//! with 10 MB attachments must not keep 2 GB resident. The oldest entries go first.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Values with their sizes, within a byte budget.
#[derive(Debug)]
pub(super) struct ByteCache<K, V> {
    entries: HashMap<K, (V, usize)>,
    order: VecDeque<K>,
    bytes: usize,
    budget: usize,
}

impl<K: Eq + Hash + Clone, V> ByteCache<K, V> {
    /// An empty cache holding at most `budget` bytes.
    pub(super) fn new(budget: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            budget,
        }
    }

    /// The value kept for `key`.
    pub(super) fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(v, _)| v)
    }

    /// Keeps `value` (of `size` bytes) for `key`, dropping the oldest entries to stay
    /// within the budget; a value larger than the whole budget is not kept.
    pub(super) fn insert(&mut self, key: K, value: V, size: usize) {
        if size > self.budget {
            return;
        }
        if let Some((_, old)) = self.entries.remove(&key) {
            self.bytes -= old;
            self.order.retain(|k| *k != key);
        }
        while self.bytes + size > self.budget {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((_, n)) = self.entries.remove(&oldest) {
                self.bytes -= n;
            }
        }
        self.bytes += size;
        self.order.push_back(key.clone());
        self.entries.insert(key, (value, size));
    }

    /// The total size of the values held, as given to insert; never above the budget.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_budget_dropping_the_oldest() {
        let mut cache = ByteCache::new(100);
        cache.insert(1, "a", 40);
        cache.insert(2, "b", 40);
        cache.insert(3, "c", 40);
        assert_eq!(
            (cache.get(&1), cache.get(&2), cache.get(&3)),
            (None, Some(&"b"), Some(&"c"))
        );
        assert_eq!(cache.bytes(), 80);
        cache.insert(4, "huge", 101);
        assert_eq!(cache.get(&4), None, "larger than the budget: not kept");
        cache.insert(2, "b2", 10);
        assert_eq!((cache.get(&2), cache.bytes()), (Some(&"b2"), 50));
        for i in 10..1000 {
            cache.insert(i, "x", 7);
            assert!(cache.bytes() <= 100);
        }
    }
}
