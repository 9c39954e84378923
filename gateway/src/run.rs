//! `streamscan-gateway`: wiring of the Kafka consumer, Redis history, live hub, HTTP
//! API, probes and metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context as _, Result};
use kube::Client;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, AuthArgs};
use crate::history::History;
use crate::http::{self, AppState, Settings};
use crate::hub::Hub;
use crate::jobcache::JobCache;
use crate::kafka::{self, GatewayKafkaArgs, Ingest};
use crate::metrics::Metrics;
use streamscan_runtime::ops::{self, Readiness};
use streamscan_runtime::shutdown;
use streamscan_runtime::workers::WorkerPodArgs;

#[derive(clap::Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Address of the user-facing API (REST, WebSocket, SSE).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8081")]
    pub ops_addr: SocketAddr,
    #[command(flatten)]
    pub kafka: GatewayKafkaArgs,
    /// Redis URL (redis://[user:password@]host:port[/db], rediss:// for TLS).
    #[arg(long, env = "STREAMSCAN_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// How long an attempt's event history lives after its last event.
    #[arg(long, default_value_t = 600)]
    pub history_ttl_seconds: u64,
    /// How long an attempt's verdict stays readable.
    #[arg(long, default_value_t = 86_400)]
    pub verdict_ttl_seconds: u64,
    /// Timeout of one Redis operation (and of connecting).
    #[arg(long, default_value_t = 2000)]
    pub redis_timeout_ms: u64,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Serve and create jobs in this namespace only (default: any namespace).
    #[arg(long, env = "STREAMSCAN_JOB_NAMESPACE")]
    pub namespace: Option<String>,
    /// Namespace of created jobs when the request names none.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub default_namespace: String,
    #[command(flatten)]
    pub workers: WorkerPodArgs,
    /// Seconds between heartbeats (WebSocket ping, SSE comment); a WebSocket silent for three
    /// heartbeats is closed.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_seconds: u64,
    /// Events a client may fall behind before it is disconnected (it can resume).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub client_queue: u64,
    /// Largest JSON request body.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Largest request line plus headers.
    #[arg(long, default_value_t = 16 << 10)]
    pub max_header_bytes: usize,
    /// Largest WebSocket message or frame from a client.
    #[arg(long, default_value_t = 64 << 10)]
    pub max_ws_message_bytes: usize,
    /// Largest upload.
    #[arg(long, default_value_t = 16 << 30)]
    pub max_upload_bytes: u64,
    /// Unfinished jobs a user may have at once; more are refused with 429 (0: no limit).
    #[arg(long, default_value_t = 50)]
    pub max_active_jobs_per_user: usize,
    /// Event streams (WebSocket and SSE) a user may hold open at once; more are refused with
    /// 429 (0: no limit).
    #[arg(long, default_value_t = 32)]
    pub max_streams_per_user: usize,
    /// Seconds an upload waits for the controller to place its job.
    #[arg(long, default_value_t = 60)]
    pub placement_timeout_seconds: u64,
    /// Accept jobs whose url source names a `headersSecretRef` (the workers must allow it too).
    #[arg(long, env = "STREAMSCAN_ALLOW_URL_HEADERS_SECRETS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_url_headers_secrets: bool,
    /// This replica's identity (default: the pod name, else a random id); names its consumer group.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

pub async fn run(args: GatewayArgs) -> Result<()> {
    let shutdown = shutdown::on_signals();
    run_until(args, shutdown).await
}

/// Runs until `shutdown` is cancelled (tests cancel it themselves).
pub async fn run_until(args: GatewayArgs, shutdown: CancellationToken) -> Result<()> {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let (ready, ops_task) = ops::start(args.ops_addr, registry, shutdown.clone()).await?;

    let auth = Auth::from_args(&args.auth).context("configuring JWT authentication")?;
    let client = streamscan_runtime::kube::client().await?;
    let worker_token = streamscan_runtime::token::read_optional(args.workers.worker_token_file.as_deref())?;
    let identity = replica_identity(&args);
    let history = open_history(&args)?;
    let consumer = kafka_consumer(&args, &identity, &metrics)?;
    let hub = Hub::new(usize::try_from(args.client_queue).unwrap_or(usize::MAX));
    let history_ok = Arc::new(AtomicBool::new(true));

    // Kafka events → Redis history and the live hub; the probe keeps /readyz and the lag current.
    let jobs = JobCache::start(client.clone(), args.namespace.clone(), shutdown.clone());
    let ingest = Ingest::new(
        consumer.clone(),
        args.kafka.client.kafka_topic.clone(),
        history.clone(),
        hub.clone(),
        metrics.clone(),
        history_ok.clone(),
        jobs,
    );
    let ingest_task = tokio::spawn(ingest.run(shutdown.clone()));
    let probe_task = tokio::spawn(probe(
        consumer.clone(),
        args.kafka.client.kafka_topic.clone(),
        client.clone(),
        ready.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

    let state = Arc::new(AppState {
        client,
        hub,
        history,
        history_ok,
        auth,
        metrics,
        http: worker_http_client()?,
        worker_token,
        settings: settings(&args),
        shutdown: shutdown.clone(),
        streams: crate::limits::StreamSlots::new(args.max_streams_per_user),
    });
    serve_api(args.listen, state, &identity, shutdown.clone()).await?;
    // The API has stopped: stop the background tasks too and wait for them.
    shutdown.cancel();
    let _ = ingest_task.await;
    let _ = probe_task.await;
    let _ = ops_task.await;
    Ok(())
}

/// This replica's identity (it names the Kafka consumer group): `--identity`, else a random id.
fn replica_identity(args: &GatewayArgs) -> String {
    args.identity
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

fn open_history(args: &GatewayArgs) -> Result<History> {
    History::new(
        &args.redis_url,
        Duration::from_secs(args.history_ttl_seconds.max(1)),
        Duration::from_secs(args.verdict_ttl_seconds.max(1)),
        Duration::from_millis(args.redis_timeout_ms.max(1)),
    )
    .context("configuring Redis")
}

/// The consumer of the progress events, in this replica's consumer group unless one is configured.
fn kafka_consumer(args: &GatewayArgs, identity: &str, metrics: &Metrics) -> Result<Arc<kafka::GatewayConsumer>> {
    let consumer = args
        .kafka
        .consumer(identity, metrics.kafka_partitions_assigned.clone())
        .context("configuring Kafka")?;
    Ok(Arc::new(consumer))
}

/// The client of the workers' internal API.
fn worker_http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTP client")
}

fn settings(args: &GatewayArgs) -> Settings {
    Settings {
        namespace: args.namespace.clone(),
        default_namespace: args.default_namespace.clone(),
        worker_selector: args.workers.worker_selector.clone(),
        worker_namespace: args.workers.worker_namespace.clone(),
        worker_statefulset: args.workers.worker_statefulset.clone(),
        heartbeat: Duration::from_secs(args.heartbeat_seconds),
        max_body_bytes: args.max_body_bytes,
        max_header_bytes: args.max_header_bytes,
        max_ws_message_bytes: args.max_ws_message_bytes,
        max_upload_bytes: args.max_upload_bytes,
        placement_timeout: Duration::from_secs(args.placement_timeout_seconds),
        allow_url_headers_secrets: args.allow_url_headers_secrets,
        max_active_jobs_per_user: args.max_active_jobs_per_user,
    }
}

/// Serves the user-facing API on `listen` until `shutdown` is cancelled.
async fn serve_api(
    listen: SocketAddr,
    state: Arc<AppState>,
    identity: &str,
    shutdown: CancellationToken,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the API on {listen}"))?;
    let api_addr = listener.local_addr().context("reading the API address")?;
    tracing::info!(%api_addr, %identity, "gateway API listening");
    streamscan_runtime::serve::serve(listener, http::router(state), shutdown).await;
    Ok(())
}

/// Every few seconds: Kafka and the API server reachable → ready; consumer lag → metric.
async fn probe(
    consumer: Arc<kafka::GatewayConsumer>,
    topic: String,
    client: Client,
    ready: Readiness,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    loop {
        let c = consumer.clone();
        let t = topic.clone();
        let kafka = tokio::task::spawn_blocking(move || kafka::probe(&c, &t)).await;
        let kafka_ok = match kafka {
            Ok(Ok(lag)) => {
                metrics.kafka_lag.set(lag);
                true
            }
            Ok(Err(err)) => {
                tracing::warn!(%err, "Kafka is unreachable");
                false
            }
            Err(_) => false,
        };
        let api_ok = match client.apiserver_version().await {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(%err, "the Kubernetes API server is unreachable");
                false
            }
        };
        ready.set(kafka_ok && api_ok);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(if kafka_ok && api_ok { 5 } else { 1 })) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: crate::GatewayArgs,
    }

    #[test]
    fn accepts_the_contract_spelling_of_kafka_flags() {
        let cli = Cli::try_parse_from([
            "gateway",
            "--kafka-bootstrap=kafka:9093",
            "--kafka-security-protocol=sasl_ssl",
            "--kafka-ca-file=/ca.crt",
            "--kafka-username=gw",
            "--kafka-password-file=/pw",
            "--jwt-hs256-secret-file=/k",
        ])
        .map_err(|e| e.to_string());
        let args = cli.unwrap().args;
        assert_eq!(
            args.kafka.client.kafka_security_protocol,
            streamscan_runtime::kafka::SecurityProtocol::SaslSsl
        );
        assert_eq!(args.kafka.client.kafka_sasl_mechanism, "SCRAM-SHA-512");
        assert_eq!(args.history_ttl_seconds, 600);
        assert_eq!(args.kafka.kafka_fetch_wait_max_ms, 100);
        assert_eq!(args.kafka.kafka_session_timeout_ms, 45_000);
        assert!(Cli::try_parse_from(["gateway", "--kafka-bootstrap=k", "--kafka-security-protocol=sasl-ssl"]).is_err());
    }
}
