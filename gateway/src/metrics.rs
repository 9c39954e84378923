//! The gateway's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    /// `websocket` or `sse`.
    pub transport: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// `ok` or `mismatch`.
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// Why the event does not belong to its job (`no_such_job`, `other_user`, ...).
    pub reason: String,
}

#[derive(Clone, Default)]
pub struct Metrics {
    pub clients: Family<TransportLabels, Gauge>,
    pub events_consumed: Counter,
    pub events_stored: Counter,
    pub events_duplicate: Counter,
    pub events_malformed: Counter,
    pub events_refused: Family<RefusedLabels, Counter>,
    pub events_pushed: Counter,
    pub slow_client_disconnects: Counter,
    pub redis_errors: Counter,
    pub verdicts: Family<VerdictLabels, Counter>,
    pub verdict_mismatches: Counter,
    pub kafka_lag: Gauge,
    pub kafka_partitions_assigned: Gauge,
    pub history_complete: Gauge,
    pub history_rewinds: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("streamscan_gateway");
        r.register(
            "clients",
            "Connected live-progress clients by transport",
            m.clients.clone(),
        );
        r.register(
            "events_consumed",
            "Progress events read from Kafka",
            m.events_consumed.clone(),
        );
        r.register(
            "events_stored",
            "Progress events newly written to Redis by this replica",
            m.events_stored.clone(),
        );
        r.register(
            "events_duplicate",
            "Progress events dropped because their (eventId, seq) was already held",
            m.events_duplicate.clone(),
        );
        r.register(
            "events_malformed",
            "Kafka records refused as progress events (bad JSON, version or invariants)",
            m.events_malformed.clone(),
        );
        r.register(
            "events_refused",
            "Well-formed progress events dropped because they do not match their job (by reason)",
            m.events_refused.clone(),
        );
        r.register(
            "events_pushed",
            "Progress events pushed to clients",
            m.events_pushed.clone(),
        );
        r.register(
            "slow_client_disconnects",
            "Clients disconnected because their queue overflowed",
            m.slow_client_disconnects.clone(),
        );
        r.register("redis_errors", "Failed Redis operations", m.redis_errors.clone());
        r.register("verdicts", "Final-event checks by outcome", m.verdicts.clone());
        r.register(
            "verdict_mismatches",
            "Attempts whose stream did not match their history on the final event",
            m.verdict_mismatches.clone(),
        );
        r.register(
            "kafka_lag",
            "Records behind the high watermark, summed over assigned partitions",
            m.kafka_lag.clone(),
        );
        r.register(
            "kafka_partitions_assigned",
            "Partitions of the progress topic this replica's consumer holds (0: nothing streams live)",
            m.kafka_partitions_assigned.clone(),
        );
        r.register(
            "history_complete",
            "1 when Redis holds every consumed event (0 during a Redis outage and its catch-up)",
            m.history_complete.clone(),
        );
        r.register(
            "history_rewinds",
            "Times Redis was found without its data (restarted empty, flushed) and Kafka re-read",
            m.history_rewinds.clone(),
        );
        m
    }

    pub fn clients(&self, transport: &str) -> Gauge {
        self.clients
            .get_or_create(&TransportLabels {
                transport: transport.to_owned(),
            })
            .clone()
    }
}
