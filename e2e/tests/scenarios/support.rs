//! What the scenarios share: the backend (a fresh devstack, or a real cluster named by the
//! `STREAMSCAN_E2E_*` variables), a Range-capable file server, a read_committed Kafka consumer
//! that keeps every event, a reconnecting WebSocket client, Redis history reads, the per-job audit
//! (lost and duplicated events) and the closing table.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, ResourceExt};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message as _};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use streamscan_api::{AnalysisJob, EventStatus, Phase, ProgressEvent};
use streamscan_devstack::{Devstack, Options, build_binaries, default_bin_dir};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub type Res<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Every wait on a job is bounded by this (a loaded 2-core machine runs debug binaries).
pub const JOB_WAIT: Duration = Duration::from_secs(180);

pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> Res<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| format!("timed out after {limit:?} waiting for {what}").into())
}

/// The last `lines` lines of a component's log, for a failure's message.
pub fn log_tail(path: &std::path::Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub use streamscan_testdata::test_file;

// ---------------------------------------------------------------------------------------------
// Backend selection

/// Which backend the suite runs against.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The devstack, on real servers or on the simulator and the mock cluster.
    Devstack(streamscan_devstack::Backend),
    Cluster(Box<ClusterVars>),
}

/// The variables `e2e/kind/run.sh` passes (e2e/README.md).
#[derive(Debug, Clone)]
pub struct ClusterVars {
    pub kubeconfig: PathBuf,
    pub namespace: String,
    pub kafka: String,
    pub topic: String,
    pub gateway: String,
    pub jwt_key: String,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub files_url: String,
}

pub fn backend() -> Res<Backend> {
    match std::env::var("STREAMSCAN_E2E_BACKEND").ok().as_deref() {
        None | Some("" | "devstack" | "real") => Ok(Backend::Devstack(streamscan_devstack::Backend::Real)),
        Some("sim") => Ok(Backend::Devstack(streamscan_devstack::Backend::Sim)),
        Some(_) => {
            let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
            let key = var("STREAMSCAN_E2E_JWT_KEY")?;
            // The key itself, or a file holding it.
            let jwt_key = if key.contains("-----BEGIN") {
                key
            } else {
                std::fs::read_to_string(&key)?
            };
            Ok(Backend::Cluster(Box::new(ClusterVars {
                kubeconfig: var("STREAMSCAN_E2E_KUBECONFIG")?.into(),
                namespace: var("STREAMSCAN_E2E_NAMESPACE").unwrap_or_else(|_| "streamscan".into()),
                kafka: var("STREAMSCAN_E2E_KAFKA")?,
                topic: var("STREAMSCAN_E2E_TOPIC").unwrap_or_else(|_| "streamscan.progress".into()),
                gateway: var("STREAMSCAN_E2E_GATEWAY")?,
                jwt_key,
                files_url: var("STREAMSCAN_E2E_FILES_URL")?,
                jwt_issuer: var("STREAMSCAN_E2E_JWT_ISSUER")?,
                jwt_audience: var("STREAMSCAN_E2E_JWT_AUDIENCE")?,
            })))
        }
    }
}

/// Whether the full set runs (`STREAMSCAN_SCENARIOS=full`).
pub fn full_set() -> bool {
    std::env::var("STREAMSCAN_SCENARIOS").is_ok_and(|v| v == "full")
}

/// Builds the operator and worker binaries once per test process.
pub fn ensure_binaries() -> Res<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = default_bin_dir();
            if std::env::var_os("STREAMSCAN_E2E_NO_BUILD").is_none() {
                build_binaries(&dir).map_err(|e| e.to_string())?;
            }
            Ok(dir)
        })
        .clone()
        .map_err(Into::into)
}

/// Scenarios run one at a time: each owns a devstack, and the machine has two cores.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// The environment of one scenario

enum Key {
    Hs256(String),
    Rs256(String),
}

/// How the scenario signs its users' tokens: the gateway's key, issuer and audience.
struct Signer {
    key: Key,
    issuer: String,
    audience: String,
}

pub struct Env {
    pub stack: Option<Devstack>,
    pub client: kube::Client,
    pub ns: String,
    pub jobs: Api<AnalysisJob>,
    pub gateway: String,
    pub kafka: String,
    pub topic: String,
    pub redis: Option<String>,
    pub kubeconfig: PathBuf,
    pub http: reqwest::Client,
    pub files: Files,
    files_base: String,
    cluster_files: Option<String>,
    pub log: EventLog,
    signer: Signer,
    pub dir: tempfile::TempDir,
}

impl Env {
    /// A fresh devstack configured by `configure`, or the cluster.
    pub async fn start(configure: impl FnOnce(&mut Options)) -> Res<Env> {
        let dir = tempfile::Builder::new().prefix("streamscan-scenario-").tempdir()?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()?;
        let files = Files::default();
        let files_addr = files.start().await?;
        match backend()? {
            Backend::Devstack(servers) => {
                let bin_dir = tokio::task::spawn_blocking(ensure_binaries).await??;
                let mut opts = Options::new(dir.path().join("stack"), bin_dir);
                opts.backend = servers;
                configure(&mut opts);
                let stack = within(Duration::from_secs(120), "the devstack", Devstack::start(opts)).await??;
                let client = stack.client.clone();
                let secret = std::fs::read_to_string(&stack.jwt_secret_file)?;
                let log = EventLog::start(&stack.kafka.bootstrap, &stack.opts.topic)?;
                // Faults start from a steady state, as on a deployed system: both consumers hold
                // their partitions. A consumer still joining its group when the broker goes away
                // rejoins as a new member, and librdkafka's mock cluster then waits
                // session.timeout.ms (45 s) for the ghost one (it measured 44 s of the 8 s Kafka
                // outage scenario's 58 s); the mock delays a new group's first join by 3 s.
                let ops = format!("http://127.0.0.1:{}/metrics", stack.gateway_ops_port);
                let assigned = within(Duration::from_secs(60), "the gateway's Kafka assignment", async {
                    loop {
                        if let Ok(r) = http.get(&ops).send().await
                            && let Ok(text) = r.text().await
                            && text.lines().any(|l| {
                                l.strip_prefix("streamscan_gateway_kafka_partitions_assigned ")
                                    .is_some_and(|v| v.trim() != "0")
                            })
                        {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
                .await;
                if let Err(err) = assigned {
                    return Err(format!(
                        "{err}; the gateway's log ends:\n{}",
                        log_tail(&stack.opts.dir.join("gateway.log"), 25)
                    )
                    .into());
                }
                log.wait_assigned().await?;
                Ok(Env {
                    jobs: Api::namespaced(client.clone(), "default"),
                    client,
                    ns: "default".into(),
                    gateway: stack.gateway_url(),
                    kafka: stack.kafka.bootstrap.clone(),
                    topic: stack.opts.topic.clone(),
                    redis: Some(stack.redis.url()),
                    kubeconfig: stack.kubeconfig.clone(),
                    stack: Some(stack),
                    http,
                    files,
                    files_base: format!("http://{files_addr}"),
                    cluster_files: None,
                    log,
                    signer: Signer {
                        key: Key::Hs256(secret),
                        issuer: streamscan_devstack::JWT_ISSUER.into(),
                        audience: streamscan_devstack::JWT_AUDIENCE.into(),
                    },
                    dir,
                })
            }
            Backend::Cluster(v) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(&v.kubeconfig)?;
                let config =
                    kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                        .await?;
                let client = kube::Client::try_from(config)?;
                let log = EventLog::start(&v.kafka, &v.topic)?;
                log.wait_assigned().await?;
                Ok(Env {
                    jobs: Api::namespaced(client.clone(), &v.namespace),
                    client,
                    ns: v.namespace.clone(),
                    gateway: v.gateway.clone(),
                    kafka: v.kafka.clone(),
                    topic: v.topic.clone(),
                    redis: None,
                    kubeconfig: v.kubeconfig.clone(),
                    stack: None,
                    http,
                    files,
                    files_base: format!("http://{files_addr}"),
                    cluster_files: Some(v.files_url.clone()),
                    log,
                    signer: Signer {
                        key: Key::Rs256(v.jwt_key.clone()),
                        issuer: v.jwt_issuer.clone(),
                        audience: v.jwt_audience.clone(),
                    },
                    dir,
                })
            }
        }
    }

    pub fn is_devstack(&self) -> bool {
        self.stack.is_some()
    }

    pub fn stack(&mut self) -> Res<&mut Devstack> {
        self.stack
            .as_mut()
            .ok_or_else(|| "this scenario needs the devstack".into())
    }

    pub fn token(&self, user: &str) -> Res<String> {
        let now = jiff::Timestamp::now().as_second();
        let signer = &self.signer;
        let claims = json!({
            "sub": user, "iat": now, "exp": now + 3600, "iss": signer.issuer, "aud": signer.audience,
        });
        let (alg, key) = match &signer.key {
            Key::Hs256(secret) => (
                jsonwebtoken::Algorithm::HS256,
                jsonwebtoken::EncodingKey::from_secret(secret.trim().as_bytes()),
            ),
            Key::Rs256(pem) => (
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes())?,
            ),
        };
        Ok(jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &key)?)
    }

    /// A URL source serving `data`: the test's own file server on the devstack; on a cluster,
    /// only the demo firmware image the in-cluster file server holds (so `data` is replaced).
    pub fn url_source(&self, name: &str, data: Vec<u8>) -> Res<Value> {
        match &self.cluster_files {
            None => {
                let sha = self.files.add(name, data);
                Ok(json!({"url": {"location": format!("{}/plain/{name}", self.files_base), "sha256": sha}}))
            }
            Some(base) => {
                let demo = std::fs::read(workspace_root().join("e2e/fixtures/demo/firmware-demo.bin"))?;
                Ok(json!({"url": {"location": format!("{base}/firmware-demo.bin"), "sha256": sha256(&demo)}}))
            }
        }
    }

    /// A URL on the test's file server, or the cluster's (both answer 404 for unknown names).
    pub fn file_url(&self, name: &str) -> String {
        match &self.cluster_files {
            Some(base) => format!("{base}/{name}"),
            None => format!("{}/plain/{name}", self.files_base),
        }
    }

    /// A volume source: `data` written under the devstack's source root.
    pub fn volume_source(&mut self, path: &str, data: &[u8]) -> Res<Value> {
        let root = self.stack()?.source_root.clone();
        let file = root.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, data)?;
        Ok(json!({"volume": {"path": path, "sha256": sha256(data)}}))
    }

    /// Creates a job as `kubectl apply` would (straight to the API server).
    pub async fn create(&self, name: &str, user: &str, source: Value, analyzers: &[&str]) -> Res<AnalysisJob> {
        let mut spec = json!({"userId": user, "source": source});
        if !analyzers.is_empty() {
            spec["analyzers"] = json!(analyzers);
        }
        let job: AnalysisJob = serde_json::from_value(json!({
            "apiVersion": "streamscan.io/v1alpha1",
            "kind": "AnalysisJob",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": spec,
        }))?;
        Ok(self.jobs.create(&PostParams::default(), &job).await?)
    }

    /// Creates an upload job through the gateway, the body being the file, in the trace
    /// [`UPLOAD_TRACEPARENT`].
    pub async fn upload(&self, name: &str, user: &str, data: Vec<u8>) -> Res<(StatusCode, Value)> {
        let sha = sha256(&data);
        let url = format!(
            "{}/v1/jobs?upload=true&name={name}&namespace={}&fileName={name}.bin&sha256={sha}",
            self.gateway, self.ns
        );
        let r = self
            .http
            .post(url)
            .bearer_auth(self.token(user)?)
            .header(header::CONTENT_LENGTH, data.len())
            .header("traceparent", UPLOAD_TRACEPARENT)
            .body(data)
            .send()
            .await?;
        let status = StatusCode::from_u16(r.status().as_u16())?;
        let body: Value = r.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    pub async fn get(&self, name: &str) -> Res<AnalysisJob> {
        Ok(self.jobs.get(name).await?)
    }

    /// Waits until `cond` holds for job `name`.
    pub async fn wait(&self, name: &str, what: &str, cond: impl Fn(&AnalysisJob) -> bool) -> Res<AnalysisJob> {
        let found = within(
            JOB_WAIT,
            &format!("{name}: {what}"),
            await_condition(self.jobs.clone(), name, move |j: Option<&AnalysisJob>| {
                j.is_some_and(&cond)
            }),
        )
        .await??;
        found.ok_or_else(|| format!("{name} disappeared").into())
    }

    pub async fn wait_finished(&self, name: &str) -> Res<AnalysisJob> {
        self.wait(name, "a terminal phase", |j| j.phase().is_finished()).await
    }

    pub async fn wait_progress(&self, name: &str) -> Res<AnalysisJob> {
        self.wait(name, "progress > 0", |j| {
            j.status
                .as_ref()
                .and_then(|s| s.progress.as_ref())
                .is_some_and(|p| p.bytes_processed > 0)
        })
        .await
    }

    /// The gateway's REST call with `user`'s token.
    pub async fn api(&self, method: reqwest::Method, path: &str, user: &str) -> Res<reqwest::Response> {
        Ok(self
            .http
            .request(method, format!("{}{path}", self.gateway))
            .bearer_auth(self.token(user)?)
            .send()
            .await?)
    }

    /// Downloads the result through the gateway, checks its digest against the header and the
    /// CR, then deletes it and checks it is gone.
    pub async fn download_and_delete(&self, name: &str, user: &str) -> Res<Value> {
        let job = self.get(name).await?;
        let result = job
            .status
            .as_ref()
            .and_then(|s| s.result.clone())
            .ok_or(format!("{name} has no result"))?;
        let path = format!("/v1/jobs/{}/{name}/result", self.ns);
        let r = self.api(reqwest::Method::GET, &path, user).await?;
        if r.status() != reqwest::StatusCode::OK {
            return Err(format!("download of {name}: {} {}", r.status(), r.text().await?).into());
        }
        let header = r
            .headers()
            .get("x-streamscan-report-sha256")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = r.bytes().await?;
        let digest = sha256(&body);
        if digest != header || digest != result.report_digest {
            return Err(format!(
                "{name}: body digest {digest}, header {header}, CR {}",
                result.report_digest
            )
            .into());
        }
        let report: Value = serde_json::from_slice(&zstd::decode_all(&body[..])?)?;
        // The gateway records the download once the last byte went out.
        self.wait(name, "download.fetchedAt", |j| {
            j.status
                .as_ref()
                .and_then(|s| s.download.as_ref())
                .is_some_and(|d| d.fetched_at.is_some())
        })
        .await?;
        let r = self
            .http
            .delete(format!("{}{path}", self.gateway))
            .bearer_auth(self.token(user)?)
            .header("x-streamscan-report-sha256", &digest)
            .send()
            .await?;
        if r.status() != reqwest::StatusCode::NO_CONTENT {
            return Err(format!("delete of {name}: {} {}", r.status(), r.text().await?).into());
        }
        let job = self.get(name).await?;
        if !job
            .status
            .as_ref()
            .and_then(|s| s.download.as_ref())
            .is_some_and(|d| d.deleted)
        {
            return Err(format!("{name}: download.deleted not recorded").into());
        }
        let again = self.api(reqwest::Method::GET, &path, user).await?.status();
        if again != reqwest::StatusCode::GONE {
            return Err(format!("{name}: a deleted result answered {again}, not 410").into());
        }
        Ok(report)
    }

    /// Applies a manifest with the real kubectl; returns (success, stdout + stderr).
    pub async fn kubectl_apply(&self, file: &Path) -> Res<(bool, String)> {
        let out = within(
            Duration::from_secs(60),
            "kubectl apply",
            tokio::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(["apply", "--namespace", &self.ns, "-f"])
                .arg(file)
                .kill_on_drop(true)
                .output(),
        )
        .await??;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// Asks for a cancel through the API server (as `kubectl patch` would).
    pub async fn cancel_via_api(&self, name: &str) -> Res {
        self.jobs
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"cancel": true}})),
            )
            .await?;
        Ok(())
    }

    /// Stops the stack and reports any process that died on its own.
    pub async fn finish(mut self) -> Res {
        self.log.stop();
        if std::env::var_os("STREAMSCAN_E2E_KEEP").is_some() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir()?).keep();
            eprintln!("scenario directory kept (logs under stack/): {}", kept.display());
        }
        if let Some(mut stack) = self.stack.take() {
            let dead = stack.dead_processes();
            stack.shutdown().await;
            if !dead.is_empty() {
                return Err(format!("processes died during the scenario: {dead:?}").into());
            }
        }
        Ok(())
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

// ---------------------------------------------------------------------------------------------
// A file server with Range support

#[derive(Clone, Default)]
pub struct Files {
    files: Arc<Mutex<BTreeMap<String, Arc<Vec<u8>>>>>,
}

async fn serve_file(
    State(files): State<Files>,
    UrlPath((_mode, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(data) = files
        .files
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&name)
        .cloned()
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let start: usize = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
        .min(data.len());
    let len = data.len();
    let mut response = Response::builder()
        .header(header::CONTENT_LENGTH, (len - start).to_string())
        .header(header::ACCEPT_RANGES, "bytes");
    if range.is_some() {
        response = response.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", len.saturating_sub(1)),
        );
    }
    response
        .body(Body::from(data[start..].to_vec()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

impl Files {
    async fn start(&self) -> Res<std::net::SocketAddr> {
        let app = axum::Router::new()
            .route("/{mode}/{name}", axum::routing::get(serve_file))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(addr)
    }

    pub fn add(&self, name: &str, data: Vec<u8>) -> String {
        let digest = sha256(&data);
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.into(), Arc::new(data));
        digest
    }
}

// ---------------------------------------------------------------------------------------------
// Kafka: every event of the topic, read committed, as a user's consumer sees it

#[derive(Default)]
struct LogInner {
    /// Every event received, in arrival order (repeats included).
    events: Vec<ProgressEvent>,
    error: Option<String>,
}

pub struct EventLog {
    inner: Arc<Mutex<LogInner>>,
    /// True once the consumer holds its partitions.
    assigned: tokio::sync::watch::Receiver<bool>,
    notify: Arc<Notify>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EventLog {
    pub fn start(bootstrap: &str, topic: &str) -> Res<EventLog> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("scenarios-{}", uuid::Uuid::new_v4()))
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("topic.metadata.refresh.interval.ms", "1000")
            // As the gateway's default: the mock cluster holds an empty fetch this long, even when
            // data arrives meanwhile (librdkafka's default of 500 ms delays every check).
            .set("fetch.wait.max.ms", "100")
            .set("reconnect.backoff.max.ms", "1000")
            .create()?;
        consumer.subscribe(&[topic])?;
        let inner = Arc::new(Mutex::new(LogInner::default()));
        let notify = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (assigned_tx, assigned) = tokio::sync::watch::channel(false);
        let thread = {
            let (inner, notify, stop) = (inner.clone(), notify.clone(), stop.clone());
            std::thread::Builder::new()
                .name("scenario-consumer".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let msg = consumer.poll(Duration::from_millis(100));
                        if !*assigned_tx.borrow() && consumer.assignment().is_ok_and(|a| a.count() > 0) {
                            let _ = assigned_tx.send(true);
                        }
                        let Some(msg) = msg else {
                            continue;
                        };
                        // Broker outages surface as errors here; the consumer reconnects by itself.
                        let Ok(msg) = msg else { continue };
                        let parsed = msg.payload().map(ProgressEvent::from_slice);
                        let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
                        match parsed {
                            Some(Ok(event)) => {
                                if msg.key() != Some(event.analyze_id.as_bytes()) {
                                    g.error = Some(format!(
                                        "event {}:{} not keyed by its analyzeId",
                                        event.event_id, event.seq
                                    ));
                                }
                                g.events.push(event);
                            }
                            Some(Err(e)) => g.error = Some(format!("unreadable event on the topic: {e}")),
                            None => g.error = Some("an event without payload".into()),
                        }
                        drop(g);
                        notify.notify_waiters();
                    }
                })?
        };
        Ok(EventLog {
            inner,
            assigned,
            notify,
            stop,
            thread: Some(thread),
        })
    }

    /// Waits (bounded) until the consumer holds its partitions.
    pub async fn wait_assigned(&self) -> Res {
        let mut rx = self.assigned.clone();
        within(
            Duration::from_secs(60),
            "the scenario consumer's Kafka assignment",
            rx.wait_for(|a| *a),
        )
        .await?
        .map_err(|_| "the scenario consumer stopped")?;
        Ok(())
    }

    /// Every event of one analysis, repeats included, in arrival order.
    pub fn events(&self, analyze_id: &str) -> Vec<ProgressEvent> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.events
            .iter()
            .filter(|e| e.analyze_id == analyze_id)
            .cloned()
            .collect()
    }

    pub fn error(&self) -> Option<String> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).error.clone()
    }

    /// Waits until the attempt `event_id` of `analyze_id` has its final event.
    pub async fn wait_final(&self, analyze_id: &str, event_id: &str) -> Res<ProgressEvent> {
        within(JOB_WAIT, &format!("the final Kafka event of {event_id}"), async {
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(e) = self
                    .events(analyze_id)
                    .into_iter()
                    .find(|e| e.event_id == event_id && e.status.is_final())
                {
                    return e;
                }
                notified.await;
            }
        })
        .await
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the events of one analysis look like after dropping repeated `(eventId, seq)`.
#[derive(Debug, Default, Clone)]
pub struct Audit {
    /// Per attempt (eventId), the unique events in arrival order.
    pub attempts: BTreeMap<String, Vec<ProgressEvent>>,
    /// Repeats of an `(eventId, seq)` already held, dropped.
    pub duplicated: usize,
    /// Missing seqs below the highest one seen, over all attempts.
    pub lost: usize,
    /// Problems that are neither loss nor repetition (order, a repeat with other content).
    pub problems: Vec<String>,
}

pub fn audit(events: &[ProgressEvent]) -> Audit {
    let mut a = Audit::default();
    let mut held: HashMap<(String, u64), &ProgressEvent> = HashMap::new();
    for e in events {
        match held.get(&(e.event_id.clone(), e.seq)) {
            Some(first) => {
                a.duplicated += 1;
                if first.status != e.status || first.bytes_processed != e.bytes_processed {
                    a.problems.push(format!(
                        "{}:{} repeated with other content ({:?} vs {:?})",
                        e.event_id, e.seq, first.status, e.status
                    ));
                }
            }
            None => {
                held.insert((e.event_id.clone(), e.seq), e);
                a.attempts.entry(e.event_id.clone()).or_default().push(e.clone());
            }
        }
    }
    for (event_id, list) in &a.attempts {
        let seqs: BTreeSet<u64> = list.iter().map(|e| e.seq).collect();
        let max = seqs.iter().next_back().copied().unwrap_or(0);
        a.lost += usize::try_from(max + 1).unwrap_or(usize::MAX) - seqs.len();
        if list.windows(2).any(|w| w[1].seq < w[0].seq) {
            a.problems.push(format!("{event_id}: events out of seq order"));
        }
        if list.windows(2).any(|w| w[1].bytes_processed < w[0].bytes_processed) {
            a.problems.push(format!("{event_id}: progress went backwards"));
        }
        if list.first().map(|e| e.status) != Some(EventStatus::Started) {
            a.problems.push(format!("{event_id}: first event is not STARTED"));
        }
        let finals: Vec<usize> = list
            .iter()
            .enumerate()
            .filter(|(_, e)| e.status.is_final())
            .map(|(i, _)| i)
            .collect();
        if finals.len() > 1 || finals.first().is_some_and(|&i| i + 1 != list.len()) {
            a.problems
                .push(format!("{event_id}: the final event is not alone and last"));
        }
    }
    a
}

// ---------------------------------------------------------------------------------------------
// WebSocket client that reconnects with its last seen seq

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Default)]
struct WsShared {
    /// Progress events received, in order, repeats included.
    events: Vec<ProgressEvent>,
    /// Other JSON messages (replies to client messages).
    replies: Vec<Value>,
}

pub struct WsClient {
    shared: Arc<Mutex<WsShared>>,
    notify: Arc<Notify>,
    pub reconnects: Arc<AtomicUsize>,
    out: tokio::sync::mpsc::UnboundedSender<String>,
    task: tokio::task::JoinHandle<()>,
}

impl WsClient {
    /// Connects to the job's event stream, then follows it through disconnections, resuming
    /// after the last event received.
    pub async fn connect(env: &Env, name: &str, user: &str) -> Res<WsClient> {
        let base = env.gateway.replacen("http", "ws", 1);
        let url = format!("{base}/v1/jobs/{}/{name}/events", env.ns);
        let token = env.token(user)?;
        let first = ws_open(&url, &token, None).await?;
        let shared = Arc::new(Mutex::new(WsShared::default()));
        let notify = Arc::new(Notify::new());
        let reconnects = Arc::new(AtomicUsize::new(0));
        let (out, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let task = {
            let (shared, notify, reconnects) = (shared.clone(), notify.clone(), reconnects.clone());
            tokio::spawn(async move {
                let mut ws = Some(first);
                let mut last: Option<(String, u64)> = None;
                loop {
                    let Some(socket) = ws.as_mut() else {
                        // Reconnect, bounded: the gateway may be restarting.
                        let after = last.as_ref().map(|(e, s)| format!("{e}:{s}"));
                        let deadline = Instant::now() + Duration::from_secs(90);
                        while ws.is_none() && Instant::now() < deadline {
                            match ws_open(&url, &token, after.as_deref()).await {
                                Ok(s) => ws = Some(s),
                                // The gateway is not listening yet: retry shortly.
                                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                            }
                        }
                        if ws.is_none() {
                            return;
                        }
                        reconnects.fetch_add(1, Ordering::SeqCst);
                        continue;
                    };
                    tokio::select! {
                        msg = socket.next() => match msg {
                            Some(Ok(Message::Text(text))) => {
                                let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                                let mut g = shared.lock().unwrap_or_else(|e| e.into_inner());
                                if value.get("type").is_some() {
                                    g.replies.push(value);
                                } else if let Ok(e) = ProgressEvent::from_slice(text.as_bytes()) {
                                    last = Some((e.event_id.clone(), e.seq));
                                    g.events.push(e);
                                }
                                drop(g);
                                notify.notify_waiters();
                            }
                            Some(Ok(Message::Close(_)) | Err(_)) | None => ws = None,
                            Some(Ok(_)) => {}
                        },
                        text = rx.recv() => match text {
                            Some(text) => {
                                if socket.send(Message::text(text)).await.is_err() {
                                    ws = None;
                                }
                            }
                            None => return,
                        },
                    }
                }
            })
        };
        Ok(WsClient {
            shared,
            notify,
            reconnects,
            out,
            task,
        })
    }

    pub fn send(&self, text: &str) -> Res {
        self.out
            .send(text.to_owned())
            .map_err(|_| "the WebSocket client stopped")?;
        Ok(())
    }

    pub fn events(&self) -> Vec<ProgressEvent> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).events.clone()
    }

    /// Waits until `pred` holds on what was received.
    pub async fn wait(&self, what: &str, pred: impl Fn(&[ProgressEvent], &[Value]) -> bool) -> Res {
        within(JOB_WAIT, what, async {
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let g = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                    if pred(&g.events, &g.replies) {
                        return;
                    }
                }
                notified.await;
            }
        })
        .await
    }

    pub async fn wait_final(&self, event_id: &str) -> Res {
        self.wait(&format!("the final WebSocket event of {event_id}"), |evs, _| {
            evs.iter().any(|e| e.event_id == event_id && e.status.is_final())
        })
        .await
    }

    pub fn close(self) {
        self.task.abort();
    }
}

async fn ws_open(url: &str, token: &str, after: Option<&str>) -> Res<Ws> {
    let url = match after {
        Some(a) => format!("{url}?after={a}"),
        None => url.to_owned(),
    };
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (ws, _) = within(
        Duration::from_secs(10),
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(request),
    )
    .await??;
    Ok(ws)
}

// ---------------------------------------------------------------------------------------------
// Redis history (gateway/src/history.rs)

/// Per attempt held in Redis: the stored seqs.
pub async fn redis_history(url: &str, analyze_id: &str) -> Res<BTreeMap<String, Vec<u64>>> {
    let client = redis::Client::open(url)?;
    let mut conn = within(
        Duration::from_secs(10),
        "a Redis connection",
        client.get_multiplexed_async_connection(),
    )
    .await??;
    let attempts: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("streamscan:{{{analyze_id}}}:attempts"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    let mut out = BTreeMap::new();
    for event_id in attempts {
        let raw: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGE")
            .arg(format!("streamscan:{{{analyze_id}}}:events:{event_id}"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        let mut seqs = Vec::new();
        for (payload, score) in raw {
            let e = ProgressEvent::from_slice(&payload)?;
            if (e.seq as f64 - score).abs() > 0.5 {
                return Err(format!("{event_id}: event {} stored with score {score}", e.seq).into());
            }
            seqs.push(e.seq);
        }
        out.insert(event_id, seqs);
    }
    Ok(out)
}

/// The gateway's verdict on an attempt's stream (`ok` and problems).
pub async fn redis_verdict(url: &str, analyze_id: &str, event_id: &str) -> Res<Option<Value>> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let raw: Option<String> = redis::cmd("GET")
        .arg(format!("streamscan:{{{analyze_id}}}:verdict:{event_id}"))
        .query_async(&mut conn)
        .await?;
    Ok(raw.map(|r| serde_json::from_str(&r)).transpose()?)
}

// ---------------------------------------------------------------------------------------------
// One scenario's bookkeeping and the closing table

#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub expected: usize,
    pub succeeded: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub ws_events: usize,
    pub wall: Duration,
    pub outcome: String,
}

static ROWS: Mutex<Vec<Row>> = Mutex::new(Vec::new());

pub struct Tally {
    pub scenario: String,
    started: Instant,
    pub expected: usize,
    pub succeeded: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub ws_events: usize,
}

impl Tally {
    pub fn new(scenario: &str) -> Tally {
        Tally {
            scenario: scenario.into(),
            started: Instant::now(),
            expected: 0,
            succeeded: 0,
            lost: 0,
            duplicated: 0,
            ws_events: 0,
        }
    }

    /// Records the row (whatever the outcome), prints the table so far, and fails on a
    /// scenario error or on any lost or duplicated event.
    pub fn close(self, outcome: Res) -> Res {
        let row = Row {
            scenario: self.scenario.clone(),
            expected: self.expected,
            succeeded: self.succeeded,
            lost: self.lost,
            duplicated: self.duplicated,
            ws_events: self.ws_events,
            wall: self.started.elapsed(),
            outcome: match &outcome {
                Ok(()) => "ok".into(),
                Err(e) => format!("FAILED: {e}"),
            },
        };
        let table = {
            let mut rows = ROWS.lock().unwrap_or_else(|e| e.into_inner());
            rows.push(row);
            render(&rows)
        };
        eprintln!("\n{table}");
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scenarios-table.txt");
        let _ = std::fs::write(out, &table);
        outcome?;
        if self.lost > 0 || self.duplicated > 0 {
            return Err(format!(
                "{}: {} events lost, {} duplicated (the bar is zero)",
                self.scenario, self.lost, self.duplicated
            )
            .into());
        }
        if self.succeeded != self.expected {
            return Err(format!(
                "{}: {} of {} jobs succeeded",
                self.scenario, self.succeeded, self.expected
            )
            .into());
        }
        Ok(())
    }
}

/// Which servers the suite ran against, for the closing table.
fn backend_label() -> String {
    match backend() {
        Ok(Backend::Devstack(streamscan_devstack::Backend::Real)) => {
            "backend: real (devstack on kube-apiserver + etcd + kube-controller-manager, Apache Kafka, Redis)".into()
        }
        Ok(Backend::Devstack(streamscan_devstack::Backend::Sim)) => {
            "backend: sim (devstack on the API simulator, librdkafka's mock cluster behind the fencing proxy, Redis)"
                .into()
        }
        Ok(Backend::Cluster(v)) => format!("backend: cluster ({})", v.kubeconfig.display()),
        Err(e) => format!("backend: unknown ({e})"),
    }
}

fn render(rows: &[Row]) -> String {
    let mut s = format!("{}\n", backend_label());
    s.push_str(
        "scenario                         | jobs ok/exp | lost | dup | ws events | wall     | outcome\n\
         ---------------------------------+-------------+------+-----+-----------+----------+--------\n",
    );
    for r in rows {
        let mut outcome = r.outcome.clone();
        outcome.truncate(100);
        s.push_str(&format!(
            "{:<32} | {:>5}/{:<5} | {:>4} | {:>3} | {:>9} | {:>7.1}s | {}\n",
            r.scenario,
            r.succeeded,
            r.expected,
            r.lost,
            r.duplicated,
            r.ws_events,
            r.wall.as_secs_f64(),
            outcome
        ));
    }
    let total: f64 = rows.iter().map(|r| r.wall.as_secs_f64()).sum();
    s.push_str(&format!("total wall time {total:.1}s\n"));
    s
}

// ---------------------------------------------------------------------------------------------
// Checking one finished job from every side

/// What a scenario expects of a job's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Succeeded,
    Cancelled,
    /// Failed with this reason (condition or execution), with a FAILED event from the worker.
    FailedByWorker(&'static str),
    /// Failed by the controller (no worker left to report): no final event expected.
    FailedByController(&'static str),
}

/// Waits for the job's end, checks the CR, the Kafka events (audit), what the WebSocket client
/// got, and Redis, and adds the job to the tally.
pub async fn check_job(
    env: &Env,
    tally: &mut Tally,
    name: &str,
    expect: Expect,
    ws: Option<&WsClient>,
) -> Res<AnalysisJob> {
    tally.expected += usize::from(expect == Expect::Succeeded);
    let job = env.wait_finished(name).await?;
    let status = job.status.clone().unwrap_or_default();
    let uid = job.uid().ok_or("no uid")?;
    let phase = job.phase();
    let reason = failure_reason(&job);
    let want_phase = match expect {
        Expect::Succeeded => Phase::Succeeded,
        Expect::Cancelled => Phase::Cancelled,
        Expect::FailedByWorker(_) | Expect::FailedByController(_) => Phase::Failed,
    };
    if phase != want_phase {
        return Err(format!("{name}: phase {phase:?}, expected {want_phase:?} (reason {reason:?})").into());
    }
    if let Expect::FailedByWorker(r) | Expect::FailedByController(r) = expect
        && !reason.iter().any(|x| x == r)
    {
        return Err(format!("{name}: failed with {reason:?}, expected {r}").into());
    }
    let event_id = status.event_id.clone().ok_or(format!("{name}: no eventId"))?;
    let final_status = match expect {
        Expect::Succeeded => Some(EventStatus::Completed),
        Expect::Cancelled => Some(EventStatus::Cancelled),
        Expect::FailedByWorker(_) => Some(EventStatus::Failed),
        Expect::FailedByController(_) => None,
    };
    if let Some(want) = final_status {
        let last = env.log.wait_final(&uid, &event_id).await?;
        if last.status != want {
            return Err(format!("{name}: final event {:?}, expected {want:?}", last.status).into());
        }
    }
    let events = env.log.events(&uid);
    let a = audit(&events);
    if let Some(err) = env.log.error() {
        return Err(format!("Kafka: {err}").into());
    }
    if !a.problems.is_empty() {
        return Err(format!("{name}: {:?}", a.problems).into());
    }
    tally.lost += a.lost;
    tally.duplicated += a.duplicated;
    if final_status.is_some() && !a.attempts.contains_key(&event_id) {
        return Err(format!("{name}: no events of the current attempt {event_id}").into());
    }
    if expect == Expect::Succeeded {
        let last = a.attempts.get(&event_id).and_then(|l| l.last()).ok_or("no events")?;
        if last.result != status.result {
            return Err(format!(
                "{name}: COMPLETED carries {:?}, the CR {:?}",
                last.result, status.result
            )
            .into());
        }
        if status.progress.as_ref().and_then(|p| p.percent) != Some(100) {
            return Err(format!("{name}: progress not at 100%: {:?}", status.progress).into());
        }
        tally.succeeded += 1;
    }
    // The WebSocket client: the same events per attempt, no gap, no repeat.
    if let Some(ws) = ws {
        if final_status.is_some() {
            ws.wait_final(&event_id).await?;
        }
        let got = ws.events();
        tally.ws_events += got.len();
        let wa = audit(&got);
        tally.duplicated += wa.duplicated;
        tally.lost += wa.lost;
        if let Some(list) = a.attempts.get(&event_id) {
            let kafka: Vec<u64> = list.iter().map(|e| e.seq).collect();
            let seen: Vec<u64> = wa
                .attempts
                .get(&event_id)
                .map(|l| l.iter().map(|e| e.seq).collect())
                .unwrap_or_default();
            if kafka != seen {
                return Err(
                    format!("{name}: Kafka has seqs {kafka:?} for {event_id}, the WebSocket client {seen:?}").into(),
                );
            }
        }
    }
    // Redis: every attempt held, the current one complete and with a clean verdict.
    if let Some(url) = &env.redis
        && final_status.is_some()
    {
        let kafka: Vec<u64> = a
            .attempts
            .get(&event_id)
            .map(|l| l.iter().map(|e| e.seq).collect())
            .unwrap_or_default();
        // The gateway stores each event before pushing it, but without a WebSocket client to
        // wait on, our consumer may be ahead of it: poll, bounded (Redis has nothing to await).
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut held = redis_history(url, &uid).await?;
        while held.get(&event_id) != Some(&kafka) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            held = redis_history(url, &uid).await?;
        }
        if held.get(&event_id) != Some(&kafka) {
            return Err(format!(
                "{name}: Redis holds {:?} for {event_id}, Kafka {kafka:?}",
                held.get(&event_id)
            )
            .into());
        }
        let mut verdict = redis_verdict(url, &uid, &event_id).await?;
        while verdict.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            verdict = redis_verdict(url, &uid, &event_id).await?;
        }
        if !verdict.as_ref().is_some_and(|v| v["ok"] == true) {
            return Err(format!("{name}: the gateway's verdict: {verdict:?}").into());
        }
    }
    Ok(job)
}

/// The reasons a failed job gives: its Failed condition's and the worker's execution reason.
pub fn failure_reason(job: &AnalysisJob) -> Vec<String> {
    let Some(status) = job.status.as_ref() else {
        return Vec::new();
    };
    let mut out: Vec<String> = status
        .conditions
        .iter()
        .filter(|c| c.type_ == "Failed" && c.status == "True")
        .map(|c| c.reason.clone())
        .collect();
    if let Some(e) = &status.execution
        && let Some(r) = &e.reason
    {
        out.push(r.clone());
    }
    out
}

/// The Failed condition's message, for "a clear reason" checks.
pub fn failure_message(job: &AnalysisJob) -> String {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Failed"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// The worker index (serverId) a job is pinned to.
pub fn server_of(job: &AnalysisJob) -> Res<usize> {
    let id = job
        .status
        .as_ref()
        .and_then(|s| s.server_id.clone())
        .ok_or("not pinned")?;
    Ok(id.parse()?)
}

/// The W3C trace an upload request continues: the events its job's clients receive carry it.
pub const UPLOAD_TRACEPARENT: &str = "00-5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e-00f067aa0ba902b7-01";
pub const UPLOAD_TRACE_ID: &str = "5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e";
