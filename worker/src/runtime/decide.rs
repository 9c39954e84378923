//! What to do with one job, given what the API server says and what this worker is doing.
//! Pure: no I/O, exhaustively tested below. The rules are those of
//! `docs/internal-contracts.md` ("When a worker runs an attempt").

use streamscan_api::{AnalysisJob, ExecutionState, Phase};

/// One attempt of one job: what the controller assigned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AttemptId {
    pub attempt: i32,
    pub event_id: String,
}

/// The fields of a job that matter to the worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobView<'a> {
    pub phase: Phase,
    pub server_id: Option<&'a str>,
    pub attempt: Option<i32>,
    pub event_id: Option<&'a str>,
    pub cancel: bool,
    /// The job is gone (watch delete) or being deleted.
    pub deleted: bool,
    /// What the worker last wrote: (attempt, eventId, state).
    pub execution: Option<(i32, &'a str, ExecutionState)>,
}

impl<'a> JobView<'a> {
    pub fn of(job: &'a AnalysisJob, deleted: bool) -> Self {
        let status = job.status.as_ref();
        JobView {
            phase: job.phase(),
            server_id: status.and_then(|s| s.server_id.as_deref()),
            attempt: status.and_then(|s| s.attempt),
            event_id: status.and_then(|s| s.event_id.as_deref()),
            cancel: job.is_cancel_requested(),
            deleted: deleted || job.metadata.deletion_timestamp.is_some(),
            execution: status
                .and_then(|s| s.execution.as_ref())
                .map(|e| (e.attempt, e.event_id.as_str(), e.state)),
        }
    }

    /// The attempt this server should be running, if any.
    fn current_attempt(&self, me: &str) -> Option<AttemptId> {
        if self.deleted || self.server_id != Some(me) || !matches!(self.phase, Phase::Scheduled | Phase::Running) {
            return None;
        }
        match (self.attempt, self.event_id) {
            (Some(attempt), Some(event_id)) if attempt > 0 && !event_id.is_empty() => Some(AttemptId {
                attempt,
                event_id: event_id.to_owned(),
            }),
            _ => None,
        }
    }
}

/// What this worker is doing with the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Local<'a> {
    Idle,
    /// Running (or cancelling) this attempt.
    Running(&'a AttemptId),
    /// This process already ran this attempt to its end.
    Done(&'a AttemptId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run the attempt, from its checkpoint when one is stored.
    Start(AttemptId),
    /// Leave the running attempt alone.
    Keep,
    /// Stop the running attempt without reporting anything more (stale attempt, re-pin, phase
    /// left Scheduled/Running, job deleted).
    Stop,
    /// Stop the running attempt, roll back what it wrote, report CANCELLED.
    Cancel,
    /// Roll back an attempt that is not running here (cancelled while waiting, or before a
    /// restart) and report CANCELLED.
    CancelIdle(AttemptId),
    Ignore,
}

pub fn decide(me: &str, job: &JobView<'_>, local: Local<'_>) -> Decision {
    let Some(current) = job.current_attempt(me) else {
        return match local {
            Local::Running(_) => Decision::Stop,
            Local::Idle | Local::Done(_) => Decision::Ignore,
        };
    };
    if let Local::Running(running) = local
        && *running != current
    {
        // The watch loop re-decides once the old attempt has stopped, and starts the new one.
        return Decision::Stop;
    }
    if let Local::Done(done) = local
        && *done == current
    {
        return Decision::Ignore;
    }
    let reported_end = job.execution.is_some_and(|(attempt, event_id, state)| {
        attempt == current.attempt && event_id == current.event_id && state != ExecutionState::Running
    });
    match local {
        // Our own final report, seen before the task ended: nothing left to do.
        Local::Running(_) if reported_end => Decision::Keep,
        Local::Running(_) if job.cancel => Decision::Cancel,
        Local::Running(_) => Decision::Keep,
        _ if reported_end => Decision::Ignore,
        _ if job.cancel => Decision::CancelIdle(current),
        _ => Decision::Start(current),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "s1";

    fn a(n: i32, e: &str) -> AttemptId {
        AttemptId {
            attempt: n,
            event_id: e.into(),
        }
    }

    fn job(phase: Phase) -> JobView<'static> {
        JobView {
            phase,
            server_id: Some(ME),
            attempt: Some(1),
            event_id: Some("e1"),
            cancel: false,
            deleted: false,
            execution: None,
        }
    }

    #[test]
    fn starts_a_scheduled_or_running_attempt_pinned_here() {
        for phase in [Phase::Scheduled, Phase::Running] {
            assert_eq!(decide(ME, &job(phase), Local::Idle), Decision::Start(a(1, "e1")));
        }
    }

    #[test]
    fn resumes_after_a_restart_when_the_cr_says_running() {
        let mut j = job(Phase::Running);
        j.execution = Some((1, "e1", ExecutionState::Running));
        assert_eq!(decide(ME, &j, Local::Idle), Decision::Start(a(1, "e1")));
    }

    #[test]
    fn ignores_jobs_of_other_servers_or_phases_or_without_an_attempt() {
        let mut other = job(Phase::Scheduled);
        other.server_id = Some("s2");
        let mut unpinned = job(Phase::Scheduled);
        unpinned.server_id = None;
        let mut no_attempt = job(Phase::Scheduled);
        no_attempt.attempt = None;
        let mut no_event = job(Phase::Scheduled);
        no_event.event_id = None;
        let mut zero = job(Phase::Scheduled);
        zero.attempt = Some(0);
        let mut deleted = job(Phase::Running);
        deleted.deleted = true;
        let mut cases = vec![other, unpinned, no_attempt, no_event, zero, deleted];
        for phase in [Phase::Pending, Phase::Succeeded, Phase::Failed, Phase::Cancelled] {
            cases.push(job(phase));
        }
        for j in cases {
            assert_eq!(decide(ME, &j, Local::Idle), Decision::Ignore, "{j:?}");
            let running = a(1, "e1");
            assert_eq!(decide(ME, &j, Local::Running(&running)), Decision::Stop, "{j:?}");
            assert_eq!(decide(ME, &j, Local::Done(&running)), Decision::Ignore, "{j:?}");
        }
    }

    #[test]
    fn stops_a_stale_attempt_when_attempt_or_event_id_changes() {
        let j = job(Phase::Scheduled);
        for stale in [a(0, "e1"), a(1, "e0"), a(2, "e1")] {
            assert_eq!(decide(ME, &j, Local::Running(&stale)), Decision::Stop);
        }
        // A new attempt after one that ended here starts.
        assert_eq!(decide(ME, &j, Local::Done(&a(0, "e0"))), Decision::Start(a(1, "e1")));
    }

    #[test]
    fn keeps_the_running_attempt() {
        let running = a(1, "e1");
        assert_eq!(
            decide(ME, &job(Phase::Running), Local::Running(&running)),
            Decision::Keep
        );
        let mut j = job(Phase::Running);
        j.execution = Some((1, "e1", ExecutionState::Running));
        assert_eq!(decide(ME, &j, Local::Running(&running)), Decision::Keep);
    }

    #[test]
    fn never_reruns_an_attempt_that_ended() {
        for state in [
            ExecutionState::Succeeded,
            ExecutionState::Failed,
            ExecutionState::Cancelled,
        ] {
            let mut j = job(Phase::Running);
            j.execution = Some((1, "e1", state));
            assert_eq!(decide(ME, &j, Local::Idle), Decision::Ignore);
            let running = a(1, "e1");
            assert_eq!(decide(ME, &j, Local::Running(&running)), Decision::Keep);
            j.cancel = true;
            assert_eq!(decide(ME, &j, Local::Idle), Decision::Ignore);
        }
        // Ended here, the CR not updated yet (watch lag): no second run.
        let done = a(1, "e1");
        assert_eq!(decide(ME, &job(Phase::Running), Local::Done(&done)), Decision::Ignore);
        let mut cancelled = job(Phase::Running);
        cancelled.cancel = true;
        assert_eq!(decide(ME, &cancelled, Local::Done(&done)), Decision::Ignore);
    }

    #[test]
    fn an_older_attempts_report_does_not_end_the_current_one() {
        let mut j = job(Phase::Scheduled);
        j.attempt = Some(2);
        j.event_id = Some("e2");
        j.execution = Some((1, "e1", ExecutionState::Failed));
        assert_eq!(decide(ME, &j, Local::Idle), Decision::Start(a(2, "e2")));
    }

    #[test]
    fn cancel_stops_and_rolls_back() {
        let mut j = job(Phase::Running);
        j.cancel = true;
        let running = a(1, "e1");
        assert_eq!(decide(ME, &j, Local::Running(&running)), Decision::Cancel);
        assert_eq!(decide(ME, &j, Local::Idle), Decision::CancelIdle(a(1, "e1")));
        // Cancel of a stale attempt: stop silently, the current attempt is cancelled on its own.
        let stale = a(0, "e0");
        assert_eq!(decide(ME, &j, Local::Running(&stale)), Decision::Stop);
        // The controller already ended the job: nothing to report.
        let mut ended = j.clone();
        ended.phase = Phase::Cancelled;
        assert_eq!(decide(ME, &ended, Local::Idle), Decision::Ignore);
        assert_eq!(decide(ME, &ended, Local::Running(&running)), Decision::Stop);
    }
}
