//! The Kafka side: client settings shared with the workers (docs/internal-contracts.md), and the
//! consumer loop that stores each event in Redis, then pushes it live.
//!
//! Offsets are stored for commit only once the event is durably in Redis. When a write fails,
//! the partition's first unstored offset is remembered, live pushes go on straight from Kafka,
//! and once Redis answers again the consumer seeks back there and re-stores what it missed
//! (without pushing it a second time). A restart in the meantime re-reads from the committed
//! offset, which never passed the first unstored event.
//!
//! Redis may also come back without its data (no persistence, a flush, a failover to an empty
//! replica). The history's epoch key tells: it changes only with the dataset. Then every
//! partition is re-read from what the history should still hold ([`crate::rewind`]), stored but
//! not pushed again. A gateway that starts on a Redis with no epoch does the same from the
//! broker's offsets for the last TTL, so a gateway and Redis restarted together lose nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use streamscan_api::ProgressEvent;
use tokio_util::sync::CancellationToken;

use crate::history::History;
use crate::hub::{Hub, Published};
use crate::jobcache::JobCache;
use crate::metrics::Metrics;
use crate::rewind::{self, Rewind};
use crate::seqset::Recent;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OffsetReset {
    Earliest,
    Latest,
}

/// The gateway's Kafka flags: the connection flags every Streamscan client shares, and its
/// consumer's own.
#[derive(clap::Args, Debug, Clone)]
pub struct GatewayKafkaArgs {
    #[command(flatten)]
    pub client: streamscan_runtime::kafka::KafkaArgs,
    /// Consumer group of this replica (default: `streamscan-gateway-<identity>`). Each replica
    /// needs its own group so that it sees every event.
    #[arg(long, env = "STREAMSCAN_KAFKA_GROUP_ID")]
    pub kafka_group_id: Option<String>,
    /// Where a new consumer group starts reading.
    #[arg(long, value_enum, default_value_t = OffsetReset::Earliest)]
    pub kafka_offset_reset: OffsetReset,
    /// Longest time the broker may hold an empty fetch (librdkafka `fetch.wait.max.ms`). A real
    /// broker answers as soon as data arrives, so this only paces idle polling; a broker that does
    /// not wake a waiting fetch (librdkafka's mock cluster) adds up to this much to every event's
    /// latency, so keep it low for live streams.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=300_000))]
    pub kafka_fetch_wait_max_ms: u32,
    /// Consumer group session timeout (librdkafka `session.timeout.ms`; the heartbeat is a third of
    /// it, at most 3 s). With static membership a restarted replica rejoins at once on a real
    /// broker; the broker's group.min/max.session.timeout.ms bound it.
    #[arg(long, default_value_t = 45_000, value_parser = clap::value_parser!(u32).range(1000..))]
    pub kafka_session_timeout_ms: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error(transparent)]
    Config(#[from] streamscan_runtime::kafka::KafkaConfigError),
    #[error("creating the Kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
}

impl GatewayKafkaArgs {
    /// A consumer of the progress topic that commits only the offsets the loop stores;
    /// `assigned` follows how many partitions it holds.
    pub fn consumer(&self, identity: &str, assigned: Gauge) -> Result<GatewayConsumer, KafkaSetupError> {
        let group = self
            .kafka_group_id
            .clone()
            .unwrap_or_else(|| format!("streamscan-gateway-{identity}"));
        let session = self.kafka_session_timeout_ms;
        let consumer: GatewayConsumer = self
            .client
            .client_config()?
            .set("group.id", &group)
            .set("client.id", format!("streamscan-gateway-{identity}"))
            // Static membership: a restarted replica (same identity) takes its partitions back at
            // once instead of waiting for its previous incarnation's session to time out.
            .set("group.instance.id", format!("streamscan-gateway-{identity}"))
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 3).min(3000).to_string())
            .set("fetch.wait.max.ms", self.kafka_fetch_wait_max_ms.to_string())
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match self.kafka_offset_reset {
                    OffsetReset::Earliest => "earliest",
                    OffsetReset::Latest => "latest",
                },
            )
            .create_with_context(IngestContext { assigned })?;
        consumer.subscribe(&[&self.client.kafka_topic])?;
        tracing::info!(topic = %self.client.kafka_topic, %group, "subscribed to the progress topic");
        Ok(consumer)
    }
}

/// The gateway's consumer, whose context tracks its partition assignment.
pub type GatewayConsumer = StreamConsumer<IngestContext>;

/// Logs and counts the partitions the consumer holds (the `kafka_partitions_assigned` gauge):
/// a replica holding none streams nothing live.
pub struct IngestContext {
    assigned: Gauge,
}

impl ClientContext for IngestContext {}

impl ConsumerContext for IngestContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(_) | Rebalance::Revoke(_) => {
                let held = consumer.assignment().map(|a| a.count()).unwrap_or(0);
                self.assigned.set(i64::try_from(held).unwrap_or(i64::MAX));
                tracing::info!(partitions = held, "Kafka partition assignment changed");
            }
            Rebalance::Error(err) => tracing::warn!(%err, "Kafka rebalance failed"),
        }
    }
}

/// The consumer loop's state.
pub struct Ingest {
    pub consumer: Arc<GatewayConsumer>,
    pub topic: String,
    pub history: History,
    pub hub: Hub,
    pub metrics: Metrics,
    /// Whether Redis holds every consumed event (false during an outage and its catch-up).
    pub history_ok: Arc<AtomicBool>,
    pub recent: Recent,
    /// Whose events are believed.
    jobs: JobCache,
    /// Per partition: the first offset Redis did not take.
    holes: HashMap<i32, i64>,
    /// Per partition: offsets up to here were already pushed live; while re-reading them after a
    /// seek back, store but do not push.
    replay_until: HashMap<i32, i64>,
    /// Per partition: the highest offset read.
    high: HashMap<i32, i64>,
    /// Where to re-read from should Redis lose its data.
    rewind: Rewind,
    /// The Redis dataset's epoch last seen (None until Redis first answers).
    epoch: Option<String>,
    /// Redis lost its data and the re-read is not planned yet (no partitions assigned yet).
    rewind_pending: Option<Lost>,
    /// Per partition: the first offset read by this run.
    first: HashMap<i32, i64>,
}

/// Which offsets [`Ingest::offsets`] asks the broker for.
#[derive(Clone, Copy, Debug)]
enum Lookup {
    /// The first offset at or after this time (ms since the epoch).
    Since(i64),
    /// The consumer group's committed offset.
    Committed,
}

/// When Redis lost the history, as far as this replica can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lost {
    /// The epoch changed under this replica.
    WhileRunning,
    /// There was no epoch when this replica first reached Redis.
    BeforeStart,
}

impl Ingest {
    pub fn new(
        consumer: Arc<GatewayConsumer>,
        topic: String,
        history: History,
        hub: Hub,
        metrics: Metrics,
        history_ok: Arc<AtomicBool>,
        jobs: JobCache,
    ) -> Self {
        metrics.history_complete.set(1);
        // Duplicates are remembered as long as the history keeps events.
        let recent = Recent::new(history.ttl());
        let rewind = Rewind::new(history.ttl());
        Ingest {
            consumer,
            topic,
            history,
            hub,
            metrics,
            history_ok,
            recent,
            jobs,
            holes: HashMap::new(),
            replay_until: HashMap::new(),
            high: HashMap::new(),
            rewind,
            epoch: None,
            rewind_pending: None,
            first: HashMap::new(),
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        self.jobs.wait_until_ready(Duration::from_secs(10)).await;
        let consumer = self.consumer.clone();
        let mut repair = tokio::time::interval(Duration::from_millis(500));
        repair.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                msg = consumer.recv() => match msg {
                    Ok(msg) => self.handle(&msg).await,
                    Err(err) => {
                        tracing::warn!(%err, "Kafka consumer error");
                        // librdkafka retries on its own; pause briefly so a persistent error
                        // does not spin the loop.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                _ = repair.tick() => {
                    if self.check_epoch().await && !self.holes.is_empty() {
                        self.repair().await;
                    }
                }
            }
        }
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("committed stored offsets on shutdown"),
            Err(err) => tracing::debug!(%err, "nothing committed on shutdown"),
        }
    }

    async fn handle(&mut self, msg: &BorrowedMessage<'_>) {
        self.metrics.events_consumed.inc();
        let (partition, offset) = (msg.partition(), msg.offset());
        self.first.entry(partition).or_insert(offset);
        let high = self.high.entry(partition).or_insert(offset);
        *high = (*high).max(offset);
        let payload = msg.payload().unwrap_or_default();
        let Some(event) = self.admitted(partition, offset, payload).await else {
            self.stored(msg);
            return;
        };
        self.rewind.observe(
            partition,
            offset,
            &event.event_id,
            event.status.is_final(),
            Instant::now(),
        );
        let replaying = self.replay_until.get(&partition).is_some_and(|until| offset <= *until);
        if event.status.is_final() && !self.holes.contains_key(&partition) {
            // The verdict must not judge a history Redis lost since the last tick: look first (a
            // loss turns into a hole here, and the final event is stored again after the re-read).
            self.check_epoch().await;
        }
        if !self.holes.contains_key(&partition) {
            self.store_or_open_hole(msg, &event, payload).await;
        }
        if !replaying {
            self.push_live(event, payload);
        } else if self.replay_until.get(&partition).is_some_and(|until| offset >= *until) {
            self.replay_until.remove(&partition);
            if self.replay_until.is_empty() && self.holes.is_empty() {
                self.history_ok.store(true, Ordering::SeqCst);
                self.metrics.history_complete.set(1);
                tracing::info!("Redis history caught up with Kafka");
            }
        }
    }

    /// The record's event when it is well-formed and belongs to its job; else counted and logged.
    async fn admitted(&mut self, partition: i32, offset: i64, payload: &[u8]) -> Option<ProgressEvent> {
        let event = match ProgressEvent::from_slice(payload) {
            Ok(event) => event,
            Err(err) => {
                self.metrics.events_malformed.inc();
                tracing::warn!(partition, offset, %err, "dropping a malformed progress event");
                return None;
            }
        };
        let Err(why) = self.jobs.admit(&event).await else {
            return Some(event);
        };
        self.metrics
            .events_refused
            .get_or_create(&crate::metrics::RefusedLabels {
                reason: why.as_str().to_owned(),
            })
            .inc();
        tracing::warn!(
            partition,
            offset,
            analyze_id = %event.analyze_id,
            event_id = %event.event_id,
            namespace = %event.namespace,
            name = %event.name,
            user_id = %event.user_id,
            server_id = %event.server_id,
            "dropping a progress event that does not match its job: {}",
            why.describe()
        );
        None
    }

    /// Stores the event; while Redis fails, the partition gets a hole to re-read from Kafka.
    async fn store_or_open_hole(&mut self, msg: &BorrowedMessage<'_>, event: &ProgressEvent, payload: &[u8]) {
        match self.store(event, payload).await {
            Ok(()) => self.stored(msg),
            Err(err) => {
                let (partition, offset) = (msg.partition(), msg.offset());
                self.metrics.redis_errors.inc();
                self.history_ok.store(false, Ordering::SeqCst);
                self.metrics.history_complete.set(0);
                self.holes.insert(partition, offset);
                tracing::warn!(partition, offset, %err, "Redis write failed; streaming live only until Redis returns");
            }
        }
    }

    /// Pushes a first-seen event to its live streams, with its trace for the log.
    fn push_live(&mut self, event: ProgressEvent, payload: &[u8]) {
        if !self.recent.insert(&event.event_id, event.seq) {
            self.metrics.events_duplicate.inc();
            return;
        }
        // The event carries its trace (the worker writes the same value to the Kafka header).
        let traceparent = event.traceparent.unwrap_or_default();
        let published = Arc::new(Published {
            analyze_id: event.analyze_id,
            event_id: event.event_id,
            attempt: event.attempt,
            seq: event.seq,
            payload: Bytes::copy_from_slice(payload),
        });
        let (delivered, dropped) = self.hub.publish(published.clone());
        tracing::debug!(
            event_id = %published.event_id, seq = published.seq, %traceparent, delivered, "pushed an event"
        );
        self.metrics.events_pushed.inc_by(delivered as u64);
        self.metrics.slow_client_disconnects.inc_by(dropped as u64);
    }

    /// Writes the event; on the final event (or a late one of a finished attempt) checks the stream.
    async fn store(&self, event: &ProgressEvent, payload: &[u8]) -> Result<(), crate::history::HistoryError> {
        let stored = self.history.store(event, payload).await?;
        if stored.added {
            self.metrics.events_stored.inc();
        }
        if stored.final_seen && (stored.added || event.status.is_final()) {
            let recorded = self.history.record_verdict(&event.analyze_id, &event.event_id).await?;
            let label = if recorded.verdict.ok { "ok" } else { "mismatch" };
            self.metrics
                .verdicts
                .get_or_create(&crate::metrics::VerdictLabels {
                    verdict: label.to_owned(),
                })
                .inc();
            if recorded.newly_mismatched {
                self.metrics.verdict_mismatches.inc();
                tracing::warn!(
                    analyze_id = %event.analyze_id,
                    event_id = %event.event_id,
                    namespace = %event.namespace,
                    name = %event.name,
                    problems = ?recorded.verdict.problems,
                    "attempt's event stream does not match its history"
                );
            } else if recorded.verdict.ok {
                tracing::debug!(analyze_id = %event.analyze_id, event_id = %event.event_id, "attempt verified");
            }
        }
        Ok(())
    }

    /// Marks the message's offset for commit, unless an earlier one of its partition is unstored.
    fn stored(&self, msg: &BorrowedMessage<'_>) {
        if self.holes.contains_key(&msg.partition()) {
            return;
        }
        if let Err(err) = self.consumer.store_offset_from_message(msg) {
            tracing::warn!(%err, partition = msg.partition(), offset = msg.offset(), "cannot store the offset");
        }
    }

    /// Reads the Redis dataset's epoch; when it changed (or Redis held none), plans a re-read of
    /// everything the history should hold. False while Redis does not answer.
    async fn check_epoch(&mut self) -> bool {
        let candidate = uuid::Uuid::new_v4().to_string();
        let current = match self.history.epoch(&candidate).await {
            Ok(current) => current,
            Err(err) => {
                tracing::debug!(%err, "Redis unavailable");
                return false;
            }
        };
        match &self.epoch {
            Some(seen) if *seen != current => {
                tracing::warn!(was = %seen, now = %current, "Redis lost its data; re-reading Kafka to rebuild the history");
                self.rewind_pending = Some(Lost::WhileRunning);
            }
            None if current == candidate => {
                tracing::info!("Redis holds no history epoch (new, or emptied while no gateway ran)");
                self.rewind_pending = Some(Lost::BeforeStart);
            }
            _ => {}
        }
        self.epoch = Some(current);
        if let Some(lost) = self.rewind_pending {
            self.plan_rewind(lost).await;
        }
        true
    }

    /// Turns a pending rewind into holes at each assigned partition's rewind point.
    ///
    /// Lost while running: the earlier of what this replica consumed within the TTL (and of the
    /// attempts still running) and the broker's offset for the TTL's start. Lost before this
    /// replica started: from the broker's offset for the TTL's start, where that is before the
    /// offset this run started from (what it consumed since is in the new dataset already).
    async fn plan_rewind(&mut self, lost: Lost) {
        let assignment = match self.consumer.assignment() {
            Ok(a) => a,
            Err(err) => {
                tracing::warn!(%err, "cannot read the partition assignment; will retry the re-read");
                return;
            }
        };
        let assigned: Vec<i32> = assignment
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect();
        if assigned.is_empty() {
            // Nothing to seek yet: retried on the next tick, once the group assigned partitions.
            return;
        }
        let since = SystemTime::now()
            .checked_sub(self.history.ttl())
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .unwrap_or(0);
        let by_time = self.offsets(&assigned, Lookup::Since(since)).await;
        let points = match lost {
            Lost::WhileRunning => {
                let mut points = self.rewind.points(Instant::now());
                for (partition, offset) in by_time {
                    rewind::lower(&mut points, partition, offset);
                }
                points
            }
            Lost::BeforeStart => {
                let unread: Vec<i32> = assigned
                    .iter()
                    .copied()
                    .filter(|p| !self.first.contains_key(p))
                    .collect();
                let committed = self.offsets(&unread, Lookup::Committed).await;
                by_time
                    .into_iter()
                    .filter(|(partition, offset)| {
                        self.first
                            .get(partition)
                            .or_else(|| committed.get(partition))
                            .is_some_and(|start| offset < start)
                    })
                    .collect()
            }
        };
        let mut planned = false;
        for partition in assigned {
            if let Some(&offset) = points.get(&partition) {
                tracing::info!(partition, from = offset, "re-reading for the history");
                rewind::lower(&mut self.holes, partition, offset);
                planned = true;
            }
        }
        if planned {
            self.metrics.history_rewinds.inc();
            self.history_ok.store(false, Ordering::SeqCst);
            self.metrics.history_complete.set(0);
        }
        self.rewind_pending = None;
    }

    /// Per partition: the broker's first offset since a time, or the group's committed offset.
    /// Partitions without one (no event since then, no commit, a broker that cannot look up by
    /// time, a failed request) are left out.
    async fn offsets(&self, partitions: &[i32], lookup: Lookup) -> HashMap<i32, i64> {
        let at = match lookup {
            Lookup::Since(millis) => Offset::Offset(millis),
            Lookup::Committed => Offset::Invalid,
        };
        let mut query = TopicPartitionList::new();
        for &partition in partitions {
            if let Err(err) = query.add_partition_offset(&self.topic, partition, at) {
                tracing::warn!(%err, partition, "cannot plan the offset lookup");
            }
        }
        if query.count() == 0 {
            return HashMap::new();
        }
        let consumer = self.consumer.clone();
        let timeout = Duration::from_secs(5);
        let found = tokio::task::spawn_blocking(move || match lookup {
            Lookup::Since(_) => consumer.offsets_for_times(query, timeout),
            Lookup::Committed => consumer.committed_offsets(query, timeout),
        })
        .await;
        match found {
            Ok(Ok(found)) => found
                .elements()
                .iter()
                .filter_map(|e| match (e.error(), e.offset()) {
                    (Ok(()), Offset::Offset(offset)) => Some((e.partition(), offset)),
                    _ => None,
                })
                .collect(),
            Ok(Err(err)) => {
                tracing::warn!(%err, ?lookup, "offset lookup failed");
                HashMap::new()
            }
            Err(err) => {
                tracing::warn!(%err, ?lookup, "offset lookup task failed");
                HashMap::new()
            }
        }
    }

    /// Once Redis answers, seeks each partition with a hole back to it.
    async fn repair(&mut self) {
        let mut list = TopicPartitionList::new();
        for (&partition, &offset) in &self.holes {
            if let Err(err) = list.add_partition_offset(&self.topic, partition, Offset::Offset(offset)) {
                tracing::warn!(%err, partition, "cannot plan the seek back");
                return;
            }
        }
        let consumer = self.consumer.clone();
        let sought = tokio::task::spawn_blocking(move || consumer.seek_partitions(list, Duration::from_secs(5))).await;
        match sought {
            Ok(Ok(result)) => {
                for elem in result.elements() {
                    if let Err(err) = elem.error() {
                        tracing::warn!(%err, partition = elem.partition(), "seek back failed; will retry");
                        return;
                    }
                }
            }
            Ok(Err(err)) => {
                tracing::warn!(%err, "seek back failed; will retry");
                return;
            }
            Err(err) => {
                tracing::warn!(%err, "seek task failed; will retry");
                return;
            }
        }
        for (partition, offset) in self.holes.drain() {
            let until = self.high.get(&partition).copied().unwrap_or(offset);
            let entry = self.replay_until.entry(partition).or_insert(until);
            *entry = (*entry).max(until);
            tracing::info!(
                partition,
                from = offset,
                until,
                "Redis is back; re-reading unstored events"
            );
        }
    }
}

/// Reachability of the broker (for /readyz) and consumer lag (for /metrics).
pub fn probe(consumer: &GatewayConsumer, topic: &str) -> Result<i64, KafkaError> {
    let timeout = Duration::from_secs(2);
    consumer.fetch_metadata(Some(topic), timeout)?;
    let mut lag = 0i64;
    let positions = consumer.position()?;
    for elem in positions.elements() {
        let (_, high) = consumer.fetch_watermarks(elem.topic(), elem.partition(), timeout)?;
        if let Offset::Offset(pos) = elem.offset() {
            lag += (high - pos).max(0);
        }
    }
    Ok(lag)
}
