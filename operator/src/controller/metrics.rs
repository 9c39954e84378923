//! The controller's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok`, or the error category.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub server_id: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Family<ResultLabels, Counter>,
    pub jobs: Family<PhaseLabels, Gauge>,
    pub placement_seconds: Histogram,
    pub reconcile_seconds: Histogram,
    pub free_capacity: Family<ServerLabels, Gauge>,
    pub duplicate_server_ids: Gauge,
    pub waiting_jobs: Gauge,
    pub is_leader: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            reconciles: Family::default(),
            jobs: Family::default(),
            placement_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            // 1 ms to about 33 s.
            reconcile_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            free_capacity: Family::default(),
            duplicate_server_ids: Gauge::default(),
            waiting_jobs: Gauge::default(),
            is_leader: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("streamscan_controller");
        r.register(
            "reconciles",
            "Reconciles by result (ok or error category)",
            m.reconciles.clone(),
        );
        r.register("jobs", "AnalysisJobs by phase", m.jobs.clone());
        r.register(
            "placement_seconds",
            "Time from a job's creation to its first placement",
            m.placement_seconds.clone(),
        );
        r.register(
            "reconcile_seconds",
            "Time one reconcile takes, API writes included",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "server_free_capacity",
            "Free job slots per server",
            m.free_capacity.clone(),
        );
        r.register(
            "duplicate_server_ids",
            "serverIds carried by more than one Ready pod (configuration error)",
            m.duplicate_server_ids.clone(),
        );
        r.register("waiting_jobs", "Jobs waiting for a free server", m.waiting_jobs.clone());
        r.register(
            "is_leader",
            "1 while this replica holds the leader lease",
            m.is_leader.clone(),
        );
        m
    }
}
