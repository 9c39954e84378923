//! The worker's fields on the CR (`status.execution`, `progress`, `result`): merge patches on
//! `/status` with field manager `streamscan-worker`, progress throttled to at most one write
//! every 2 s or each 5 %, whichever comes first.
//!
//! Every write is conditional on the job still being this attempt's: it carries, as precondition,
//! the resourceVersion of a version of the job seen at this attempt (the answer to the writer's
//! own last write, or a fresh read that checked `status.attempt`/`eventId`). A 409 means someone
//! else wrote since: read, check, try again. So a worker that was paused or cut off while the
//! controller re-pinned the job (a zombie) cannot overwrite the new attempt's progress or report a
//! result for it, and the steady state costs one request per write.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use streamscan_api::names::MANAGER_WORKER;
use streamscan_api::{AnalysisJob, ExecutionState, ResultSummary};

use super::decide::AttemptId;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The job has moved on to another attempt (or is gone): nothing was written.
    #[error("the job is no longer at attempt {attempt} ({event_id}); not writing")]
    Stale { attempt: i32, event_id: String },
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Tries of one conditional write before giving up (each 409 means another writer got in first).
const WRITE_TRIES: usize = 8;

/// How long a job's final status (its result, or why it ended) keeps being retried while the API
/// server cannot be reached: nothing else would ever report it, and the job would look running.
const FINAL_PATIENCE: Duration = Duration::from_secs(600);

/// Whether a failed write may succeed later unchanged: the API server unreachable or overloaded.
fn transient(err: &StatusError) -> bool {
    match err {
        StatusError::Kube(kube::Error::Api(e)) => e.code >= 500 || e.code == 429,
        StatusError::Kube(_) => true,
        StatusError::Stale { .. } => false,
    }
}

/// Writes one job's worker-owned status fields.
#[derive(Clone)]
pub struct StatusWriter {
    api: Api<AnalysisJob>,
    name: String,
    attempt: AttemptId,
    /// resourceVersion of the latest version of the job known to be at this attempt.
    known: Arc<Mutex<Option<String>>>,
}

/// A failure or cancellation, as reported on the CR and in the final event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub message: String,
    pub retriable: bool,
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// One progress snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub processed: u64,
    pub total: Option<u64>,
    /// Bytes per second since the attempt (re)started here.
    pub rate: u64,
    pub checkpoint: Option<u64>,
}

impl Snapshot {
    pub fn percent(&self) -> Option<u32> {
        self.total
            .filter(|t| *t > 0)
            .map(|t| ((self.processed.min(t) as u128 * 100) / t as u128) as u32)
    }
}

/// Whether a progress write is due: the first one, `interval` after the last, or 5 % further.
pub fn progress_due(last: Option<(Instant, Snapshot)>, now: Instant, next: &Snapshot, interval: Duration) -> bool {
    let Some((at, prev)) = last else { return true };
    if next == &prev {
        return false;
    }
    if now.duration_since(at) >= interval {
        return true;
    }
    matches!((prev.percent(), next.percent()), (Some(a), Some(b)) if b >= a + 5)
}

/// Whether the job's status names `attempt` (attempt number and eventId) as its current one.
pub fn names_attempt(job: &AnalysisJob, attempt: &AttemptId) -> bool {
    let at = job.status.as_ref().map(|s| (s.attempt, s.event_id.as_deref()));
    at == Some((Some(attempt.attempt), Some(attempt.event_id.as_str())))
}

impl StatusWriter {
    pub fn new(api: Api<AnalysisJob>, name: String, attempt: AttemptId) -> Self {
        StatusWriter {
            api,
            name,
            attempt,
            known: Arc::default(),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `job` is still at this writer's attempt.
    fn current(&self, job: &AnalysisJob) -> bool {
        names_attempt(job, &self.attempt)
    }

    async fn patch(&self, status: Value) -> Result<(), StatusError> {
        let params = PatchParams {
            field_manager: Some(MANAGER_WORKER.into()),
            ..PatchParams::default()
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let cached = self.known().clone();
            let rv = match cached {
                Some(rv) => rv,
                None => {
                    let job = match self.api.get(&self.name).await {
                        Ok(job) => job,
                        Err(kube::Error::Api(e)) if e.code == 404 => return Err(self.stale()),
                        Err(e) => return Err(e.into()),
                    };
                    if !self.current(&job) {
                        return Err(self.stale());
                    }
                    job.metadata.resource_version.unwrap_or_default()
                }
            };
            let body = json!({"metadata": {"resourceVersion": rv}, "status": status});
            match self.api.patch_status(&self.name, &params, &Patch::Merge(&body)).await {
                Ok(job) => {
                    let current = self.current(&job);
                    *self.known() = job.metadata.resource_version.filter(|_| current);
                    return Ok(());
                }
                Err(kube::Error::Api(e)) if e.code == 409 && tries < WRITE_TRIES => {
                    *self.known() = None;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => return Err(self.stale()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn stale(&self) -> StatusError {
        StatusError::Stale {
            attempt: self.attempt.attempt,
            event_id: self.attempt.event_id.clone(),
        }
    }

    fn execution(&self, state: ExecutionState) -> Value {
        json!({"attempt": self.attempt.attempt, "eventId": self.attempt.event_id, "state": state,
               "reason": null, "message": null, "retriable": null})
    }

    pub async fn running(&self, checkpoint: Option<u64>) -> Result<(), StatusError> {
        let mut execution = self.execution(ExecutionState::Running);
        execution["checkpointBytes"] = checkpoint.map_or(Value::Null, |c| c.into());
        self.patch(json!({"execution": execution, "result": null})).await
    }

    pub async fn progress(&self, s: &Snapshot) -> Result<(), StatusError> {
        let eta = match (s.total, s.rate) {
            (Some(t), r) if r > 0 => Some(t.saturating_sub(s.processed) / r),
            _ => None,
        };
        let mut status = json!({"progress": {
            "bytesProcessed": s.processed, "totalBytes": s.total, "percent": s.percent(),
            "bytesPerSecond": s.rate, "etaSeconds": eta, "updatedAt": now(),
        }});
        if let Some(c) = s.checkpoint {
            let mut execution = self.execution(ExecutionState::Running);
            execution["checkpointBytes"] = c.into();
            status["execution"] = execution;
        }
        self.patch(status).await
    }

    /// [`Self::patch`], retried with backoff while the API server is out, for [`FINAL_PATIENCE`].
    async fn patch_final(&self, status: Value) -> Result<(), StatusError> {
        let started = Instant::now();
        let mut wait = Duration::from_millis(250);
        loop {
            match self.patch(status.clone()).await {
                Err(err) if transient(&err) && started.elapsed() < FINAL_PATIENCE => {
                    tracing::warn!(%err, job = %self.name, "cannot write the final status yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    pub async fn succeeded(&self, summary: &ResultSummary) -> Result<(), StatusError> {
        let bytes = summary.bytes;
        self.patch_final(json!({
            "execution": self.execution(ExecutionState::Succeeded),
            "progress": {"bytesProcessed": bytes, "totalBytes": bytes, "percent": 100, "etaSeconds": 0, "updatedAt": now()},
            "result": summary,
        }))
        .await
    }

    pub async fn ended(&self, state: ExecutionState, failure: &Failure) -> Result<(), StatusError> {
        let mut execution = self.execution(state);
        execution["reason"] = failure.reason.clone().into();
        execution["message"] = failure.message.clone().into();
        if state == ExecutionState::Failed {
            execution["retriable"] = failure.retriable.into();
        }
        self.patch_final(json!({"execution": execution})).await
    }
}

/// Writes progress from `rx` until it closes, throttled; the last snapshot is always written.
pub async fn progress_loop(writer: StatusWriter, mut rx: tokio::sync::watch::Receiver<Snapshot>, interval: Duration) {
    let mut last: Option<(Instant, Snapshot)> = None;
    loop {
        let closed = rx.changed().await.is_err();
        let snap = *rx.borrow_and_update();
        let now = Instant::now();
        if closed || progress_due(last, now, &snap, interval) {
            if last.is_none_or(|(_, prev)| prev != snap) {
                match writer.progress(&snap).await {
                    Ok(()) => {}
                    Err(err @ StatusError::Stale { .. }) => {
                        // A newer attempt owns the job; the watch or Kafka fencing stops this one.
                        tracing::warn!(%err, job = %writer.name, "not writing progress");
                        return;
                    }
                    Err(err) => tracing::warn!(%err, job = %writer.name, "cannot write progress"),
                }
                last = Some((now, snap));
            }
            if closed {
                return;
            }
        } else if let Some((at, _)) = last {
            // Not due yet: wait for the interval (or a 5 % step) before the next write.
            let deadline = tokio::time::Instant::from_std(at + interval);
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    rx.mark_changed();
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        let snap = *rx.borrow();
                        let _ = writer.progress(&snap).await;
                        return;
                    }
                    rx.mark_changed();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(processed: u64) -> Snapshot {
        Snapshot {
            processed,
            total: Some(1000),
            ..Snapshot::default()
        }
    }

    #[test]
    fn progress_is_written_every_interval_or_each_five_percent() {
        let t0 = Instant::now();
        let i = Duration::from_secs(2);
        assert!(progress_due(None, t0, &snap(0), i));
        let last = Some((t0, snap(100)));
        assert!(!progress_due(last, t0 + Duration::from_millis(500), &snap(120), i));
        assert!(progress_due(last, t0 + Duration::from_millis(500), &snap(150), i));
        assert!(progress_due(last, t0 + i, &snap(101), i));
        assert!(!progress_due(last, t0 + i, &snap(100), i), "nothing new");
        let unknown = Snapshot {
            processed: 10_000,
            ..Snapshot::default()
        };
        let last = Some((
            t0,
            Snapshot {
                processed: 1,
                ..Snapshot::default()
            },
        ));
        assert!(!progress_due(last, t0 + Duration::from_secs(1), &unknown, i));
    }

    #[test]
    fn percent_is_whole_and_capped() {
        assert_eq!(snap(999).percent(), Some(99));
        assert_eq!(snap(1000).percent(), Some(100));
        assert_eq!(
            Snapshot {
                processed: 5,
                total: Some(0),
                ..Snapshot::default()
            }
            .percent(),
            None
        );
    }
}
