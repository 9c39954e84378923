//! Where to re-read Kafka from when Redis has lost what it held (restarted without persistence,
//! flushed, failed over to an empty replica). The history should still hold every event of the
//! last `ttl`, and every event of an attempt still running (its TTL is refreshed while it runs),
//! so per partition the rewind point is the earlier of: the first offset consumed within the
//! last `ttl`, and the first offset of each attempt not yet final.
//!
//! Pure bookkeeping, fed with the clock by the caller; memory is bounded by one sample per
//! partition per [`SAMPLE_EVERY`] over `ttl`, plus one entry per running attempt.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How far apart the offset samples are: the rewind re-reads at most this much more than needed.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

struct Open {
    partition: i32,
    first: i64,
    last_seen: Instant,
}

pub struct Rewind {
    ttl: Duration,
    /// Per partition: `(when, offset)` of one consumed event per [`SAMPLE_EVERY`], oldest first.
    samples: HashMap<i32, VecDeque<(Instant, i64)>>,
    /// Attempts seen but not yet final, by eventId.
    open: HashMap<String, Open>,
}

impl Rewind {
    pub fn new(ttl: Duration) -> Self {
        Rewind {
            ttl,
            samples: HashMap::new(),
            open: HashMap::new(),
        }
    }

    /// Records one consumed event.
    pub fn observe(&mut self, partition: i32, offset: i64, event_id: &str, is_final: bool, now: Instant) {
        let samples = self.samples.entry(partition).or_default();
        let due = samples
            .back()
            .is_none_or(|&(at, last)| offset < last || now.saturating_duration_since(at) >= SAMPLE_EVERY);
        if due {
            // An offset below the last sample is a re-read after a seek back: keep the earliest.
            if samples.back().is_some_and(|&(_, last)| offset < last) {
                samples.retain(|&(_, o)| o < offset);
            }
            samples.push_back((now, offset));
        }
        if is_final {
            self.open.remove(event_id);
        } else {
            let open = self.open.entry(event_id.to_owned()).or_insert(Open {
                partition,
                first: offset,
                last_seen: now,
            });
            open.first = open.first.min(offset);
            open.last_seen = now;
        }
        // Pruning walks every running attempt: once per sample, not once per event.
        if due {
            self.forget(now);
        }
    }

    /// Per partition, the offset to re-read from so that Redis holds again what it should.
    pub fn points(&mut self, now: Instant) -> HashMap<i32, i64> {
        self.forget(now);
        let mut points = HashMap::new();
        for (&partition, samples) in &self.samples {
            if let Some(&(_, offset)) = samples.front() {
                points.insert(partition, offset);
            }
        }
        for open in self.open.values() {
            lower(&mut points, open.partition, open.first);
        }
        points
    }

    /// Drops what Redis would have expired anyway: samples older than `ttl` (keeping the last one
    /// before the horizon, which bounds the events just inside it), and attempts silent for `ttl`.
    fn forget(&mut self, now: Instant) {
        let Some(horizon) = now.checked_sub(self.ttl) else {
            return;
        };
        for samples in self.samples.values_mut() {
            while samples.len() > 1 && samples.get(1).is_some_and(|&(at, _)| at <= horizon) {
                samples.pop_front();
            }
        }
        self.open.retain(|_, open| open.last_seen > horizon);
    }

    #[cfg(test)]
    fn open_count(&self) -> usize {
        self.open.len()
    }

    #[cfg(test)]
    fn sample_count(&self, partition: i32) -> usize {
        self.samples.get(&partition).map_or(0, VecDeque::len)
    }
}

/// Sets `points[partition]` to `offset` unless it already holds an earlier one.
pub fn lower(points: &mut HashMap<i32, i64>, partition: i32, offset: i64) {
    points
        .entry(partition)
        .and_modify(|o| *o = (*o).min(offset))
        .or_insert(offset);
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(600);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn nothing_consumed_nothing_to_reread() {
        let mut r = Rewind::new(TTL);
        assert!(r.points(Instant::now()).is_empty());
    }

    #[test]
    fn rewinds_to_the_first_event_within_the_ttl() {
        let t0 = Instant::now();
        let mut r = Rewind::new(TTL);
        r.observe(0, 100, "a", false, t0);
        r.observe(0, 101, "a", true, t0 + secs(1));
        r.observe(1, 7, "b", true, t0 + secs(2));
        let points = r.points(t0 + secs(5));
        assert_eq!(points.get(&0), Some(&100));
        assert_eq!(points.get(&1), Some(&7));
    }

    #[test]
    fn finished_attempts_older_than_the_ttl_are_not_reread() {
        let t0 = Instant::now();
        let mut r = Rewind::new(TTL);
        r.observe(0, 100, "old", true, t0);
        r.observe(0, 200, "new", true, t0 + secs(300));
        r.observe(0, 300, "newer", true, t0 + secs(700));
        // At t0+950 the horizon is t0+350: the sample at 300 s bounds the events after it.
        assert_eq!(r.points(t0 + secs(950)).get(&0), Some(&200));
        // At t0+1400 (horizon t0+800), only the last sample is left.
        assert_eq!(r.points(t0 + secs(1400)).get(&0), Some(&300));
    }

    #[test]
    fn a_running_attempt_is_reread_from_its_first_event_however_old() {
        let t0 = Instant::now();
        let mut r = Rewind::new(TTL);
        r.observe(0, 10, "long", false, t0);
        let mut t = t0;
        for i in 1..200 {
            t = t0 + secs(i * 30);
            r.observe(0, 10 + i64::try_from(i).unwrap_or(0) * 5, "long", false, t);
        }
        assert_eq!(
            r.points(t).get(&0),
            Some(&10),
            "the attempt's TTL is refreshed while it runs"
        );
        r.observe(0, 2000, "long", true, t + secs(1));
        assert!(
            r.points(t + secs(2)).get(&0).is_some_and(|&o| o > 10),
            "final: no longer pinned"
        );
    }

    #[test]
    fn an_abandoned_attempt_is_forgotten_after_the_ttl() {
        let t0 = Instant::now();
        let mut r = Rewind::new(TTL);
        r.observe(0, 5, "abandoned", false, t0);
        r.observe(0, 50, "other", true, t0 + secs(700));
        // Still running as far as anyone knows: pinned.
        assert_eq!(r.points(t0 + secs(599)).get(&0), Some(&5));
        // Silent for longer than the TTL (Redis dropped it too), and the samples moved on.
        assert_eq!(r.points(t0 + secs(1400)).get(&0), Some(&50));
    }

    #[test]
    fn abandoned_attempts_are_pruned_as_events_go_on() {
        let t0 = Instant::now();
        let mut r = Rewind::new(TTL);
        for i in 0..100 {
            r.observe(0, i, &format!("abandoned-{i}"), false, t0);
        }
        r.observe(0, 100, "later", true, t0 + TTL + SAMPLE_EVERY);
        assert_eq!(r.open_count(), 0, "memory stays bounded without a rewind");
    }

    #[test]
    fn samples_are_bounded_by_the_ttl_over_the_sampling_period() {
        let t0 = Instant::now();
        let mut r = Rewind::new(TTL);
        for i in 0..10_000u64 {
            r.observe(
                0,
                i64::try_from(i).unwrap_or(0),
                "x",
                true,
                t0 + Duration::from_millis(i * 500),
            );
        }
        let bound = usize::try_from(TTL.as_secs() / SAMPLE_EVERY.as_secs()).unwrap_or(0) + 2;
        assert!(r.sample_count(0) <= bound, "{} samples", r.sample_count(0));
    }

    #[test]
    fn a_reread_after_a_seek_back_keeps_the_earliest_offset() {
        let t0 = Instant::now();
        let mut r = Rewind::new(TTL);
        r.observe(0, 100, "a", true, t0);
        r.observe(0, 150, "b", true, t0 + secs(20));
        // Seek back to 120 and re-read it.
        r.observe(0, 120, "b", true, t0 + secs(21));
        assert_eq!(r.points(t0 + secs(22)).get(&0), Some(&100));
        assert_eq!(r.sample_count(0), 2, "samples stay in offset order");
    }
}
