//! The whole system on one machine. Backend `real`: a real kube-apiserver + etcd +
//! kube-controller-manager and a real Apache Kafka broker (`streamscan_test_servers::real`). Backend `sim`: the API
//! simulator and librdkafka's mock cluster, hosted in this process, behind Kafka's producer
//! fencing (`streamscan_kafka_fence`). Either way: the CRD, a real `redis-server`, two controller replicas with leader election, one gateway and N workers
//! registered as Ready pods with serverIds 0..N-1.
//! Used by the `devstack` binary and by the scenario suite.

pub mod kafka;
pub mod procs;
pub mod rbac;
pub mod redis;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use streamscan_api::names::{ANNOTATION_CAPACITY, LABEL_COMPONENT, LABEL_SERVER_ID};

use crate::kafka::KafkaHost;
use crate::procs::{Proc, free_port};
use crate::redis::RedisServer;
use streamscan_kube_sim::kubelet::{Kubelet, PodHandle, PodTemplate};
pub use streamscan_test_servers::{ApiServer, Backend, ServersError};

#[derive(Debug, thiserror::Error)]
pub enum DevstackError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("missing program: {0}")]
    Missing(String),
    #[error("Kafka: {0}")]
    Kafka(String),
    #[error("{0} did not become ready in time")]
    NotReady(String),
    #[error("simulator: {0}")]
    Sim(#[from] streamscan_kube_sim::SimError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubelet helper: {0}")]
    Kubelet(#[from] streamscan_kube_sim::kubelet::KubeletError),
    #[error(transparent)]
    Servers(#[from] ServersError),
    #[error("{0}")]
    Other(String),
}

/// What to start.
#[derive(Clone, Debug)]
pub struct Options {
    pub backend: Backend,
    pub workers: usize,
    /// Logs, kubeconfig, tokens, worker data and the volume-source root live here.
    pub dir: PathBuf,
    /// Where `streamscan-operator`, `streamscan-gateway` and `streamscan-worker` are.
    pub bin_dir: PathBuf,
    pub topic: String,
    /// Jobs per worker (controller placement limit and the worker's own limit).
    pub capacity: u16,
    pub controllers: usize,
    /// Extra worker flags (tests use hidden ones to slow the engine down).
    pub worker_args: Vec<String>,
    /// Extra controller flags.
    pub controller_args: Vec<String>,
    /// Extra gateway flags.
    pub gateway_args: Vec<String>,
}

impl Options {
    pub fn new(dir: PathBuf, bin_dir: PathBuf) -> Self {
        Options {
            backend: Backend::Real,
            workers: 3,
            dir,
            bin_dir,
            topic: "streamscan.progress".into(),
            capacity: 4,
            controllers: 2,
            worker_args: Vec::new(),
            controller_args: Vec::new(),
            gateway_args: Vec::new(),
        }
    }
}

/// One worker process and its pod.
pub struct Worker {
    pub server_id: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub proc: Option<Proc>,
    pub pod: Option<PodHandle>,
}

/// A running devstack. Dropping it kills every process it started.
pub struct Devstack {
    pub opts: Options,
    pub api: ApiServer,
    pub client: kube::Client,
    pub kubeconfig: PathBuf,
    /// On the real backend, per component (controller, gateway, worker): a kubeconfig with its
    /// chart ServiceAccount's token. The simulator enforces no RBAC: all use `kubeconfig`.
    component_kubeconfigs: BTreeMap<&'static str, PathBuf>,
    pub kafka: KafkaHost,
    pub redis: RedisServer,
    pub controllers: Vec<Option<Proc>>,
    pub gateway: Option<Proc>,
    pub gateway_port: u16,
    pub gateway_ops_port: u16,
    pub workers: Vec<Worker>,
    pub token: String,
    pub internal_token_file: PathBuf,
    pub jwt_secret_file: PathBuf,
    pub source_root: PathBuf,
    kubelet: Kubelet,
}

const NAMESPACE: &str = "default";
/// The StatefulSet the worker pods are registered as members of (`worker-<serverId>`).
const WORKER_STATEFULSET: &str = "worker";
/// The `iss` and `aud` the devstack's gateway requires, and its tokens carry.
pub const JWT_ISSUER: &str = "https://streamscan.devstack";
pub const JWT_AUDIENCE: &str = "streamscan";

impl Devstack {
    pub async fn start(opts: Options) -> Result<Self, DevstackError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| DevstackError::Io {
                what: what.clone(),
                source,
            }
        };
        std::fs::create_dir_all(&opts.dir).map_err(io("creating the devstack directory"))?;
        for bin in ["streamscan-operator", "streamscan-gateway", "streamscan-worker"] {
            if !opts.bin_dir.join(bin).is_file() {
                return Err(DevstackError::Missing(format!(
                    "{} (build it with `cargo build -p streamscan-operator -p streamscan-gateway -p streamscan-worker`)",
                    opts.bin_dir.join(bin).display()
                )));
            }
        }
        let source_root = opts.dir.join("sources");
        std::fs::create_dir_all(&source_root).map_err(io("creating the source volume"))?;

        let kubeconfig = opts.dir.join("kubeconfig");
        let (api, client) = ApiServer::start(opts.backend, &kubeconfig).await?;
        let mut component_kubeconfigs = BTreeMap::new();
        if opts.backend == Backend::Real {
            rbac::apply_chart_rbac(&client, NAMESPACE).await?;
            for (component, account) in rbac::ACCOUNTS {
                let path = opts.dir.join(format!("kubeconfig-{component}"));
                rbac::write_account_kubeconfig(&client, &kubeconfig, NAMESPACE, account, &path).await?;
                component_kubeconfigs.insert(component, path);
            }
        }
        let kafka = match opts.backend {
            Backend::Sim => KafkaHost::start(1, &opts.topic, 3)?.with_fencing().await?,
            Backend::Real => KafkaHost::start_real(&opts.topic, 3).await?,
        };
        let redis = RedisServer::start(&opts.dir).await?;

        let internal_token_file = opts.dir.join("internal-token");
        std::fs::write(&internal_token_file, format!("{}\n", uuid::Uuid::new_v4().simple()))
            .map_err(io("writing the internal token"))?;
        let jwt_secret = uuid::Uuid::new_v4().simple().to_string();
        let jwt_secret_file = opts.dir.join("jwt-hs256-secret");
        std::fs::write(&jwt_secret_file, &jwt_secret).map_err(io("writing the JWT secret"))?;
        let token = demo_token(&jwt_secret, "demo")?;

        let mut stack = Devstack {
            kubelet: Kubelet::new(client.clone(), NAMESPACE),
            opts,
            api,
            client,
            kubeconfig,
            component_kubeconfigs,
            kafka,
            redis,
            controllers: Vec::new(),
            gateway: None,
            gateway_port: free_port()?,
            gateway_ops_port: free_port()?,
            workers: Vec::new(),
            token,
            internal_token_file,
            jwt_secret_file,
            source_root,
        };
        for i in 0..stack.opts.controllers {
            let proc = stack.spawn_controller(i)?;
            stack.controllers.push(Some(proc));
        }
        for i in 0..stack.opts.workers {
            let data_dir = stack.opts.dir.join(format!("worker-{i}"));
            std::fs::create_dir_all(&data_dir).map_err(io("creating a worker data directory"))?;
            stack.workers.push(Worker {
                server_id: i.to_string(),
                port: free_port()?,
                data_dir,
                proc: None,
                pod: None,
            });
            stack.start_worker(i).await?;
        }
        stack.start_gateway().await?;
        Ok(stack)
    }

    /// The lines a person (or script) needs to use the stack.
    pub fn env_lines(&self) -> Vec<String> {
        vec![
            format!("BACKEND={}", self.opts.backend.name()),
            format!("KUBECONFIG={}", self.kubeconfig.display()),
            format!("KAFKA_BOOTSTRAP={}", self.kafka.bootstrap),
            format!("KAFKA_TOPIC={}", self.opts.topic),
            format!("REDIS_URL={}", self.redis.url()),
            format!("GATEWAY_URL={}", self.gateway_url()),
            format!("TOKEN={}", self.token),
        ]
    }

    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }

    /// A bearer token for `user`, signed with the gateway's key.
    pub fn token_for(&self, user: &str) -> Result<String, DevstackError> {
        let secret = std::fs::read_to_string(&self.jwt_secret_file).map_err(|source| DevstackError::Io {
            what: "reading the JWT secret".into(),
            source,
        })?;
        demo_token(&secret, user)
    }

    fn kafka_args(&self) -> Vec<String> {
        vec![
            "--kafka-bootstrap".into(),
            self.kafka.bootstrap.clone(),
            "--kafka-topic".into(),
            self.opts.topic.clone(),
        ]
    }

    /// The environment of `component` (controller, gateway or worker).
    fn env(&self, component: &str) -> Vec<(&'static str, String)> {
        let kubeconfig = self.component_kubeconfigs.get(component).unwrap_or(&self.kubeconfig);
        vec![
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())),
            ("POD_NAMESPACE", NAMESPACE.into()),
        ]
    }

    fn spawn_controller(&self, i: usize) -> Result<Proc, DevstackError> {
        let mut args: Vec<String> = vec![
            "controller".into(),
            "--log-format".into(),
            "json".into(),
            "--ops-addr".into(),
            "127.0.0.1:0".into(),
            "--capacity".into(),
            self.opts.capacity.to_string(),
            "--leader-election".into(),
            "true".into(),
            "--lease-duration-seconds".into(),
            "5".into(),
            "--identity".into(),
            format!("controller-{i}"),
            // As the chart passes them: the Roles it grants are in one namespace.
            "--namespace".into(),
            NAMESPACE.into(),
            "--worker-namespace".into(),
            NAMESPACE.into(),
            "--worker-statefulset".into(),
            WORKER_STATEFULSET.into(),
            "--lease-namespace".into(),
            NAMESPACE.into(),
            "--worker-token-file".into(),
            self.internal_token_file.display().to_string(),
        ];
        args.extend(self.opts.controller_args.iter().cloned());
        Proc::spawn(
            &format!("controller-{i}"),
            &self.opts.bin_dir.join("streamscan-operator"),
            args,
            &self.env("controller"),
            &self.opts.dir,
        )
    }

    /// Kills controller `i` (SIGKILL) and starts it again later with [`Devstack::restart_controller`].
    pub async fn kill_controller(&mut self, i: usize) {
        if let Some(Some(mut p)) = self.controllers.get_mut(i).map(Option::take) {
            p.kill().await;
        }
    }

    pub fn restart_controller(&mut self, i: usize) -> Result<(), DevstackError> {
        let proc = self.spawn_controller(i)?;
        if let Some(slot) = self.controllers.get_mut(i) {
            *slot = Some(proc);
        }
        Ok(())
    }

    /// Restarts the controllers that exited on their own, as Kubernetes would (restartPolicy
    /// Always), provided each said `expected` in its log (a leader that lost its lease during an
    /// API outage exits by design); any other exit is left dead, and fails the scenario.
    pub fn restart_exited_controllers(&mut self, expected: &str) -> Result<Vec<String>, DevstackError> {
        let mut restarted = Vec::new();
        for i in 0..self.controllers.len() {
            let Some(Some(proc)) = self.controllers.get_mut(i) else {
                continue;
            };
            if !proc.exited() {
                continue;
            }
            let name = proc.name.clone();
            let log = std::fs::read_to_string(self.opts.dir.join(format!("{name}.log"))).unwrap_or_default();
            if log.contains(expected) {
                self.restart_controller(i)?;
                restarted.push(name);
            }
        }
        Ok(restarted)
    }

    /// Starts worker `i` and, once it answers /healthz, registers its Ready pod.
    pub async fn start_worker(&mut self, i: usize) -> Result<(), DevstackError> {
        let w = self
            .workers
            .get(i)
            .ok_or_else(|| DevstackError::Other(format!("no worker {i}")))?;
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--server-id".into(),
            w.server_id.clone(),
            "--namespace".into(),
            NAMESPACE.into(),
            "--http-addr".into(),
            format!("127.0.0.1:{}", w.port),
            "--internal-token-file".into(),
            self.internal_token_file.display().to_string(),
            "--data-dir".into(),
            w.data_dir.display().to_string(),
            "--source-root".into(),
            self.source_root.display().to_string(),
            "--capacity".into(),
            self.opts.capacity.to_string(),
            "--log-format".into(),
            "json".into(),
            // Every server of a devstack is on this machine's loopback, which url sources may not
            // reach on a deployed worker.
            "--egress-allow-cidr".into(),
            "127.0.0.0/8".into(),
        ];
        args.extend(self.kafka_args());
        args.extend(self.opts.worker_args.iter().cloned());
        let name = format!("worker-{}", w.server_id);
        let port = w.port;
        let proc = Proc::spawn(
            &name,
            &self.opts.bin_dir.join("streamscan-worker"),
            args,
            &self.env("worker"),
            &self.opts.dir,
        )?;
        wait_http(&format!("http://127.0.0.1:{port}/healthz"), &name).await?;
        let pod = match self.workers[i].pod.clone() {
            // The pod survived the process (a restarted container): report it Ready again.
            Some(pod) => {
                pod.set_ready(true).await?;
                pod
            }
            None => {
                self.kubelet
                    .register(PodTemplate {
                        name: name.clone(),
                        labels: BTreeMap::from([
                            (LABEL_COMPONENT.to_owned(), "worker".to_owned()),
                            (LABEL_SERVER_ID.to_owned(), self.workers[i].server_id.clone()),
                        ]),
                        annotations: BTreeMap::from([(ANNOTATION_CAPACITY.to_owned(), self.opts.capacity.to_string())]),
                        port: Some(port),
                        statefulset: Some(WORKER_STATEFULSET.into()),
                    })
                    .await?
            }
        };
        self.workers[i].proc = Some(proc);
        self.workers[i].pod = Some(pod);
        Ok(())
    }

    /// Kills worker `i`'s process; its pod goes NotReady (a crashed container) or, with
    /// `delete_pod`, away (an evicted pod).
    pub async fn kill_worker(&mut self, i: usize, delete_pod: bool) -> Result<(), DevstackError> {
        let w = self
            .workers
            .get_mut(i)
            .ok_or_else(|| DevstackError::Other(format!("no worker {i}")))?;
        if let Some(mut p) = w.proc.take() {
            p.kill().await;
        }
        if let Some(pod) = &w.pod {
            if delete_pod {
                pod.delete().await?;
                w.pod = None;
            } else {
                pod.set_ready(false).await?;
            }
        }
        Ok(())
    }

    /// Freezes worker `i` (SIGSTOP) and reports its pod NotReady: to the cluster, a server cut
    /// off; to itself, nothing happened. [`Devstack::resume_worker`] lets it go on where it was,
    /// as a zombie if its jobs were re-pinned meanwhile.
    pub async fn pause_worker(&mut self, i: usize) -> Result<(), DevstackError> {
        self.signal_worker(i, nix::sys::signal::Signal::SIGSTOP)?;
        if let Some(pod) = self.workers.get(i).and_then(|w| w.pod.as_ref()) {
            pod.set_ready(false).await?;
        }
        Ok(())
    }

    /// Lets a paused worker go on (SIGCONT) and reports its pod Ready again.
    pub async fn resume_worker(&mut self, i: usize) -> Result<(), DevstackError> {
        self.signal_worker(i, nix::sys::signal::Signal::SIGCONT)?;
        if let Some(pod) = self.workers.get(i).and_then(|w| w.pod.as_ref()) {
            pod.set_ready(true).await?;
        }
        Ok(())
    }

    fn signal_worker(&self, i: usize, signal: nix::sys::signal::Signal) -> Result<(), DevstackError> {
        let pid = self
            .workers
            .get(i)
            .and_then(|w| w.proc.as_ref())
            .and_then(Proc::id)
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| DevstackError::Other(format!("worker {i} is not running")))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .map_err(|e| DevstackError::Other(format!("signalling worker {i}: {e}")))
    }

    async fn start_gateway(&mut self) -> Result<(), DevstackError> {
        let mut args: Vec<String> = vec![
            "--log-format".into(),
            "json".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.gateway_port),
            "--ops-addr".into(),
            format!("127.0.0.1:{}", self.gateway_ops_port),
            "--redis-url".into(),
            self.redis.url(),
            "--jwt-hs256-secret-file".into(),
            self.jwt_secret_file.display().to_string(),
            "--jwt-issuer".into(),
            JWT_ISSUER.into(),
            "--jwt-audience".into(),
            JWT_AUDIENCE.into(),
            "--worker-token-file".into(),
            self.internal_token_file.display().to_string(),
            "--identity".into(),
            "gateway-0".into(),
            "--namespace".into(),
            NAMESPACE.into(),
            "--default-namespace".into(),
            NAMESPACE.into(),
            "--worker-namespace".into(),
            NAMESPACE.into(),
            "--worker-statefulset".into(),
            WORKER_STATEFULSET.into(),
        ];
        args.extend(self.kafka_args());
        if self.opts.backend == Backend::Sim {
            // librdkafka's mock cluster has no static membership, and a consumer whose JoinGroup
            // was cut (a slow first join, an outage) rejoins as a new member that waits
            // session.timeout.ms - 1 s for its own ghost: 44 s (twice: 89 s) with the 45 s
            // default. 6 s (the brokers' default minimum) bounds that at about 5 s (11 s). A real
            // broker keeps the deployed default.
            args.extend(["--kafka-session-timeout-ms", "6000"].map(String::from));
        }
        args.extend(self.opts.gateway_args.iter().cloned());
        let proc = Proc::spawn(
            "gateway",
            &self.opts.bin_dir.join("streamscan-gateway"),
            args,
            &self.env("gateway"),
            &self.opts.dir,
        )?;
        wait_http(
            &format!("http://127.0.0.1:{}/healthz", self.gateway_ops_port),
            "gateway",
        )
        .await?;
        self.gateway = Some(proc);
        Ok(())
    }

    /// Kills the gateway (SIGKILL) and starts it again on the same port.
    pub async fn restart_gateway(&mut self) -> Result<(), DevstackError> {
        if let Some(mut p) = self.gateway.take() {
            p.kill().await;
        }
        self.start_gateway().await
    }

    /// The processes that should be running but have exited (crashed), by name.
    pub fn dead_processes(&mut self) -> Vec<String> {
        let mut dead = Vec::new();
        let mut check = |p: &mut Proc| {
            if p.exited() {
                dead.push(p.name.clone());
            }
        };
        self.controllers.iter_mut().flatten().for_each(&mut check);
        self.gateway.iter_mut().for_each(&mut check);
        self.workers
            .iter_mut()
            .filter_map(|w| w.proc.as_mut())
            .for_each(&mut check);
        if self.redis.exited() {
            dead.push("redis".into());
        }
        dead
    }

    /// Stops everything: SIGTERM with a grace period, then SIGKILL.
    pub async fn shutdown(mut self) {
        let grace = Duration::from_secs(5);
        if let Some(mut g) = self.gateway.take() {
            g.terminate(grace).await;
        }
        for w in &mut self.workers {
            if let Some(mut p) = w.proc.take() {
                p.terminate(grace).await;
            }
        }
        for c in self.controllers.iter_mut().filter_map(Option::take) {
            let mut c = c;
            c.terminate(grace).await;
        }
        self.redis.kill().await;
    }
}

/// Polls `url` until it answers 200 (the process has nothing else to await), at most 60 s.
async fn wait_http(url: &str, what: &str) -> Result<(), DevstackError> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| DevstackError::Other(format!("HTTP client: {e}")))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(resp) = client.get(url).send().await
            && resp.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(DevstackError::NotReady(format!("{what} ({url})")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A JWT for `user`, valid for a week, signed with the gateway's HS256 secret.
pub fn demo_token(secret: &str, user: &str) -> Result<String, DevstackError> {
    let now = jiff::Timestamp::now().as_second();
    let claims = serde_json::json!({
        "sub": user, "iat": now, "exp": now + 7 * 24 * 3600, "iss": JWT_ISSUER, "aud": JWT_AUDIENCE,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.trim().as_bytes()),
    )
    .map_err(|e| DevstackError::Other(format!("signing the demo token: {e}")))
}

/// Where the project's binaries are: next to this executable (target/<profile>/), or one level
/// up for test executables (target/<profile>/deps/).
pub fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// Builds the operator, gateway and worker binaries with the same profile as this executable.
pub fn build_binaries(bin_dir: &Path) -> Result<(), DevstackError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "-p",
        "streamscan-operator",
        "-p",
        "streamscan-gateway",
        "-p",
        "streamscan-worker",
        "--bins",
    ]);
    if bin_dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd.status().map_err(|source| DevstackError::Io {
        what: "running cargo build".into(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(DevstackError::Other(format!("cargo build failed: {status}")))
    }
}
