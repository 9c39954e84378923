//! Progress events to Kafka: one idempotent, transactional producer per attempt, with
//! `transactional.id = streamscan-<analyzeId>` so a newer attempt's producer fences an older one.
//!
//! The engine never waits for Kafka: events go into a bounded in-memory queue that a publisher
//! thread drains, committing one transaction per batch. While Kafka is down the queue fills and
//! the analysis goes on; when the queue is full, [`EventQueue::send`] blocks and so pauses the
//! job (backpressure) instead of dropping events. After each commit the stream position
//! (next seq, last bytes) is persisted, so a restarted worker continues the stream with neither
//! gap nor repeat: events not yet committed at a crash are aborted by the next producer's
//! `init_transactions` and sent again with the same seqs.
//!
//! A fence is checked against the job before the attempt gives up: an older attempt's
//! InitProducerId still being retried (a coordinator that is loading) can complete after this
//! attempt's and fence it although the job names this attempt. Then the publisher starts a new
//! producer, whose InitProducerId takes the transactional id back (fencing the older one), and
//! sends the uncommitted batch again with the same seqs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use sha2::{Digest, Sha256};
use streamscan_api::ProgressEvent;
use streamscan_api::event::{CLOUDEVENTS_TYPE, headers};
use streamscan_api::trace::{self, TraceParent};

/// Events per transaction at most.
const BATCH: usize = 256;
/// Fences the job does not back that an attempt takes back before it stops anyway.
const MAX_TAKEBACKS: u32 = 3;
/// One Kafka call's patience; calls are retried until the publisher is abandoned.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// A newer producer with the same transactional id exists: this attempt is stale.
    #[error("the event producer was fenced by a newer attempt: {0}")]
    Fenced(String),
    #[error("kafka: {0}")]
    Kafka(String),
    /// The publisher stopped (fenced or abandoned); the job must stop.
    #[error("the event publisher has stopped")]
    Closed,
}

/// What the publisher needs to know about the attempt.
#[derive(Clone, Debug)]
pub struct StreamInfo {
    pub topic: String,
    pub namespace: String,
    pub name: String,
    pub analyze_id: String,
    pub server_id: String,
}

/// The sending side: cheap to use from the engine's blocking thread.
#[derive(Clone)]
pub struct EventQueue {
    tx: SyncSender<ProgressEvent>,
}

impl EventQueue {
    /// Queues an event; blocks while the queue is full (the job pauses).
    pub fn send(&self, event: ProgressEvent) -> Result<(), EventsError> {
        match self.tx.try_send(event) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(event)) => {
                tracing::info!(analyze_id = %event.analyze_id, "event buffer full: pausing the job until Kafka catches up");
                self.tx.send(event).map_err(|_| EventsError::Closed)
            }
            Err(TrySendError::Disconnected(_)) => Err(EventsError::Closed),
        }
    }
}

/// The publisher of one attempt's events.
pub struct Publisher {
    queue: Option<EventQueue>,
    abandon: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), EventsError>>>,
}

/// Called after each committed transaction with (next seq, bytes of the last event).
pub type OnCommit = Box<dyn FnMut(u64, u64) + Send>;

/// Asked when the producer is fenced: whether the job still names this attempt (false when that
/// cannot be read: the attempt then stops, as a stale one would).
pub type StillCurrent = Box<dyn Fn() -> bool + Send>;

impl Publisher {
    /// Starts the producer thread. `config` holds the connection settings (bootstrap, TLS, SASL).
    pub fn start(
        config: &ClientConfig,
        info: StreamInfo,
        buffer: usize,
        on_commit: OnCommit,
        still_current: StillCurrent,
    ) -> Result<Self, EventsError> {
        let mut config = config.clone();
        config
            .set("transactional.id", format!("streamscan-{}", info.analyze_id))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("transaction.timeout.ms", "60000")
            .set("message.timeout.ms", "60000");
        let producer = create(&config)?;
        let (tx, rx) = sync_channel(buffer.max(1));
        let abandon = Arc::new(AtomicBool::new(false));
        let flag = abandon.clone();
        let thread = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                let analyze_id = info.analyze_id.clone();
                let ended = publish(Session {
                    producer,
                    config,
                    info,
                    rx,
                    abandon: flag,
                    on_commit,
                    still_current,
                });
                match &ended {
                    Err(e @ EventsError::Fenced(_)) => {
                        tracing::warn!(%analyze_id, error = %e, "fenced: a newer attempt owns the event stream; this attempt stops")
                    }
                    Err(e) => tracing::warn!(%analyze_id, error = %e, "the event publisher stopped"),
                    Ok(()) => {}
                }
                ended
            })
            .map_err(|e| EventsError::Kafka(format!("starting the publisher thread: {e}")))?;
        Ok(Publisher {
            queue: Some(EventQueue { tx }),
            abandon,
            thread: Some(thread),
        })
    }

    pub fn queue(&self) -> Option<EventQueue> {
        self.queue.clone()
    }

    /// Closes the queue and waits until every queued event is committed.
    pub fn finish(mut self) -> Result<(), EventsError> {
        self.queue = None;
        self.join()
    }

    /// Stops at once: what is not committed yet is dropped (the attempt is stale, or time is up).
    pub fn abandon(mut self) {
        self.abandon.store(true, Ordering::SeqCst);
        self.queue = None;
        let _ = self.join();
    }

    /// A flag that, once set, makes the publisher give up waiting for Kafka.
    pub fn abandon_flag(&self) -> Arc<AtomicBool> {
        self.abandon.clone()
    }

    fn join(&mut self) -> Result<(), EventsError> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| EventsError::Kafka("the publisher thread panicked".into()))?,
            None => Ok(()),
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.abandon.store(true, Ordering::SeqCst);
            self.queue = None;
            let _ = self.join();
        }
    }
}

/// The trace an attempt's events continue: the job's (its `traceparent` annotation, from the
/// request that created it), else one derived from the eventId, so a restarted worker agrees.
pub fn attempt_trace(job_trace: Option<TraceParent>, event_id: &str) -> TraceParent {
    job_trace.unwrap_or_else(|| {
        let digest = Sha256::digest(event_id.as_bytes());
        let mut trace_id = [0; 16];
        trace_id.copy_from_slice(&digest[..16]);
        TraceParent {
            trace_id,
            parent_id: [0; 8],
            flags: trace::SAMPLED,
        }
    })
}

/// One event's `traceparent`: the attempt's trace with the event as the span (derived from its
/// CloudEvents id, so a re-sent event keeps its span).
pub fn event_traceparent(trace: &TraceParent, event: &ProgressEvent) -> String {
    let digest = Sha256::digest(event.cloudevent_id().as_bytes());
    let mut span = [0; 8];
    span.copy_from_slice(&digest[..8]);
    trace.with_parent(span).to_string()
}

/// The CloudEvents and trace headers of one event.
pub fn event_headers(info: &StreamInfo, event: &ProgressEvent) -> Vec<(&'static str, String)> {
    let traceparent = event
        .traceparent
        .clone()
        .unwrap_or_else(|| event_traceparent(&attempt_trace(None, &event.event_id), event));
    vec![
        (headers::SPEC_VERSION, "1.0".into()),
        (headers::ID, event.cloudevent_id()),
        (headers::SOURCE, format!("/streamscan/servers/{}", info.server_id)),
        (headers::TYPE, CLOUDEVENTS_TYPE.into()),
        (headers::TIME, event.timestamp.to_string()),
        (headers::SUBJECT, format!("{}/{}", info.namespace, info.name)),
        (headers::CONTENT_TYPE, "application/json".into()),
        (headers::TRACEPARENT, traceparent),
    ]
}

fn is_fatal(e: &KafkaError) -> Option<String> {
    match e {
        KafkaError::Transaction(t) if t.is_fatal() => Some(t.to_string()),
        _ if e.rdkafka_error_code() == Some(RDKafkaErrorCode::ProducerFenced) => Some(e.to_string()),
        _ => None,
    }
}

fn requires_abort(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.txn_requires_abort())
}

fn create(config: &ClientConfig) -> Result<ThreadedProducer<DefaultProducerContext>, EventsError> {
    config.create().map_err(|e| EventsError::Kafka(e.to_string()))
}

/// The publisher thread's state.
struct Session {
    producer: ThreadedProducer<DefaultProducerContext>,
    /// For a new producer after a fence the job does not back.
    config: ClientConfig,
    info: StreamInfo,
    rx: Receiver<ProgressEvent>,
    abandon: Arc<AtomicBool>,
    on_commit: OnCommit,
    still_current: StillCurrent,
}

fn publish(mut s: Session) -> Result<(), EventsError> {
    // Survives a new producer: the batch the fence interrupted is sent again, same seqs.
    let mut batch: Vec<ProgressEvent> = Vec::with_capacity(BATCH);
    let mut takebacks = 0;
    loop {
        match transactions(&s.producer, &s.info, &s.rx, &s.abandon, &mut s.on_commit, &mut batch) {
            Err(EventsError::Fenced(why))
                if takebacks < MAX_TAKEBACKS && !s.abandon.load(Ordering::SeqCst) && (s.still_current)() =>
            {
                takebacks += 1;
                tracing::warn!(
                    analyze_id = %s.info.analyze_id,
                    %why,
                    takebacks,
                    "fenced, but the job still names this attempt (an older attempt's producer registered late): taking the transactional id back"
                );
                s.producer = create(&s.config)?;
            }
            ended => return ended,
        }
    }
}

/// Registers the producer (InitProducerId, which fences older ones), then commits one
/// transaction per batch until the queue closes.
fn transactions(
    producer: &ThreadedProducer<DefaultProducerContext>,
    info: &StreamInfo,
    rx: &Receiver<ProgressEvent>,
    abandon: &AtomicBool,
    on_commit: &mut OnCommit,
    batch: &mut Vec<ProgressEvent>,
) -> Result<(), EventsError> {
    let txn = Transactions {
        producer,
        info,
        abandon,
    };
    txn.retry("init_transactions", || producer.init_transactions(CALL_TIMEOUT))?;
    loop {
        // A batch a fence interrupted is sent again before anything new is taken.
        if batch.is_empty() && !next_batch(rx, abandon, batch)? {
            return Ok(());
        }
        txn.commit_batch(batch)?;
        if let Some(last) = batch.last() {
            on_commit(last.seq + 1, last.bytes_processed);
        }
        batch.clear();
    }
}

fn gave_up() -> EventsError {
    EventsError::Kafka("gave up waiting for Kafka".into())
}

/// Waits for the next event, then takes what else is queued, up to [`BATCH`] in all; `false`
/// when the queue closed instead.
fn next_batch(
    rx: &Receiver<ProgressEvent>,
    abandon: &AtomicBool,
    batch: &mut Vec<ProgressEvent>,
) -> Result<bool, EventsError> {
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(e) => {
                batch.push(e);
                break;
            }
            Err(RecvTimeoutError::Timeout) => {
                if abandon.load(Ordering::SeqCst) {
                    return Err(gave_up());
                }
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(false),
        }
    }
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(e) => batch.push(e),
            Err(_) => break,
        }
    }
    Ok(true)
}

/// One producer's transactional calls, retried while Kafka is unavailable.
struct Transactions<'a> {
    producer: &'a ThreadedProducer<DefaultProducerContext>,
    info: &'a StreamInfo,
    abandon: &'a AtomicBool,
}

impl Transactions<'_> {
    /// Retries a transactional call until it works, is fatal, or the publisher is abandoned.
    fn retry(&self, what: &str, call: impl Fn() -> Result<(), KafkaError>) -> Result<(), EventsError> {
        loop {
            match call() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if let Some(fatal) = is_fatal(&e) {
                        return Err(EventsError::Fenced(fatal));
                    }
                    if self.abandon.load(Ordering::SeqCst) {
                        return Err(gave_up());
                    }
                    tracing::warn!(analyze_id = %self.info.analyze_id, error = %e, "kafka {what} failed; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Sends the batch in one transaction; on an abortable error, aborts and sends it again.
    fn commit_batch(&self, batch: &[ProgressEvent]) -> Result<(), EventsError> {
        let (producer, info) = (self.producer, self.info);
        loop {
            self.retry("begin_transaction", || producer.begin_transaction())?;
            if let Err(e) = batch
                .iter()
                .try_for_each(|event| send(producer, info, event, self.abandon))
            {
                if matches!(e, EventsError::Fenced(_)) || self.abandon.load(Ordering::SeqCst) {
                    return Err(e);
                }
                tracing::warn!(analyze_id = %info.analyze_id, error = %e, "kafka send failed; aborting the transaction and sending again");
                self.retry("abort_transaction", || producer.abort_transaction(CALL_TIMEOUT))?;
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            if self.commit()? {
                return Ok(());
            }
        }
    }

    /// Commits the open transaction; `false` when Kafka aborted it and the batch must be sent again.
    fn commit(&self) -> Result<bool, EventsError> {
        let (producer, info) = (self.producer, self.info);
        let Err(e) = producer.commit_transaction(CALL_TIMEOUT) else {
            return Ok(true);
        };
        if let Some(fatal) = is_fatal(&e) {
            return Err(EventsError::Fenced(fatal));
        }
        if requires_abort(&e) {
            tracing::warn!(analyze_id = %info.analyze_id, error = %e, "kafka transaction aborted; sending the batch again");
            self.retry("abort_transaction", || producer.abort_transaction(CALL_TIMEOUT))?;
            return Ok(false);
        }
        // Retriable (e.g. a timeout while brokers are down): commit again.
        tracing::warn!(analyze_id = %info.analyze_id, error = %e, "kafka commit failed; retrying");
        self.retry("commit_transaction", || producer.commit_transaction(CALL_TIMEOUT))?;
        Ok(true)
    }
}

fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    info: &StreamInfo,
    event: &ProgressEvent,
    abandon: &AtomicBool,
) -> Result<(), EventsError> {
    let payload = serde_json::to_vec(event).map_err(|e| EventsError::Kafka(format!("encoding an event: {e}")))?;
    let mut hdrs = OwnedHeaders::new();
    for (key, value) in event_headers(info, event) {
        hdrs = hdrs.insert(Header {
            key,
            value: Some(value.as_str()),
        });
    }
    let mut record = BaseRecord::to(&info.topic)
        .key(event.key())
        .payload(&payload)
        .headers(hdrs);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                if abandon.load(Ordering::SeqCst) {
                    return Err(gave_up());
                }
                record = r;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((e, _)) => {
                return Err(match is_fatal(&e) {
                    Some(fatal) => EventsError::Fenced(fatal),
                    None => EventsError::Kafka(e.to_string()),
                });
            }
        }
    }
}
