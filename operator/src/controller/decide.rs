//! The controller's decision core: from one job and the observed servers, decide the job's next
//! status, its server label, the capacity it holds, the Events to record, and when to look again.
//! Pure: no I/O, no clock, no randomness (the shell passes `now` and a fresh attempt id).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use streamscan_api::conditions::{Desired, Status, find_condition, is_condition_true, set_condition};
use streamscan_api::job::MAX_PAST_ATTEMPTS;
use streamscan_api::names::{FINALIZER_RESULTS, condition, reason};
use streamscan_api::{AnalysisJob, AnalysisJobStatus, AttemptRef, Execution, ExecutionState, Phase};

use super::servers::{Health, PodRule, Server, ServerSet};

/// Tunables, from flags.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Which worker pods are servers, and their capacity unless annotated.
    pub pods: PodRule,
    /// How long a pinned server may stay NotReady before its jobs move.
    pub not_ready_grace: SignedDuration,
    /// How long a cancelled job waits for a server that is not Ready to roll back.
    pub cancel_grace: SignedDuration,
    /// First retry delay; doubles per retriable failure up to `backoff_cap`.
    pub backoff_base: SignedDuration,
    pub backoff_cap: SignedDuration,
    /// `spec.backoffLimit` when unset (Kubernetes Jobs use 6).
    pub default_backoff_limit: i32,
    /// How often a waiting job is looked at again even if nothing wakes it.
    pub pending_resync: SignedDuration,
    /// `spec.activeDeadlineSeconds` when unset: no job runs forever (None: unset means none).
    pub default_active_deadline: Option<SignedDuration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            pods: PodRule {
                default_capacity: 4,
                statefulset: None,
            },
            not_ready_grace: SignedDuration::from_secs(30),
            cancel_grace: SignedDuration::from_secs(30),
            backoff_base: SignedDuration::from_secs(10),
            backoff_cap: SignedDuration::from_secs(360),
            default_backoff_limit: 6,
            pending_resync: SignedDuration::from_secs(30),
            default_active_deadline: Some(SignedDuration::from_hours(24)),
        }
    }
}

/// What the shell observed for one reconcile.
pub struct Observed<'a> {
    pub job: &'a AnalysisJob,
    pub servers: &'a ServerSet,
    /// Jobs holding capacity on each server, this job excluded.
    pub load: &'a BTreeMap<String, usize>,
    pub now: Timestamp,
    /// Identity for a new attempt, used only if this decision starts one.
    pub new_event_id: &'a str,
}

/// Normal or Warning, as for Kubernetes Events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// An Event to record on the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub type_: EventType,
    pub reason: &'static str,
    pub message: String,
}

/// What to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The complete status the job should have; written only if it differs.
    pub status: AnalysisJobStatus,
    /// The server whose capacity the job holds afterwards (None: holds nothing).
    pub holds: Option<String>,
    /// Set the `streamscan.io/server-id` label to this value.
    pub label: Option<String>,
    /// Add the results-cleanup finalizer.
    pub add_finalizer: bool,
    /// Delete the job (its TTL after finishing has passed).
    pub delete: bool,
    pub notes: Vec<Note>,
    pub requeue_after: Option<Duration>,
}

/// Decides the next step for a job that is not being deleted.
pub fn decide(o: &Observed<'_>, s: &Settings) -> Decision {
    let job = o.job;
    let mut st = job.status.clone().unwrap_or_default();
    st.observed_generation = job.metadata.generation;
    let mut d = Decision {
        status: AnalysisJobStatus::default(),
        holds: None,
        label: None,
        add_finalizer: !job.metadata.finalizers.iter().flatten().any(|f| f == FINALIZER_RESULTS),
        delete: false,
        notes: Vec::new(),
        requeue_after: None,
    };
    let mut ctx = Ctx {
        o,
        s,
        d: &mut d,
        st: &mut st,
    };
    ctx.step();
    d.status = st;
    d
}

struct Ctx<'a, 'b> {
    o: &'a Observed<'b>,
    s: &'a Settings,
    d: &'a mut Decision,
    st: &'a mut AnalysisJobStatus,
}

impl Ctx<'_, '_> {
    fn step(&mut self) {
        let phase = self.st.phase.unwrap_or(Phase::Pending);
        if self.st.phase.is_none() {
            self.accept();
        }
        self.refresh_generation();

        if phase.is_finished() {
            return self.finished();
        }
        let pinned = matches!(phase, Phase::Scheduled | Phase::Running);
        let report = pinned.then(|| self.current_report()).flatten();

        // The worker's word on the current attempt comes first: a finished analysis stands even
        // if a deadline or a cancel arrived while its last status write was in flight.
        if let Some(report) = &report
            && self.reported_end(report)
        {
            return;
        }
        let job = self.o.job;
        if job.is_cancel_requested() {
            return self.cancel(pinned);
        }
        if self.deadline_passed() {
            return;
        }
        if job.is_suspended() {
            return self.suspend(pinned);
        }
        if is_condition_true(&self.st.conditions, condition::SUSPENDED) {
            self.cond(condition::SUSPENDED, Status::False, reason::SUSPENDED, "resumed".into());
            self.note(
                EventType::Normal,
                reason::RESUMED,
                "spec.suspend cleared; the job will be placed again".into(),
            );
        }

        if pinned {
            return self.pinned(report.as_ref());
        }
        if let Some(next) = self.st.next_attempt_time.as_ref().map(|t| t.0)
            && next > self.o.now
        {
            self.requeue_at(next);
            return;
        }
        self.place();
    }

    /// A new job: Pending, every condition False, and an Event saying it was accepted.
    fn accept(&mut self) {
        self.st.phase = Some(Phase::Pending);
        for type_ in [
            condition::SCHEDULED,
            condition::RUNNING,
            condition::COMPLETE,
            condition::FAILED,
        ] {
            self.cond(type_, Status::False, reason::CREATED, "job accepted".into());
        }
        let kind = self.o.job.spec.source.kind();
        self.note(EventType::Normal, reason::CREATED, format!("accepted; source: {kind}"));
    }

    /// Ends the job as the worker reports its attempt ended; false while it runs.
    fn reported_end(&mut self, report: &Execution) -> bool {
        match report.state {
            ExecutionState::Succeeded => {
                let server = self.st.server_id.clone().unwrap_or_default();
                self.finish(
                    Phase::Succeeded,
                    reason::COMPLETED,
                    format!("analysis completed on server {server}"),
                );
            }
            ExecutionState::Cancelled => self.finish(
                Phase::Cancelled,
                reason::CANCELLED,
                "cancelled; the worker rolled back its partial work".into(),
            ),
            ExecutionState::Failed => self.attempt_failed(report),
            ExecutionState::Running => return false,
        }
        true
    }

    /// Fails the job once its deadline has passed (true); otherwise wakes it at the deadline.
    fn deadline_passed(&mut self) -> bool {
        let Some(deadline) = self.deadline() else {
            return false;
        };
        if deadline > self.o.now {
            self.requeue_at(deadline);
            return false;
        }
        let message = match self.o.job.spec.active_deadline_seconds {
            Some(secs) => format!("not finished within activeDeadlineSeconds ({secs} s)"),
            None => format!(
                "not finished within the controller's default deadline ({} s, \
                 --default-active-deadline-seconds); set spec.activeDeadlineSeconds for longer analyses",
                self.s.default_active_deadline.map_or(0, |d| d.as_secs())
            ),
        };
        self.finish(Phase::Failed, reason::DEADLINE_EXCEEDED, message);
        true
    }

    /// The worker's report, if it is about the current attempt (a stale attempt's is ignored).
    fn current_report(&self) -> Option<Execution> {
        let e = self.st.execution.as_ref()?;
        (Some(e.attempt) == self.st.attempt && Some(&e.event_id) == self.st.event_id.as_ref()).then(|| e.clone())
    }

    /// Whether the placed attempt counts against its server's capacity. An upload job waits for
    /// its body without taking one of the worker's slots (it reports Running once it has the
    /// body and a slot), so a placed upload that has not started holds none here either: uploads
    /// that never come keep no other job from the server.
    fn holds_slot(&self, report: Option<&Execution>) -> bool {
        self.o.job.spec.source.upload.is_none() || report.is_some()
    }

    fn deadline(&self) -> Option<Timestamp> {
        let limit = match self.o.job.spec.active_deadline_seconds {
            Some(secs) => SignedDuration::from_secs(secs),
            None => self.s.default_active_deadline?,
        };
        let start = self.st.start_time.as_ref()?.0;
        start.checked_add(limit).ok()
    }

    fn pinned(&mut self, report: Option<&Execution>) {
        let server_id = self.st.server_id.clone().unwrap_or_default();
        match self.o.servers.health(&server_id, self.o.now, self.s.not_ready_grace) {
            Health::Healthy(server) => {
                self.d.holds = self.holds_slot(report).then(|| server_id.clone());
                self.d.label = Some(server_id.clone());
                if self.st.pod_name.as_deref() != Some(server.pod_name.as_str()) {
                    // The StatefulSet replaced the pod; the serverId (and its volume) stayed.
                    self.st.pod_name = Some(server.pod_name.clone());
                }
                if report.is_some_and(|r| r.state == ExecutionState::Running) {
                    self.set_phase(
                        Phase::Running,
                        reason::STARTED,
                        format!("running on server {server_id}"),
                    );
                }
            }
            Health::Unready { until } => {
                // Keep the slot while the server may come back with its checkpoint.
                self.d.holds = self.holds_slot(report).then(|| server_id.clone());
                self.d.label = Some(server_id);
                self.requeue_at(until);
            }
            Health::Dead | Health::Gone => self.server_lost(&server_id),
        }
    }

    fn server_lost(&mut self, server_id: &str) {
        let job = self.o.job;
        if !job.spec.source.is_rereadable() {
            return self.finish(
                Phase::Failed,
                reason::SOURCE_LOST,
                format!(
                    "server {server_id} is gone and the uploaded file lived only there; upload it again in a new job"
                ),
            );
        }
        if !self.retries_left() {
            return self.finish(
                Phase::Failed,
                reason::SERVER_UNAVAILABLE,
                format!(
                    "server {server_id} is gone and the backoff limit ({}) is reached",
                    self.backoff_limit()
                ),
            );
        }
        self.st.failed_attempts = Some(self.failed_attempts() + 1);
        self.note(
            EventType::Warning,
            reason::SERVER_UNAVAILABLE,
            format!("server {server_id} is gone or not Ready; moving the job to another server"),
        );
        self.unpin();
        self.place();
    }

    fn attempt_failed(&mut self, report: &Execution) {
        let why = report
            .message
            .clone()
            .unwrap_or_else(|| "the worker reported a failure".into());
        let worker_reason = report.reason.clone().unwrap_or_else(|| reason::ANALYSIS_FAILED.into());
        if !report.retriable.unwrap_or(false) {
            return self.finish_owned(Phase::Failed, worker_reason, why);
        }
        if !self.retries_left() {
            let limit = self.backoff_limit();
            return self.finish(
                Phase::Failed,
                reason::BACKOFF_LIMIT_EXCEEDED,
                format!("{why} (backoff limit {limit} reached)"),
            );
        }
        let failures = self.failed_attempts() + 1;
        self.st.failed_attempts = Some(failures);
        let delay = backoff(self.s, failures);
        let next = self.o.now.checked_add(delay).unwrap_or(self.o.now);
        self.st.next_attempt_time = Some(Time(next));
        let message = format!(
            "attempt {} failed ({why}); retry {failures} of {} in {}s",
            self.st.attempt.unwrap_or_default(),
            self.backoff_limit(),
            delay.as_secs()
        );
        self.note(EventType::Warning, reason::RETRYING, message.clone());
        self.unpin();
        self.cond(condition::SCHEDULED, Status::False, reason::RETRYING, message);
        self.requeue_at(next);
    }

    fn cancel(&mut self, pinned: bool) {
        if !pinned {
            return self.finish(
                Phase::Cancelled,
                reason::CANCELLED,
                "cancelled before it started; nothing to roll back".into(),
            );
        }
        let server_id = self.st.server_id.clone().unwrap_or_default();
        let requested = match find_condition(&self.st.conditions, condition::CANCELLED) {
            Some(c) if c.status == Status::Unknown.as_str() => c.last_transition_time.0,
            _ => {
                self.cond(
                    condition::CANCELLED,
                    Status::Unknown,
                    reason::CANCEL_REQUESTED,
                    format!("waiting for server {server_id} to roll back"),
                );
                self.note(
                    EventType::Normal,
                    reason::CANCEL_REQUESTED,
                    format!("asked server {server_id} to stop and roll back"),
                );
                self.o.now
            }
        };
        match self.o.servers.health(&server_id, self.o.now, self.s.not_ready_grace) {
            Health::Healthy(_) => {
                self.d.holds = Some(server_id.clone());
                self.d.label = Some(server_id);
                self.requeue_after(self.s.cancel_grace);
            }
            Health::Gone => self.finish(
                Phase::Cancelled,
                reason::CANCELLED,
                format!("cancelled; server {server_id} is gone, nothing left to roll back"),
            ),
            Health::Unready { .. } | Health::Dead => {
                let until = requested.checked_add(self.s.cancel_grace).unwrap_or(requested);
                if until <= self.o.now {
                    self.finish(
                        Phase::Cancelled,
                        reason::CANCELLED,
                        format!(
                            "cancelled; server {server_id} did not confirm the rollback within {}s",
                            self.s.cancel_grace.as_secs()
                        ),
                    )
                } else {
                    self.d.holds = Some(server_id.clone());
                    self.d.label = Some(server_id);
                    self.requeue_at(until);
                }
            }
        }
    }

    fn suspend(&mut self, pinned: bool) {
        if pinned {
            self.unpin();
        }
        // As for Kubernetes Jobs, the deadline restarts when the job resumes.
        self.st.start_time = None;
        if !is_condition_true(&self.st.conditions, condition::SUSPENDED) {
            self.note(
                EventType::Normal,
                reason::SUSPENDED,
                "suspended; its server was released".into(),
            );
        }
        self.cond(
            condition::SUSPENDED,
            Status::True,
            reason::SUSPENDED,
            "spec.suspend is true".into(),
        );
        self.cond(
            condition::SCHEDULED,
            Status::False,
            reason::SUSPENDED,
            "suspended".into(),
        );
        self.set_phase(Phase::Pending, reason::SUSPENDED, "suspended".into());
    }

    fn place(&mut self) {
        let job = self.o.job;
        // An upload lives on the server that received it: it can only run there.
        let upload_home = (!job.spec.source.is_rereadable())
            .then(|| self.st.server_id.clone())
            .flatten();
        if let Some(home) = upload_home.as_deref()
            && matches!(
                self.o.servers.health(home, self.o.now, self.s.not_ready_grace),
                Health::Gone | Health::Dead
            )
        {
            return self.finish(
                Phase::Failed,
                reason::SOURCE_LOST,
                format!("server {home} that holds the uploaded file is gone; upload it again in a new job"),
            );
        }
        let pin = job.spec.server_id.as_deref().or(upload_home.as_deref());
        match self.least_loaded(pin) {
            Ok(server) => self.start_attempt(&server),
            Err(eligible) => self.wait_for_a_server(eligible, pin),
        }
    }

    /// The eligible server with a free slot that is least loaded (by fraction of capacity, then
    /// by free slots, then by id for stability); else how many servers were eligible.
    fn least_loaded(&self, pin: Option<&str>) -> Result<Server, usize> {
        let load = |id: &str| self.o.load.get(id).copied().unwrap_or(0);
        let mut eligible = 0usize;
        self.o
            .servers
            .eligible(pin, self.o.job.spec.server_selector.as_ref())
            .inspect(|_| eligible += 1)
            .filter(|srv| load(&srv.id) < srv.capacity)
            .min_by(|a, b| {
                let fa = load(&a.id) * b.capacity;
                let fb = load(&b.id) * a.capacity;
                fa.cmp(&fb).then(b.capacity.cmp(&a.capacity)).then(a.id.cmp(&b.id))
            })
            .cloned()
            .ok_or(eligible)
    }

    /// Pending with NoServerAvailable, saying why; an Event only when the reason is new.
    fn wait_for_a_server(&mut self, eligible: usize, pin: Option<&str>) {
        let message = match (eligible, pin) {
            (0, Some(p)) => format!("server {p} is not Ready (or its serverId is duplicated)"),
            (0, None) if self.o.job.spec.server_selector.is_some() => {
                "no Ready server matches spec.serverSelector".into()
            }
            (0, None) => "no Ready server".into(),
            (n, _) => format!("all {n} eligible servers are at capacity"),
        };
        if find_condition(&self.st.conditions, condition::SCHEDULED)
            .is_none_or(|c| c.reason != reason::NO_SERVER_AVAILABLE)
        {
            self.note(
                EventType::Normal,
                reason::NO_SERVER_AVAILABLE,
                format!("waiting: {message}"),
            );
        }
        self.cond(
            condition::SCHEDULED,
            Status::False,
            reason::NO_SERVER_AVAILABLE,
            message.clone(),
        );
        self.set_phase(Phase::Pending, reason::NO_SERVER_AVAILABLE, message);
        self.requeue_after(self.s.pending_resync);
    }

    /// A new attempt on `server`: a fresh eventId, the server label, a capacity slot.
    fn start_attempt(&mut self, server: &Server) {
        self.retire_current_attempt();
        let attempt = self.st.attempt.unwrap_or(0) + 1;
        self.st.attempt = Some(attempt);
        self.st.event_id = Some(self.o.new_event_id.to_owned());
        self.st.server_id = Some(server.id.clone());
        self.st.pod_name = Some(server.pod_name.clone());
        self.st.next_attempt_time = None;
        self.st.progress = None;
        if self.st.start_time.is_none() {
            self.st.start_time = Some(Time(self.o.now));
            if let Some(deadline) = self.deadline() {
                self.requeue_at(deadline);
            }
        }
        self.d.holds = self.holds_slot(None).then(|| server.id.clone());
        self.d.label = Some(server.id.clone());
        let message = format!(
            "placed on server {} (pod {}), attempt {attempt}",
            server.id, server.pod_name
        );
        self.cond(condition::SCHEDULED, Status::True, reason::PLACED, message.clone());
        self.note(EventType::Normal, reason::PLACED, message.clone());
        self.set_phase(Phase::Scheduled, reason::PLACED, message);
    }

    /// Moves the current attempt's identity to `pastAttempts` (bounded, oldest dropped), where
    /// the gateway still accepts its late events.
    fn retire_current_attempt(&mut self) {
        if let (Some(attempt), Some(event_id), Some(server_id)) =
            (self.st.attempt, self.st.event_id.clone(), self.st.server_id.clone())
        {
            let past = &mut self.st.past_attempts;
            past.push(AttemptRef {
                attempt,
                event_id,
                server_id,
            });
            let excess = past.len().saturating_sub(MAX_PAST_ATTEMPTS);
            past.drain(..excess);
        }
    }

    fn unpin(&mut self) {
        self.d.holds = None;
        self.st.phase = Some(Phase::Pending);
        self.cond(
            condition::RUNNING,
            Status::False,
            "Released",
            "the attempt's server was released".into(),
        );
    }

    fn finished(&mut self) {
        // A finished job never holds capacity; the label stays to locate its stored result.
        let Some(ttl) = self.o.job.spec.ttl_seconds_after_finished else {
            return;
        };
        let Some(done) = self.st.completion_time.as_ref().map(|t| t.0) else {
            return;
        };
        let expires = done.checked_add(SignedDuration::from_secs(ttl)).unwrap_or(done);
        if expires <= self.o.now {
            self.d.delete = true;
        } else {
            self.requeue_at(expires);
        }
    }

    fn finish(&mut self, phase: Phase, why: &'static str, message: String) {
        self.finish_owned(phase, why.to_owned(), message)
    }

    fn finish_owned(&mut self, phase: Phase, why: String, message: String) {
        self.d.holds = None;
        self.st.completion_time = Some(Time(self.o.now));
        self.st.next_attempt_time = None;
        let (type_, event_type) = match phase {
            Phase::Succeeded => (condition::COMPLETE, EventType::Normal),
            Phase::Cancelled => (condition::CANCELLED, EventType::Normal),
            _ => (condition::FAILED, EventType::Warning),
        };
        self.cond_owned(type_, Status::True, why.clone(), message.clone());
        self.cond_owned(condition::RUNNING, Status::False, why.clone(), "finished".into());
        self.st.phase = Some(phase);
        self.d.notes.push(Note {
            type_: event_type,
            reason: static_reason(&why),
            message,
        });
        self.finished();
    }

    fn set_phase(&mut self, phase: Phase, why: &'static str, message: String) {
        if self.st.phase == Some(phase) && phase != Phase::Running {
            return;
        }
        if phase == Phase::Running {
            if self.st.phase != Some(Phase::Running) {
                self.note(EventType::Normal, reason::STARTED, message.clone());
            }
            self.cond(condition::RUNNING, Status::True, why, message);
        }
        self.st.phase = Some(phase);
    }

    /// Keeps every condition's observedGeneration current without touching transition times.
    fn refresh_generation(&mut self) {
        let generation = self.o.job.metadata.generation;
        for c in &mut self.st.conditions {
            c.observed_generation = generation;
        }
    }

    fn cond(&mut self, type_: &'static str, status: Status, why: &'static str, message: String) {
        self.cond_owned(type_, status, why.to_owned(), message)
    }

    fn cond_owned(&mut self, type_: &'static str, status: Status, why: String, message: String) {
        let desired = Desired {
            type_,
            status,
            reason: &why,
            message,
            observed_generation: self.o.job.metadata.generation,
        };
        set_condition(&mut self.st.conditions, desired, Time(self.o.now));
    }

    fn note(&mut self, type_: EventType, why: &'static str, message: String) {
        self.d.notes.push(Note {
            type_,
            reason: why,
            message,
        });
    }

    fn requeue_at(&mut self, at: Timestamp) {
        let wait = at.duration_since(self.o.now);
        self.requeue_after(wait);
    }

    fn requeue_after(&mut self, wait: SignedDuration) {
        // At least a second, so a time exactly at the boundary is seen as passed when we look again.
        let wait = Duration::try_from(wait).unwrap_or_default().max(Duration::from_secs(1));
        self.d.requeue_after = Some(self.d.requeue_after.map_or(wait, |w| w.min(wait)));
    }

    fn backoff_limit(&self) -> i32 {
        self.o.job.spec.backoff_limit.unwrap_or(self.s.default_backoff_limit)
    }

    fn failed_attempts(&self) -> i32 {
        self.st.failed_attempts.unwrap_or(0)
    }

    fn retries_left(&self) -> bool {
        self.failed_attempts() < self.backoff_limit()
    }
}

/// Delay before retry number `failures` (1-based): base, doubling, capped.
pub fn backoff(s: &Settings, failures: i32) -> SignedDuration {
    let exp = u32::try_from(failures.saturating_sub(1)).unwrap_or(0).min(30);
    let secs = s.backoff_base.as_secs().saturating_mul(1i64 << exp);
    SignedDuration::from_secs(secs.min(s.backoff_cap.as_secs()))
}

/// Event reasons are `&'static str`; worker-supplied reasons map onto the known ones.
fn static_reason(why: &str) -> &'static str {
    [
        reason::COMPLETED,
        reason::CANCELLED,
        reason::DEADLINE_EXCEEDED,
        reason::BACKOFF_LIMIT_EXCEEDED,
        reason::SERVER_UNAVAILABLE,
        reason::SOURCE_LOST,
    ]
    .into_iter()
    .find(|r| *r == why)
    .unwrap_or(reason::ANALYSIS_FAILED)
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
