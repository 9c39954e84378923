//! Command-line flags of `serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use streamscan_runtime::kafka::KafkaArgs;
use streamscan_runtime::telemetry::LogFormat;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// This server's identity: the value of its pod's `streamscan.io/server-id` label.
    #[arg(long, env = "STREAMSCAN_SERVER_ID")]
    pub server_id: String,
    /// This worker's pod. When set, the worker puts its `streamscan.io/server-id` label on the pod
    /// at startup (a StatefulSet template cannot label each pod with its ordinal), before it
    /// reports ready, so the controller can place jobs on it.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Namespace whose AnalysisJobs this server runs.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Address of the HTTP service (results, uploads, probes, metrics).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// File holding the internal bearer token (a mounted Secret).
    #[arg(long, env = "STREAMSCAN_INTERNAL_TOKEN_FILE")]
    pub internal_token_file: PathBuf,
    /// The worker's own volume: results, checkpoints, uploads.
    #[arg(long, default_value = "/var/lib/streamscan")]
    pub data_dir: PathBuf,
    /// Root of the read-only source volume; `volume` sources are paths under it.
    #[arg(long, default_value = "/mnt/sources")]
    pub source_root: PathBuf,
    /// Jobs analysed at once; the others wait without holding memory.
    #[arg(long, default_value_t = 4)]
    pub capacity: usize,
    /// Progress events held in memory per job while Kafka is slow or down; when full the job pauses.
    #[arg(long, default_value_t = 10_000)]
    pub event_buffer: usize,
    /// Largest accepted upload, in bytes.
    #[arg(long, default_value_t = 8 << 30)]
    pub max_upload_bytes: u64,
    /// How long a job whose source is an upload waits for the file.
    #[arg(long, default_value_t = 900)]
    pub upload_wait_seconds: u64,
    /// Let url sources take request headers from a Secret (`headersSecretRef`), in the job's
    /// namespace, carrying the label `streamscan.io/url-headers=true`. Off: such jobs fail with
    /// `HeadersSecretNotAllowed`.
    #[arg(long, env = "STREAMSCAN_URL_HEADERS_SECRETS", default_value_t = false, action = clap::ArgAction::Set)]
    pub url_headers_secrets: bool,
    /// A url download that, over this many seconds spent waiting for the server, receives fewer
    /// than --source-stall-min-bytes is stalled: continued with Range like a dropped connection,
    /// and failed (retriable) when that keeps happening. Time the analysis spends is not counted.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub source_stall_seconds: u64,
    #[arg(long, default_value_t = 64 << 10)]
    pub source_stall_min_bytes: u64,
    /// Address ranges url sources may reach although the egress policy denies their class
    /// (loopback, link-local, private, CGNAT, unique-local...), e.g. an internal mirror's subnet.
    /// Repeatable or comma-separated.
    #[arg(long, env = "STREAMSCAN_EGRESS_ALLOW_CIDRS", value_delimiter = ',')]
    pub egress_allow_cidr: Vec<ipnet::IpNet>,
    /// Host names url sources may reach whatever they resolve to (e.g. an in-cluster file
    /// server). Repeatable or comma-separated.
    #[arg(long, env = "STREAMSCAN_EGRESS_ALLOW_HOSTS", value_delimiter = ',')]
    pub egress_allow_host: Vec<String>,
    /// Time allowed after SIGTERM to stop jobs and flush events.
    #[arg(long, default_value_t = 25)]
    pub shutdown_grace_seconds: u64,
    /// OSV vulnerability database for the components analyzer: a file or directory (repeatable).
    #[arg(long = "vuln-db", value_name = "PATH")]
    pub vuln_db: Vec<PathBuf>,
    /// Endpoint of the external model; enables the `model` analyzer.
    #[arg(long, value_name = "URL")]
    pub model_url: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Bytes read per engine chunk.
    #[arg(long, default_value_t = 1 << 20, hide = true)]
    pub chunk_size: usize,
    /// Write a checkpoint every this many bytes.
    #[arg(long, default_value_t = 8 << 20, hide = true)]
    pub checkpoint_every_bytes: u64,
    /// Tests: read sources no faster than this, so that "mid-run" lasts.
    #[arg(long, hide = true)]
    pub throttle_bytes_per_sec: Option<u64>,
    /// Least time between two progress writes on the CR (and PROGRESS events), in milliseconds.
    #[arg(long, default_value_t = 2000, hide = true)]
    pub progress_interval_ms: u64,
}
