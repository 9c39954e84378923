//! The final-event check: does an attempt's stored stream hold together?

use serde::{Deserialize, Serialize};
use streamscan_api::{EventStatus, ProgressEvent};

/// The outcome of checking one attempt's events, stored in Redis and served by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub analyze_id: String,
    pub event_id: String,
    pub attempt: u32,
    /// True when the stream has no gap, never goes backwards, agrees on totals and ends once.
    pub ok: bool,
    /// What is wrong, one sentence per problem; empty when `ok`.
    pub problems: Vec<String>,
    /// How many events the history holds for the attempt.
    pub events: usize,
    /// The final event's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_status: Option<EventStatus>,
    /// When the check ran (RFC 3339).
    pub checked_at: String,
}

/// Checks the events of one attempt, sorted by seq (as Redis returns them).
pub fn check(events: &[ProgressEvent]) -> Verdict {
    let first = events.first();
    let last = events.last();
    let mut walk = Walk::new(first);
    for (i, e) in events.iter().enumerate() {
        walk.step(i, e);
    }
    let Walk {
        total,
        finals,
        mut problems,
        ..
    } = walk;
    problems.extend(final_event_problem(&finals, events.len()));
    if let Some(e) = last
        && e.status == EventStatus::Completed
    {
        problems.extend(completed_problems(e, total));
    }
    Verdict {
        analyze_id: first.map(|e| e.analyze_id.clone()).unwrap_or_default(),
        event_id: first.map(|e| e.event_id.clone()).unwrap_or_default(),
        attempt: first.map(|e| e.attempt).unwrap_or_default(),
        ok: problems.is_empty(),
        problems,
        events: events.len(),
        final_status: last.filter(|e| e.status.is_final()).map(|e| e.status),
        checked_at: jiff::Timestamp::now().to_string(),
    }
}

/// What one pass over the events has seen so far, and the problems it found.
struct Walk<'a> {
    /// The attempt every event must belong to.
    first: Option<&'a ProgressEvent>,
    expected_seq: u64,
    /// The highest bytesProcessed so far.
    last_bytes: u64,
    /// The first totalBytes announced.
    total: Option<u64>,
    /// Indices of the final events.
    finals: Vec<usize>,
    problems: Vec<String>,
}

impl<'a> Walk<'a> {
    fn new(first: Option<&'a ProgressEvent>) -> Self {
        Self {
            first,
            expected_seq: 0,
            last_bytes: 0,
            total: None,
            finals: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Checks event `i` against the ones before it.
    fn step(&mut self, i: usize, e: &ProgressEvent) {
        self.check_seq(e);
        self.check_bytes(e);
        self.check_total(e);
        if e.status.is_final() {
            self.finals.push(i);
        }
        self.check_attempt(e);
    }

    /// Seqs count up from 0 by one: a jump is a gap, a step back a duplicate.
    fn check_seq(&mut self, e: &ProgressEvent) {
        let expected = self.expected_seq;
        if e.seq > expected {
            self.problems.push(format!(
                "seq gap: expected {expected}, found {} (missing {})",
                e.seq,
                e.seq - expected
            ));
        } else if e.seq < expected {
            self.problems.push(format!("seq {} appears more than once", e.seq));
        }
        self.expected_seq = e.seq + 1;
    }

    fn check_bytes(&mut self, e: &ProgressEvent) {
        if e.bytes_processed < self.last_bytes {
            self.problems.push(format!(
                "bytesProcessed went backwards at seq {}: {} after {}",
                e.seq, e.bytes_processed, self.last_bytes
            ));
        }
        self.last_bytes = self.last_bytes.max(e.bytes_processed);
    }

    /// Every event that announces totalBytes must announce the same one.
    fn check_total(&mut self, e: &ProgressEvent) {
        if let Some(t) = e.total_bytes {
            match self.total {
                Some(prev) if prev != t => self
                    .problems
                    .push(format!("totalBytes changed at seq {}: {t} after {prev}", e.seq)),
                _ => self.total = Some(t),
            }
        }
    }

    fn check_attempt(&mut self, e: &ProgressEvent) {
        if let Some(f) = self.first
            && (e.attempt != f.attempt || e.analyze_id != f.analyze_id)
        {
            self.problems
                .push(format!("seq {} belongs to another attempt or analysis", e.seq));
        }
    }
}

/// Exactly one final event, and it comes last. `finals` are the final events' indices.
fn final_event_problem(finals: &[usize], events: usize) -> Option<String> {
    match finals {
        [] => Some("no final event (COMPLETED, FAILED or CANCELLED)".into()),
        [i] if *i + 1 == events => None,
        [_] => Some("the final event is not the last one".into()),
        many => Some(format!("{} final events, expected exactly one", many.len())),
    }
}

/// A COMPLETED event must have processed every announced byte, and its result must agree.
fn completed_problems(e: &ProgressEvent, total: Option<u64>) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(t) = total
        && e.bytes_processed != t
    {
        problems.push(format!(
            "COMPLETED with bytesProcessed {} but totalBytes {t}",
            e.bytes_processed
        ));
    }
    if let Some(r) = &e.result
        && u64::try_from(r.bytes).ok() != Some(e.bytes_processed)
    {
        problems.push(format!(
            "result.bytes {} disagrees with bytesProcessed {}",
            r.bytes, e.bytes_processed
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, status: EventStatus, bytes: u64) -> ProgressEvent {
        ProgressEvent {
            user_id: "alice".into(),
            event_id: "e".into(),
            server_id: "0".into(),
            analyze_id: "a".into(),
            namespace: "default".into(),
            name: "j".into(),
            status,
            seq,
            bytes_processed: bytes,
            total_bytes: Some(100),
            ..ProgressEvent::default()
        }
    }

    #[test]
    fn clean_stream_passes() {
        let v = check(&[
            ev(0, EventStatus::Started, 0),
            ev(1, EventStatus::Progress, 50),
            ev(2, EventStatus::Completed, 100),
        ]);
        assert!(v.ok, "{:?}", v.problems);
        assert_eq!(v.events, 3);
    }

    #[test]
    fn gaps_regressions_and_bad_totals_are_flagged() {
        let v = check(&[ev(0, EventStatus::Started, 0), ev(2, EventStatus::Completed, 100)]);
        assert!(!v.ok && v.problems[0].contains("gap"), "{:?}", v.problems);
        let v = check(&[
            ev(0, EventStatus::Started, 60),
            ev(1, EventStatus::Progress, 50),
            ev(2, EventStatus::Completed, 90),
        ]);
        assert!(v.problems.iter().any(|p| p.contains("backwards")), "{:?}", v.problems);
        assert!(
            v.problems.iter().any(|p| p.contains("totalBytes 100")),
            "{:?}",
            v.problems
        );
        let v = check(&[ev(0, EventStatus::Completed, 100), ev(1, EventStatus::Failed, 100)]);
        assert!(!v.ok);
        let v = check(&[ev(0, EventStatus::Started, 0)]);
        assert!(v.problems.iter().any(|p| p.contains("no final")));
    }
}
