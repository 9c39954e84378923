//! How an attempt ends, decided from what happened (no I/O): which failures are worth a retry,
//! and whether an engine run that returned is a success, a stop on request or a failure.
//! [`super::executor`] carries the decision out.

use streamscan_api::names::reason;

use super::events::EventsError;
use super::sources::SourceError;
use super::status::Failure;
use streamscan_engine::AnalyzerError;
use streamscan_engine::pipeline::EngineError;

/// Why a running attempt is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StopReason {
    None = 0,
    /// `spec.cancel`: roll back and report CANCELLED.
    Cancel = 1,
    /// The attempt is no longer ours: stop without reporting.
    Stale = 2,
    /// SIGTERM: keep the checkpoint, flush the events, report nothing (the restarted worker resumes).
    Shutdown = 3,
}

/// The failure an engine error stands for: input errors and outside dependencies are worth a
/// retry (another read, the model endpoint back), a bad checkpoint too (the retry starts over);
/// a fatal analyzer error or a bad configuration is not.
pub fn engine_failure(e: &EngineError) -> Failure {
    let (why, retriable) = match e {
        EngineError::Io { .. } => (reason::SOURCE_READ_FAILED, true),
        EngineError::Analyzer(AnalyzerError::Retriable { .. }) => (reason::ANALYZER_UNAVAILABLE, true),
        EngineError::BadCheckpoint(_) => (reason::BAD_CHECKPOINT, true),
        EngineError::Panicked => (reason::ANALYSIS_FAILED, true),
        _ => (reason::ANALYSIS_FAILED, false),
    };
    Failure {
        reason: why.into(),
        message: e.to_string(),
        retriable,
    }
}

/// The failure a source that cannot be opened stands for (its reason and class decided where
/// the error arose).
pub fn source_failure(e: SourceError) -> Failure {
    Failure {
        reason: e.reason.into(),
        message: e.message,
        retriable: e.retriable,
    }
}

/// The failure of an attempt whose event publisher cannot start: Kafka may be back for a retry.
pub fn events_failure(e: &EventsError) -> Failure {
    Failure {
        reason: reason::EVENTS_UNAVAILABLE.into(),
        message: e.to_string(),
        retriable: true,
    }
}

/// The failure of a result whose SHA-256 (`got`, `None` when not computed) is not the one the
/// job expects, if it expects one. A wrong file stays wrong: no retry.
pub fn digest_mismatch(expected: Option<&str>, got: Option<&str>) -> Option<Failure> {
    let expected = expected?;
    if got.is_some_and(|got| got.eq_ignore_ascii_case(expected)) {
        return None;
    }
    Some(Failure {
        reason: reason::DIGEST_MISMATCH.into(),
        message: format!(
            "the file's SHA-256 is {}, the job expects {expected}",
            got.unwrap_or("unknown")
        ),
        retriable: false,
    })
}

/// What an engine run that returned leads to.
#[derive(Debug)]
pub enum ScanEnd<T> {
    /// Store the result and report success (even if a stop came too late to matter).
    Succeed(T),
    /// Stopped on request after `processed` bytes: cancel, stale or shutdown, as `StopReason` says.
    Stop { why: StopReason, processed: u64 },
    /// Report the failure, at `processed` bytes.
    Fail { failure: Failure, processed: u64 },
}

/// Judges the engine's answer given the stop requested meanwhile (`StopReason::None`: none);
/// `processed` is the last byte count the attempt reported.
pub fn scan_end<T>(result: Result<T, EngineError>, stop: StopReason, processed: u64) -> ScanEnd<T> {
    match result {
        Ok(result) => ScanEnd::Succeed(result),
        Err(EngineError::Cancelled { processed }) => ScanEnd::Stop { why: stop, processed },
        // An error while stopping is the stop's doing (a source closed under the reader).
        Err(_) if stop != StopReason::None => ScanEnd::Stop { why: stop, processed },
        Err(e) => ScanEnd::Fail {
            failure: engine_failure(&e),
            processed,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamscan_api::AnalyzerName;

    fn io() -> EngineError {
        EngineError::Io {
            offset: 7,
            source: std::io::Error::other("reset"),
        }
    }

    #[test]
    fn failures_are_classified_for_retry() {
        let cases = [
            (io(), reason::SOURCE_READ_FAILED, true),
            (
                EngineError::Analyzer(AnalyzerError::Retriable {
                    analyzer: AnalyzerName::Model,
                    message: "down".into(),
                }),
                reason::ANALYZER_UNAVAILABLE,
                true,
            ),
            (
                EngineError::Analyzer(AnalyzerError::Fatal {
                    analyzer: AnalyzerName::Model,
                    message: "bad".into(),
                }),
                reason::ANALYSIS_FAILED,
                false,
            ),
            (EngineError::BadCheckpoint("v".into()), reason::BAD_CHECKPOINT, true),
            (EngineError::Config("chunk".into()), reason::ANALYSIS_FAILED, false),
            (EngineError::Panicked, reason::ANALYSIS_FAILED, true),
        ];
        for (e, why, retriable) in cases {
            let f = engine_failure(&e);
            assert_eq!((f.reason.as_str(), f.retriable), (why, retriable), "{e}");
            assert_eq!(f.message, e.to_string());
        }
        let f = source_failure(SourceError::fatal(reason::SOURCE_NOT_FOUND, "no such file"));
        assert_eq!((f.reason.as_str(), f.retriable), (reason::SOURCE_NOT_FOUND, false));
    }

    #[test]
    fn a_run_ends_in_success_stop_or_failure() {
        assert!(matches!(scan_end(Ok(1), StopReason::Cancel, 9), ScanEnd::Succeed(1)));
        assert!(matches!(
            scan_end::<()>(Err(EngineError::Cancelled { processed: 5 }), StopReason::Shutdown, 9),
            ScanEnd::Stop {
                why: StopReason::Shutdown,
                processed: 5
            }
        ));
        assert!(matches!(
            scan_end::<()>(Err(io()), StopReason::Cancel, 9),
            ScanEnd::Stop {
                why: StopReason::Cancel,
                processed: 9
            }
        ));
        match scan_end::<()>(Err(io()), StopReason::None, 9) {
            ScanEnd::Fail { failure, processed } => {
                assert_eq!((failure.reason.as_str(), processed), (reason::SOURCE_READ_FAILED, 9));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_digest_mismatch_fails_without_retry() {
        let expected = "AB12";
        assert!(digest_mismatch(None, Some("ff")).is_none(), "nothing expected");
        assert!(
            digest_mismatch(Some(expected), Some("ab12")).is_none(),
            "case does not matter"
        );
        let wrong = digest_mismatch(Some(expected), Some("ff")).map(|f| (f.reason, f.message, f.retriable));
        assert_eq!(
            wrong,
            Some((
                reason::DIGEST_MISMATCH.to_owned(),
                "the file's SHA-256 is ff, the job expects AB12".to_owned(),
                false
            ))
        );
        let unknown = digest_mismatch(Some(expected), None).map(|f| f.message);
        assert_eq!(
            unknown.as_deref(),
            Some("the file's SHA-256 is unknown, the job expects AB12")
        );
    }
}
