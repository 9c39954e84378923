//! Deleting a deleted job's stored result: on which server, and what to do when it fails. The
//! I/O is in [`super::reconcile`]; these decisions are pure.

use std::time::Duration;

use streamscan_api::AnalysisJobStatus;

/// Longest wait between two cleanup attempts.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// The server holding the job's stored result (the one its result names, else the last one it
/// was pinned to); None: it never ran anywhere, nothing to delete.
pub fn result_server(status: &AnalysisJobStatus) -> Option<String> {
    status
        .result
        .as_ref()
        .map(|r| r.server_id.clone())
        .filter(|id| !id.is_empty())
        .or_else(|| status.server_id.clone())
}

/// What follows a failed attempt to delete the result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Record `attempts` and try again after `delay` (2^attempts seconds, at most a minute).
    Retry { attempts: i32, delay: Duration },
    /// `attempts` made, the limit reached: drop the finalizer and say what was left behind.
    GiveUp { attempts: i32 },
}

/// Decides after a failed delete, given the attempts recorded before it.
pub fn after_failure(previous: Option<i32>, max_attempts: i32) -> AfterFailure {
    let attempts = previous.unwrap_or(0).saturating_add(1);
    if attempts >= max_attempts {
        return AfterFailure::GiveUp { attempts };
    }
    let exponent = u32::try_from(attempts).unwrap_or(u32::MAX);
    let delay = Duration::from_secs(2u64.saturating_pow(exponent)).min(MAX_DELAY);
    AfterFailure::Retry { attempts, delay }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamscan_api::ResultSummary;

    #[test]
    fn retries_back_off_to_a_minute_then_give_up_at_the_limit() {
        let delays: Vec<AfterFailure> = (0..7).map(|n| after_failure(Some(n), 8)).collect();
        let secs: Vec<u64> = delays
            .iter()
            .filter_map(|d| match d {
                AfterFailure::Retry { delay, .. } => Some(delay.as_secs()),
                AfterFailure::GiveUp { .. } => None,
            })
            .collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(
            after_failure(None, 5),
            AfterFailure::Retry {
                attempts: 1,
                delay: Duration::from_secs(2)
            }
        );
        assert_eq!(after_failure(Some(4), 5), AfterFailure::GiveUp { attempts: 5 });
        assert_eq!(after_failure(None, 1), AfterFailure::GiveUp { attempts: 1 });
        assert_eq!(
            after_failure(Some(i32::MAX), 5),
            AfterFailure::GiveUp { attempts: i32::MAX }
        );
    }

    #[test]
    fn the_result_names_its_server_else_the_last_pin() {
        let mut status = AnalysisJobStatus {
            server_id: Some("2".into()),
            ..Default::default()
        };
        assert_eq!(result_server(&status).as_deref(), Some("2"));
        status.result = Some(ResultSummary {
            server_id: "1".into(),
            ..Default::default()
        });
        assert_eq!(result_server(&status).as_deref(), Some("1"));
        status.result = Some(ResultSummary::default());
        assert_eq!(
            result_server(&status).as_deref(),
            Some("2"),
            "an empty serverId names nothing"
        );
        assert_eq!(result_server(&AnalysisJobStatus::default()), None);
    }
}
