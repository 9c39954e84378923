//! Watches the jobs labelled with this server's id and turns each change into a [`decide`]
//! call, then into the action: start, stop, cancel. Attempts run as tasks; when one ends the
//! job is decided again (a stopped stale attempt makes room for the new one).

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use streamscan_api::AnalysisJob;
use streamscan_api::names::LABEL_SERVER_ID;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::decide::{AttemptId, Decision, JobView, Local, decide};
use super::executor::{self, Control, JobInfo, Shared, StopReason};
use streamscan_runtime::ops::Readiness;

enum Slot {
    Running {
        attempt: AttemptId,
        control: Arc<Control>,
        task: tokio::task::JoinHandle<()>,
    },
    Done(AttemptId),
}

/// The jobs of this server and what runs for them.
pub struct Runner {
    shared: Arc<Shared>,
    slots: HashMap<String, Slot>,
    latest: HashMap<String, AnalysisJob>,
    ended_tx: mpsc::UnboundedSender<(String, AttemptId)>,
    ended_rx: mpsc::UnboundedReceiver<(String, AttemptId)>,
}

impl Runner {
    pub fn new(shared: Arc<Shared>) -> Self {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Runner {
            shared,
            slots: HashMap::new(),
            latest: HashMap::new(),
            ended_tx,
            ended_rx,
        }
    }

    fn evaluate(&mut self, uid: &str, job: &AnalysisJob, deleted: bool) {
        let view = JobView::of(job, deleted);
        let local = match self.slots.get(uid) {
            None => Local::Idle,
            Some(Slot::Running { attempt, .. }) => Local::Running(attempt),
            Some(Slot::Done(a)) => Local::Done(a),
        };
        let decision = decide(&self.shared.server_id, &view, local);
        let name = job.metadata.name.as_deref().unwrap_or_default();
        match decision {
            Decision::Keep | Decision::Ignore => {}
            Decision::Stop | Decision::Cancel => {
                if let Some(Slot::Running { control, .. }) = self.slots.get(uid) {
                    let reason = if decision == Decision::Cancel {
                        StopReason::Cancel
                    } else {
                        StopReason::Stale
                    };
                    tracing::info!(job = name, ?reason, "stopping the attempt");
                    control.stop(reason);
                }
            }
            Decision::Start(ref attempt) | Decision::CancelIdle(ref attempt) => {
                let attempt = attempt.clone();
                let Some(info) = JobInfo::of(job, attempt.clone()) else {
                    return;
                };
                let control = Arc::new(Control::default());
                let shared = self.shared.clone();
                let ended = self.ended_tx.clone();
                let (uid_owned, a) = (uid.to_owned(), attempt.clone());
                let cancel = matches!(decision, Decision::CancelIdle(_));
                let ctl = control.clone();
                let task = tokio::spawn(async move {
                    if cancel {
                        executor::cancel_idle(&shared, &info).await;
                    } else {
                        executor::run(shared, info, ctl).await;
                    }
                    let _ = ended.send((uid_owned, a));
                });
                self.slots
                    .insert(uid.to_owned(), Slot::Running { attempt, control, task });
            }
        }
    }

    fn ended(&mut self, uid: String, attempt: AttemptId) {
        let stale = matches!(self.slots.get(&uid), Some(Slot::Running { attempt: a, .. }) if *a == attempt);
        if stale {
            self.slots.insert(uid.clone(), Slot::Done(attempt));
        }
        // The job may have moved on while the attempt ran (a new attempt, a cancel).
        if let Some(job) = self.latest.get(&uid).cloned() {
            self.evaluate(&uid, &job, false);
        }
    }

    /// Watches and runs until `shutdown`; then stops every attempt (keeping checkpoints) and
    /// waits for them to flush their events.
    pub async fn run(mut self, jobs: kube::Api<AnalysisJob>, ready: Readiness, shutdown: CancellationToken) {
        let config = watcher::Config::default().labels(&format!("{LABEL_SERVER_ID}={}", self.shared.server_id));
        let mut stream = std::pin::pin!(watcher(jobs, config).default_backoff());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some((uid, attempt)) = self.ended_rx.recv() => self.ended(uid, attempt),
                event = stream.next() => match event {
                    Some(Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job))) => {
                        let Some(uid) = job.metadata.uid.clone() else { continue };
                        self.evaluate(&uid, &job, false);
                        self.latest.insert(uid, job);
                    }
                    Some(Ok(watcher::Event::Delete(job))) => {
                        let Some(uid) = job.metadata.uid.clone() else { continue };
                        self.latest.remove(&uid);
                        self.evaluate(&uid, &job, true);
                    }
                    Some(Ok(watcher::Event::InitDone)) => ready.set(true),
                    Some(Ok(watcher::Event::Init)) => {}
                    Some(Err(err)) => tracing::warn!(%err, "watching jobs failed; retrying"),
                    None => break,
                },
            }
        }
        ready.set(false);
        tracing::info!("stopping the running attempts; their checkpoints are kept");
        let mut tasks = Vec::new();
        for slot in self.slots.into_values() {
            if let Slot::Running { control, task, .. } = slot {
                control.stop(StopReason::Shutdown);
                tasks.push(task);
            }
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}
