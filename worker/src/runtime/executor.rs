//! Runs one attempt: waits for a slot (holding no memory meanwhile), opens the source, runs the
//! engine in `spawn_blocking`, emits events, writes checkpoints, status and the result, and
//! ends with exactly one of COMPLETED, FAILED or CANCELLED (or nothing, when the attempt became
//! stale or the worker is shutting down).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use kube::{Api, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::ClientConfig;
use streamscan_api::event::EventSequence;
use streamscan_api::names::{ANNOTATION_TRACEPARENT, reason};
use streamscan_api::trace::TraceParent;
use streamscan_api::{AnalysisJob, AnalyzerName, EventStatus, ExecutionState, ProgressEvent, ResultSummary, Source};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::decide::AttemptId;
use super::events::{
    EventQueue, EventsError, OnCommit, Publisher, StillCurrent, StreamInfo, attempt_trace, event_traceparent,
};
use super::lifecycle::{self, ScanEnd};
use super::sources::{self, Opened, SourceError, Throttled, UploadNotify, UrlOptions};
use super::status::{Failure, Snapshot, StatusError, StatusWriter, names_attempt, progress_due};
use super::store::{SavedCheckpoint, Store, StoredResult, StreamState};
use streamscan_engine::analyzers::{AnalyzerConfig, build};
use streamscan_engine::pipeline::{CancelToken, Checkpoint, EngineError, Hooks, Options, Progress, Scan, ScanResult};
use streamscan_engine::report::Report;
use streamscan_engine::sink::DEFAULT_FINDING_CAP;

pub use super::lifecycle::StopReason;

/// How the watch loop steers a running attempt.
#[derive(Default)]
pub struct Control {
    token: CancellationToken,
    engine: CancelToken,
    reason: AtomicU8,
}

impl Control {
    /// Asks the attempt to stop; the first reason given wins.
    pub fn stop(&self, reason: StopReason) {
        let _ = self
            .reason
            .compare_exchange(StopReason::None as u8, reason as u8, Ordering::SeqCst, Ordering::SeqCst);
        self.engine.cancel();
        self.token.cancel();
    }

    pub fn reason(&self) -> StopReason {
        match self.reason.load(Ordering::SeqCst) {
            1 => StopReason::Cancel,
            2 => StopReason::Stale,
            3 => StopReason::Shutdown,
            _ => StopReason::None,
        }
    }
}

/// Process-wide metrics of the runtime.
#[derive(Clone, Default)]
pub struct Metrics {
    pub running: Gauge,
    pub started: Counter,
    pub succeeded: Counter,
    pub failed: Counter,
    pub cancelled: Counter,
    /// Attempts stopped because a newer attempt owns the job (re-pinned, or fenced on Kafka).
    pub stale: Counter,
    pub bytes: Counter,
}

impl Metrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let r = registry.sub_registry_with_prefix("streamscan_worker");
        r.register("jobs_running", "Attempts analysing now", self.running.clone());
        r.register("jobs_started", "Attempts started or resumed", self.started.clone());
        r.register(
            "jobs_succeeded",
            "Attempts that stored a result",
            self.succeeded.clone(),
        );
        r.register("jobs_failed", "Attempts that failed", self.failed.clone());
        r.register(
            "jobs_cancelled",
            "Attempts cancelled and rolled back",
            self.cancelled.clone(),
        );
        r.register(
            "jobs_stale",
            "Attempts stopped because a newer attempt owns the job (re-pinned, or fenced on Kafka)",
            self.stale.clone(),
        );
        r.register("bytes_analysed", "Source bytes analysed", self.bytes.clone());
    }
}

/// What every attempt shares.
pub struct Shared {
    pub server_id: String,
    pub store: Store,
    pub jobs: Api<AnalysisJob>,
    pub kafka: ClientConfig,
    pub topic: String,
    pub http: reqwest::Client,
    pub permits: Arc<Semaphore>,
    pub uploads: UploadNotify,
    pub metrics: Metrics,
    pub analyzers: AnalyzerConfig,
    pub source_root: std::path::PathBuf,
    pub event_buffer: usize,
    pub chunk_size: usize,
    pub checkpoint_every: u64,
    pub throttle: Option<u64>,
    pub progress_interval: Duration,
    pub upload_wait: Duration,
    pub shutdown_grace: Duration,
    /// Whether `headersSecretRef` may be read (labeled Secrets only).
    pub url_headers_secrets: bool,
    /// What url sources may reach (the client's resolver holds the same policy).
    pub egress: Arc<super::egress::Egress>,
    /// When a url download counts as stalled (see [`UrlOptions`]).
    pub stall_window: Duration,
    pub stall_min_bytes: u64,
}

/// The job fields an attempt needs.
#[derive(Clone, Debug)]
pub struct JobInfo {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub user_id: String,
    pub source: Source,
    pub analyzers: Option<Vec<AnalyzerName>>,
    pub attempt: AttemptId,
    /// The trace of the request that created the job (its `traceparent` annotation), if valid.
    pub trace: Option<TraceParent>,
}

impl JobInfo {
    pub fn of(job: &AnalysisJob, attempt: AttemptId) -> Option<Self> {
        Some(JobInfo {
            uid: job.metadata.uid.clone()?,
            name: job.metadata.name.clone()?,
            namespace: job.metadata.namespace.clone().unwrap_or_default(),
            user_id: job.spec.user_id.clone(),
            source: job.spec.source.clone(),
            analyzers: job.spec.analyzers.clone(),
            attempt,
            trace: job
                .annotations()
                .get(ANNOTATION_TRACEPARENT)
                .and_then(|v| TraceParent::parse(v)),
        })
    }
}

/// Numbers events without gaps and rate-limits PROGRESS.
struct Emitter {
    queue: EventQueue,
    events: EventSequence,
    trace: TraceParent,
    /// Bytes of the last event sent (committed before a restart, or sent since).
    last_bytes: u64,
    last_progress: Option<(Instant, Snapshot)>,
    interval: Duration,
}

impl Emitter {
    fn emit(
        &mut self,
        status: EventStatus,
        processed: u64,
        edit: impl FnOnce(&mut ProgressEvent),
    ) -> Result<(), EventsError> {
        let mut event = self.events.event(status, processed, edit);
        event.traceparent = Some(event_traceparent(&self.trace, &event));
        self.queue.send(event)?;
        self.events.sent();
        self.last_bytes = processed;
        Ok(())
    }

    /// PROGRESS as often as the CR's progress, and never backwards (after a resume from an
    /// older checkpoint, the bytes already reported are not reported again).
    fn progress(&mut self, snap: &Snapshot) -> Result<(), EventsError> {
        if snap.processed <= self.last_bytes {
            return Ok(());
        }
        let now = Instant::now();
        if progress_due(self.last_progress, now, snap, self.interval) {
            self.last_progress = Some((now, *snap));
            let total = snap.total;
            self.emit(EventStatus::Progress, snap.processed, |e| e.total_bytes = total)?;
        }
        Ok(())
    }
}

fn selected(job: &JobInfo, shared: &Shared) -> Vec<AnalyzerName> {
    let mut names: Vec<AnalyzerName> = match &job.analyzers {
        Some(list) => list.clone(),
        None => AnalyzerName::ALL
            .into_iter()
            .filter(|a| *a != AnalyzerName::Model || shared.analyzers.model.is_some())
            .collect(),
    };
    // The expected digest is checked against the digest analyzer's SHA-256, which also
    // survives a resume through its checkpoint.
    if job.source.expected_sha256().is_some() {
        names.push(AnalyzerName::Digest);
    }
    names.sort();
    names.dedup();
    names
}

/// How an attempt ended here.
enum Outcome {
    Succeeded,
    Failed,
    Stopped(StopReason),
}

/// Runs one attempt to its end. `control` stops it.
pub async fn run(shared: Arc<Shared>, job: JobInfo, control: Arc<Control>) {
    // An upload job waits for its body without a slot, so it keeps no other job from running.
    if job.source.upload.is_some() {
        tokio::select! {
            () = wait_for_upload(&shared, &job) => {}
            () = control.token.cancelled() => {
                if control.reason() == StopReason::Cancel {
                    cancel_idle(&shared, &job).await;
                }
                return;
            }
        }
    }
    let permit = tokio::select! {
        p = shared.permits.clone().acquire_owned() => p,
        _ = control.token.cancelled() => {
            if control.reason() == StopReason::Cancel {
                cancel_idle(&shared, &job).await;
            }
            return;
        }
    };
    let Ok(_permit) = permit else { return };
    shared.metrics.running.inc();
    shared.metrics.started.inc();
    let span = tracing::info_span!(
        "attempt",
        job = %job.name,
        namespace = %job.namespace,
        attempt = job.attempt.attempt,
        event_id = %job.attempt.event_id,
    );
    // With trace export on, the attempt is a span in the trace of the request that made the job.
    if let Some(trace) = &job.trace {
        streamscan_runtime::telemetry::continue_trace(&span, trace);
    }
    let outcome = tracing::Instrument::instrument(attempt(&shared, &job, &control), span).await;
    shared.metrics.running.dec();
    match outcome {
        Outcome::Succeeded => shared.metrics.succeeded.inc(),
        Outcome::Failed => shared.metrics.failed.inc(),
        Outcome::Stopped(StopReason::Cancel) => shared.metrics.cancelled.inc(),
        Outcome::Stopped(StopReason::Stale) => shared.metrics.stale.inc(),
        Outcome::Stopped(_) => 0,
    };
}

fn template(shared: &Shared, job: &JobInfo) -> ProgressEvent {
    ProgressEvent {
        user_id: job.user_id.clone(),
        event_id: job.attempt.event_id.clone(),
        server_id: shared.server_id.clone(),
        analyze_id: job.uid.clone(),
        namespace: job.namespace.clone(),
        name: job.name.clone(),
        attempt: u32::try_from(job.attempt.attempt).unwrap_or(1),
        timestamp: jiff::Timestamp::now(),
        ..ProgressEvent::default()
    }
}

/// For the publisher thread, when fenced: reads the job (bounded) and says whether it still names
/// this attempt. Unreadable counts as no: the attempt stops, as a stale one would.
fn still_current(shared: &Shared, job: &JobInfo) -> StillCurrent {
    let runtime = tokio::runtime::Handle::try_current().ok();
    let (jobs, name, attempt) = (shared.jobs.clone(), job.name.clone(), job.attempt.clone());
    Box::new(move || {
        let Some(runtime) = runtime.as_ref() else {
            return false;
        };
        runtime.block_on(async {
            match tokio::time::timeout(Duration::from_secs(10), jobs.get(&name)).await {
                Ok(Ok(current)) => names_attempt(&current, &attempt),
                Ok(Err(err)) => {
                    tracing::warn!(%err, job = %name, "fenced, and the job cannot be read; the attempt stops");
                    false
                }
                Err(_) => {
                    tracing::warn!(job = %name, "fenced, and reading the job timed out; the attempt stops");
                    false
                }
            }
        })
    })
}

/// Starts the attempt's publisher, continuing the stream where its last commit left it.
fn publisher(shared: &Shared, job: &JobInfo) -> Result<(Publisher, Emitter), EventsError> {
    let stream = shared.store.load_stream(&job.uid, &job.attempt);
    let store = shared.store.clone();
    let (uid, attempt) = (job.uid.clone(), job.attempt.clone());
    let on_commit: OnCommit = Box::new(move |next_seq, last_bytes| {
        let state = StreamState {
            attempt: attempt.attempt,
            event_id: attempt.event_id.clone(),
            next_seq,
            last_bytes,
        };
        if let Err(err) = store.save_stream(&uid, &state) {
            tracing::warn!(%err, "cannot record the event stream position");
        }
    });
    let info = StreamInfo {
        topic: shared.topic.clone(),
        namespace: job.namespace.clone(),
        name: job.name.clone(),
        analyze_id: job.uid.clone(),
        server_id: shared.server_id.clone(),
    };
    let publisher = Publisher::start(
        &shared.kafka,
        info,
        shared.event_buffer,
        on_commit,
        still_current(shared, job),
    )?;
    let queue = publisher.queue().ok_or(EventsError::Closed)?;
    let emitter = Emitter {
        queue,
        events: EventSequence::new(template(shared, job), stream.next_seq),
        trace: attempt_trace(job.trace, &job.attempt.event_id),
        last_bytes: stream.last_bytes,
        last_progress: None,
        interval: shared.progress_interval,
    };
    Ok((publisher, emitter))
}

/// Sends the last event of the attempt and waits until it is committed.
async fn finish_stream(
    mut emitter: Emitter,
    publisher: Publisher,
    status: EventStatus,
    processed: u64,
    edit: impl FnOnce(&mut ProgressEvent) + Send + 'static,
) -> Result<(), EventsError> {
    tokio::task::spawn_blocking(move || {
        if emitter.events.next_seq() == 0 {
            emitter.emit(EventStatus::Started, 0, |_| {})?;
        }
        emitter.emit(status, processed, edit)?;
        drop(emitter);
        publisher.finish()
    })
    .await
    .map_err(|_| EventsError::Closed)?
}

/// Cancel of an attempt that is not running here: roll back, CANCELLED, `Cancelled`.
pub async fn cancel_idle(shared: &Shared, job: &JobInfo) {
    let writer = StatusWriter::new(shared.jobs.clone(), job.name.clone(), job.attempt.clone());
    match publisher(shared, job) {
        Ok((publisher, emitter)) => {
            let processed = emitter.last_bytes;
            if let Err(err) =
                finish_stream(emitter, publisher, EventStatus::Cancelled, processed, cancelled_event).await
            {
                tracing::warn!(%err, job = %job.name, "cannot send the CANCELLED event");
            }
        }
        Err(err) => tracing::warn!(%err, job = %job.name, "cannot send the CANCELLED event"),
    }
    if let Err(err) = shared.store.forget(&job.uid) {
        tracing::warn!(%err, job = %job.name, "rollback incomplete");
    }
    if let Err(err) = writer.ended(ExecutionState::Cancelled, &cancelled_failure()).await {
        tracing::warn!(%err, job = %job.name, "cannot write the cancellation");
    }
    shared.metrics.cancelled.inc();
}

fn cancelled_failure() -> Failure {
    Failure {
        reason: streamscan_api::names::reason::CANCELLED.into(),
        message: "cancelled on request; the partial work was deleted".into(),
        retriable: false,
    }
}

fn cancelled_event(e: &mut ProgressEvent) {
    let f = cancelled_failure();
    e.reason = Some(f.reason);
    e.message = Some(f.message);
}

/// The request headers of a url source, read from the Secret `name` in the job's namespace, if
/// the worker allows it and the Secret opts in (label `streamscan.io/url-headers=true`). A Secret
/// that does not opt in is treated as missing, and nothing about it (not even its keys) is said.
async fn headers_secret(
    shared: &Shared,
    namespace: &str,
    name: &str,
) -> Result<reqwest::header::HeaderMap, SourceError> {
    use k8s_openapi::api::core::v1::Secret;
    use streamscan_api::names::LABEL_URL_HEADERS;
    if !shared.url_headers_secrets {
        return Err(SourceError::fatal(
            reason::HEADERS_SECRET_NOT_ALLOWED,
            "spec.source.url.headersSecretRef: this installation does not send request headers from \
             Secrets (Helm value worker.urlHeadersSecrets=true allows Secrets labeled \
             streamscan.io/url-headers=true)",
        ));
    }
    let not_found = || {
        SourceError::fatal(
            reason::HEADERS_SECRET_NOT_FOUND,
            format!("spec.source.url.headersSecretRef: no Secret {namespace}/{name} labeled {LABEL_URL_HEADERS}=true"),
        )
    };
    let secrets: kube::Api<Secret> = kube::Api::namespaced(shared.jobs.clone().into_client(), namespace);
    let secret = match secrets.get_opt(name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => return Err(not_found()),
        Err(err) => {
            return Err(SourceError::retriable(
                reason::HEADERS_SECRET_UNAVAILABLE,
                format!("reading Secret {namespace}/{name}: {err}"),
            ));
        }
    };
    let opted_in = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_URL_HEADERS))
        .is_some_and(|v| v == "true");
    if !opted_in {
        return Err(not_found());
    }
    let data = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    sources::headers_from_secret(name, &data)
}

/// Waits until the job's upload is complete, at most `--upload-wait-seconds`.
async fn wait_for_upload(shared: &Shared, job: &JobInfo) {
    let Ok(path) = shared.store.upload_path(&job.uid) else {
        return;
    };
    let deadline = tokio::time::Instant::now() + shared.upload_wait;
    loop {
        // Register before checking, so an upload finishing in between is not missed.
        let notified = shared.uploads.notified();
        if path.exists() {
            return;
        }
        tracing::info!(job = %job.name, "waiting for the upload");
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return;
        }
    }
}

async fn open_source(shared: &Shared, job: &JobInfo, offset: u64, cancel: CancelToken) -> Result<Opened, SourceError> {
    let source = &job.source;
    if let Some(url) = &source.url {
        let mut options = UrlOptions {
            egress: shared.egress.clone(),
            stall_window: shared.stall_window,
            stall_min_bytes: shared.stall_min_bytes,
            ..UrlOptions::default()
        };
        if let Some(secret) = &url.headers_secret_ref {
            options.headers = headers_secret(shared, &job.namespace, &secret.name).await?;
        }
        return sources::open_url(shared.http.clone(), url.location.clone(), offset, options, cancel).await;
    }
    if let Some(volume) = &source.volume {
        let (root, path) = (shared.source_root.clone(), volume.path.clone());
        return tokio::task::spawn_blocking(move || sources::open_volume(&root, &path, offset))
            .await
            .map_err(|e| SourceError::retriable(reason::SOURCE_READ_FAILED, e.to_string()))?;
    }
    if source.upload.is_some() {
        let path = shared
            .store
            .upload_path(&job.uid)
            .map_err(|e| SourceError::fatal(reason::UNSUPPORTED_INPUT, e.to_string()))?;
        // `run` waited for it before taking a slot.
        if !path.exists() {
            return Err(SourceError::fatal(
                reason::UPLOAD_MISSING,
                format!("no upload arrived within {} s", shared.upload_wait.as_secs()),
            ));
        }
        return sources::open_file(&path, offset, "the uploaded file");
    }
    Err(SourceError::fatal(reason::UNSUPPORTED_INPUT, "the job names no source"))
}

async fn attempt(shared: &Arc<Shared>, job: &JobInfo, control: &Arc<Control>) -> Outcome {
    let writer = StatusWriter::new(shared.jobs.clone(), job.name.clone(), job.attempt.clone());
    let checkpoint = shared.store.load_checkpoint(&job.uid, &job.attempt);
    let offset = checkpoint.as_ref().map_or(0, |c| c.offset);
    log_start(job, offset);
    if let Err(err) = writer.running(checkpoint.as_ref().map(|c| c.offset)).await {
        tracing::warn!(%err, job = %job.name, "cannot write the Running state");
    }
    let (publisher, emitter) = match publisher(shared, job) {
        Ok(p) => p,
        Err(err) => {
            let _ = writer
                .ended(ExecutionState::Failed, &lifecycle::events_failure(&err))
                .await;
            return Outcome::Failed;
        }
    };
    let opened = match open_source(shared, job, offset, control.engine.clone()).await {
        Ok(o) => o,
        Err(e) => {
            let failure = lifecycle::source_failure(e);
            return fail(shared, job, &writer, emitter, publisher, offset, failure).await;
        }
    };
    if control.reason() != StopReason::None {
        return stopped(shared, job, &writer, emitter, publisher, control.reason(), offset).await;
    }
    let Some((result, emitter)) = run_engine(shared, job, control, &writer, checkpoint, opened, emitter).await else {
        let failure = lifecycle::engine_failure(&EngineError::Panicked);
        let _ = writer.ended(ExecutionState::Failed, &failure).await;
        publisher.abandon();
        return Outcome::Failed;
    };
    match lifecycle::scan_end(result, control.reason(), emitter.last_bytes) {
        ScanEnd::Succeed(result) => succeed(shared, job, &writer, emitter, publisher, result).await,
        ScanEnd::Stop { why, processed } => stopped(shared, job, &writer, emitter, publisher, why, processed).await,
        ScanEnd::Fail { failure, processed } => {
            fail(shared, job, &writer, emitter, publisher, processed, failure).await
        }
    }
}

fn log_start(job: &JobInfo, offset: u64) {
    match offset {
        0 => tracing::info!(job = %job.name, attempt = job.attempt.attempt, "starting the analysis"),
        _ => {
            tracing::info!(job = %job.name, attempt = job.attempt.attempt, offset, "resuming from checkpoint at byte {offset}")
        }
    }
}

/// Runs the engine on a blocking thread while a progress loop writes its snapshots to the job;
/// returns its answer and the emitter back, or `None` when the engine thread panicked.
async fn run_engine(
    shared: &Arc<Shared>,
    job: &JobInfo,
    control: &Arc<Control>,
    writer: &StatusWriter,
    checkpoint: Option<Checkpoint>,
    opened: Opened,
    mut emitter: Emitter,
) -> Option<(Result<ScanResult, EngineError>, Emitter)> {
    let (snap_tx, snap_rx) = watch::channel(Snapshot {
        processed: checkpoint.as_ref().map_or(0, |c| c.offset),
        total: opened.total,
        rate: 0,
        checkpoint: checkpoint.as_ref().map(|c| c.offset),
    });
    let progress_task = tokio::spawn(super::status::progress_loop(
        writer.clone(),
        snap_rx,
        shared.progress_interval,
    ));
    let names = selected(job, shared);
    let (shared, job, control) = (shared.clone(), job.clone(), control.clone());
    let blocking = tokio::task::spawn_blocking(move || {
        let result = scan(
            &shared,
            &job,
            &control,
            names,
            checkpoint,
            opened,
            &snap_tx,
            &mut emitter,
        );
        (result, emitter)
    });
    let Ok(ended) = blocking.await else {
        progress_task.abort();
        return None;
    };
    // The sender went with the blocking closure: the progress loop writes its last snapshot and ends.
    let _ = progress_task.await;
    Some(ended)
}

/// The engine run, on a blocking thread.
#[allow(clippy::too_many_arguments)]
fn scan(
    shared: &Shared,
    job: &JobInfo,
    control: &Control,
    names: Vec<AnalyzerName>,
    checkpoint: Option<Checkpoint>,
    opened: Opened,
    snap_tx: &watch::Sender<Snapshot>,
    emitter: &mut Emitter,
) -> Result<ScanResult, EngineError> {
    let analyzers = names
        .iter()
        .map(|&n| build(n, &shared.analyzers))
        .collect::<Result<Vec<_>, _>>()?;
    let options = Options {
        chunk_size: shared.chunk_size,
        checkpoint_every: Some(shared.checkpoint_every),
        total: opened.total,
        ..Options::default()
    };
    let scan = match &checkpoint {
        Some(c) => Scan::resume(analyzers, options, c)?,
        None => Scan::new(analyzers, options)?,
    };
    if emitter.events.next_seq() == 0 {
        let total = opened.total;
        if emitter
            .emit(EventStatus::Started, 0, |e| e.total_bytes = total)
            .is_err()
        {
            control.stop(StopReason::Stale);
        }
    }
    let reader: Box<dyn std::io::Read + Send> = match shared.throttle {
        Some(rate) => Box::new(Throttled::new(opened.reader, rate, control.engine.clone())),
        None => opened.reader,
    };
    let started = Instant::now();
    let start_offset = checkpoint.as_ref().map_or(0, |c| c.offset);
    let mut last_counted = start_offset;
    let hooks = Hooks {
        progress: Some(Box::new(|p: Progress| {
            shared.metrics.bytes.inc_by(p.processed.saturating_sub(last_counted));
            last_counted = last_counted.max(p.processed);
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            snap_tx.send_modify(|s| {
                s.processed = p.processed;
                s.total = p.total.or(s.total);
                s.rate = (p.processed.saturating_sub(start_offset) as f64 / secs) as u64;
            });
            let snap = *snap_tx.borrow();
            if let Err(err) = emitter.progress(&snap) {
                // Fenced: a newer attempt owns the stream; this one must stop silently.
                tracing::warn!(%err, job = %job.name, "events cannot be sent; stopping the attempt");
                control.stop(StopReason::Stale);
            }
        })),
        checkpoint: Some(Box::new(|c: &Checkpoint| {
            let saved = SavedCheckpoint {
                attempt: job.attempt.attempt,
                event_id: job.attempt.event_id.clone(),
                checkpoint: c.clone(),
            };
            match shared.store.save_checkpoint(&job.uid, &saved) {
                Ok(()) => {
                    tracing::debug!(job = %job.name, offset = c.offset, "checkpoint written");
                    snap_tx.send_modify(|s| s.checkpoint = Some(c.offset));
                }
                Err(err) => tracing::warn!(%err, job = %job.name, "cannot write a checkpoint"),
            }
        })),
        cancel: control.engine.clone(),
    };
    scan.run(reader, hooks)
}

async fn succeed(
    shared: &Shared,
    job: &JobInfo,
    writer: &StatusWriter,
    emitter: Emitter,
    publisher: Publisher,
    result: ScanResult,
) -> Outcome {
    let bytes = result.bytes;
    if let Some(failure) = lifecycle::digest_mismatch(job.source.expected_sha256(), result_sha256(&result)) {
        return fail(shared, job, writer, emitter, publisher, bytes, failure).await;
    }
    let (stored, report) = match store_result(shared, job, result).await {
        Ok(s) => s,
        Err(message) => {
            let failure = Failure {
                reason: reason::RESULT_NOT_STORED.into(),
                message,
                retriable: true,
            };
            return fail(shared, job, writer, emitter, publisher, bytes, failure).await;
        }
    };
    let summary = ResultSummary {
        bytes: i64::try_from(report.bytes).unwrap_or(i64::MAX),
        sha256: report.digests.sha256.clone(),
        findings: report.severity_counts(),
        report_digest: stored.digest,
        report_size: i64::try_from(stored.size).unwrap_or(i64::MAX),
        server_id: shared.server_id.clone(),
    };
    let in_event = summary.clone();
    if let Err(err) = finish_stream(emitter, publisher, EventStatus::Completed, bytes, move |e| {
        e.total_bytes = Some(bytes);
        e.result = Some(in_event);
    })
    .await
    {
        // Fenced: a newer attempt exists; this result is not ours to report.
        return superseded(shared, job, &err);
    }
    match writer.succeeded(&summary).await {
        Ok(()) => {}
        // Re-pinned while this attempt finished: the new attempt's result is the job's.
        Err(err @ StatusError::Stale { .. }) => return superseded(shared, job, &err),
        Err(err) => tracing::warn!(%err, job = %job.name, "cannot write the result summary"),
    }
    delete_work(shared, job);
    tracing::info!(job = %job.name, bytes, digest = %summary.report_digest, "analysis succeeded");
    Outcome::Succeeded
}

/// The SHA-256 the digest analyzer computed, if it ran.
fn result_sha256(result: &ScanResult) -> Option<&str> {
    result
        .summaries
        .get(&AnalyzerName::Digest)
        .and_then(|s| s.get("sha256"))
        .and_then(|v| v.as_str())
}

/// What the report says it analysed: the url (credentials redacted), the volume path, or the
/// uploaded file's name.
fn source_label(source: &Source) -> String {
    match (&source.url, &source.volume, &source.upload) {
        (Some(u), _, _) => streamscan_api::redact::url(&u.location).into_owned(),
        (_, Some(v), _) => v.path.clone(),
        (_, _, Some(u)) => u.file_name.clone().unwrap_or_else(|| "upload".into()),
        _ => String::new(),
    }
}

/// Writes the report to the store (on a blocking thread); the error is the failure's message.
async fn store_result(shared: &Shared, job: &JobInfo, result: ScanResult) -> Result<(StoredResult, Report), String> {
    let report = Report::new(
        result,
        source_label(&job.source),
        jiff::Timestamp::now(),
        DEFAULT_FINDING_CAP,
    );
    let store = shared.store.clone();
    let uid = job.uid.clone();
    tokio::task::spawn_blocking(move || store.write_result(&uid, &report).map(|s| (s, report)))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
}

/// Deletes what only this attempt needed, now that the result is stored and reported.
fn delete_work(shared: &Shared, job: &JobInfo) {
    if let Err(err) = shared.store.clear_work(&job.uid) {
        tracing::warn!(%err, job = %job.name, "cannot delete the checkpoint");
    }
    // The result is stored: no attempt needs the uploaded file any more.
    if let Err(err) = shared.store.delete_upload(&job.uid) {
        tracing::warn!(%err, job = %job.name, "cannot delete the uploaded file");
    }
}

/// A newer attempt owns the job: this one's result and work are discarded, nothing is reported.
fn superseded(shared: &Shared, job: &JobInfo, why: &dyn std::fmt::Display) -> Outcome {
    tracing::warn!(%why, job = %job.name, "a newer attempt owns the job; discarding this attempt's result");
    if let Err(err) = shared.store.discard_attempt(&job.uid) {
        tracing::warn!(%err, job = %job.name, "cannot delete this attempt's files");
    }
    Outcome::Stopped(StopReason::Stale)
}

async fn fail(
    shared: &Shared,
    job: &JobInfo,
    writer: &StatusWriter,
    emitter: Emitter,
    publisher: Publisher,
    processed: u64,
    failure: Failure,
) -> Outcome {
    tracing::warn!(job = %job.name, reason = %failure.reason, retriable = failure.retriable, "analysis failed: {}", failure.message);
    let f = failure.clone();
    if let Err(err) = finish_stream(emitter, publisher, EventStatus::Failed, processed, move |e| {
        e.reason = Some(f.reason);
        e.message = Some(f.message);
        e.retriable = Some(f.retriable);
    })
    .await
    {
        tracing::warn!(%err, job = %job.name, "cannot send FAILED");
    }
    // A retriable failure keeps the upload for the next attempt (job deletion removes it at the
    // latest); a fatal one is not retried, so everything goes.
    let discarded = if failure.retriable {
        shared.store.discard_attempt(&job.uid)
    } else {
        shared.store.forget(&job.uid).map(|_| ())
    };
    if let Err(err) = discarded {
        tracing::warn!(%err, job = %job.name, "cannot delete this attempt's files");
    }
    if let Err(err) = writer.ended(ExecutionState::Failed, &failure).await {
        tracing::warn!(%err, job = %job.name, "cannot write the failure");
    }
    Outcome::Failed
}

async fn stopped(
    shared: &Shared,
    job: &JobInfo,
    writer: &StatusWriter,
    emitter: Emitter,
    publisher: Publisher,
    reason: StopReason,
    processed: u64,
) -> Outcome {
    match reason {
        StopReason::Cancel => {
            tracing::info!(job = %job.name, processed, "cancelled; rolling back");
            if let Err(err) =
                finish_stream(emitter, publisher, EventStatus::Cancelled, processed, cancelled_event).await
            {
                tracing::warn!(%err, job = %job.name, "cannot send CANCELLED");
            }
            // After the last commit, which records the stream position on disk.
            if let Err(err) = shared.store.forget(&job.uid) {
                tracing::warn!(%err, job = %job.name, "rollback incomplete");
            }
            if let Err(err) = writer.ended(ExecutionState::Cancelled, &cancelled_failure()).await {
                tracing::warn!(%err, job = %job.name, "cannot write the cancellation");
            }
        }
        StopReason::Shutdown => {
            // Keep the checkpoint for the restarted worker; deliver what is queued if Kafka lets us in time.
            drop(emitter);
            let abandon = publisher.abandon_flag();
            let flush = tokio::task::spawn_blocking(move || publisher.finish());
            if tokio::time::timeout(shared.shutdown_grace, flush).await.is_err() {
                abandon.store(true, Ordering::SeqCst);
            }
            tracing::info!(job = %job.name, processed, "stopped for shutdown; the checkpoint is kept");
        }
        StopReason::Stale | StopReason::None => {
            tracing::info!(job = %job.name, "the attempt is no longer this server's; stopped");
            drop(emitter);
            let _ = tokio::task::spawn_blocking(move || publisher.abandon()).await;
            let _ = shared.store.clear_work(&job.uid);
        }
    }
    Outcome::Stopped(reason)
}
