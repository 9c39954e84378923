//! Wiring of `serve`: configuration, the HTTP service, the job watch, and SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kube::Api;
use prometheus_client::registry::Registry;
use rdkafka::ClientConfig;
use streamscan_api::AnalysisJob;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::args::ServeArgs;
use super::egress::Egress;
use super::executor::{Metrics, Shared};
use super::http::{self, HttpState};
use super::sources::{self, UploadNotify};
use super::store::Store;
use super::watch::Runner;
use super::{shutdown, telemetry};
use streamscan_engine::analyzers::{AnalyzerConfig, model::ModelConfig};
use streamscan_runtime::ops::Readiness;

/// Puts `streamscan.io/server-id=<server id>` on this worker's own pod.
async fn label_own_pod(client: &kube::Client, namespace: &str, pod: &str, server_id: &str) -> Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Patch, PatchParams};
    use streamscan_api::names::{LABEL_SERVER_ID, MANAGER_WORKER};
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({"metadata": {"labels": {LABEL_SERVER_ID: server_id}}});
    let params = PatchParams {
        field_manager: Some(MANAGER_WORKER.to_owned()),
        ..Default::default()
    };
    pods.patch(pod, &params, &Patch::Merge(&patch))
        .await
        .with_context(|| format!("labelling pod {namespace}/{pod} with {LABEL_SERVER_ID}={server_id}"))?;
    tracing::info!(pod, server_id, "labelled own pod");
    Ok(())
}

pub fn run(args: ServeArgs) -> Result<()> {
    // Held until the runtime is gone: dropping it flushes the trace export.
    let _telemetry = telemetry::init(args.log_format, "streamscan-worker");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> Result<()> {
    check_args(&args)?;
    let token = streamscan_runtime::token::read(&args.internal_token_file)?;
    let store = Store::open(&args.data_dir)
        .with_context(|| format!("opening the data directory {}", args.data_dir.display()))?;
    let kafka = args.kafka.client_config().context("reading the Kafka credentials")?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    if let Some(pod) = &args.pod_name {
        label_own_pod(&client, &args.namespace, pod, &args.server_id).await?;
    }
    let jobs = Api::namespaced(client, &args.namespace);

    let shutdown = shutdown::on_signals();
    let ready = Readiness::default();
    let uploads = Arc::new(tokio::sync::Notify::new());
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);

    let http = HttpService::start(
        args.http_addr,
        HttpState {
            store: store.clone(),
            token: Arc::new(token),
            registry: Arc::new(registry),
            ready: ready.clone(),
            uploads: uploads.clone(),
            max_upload: args.max_upload_bytes,
        },
    )
    .await?;
    tracing::info!(server_id = %args.server_id, namespace = %args.namespace, http = %http.addr, capacity = args.capacity, "worker serving");

    let shared = Arc::new(shared(&args, store, jobs.clone(), kafka, uploads, metrics)?);
    // Returns after SIGTERM once every attempt stopped and flushed (each bounded by the grace
    // period); downloads keep being served until then.
    Runner::new(shared).run(jobs, ready, shutdown).await;
    http.stop().await;
    tracing::info!("worker stopped");
    Ok(())
}

/// The checks clap cannot make on the flags.
fn check_args(args: &ServeArgs) -> Result<()> {
    if args.server_id.is_empty() {
        bail!("--server-id (STREAMSCAN_SERVER_ID) must not be empty");
    }
    if args.capacity == 0 {
        bail!("--capacity must be at least 1");
    }
    if args.chunk_size == 0 {
        bail!("--chunk-size must be positive");
    }
    Ok(())
}

/// The HTTP service, running in its own task.
struct HttpService {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl HttpService {
    async fn start(addr: SocketAddr, state: HttpState) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let bound = listener.local_addr().context("reading the bound address")?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(streamscan_runtime::serve::serve(
            listener,
            http::router(state),
            stop.clone(),
        ));
        Ok(HttpService {
            addr: bound,
            stop,
            task,
        })
    }

    /// Stops serving, giving open requests a few seconds to end.
    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// What every attempt shares, from the flags and the clients `serve` opened.
fn shared(
    args: &ServeArgs,
    store: Store,
    jobs: Api<AnalysisJob>,
    kafka: ClientConfig,
    uploads: UploadNotify,
    metrics: Metrics,
) -> Result<Shared> {
    let egress = Arc::new(Egress::new(
        args.egress_allow_cidr.clone(),
        args.egress_allow_host.clone(),
    ));
    Ok(Shared {
        server_id: args.server_id.clone(),
        store,
        jobs,
        kafka,
        topic: args.kafka.kafka_topic.clone(),
        http: sources::http_client(egress.clone()).context("building the HTTP client")?,
        permits: Arc::new(Semaphore::new(args.capacity)),
        uploads,
        metrics,
        analyzers: AnalyzerConfig {
            vuln_db: args.vuln_db.clone(),
            model: args.model_url.clone().map(|endpoint| ModelConfig { endpoint }),
        },
        source_root: args.source_root.clone(),
        event_buffer: args.event_buffer,
        chunk_size: args.chunk_size,
        checkpoint_every: args.checkpoint_every_bytes.max(1),
        throttle: args.throttle_bytes_per_sec,
        progress_interval: Duration::from_millis(args.progress_interval_ms),
        upload_wait: Duration::from_secs(args.upload_wait_seconds),
        url_headers_secrets: args.url_headers_secrets,
        egress,
        stall_window: Duration::from_secs(args.source_stall_seconds),
        stall_min_bytes: args.source_stall_min_bytes,
        shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
    })
}
