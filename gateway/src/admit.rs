//! Which Kafka progress events the gateway believes: only those that match their job. Anyone
//! who can write to the topic could otherwise push events into another user's stream.
//!
//! An event names its job (namespace, name, analyzeId = the job's uid), its user and its attempt
//! (attempt, eventId, serverId). It is accepted when the job exists with that uid and user, and
//! the attempt is the job's current one or one of its `status.pastAttempts`. The job's view may
//! lag behind the worker's (a new job, a new attempt placed since the cache last heard): such
//! events are looked up again from the API server before they are refused.

use streamscan_api::{AnalysisJob, AttemptRef, ProgressEvent};

/// What the gateway knows of one job, for judging its events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFacts {
    pub uid: String,
    pub user_id: String,
    /// The current attempt, once placed.
    pub current: Option<AttemptRef>,
    pub past: Vec<AttemptRef>,
}

impl JobFacts {
    pub fn of(job: &AnalysisJob) -> Self {
        let status = job.status.as_ref();
        let current = status.and_then(|s| {
            Some(AttemptRef {
                attempt: s.attempt?,
                event_id: s.event_id.clone()?,
                server_id: s.server_id.clone()?,
            })
        });
        JobFacts {
            uid: job.metadata.uid.clone().unwrap_or_default(),
            user_id: job.spec.user_id.clone(),
            current,
            past: status.map(|s| s.past_attempts.clone()).unwrap_or_default(),
        }
    }
}

/// Why an event was refused (the `reason` label of `events_refused_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No job of that namespace and name (or it is outside the gateway's namespace).
    NoSuchJob,
    /// The job of that name has another uid: an event of a deleted job, or a forged analyzeId.
    OtherJob,
    /// The event's userId is not the job's owner.
    OtherUser,
    /// The attempt number or eventId is not one the controller placed.
    UnknownAttempt,
    /// The attempt ran on another server than the event claims.
    OtherServer,
    /// The API server could not be asked about a job the cache does not know yet.
    Unverifiable,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoSuchJob => "no_such_job",
            Refusal::OtherJob => "other_job",
            Refusal::OtherUser => "other_user",
            Refusal::UnknownAttempt => "unknown_attempt",
            Refusal::OtherServer => "other_server",
            Refusal::Unverifiable => "unverifiable",
        }
    }

    /// One sentence for the log.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::NoSuchJob => "no such job",
            Refusal::OtherJob => "analyzeId is not the job's uid",
            Refusal::OtherUser => "userId is not the job's owner",
            Refusal::UnknownAttempt => "attempt and eventId are not an attempt of the job",
            Refusal::OtherServer => "serverId is not the server of that attempt",
            Refusal::Unverifiable => "the API server could not be asked about the job",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    Accept,
    Refuse(Refusal),
    /// Refused on this view of the job, which may be older than the event: look again.
    Recheck(Refusal),
}

/// Judges `event` against what is known of its job (`None`: no job of that name is known).
pub fn judge(event: &ProgressEvent, job: Option<&JobFacts>) -> Judgement {
    let Some(job) = job else {
        return Judgement::Recheck(Refusal::NoSuchJob);
    };
    if job.uid != event.analyze_id {
        // The name may have been reused since the view was taken, either way round.
        return Judgement::Recheck(Refusal::OtherJob);
    }
    if job.user_id != event.user_id {
        // spec.userId cannot change, so a fresher view would say the same.
        return Judgement::Refuse(Refusal::OtherUser);
    }
    let Ok(attempt) = i32::try_from(event.attempt) else {
        return Judgement::Refuse(Refusal::UnknownAttempt);
    };
    let known = job.current.iter().chain(&job.past).find(|a| a.attempt == attempt);
    match known {
        Some(a) if a.event_id != event.event_id => Judgement::Refuse(Refusal::UnknownAttempt),
        Some(a) if a.server_id != event.server_id => Judgement::Refuse(Refusal::OtherServer),
        Some(_) => Judgement::Accept,
        // A later attempt than the view knows: placed since, perhaps.
        None if job.current.as_ref().is_none_or(|c| attempt > c.attempt) => Judgement::Recheck(Refusal::UnknownAttempt),
        // An earlier attempt no longer (or never) recorded.
        None => Judgement::Refuse(Refusal::UnknownAttempt),
    }
}

/// Whether a second look, with a fresh view, settles the event: a `Recheck` on a fresh view is
/// a refusal.
pub fn judge_fresh(event: &ProgressEvent, job: Option<&JobFacts>) -> Result<(), Refusal> {
    match judge(event, job) {
        Judgement::Accept => Ok(()),
        Judgement::Refuse(why) | Judgement::Recheck(why) => Err(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamscan_api::EventStatus;

    fn attempt(n: i32, event_id: &str, server: &str) -> AttemptRef {
        AttemptRef {
            attempt: n,
            event_id: event_id.into(),
            server_id: server.into(),
        }
    }

    fn job() -> JobFacts {
        JobFacts {
            uid: "uid-1".into(),
            user_id: "alice".into(),
            current: Some(attempt(3, "ev-3", "1")),
            past: vec![attempt(1, "ev-1", "0"), attempt(2, "ev-2", "0")],
        }
    }

    fn event(attempt: u32, event_id: &str, server: &str) -> ProgressEvent {
        ProgressEvent {
            user_id: "alice".into(),
            event_id: event_id.into(),
            server_id: server.into(),
            analyze_id: "uid-1".into(),
            namespace: "default".into(),
            name: "j".into(),
            attempt,
            status: EventStatus::Progress,
            seq: 4,
            bytes_processed: 40,
            total_bytes: Some(100),
            ..ProgressEvent::default()
        }
    }

    #[test]
    fn the_current_and_past_attempts_are_accepted() {
        let j = job();
        assert_eq!(judge(&event(3, "ev-3", "1"), Some(&j)), Judgement::Accept);
        assert_eq!(judge(&event(1, "ev-1", "0"), Some(&j)), Judgement::Accept);
        assert_eq!(judge(&event(2, "ev-2", "0"), Some(&j)), Judgement::Accept);
    }

    #[test]
    fn another_users_or_jobs_events_are_refused() {
        let j = job();
        let mut e = event(3, "ev-3", "1");
        e.user_id = "mallory".into();
        assert_eq!(judge(&e, Some(&j)), Judgement::Refuse(Refusal::OtherUser));
        let mut e = event(3, "ev-3", "1");
        e.analyze_id = "uid-other".into();
        assert_eq!(judge(&e, Some(&j)), Judgement::Recheck(Refusal::OtherJob));
        assert_eq!(judge_fresh(&e, Some(&j)), Err(Refusal::OtherJob));
        assert_eq!(judge(&e, None), Judgement::Recheck(Refusal::NoSuchJob));
        assert_eq!(judge_fresh(&e, None), Err(Refusal::NoSuchJob));
    }

    #[test]
    fn a_known_attempt_number_with_another_event_id_or_server_is_refused() {
        let j = job();
        for (e, why) in [
            (event(3, "ev-forged", "1"), Refusal::UnknownAttempt),
            (event(1, "ev-3", "0"), Refusal::UnknownAttempt),
            (event(3, "ev-3", "0"), Refusal::OtherServer),
            (event(2, "ev-2", "1"), Refusal::OtherServer),
        ] {
            assert_eq!(judge(&e, Some(&j)), Judgement::Refuse(why), "{e:?}");
        }
    }

    #[test]
    fn a_later_attempt_is_looked_up_again_an_earlier_unrecorded_one_refused() {
        let j = job();
        assert_eq!(
            judge(&event(4, "ev-4", "1"), Some(&j)),
            Judgement::Recheck(Refusal::UnknownAttempt)
        );
        let unplaced = JobFacts {
            current: None,
            past: Vec::new(),
            ..job()
        };
        assert_eq!(
            judge(&event(1, "ev-1", "0"), Some(&unplaced)),
            Judgement::Recheck(Refusal::UnknownAttempt)
        );
        let trimmed = JobFacts {
            past: vec![attempt(2, "ev-2", "0")],
            ..job()
        };
        assert_eq!(
            judge(&event(1, "ev-1", "0"), Some(&trimmed)),
            Judgement::Refuse(Refusal::UnknownAttempt)
        );
        assert_eq!(
            judge(&event(u32::MAX, "ev-3", "1"), Some(&j)),
            Judgement::Refuse(Refusal::UnknownAttempt)
        );
    }

    #[test]
    fn facts_come_from_the_status_the_controller_wrote() {
        let job: AnalysisJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "streamscan.io/v1alpha1", "kind": "AnalysisJob",
            "metadata": {"name": "j", "namespace": "default", "uid": "uid-1"},
            "spec": {"userId": "alice", "source": {"url": {"location": "https://example.com/f"}}},
            "status": {"attempt": 2, "eventId": "ev-2", "serverId": "1",
                       "pastAttempts": [{"attempt": 1, "eventId": "ev-1", "serverId": "0"}]},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let facts = JobFacts::of(&job);
        assert_eq!(facts.current, Some(attempt(2, "ev-2", "1")));
        assert_eq!(facts.past, vec![attempt(1, "ev-1", "0")]);
        assert_eq!((facts.uid.as_str(), facts.user_id.as_str()), ("uid-1", "alice"));
    }
}
