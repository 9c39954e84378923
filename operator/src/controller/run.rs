//! `streamscan-operator controller`: wiring of caches, leader election, the kube-runtime
//! Controller, metrics and the ops endpoints.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::SignedDuration;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use prometheus_client::registry::Registry;
use streamscan_api::names::{LABEL_SERVER_ID, reason};
use streamscan_api::{AnalysisJob, Phase};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::decide::{EventType, Settings};
use super::ledger::Ledger;
use super::metrics::{Metrics, PhaseLabels, ServerLabels};
use super::reconcile::{CleanupSettings, Context, error_policy, forget_vanished, publish, reconcile};
use super::servers::{PodRule, ServerSet};
use crate::shutdown;
use streamscan_runtime::ops;
use streamscan_runtime::workers::WorkerPodArgs;

#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Reconcile AnalysisJobs in this namespace only (default: all namespaces).
    #[arg(long, env = "STREAMSCAN_JOB_NAMESPACE")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub workers: WorkerPodArgs,
    /// Concurrent jobs per server, unless its pod's `streamscan.io/capacity` annotation says otherwise.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub capacity: u16,
    /// Seconds a pinned server may stay NotReady before its jobs move elsewhere.
    #[arg(long, default_value_t = 30)]
    pub not_ready_grace_seconds: u32,
    /// Seconds a cancelled job waits for an unready server to confirm its rollback.
    #[arg(long, default_value_t = 30)]
    pub cancel_grace_seconds: u32,
    /// First retry delay after a retriable failure; doubles per failure.
    #[arg(long, default_value_t = 10)]
    pub backoff_base_seconds: u32,
    /// Longest retry delay.
    #[arg(long, default_value_t = 360)]
    pub backoff_cap_seconds: u32,
    /// Seconds a job without `spec.activeDeadlineSeconds` may run (from its start) before it
    /// fails with DeadlineExceeded, so that nothing holds a slot forever; 0: no default.
    #[arg(long, default_value_t = 86_400)]
    pub default_active_deadline_seconds: u32,
    /// Attempts to delete a deleted job's stored results before giving up with an Event.
    #[arg(long, default_value_t = 5)]
    pub cleanup_attempts: i32,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub ops_addr: SocketAddr,
    /// Elect a leader on a Lease so that only one replica acts.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    #[arg(long, default_value = "streamscan-controller")]
    pub lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Seconds a leader's lease is valid without renewal; a dead leader is replaced within it.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// This replica's identity in the Lease (default: the pod name, else a random id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

impl ControllerArgs {
    fn settings(&self) -> Settings {
        Settings {
            pods: PodRule {
                default_capacity: usize::from(self.capacity),
                statefulset: self.workers.worker_statefulset.clone(),
            },
            not_ready_grace: SignedDuration::from_secs(i64::from(self.not_ready_grace_seconds)),
            cancel_grace: SignedDuration::from_secs(i64::from(self.cancel_grace_seconds)),
            backoff_base: SignedDuration::from_secs(i64::from(self.backoff_base_seconds)),
            backoff_cap: SignedDuration::from_secs(i64::from(self.backoff_cap_seconds)),
            default_active_deadline: (self.default_active_deadline_seconds > 0)
                .then(|| SignedDuration::from_secs(i64::from(self.default_active_deadline_seconds))),
            ..Settings::default()
        }
    }
}

pub async fn run(args: ControllerArgs) -> Result<()> {
    let shutdown = shutdown::on_signals();
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let (ready, ops_task) = ops::start(args.ops_addr, registry, shutdown.clone()).await?;

    let client = streamscan_runtime::kube::client().await?;
    let worker_token = streamscan_runtime::token::read_optional(args.workers.worker_token_file.as_deref())?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("controller-{}", uuid::Uuid::new_v4().simple()));
    ready.set(true);

    let result = if args.leader_election {
        lead(&args, client, identity, worker_token, metrics, shutdown.clone()).await
    } else {
        metrics.is_leader.set(1);
        run_controller(&args, client, identity, worker_token, metrics, shutdown.clone()).await
    };
    shutdown.cancel();
    let _ = ops_task.await;
    result
}

/// Stands by until this replica holds the lease, then runs the controller until shutdown or
/// until the lease is lost (then exits with an error so Kubernetes restarts it as a standby).
async fn lead(
    args: &ControllerArgs,
    client: Client,
    identity: String,
    worker_token: Option<String>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<()> {
    let grace = (args.lease_duration_seconds / 3).max(1);
    let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_duration_seconds)
        .with_grace(grace)
        .build()
        .await
        .context("setting up leader election")?;
    let (mut leader, lease_task) = manager.watch().await;
    tracing::info!(%identity, lease = %args.lease_name, "standing by for the leader lease");
    loop {
        if *leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leader.changed() => changed.context("leader election stopped")?,
            () = shutdown.cancelled() => return Ok(()),
        }
    }
    tracing::info!(%identity, "acquired the leader lease");
    metrics.is_leader.set(1);
    let lost = CancellationToken::new();
    let stop = shutdown.child_token();
    {
        let (lost, stop) = (lost.clone(), stop.clone());
        tokio::spawn(async move {
            while leader.changed().await.is_ok() {
                if !*leader.borrow() {
                    break;
                }
            }
            lost.cancel();
            stop.cancel();
            // Dropping the receiver releases the lease.
        });
    }
    let result = run_controller(args, client, identity, worker_token, metrics.clone(), stop).await;
    metrics.is_leader.set(0);
    if lost.is_cancelled() && !shutdown.is_cancelled() {
        anyhow::bail!("lost the leader lease; exiting so that a restart stands by again");
    }
    lease_task.abort();
    result
}

async fn run_controller(
    args: &ControllerArgs,
    client: Client,
    identity: String,
    worker_token: Option<String>,
    metrics: Metrics,
    stop: CancellationToken,
) -> Result<()> {
    let jobs: Api<AnalysisJob> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let pods: Api<Pod> = match &args.workers.worker_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (pod_store, pod_writer) = reflector::store();
    let pod_events = reflector::reflector(
        pod_writer,
        watcher(pods, watcher::Config::default().labels(&args.workers.worker_selector)).default_backoff(),
    )
    .touched_objects();

    let controller = Controller::new(jobs, watcher::Config::default());
    let job_store = controller.store();
    let (wake_tx, mut wake_rx) = mpsc::channel(4096);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "streamscan-controller".into(),
            instance: Some(identity),
        },
    );
    let ctx = Arc::new(Context {
        client,
        jobs: job_store.clone(),
        pods: pod_store.clone(),
        ledger: Ledger::default(),
        seeded: tokio::sync::OnceCell::new(),
        settings: args.settings(),
        cleanup: CleanupSettings {
            max_attempts: args.cleanup_attempts.max(1),
            worker_token,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .context("building the HTTP client")?,
        },
        recorder,
        metrics,
        wake: wake_tx,
    });

    let gauges = tokio::spawn(update_gauges(ctx.clone(), stop.clone()));
    let mapper_ctx = ctx.clone();
    let wakes = futures::stream::poll_fn(move |cx| wake_rx.poll_recv(cx));
    tracing::info!("controller running");
    controller
        .watches_stream(pod_events, move |pod| jobs_for_pod(&mapper_ctx, &pod))
        .reconcile_on(wakes)
        .graceful_shutdown_on(stop.clone().cancelled_owned().map(|_| ()))
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(%err, "reconcile request failed");
            }
        })
        .await;
    stop.cancel();
    let _ = gauges.await;
    tracing::info!("controller stopped");
    Ok(())
}

/// A pod changed: look at the jobs pinned to its serverId, and, when it can take work, at the
/// oldest jobs waiting for a server.
fn jobs_for_pod(ctx: &Context, pod: &Pod) -> Vec<ObjectRef<AnalysisJob>> {
    let Some(server_id) = pod.labels().get(LABEL_SERVER_ID).cloned() else {
        return Vec::new();
    };
    let mut refs: Vec<ObjectRef<AnalysisJob>> = ctx
        .jobs
        .state()
        .iter()
        .filter(|job| job.labels().get(LABEL_SERVER_ID) == Some(&server_id))
        .filter(|job| !job.phase().is_finished() || job.metadata.deletion_timestamp.is_some())
        .map(|job| ObjectRef::from_obj(job.as_ref()))
        .collect();
    let capacity = ctx.settings.pods.default_capacity.max(1);
    let waiting = ctx.ledger.lock().oldest_waiting(capacity);
    refs.extend(
        waiting
            .into_iter()
            .map(|key| ObjectRef::new(&key.name).within(&key.namespace)),
    );
    refs
}

/// Every few seconds: slots of vanished jobs released, then jobs by phase, free capacity per
/// server, waiting jobs, and duplicate serverIds (a Warning Event on each pod involved, once per
/// occurrence).
async fn update_gauges(ctx: Arc<Context>, stop: CancellationToken) {
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        forget_vanished(&ctx);
        let mut counts = std::collections::BTreeMap::<&str, i64>::new();
        for job in ctx.jobs.state() {
            *counts.entry(job.phase().as_str()).or_insert(0) += 1;
        }
        for phase in [
            Phase::Pending,
            Phase::Scheduled,
            Phase::Running,
            Phase::Succeeded,
            Phase::Failed,
            Phase::Cancelled,
        ] {
            let n = counts.get(phase.as_str()).copied().unwrap_or(0);
            ctx.metrics
                .jobs
                .get_or_create(&PhaseLabels {
                    phase: phase.as_str().into(),
                })
                .set(n);
        }
        let pods = ctx.pods.state();
        let servers = ServerSet::from_pods(pods.iter().map(Arc::as_ref), &ctx.settings.pods);
        let (load, waiting) = {
            let ledger = ctx.ledger.lock();
            (ledger.load(), ledger.waiting_len())
        };
        ctx.metrics.waiting_jobs.set(i64::try_from(waiting).unwrap_or(i64::MAX));
        for server in servers.iter().filter(|s| s.ready) {
            let free = server
                .capacity
                .saturating_sub(load.get(&server.id).copied().unwrap_or(0));
            ctx.metrics
                .free_capacity
                .get_or_create(&ServerLabels {
                    server_id: server.id.clone(),
                })
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        let duplicates = servers.duplicates();
        ctx.metrics
            .duplicate_server_ids
            .set(i64::try_from(duplicates.len()).unwrap_or(i64::MAX));
        reported = report_pod_problems(&ctx, &pods, &servers, duplicates, &reported).await;
    }
}

/// A Warning Event on each pod of a duplicated serverId, and on each stray pod (one that carries
/// a serverId but is not a worker StatefulSet member), once per occurrence. Returns what is
/// reported now, for the next round.
async fn report_pod_problems(
    ctx: &Context,
    pods: &[Arc<Pod>],
    servers: &ServerSet,
    duplicates: Vec<(&str, Vec<&str>)>,
    reported: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut problems: Vec<(String, Vec<String>, &str, String)> = Vec::new();
    for (server_id, pod_names) in duplicates {
        let message = format!(
            "serverId {server_id} is carried by {} Ready pods ({}); none of them gets new jobs until only one does",
            pod_names.len(),
            pod_names.join(", ")
        );
        tracing::warn!(server_id, pods = ?pod_names, "duplicate serverId");
        let key = format!("dup:{server_id}:{}", pod_names.join(","));
        let names = pod_names.into_iter().map(str::to_owned).collect();
        problems.push((key, names, reason::DUPLICATE_SERVER_ID, message));
    }
    for stray in servers.strays() {
        let message = format!(
            "pod {} carries serverId {} but {}: it gets no jobs and no traffic",
            stray.pod_name, stray.server_id, stray.why
        );
        let key = format!("stray:{}:{}", stray.pod_name, stray.why);
        problems.push((key, vec![stray.pod_name.clone()], reason::STRAY_WORKER_POD, message));
    }
    let mut now_reported = BTreeSet::new();
    for (key, pod_names, event_reason, message) in problems {
        if !reported.contains(&key) {
            if event_reason == reason::STRAY_WORKER_POD {
                tracing::warn!(pods = ?pod_names, "{message}");
            }
            for pod in pods.iter().filter(|p| pod_names.contains(&p.name_any())) {
                publish(ctx, &pod.object_ref(&()), EventType::Warning, event_reason, &message).await;
            }
        }
        now_reported.insert(key);
    }
    now_reported
}
