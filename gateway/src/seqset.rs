//! Which `seq`s of an attempt have been seen: a contiguous watermark plus a sparse set above it,
//! so the usual gap-free stream costs a few bytes however long it is.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqSet {
    /// Every seq below this one is in the set.
    below: u64,
    above: BTreeSet<u64>,
}

impl SeqSet {
    /// A set holding every seq up to and including `seq`.
    pub fn through(seq: u64) -> Self {
        SeqSet {
            below: seq.saturating_add(1),
            above: BTreeSet::new(),
        }
    }

    /// A set holding every seq.
    pub fn all() -> Self {
        SeqSet {
            below: u64::MAX,
            above: BTreeSet::new(),
        }
    }

    pub fn contains(&self, seq: u64) -> bool {
        seq < self.below || self.above.contains(&seq)
    }

    /// Adds `seq`; false when it was already there.
    pub fn insert(&mut self, seq: u64) -> bool {
        if self.contains(seq) {
            return false;
        }
        if seq == self.below {
            self.below += 1;
            while self.above.remove(&self.below) {
                self.below += 1;
            }
        } else {
            self.above.insert(seq);
        }
        true
    }
}

/// The `(eventId, seq)` pairs this replica has pushed live, forgotten after `ttl` of silence
/// (the same horizon as the Redis history) so memory stays bounded.
pub struct Recent {
    attempts: HashMap<String, (SeqSet, Instant)>,
    ttl: Duration,
    last_sweep: Instant,
}

impl Recent {
    pub fn new(ttl: Duration) -> Self {
        Recent {
            attempts: HashMap::new(),
            ttl,
            last_sweep: Instant::now(),
        }
    }

    /// Records `(event_id, seq)`; false when it was seen before.
    pub fn insert(&mut self, event_id: &str, seq: u64) -> bool {
        let now = Instant::now();
        if now.duration_since(self.last_sweep) > self.ttl / 4 {
            let ttl = self.ttl;
            self.attempts
                .retain(|_, (_, touched)| now.duration_since(*touched) < ttl);
            self.last_sweep = now;
        }
        let entry = self
            .attempts
            .entry(event_id.to_owned())
            .or_insert_with(|| (SeqSet::default(), now));
        entry.1 = now;
        entry.0.insert(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_contiguous_runs_and_keeps_sparse_ones() {
        let mut s = SeqSet::default();
        assert!(s.insert(0));
        assert!(s.insert(2));
        assert!(!s.insert(0));
        assert!(s.contains(2) && !s.contains(1));
        assert!(s.insert(1));
        assert_eq!(s, SeqSet::through(2));
        assert!(!s.insert(2));
        assert!(SeqSet::through(5).contains(5) && !SeqSet::through(5).contains(6));
        assert!(SeqSet::all().contains(u64::MAX - 1));
    }

    #[test]
    fn recent_drops_repeats_per_attempt() {
        let mut r = Recent::new(Duration::from_secs(600));
        assert!(r.insert("a", 0));
        assert!(r.insert("b", 0));
        assert!(!r.insert("a", 0));
        assert!(r.insert("a", 1));
    }
}
