//! Command-line flags of `serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use rdkafka::ClientConfig;

use super::telemetry::LogFormat;

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

/// How to reach Kafka; the same flags as the gateway, named after Strimzi's Secrets.
#[derive(Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Bootstrap servers, `host:port[,host:port...]` (Strimzi: `<cluster>-kafka-bootstrap:9092`).
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    pub kafka_bootstrap: String,
    #[arg(long, default_value = "streamscan.progress")]
    pub kafka_topic: String,
    #[arg(long, value_enum, default_value = "plaintext")]
    pub kafka_security_protocol: SecurityProtocol,
    /// Cluster CA certificate (Strimzi `<cluster>-cluster-ca-cert` Secret, key `ca.crt`).
    #[arg(long)]
    pub kafka_ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS (Strimzi KafkaUser Secret, `user.crt`).
    #[arg(long)]
    pub kafka_cert_file: Option<PathBuf>,
    /// Client key for mutual TLS (Strimzi KafkaUser Secret, `user.key`).
    #[arg(long)]
    pub kafka_key_file: Option<PathBuf>,
    #[arg(long, default_value = "SCRAM-SHA-512")]
    pub kafka_sasl_mechanism: String,
    #[arg(long)]
    pub kafka_username: Option<String>,
    /// File holding the SASL password (Strimzi KafkaUser Secret, `password`).
    #[arg(long)]
    pub kafka_password_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    #[value(name = "sasl_plaintext")]
    SaslPlaintext,
    #[value(name = "sasl_ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
}

impl KafkaArgs {
    /// The librdkafka settings these flags mean (without the producer-specific ones).
    pub fn client_config(&self) -> std::io::Result<ClientConfig> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.kafka_bootstrap)
            .set("security.protocol", self.kafka_security_protocol.as_str())
            // librdkafka's reconnect backoff doubles up to 10 s by default, so after a Kafka
            // outage the producer came back up to that long after the brokers (3.6 s measured in
            // the kafka_outage scenario): progress would stall that long for nothing. 1 s bounds
            // the stall and costs one connection attempt per second per broker while Kafka is down.
            .set("reconnect.backoff.max.ms", "1000");
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        if let Some(ca) = &self.kafka_ca_file {
            config.set("ssl.ca.location", path(ca));
        }
        if let Some(cert) = &self.kafka_cert_file {
            config.set("ssl.certificate.location", path(cert));
        }
        if let Some(key) = &self.kafka_key_file {
            config.set("ssl.key.location", path(key));
        }
        if matches!(
            self.kafka_security_protocol,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        ) {
            config.set("sasl.mechanism", &self.kafka_sasl_mechanism);
            if let Some(user) = &self.kafka_username {
                config.set("sasl.username", user);
            }
            if let Some(file) = &self.kafka_password_file {
                let password = std::fs::read_to_string(file)?;
                config.set("sasl.password", password.trim_end_matches(['\r', '\n']));
            }
        }
        Ok(config)
    }
}
