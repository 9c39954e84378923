//! The real `streamscan-operator controller` binary against the Kubernetes API simulator (or a
//! real kube-apiserver with `STREAMSCAN_TEST_KUBE=real`), with worker pods registered by the
//! kubelet helper and job status driven by the test
//! as workers would write it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use streamscan_api::names::{ANNOTATION_CAPACITY, LABEL_COMPONENT, LABEL_SERVER_ID};
use streamscan_api::{AnalysisJob, ExecutionState, Phase};
use streamscan_kube_sim::kubelet::{Kubelet, PodHandle, PodTemplate};
use streamscan_test_servers::ApiServer;
use tokio::process::{Child, Command};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
/// (analyzeId, Authorization header) of each DELETE /results call the stub worker received.
type Calls = Arc<Mutex<Vec<(String, Option<String>)>>>;
/// Phase and serverId of each job, as last seen.
type Seen = Arc<Mutex<HashMap<String, (Option<Phase>, Option<String>)>>>;

const WAIT: Duration = Duration::from_secs(30);

struct Harness {
    _api: ApiServer,
    client: Client,
    dir: tempfile::TempDir,
    kubelet: Kubelet,
    jobs: Api<AnalysisJob>,
}

impl Harness {
    async fn start() -> Res<Self> {
        let dir = tempfile::tempdir()?;
        let (api, client) = ApiServer::start(ApiServer::test_backend()?, &dir.path().join("kubeconfig")).await?;
        Ok(Harness {
            kubelet: Kubelet::new(client.clone(), "default"),
            jobs: Api::namespaced(client.clone(), "default"),
            _api: api,
            client,
            dir,
        })
    }

    /// Starts the controller binary with test-friendly timings.
    fn controller(&self, name: &str, extra: &[&str]) -> Res<Child> {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log")))?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamscan-operator"));
        cmd.arg("controller")
            .args(["--ops-addr", "127.0.0.1:0", "--log-format", "json"])
            .args(["--not-ready-grace-seconds", "2", "--cancel-grace-seconds", "2"])
            .args(["--backoff-base-seconds", "1", "--backoff-cap-seconds", "4"])
            .args(extra)
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env("RUST_LOG", "info,streamscan_operator=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if !extra.contains(&"--leader-election") {
            cmd.args(["--leader-election", "false"]);
        }
        Ok(cmd.spawn()?)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    async fn server(&self, id: &str, capacity: Option<u32>, port: Option<u16>) -> Res<PodHandle> {
        let mut annotations = BTreeMap::new();
        if let Some(c) = capacity {
            annotations.insert(ANNOTATION_CAPACITY.to_owned(), c.to_string());
        }
        Ok(self
            .kubelet
            .register(PodTemplate {
                name: format!("worker-{id}"),
                labels: BTreeMap::from([
                    (LABEL_COMPONENT.to_owned(), "worker".to_owned()),
                    (LABEL_SERVER_ID.to_owned(), id.to_owned()),
                ]),
                annotations,
                port,
                statefulset: Some("worker".into()),
            })
            .await?)
    }

    async fn create(&self, name: &str, extra: serde_json::Value) -> Res<AnalysisJob> {
        let mut job = json!({
            "apiVersion": "streamscan.io/v1alpha1",
            "kind": "AnalysisJob",
            "metadata": {"name": name},
            "spec": {"userId": "alice", "source": {"url": {"location": "https://example.com/a.bin"}}},
        });
        merge(&mut job, extra);
        let job: AnalysisJob = serde_json::from_value(job)?;
        Ok(self.jobs.create(&PostParams::default(), &job).await?)
    }

    async fn wait(&self, name: &str, what: &str, cond: impl Fn(&AnalysisJob) -> bool) -> Res<AnalysisJob> {
        let found = tokio::time::timeout(
            WAIT,
            await_condition(self.jobs.clone(), name, move |job: Option<&AnalysisJob>| {
                job.is_some_and(&cond)
            }),
        )
        .await
        .map_err(|_| format!("timed out waiting for {name} to be {what}"))??;
        Ok(found.ok_or("job vanished")?)
    }

    async fn wait_phase(&self, name: &str, phase: Phase) -> Res<AnalysisJob> {
        self.wait(name, phase.as_str(), move |j| {
            j.status.as_ref().and_then(|s| s.phase) == Some(phase)
        })
        .await
    }

    /// Writes the worker's report on the job's current attempt, as a worker would.
    async fn report(
        &self,
        name: &str,
        state: ExecutionState,
        retriable: Option<bool>,
        reason: Option<&str>,
    ) -> TestResult {
        let job = self.jobs.get(name).await?;
        let status = job.status.clone().ok_or("no status")?;
        let patch = json!({"status": {"execution": {
            "attempt": status.attempt, "eventId": status.event_id, "state": state,
            "retriable": retriable, "reason": reason, "message": reason.map(|r| format!("{r} in test")),
        }}});
        self.jobs
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    async fn events_for(&self, name: &str) -> Res<Vec<Event>> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), "default");
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect())
    }

    async fn wait_event(&self, name: &str, reason: &str) -> Res<Event> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(e) = self
                .events_for(name)
                .await?
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason))
            {
                return Ok(e);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("no {reason} Event for {name}").into());
            }
            // Events are not watched by the helper: poll with a short, bounded interval.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}

fn status(job: &AnalysisJob) -> &streamscan_api::AnalysisJobStatus {
    static EMPTY: std::sync::OnceLock<streamscan_api::AnalysisJobStatus> = std::sync::OnceLock::new();
    job.status
        .as_ref()
        .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
}

fn condition<'a>(
    job: &'a AnalysisJob,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    streamscan_api::conditions::find_condition(&status(job).conditions, type_)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_200_jobs_on_3_servers_without_ever_exceeding_capacity() -> TestResult {
    let h = Harness::start().await?;
    for id in ["0", "1", "2"] {
        h.server(id, None, None).await?;
    }
    let _controller = h.controller("controller", &[])?;

    // Record the highest number of jobs holding a slot at any point of the API's history.
    let phases: Seen = Arc::default();
    let peak = Arc::new(Mutex::new(0usize));
    let per_server_peak: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let saw_waiting = Arc::new(Mutex::new(false));
    let observer = {
        let (phases, peak, per_server_peak, saw_waiting) = (
            phases.clone(),
            peak.clone(),
            per_server_peak.clone(),
            saw_waiting.clone(),
        );
        let stream = watcher(h.jobs.clone(), watcher::Config::default()).applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Ok(Some(job)) = stream.try_next().await {
                let st = status(&job);
                if condition(&job, "Scheduled").is_some_and(|c| c.reason == "NoServerAvailable") {
                    *saw_waiting.lock().unwrap() = true;
                }
                let mut map = phases.lock().unwrap();
                map.insert(job.name_any(), (st.phase, st.server_id.clone()));
                let holding: Vec<&String> = map
                    .values()
                    .filter(|(p, _)| matches!(p, Some(Phase::Scheduled | Phase::Running)))
                    .filter_map(|(_, s)| s.as_ref())
                    .collect();
                let mut peak = peak.lock().unwrap();
                *peak = (*peak).max(holding.len());
                let mut per = per_server_peak.lock().unwrap();
                let mut counts = BTreeMap::<String, usize>::new();
                for s in holding {
                    *counts.entry(s.clone()).or_default() += 1;
                }
                for (s, n) in counts {
                    let e = per.entry(s).or_default();
                    *e = (*e).max(n);
                }
            }
        })
    };

    // Create all 200 at once.
    let creates = futures::stream::iter(0..200)
        .map(|i| {
            let h = &h;
            async move { h.create(&format!("job-{i:03}"), json!({})).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    assert_eq!(creates.len(), 200);

    // Play the workers: finish every job that is Scheduled on its current attempt.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let list = h.jobs.list(&ListParams::default()).await?;
        let done = list.items.iter().filter(|j| j.phase() == Phase::Succeeded).count();
        if done == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {done} of 200 jobs succeeded in time"
        );
        let to_finish: Vec<String> = list
            .items
            .iter()
            .filter(|j| j.phase() == Phase::Scheduled && status(j).execution.is_none())
            .map(|j| j.name_any())
            .collect();
        futures::stream::iter(to_finish)
            .map(|name| {
                let h = &h;
                async move { h.report(&name, ExecutionState::Succeeded, None, None).await }
            })
            .buffer_unordered(8)
            .try_collect::<Vec<_>>()
            .await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    observer.abort();
    let peak = *peak.lock().unwrap();
    let per_server = per_server_peak.lock().unwrap().clone();
    assert!(peak <= 12, "{peak} jobs held slots at once (capacity 12)");
    assert_eq!(peak, 12, "capacity should have been used fully");
    assert!(
        per_server.values().all(|n| *n <= 4),
        "a server exceeded capacity 4: {per_server:?}"
    );
    assert!(*saw_waiting.lock().unwrap(), "waiting jobs must say NoServerAvailable");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_running_success_events_and_finalizer() -> TestResult {
    let h = Harness::start().await?;
    h.server("0", None, None).await?;
    let _c = h.controller("controller", &[])?;
    h.create("happy", json!({})).await?;
    let job = h.wait_phase("happy", Phase::Scheduled).await?;
    let st = status(&job);
    assert_eq!(st.server_id.as_deref(), Some("0"));
    assert_eq!(st.pod_name.as_deref(), Some("worker-0"));
    assert_eq!(st.attempt, Some(1));
    assert!(
        st.event_id.as_deref().is_some_and(|e| e.len() >= 32),
        "eventId: {:?}",
        st.event_id
    );
    assert_eq!(st.observed_generation, job.metadata.generation);
    assert_eq!(job.labels().get(LABEL_SERVER_ID).map(String::as_str), Some("0"));
    assert!(job.finalizers().iter().any(|f| f == "streamscan.io/results-cleanup"));
    h.wait_event("happy", "Placed").await?;

    h.report("happy", ExecutionState::Running, None, None).await?;
    let job = h.wait_phase("happy", Phase::Running).await?;
    assert_eq!(condition(&job, "Running").map(|c| c.status.as_str()), Some("True"));
    h.report("happy", ExecutionState::Succeeded, None, None).await?;
    let job = h.wait_phase("happy", Phase::Succeeded).await?;
    assert_eq!(condition(&job, "Complete").map(|c| c.status.as_str()), Some("True"));
    assert!(status(&job).completion_time.is_some());
    h.wait_event("happy", "Completed").await?;

    // Observability: every reconcile is timed, and what it logs carries the job's span.
    let log = h.log("controller");
    let ops = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["ops_addr"].as_str().map(str::to_owned))
        .ok_or("the controller logs where its ops endpoints are")?;
    let metrics = reqwest::get(format!("http://{ops}/metrics")).await?.text().await?;
    let count = metrics
        .lines()
        .find_map(|l| l.strip_prefix("streamscan_controller_reconcile_seconds_count "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .ok_or("no reconcile_seconds histogram")?;
    assert!(count >= 3, "reconciles timed: {count}");
    assert!(
        log.lines()
            .any(|l| l.contains(r#""name":"reconcile""#) && l.contains(r#""job":"happy""#)),
        "no log line in the reconcile span of job happy"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pod_repins_and_not_ready_server_moves_after_grace() -> TestResult {
    let h = Harness::start().await?;
    let w0 = h.server("0", None, None).await?;
    let _c = h.controller("controller", &[])?;
    h.create("moving", json!({"spec": {"serverId": "0"}})).await?;
    h.wait_phase("moving", Phase::Scheduled).await?;
    // Allow every server now, then take server 0 away.
    h.jobs
        .patch(
            "moving",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(
                json!([{"op": "remove", "path": "/spec/serverId"}]),
            )?),
        )
        .await?;
    let w1 = h.server("1", None, None).await?;
    w0.delete().await?;
    let job = h
        .wait("moving", "re-pinned to server 1", |j| {
            status(j).server_id.as_deref() == Some("1")
        })
        .await?;
    assert_eq!(status(&job).attempt, Some(2));
    assert_eq!(job.labels().get(LABEL_SERVER_ID).map(String::as_str), Some("1"));
    h.wait_event("moving", "ServerUnavailable").await?;

    // NotReady: kept during the 2 s grace, then moved.
    let _w2 = h.server("2", None, None).await?;
    w1.set_ready(false).await?;
    let job = h
        .wait("moving", "moved off the unready server", |j| {
            status(j).server_id.as_deref() == Some("2")
        })
        .await?;
    assert_eq!(status(&job).attempt, Some(3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_on_a_lost_server_fails_source_lost() -> TestResult {
    let h = Harness::start().await?;
    let w0 = h.server("0", None, None).await?;
    h.server("1", Some(1), None).await?;
    let _c = h.controller("controller", &[])?;
    h.create(
        "upload",
        json!({"spec": {"source": {"url": null, "upload": {"fileName": "a.bin"}}, "serverId": "0"}}),
    )
    .await?;
    h.wait_phase("upload", Phase::Scheduled).await?;
    w0.delete().await?;
    let job = h.wait_phase("upload", Phase::Failed).await?;
    assert_eq!(condition(&job, "Failed").map(|c| c.reason.as_str()), Some("SourceLost"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_retries_with_backoff_and_fatal_failures() -> TestResult {
    let h = Harness::start().await?;
    h.server("0", None, None).await?;
    let _c = h.controller("controller", &[])?;

    h.create("slow", json!({"spec": {"activeDeadlineSeconds": 2}})).await?;
    h.wait_phase("slow", Phase::Scheduled).await?;
    h.report("slow", ExecutionState::Running, None, None).await?;
    let job = h.wait_phase("slow", Phase::Failed).await?;
    assert_eq!(
        condition(&job, "Failed").map(|c| c.reason.as_str()),
        Some("DeadlineExceeded")
    );

    h.create("flaky", json!({"spec": {"backoffLimit": 2}})).await?;
    h.wait_phase("flaky", Phase::Scheduled).await?;
    h.report("flaky", ExecutionState::Failed, Some(true), Some("NetworkError"))
        .await?;
    let job = h
        .wait("flaky", "in backoff", |j| status(j).failed_attempts == Some(1))
        .await?;
    let next = status(&job).next_attempt_time.clone().ok_or("no nextAttemptTime")?;
    let failed_at = condition(&job, "Scheduled")
        .ok_or("no Scheduled")?
        .last_transition_time
        .clone();
    assert!(next.0 > failed_at.0, "retry must wait for the backoff");
    let job = h
        .wait("flaky", "retried", |j| {
            status(j).attempt == Some(2) && j.phase() == Phase::Scheduled
        })
        .await?;
    assert_ne!(status(&job).event_id, None);
    h.report("flaky", ExecutionState::Failed, Some(true), Some("NetworkError"))
        .await?;
    h.wait("flaky", "retried again", |j| {
        status(j).attempt == Some(3) && j.phase() == Phase::Scheduled
    })
    .await?;
    h.report("flaky", ExecutionState::Failed, Some(true), Some("NetworkError"))
        .await?;
    let job = h.wait_phase("flaky", Phase::Failed).await?;
    assert_eq!(
        condition(&job, "Failed").map(|c| c.reason.as_str()),
        Some("BackoffLimitExceeded")
    );
    h.wait_event("flaky", "Retrying").await?;

    h.create("broken", json!({})).await?;
    h.wait_phase("broken", Phase::Scheduled).await?;
    h.report("broken", ExecutionState::Failed, Some(false), Some("DigestMismatch"))
        .await?;
    let job = h.wait_phase("broken", Phase::Failed).await?;
    assert_eq!(
        condition(&job, "Failed").map(|c| c.reason.as_str()),
        Some("DigestMismatch")
    );
    assert_eq!(status(&job).attempt, Some(1), "fatal failures are not retried");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_suspend_and_ttl() -> TestResult {
    let h = Harness::start().await?;
    let w0 = h.server("0", Some(1), None).await?;
    let _c = h.controller("controller", &[])?;

    // Cancel waits for the worker's rollback.
    h.create("cancel-me", json!({})).await?;
    h.wait_phase("cancel-me", Phase::Scheduled).await?;
    h.report("cancel-me", ExecutionState::Running, None, None).await?;
    h.wait_phase("cancel-me", Phase::Running).await?;
    h.jobs
        .patch(
            "cancel-me",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cancel": true}})),
        )
        .await?;
    h.wait("cancel-me", "cancel requested", |j| {
        condition(j, "Cancelled").is_some_and(|c| c.status == "Unknown")
    })
    .await?;
    h.report("cancel-me", ExecutionState::Cancelled, None, None).await?;
    h.wait_phase("cancel-me", Phase::Cancelled).await?;

    // Suspend releases the only slot to the next job; resume places a new attempt.
    h.create("suspend-me", json!({})).await?;
    h.wait_phase("suspend-me", Phase::Scheduled).await?;
    h.create("next", json!({})).await?;
    h.wait("next", "waiting", |j| {
        condition(j, "Scheduled").is_some_and(|c| c.reason == "NoServerAvailable")
    })
    .await?;
    h.jobs
        .patch(
            "suspend-me",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await?;
    let job = h
        .wait("suspend-me", "suspended", |j| {
            condition(j, "Suspended").is_some_and(|c| c.status == "True")
        })
        .await?;
    assert_eq!(job.phase(), Phase::Pending);
    h.wait_phase("next", Phase::Scheduled).await?;
    h.report("next", ExecutionState::Succeeded, None, None).await?;
    h.jobs
        .patch(
            "suspend-me",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": false}})),
        )
        .await?;
    let job = h
        .wait("suspend-me", "resumed", |j| {
            j.phase() == Phase::Scheduled && status(j).attempt == Some(2)
        })
        .await?;
    assert_eq!(condition(&job, "Suspended").map(|c| c.status.as_str()), Some("False"));

    // Cancel with the server gone completes after the grace period.
    w0.set_ready(false).await?;
    h.jobs
        .patch(
            "suspend-me",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cancel": true}})),
        )
        .await?;
    h.wait_phase("suspend-me", Phase::Cancelled).await?;

    // TTL deletes a finished job (its finalizer is removed once cleanup gives up or succeeds).
    w0.set_ready(true).await?;
    let short_uid = h
        .create("short-lived", json!({"spec": {"ttlSecondsAfterFinished": 1}}))
        .await?
        .uid()
        .ok_or("no uid")?;
    h.wait_phase("short-lived", Phase::Scheduled).await?;
    h.report("short-lived", ExecutionState::Succeeded, None, None).await?;
    h.wait_phase("short-lived", Phase::Succeeded).await?;
    tokio::time::timeout(
        WAIT,
        await_condition(h.jobs.clone(), "short-lived", conditions::is_deleted(&short_uid)),
    )
    .await??;
    Ok(())
}

/// A stand-in worker HTTP service that records DELETE /results/{id} calls.
async fn stub_worker() -> Res<(SocketAddr, Calls)> {
    use axum::extract::{Path, State};
    use axum::http::HeaderMap;
    let calls: Calls = Arc::default();
    let app = axum::Router::new()
        .route(
            "/results/{id}",
            axum::routing::delete(
                |State(calls): State<Calls>, Path(id): Path<String>, headers: HeaderMap| async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    if let Ok(mut calls) = calls.lock() {
                        calls.push((id, auth));
                    }
                    axum::http::StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, calls))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizer_deletes_results_on_the_worker_or_gives_up_with_an_event() -> TestResult {
    let h = Harness::start().await?;
    let (addr, calls) = stub_worker().await?;
    h.server("0", None, Some(addr.port())).await?;
    let token_file = h.dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n")?;
    let token_arg = token_file.to_string_lossy().to_string();
    let _c = h.controller(
        "controller",
        &["--worker-token-file", &token_arg, "--cleanup-attempts", "2"],
    )?;

    let job = h.create("with-result", json!({})).await?;
    let uid = job.uid().ok_or("no uid")?;
    h.wait_phase("with-result", Phase::Scheduled).await?;
    h.report("with-result", ExecutionState::Succeeded, None, None).await?;
    let done = h.wait_phase("with-result", Phase::Succeeded).await?;
    assert!(
        done.finalizers().iter().any(|f| f == "streamscan.io/results-cleanup"),
        "{:?}",
        done.metadata
    );
    h.jobs.delete("with-result", &DeleteParams::default()).await?;
    tokio::time::timeout(
        WAIT,
        await_condition(h.jobs.clone(), "with-result", conditions::is_deleted(&uid)),
    )
    .await??;
    assert_eq!(
        calls.lock().unwrap().clone(),
        vec![(uid, Some("Bearer s3cret".to_owned()))],
        "controller log:\n{}",
        h.log("controller")
    );

    // The worker is gone: bounded retries, then deletion proceeds with an Event.
    let orphan_uid = h
        .create("orphan", json!({"spec": {"serverId": "9"}}))
        .await?
        .uid()
        .ok_or("no uid")?;
    let h2 = h.server("9", None, None).await?;
    h.wait_phase("orphan", Phase::Scheduled).await?;
    h.report("orphan", ExecutionState::Succeeded, None, None).await?;
    h.wait_phase("orphan", Phase::Succeeded).await?;
    h2.delete().await?;
    h.jobs.delete("orphan", &DeleteParams::default()).await?;
    h.wait_event("orphan", "ResultsLeftBehind").await?;
    tokio::time::timeout(
        WAIT,
        await_condition(h.jobs.clone(), "orphan", conditions::is_deleted(&orphan_uid)),
    )
    .await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_server_id_gets_no_jobs_and_is_reported() -> TestResult {
    let h = Harness::start().await?;
    h.server("7", None, None).await?;
    // Another StatefulSet's member, named and indexed for serverId 7: a duplicate.
    h.kubelet
        .register(PodTemplate {
            name: "other-7".into(),
            labels: BTreeMap::from([
                (LABEL_COMPONENT.to_owned(), "worker".to_owned()),
                (LABEL_SERVER_ID.to_owned(), "7".to_owned()),
            ]),
            statefulset: Some("other".into()),
            ..Default::default()
        })
        .await?;
    let _c = h.controller("controller", &[])?;
    h.create("nowhere", json!({})).await?;
    let job = h
        .wait("nowhere", "waiting", |j| {
            condition(j, "Scheduled").is_some_and(|c| c.reason == "NoServerAvailable")
        })
        .await?;
    assert_eq!(job.phase(), Phase::Pending);
    let event = h.wait_event("other-7", "DuplicateServerId").await?;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    Ok(())
}

/// A pod that copies a worker's labels but is no StatefulSet's pod named for its serverId is not
/// a server: it is reported, and the real worker keeps taking jobs. With `--worker-statefulset`,
/// the pods of any other StatefulSet are strays too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_pods_with_a_workers_labels_are_no_servers() -> TestResult {
    let h = Harness::start().await?;
    h.server("7", None, None).await?;
    let impostor = |name: &str, statefulset: Option<&str>| PodTemplate {
        name: name.into(),
        labels: BTreeMap::from([
            (LABEL_COMPONENT.to_owned(), "worker".to_owned()),
            (LABEL_SERVER_ID.to_owned(), "7".to_owned()),
            ("apps.kubernetes.io/pod-index".to_owned(), "7".to_owned()),
        ]),
        statefulset: statefulset.map(str::to_owned),
        ..Default::default()
    };
    h.kubelet.register(impostor("impostor", None)).await?;
    h.kubelet.register(impostor("other-7", Some("other"))).await?;
    let _c = h.controller("controller", &["--worker-statefulset", "worker"])?;
    h.create("placed", json!({})).await?;
    let job = h.wait_phase("placed", Phase::Scheduled).await?;
    assert_eq!(
        job.status.as_ref().and_then(|s| s.pod_name.as_deref()),
        Some("worker-7")
    );
    let event = h.wait_event("impostor", "StrayWorkerPod").await?;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let message = event.note.unwrap_or_default();
    assert!(message.contains("it is not controlled by a StatefulSet"), "{message}");
    let event = h.wait_event("other-7", "StrayWorkerPod").await?;
    let message = event.note.unwrap_or_default();
    assert!(message.contains("its StatefulSet is other, not worker"), "{message}");
    Ok(())
}

/// A job that vanishes without going through cleanup (its finalizer stripped, then deleted, while
/// the controller was not looking) never gets another reconcile; its capacity slot is released
/// from the job cache all the same, and the job waiting for that slot is placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_deleted_without_cleanup_frees_its_slot() -> TestResult {
    let h = Harness::start().await?;
    h.server("0", Some(1), None).await?;
    let controller = h.controller("controller", &[])?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(controller.id().ok_or("controller pid")?)?);
    h.create("first", json!({})).await?;
    h.wait_phase("first", Phase::Scheduled).await?;
    h.create("second", json!({})).await?;
    h.wait("second", "waiting for the only slot", |j| {
        condition(j, "Scheduled").is_some_and(|c| c.reason == "NoServerAvailable")
    })
    .await?;

    // Frozen, the controller cannot put its finalizer back between the two writes.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
    let stripped = async {
        h.jobs
            .patch(
                "first",
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
            )
            .await?;
        h.jobs.delete("first", &DeleteParams::default()).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)?;
    stripped?;
    let job = h.wait_phase("second", Phase::Scheduled).await?;
    assert_eq!(status(&job).server_id.as_deref(), Some("0"));
    assert!(
        h.log("controller")
            .contains("released the slots of jobs deleted without cleanup"),
        "{}",
        h.log("controller")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_one_acts_and_the_other_takes_over() -> TestResult {
    let h = Harness::start().await?;
    h.server("0", Some(100), None).await?;
    let le = [
        "--leader-election",
        "true",
        "--lease-duration-seconds",
        "3",
        "--lease-namespace",
        "default",
    ];
    let mut a = h.controller("a", &[&le[..], &["--identity", "replica-a"]].concat())?;
    let mut b = h.controller("b", &[&le[..], &["--identity", "replica-b"]].concat())?;
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), "default");
    let holder = || async {
        leases
            .get_opt("streamscan-controller")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec.and_then(|s| s.holder_identity))
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let first = loop {
        if let Some(id) = holder().await {
            break id;
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    h.create("before", json!({})).await?;
    h.wait_phase("before", Phase::Scheduled).await?;
    h.wait_event("before", "Placed").await?;
    let placed_by: Vec<Option<String>> = h
        .events_for("before")
        .await?
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Placed"))
        .map(|e| e.reporting_instance)
        .collect();
    assert_eq!(placed_by, vec![Some(first.clone())], "only the leader acts");

    // Kill the leader without a chance to release its lease.
    let (leader, standby) = if first == "replica-a" {
        (&mut a, "replica-b")
    } else {
        (&mut b, "replica-a")
    };
    leader.start_kill()?;
    let _ = leader.wait().await;
    h.create("after", json!({})).await?;
    let job = h.wait_phase("after", Phase::Scheduled).await?;
    assert_eq!(holder().await.as_deref(), Some(standby));
    assert!(status(&job).attempt == Some(1));
    let logs = h.log("a") + &h.log("b");
    assert!(logs.contains("acquired the leader lease"), "{logs}");
    Ok(())
}

/// Benchmark (ignored; run with `cargo test --release -p streamscan-operator --test controller --
/// --ignored --nocapture bench`): how fast the controller places 1,000 jobs on 10 servers, and
/// the placement latency from a job's creation to its Scheduled status, as a watcher sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_placement_1000_jobs_on_10_servers() -> TestResult {
    const JOBS: usize = 1000;
    let h = Harness::start().await?;
    for id in 0..10 {
        h.server(&id.to_string(), Some(100), None).await?;
    }
    let _controller = h.controller("controller", &[])?;
    let placed_at: Arc<Mutex<HashMap<String, (tokio::time::Instant, String)>>> = Arc::default();
    let observer = {
        let placed_at = placed_at.clone();
        let stream = watcher(h.jobs.clone(), watcher::Config::default()).applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Ok(Some(job)) = stream.try_next().await {
                if job.phase() == Phase::Scheduled
                    && let Some(server) = status(&job).server_id.clone()
                {
                    placed_at
                        .lock()
                        .unwrap()
                        .entry(job.name_any())
                        .or_insert((tokio::time::Instant::now(), server));
                }
            }
        })
    };
    let started = tokio::time::Instant::now();
    let created: Vec<(String, tokio::time::Instant)> = futures::stream::iter(0..JOBS)
        .map(|i| {
            let h = &h;
            async move {
                let name = format!("bench-{i:04}");
                h.create(&name, json!({}))
                    .await
                    .map(|_| (name, tokio::time::Instant::now()))
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    let created_all = started.elapsed();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while placed_at.lock().unwrap().len() < JOBS {
        assert!(tokio::time::Instant::now() < deadline, "not all jobs placed in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    observer.abort();
    let placed = placed_at.lock().unwrap().clone();
    let last = placed.values().map(|(t, _)| *t).max().unwrap();
    let total = last.duration_since(started);
    let mut latencies: Vec<f64> = created
        .iter()
        .map(|(name, at)| placed[name].0.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let mut per_server = BTreeMap::<String, usize>::new();
    for (_, server) in placed.values() {
        *per_server.entry(server.clone()).or_default() += 1;
    }
    assert!(per_server.values().all(|n| *n <= 100), "{per_server:?}");
    println!("\n| jobs | servers | create all (s) | place all (s) | jobs placed/s | p50 ms | p99 ms | max ms |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {JOBS} | 10 | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} |",
        created_all.as_secs_f64(),
        total.as_secs_f64(),
        JOBS as f64 / total.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        latencies.last().copied().unwrap_or_default()
    );
    Ok(())
}

/// An upload job is placed at once (the gateway needs to know where to stream the body) but
/// holds none of its server's capacity until the worker reports it Running: uploads whose body
/// never comes keep no other job waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_upload_without_its_body_holds_no_capacity() -> TestResult {
    let h = Harness::start().await?;
    h.server("0", Some(1), None).await?;
    let _c = h.controller("controller", &[])?;
    h.create("upload", json!({"spec": {"source": {"url": null, "upload": {}}}}))
        .await?;
    let upload = h.wait_phase("upload", Phase::Scheduled).await?;
    assert_eq!(status(&upload).server_id.as_deref(), Some("0"));
    h.create("url", json!({})).await?;
    let url = h.wait_phase("url", Phase::Scheduled).await?;
    assert_eq!(status(&url).server_id.as_deref(), Some("0"), "the only slot was free");
    Ok(())
}
