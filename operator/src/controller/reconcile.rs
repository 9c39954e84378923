//! The I/O shell around [`decide`](super::decide::decide): reads the caches, asks the core,
//! writes what it decided (finalizer, status, label), records Events and metrics, and cleans up
//! stored results when a job is deleted.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType as KubeEventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};
use streamscan_api::names::{ANNOTATION_TRACEPARENT, FINALIZER_RESULTS, LABEL_SERVER_ID, MANAGER_CONTROLLER, reason};
use streamscan_api::trace::TraceParent;
use streamscan_api::{AnalysisJob, AnalysisJobStatus, Phase};
use tokio::sync::mpsc;

use super::cleanup::{self, AfterFailure};
use super::decide::{Decision, EventType, Observed, Settings, decide};
use super::ledger::{Ledger, WaitingKey};
use super::metrics::{Metrics, ResultLabels};
use super::servers::ServerSet;

/// How results are cleaned up when a job is deleted.
#[derive(Clone, Debug)]
pub struct CleanupSettings {
    /// Tries before the finalizer is removed anyway, with an Event naming what was left behind.
    pub max_attempts: i32,
    /// Internal bearer token of the workers' HTTP service.
    pub worker_token: Option<String>,
    pub http: reqwest::Client,
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub jobs: Store<AnalysisJob>,
    pub pods: Store<Pod>,
    pub ledger: Ledger,
    pub seeded: tokio::sync::OnceCell<()>,
    pub settings: Settings,
    pub cleanup: CleanupSettings,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Jobs to look at again because capacity was freed.
    pub wake: mpsc::Sender<ObjectRef<AnalysisJob>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the job has no {0}")]
    Missing(&'static str),
    #[error("cache: {0}")]
    Cache(String),
}

impl Error {
    /// The error's category, for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(status)) if status.code == 404 => "not_found",
            Error::Kube(_) => "api",
            Error::Missing(_) => "invalid_object",
            Error::Cache(_) => "cache",
        }
    }
}

/// Requeue policy on errors: conflicts are retried at once, the rest after a short pause.
pub fn error_policy(_job: Arc<AnalysisJob>, err: &Error, ctx: Arc<Context>) -> Action {
    let category = err.category();
    ctx.metrics
        .reconciles
        .get_or_create(&ResultLabels {
            result: category.into(),
        })
        .inc();
    if category == "conflict" {
        tracing::debug!(%err, "stale view; reconciling again");
        Action::requeue(Duration::from_millis(200))
    } else {
        tracing::warn!(%err, category, "reconcile failed");
        Action::requeue(Duration::from_secs(5))
    }
}

/// One reconcile, in a span naming the job, timed into `reconcile_seconds`.
pub async fn reconcile(job: Arc<AnalysisJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "reconcile",
        job = %job.name_any(),
        namespace = job.namespace().as_deref().unwrap_or_default(),
        phase = job.phase().as_str(),
    );
    // With trace export on, each reconcile is a span in the trace of the request that made the job.
    if let Some(parent) = job
        .annotations()
        .get(ANNOTATION_TRACEPARENT)
        .and_then(|v| TraceParent::parse(v))
    {
        streamscan_runtime::telemetry::continue_trace(&span, &parent);
    }
    let started = std::time::Instant::now();
    let metrics = ctx.metrics.clone();
    let result = reconcile_job(job, ctx).instrument(span).await;
    metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_job(job: Arc<AnalysisJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    ensure_seeded(&ctx).await?;
    let uid = job.uid().ok_or(Error::Missing("metadata.uid"))?;
    let namespace = job.namespace().ok_or(Error::Missing("metadata.namespace"))?;
    let api: Api<AnalysisJob> = Api::namespaced(ctx.client.clone(), &namespace);

    if job.metadata.deletion_timestamp.is_some() {
        return cleanup(&job, &uid, &api, &ctx).await;
    }

    let pods = ctx.pods.state();
    let servers = ServerSet::from_pods(pods.iter().map(Arc::as_ref), &ctx.settings.pods);
    let event_id = uuid::Uuid::new_v4().to_string();
    let now = Timestamp::now();

    // Decide and reserve under one lock, so two reconciles never take the same last slot.
    let (decision, previous) = {
        let mut ledger = ctx.ledger.lock();
        let load = ledger.load_excluding(&uid);
        let observed = Observed {
            job: &job,
            servers: &servers,
            load: &load,
            now,
            new_event_id: &event_id,
        };
        let decision = decide(&observed, &ctx.settings);
        let previous = ledger.begin(&uid, decision.holds.clone());
        (decision, previous)
    };

    if let Err(err) = write(&job, &decision, &api).await {
        ctx.ledger.lock().rollback(&uid, previous);
        return Err(err);
    }
    let released = ctx.ledger.lock().commit(&uid);
    after_write(&job, &uid, &decision, released, &ctx).await;

    if decision.delete {
        tracing::info!(job = %job.name_any(), "ttlSecondsAfterFinished passed; deleting");
        match api.delete(&job.name_any(), &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
    }
    ctx.metrics
        .reconciles
        .get_or_create(&ResultLabels { result: "ok".into() })
        .inc();
    Ok(decision
        .requeue_after
        .map_or_else(Action::await_change, Action::requeue))
}

/// Seeds the ledger from the job cache once, after its first full list.
async fn ensure_seeded(ctx: &Context) -> Result<(), Error> {
    ctx.seeded
        .get_or_try_init(|| async {
            ctx.jobs
                .wait_until_ready()
                .await
                .map_err(|e| Error::Cache(e.to_string()))?;
            ctx.pods
                .wait_until_ready()
                .await
                .map_err(|e| Error::Cache(e.to_string()))?;
            let mut ledger = ctx.ledger.lock();
            for job in ctx.jobs.state() {
                let Some(status) = job.status.as_ref() else { continue };
                let holds = matches!(status.phase, Some(Phase::Scheduled | Phase::Running))
                    && job.metadata.deletion_timestamp.is_none();
                if let (true, Some(uid), Some(server)) = (holds, job.uid(), status.server_id.clone()) {
                    ledger.set(&uid, Some(server));
                }
            }
            tracing::info!(
                holding = ledger.load().values().sum::<usize>(),
                "capacity ledger seeded from the job cache"
            );
            Ok(())
        })
        .await
        .map(|_| ())
}

/// Writes the decision: the finalizer, the label, then the status, each guarded by the
/// resourceVersion the decision was made from, so a decision made from a stale cache is refused
/// (409) and made again. The label goes before the status so that a job whose status says
/// Scheduled always carries its server's label.
async fn write(job: &AnalysisJob, d: &Decision, api: &Api<AnalysisJob>) -> Result<(), Error> {
    let name = job.name_any();
    let mut resource_version = job.resource_version();
    let mut metadata = serde_json::Map::new();
    if d.add_finalizer {
        let mut finalizers = job.finalizers().to_vec();
        finalizers.push(FINALIZER_RESULTS.to_owned());
        metadata.insert("finalizers".into(), json!(finalizers));
    }
    if let Some(server) = &d.label
        && job.labels().get(LABEL_SERVER_ID) != Some(server)
    {
        metadata.insert("labels".into(), json!({LABEL_SERVER_ID: server}));
    }
    if !metadata.is_empty() {
        metadata.insert("resourceVersion".into(), json!(resource_version));
        let patch = json!({"metadata": metadata});
        let updated = api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        resource_version = updated.resource_version();
    }
    let current = job.status.clone().unwrap_or_default();
    if controller_fields(&d.status) != controller_fields(&current) {
        let patch = json!({
            "metadata": {"resourceVersion": resource_version},
            "status": controller_fields(&d.status),
        });
        let params = PatchParams {
            field_manager: Some(MANAGER_CONTROLLER.to_owned()),
            ..Default::default()
        };
        api.patch_status(&name, &params, &Patch::Merge(&patch)).await?;
    }
    Ok(())
}

/// The status fields the controller owns, with explicit nulls so a merge patch clears them.
fn controller_fields(status: &AnalysisJobStatus) -> Value {
    let t = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        serde_json::to_value(t).unwrap_or(Value::Null)
    };
    json!({
        "observedGeneration": status.observed_generation,
        "phase": status.phase,
        "conditions": status.conditions,
        "serverId": status.server_id,
        "podName": status.pod_name,
        "attempt": status.attempt,
        "eventId": status.event_id,
        "pastAttempts": status.past_attempts,
        "failedAttempts": status.failed_attempts,
        "nextAttemptTime": t(&status.next_attempt_time),
        "startTime": t(&status.start_time),
        "completionTime": t(&status.completion_time),
    })
}

/// Bookkeeping after a successful write: wake waiting jobs, Events, metrics.
async fn after_write(job: &AnalysisJob, uid: &str, d: &Decision, released: bool, ctx: &Context) {
    let waiting = d.status.phase == Some(Phase::Pending) && d.holds.is_none() && !job.is_suspended();
    {
        let mut ledger = ctx.ledger.lock();
        if waiting {
            let created = job
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default();
            let key = WaitingKey {
                namespace: job.namespace().unwrap_or_default(),
                name: job.name_any(),
            };
            ledger.wait(uid, created, key);
        } else {
            ledger.unwait(uid);
        }
    }
    if released {
        wake_waiting(ctx);
    }
    let first_placement = d.status.attempt == Some(1)
        && job.status.as_ref().and_then(|s| s.attempt).is_none()
        && d.status.phase == Some(Phase::Scheduled);
    if first_placement && let Some(created) = &job.metadata.creation_timestamp {
        let secs = Timestamp::now().duration_since(created.0).as_secs_f64().max(0.0);
        ctx.metrics.placement_seconds.observe(secs);
    }
    let reference = job.object_ref(&());
    for note in &d.notes {
        publish(ctx, &reference, note.type_, note.reason, &note.message).await;
    }
}

/// Frees the slots of jobs gone from the cache without going through cleanup (finalizer
/// stripped, force delete: no reconcile ever sees them again), and wakes waiting jobs if that
/// freed any. Only once the ledger is seeded, that is once the cache has synced.
pub fn forget_vanished(ctx: &Context) -> usize {
    if ctx.seeded.get().is_none() {
        return 0;
    }
    let live: std::collections::HashSet<String> = ctx.jobs.state().iter().filter_map(|j| j.uid()).collect();
    let freed = ctx.ledger.lock().retain(|uid| live.contains(uid));
    if freed > 0 {
        tracing::info!(freed, "released the slots of jobs deleted without cleanup");
        wake_waiting(ctx);
    }
    freed
}

/// Looks again at the oldest waiting jobs, as many as there are free slots.
pub fn wake_waiting(ctx: &Context) {
    let pods = ctx.pods.state();
    let servers = ServerSet::from_pods(pods.iter().map(Arc::as_ref), &ctx.settings.pods);
    let keys = {
        let ledger = ctx.ledger.lock();
        let load = ledger.load();
        let free: usize = servers
            .iter()
            .filter(|s| s.ready)
            .map(|s| s.capacity.saturating_sub(load.get(&s.id).copied().unwrap_or(0)))
            .sum();
        ledger.oldest_waiting(free.max(1))
    };
    for key in keys {
        // A full queue means a wake-up is already pending; the periodic resync covers the rest.
        let _ = ctx.wake.try_send(ObjectRef::new(&key.name).within(&key.namespace));
    }
}

pub async fn publish(ctx: &Context, reference: &ObjectReference, type_: EventType, reason: &str, message: &str) {
    let event = Event {
        type_: match type_ {
            EventType::Normal => KubeEventType::Normal,
            EventType::Warning => KubeEventType::Warning,
        },
        reason: reason.to_owned(),
        note: Some(message.chars().take(1024).collect()),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(%err, reason, "cannot record Event");
    }
}

/// Deletion: release the slot, delete the stored result on its worker, then drop the finalizer.
/// A worker that is gone or failing is retried a bounded number of times, never forever.
async fn cleanup(job: &AnalysisJob, uid: &str, api: &Api<AnalysisJob>, ctx: &Context) -> Result<Action, Error> {
    let released = {
        let mut ledger = ctx.ledger.lock();
        ledger.unwait(uid);
        ledger.set(uid, None)
    };
    if released.is_some() {
        wake_waiting(ctx);
    }
    if !job.finalizers().iter().any(|f| f == FINALIZER_RESULTS) {
        return Ok(Action::await_change());
    }
    let reference = job.object_ref(&());
    let status = job.status.clone().unwrap_or_default();
    let Some(server_id) = cleanup::result_server(&status) else {
        remove_finalizer(job, api).await?;
        return Ok(Action::await_change());
    };
    let pods = ctx.pods.state();
    let servers = ServerSet::from_pods(pods.iter().map(Arc::as_ref), &ctx.settings.pods);
    let endpoint = servers.ready_unique(&server_id).and_then(|s| s.endpoint.clone());
    let outcome = match endpoint {
        Some(endpoint) => delete_result(ctx, &endpoint, uid).await,
        None => Err(format!("server {server_id} is not Ready")),
    };
    match outcome {
        Ok(()) => {
            publish(
                ctx,
                &reference,
                EventType::Normal,
                reason::RESULTS_DELETED,
                &format!("deleted stored results on server {server_id}"),
            )
            .await;
            remove_finalizer(job, api).await?;
            Ok(Action::await_change())
        }
        Err(why) => match cleanup::after_failure(status.cleanup_attempts, ctx.cleanup.max_attempts) {
            AfterFailure::GiveUp { attempts } => {
                let message = format!(
                    "gave up deleting stored results of analysis {uid} on server {server_id} after {attempts} attempts ({why}); they may remain on that server's volume"
                );
                publish(
                    ctx,
                    &reference,
                    EventType::Warning,
                    reason::RESULTS_LEFT_BEHIND,
                    &message,
                )
                .await;
                remove_finalizer(job, api).await?;
                Ok(Action::await_change())
            }
            AfterFailure::Retry { attempts, delay } => {
                let patch = json!({"status": {"cleanupAttempts": attempts}});
                let params = PatchParams {
                    field_manager: Some(MANAGER_CONTROLLER.to_owned()),
                    ..Default::default()
                };
                api.patch_status(&job.name_any(), &params, &Patch::Merge(&patch))
                    .await?;
                tracing::info!(job = %job.name_any(), attempts, %why, "result cleanup failed; retrying");
                Ok(Action::requeue(delay))
            }
        },
    }
}

async fn delete_result(ctx: &Context, endpoint: &str, analyze_id: &str) -> Result<(), String> {
    let url = format!("{endpoint}/results/{analyze_id}");
    let mut request = ctx.cleanup.http.delete(&url).timeout(Duration::from_secs(10));
    if let Some(token) = &ctx.cleanup.worker_token {
        request = request.bearer_auth(token);
    }
    match request.send().await {
        // 404: nothing stored (never completed, or already deleted after download).
        Ok(resp) if resp.status().is_success() || resp.status() == reqwest::StatusCode::NOT_FOUND => Ok(()),
        Ok(resp) => Err(format!("DELETE {url} answered {}", resp.status())),
        Err(err) => Err(format!("DELETE {url} failed: {err}")),
    }
}

async fn remove_finalizer(job: &AnalysisJob, api: &Api<AnalysisJob>) -> Result<(), Error> {
    let finalizers: Vec<&String> = job.finalizers().iter().filter(|f| *f != FINALIZER_RESULTS).collect();
    let patch = json!({"metadata": {"resourceVersion": job.resource_version(), "finalizers": finalizers}});
    match api
        .patch(&job.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}
