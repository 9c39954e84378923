//! How Streamscan's clients reach Kafka: the flags the gateway and the worker share, named after
//! what a Strimzi user has at hand (bootstrap address, cluster CA, KafkaUser TLS or SCRAM
//! credentials from mounted Secrets), and the librdkafka settings they mean.

use std::path::PathBuf;

use rdkafka::config::ClientConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    // Spelled as librdkafka and docs/internal-contracts.md spell them (not clap's kebab-case).
    #[value(name = "sasl_plaintext")]
    SaslPlaintext,
    #[value(name = "sasl_ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn is_sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }
}

/// Kafka connection flags, the same on the gateway and the worker.
#[derive(clap::Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Bootstrap servers, `host:port[,host:port...]` (Strimzi: `<cluster>-kafka-bootstrap:9093`).
    #[arg(long, env = "STREAMSCAN_KAFKA_BOOTSTRAP")]
    pub kafka_bootstrap: String,
    /// The progress topic.
    #[arg(long, env = "STREAMSCAN_KAFKA_TOPIC", default_value = "streamscan.progress")]
    pub kafka_topic: String,
    #[arg(long, value_enum, default_value_t = SecurityProtocol::Plaintext)]
    pub kafka_security_protocol: SecurityProtocol,
    /// Cluster CA certificate (Strimzi `<cluster>-cluster-ca-cert` Secret, key `ca.crt`).
    #[arg(long)]
    pub kafka_ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS (Strimzi KafkaUser Secret, `user.crt`).
    #[arg(long, requires = "kafka_key_file")]
    pub kafka_cert_file: Option<PathBuf>,
    /// Client key for mutual TLS (Strimzi KafkaUser Secret, `user.key`).
    #[arg(long, requires = "kafka_cert_file")]
    pub kafka_key_file: Option<PathBuf>,
    #[arg(long, default_value = "SCRAM-SHA-512")]
    pub kafka_sasl_mechanism: String,
    #[arg(long, env = "STREAMSCAN_KAFKA_USERNAME")]
    pub kafka_username: Option<String>,
    /// File holding the SASL password (Strimzi KafkaUser Secret, `password`).
    #[arg(long)]
    pub kafka_password_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("reading the Kafka password from {path}: {source}")]
pub struct KafkaConfigError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl KafkaArgs {
    /// The librdkafka settings these flags mean, common to every Streamscan client (producer- and
    /// consumer-specific ones are added by their users).
    pub fn client_config(&self) -> Result<ClientConfig, KafkaConfigError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.kafka_bootstrap)
            .set("security.protocol", self.kafka_security_protocol.as_str())
            // librdkafka's reconnect backoff doubles up to 10 s by default, so after a Kafka
            // outage clients came back up to that long after the brokers (the worker's producer
            // 3.6 s, the gateway's consumer 5.5 s in the kafka_outage scenario), holding progress
            // back for nothing. 1 s bounds that, at one connection attempt per second per broker
            // while Kafka is down.
            .set("reconnect.backoff.max.ms", "1000");
        if let Some(ca) = &self.kafka_ca_file {
            config.set("ssl.ca.location", ca.to_string_lossy());
        }
        if let (Some(cert), Some(key)) = (&self.kafka_cert_file, &self.kafka_key_file) {
            config
                .set("ssl.certificate.location", cert.to_string_lossy())
                .set("ssl.key.location", key.to_string_lossy());
        }
        if self.kafka_security_protocol.is_sasl() {
            config.set("sasl.mechanism", &self.kafka_sasl_mechanism);
            if let Some(user) = &self.kafka_username {
                config.set("sasl.username", user);
            }
            if let Some(path) = &self.kafka_password_file {
                let password = std::fs::read_to_string(path).map_err(|source| KafkaConfigError {
                    path: path.clone(),
                    source,
                })?;
                // Only the line ending is not part of the password.
                config.set("sasl.password", password.trim_end_matches(['\r', '\n']));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    #[test]
    fn strimzi_scram_over_tls_becomes_librdkafka_settings() {
        let dir = std::env::temp_dir().join(format!("streamscan-kafka-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("password");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let cli = Cli::try_parse_from([
            "x",
            "--kafka-bootstrap=kafka:9093",
            "--kafka-security-protocol=sasl_ssl",
            "--kafka-ca-file=/ca.crt",
            "--kafka-username=gw",
            &format!("--kafka-password-file={}", pw.display()),
        ])
        .unwrap();
        let config = cli.kafka.client_config().unwrap();
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(
            config.get("sasl.password"),
            Some("s3cret"),
            "the line ending is not the password's"
        );
        assert_eq!(config.get("ssl.ca.location"), Some("/ca.crt"));
        assert_eq!(config.get("ssl.certificate.location"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_kafka_flags_are_refused() {
        // librdkafka's spelling, not clap's kebab-case.
        assert!(Cli::try_parse_from(["x", "--kafka-bootstrap=k", "--kafka-security-protocol=sasl-ssl"]).is_err());
        // A client certificate needs its key.
        assert!(Cli::try_parse_from(["x", "--kafka-bootstrap=k", "--kafka-cert-file=/user.crt"]).is_err());
        let missing = Cli::try_parse_from([
            "x",
            "--kafka-bootstrap=k",
            "--kafka-security-protocol=sasl_plaintext",
            "--kafka-password-file=/nonexistent/password",
        ])
        .unwrap();
        let err = missing.kafka.client_config().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/password"), "{err}");
    }
}
