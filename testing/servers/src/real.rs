//! The real servers, on loopback, for the tests that must meet what a user meets: a Kubernetes
//! control plane (etcd, kube-apiserver with RBAC, kube-controller-manager with the garbage
//! collector and namespace controllers) and an Apache Kafka broker in KRaft mode.
//!
//! The binaries are built (Go) or fetched (Maven Central) by `scripts/real/`, pinned and cached
//! outside the repo by version; the first use on a new machine builds them (about 6 minutes).
//! Each handle owns a temporary directory and stops its servers when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

#[derive(Debug, thiserror::Error)]
pub enum RealError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{script} failed ({status}): {stderr}")]
    Script {
        script: String,
        status: String,
        stderr: String,
    },
    #[error("no free block of {0} loopback ports")]
    NoPorts(u16),
    #[error("Kafka: {0}")]
    Kafka(String),
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RealError {
    let what = what.into();
    move |source| RealError::Io { what, source }
}

/// `scripts/real/` of this checkout.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/real")
}

/// Runs a script of `scripts/real/` and returns its stdout's last line.
fn script(name: &str, args: &[&str]) -> Result<String, RealError> {
    let path = scripts_dir().join(name);
    let out = Command::new(&path)
        .args(args)
        .output()
        .map_err(io(format!("running {}", path.display())))?;
    if !out.status.success() {
        return Err(RealError::Script {
            script: format!("{name} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned())
}

/// The first port of `n` consecutive free loopback ports (the servers take port, port+1, ...).
pub fn free_ports(n: u16) -> Result<u16, RealError> {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("finding a free port"))?
            .port();
        if first.checked_add(n).is_none() {
            continue;
        }
        let held: Vec<_> = (1..n)
            .map_while(|i| TcpListener::bind(("127.0.0.1", first + i)).ok())
            .collect();
        if held.len() == usize::from(n - 1) {
            return Ok(first);
        }
    }
    Err(RealError::NoPorts(n))
}

/// Runs `start` on a block of `n` free ports; when another process took one of them in the
/// meantime (tests start servers in parallel), tries again on a new block, at most 5 times.
fn on_free_ports<T>(n: u16, start: impl Fn(u16) -> Result<T, RealError>) -> Result<T, RealError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match start(free_ports(n)?) {
            Err(RealError::Script { stderr, .. })
                if tries < 5 && stderr.to_lowercase().contains("address already in use") => {}
            other => return other,
        }
    }
}

/// A pid file a script of `scripts/real/` wrote.
fn read_pid(path: &Path) -> Result<i32, RealError> {
    let text = std::fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))?;
    text.trim().parse().map_err(|e| RealError::Io {
        what: format!("parsing {}", path.display()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

fn temp_dir(prefix: &str) -> Result<tempfile::TempDir, RealError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(io("creating a directory for a real server"))
}

/// A running control plane. Its kubeconfig authenticates as `admin` (system:masters).
pub struct ControlPlane {
    dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub port: u16,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager; returns once /readyz answers.
    pub fn start() -> Result<Self, RealError> {
        on_free_ports(4, |port| {
            let dir = temp_dir("streamscan-kube-")?;
            let d = dir.path().display().to_string();
            match script("kube.sh", &["start", &d, &port.to_string()]) {
                Ok(kubeconfig) => Ok(ControlPlane {
                    dir,
                    kubeconfig: PathBuf::from(kubeconfig),
                    port,
                }),
                Err(e) => {
                    let _ = script("kube.sh", &["stop", &d]);
                    Err(e)
                }
            }
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The API server's address.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A client as `admin`, default namespace `default`.
    pub async fn client(&self) -> Result<kube::Client, RealError> {
        let bad = |message: String| RealError::Kubeconfig {
            path: self.kubeconfig.display().to_string(),
            message,
        };
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).map_err(|e| bad(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| bad(e.to_string()))?;
        kube::Client::try_from(config).map_err(|e| bad(e.to_string()))
    }

    /// The API server's process id.
    pub fn apiserver_pid(&self) -> Result<i32, RealError> {
        read_pid(&self.dir.path().join("apiserver.pid"))
    }

    /// Stops the API server and starts it again on the same port and etcd (clients see a
    /// connection refused, then the same data).
    pub fn restart_apiserver(&self) -> Result<(), RealError> {
        let switch = self.apiserver_switch();
        switch.stop()?;
        switch.start()
    }

    /// Stops and starts this control plane's API server (from any thread).
    pub fn apiserver_switch(&self) -> ApiServerSwitch {
        ApiServerSwitch {
            dir: self.dir.path().display().to_string(),
        }
    }
}

/// Takes a control plane's API server down and back; holds only its directory, so it can move
/// to a blocking thread.
#[derive(Clone, Debug)]
pub struct ApiServerSwitch {
    dir: String,
}

impl ApiServerSwitch {
    /// Stops the API server (SIGTERM, as on a rolling restart); etcd and the data stay.
    pub fn stop(&self) -> Result<(), RealError> {
        script("kube.sh", &["stop", &self.dir, "apiserver"])?;
        Ok(())
    }

    /// Starts it again on the same port and etcd; returns once it is ready.
    pub fn start(&self) -> Result<(), RealError> {
        script("kube.sh", &["start-apiserver", &self.dir])?;
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = script("kube.sh", &["stop", &self.dir.path().display().to_string()]);
    }
}

/// A running Apache Kafka broker (one combined KRaft node).
pub struct Kafka {
    dir: tempfile::TempDir,
    pub bootstrap: String,
    pub port: u16,
}

impl Kafka {
    /// Starts the broker; returns once it serves.
    pub fn start() -> Result<Self, RealError> {
        let kafka = on_free_ports(2, |port| {
            let dir = temp_dir("streamscan-kafka-")?;
            let d = dir.path().display().to_string();
            match script("kafka.sh", &["start", &d, &port.to_string()]) {
                Ok(bootstrap) => Ok(Kafka { dir, bootstrap, port }),
                Err(e) => {
                    let _ = script("kafka.sh", &["stop", &d]);
                    Err(e)
                }
            }
        })?;
        kafka.warm_up_transactions()?;
        Ok(kafka)
    }

    /// Has the transaction coordinator create and load `__transaction_state`, as on a broker that
    /// has served transactions before. On a fresh broker that takes seconds ("coordinator load in
    /// progress"), which every test's first transaction would otherwise wait out; and an
    /// InitProducerId still retrying then can complete late and fence a newer attempt (the worker
    /// takes such a fence back, see the README), which a test should meet on purpose.
    fn warm_up_transactions(&self) -> Result<(), RealError> {
        use rdkafka::producer::{BaseProducer, Producer};
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("transactional.id", "streamscan-test-warm-up")
            .create()
            .map_err(|e| RealError::Kafka(e.to_string()))?;
        producer
            .init_transactions(Duration::from_secs(60))
            .map_err(|e| RealError::Kafka(format!("warming up the transaction coordinator: {e}")))
    }

    /// Creates `topic` with `partitions` partitions (replication factor 1) and waits for it.
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), RealError> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .map_err(|e| RealError::Kafka(e.to_string()))?;
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &opts)
            .await
            .map_err(|e| RealError::Kafka(e.to_string()))?;
        for r in results {
            match r {
                Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(RealError::Kafka(format!("creating {name}: {code}"))),
            }
        }
        Ok(())
    }

    /// The broker's process id.
    pub fn pid(&self) -> Result<i32, RealError> {
        read_pid(&self.dir.path().join("pid"))
    }

    /// Kills the broker with SIGKILL, as a crash would, and waits until it is gone.
    pub fn kill9(&self) -> Result<(), RealError> {
        let pid = nix::unistd::Pid::from_raw(self.pid()?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        for _ in 0..200 {
            if nix::sys::signal::kill(pid, None).is_err() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(RealError::Kafka(format!("broker pid {pid} did not exit after SIGKILL")))
    }

    /// Starts the broker again on the same port and log directory.
    pub fn restart(&self) -> Result<(), RealError> {
        script(
            "kafka.sh",
            &["start", &self.dir.path().display().to_string(), &self.port.to_string()],
        )?;
        Ok(())
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let _ = script("kafka.sh", &["stop", &self.dir.path().display().to_string()]);
    }
}
