//! Every transition of the decision core.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use streamscan_api::conditions::find_condition;
use streamscan_api::names::{FINALIZER_RESULTS, condition, reason};
use streamscan_api::{
    AnalysisJob, AnalysisJobSpec, Execution, ExecutionState, Phase, Source, UploadSource, UrlSource, VolumeSource,
};

use super::*;
use crate::controller::servers::{Server, ServerSet};

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn server(id: &str, ready: bool, since: i64) -> Server {
    Server {
        id: id.into(),
        pod_name: format!("worker-{id}"),
        ready,
        ready_since: Some(ts(since)),
        capacity: 4,
        labels: BTreeMap::new(),
        endpoint: Some(format!("http://127.0.0.1:90{id}")),
    }
}

fn servers(ids: &[&str]) -> ServerSet {
    ServerSet::from_servers(ids.iter().map(|id| server(id, true, 0)))
}

fn url_job() -> AnalysisJob {
    let mut job = AnalysisJob::new(
        "fw",
        AnalysisJobSpec {
            user_id: "alice".into(),
            source: Source {
                url: Some(UrlSource {
                    location: "https://example.com/a.bin".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            analyzers: None,
            server_id: None,
            server_selector: None,
            active_deadline_seconds: None,
            backoff_limit: None,
            ttl_seconds_after_finished: None,
            suspend: None,
            cancel: None,
        },
    );
    job.metadata = ObjectMeta {
        name: Some("fw".into()),
        namespace: Some("default".into()),
        uid: Some("uid-1".into()),
        generation: Some(1),
        finalizers: Some(vec![FINALIZER_RESULTS.into()]),
        ..Default::default()
    };
    job
}

fn upload_job() -> AnalysisJob {
    let mut job = url_job();
    job.spec.source = Source {
        upload: Some(UploadSource::default()),
        ..Default::default()
    };
    job
}

fn volume_job() -> AnalysisJob {
    let mut job = url_job();
    job.spec.source = Source {
        volume: Some(VolumeSource {
            path: "a.bin".into(),
            sha256: None,
        }),
        ..Default::default()
    };
    job
}

struct World {
    servers: ServerSet,
    load: BTreeMap<String, usize>,
    now: Timestamp,
    settings: Settings,
}

impl World {
    fn new(ids: &[&str]) -> Self {
        World {
            servers: servers(ids),
            load: BTreeMap::new(),
            now: ts(0),
            settings: Settings::default(),
        }
    }

    fn decide(&self, job: &AnalysisJob) -> Decision {
        self.decide_with_id(job, "ev-new")
    }

    fn decide_with_id(&self, job: &AnalysisJob, id: &str) -> Decision {
        decide(
            &Observed {
                job,
                servers: &self.servers,
                load: &self.load,
                now: self.now,
                new_event_id: id,
            },
            &self.settings,
        )
    }

    /// Applies a decision to the job, as the shell would, and returns the new job.
    fn apply(&self, job: &AnalysisJob) -> (AnalysisJob, Decision) {
        let d = self.decide(job);
        let mut next = job.clone();
        next.status = Some(d.status.clone());
        (next, d)
    }
}

fn cond<'a>(d: &'a Decision, type_: &str) -> (&'a str, &'a str) {
    let c = find_condition(&d.status.conditions, type_).unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.as_str(), c.reason.as_str())
}

fn report(job: &mut AnalysisJob, state: ExecutionState, retriable: Option<bool>, why: Option<&str>) {
    let st = job.status.as_mut().unwrap();
    st.execution = Some(Execution {
        attempt: st.attempt.unwrap(),
        event_id: st.event_id.clone().unwrap(),
        state,
        reason: why.map(Into::into),
        message: why.map(|w| format!("{w} happened")),
        retriable,
        checkpoint_bytes: None,
    });
}

/// A job placed on a server, as after the first reconcile.
fn placed(world: &World, job: AnalysisJob) -> AnalysisJob {
    let (job, d) = world.apply(&job);
    assert_eq!(d.status.phase, Some(Phase::Scheduled));
    job
}

#[test]
fn first_reconcile_sets_phase_conditions_generation_and_places() {
    let w = World::new(&["0", "1"]);
    let mut job = url_job();
    job.metadata.finalizers = None;
    let d = w.decide(&job);
    assert!(d.add_finalizer);
    assert_eq!(d.status.phase, Some(Phase::Scheduled));
    assert_eq!(d.status.observed_generation, Some(1));
    assert_eq!(d.status.attempt, Some(1));
    assert_eq!(d.status.event_id.as_deref(), Some("ev-new"));
    assert_eq!(d.status.server_id.as_deref(), Some("0"));
    assert_eq!(d.status.pod_name.as_deref(), Some("worker-0"));
    assert_eq!(d.status.start_time, Some(Time(w.now)));
    assert_eq!(d.label.as_deref(), Some("0"));
    assert_eq!(d.holds.as_deref(), Some("0"));
    assert_eq!(cond(&d, condition::SCHEDULED), ("True", reason::PLACED));
    for c in [condition::RUNNING, condition::COMPLETE, condition::FAILED] {
        assert_eq!(cond(&d, c).0, "False");
    }
    assert!(d.status.conditions.iter().all(|c| c.observed_generation == Some(1)));
    assert!(d.notes.iter().any(|n| n.reason == reason::PLACED));
}

#[test]
fn least_loaded_server_wins_and_full_servers_are_skipped() {
    let mut w = World::new(&["0", "1", "2"]);
    w.load = BTreeMap::from([("0".into(), 2), ("1".into(), 1), ("2".into(), 3)]);
    assert_eq!(w.decide(&url_job()).status.server_id.as_deref(), Some("1"));
    w.load = BTreeMap::from([("0".into(), 4), ("1".into(), 4), ("2".into(), 3)]);
    assert_eq!(w.decide(&url_job()).status.server_id.as_deref(), Some("2"));
}

#[test]
fn load_is_compared_as_a_fraction_of_capacity() {
    let mut big = server("big", true, 0);
    big.capacity = 16;
    let w = World {
        servers: ServerSet::from_servers([big, server("small", true, 0)]),
        load: BTreeMap::from([("big".into(), 4), ("small".into(), 2)]),
        now: ts(0),
        settings: Settings::default(),
    };
    assert_eq!(w.decide(&url_job()).status.server_id.as_deref(), Some("big"));
}

#[test]
fn no_capacity_waits_with_no_server_available() {
    let mut w = World::new(&["0", "1"]);
    w.load = BTreeMap::from([("0".into(), 4), ("1".into(), 4)]);
    let d = w.decide(&url_job());
    assert_eq!(d.status.phase, Some(Phase::Pending));
    assert_eq!(d.holds, None);
    assert_eq!(d.label, None);
    assert_eq!(d.status.attempt, None);
    let (status, why) = cond(&d, condition::SCHEDULED);
    assert_eq!((status, why), ("False", reason::NO_SERVER_AVAILABLE));
    let c = find_condition(&d.status.conditions, condition::SCHEDULED).unwrap();
    assert!(
        c.message.contains("all 2 eligible servers are at capacity"),
        "{}",
        c.message
    );
    assert!(d.requeue_after.is_some());
}

#[test]
fn explicit_server_id_and_selector_are_honoured() {
    let mut w = World::new(&["0", "1"]);
    let mut job = url_job();
    job.spec.server_id = Some("1".into());
    assert_eq!(w.decide(&job).status.server_id.as_deref(), Some("1"));

    w.load = BTreeMap::from([("1".into(), 4)]);
    let d = w.decide(&job);
    assert_eq!(
        d.status.phase,
        Some(Phase::Pending),
        "a pinned job never spills to another server"
    );

    job.spec.server_id = Some("9".into());
    let d = w.decide(&job);
    let c = find_condition(&d.status.conditions, condition::SCHEDULED).unwrap();
    assert!(c.message.contains("server 9 is not Ready"), "{}", c.message);

    let mut job = url_job();
    job.spec.server_selector = Some(LabelSelector {
        match_labels: Some(BTreeMap::from([("pool".to_owned(), "large".to_owned())])),
        ..Default::default()
    });
    let d = w.decide(&job);
    let c = find_condition(&d.status.conditions, condition::SCHEDULED).unwrap();
    assert!(c.message.contains("serverSelector"), "{}", c.message);
}

#[test]
fn duplicated_server_id_gets_no_new_jobs() {
    let w = World {
        servers: ServerSet::from_servers([
            server("0", true, 0),
            Server {
                pod_name: "other".into(),
                ..server("0", true, 0)
            },
        ]),
        load: BTreeMap::new(),
        now: ts(0),
        settings: Settings::default(),
    };
    assert_eq!(w.decide(&url_job()).status.phase, Some(Phase::Pending));
}

#[test]
fn worker_running_report_moves_to_running_and_stale_reports_are_ignored() {
    let w = World::new(&["0"]);
    let mut job = placed(&w, url_job());
    // A report about an older attempt changes nothing.
    job.status.as_mut().unwrap().execution = Some(Execution {
        attempt: 0,
        event_id: "old".into(),
        state: ExecutionState::Succeeded,
        ..Default::default()
    });
    let d = w.decide(&job);
    assert_eq!(d.status.phase, Some(Phase::Scheduled));
    report(&mut job, ExecutionState::Running, None, None);
    let d = w.decide(&job);
    assert_eq!(d.status.phase, Some(Phase::Running));
    assert_eq!(cond(&d, condition::RUNNING), ("True", reason::STARTED));
    assert_eq!(d.holds.as_deref(), Some("0"));
    assert!(d.notes.iter().any(|n| n.reason == reason::STARTED));
}

#[test]
fn success_completes_and_releases_capacity() {
    let w = World::new(&["0"]);
    let mut job = placed(&w, url_job());
    report(&mut job, ExecutionState::Succeeded, None, None);
    let d = w.decide(&job);
    assert_eq!(d.status.phase, Some(Phase::Succeeded));
    assert_eq!(cond(&d, condition::COMPLETE), ("True", reason::COMPLETED));
    assert_eq!(cond(&d, condition::RUNNING).0, "False");
    assert_eq!(d.status.completion_time, Some(Time(w.now)));
    assert_eq!(d.holds, None);
}

#[test]
fn fatal_failure_fails_at_once_with_the_worker_reason() {
    let w = World::new(&["0"]);
    let mut job = placed(&w, url_job());
    report(&mut job, ExecutionState::Failed, Some(false), Some("DigestMismatch"));
    let d = w.decide(&job);
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&d, condition::FAILED), ("True", "DigestMismatch"));
    assert_eq!(d.holds, None);
    assert!(d.notes.iter().any(|n| n.type_ == EventType::Warning));
}

#[test]
fn retriable_failure_backs_off_exponentially_then_retries_with_a_new_attempt() {
    let mut w = World::new(&["0", "1"]);
    let mut job = placed(&w, url_job());
    report(&mut job, ExecutionState::Failed, Some(true), Some("NetworkError"));
    let (mut job, d) = w.apply(&job);
    assert_eq!(d.status.phase, Some(Phase::Pending));
    assert_eq!(d.status.failed_attempts, Some(1));
    assert_eq!(d.holds, None);
    assert_eq!(cond(&d, condition::SCHEDULED), ("False", reason::RETRYING));
    assert_eq!(d.status.next_attempt_time, Some(Time(ts(10))));
    assert_eq!(d.requeue_after, Some(Duration::from_secs(10)));

    // Before the backoff ends nothing is placed.
    w.now = ts(5);
    let d = w.decide(&job);
    assert_eq!(d.status.phase, Some(Phase::Pending));
    assert_eq!(d.requeue_after, Some(Duration::from_secs(5)));

    w.now = ts(10);
    let (next, d) = {
        let d = w.decide_with_id(&job, "ev-2");
        let mut next = job.clone();
        next.status = Some(d.status.clone());
        (next, d)
    };
    assert_eq!(d.status.phase, Some(Phase::Scheduled));
    assert_eq!(d.status.attempt, Some(2));
    assert_eq!(d.status.event_id.as_deref(), Some("ev-2"));
    assert_eq!(d.status.next_attempt_time, None);
    job = next;

    // Second failure doubles the delay.
    report(&mut job, ExecutionState::Failed, Some(true), Some("NetworkError"));
    let d = w.decide(&job);
    assert_eq!(d.status.failed_attempts, Some(2));
    assert_eq!(d.status.next_attempt_time, Some(Time(ts(30))));
}

#[test]
fn backoff_doubles_and_is_capped() {
    let s = Settings::default();
    let secs: Vec<i64> = (1..=8).map(|n| backoff(&s, n).as_secs()).collect();
    assert_eq!(secs, [10, 20, 40, 80, 160, 320, 360, 360]);
    assert_eq!(backoff(&s, i32::MAX).as_secs(), 360);
}

#[test]
fn backoff_limit_bounds_retries() {
    let w = World::new(&["0"]);
    let mut job = url_job();
    job.spec.backoff_limit = Some(1);
    let mut job = placed(&w, job);
    job.status.as_mut().unwrap().failed_attempts = Some(1);
    report(&mut job, ExecutionState::Failed, Some(true), Some("NetworkError"));
    let d = w.decide(&job);
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&d, condition::FAILED), ("True", reason::BACKOFF_LIMIT_EXCEEDED));

    // backoffLimit 0: the first retriable failure is final.
    let mut job = url_job();
    job.spec.backoff_limit = Some(0);
    let mut job = placed(&w, job);
    report(&mut job, ExecutionState::Failed, Some(true), None);
    assert_eq!(w.decide(&job).status.phase, Some(Phase::Failed));
}

#[test]
fn deadline_fails_the_job_and_is_requeued_for() {
    let mut w = World::new(&["0"]);
    let mut job = url_job();
    job.spec.active_deadline_seconds = Some(60);
    let (mut job, d) = w.apply(&job);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(60)));
    report(&mut job, ExecutionState::Running, None, None);
    w.now = ts(59);
    assert_eq!(w.decide(&job).status.phase, Some(Phase::Running));
    w.now = ts(60);
    let d = w.decide(&job);
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&d, condition::FAILED), ("True", reason::DEADLINE_EXCEEDED));
    assert_eq!(d.holds, None);
}

#[test]
fn a_job_without_a_deadline_gets_the_controllers_default() {
    let mut w = World::new(&["0"]);
    w.settings.default_active_deadline = Some(SignedDuration::from_secs(600));
    let (mut job, d) = w.apply(&url_job());
    assert_eq!(
        d.requeue_after,
        Some(Duration::from_secs(600)),
        "woken at the default deadline"
    );
    report(&mut job, ExecutionState::Running, None, None);
    w.now = ts(599);
    assert_eq!(w.decide(&job).status.phase, Some(Phase::Running));
    w.now = ts(600);
    let d = w.decide(&job);
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&d, condition::FAILED), ("True", reason::DEADLINE_EXCEEDED));
    let message = find_condition(&d.status.conditions, condition::FAILED).map(|c| c.message.clone());
    assert!(
        message.is_some_and(|m| m.contains("--default-active-deadline-seconds") && m.contains("600 s")),
        "the message says where the deadline came from"
    );

    // The job's own deadline wins over the default, longer or shorter.
    let mut own = url_job();
    own.spec.active_deadline_seconds = Some(3600);
    let (mut own, _) = w.apply(&own);
    report(&mut own, ExecutionState::Running, None, None);
    w.now = ts(3599);
    assert_eq!(w.decide(&own).status.phase, Some(Phase::Running));

    // No default: a job without a deadline runs as long as it takes.
    w.settings.default_active_deadline = None;
    w.now = ts(1_000_000);
    assert_eq!(w.decide(&job).status.phase, Some(Phase::Running));
}

#[test]
fn a_success_reported_before_the_deadline_check_stands() {
    let mut w = World::new(&["0"]);
    let mut job = url_job();
    job.spec.active_deadline_seconds = Some(60);
    let mut job = placed(&w, job);
    report(&mut job, ExecutionState::Succeeded, None, None);
    w.now = ts(120);
    assert_eq!(w.decide(&job).status.phase, Some(Phase::Succeeded));
}

#[test]
fn cancel_before_placement_is_immediate() {
    let mut w = World::new(&["0"]);
    w.load = BTreeMap::from([("0".into(), 4)]);
    let (mut job, _) = w.apply(&url_job());
    job.spec.cancel = Some(true);
    let d = w.decide(&job);
    assert_eq!(d.status.phase, Some(Phase::Cancelled));
    assert_eq!(cond(&d, condition::CANCELLED), ("True", reason::CANCELLED));
}

#[test]
fn cancel_of_a_running_job_waits_for_the_worker_rollback() {
    let mut w = World::new(&["0"]);
    let mut job = placed(&w, url_job());
    report(&mut job, ExecutionState::Running, None, None);
    job.spec.cancel = Some(true);
    let (mut job, d) = w.apply(&job);
    assert_eq!(
        d.status.phase,
        Some(Phase::Scheduled),
        "still pinned until the worker confirms"
    );
    assert_eq!(cond(&d, condition::CANCELLED), ("Unknown", "CancelRequested"));
    assert_eq!(d.holds.as_deref(), Some("0"));
    // A healthy server is waited for, however long.
    w.now = ts(600);
    assert_eq!(w.decide(&job).holds.as_deref(), Some("0"));
    report(&mut job, ExecutionState::Cancelled, None, None);
    let d = w.decide(&job);
    assert_eq!(d.status.phase, Some(Phase::Cancelled));
    assert_eq!(cond(&d, condition::CANCELLED), ("True", reason::CANCELLED));
    assert_eq!(d.holds, None);
}

#[test]
fn cancel_with_an_unready_server_completes_after_the_grace_period() {
    let mut w = World::new(&["0"]);
    let mut job = placed(&w, url_job());
    w.servers = ServerSet::from_servers([server("0", false, 0)]);
    job.spec.cancel = Some(true);
    let (job, d) = w.apply(&job);
    assert_eq!(d.status.phase, Some(Phase::Scheduled));
    assert_eq!(d.requeue_after, Some(Duration::from_secs(30)));
    w.now = ts(30);
    let d = w.decide(&job);
    assert_eq!(d.status.phase, Some(Phase::Cancelled));

    // A server that is gone has nothing to roll back: at once.
    let w = World::new(&["0"]);
    let mut job = placed(&w, url_job());
    job.spec.cancel = Some(true);
    let w2 = World::new(&[]);
    assert_eq!(w2.decide(&job).status.phase, Some(Phase::Cancelled));
}

#[test]
fn suspend_releases_the_server_and_resume_places_a_new_attempt() {
    let mut w = World::new(&["0"]);
    let mut job = url_job();
    job.spec.active_deadline_seconds = Some(100);
    let mut job = placed(&w, job);
    job.spec.suspend = Some(true);
    let (mut job, d) = w.apply(&job);
    assert_eq!(d.status.phase, Some(Phase::Pending));
    assert_eq!(d.holds, None);
    assert_eq!(d.status.start_time, None, "the deadline restarts on resume");
    assert_eq!(cond(&d, condition::SUSPENDED), ("True", reason::SUSPENDED));
    // Suspended past the deadline: no failure.
    w.now = ts(500);
    let (j, d) = w.apply(&job);
    assert_eq!(d.status.phase, Some(Phase::Pending));
    job = j;
    job.spec.suspend = Some(false);
    let d = w.decide_with_id(&job, "ev-resumed");
    assert_eq!(d.status.phase, Some(Phase::Scheduled));
    assert_eq!(d.status.attempt, Some(2));
    assert_eq!(d.status.event_id.as_deref(), Some("ev-resumed"));
    assert_eq!(d.status.start_time, Some(Time(ts(500))));
    assert_eq!(cond(&d, condition::SUSPENDED).0, "False");
}

#[test]
fn a_deleted_server_repins_rereadable_sources_with_a_new_attempt() {
    for job in [url_job(), volume_job()] {
        let mut w = World::new(&["0", "1"]);
        let job = placed(&w, job);
        assert_eq!(job.status.as_ref().unwrap().server_id.as_deref(), Some("0"));
        w.servers = servers(&["1"]);
        let d = w.decide_with_id(&job, "ev-2");
        assert_eq!(d.status.phase, Some(Phase::Scheduled));
        assert_eq!(d.status.server_id.as_deref(), Some("1"));
        assert_eq!(d.status.attempt, Some(2));
        assert_eq!(d.status.event_id.as_deref(), Some("ev-2"));
        let first = job.status.as_ref().unwrap();
        assert_eq!(
            d.status.past_attempts,
            vec![AttemptRef {
                attempt: 1,
                event_id: first.event_id.clone().unwrap(),
                server_id: "0".into(),
            }],
            "the repinned attempt's identity is kept for its late events"
        );
        assert_eq!(d.label.as_deref(), Some("1"));
        assert_eq!(d.holds.as_deref(), Some("1"));
        assert!(d.notes.iter().any(|n| n.reason == reason::SERVER_UNAVAILABLE));
    }
}

#[test]
fn a_deleted_server_fails_an_upload_with_source_lost() {
    let mut w = World::new(&["0", "1"]);
    let job = placed(&w, upload_job());
    w.servers = servers(&["1"]);
    let d = w.decide(&job);
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&d, condition::FAILED), ("True", reason::SOURCE_LOST));
    assert_eq!(d.holds, None);
}

#[test]
fn a_lost_server_without_retries_left_fails_server_unavailable() {
    let mut w = World::new(&["0", "1"]);
    let mut job = url_job();
    job.spec.backoff_limit = Some(0);
    let job = placed(&w, job);
    w.servers = servers(&["1"]);
    let d = w.decide(&job);
    assert_eq!(cond(&d, condition::FAILED), ("True", reason::SERVER_UNAVAILABLE));
}

#[test]
fn not_ready_server_keeps_its_jobs_during_the_grace_period() {
    let mut w = World::new(&["0", "1"]);
    let job = placed(&w, url_job());
    w.servers = ServerSet::from_servers([server("0", false, 10), server("1", true, 0)]);
    w.now = ts(20);
    let d = w.decide(&job);
    assert_eq!(d.status.server_id.as_deref(), Some("0"));
    assert_eq!(d.holds.as_deref(), Some("0"));
    assert_eq!(d.requeue_after, Some(Duration::from_secs(20)));
    w.now = ts(40);
    let d = w.decide(&job);
    assert_eq!(d.status.server_id.as_deref(), Some("1"), "moved after the grace period");
    assert_eq!(d.status.attempt, Some(2));
}

#[test]
fn a_replaced_pod_with_the_same_server_id_keeps_the_job() {
    let mut w = World::new(&["0"]);
    let job = placed(&w, url_job());
    w.servers = ServerSet::from_servers([Server {
        pod_name: "worker-0-new".into(),
        ..server("0", true, 5)
    }]);
    let d = w.decide(&job);
    assert_eq!(d.status.attempt, Some(1));
    assert_eq!(d.status.pod_name.as_deref(), Some("worker-0-new"));
}

#[test]
fn upload_retries_stay_on_the_server_holding_the_file() {
    let mut w = World::new(&["0", "1"]);
    let mut job = placed(&w, upload_job());
    report(&mut job, ExecutionState::Failed, Some(true), Some("WorkerShutdown"));
    let (job, _) = w.apply(&job);
    w.now = ts(10);
    w.load = BTreeMap::from([("0".into(), 3)]);
    let d = w.decide(&job);
    assert_eq!(d.status.server_id.as_deref(), Some("0"));
    assert_eq!(d.status.attempt, Some(2));
}

#[test]
fn ttl_deletes_finished_jobs_when_due() {
    let mut w = World::new(&["0"]);
    let mut job = url_job();
    job.spec.ttl_seconds_after_finished = Some(100);
    let mut job = placed(&w, job);
    report(&mut job, ExecutionState::Succeeded, None, None);
    let (job, d) = w.apply(&job);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(100)));
    assert!(!d.delete);
    w.now = ts(99);
    assert!(!w.decide(&job).delete);
    w.now = ts(100);
    let d = w.decide(&job);
    assert!(d.delete);
    assert_eq!(d.holds, None);
}

#[test]
fn finished_jobs_hold_nothing_and_change_nothing() {
    let w = World::new(&["0"]);
    let mut job = placed(&w, url_job());
    report(&mut job, ExecutionState::Succeeded, None, None);
    let (job, _) = w.apply(&job);
    let d = w.decide(&job);
    assert_eq!(d.holds, None);
    assert_eq!(
        Some(&d.status),
        job.status.as_ref(),
        "a finished job's status is stable"
    );
    assert!(d.notes.is_empty());
}

#[test]
fn decisions_are_idempotent() {
    let w = World::new(&["0"]);
    let (job, _) = w.apply(&url_job());
    let d = w.decide(&job);
    assert_eq!(Some(&d.status), job.status.as_ref());
    assert!(d.notes.is_empty(), "no repeated Events: {:?}", d.notes);
}

#[test]
fn generation_change_updates_observed_generation_without_moving_transition_times() {
    let mut w = World::new(&["0"]);
    let (mut job, _) = w.apply(&url_job());
    let before = find_condition(&job.status.as_ref().unwrap().conditions, condition::SCHEDULED)
        .unwrap()
        .clone();
    job.metadata.generation = Some(2);
    w.now = ts(50);
    let d = w.decide(&job);
    assert_eq!(d.status.observed_generation, Some(2));
    let after = find_condition(&d.status.conditions, condition::SCHEDULED).unwrap();
    assert_eq!(after.observed_generation, Some(2));
    assert_eq!(after.last_transition_time, before.last_transition_time);
}

#[test]
fn past_attempts_keep_the_latest_sixteen_oldest_first() {
    let w = World::new(&["0"]);
    let mut job = placed(&w, url_job());
    for n in 2..=20 {
        let st = job.status.get_or_insert_default();
        st.phase = Some(Phase::Pending);
        st.next_attempt_time = None;
        let d = w.decide_with_id(&job, &format!("ev-{n}"));
        assert_eq!(d.status.attempt, Some(n), "attempt {n} placed");
        job.status = Some(d.status);
    }
    let past = &job.status.as_ref().unwrap().past_attempts;
    assert_eq!(past.len(), streamscan_api::job::MAX_PAST_ATTEMPTS);
    let attempts: Vec<i32> = past.iter().map(|a| a.attempt).collect();
    assert_eq!(attempts, (4..=19).collect::<Vec<_>>());
    assert_eq!(past.last().map(|a| a.event_id.as_str()), Some("ev-19"));
    assert!(past.iter().all(|a| a.server_id == "0"));
}

#[test]
fn an_upload_waiting_for_its_body_holds_no_slot_until_it_runs() {
    let mut w = World::new(&["0"]);
    let (job, d) = w.apply(&upload_job());
    assert_eq!(d.status.phase, Some(Phase::Scheduled));
    assert_eq!(
        d.label.as_deref(),
        Some("0"),
        "placed: the gateway streams the body there"
    );
    assert_eq!(d.holds, None, "no slot while the body has not come");
    let d = w.decide(&job);
    assert_eq!(d.holds, None, "still waiting: still no slot");
    // Not ready: still no slot, and the pin stays.
    w.servers = ServerSet::from_servers([Server {
        ready: false,
        ready_since: Some(ts(0)),
        ..servers(&["0"]).iter().next().unwrap().clone()
    }]);
    w.now = ts(5);
    let d = w.decide(&job);
    assert_eq!((d.holds.as_deref(), d.label.as_deref()), (None, Some("0")));
    // Body in and a worker slot taken: the attempt reports Running and holds its slot.
    w.servers = servers(&["0"]);
    let mut running = job.clone();
    report(&mut running, ExecutionState::Running, None, None);
    let d = w.decide(&running);
    assert_eq!(d.holds.as_deref(), Some("0"));
    // A url job holds its slot from placement on.
    let (_, d) = w.apply(&url_job());
    assert_eq!(d.holds.as_deref(), Some("0"));
}
