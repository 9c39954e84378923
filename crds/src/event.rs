//! Progress events: the JSON every worker writes to Kafka (and `scan --events` to a file), and
//! the gateway stores in Redis and pushes to clients unchanged.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::job::ResultSummary;

/// Version of the event JSON this crate writes and reads.
pub const EVENT_VERSION: u32 = 1;

/// CloudEvents `type` of a progress event (Kafka binary binding: header `ce_type`).
pub const CLOUDEVENTS_TYPE: &str = "io.streamscan.analysis.progress.v1";

/// Kafka header names (CloudEvents Kafka protocol binding, binary mode, plus W3C trace context).
pub mod headers {
    pub const SPEC_VERSION: &str = "ce_specversion";
    pub const ID: &str = "ce_id";
    pub const SOURCE: &str = "ce_source";
    pub const TYPE: &str = "ce_type";
    pub const TIME: &str = "ce_time";
    pub const SUBJECT: &str = "ce_subject";
    pub const CONTENT_TYPE: &str = "content-type";
    pub const TRACEPARENT: &str = "traceparent";
}

/// Where an attempt stands. Exactly one of COMPLETED, FAILED, CANCELLED ends an attempt's stream.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventStatus {
    Queued,
    Started,
    Progress,
    Completed,
    Failed,
    Cancelled,
}

impl EventStatus {
    /// Whether this event ends its attempt's stream.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            EventStatus::Completed | EventStatus::Failed | EventStatus::Cancelled
        )
    }
}

/// Longest identifier (userId, eventId, serverId, analyzeId, namespace, name) an event may carry:
/// a Kubernetes name's limit.
pub const MAX_ID_BYTES: usize = 253;
/// Longest `reason`.
pub const MAX_REASON_BYTES: usize = 256;
/// Longest `message`.
pub const MAX_MESSAGE_BYTES: usize = 64 << 10;
/// Largest encoded event a consumer accepts.
pub const MAX_EVENT_BYTES: usize = 128 << 10;

/// One progress event of one attempt of one analysis.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(
    title = "Streamscan progress event",
    description = "One progress event of one attempt of one analysis. Kafka key: analyzeId."
)]
pub struct ProgressEvent {
    /// Version of this JSON layout; readers refuse versions they do not know.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// Who asked for the analysis (`spec.userId`).
    #[schemars(length(min = 1))]
    pub user_id: String,
    /// Identity of the attempt; shared by all of its events.
    #[schemars(length(min = 1))]
    pub event_id: String,
    /// The server that runs the attempt.
    #[schemars(length(min = 1))]
    pub server_id: String,
    /// Identity of the analysis (the AnalysisJob's `metadata.uid`).
    #[schemars(length(min = 1))]
    pub analyze_id: String,
    /// Namespace of the AnalysisJob.
    pub namespace: String,
    /// Name of the AnalysisJob.
    pub name: String,
    /// Attempt number, from 1.
    #[schemars(range(min = 1))]
    pub attempt: u32,
    pub status: EventStatus,
    /// Position of this event in its attempt's stream: 0, 1, 2, ... without gaps.
    pub seq: u64,
    pub bytes_processed: u64,
    /// Length of the file when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// When the event was produced (RFC 3339, UTC).
    pub timestamp: Timestamp,
    /// CamelCase reason, on FAILED and CANCELLED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human explanation, on FAILED and CANCELLED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// On FAILED: whether a retry may succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable: Option<bool>,
    /// On COMPLETED: the result summary, as recorded on the AnalysisJob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultSummary>,
    /// W3C trace context of this event (the same as its Kafka `traceparent` header): the job's
    /// trace (from the request that created it), with this event as the span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 55, max = 256))]
    pub traceparent: Option<String>,
}

/// A STARTED event of attempt 1 with empty identity: the base that writers fill in with
/// struct-update syntax, so a new optional field needs no edit at every writer.
impl Default for ProgressEvent {
    fn default() -> Self {
        ProgressEvent {
            version: EVENT_VERSION,
            user_id: String::new(),
            event_id: String::new(),
            server_id: String::new(),
            analyze_id: String::new(),
            namespace: String::new(),
            name: String::new(),
            attempt: 1,
            status: EventStatus::Started,
            seq: 0,
            bytes_processed: 0,
            total_bytes: None,
            timestamp: Timestamp::UNIX_EPOCH,
            reason: None,
            message: None,
            retriable: None,
            result: None,
            traceparent: None,
        }
    }
}

/// Numbers one attempt's events 0, 1, 2, … without gaps: the one rule of the worker and of
/// `scan --events`. Each event is the template with its status, seq, bytes and time.
#[derive(Clone, Debug)]
pub struct EventSequence {
    template: ProgressEvent,
    next: u64,
}

impl EventSequence {
    /// Continues a stream whose next seq is `next` (0 for a new one).
    pub fn new(template: ProgressEvent, next: u64) -> Self {
        EventSequence { template, next }
    }

    /// The seq the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// The next event, `status` after `processed` bytes, then `edit`ed; a total below the bytes
    /// seen grows to them. The sequence moves on only when the event is [`sent`](Self::sent).
    pub fn event(&self, status: EventStatus, processed: u64, edit: impl FnOnce(&mut ProgressEvent)) -> ProgressEvent {
        let mut event = self.template.clone();
        event.status = status;
        event.seq = self.next;
        event.bytes_processed = processed;
        event.timestamp = Timestamp::now();
        edit(&mut event);
        if let Some(total) = event.total_bytes
            && event.bytes_processed > total
        {
            event.total_bytes = Some(event.bytes_processed);
        }
        event
    }

    /// The event last made was sent: the next one takes the following seq.
    pub fn sent(&mut self) {
        self.next += 1;
    }
}

/// Why a payload is not a valid progress event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("progress event is not valid JSON for version {EVENT_VERSION}: {0}")]
    Json(#[from] serde_json::Error),
    #[error("progress event has version {0}, this reader understands version {EVENT_VERSION}")]
    UnsupportedVersion(u32),
    #[error("progress event field {field} is invalid: {problem}")]
    Invalid { field: &'static str, problem: &'static str },
}

impl ProgressEvent {
    /// Parses and checks an event: JSON shape, version, and the invariants the schema cannot say.
    pub fn from_slice(payload: &[u8]) -> Result<Self, EventError> {
        if payload.len() > MAX_EVENT_BYTES {
            return Err(EventError::Invalid {
                field: "(event)",
                problem: "is larger than 128 KiB",
            });
        }
        // Read the version first so a newer writer gets a version error, not a field error.
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned = serde_json::from_slice(payload)?;
        if v.version != EVENT_VERSION {
            return Err(EventError::UnsupportedVersion(v.version));
        }
        let event: ProgressEvent = serde_json::from_slice(payload)?;
        event.check()?;
        Ok(event)
    }

    /// The invariants every event must hold.
    pub fn check(&self) -> Result<(), EventError> {
        let invalid = |field, problem| Err(EventError::Invalid { field, problem });
        if self.version != EVENT_VERSION {
            return Err(EventError::UnsupportedVersion(self.version));
        }
        for (field, value) in [
            ("userId", &self.user_id),
            ("eventId", &self.event_id),
            ("serverId", &self.server_id),
            ("analyzeId", &self.analyze_id),
        ] {
            if value.is_empty() {
                return invalid(field, "must not be empty");
            }
        }
        // Identifiers end up in SSE `id:` lines, Redis keys and log fields: bounded, and no
        // control characters (a newline would split an SSE frame).
        for (field, value, max) in [
            ("userId", &self.user_id, MAX_ID_BYTES),
            ("eventId", &self.event_id, MAX_ID_BYTES),
            ("serverId", &self.server_id, MAX_ID_BYTES),
            ("analyzeId", &self.analyze_id, MAX_ID_BYTES),
            ("namespace", &self.namespace, MAX_ID_BYTES),
            ("name", &self.name, MAX_ID_BYTES),
        ] {
            if value.len() > max {
                return invalid(field, "is longer than 253 bytes");
            }
            if value.chars().any(char::is_control) {
                return invalid(field, "must not contain control characters");
            }
        }
        if self.reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_BYTES) {
            return invalid("reason", "is longer than 256 bytes");
        }
        if self.message.as_ref().is_some_and(|m| m.len() > MAX_MESSAGE_BYTES) {
            return invalid("message", "is longer than 64 KiB");
        }
        if self.attempt == 0 {
            return invalid("attempt", "must be 1 or more");
        }
        if let Some(tp) = &self.traceparent
            && crate::trace::TraceParent::parse(tp).is_none()
        {
            return invalid(
                "traceparent",
                "is not a W3C traceparent (00-<trace-id>-<parent-id>-<flags>)",
            );
        }
        if let Some(total) = self.total_bytes
            && self.bytes_processed > total
        {
            return invalid("bytesProcessed", "exceeds totalBytes");
        }
        Ok(())
    }

    /// The Kafka key: all events of one analysis go to one partition, in order.
    pub fn key(&self) -> &str {
        &self.analyze_id
    }

    /// A unique id for the CloudEvents `ce_id` header.
    pub fn cloudevent_id(&self) -> String {
        format!("{}-{}", self.event_id, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProgressEvent {
        ProgressEvent {
            user_id: "alice".into(),
            event_id: "e-1".into(),
            server_id: "0".into(),
            analyze_id: "uid-1".into(),
            namespace: "default".into(),
            name: "fw".into(),
            status: EventStatus::Progress,
            seq: 3,
            bytes_processed: 10,
            total_bytes: Some(100),
            ..ProgressEvent::default()
        }
    }

    #[test]
    fn a_sequence_numbers_without_gaps_and_moves_on_only_when_sent() {
        let mut events = EventSequence::new(sample(), 7);
        let first = events.event(EventStatus::Progress, 150, |e| e.message = Some("m".into()));
        assert_eq!(
            (first.seq, first.bytes_processed, first.total_bytes),
            (7, 150, Some(150))
        );
        assert_eq!(first.message.as_deref(), Some("m"));
        assert_eq!(
            events.event(EventStatus::Progress, 1, |_| {}).seq,
            7,
            "not sent: same seq"
        );
        events.sent();
        let second = events.event(EventStatus::Completed, 200, |_| {});
        assert_eq!(
            (second.seq, second.status, events.next_seq()),
            (8, EventStatus::Completed, 8)
        );
    }

    #[test]
    fn round_trips_with_camel_case_fields() -> Result<(), Box<dyn std::error::Error>> {
        let json = serde_json::to_string(&sample())?;
        for field in [
            "\"userId\"",
            "\"eventId\"",
            "\"serverId\"",
            "\"analyzeId\"",
            "\"bytesProcessed\"",
            "\"totalBytes\"",
            "\"PROGRESS\"",
        ] {
            assert!(json.contains(field), "{field} missing from {json}");
        }
        assert_eq!(ProgressEvent::from_slice(json.as_bytes())?, sample());
        Ok(())
    }

    #[test]
    fn refuses_unknown_version_with_a_version_error() {
        let mut value = serde_json::to_value(sample()).unwrap_or_default();
        value["version"] = 2.into();
        let err = ProgressEvent::from_slice(value.to_string().as_bytes());
        assert!(matches!(err, Err(EventError::UnsupportedVersion(2))), "{err:?}");
    }

    #[test]
    fn refuses_progress_beyond_total_and_empty_ids() {
        let mut e = sample();
        e.bytes_processed = 101;
        assert!(matches!(
            e.check(),
            Err(EventError::Invalid {
                field: "bytesProcessed",
                ..
            })
        ));
        let mut e = sample();
        e.event_id.clear();
        assert!(matches!(e.check(), Err(EventError::Invalid { field: "eventId", .. })));
    }

    #[test]
    fn refuses_control_characters_and_oversized_fields() {
        let mut e = sample();
        e.event_id = "ev\nid: forged".into();
        assert!(matches!(e.check(), Err(EventError::Invalid { field: "eventId", .. })));
        let mut e = sample();
        e.user_id = "a".repeat(MAX_ID_BYTES + 1);
        assert!(matches!(e.check(), Err(EventError::Invalid { field: "userId", .. })));
        let mut e = sample();
        e.name = "x\u{7}".into();
        assert!(matches!(e.check(), Err(EventError::Invalid { field: "name", .. })));
        let mut e = sample();
        e.reason = Some("R".repeat(MAX_REASON_BYTES + 1));
        assert!(matches!(e.check(), Err(EventError::Invalid { field: "reason", .. })));
        let mut e = sample();
        e.message = Some("m".repeat(MAX_MESSAGE_BYTES + 1));
        assert!(matches!(e.check(), Err(EventError::Invalid { field: "message", .. })));
        let mut e = sample();
        e.traceparent = Some("00-abc\nid: forged".into());
        assert!(matches!(
            e.check(),
            Err(EventError::Invalid {
                field: "traceparent",
                ..
            })
        ));
        let mut e = sample();
        e.user_id = "alice@example.com".into();
        e.message = Some("é".repeat(1000));
        e.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        assert!(e.check().is_ok(), "ordinary values pass");
        let huge = vec![b' '; MAX_EVENT_BYTES + 1];
        assert!(matches!(
            ProgressEvent::from_slice(&huge),
            Err(EventError::Invalid { field: "(event)", .. })
        ));
    }

    #[test]
    fn refuses_malformed_json_but_tolerates_unknown_fields() {
        assert!(matches!(
            ProgressEvent::from_slice(b"{not json"),
            Err(EventError::Json(_))
        ));
        assert!(matches!(
            ProgressEvent::from_slice(br#"{"version":1}"#),
            Err(EventError::Json(_))
        ));
        // Within one version, writers may add optional fields; readers ignore what they do not know.
        let mut value = serde_json::to_value(sample()).unwrap_or_default();
        value["surprise"] = true.into();
        assert!(ProgressEvent::from_slice(value.to_string().as_bytes()).is_ok());
    }

    #[test]
    fn final_statuses() {
        assert!(EventStatus::Completed.is_final());
        assert!(EventStatus::Failed.is_final());
        assert!(EventStatus::Cancelled.is_final());
        assert!(!EventStatus::Progress.is_final());
        assert!(!EventStatus::Started.is_final());
    }
}
