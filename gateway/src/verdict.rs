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
    let mut problems = Vec::new();
    let first = events.first();
    let mut expected_seq = 0u64;
    let mut last_bytes = 0u64;
    let mut total: Option<u64> = None;
    let mut finals = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if e.seq != expected_seq {
            if e.seq > expected_seq {
                problems.push(format!(
                    "seq gap: expected {expected_seq}, found {} (missing {})",
                    e.seq,
                    e.seq - expected_seq
                ));
            } else {
                problems.push(format!("seq {} appears more than once", e.seq));
            }
        }
        expected_seq = e.seq + 1;
        if e.bytes_processed < last_bytes {
            problems.push(format!(
                "bytesProcessed went backwards at seq {}: {} after {}",
                e.seq, e.bytes_processed, last_bytes
            ));
        }
        last_bytes = last_bytes.max(e.bytes_processed);
        if let Some(t) = e.total_bytes {
            match total {
                Some(prev) if prev != t => {
                    problems.push(format!("totalBytes changed at seq {}: {t} after {prev}", e.seq))
                }
                _ => total = Some(t),
            }
        }
        if e.status.is_final() {
            finals.push(i);
        }
        if let Some(f) = first
            && (e.attempt != f.attempt || e.analyze_id != f.analyze_id)
        {
            problems.push(format!("seq {} belongs to another attempt or analysis", e.seq));
        }
    }
    let last = events.last();
    match finals.as_slice() {
        [] => problems.push("no final event (COMPLETED, FAILED or CANCELLED)".into()),
        [i] if *i + 1 == events.len() => {}
        [_] => problems.push("the final event is not the last one".into()),
        many => problems.push(format!("{} final events, expected exactly one", many.len())),
    }
    if let Some(e) = last
        && e.status == EventStatus::Completed
    {
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

#[cfg(test)]
mod tests {
    use super::*;
    use streamscan_api::EVENT_VERSION;

    fn ev(seq: u64, status: EventStatus, bytes: u64) -> ProgressEvent {
        ProgressEvent {
            version: EVENT_VERSION,
            user_id: "alice".into(),
            event_id: "e".into(),
            server_id: "0".into(),
            analyze_id: "a".into(),
            namespace: "default".into(),
            name: "j".into(),
            attempt: 1,
            status,
            seq,
            bytes_processed: bytes,
            total_bytes: Some(100),
            timestamp: jiff::Timestamp::UNIX_EPOCH,
            reason: None,
            message: None,
            retriable: None,
            result: None,
            traceparent: None,
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
