//! The real `streamscan-worker serve` against the Kubernetes API simulator, a librdkafka mock
//! cluster and a local HTTP file server. Job status is set by the test as the controller would
//! (the controller lives in the operator crate, which the worker must not depend on).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Message};
use serde_json::json;
use sha2::{Digest, Sha256};
use streamscan_api::names::{ANNOTATION_TRACEPARENT, LABEL_SERVER_ID};
use streamscan_api::trace::TraceParent;
use streamscan_api::{AnalysisJob, EventStatus, ExecutionState, ProgressEvent};
use streamscan_engine::hex;
use streamscan_kafka_fence::FencingProxy;
use streamscan_test_servers::ApiServer;
use tokio::process::{Child, Command};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const WAIT: Duration = Duration::from_secs(60);
const TOPIC: &str = "streamscan.progress";
const TOKEN: &str = "s3cret-internal-token";
const FILE_SIZE: usize = 4 << 20;

/// Deterministic test data with a few things to find.
fn test_file(seed: u64) -> Vec<u8> {
    streamscan_testdata::test_file(seed, FILE_SIZE)
}

/// A file server with Range support; `/drop/...` cuts the first full response in the middle.
#[derive(Clone, Default)]
struct Files {
    files: Arc<Mutex<BTreeMap<String, Arc<Vec<u8>>>>>,
    /// Range header of every request, in order (None: a full request).
    ranges: Arc<Mutex<Vec<Option<String>>>>,
    dropped: Arc<Mutex<bool>>,
    /// `/to/{name}` answers 302 to this URL.
    redirects: Arc<Mutex<BTreeMap<String, String>>>,
}

async fn serve_file(
    State(files): State<Files>,
    UrlPath((mode, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if mode == "to" {
        let target = files
            .redirects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
            .cloned();
        return match target {
            Some(target) => (StatusCode::FOUND, [(header::LOCATION, target)]).into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    // `/auth/...` wants the header a job's headersSecretRef supplies.
    if mode == "auth" && headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some("k3y") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Some(data) = files
        .files
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&name)
        .cloned()
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    files
        .ranges
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(range.clone());
    let start: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let len = data.len();
    let body = data[start..].to_vec();
    let drop_now = mode == "drop"
        && start == 0
        && !std::mem::replace(&mut *files.dropped.lock().unwrap_or_else(|e| e.into_inner()), true);
    let body = if mode == "trickle" {
        // 16 bytes every 100 ms: alive, but far too slow.
        let stream = futures::stream::unfold(body, |rest| async move {
            if rest.is_empty() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = rest.len().min(16);
            Some((
                Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(&rest[..n])),
                rest[n..].to_vec(),
            ))
        });
        Body::from_stream(stream)
    } else if drop_now {
        // Half the file, then the connection breaks with Content-Length unmet.
        let half = body[..body.len() / 2].to_vec();
        let stream = futures::stream::iter(vec![
            Ok::<_, std::io::Error>(bytes::Bytes::from(half)),
            Err(std::io::Error::other("connection dropped by the test server")),
        ]);
        Body::from_stream(stream)
    } else {
        Body::from(body)
    };
    let mut response = Response::builder()
        .header(header::CONTENT_LENGTH, (len - start).to_string())
        .header(header::ACCEPT_RANGES, "bytes");
    if range.is_some() {
        response = response
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", len - 1));
    }
    response
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

impl Files {
    async fn start(&self) -> Res<SocketAddr> {
        self.start_on("127.0.0.1").await
    }

    /// The same files on another address (another origin).
    async fn start_on(&self, ip: &str) -> Res<SocketAddr> {
        let app = axum::Router::new()
            .route("/{mode}/{name}", axum::routing::get(serve_file))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(addr)
    }

    fn add(&self, name: &str, data: Vec<u8>) -> String {
        let digest = hex::encode(&Sha256::digest(&data));
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.into(), Arc::new(data));
        digest
    }
}

/// Which Kafka a harness runs against.
#[derive(Clone, Copy, PartialEq)]
enum Broker {
    Mock,
    /// The mock behind Kafka's producer fencing (`streamscan_kafka_fence`).
    MockFencing,
    /// A real Apache Kafka broker (`streamscan_test_servers::real::Kafka`).
    Real,
}

/// The broker a test's worker talks to.
enum Kafka {
    /// librdkafka's mock cluster (fault injection), maybe behind the fencing proxy.
    Mock {
        cluster: MockCluster<'static, DefaultProducerContext>,
        _fence: Option<FencingProxy>,
    },
    Real(streamscan_test_servers::real::Kafka),
}

struct Harness {
    _api: ApiServer,
    kafka: Kafka,
    /// Where clients connect: the broker, or the fencing proxy.
    bootstrap: String,
    dir: tempfile::TempDir,
    jobs: Api<AnalysisJob>,
    files: Files,
    files_addr: SocketAddr,
    http: reqwest::Client,
}

impl Harness {
    /// With librdkafka's mock cluster.
    async fn start() -> Res<Self> {
        Self::start_with(Broker::Mock).await
    }

    /// With Kafka's producer fencing in front of the mock cluster (see `streamscan_kafka_fence`).
    async fn start_fencing() -> Res<Self> {
        Self::start_with(Broker::MockFencing).await
    }

    /// Against a real Apache Kafka broker.
    async fn start_real_kafka() -> Res<Self> {
        Self::start_with(Broker::Real).await
    }

    async fn start_with(broker: Broker) -> Res<Self> {
        let dir = tempfile::tempdir()?;
        let (api, client): (ApiServer, Client) =
            ApiServer::start(ApiServer::test_backend()?, &dir.path().join("kubeconfig")).await?;
        let (kafka, bootstrap) = match broker {
            Broker::Real => {
                let real = tokio::task::spawn_blocking(streamscan_test_servers::real::Kafka::start).await??;
                real.create_topic(TOPIC, 1).await?;
                let bootstrap = real.bootstrap.clone();
                (Kafka::Real(real), bootstrap)
            }
            Broker::Mock | Broker::MockFencing => {
                let cluster = MockCluster::new(1)?;
                cluster.create_topic(TOPIC, 1, 1)?;
                let fence = match broker {
                    Broker::MockFencing => Some(FencingProxy::start(&cluster.bootstrap_servers()).await?),
                    _ => None,
                };
                let bootstrap = fence
                    .as_ref()
                    .map_or_else(|| cluster.bootstrap_servers(), FencingProxy::bootstrap_servers);
                (Kafka::Mock { cluster, _fence: fence }, bootstrap)
            }
        };
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n"))?;
        std::fs::create_dir_all(dir.path().join("sources"))?;
        let files = Files::default();
        let files_addr = files.start().await?;
        Ok(Harness {
            _api: api,
            kafka,
            bootstrap,
            jobs: Api::namespaced(client, "default"),
            files,
            files_addr,
            http: reqwest::Client::builder().no_proxy().build()?,
            dir,
        })
    }

    /// The mock cluster, for fault injection.
    fn mock(&self) -> Res<&MockCluster<'static, DefaultProducerContext>> {
        match &self.kafka {
            Kafka::Mock { cluster, .. } => Ok(cluster),
            Kafka::Real(_) => Err("this test injects faults into the mock cluster".into()),
        }
    }

    fn real(&self) -> Option<&streamscan_test_servers::real::Kafka> {
        match &self.kafka {
            Kafka::Real(real) => Some(real),
            Kafka::Mock { .. } => None,
        }
    }

    fn data_dir(&self, server: &str) -> PathBuf {
        self.dir.path().join(format!("data-{server}"))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Starts `streamscan-worker serve`; returns the process and its HTTP address.
    async fn worker(&self, server: &str, log: &str, extra: &[&str]) -> Res<(Child, String)> {
        // Small chunks and frequent checkpoints and progress, so that 4 MiB test files go through
        // every stage of a run.
        let tuning = [
            "--chunk-size",
            "65536",
            "--checkpoint-every-bytes",
            "262144",
            "--progress-interval-ms",
            "300",
            // The test's file server is on loopback, which the egress policy denies by default.
            "--egress-allow-cidr",
            "127.0.0.0/8",
        ];
        self.start_worker(server, log, &[&tuning[..], extra].concat()).await
    }

    /// Starts `streamscan-worker serve` with its defaults but for `args`.
    async fn start_worker(&self, server: &str, log: &str, extra: &[&str]) -> Res<(Child, String)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let logfile = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{log}.log")))?;
        let child = Command::new(env!("CARGO_BIN_EXE_streamscan-worker"))
            .arg("serve")
            .args(["--server-id", server, "--namespace", "default", "--log-format", "json"])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .arg("--internal-token-file")
            .arg(self.dir.path().join("token"))
            .arg("--data-dir")
            .arg(self.data_dir(server))
            .arg("--source-root")
            .arg(self.dir.path().join("sources"))
            .args(["--kafka-bootstrap", &self.bootstrap, "--kafka-topic", TOPIC])
            .args(extra)
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env("RUST_LOG", "info,streamscan_worker=debug,librdkafka=warn")
            .stdout(Stdio::null())
            .stderr(logfile)
            .kill_on_drop(true)
            .spawn()?;
        let base = format!("http://127.0.0.1:{port}");
        // Ready once it listens and its watch has synced.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(r) = self.http.get(format!("{base}/readyz")).send().await
                && r.status() == StatusCode::OK
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("worker never became ready; log:\n{}", self.log(log)).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok((child, base))
    }

    /// Creates a job pinned to `server` and places it as the controller would.
    async fn job(&self, name: &str, server: &str, source: serde_json::Value, analyzers: &[&str]) -> Res<AnalysisJob> {
        let job: AnalysisJob = serde_json::from_value(json!({
            "apiVersion": "streamscan.io/v1alpha1", "kind": "AnalysisJob",
            "metadata": {
                "name": name,
                "labels": {LABEL_SERVER_ID: server},
                "annotations": {ANNOTATION_TRACEPARENT: JOB_TRACEPARENT},
            },
            "spec": {"userId": "alice", "source": source, "analyzers": analyzers},
        }))?;
        self.jobs.create(&PostParams::default(), &job).await?;
        let status = json!({"status": {"phase": "Scheduled", "serverId": server, "attempt": 1, "eventId": format!("{name}-e1")}});
        Ok(self
            .jobs
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?)
    }

    async fn wait(&self, name: &str, what: &str, cond: impl Fn(&AnalysisJob) -> bool) -> Res<AnalysisJob> {
        self.wait_within(WAIT, name, what, cond).await
    }

    async fn wait_within(
        &self,
        limit: Duration,
        name: &str,
        what: &str,
        cond: impl Fn(&AnalysisJob) -> bool,
    ) -> Res<AnalysisJob> {
        let found = tokio::time::timeout(
            limit,
            await_condition(self.jobs.clone(), name, move |j: Option<&AnalysisJob>| {
                j.is_some_and(&cond)
            }),
        )
        .await
        .map_err(|_| format!("timed out waiting for {name} to be {what}"))??;
        Ok(found.ok_or("job vanished")?)
    }

    async fn wait_state(&self, name: &str, state: ExecutionState) -> Res<AnalysisJob> {
        self.wait(name, &format!("{state:?}"), move |j| execution_state(j) == Some(state))
            .await
    }

    fn url(&self, mode: &str, file: &str) -> String {
        format!("http://{}/{mode}/{file}", self.files_addr)
    }

    /// Waits until the job failed fatally with `reason` and a message saying `says`, on its CR
    /// and in its first attempt's gapless event stream; returns both.
    async fn failed_fatally(
        &self,
        name: &str,
        reason: &str,
        says: &str,
    ) -> Res<(AnalysisJob, Vec<(ProgressEvent, BTreeMap<String, String>)>)> {
        let job = self.wait_state(name, ExecutionState::Failed).await?;
        let e = job
            .status
            .as_ref()
            .and_then(|s| s.execution.clone())
            .ok_or("execution")?;
        assert_eq!(e.reason.as_deref(), Some(reason), "{name}: {e:?}");
        assert_eq!(e.retriable, Some(false), "{name} is fatal");
        assert!(e.message.as_deref().is_some_and(|m| m.contains(says)), "{name}: {e:?}");
        let events = self.events(&format!("{name}-e1")).await?;
        check_stream(&events, EventStatus::Failed);
        let (last, _) = events.last().ok_or("events")?;
        assert_eq!(
            (last.reason.as_deref(), last.retriable),
            (Some(reason), Some(false)),
            "{name}"
        );
        Ok((job, events))
    }

    /// The events of one attempt, read committed, until its final event.
    async fn events(&self, event_id: &str) -> Res<Vec<(ProgressEvent, BTreeMap<String, String>)>> {
        let bootstrap = self.bootstrap.clone();
        let event_id = event_id.to_owned();
        tokio::task::spawn_blocking(move || consume(&bootstrap, &event_id)).await?
    }
}

fn execution_state(j: &AnalysisJob) -> Option<ExecutionState> {
    j.status.as_ref()?.execution.as_ref().map(|e| e.state)
}

/// The byte offset of the job's last checkpoint, as the worker reported it (0: none yet).
fn checkpoint_bytes(j: &AnalysisJob) -> i64 {
    j.status
        .as_ref()
        .and_then(|s| s.execution.as_ref())
        .and_then(|e| e.checkpoint_bytes)
        .unwrap_or(0)
}

/// A wait condition: the job's progress has reached `min` bytes.
fn processed_at_least(min: i64) -> impl Fn(&AnalysisJob) -> bool {
    move |j| {
        j.status
            .as_ref()
            .and_then(|s| s.progress.as_ref())
            .is_some_and(|p| p.bytes_processed >= min)
    }
}

fn consume(bootstrap: &str, event_id: &str) -> Res<Vec<(ProgressEvent, BTreeMap<String, String>)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[TOPIC])?;
    let deadline = std::time::Instant::now() + WAIT;
    let mut out = Vec::new();
    while std::time::Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg?;
        let event = ProgressEvent::from_slice(msg.payload().ok_or("no payload")?)?;
        if event.event_id != event_id {
            continue;
        }
        let mut headers = BTreeMap::new();
        if let Some(h) = msg.headers() {
            for header in h.iter() {
                headers.insert(
                    header.key.to_owned(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        assert_eq!(msg.key(), Some(event.analyze_id.as_bytes()), "key is the analyzeId");
        let last = event.status.is_final();
        out.push((event, headers));
        if last {
            return Ok(out);
        }
    }
    Err(format!(
        "no final event for {event_id} within {WAIT:?}; got {} events",
        out.len()
    )
    .into())
}

/// Drops events whose (eventId, seq) was seen before, as the gateway does. Needed only where a
/// worker is killed: librdkafka's mock cluster writes no abort markers, so a read_committed
/// consumer also sees the killed worker's last, uncommitted (and on real Kafka aborted) batch.
fn dedupe(events: Vec<(ProgressEvent, BTreeMap<String, String>)>) -> Vec<(ProgressEvent, BTreeMap<String, String>)> {
    let mut seen = std::collections::HashSet::new();
    events
        .into_iter()
        .filter(|(e, _)| seen.insert((e.event_id.clone(), e.seq)))
        .collect()
}

/// seq 0..N without gap or repeat, STARTED first, `last` last, bytes monotonic.
fn check_stream(events: &[(ProgressEvent, BTreeMap<String, String>)], last: EventStatus) {
    let seqs: Vec<u64> = events.iter().map(|(e, _)| e.seq).collect();
    assert_eq!(
        seqs,
        (0..events.len() as u64).collect::<Vec<_>>(),
        "seq gapless and unrepeated"
    );
    assert_eq!(events.first().map(|(e, _)| e.status), Some(EventStatus::Started));
    assert_eq!(events.last().map(|(e, _)| e.status), Some(last));
    assert_eq!(events.iter().filter(|(e, _)| e.status.is_final()).count(), 1);
    for pair in events.windows(2) {
        assert!(
            pair[1].0.bytes_processed >= pair[0].0.bytes_processed,
            "monotonic progress"
        );
    }
    for (e, h) in events {
        assert_eq!(h.get("ce_id"), Some(&format!("{}-{}", e.event_id, e.seq)));
        assert_eq!(
            h.get("ce_type").map(String::as_str),
            Some("io.streamscan.analysis.progress.v1")
        );
        assert_eq!(h.get("ce_subject"), Some(&format!("default/{}", e.name)));
        assert_eq!(
            h.get("ce_source"),
            Some(&format!("/streamscan/servers/{}", e.server_id))
        );
        // The job's trace (its annotation, as the gateway sets it), each event its own span,
        // the same in the header and in the event.
        let header = h.get("traceparent").ok_or("no traceparent header");
        assert_eq!(header.ok(), e.traceparent.as_ref(), "header and event field agree");
        let trace = header.ok().and_then(|t| TraceParent::parse(t));
        assert_eq!(
            trace.map(|t| t.trace_id_hex()).as_deref(),
            Some(JOB_TRACE_ID),
            "{header:?}"
        );
    }
    let spans: std::collections::HashSet<_> = events.iter().map(|(_, h)| h.get("traceparent")).collect();
    assert_eq!(spans.len(), events.len(), "one span per event");
}

/// The trace every test job continues (the W3C spec's example).
const JOB_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const JOB_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_job_succeeds_with_gapless_events_and_a_downloadable_result() -> Res<()> {
    let h = Harness::start().await?;
    let sha = h.files.add("fw.bin", test_file(1));
    let (_worker, base) = h.worker("s1", "s1", &[]).await?;
    let job = h
        .job(
            "fw",
            "s1",
            json!({"url": {"location": h.url("plain", "fw.bin"), "sha256": sha}}),
            &["digest", "secrets", "iocs"],
        )
        .await?;
    let uid = job.metadata.uid.clone().ok_or("uid")?;
    let done = h.wait_state("fw", ExecutionState::Succeeded).await?;
    let status = done.status.ok_or("status")?;
    let result = status.result.ok_or("no result")?;
    assert_eq!(result.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(result.bytes, FILE_SIZE as i64);
    assert_eq!(result.server_id, "s1");
    assert!(
        result.findings.high
            + result.findings.critical
            + result.findings.medium
            + result.findings.low
            + result.findings.info
            >= 2
    );
    assert_eq!(status.progress.and_then(|p| p.percent), Some(100));

    let events = h.events("fw-e1").await?;
    check_stream(&events, EventStatus::Completed);
    let (completed, _) = events.last().ok_or("no events")?;
    assert_eq!(completed.result.as_ref(), Some(&result));
    assert!(events.iter().any(|(e, _)| e.status == EventStatus::Progress));

    // The result: token required, digest header = CR digest = SHA-256 of the body.
    let url = format!("{base}/results/{uid}");
    assert_eq!(h.http.get(&url).send().await?.status(), StatusCode::UNAUTHORIZED);
    let r = h.http.get(&url).bearer_auth(TOKEN).send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/zstd");
    let header_digest = r.headers()["x-streamscan-report-sha256"].to_str()?.to_owned();
    let body = r.bytes().await?;
    assert_eq!(header_digest, result.report_digest);
    assert_eq!(hex::encode(&Sha256::digest(&body)), result.report_digest);
    assert_eq!(body.len() as i64, result.report_size);
    let report: serde_json::Value = serde_json::from_slice(&zstd::decode_all(&body[..])?)?;
    assert_eq!(report["digests"]["sha256"], sha.as_str());
    assert_eq!(report["bytes"], FILE_SIZE as u64);
    assert_eq!(
        h.http.delete(&url).bearer_auth(TOKEN).send().await?.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.http.get(&url).bearer_auth(TOKEN).send().await?.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.http.delete(&url).bearer_auth(TOKEN).send().await?.status(),
        StatusCode::NOT_FOUND
    );
    // Probes and metrics need no token.
    assert_eq!(
        h.http.get(format!("{base}/healthz")).send().await?.status(),
        StatusCode::OK
    );
    let metrics = h.http.get(format!("{base}/metrics")).send().await?.text().await?;
    assert!(
        metrics.contains("streamscan_worker_jobs_succeeded_total 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_run_stops_rolls_back_and_reports_cancelled() -> Res<()> {
    let h = Harness::start().await?;
    std::fs::write(h.dir.path().join("sources/big.bin"), test_file(2))?;
    let (_worker, _) = h.worker("s1", "s1", &["--throttle-bytes-per-sec", "1048576"]).await?;
    let job = h
        .job(
            "big",
            "s1",
            json!({"volume": {"path": "big.bin"}}),
            &["digest", "entropy"],
        )
        .await?;
    let uid = job.metadata.uid.clone().ok_or("uid")?;
    // Mid-run: a checkpoint is on disk and the file is not finished.
    h.wait("big", "checkpointed", |j| checkpoint_bytes(j) > 0).await?;
    assert!(
        h.data_dir("s1")
            .join("jobs")
            .join(&uid)
            .join("checkpoint.json")
            .exists()
    );
    h.jobs
        .patch(
            "big",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cancel": true}})),
        )
        .await?;
    let started = std::time::Instant::now();
    let done = h.wait_state("big", ExecutionState::Cancelled).await?;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        started.elapsed()
    );
    let bytes = done
        .status
        .and_then(|s| s.progress)
        .map(|p| p.bytes_processed)
        .unwrap_or(0);
    assert!(bytes < FILE_SIZE as i64, "the job was cancelled mid-run, at {bytes}");
    assert!(!h.data_dir("s1").join("jobs").join(&uid).exists(), "checkpoint deleted");
    assert!(
        !h.data_dir("s1")
            .join("results")
            .join(format!("{uid}.json.zst"))
            .exists()
    );
    let events = h.events("big-e1").await?;
    check_stream(&events, EventStatus::Cancelled);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_resumes_from_its_checkpoint_without_gap_or_repeat() -> Res<()> {
    let h = Harness::start().await?;
    let sha = h.files.add("r.bin", test_file(3));
    let throttle = ["--throttle-bytes-per-sec", "1048576"];
    let (mut first, _) = h.worker("s1", "w1", &throttle).await?;
    h.job(
        "r",
        "s1",
        json!({"url": {"location": h.url("plain", "r.bin"), "sha256": sha}}),
        &["digest", "secrets"],
    )
    .await?;
    let mid = h.wait("r", "checkpointed", |j| checkpoint_bytes(j) >= 1 << 20).await?;
    let checkpoint = checkpoint_bytes(&mid);
    first.kill().await?;
    let requests_before = h.files.ranges.lock().unwrap_or_else(|e| e.into_inner()).len();
    let (_second, _) = h.worker("s1", "w2", &[]).await?;
    let done = h.wait_state("r", ExecutionState::Succeeded).await?;
    assert_eq!(done.status.and_then(|s| s.result).and_then(|r| r.sha256), Some(sha));
    // The second worker asked for the rest of the file only.
    let ranges: Vec<Option<String>> =
        h.files.ranges.lock().unwrap_or_else(|e| e.into_inner())[requests_before..].to_vec();
    let from: u64 = ranges
        .first()
        .cloned()
        .flatten()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .ok_or(format!("the restarted worker did not resume with Range: {ranges:?}"))?;
    assert!(
        from >= checkpoint as u64 && from > 0,
        "resumed at {from}, checkpoint {checkpoint}"
    );
    assert!(h.log("w2").contains("resuming from checkpoint"), "{}", h.log("w2"));
    let events = dedupe(h.events("r-e1").await?);
    check_stream(&events, EventStatus::Completed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_continued_with_range() -> Res<()> {
    let h = Harness::start().await?;
    let sha = h.files.add("d.bin", test_file(4));
    let (_worker, _) = h.worker("s1", "s1", &[]).await?;
    h.job(
        "d",
        "s1",
        json!({"url": {"location": h.url("drop", "d.bin"), "sha256": sha}}),
        &["digest"],
    )
    .await?;
    let done = h.wait_state("d", ExecutionState::Succeeded).await?;
    assert_eq!(done.status.and_then(|s| s.result).and_then(|r| r.sha256), Some(sha));
    let ranges = h.files.ranges.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(ranges.first(), Some(&None));
    assert!(
        ranges
            .iter()
            .skip(1)
            .any(|r| r.as_deref().is_some_and(|r| r != "bytes=0-")),
        "{ranges:?}"
    );
    check_stream(&h.events("d-e1").await?, EventStatus::Completed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sources_fail_fatally_with_a_clear_reason() -> Res<()> {
    let h = Harness::start().await?;
    let outside = h.dir.path().join("outside.bin");
    std::fs::write(&outside, b"secret")?;
    std::os::unix::fs::symlink(&outside, h.dir.path().join("sources/escape"))?;
    // A link to a directory outside, used as an inner component of the path.
    std::os::unix::fs::symlink(h.dir.path(), h.dir.path().join("sources/outdir"))?;
    // A FIFO: opened blocking, it would hang the worker until someone writes to it.
    nix::unistd::mkfifo(
        &h.dir.path().join("sources/fifo"),
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )?;
    h.files.add("m.bin", test_file(5));
    let (_worker, _) = h.worker("s1", "s1", &[]).await?;
    h.job("esc", "s1", json!({"volume": {"path": "escape"}}), &["digest"])
        .await?;
    h.job(
        "esc-dir",
        "s1",
        json!({"volume": {"path": "outdir/outside.bin"}}),
        &["digest"],
    )
    .await?;
    h.job("fifo", "s1", json!({"volume": {"path": "fifo"}}), &["digest"])
        .await?;
    h.job(
        "mis",
        "s1",
        json!({"url": {"location": h.url("plain", "m.bin"), "sha256": "0".repeat(64)}}),
        &["entropy"],
    )
    .await?;
    for (name, reason, says) in [
        ("esc", "PathEscapesRoot", "outside the source volume"),
        ("esc-dir", "PathEscapesRoot", "outside the source volume"),
        ("fifo", "UnsupportedInput", "a FIFO"),
        ("mis", "DigestMismatch", "SHA-256"),
    ] {
        h.failed_fatally(name, reason, says).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_errors_and_an_outage_lose_and_duplicate_nothing() -> Res<()> {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let h = Harness::start().await?;
    std::fs::write(h.dir.path().join("sources/k.bin"), test_file(6))?;
    // Produce requests fail now and then; the idempotent producer retries without duplicates.
    h.mock()?.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    let (_worker, _) = h.worker("s1", "s1", &["--throttle-bytes-per-sec", "1048576"]).await?;
    h.job("k", "s1", json!({"volume": {"path": "k.bin"}}), &["digest"])
        .await?;
    h.wait("k", "started", processed_at_least(256 << 10)).await?;
    h.mock()?.broker_down(1)?;
    // With Kafka down the analysis goes on (its events wait in the buffer).
    h.wait("k", "progressing while Kafka is down", processed_at_least(2 << 20))
        .await?;
    h.mock()?.broker_up(1)?;
    h.wait_state("k", ExecutionState::Succeeded).await?;
    check_stream(&h.events("k-e1").await?, EventStatus::Completed);
    Ok(())
}

/// A real broker killed with SIGKILL mid-job and started again on the same log: the analysis goes
/// on meanwhile, and the job's stream ends complete, with nothing lost and nothing duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_broker_killed_and_restarted_mid_job_loses_and_duplicates_nothing() -> Res<()> {
    let h = Harness::start_real_kafka().await?;
    let real = h.real().ok_or("real broker")?;
    std::fs::write(h.dir.path().join("sources/k.bin"), test_file(6))?;
    let (_worker, _) = h.worker("s1", "s1", &["--throttle-bytes-per-sec", "1048576"]).await?;
    h.job("k", "s1", json!({"volume": {"path": "k.bin"}}), &["digest"])
        .await?;
    h.wait("k", "started", processed_at_least(256 << 10)).await?;
    real.kill9()?;
    h.wait("k", "progressing while Kafka is down", processed_at_least(2 << 20))
        .await?;
    real.restart()?;
    h.wait_state("k", ExecutionState::Succeeded).await?;
    check_stream(&h.events("k-e1").await?, EventStatus::Completed);
    Ok(())
}

/// An event of attempt `event_id` of job `analyze_id`, as a worker would send it.
fn attempt_event(analyze_id: &str, event_id: &str, seq: u64) -> ProgressEvent {
    ProgressEvent {
        user_id: "alice".into(),
        event_id: event_id.into(),
        server_id: "s2".into(),
        analyze_id: analyze_id.into(),
        namespace: "default".into(),
        name: "z".into(),
        attempt: 2,
        status: if seq == 0 {
            EventStatus::Started
        } else {
            EventStatus::Progress
        },
        seq,
        bytes_processed: seq,
        timestamp: jiff::Timestamp::now(),
        ..ProgressEvent::default()
    }
}

/// An attempt's event publisher for job `analyze_id` (transactional id `streamscan-<analyzeId>`,
/// as the worker's), having committed its first event `event_id`/0: once this returns, its
/// init_transactions has taken the transactional id over, fencing every older producer.
/// Returns the publisher and the seqs it commits from now on.
fn attempt_producer(
    bootstrap: &str,
    analyze_id: &str,
    event_id: &str,
) -> Res<(
    streamscan_worker::runtime::events::Publisher,
    std::sync::mpsc::Receiver<u64>,
)> {
    use streamscan_worker::runtime::events::{Publisher, StreamInfo};
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    let info = StreamInfo {
        topic: TOPIC.into(),
        namespace: "default".into(),
        name: "z".into(),
        analyze_id: analyze_id.into(),
        server_id: "s2".into(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let publisher = Publisher::start(
        &config,
        info,
        16,
        Box::new(move |seq: u64, _| {
            let _ = tx.send(seq);
        }),
        // No job backs this producer: a fence means stop.
        Box::new(|| false),
    )?;
    publisher
        .queue()
        .ok_or("queue")?
        .send(attempt_event(analyze_id, event_id, 0))?;
    assert_eq!(rx.recv_timeout(WAIT)?, 1);
    Ok((publisher, rx))
}

/// Every message on the topic of job `analyze_id`, in offset order: (offset, eventId, seq, status).
fn topic_messages(bootstrap: &str, analyze_id: &str, until: usize) -> Res<Vec<(i64, String, u64, EventStatus)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("zombie-check-{}", uuid::Uuid::new_v4()))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[TOPIC])?;
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline && seen.len() < until {
        if let Some(msg) = consumer.poll(Duration::from_millis(200)) {
            let msg = msg?;
            let e = ProgressEvent::from_slice(msg.payload().ok_or("payload")?)?;
            if e.analyze_id == analyze_id {
                seen.push((msg.offset(), e.event_id, e.seq, e.status));
            }
        }
    }
    Ok(seen)
}

/// Producer level: once a newer attempt's producer has started, the old one can commit nothing
/// more and reports itself fenced. librdkafka's mock cluster does not fence (it hands a second
/// producer with the same transactional id a new producer id instead of bumping the epoch), so
/// the test puts Kafka's fencing rule in front of it (`streamscan_kafka_fence`); the next test
/// runs the same on Apache Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_producer_of_an_old_attempt_is_fenced() -> Res<()> {
    let kafka = MockCluster::new(1)?;
    kafka.create_topic(TOPIC, 1, 1)?;
    let fence = FencingProxy::start(&kafka.bootstrap_servers()).await?;
    let bootstrap = fence.bootstrap_servers();
    let analyze_id = format!("uid-z-{}", uuid::Uuid::new_v4());
    let id = analyze_id.clone();
    tokio::task::spawn_blocking(move || zombie_is_fenced(&bootstrap, &id)).await??;
    let txn = format!("streamscan-{analyze_id}");
    let initialised = fence.initialised();
    assert!(
        initialised.len() >= 2 && initialised.iter().all(|t| *t == txn),
        "both attempts use the job's transactional id: {initialised:?}"
    );
    assert!(!fence.refused().is_empty(), "the zombie's requests were refused");
    Ok(())
}

/// The same on a real Apache Kafka broker, started by the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_producer_of_an_old_attempt_is_fenced_by_a_real_kafka_broker() -> Res<()> {
    let kafka = tokio::task::spawn_blocking(streamscan_test_servers::real::Kafka::start).await??;
    kafka.create_topic(TOPIC, 1).await?;
    let bootstrap = kafka.bootstrap.clone();
    let analyze_id = format!("uid-z-{}", uuid::Uuid::new_v4());
    tokio::task::spawn_blocking(move || zombie_is_fenced(&bootstrap, &analyze_id)).await??;
    Ok(())
}

fn zombie_is_fenced(bootstrap: &str, analyze_id: &str) -> Res<()> {
    use streamscan_worker::runtime::events::EventsError;
    let (old, old_rx) = attempt_producer(bootstrap, analyze_id, "old")?;
    // The new attempt's producer: same transactional id, so it fences the old one.
    let (new, _new_rx) = attempt_producer(bootstrap, analyze_id, "new")?;
    // The zombie tries to go on: its send or commit fails as fenced, and nothing gets out.
    let zombie = old.queue().ok_or("queue")?;
    let _ = zombie.send(attempt_event(analyze_id, "old", 1));
    drop(zombie);
    let outcome = old.finish();
    assert!(matches!(outcome, Err(EventsError::Fenced(_))), "{outcome:?}");
    assert!(old_rx.try_recv().is_err(), "the zombie committed nothing more");
    new.finish()?;
    let seen: Vec<(String, u64)> = topic_messages(bootstrap, analyze_id, 3)?
        .into_iter()
        .map(|(_, event_id, seq, _)| (event_id, seq))
        .collect();
    assert_eq!(seen, vec![("old".to_owned(), 0), ("new".to_owned(), 0)]);
    Ok(())
}

/// Process level: a worker whose attempt was taken over (the job re-pinned to attempt 2 on another
/// server, whose producer then started) stops the attempt and reports nothing more: no event
/// after the takeover, no result, no status. Its watch or the fence on Kafka tells it first; on a
/// fence it reads the job, which names the newer attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_fenced_by_a_newer_attempt_stops_and_reports_nothing() -> Res<()> {
    worker_fenced_by_a_newer_attempt(Harness::start_fencing().await?).await
}

/// The same, fenced by a real Apache Kafka broker instead of the fencing proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_fenced_by_a_real_kafka_broker_stops_and_reports_nothing() -> Res<()> {
    worker_fenced_by_a_newer_attempt(Harness::start_real_kafka().await?).await
}

async fn worker_fenced_by_a_newer_attempt(h: Harness) -> Res<()> {
    std::fs::write(h.dir.path().join("sources/z.bin"), test_file(12))?;
    let (_worker, base) = h.worker("s1", "s1", &["--throttle-bytes-per-sec", "524288"]).await?;
    let job = h
        .job("z", "s1", json!({"volume": {"path": "z.bin"}}), &["digest", "secrets"])
        .await?;
    let uid = job.metadata.uid.clone().ok_or("uid")?;
    h.wait("z", "progressing", processed_at_least(512 << 10)).await?;
    // The controller's re-pin, then the new attempt's producer on s2.
    h.jobs
        .patch_status(
            "z",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"serverId": "s2", "attempt": 2, "eventId": "z-e2"}})),
        )
        .await?;
    let bootstrap = h.bootstrap.clone();
    let takeover_uid = uid.clone();
    let (newer, _) = tokio::task::spawn_blocking(move || attempt_producer(&bootstrap, &takeover_uid, "z-e2")).await??;
    let stale = tokio::time::timeout(WAIT, async {
        loop {
            let metrics = h.http.get(format!("{base}/metrics")).send().await?.text().await?;
            if metrics
                .lines()
                .any(|l| l.starts_with("streamscan_worker_jobs_stale_total 1"))
            {
                return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(metrics);
            }
            // Nothing to await but the worker's counter: poll it with a short bounded interval.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .map_err(|_| format!("the worker never stopped the fenced attempt; log:\n{}", h.log("s1")))??;
    assert!(stale.contains("streamscan_worker_jobs_running 0"), "{stale}");
    assert!(
        !h.log("s1").contains("taking the transactional id back"),
        "a fence the job backs is not taken back"
    );
    // Nothing more from the zombie: its events are a gapless prefix, all before the takeover.
    let bootstrap = h.bootstrap.clone();
    let seen = tokio::task::spawn_blocking(move || topic_messages(&bootstrap, &uid, usize::MAX)).await??;
    let takeover = seen
        .iter()
        .find(|(_, e, _, _)| e == "z-e2")
        .map(|(offset, _, _, _)| *offset)
        .ok_or("the newer attempt's event is on the topic")?;
    let old: Vec<_> = seen.iter().filter(|(_, e, _, _)| e == "z-e1").collect();
    assert!(!old.is_empty(), "the old attempt sent events before the takeover");
    for (i, (offset, _, seq, status)) in old.iter().enumerate() {
        assert_eq!(*seq, i as u64, "gapless");
        assert!(*offset < takeover, "event {seq} of the old attempt after the takeover");
        assert!(
            matches!(status, EventStatus::Started | EventStatus::Progress),
            "the zombie sent {status:?}"
        );
    }
    let status = h.jobs.get("z").await?.status.ok_or("status")?;
    let execution = status.execution.ok_or("execution")?;
    assert_eq!(
        (execution.attempt, execution.state),
        (1, ExecutionState::Running),
        "the zombie wrote no end"
    );
    assert_eq!(status.attempt, Some(2), "the re-pin stands");
    assert!(status.result.is_none(), "the zombie reported no result");
    assert!(
        !h.data_dir("s1")
            .join("results")
            .join(format!("{}.json.zst", job.metadata.uid.as_deref().unwrap_or_default()))
            .exists(),
        "no result stored"
    );
    // The worker itself is fine.
    assert!(
        h.http
            .get(format!("{base}/healthz"))
            .send()
            .await?
            .status()
            .is_success()
    );
    newer.finish()?;
    Ok(())
}

/// The race found on the real broker: an older attempt's InitProducerId, still retrying, completes
/// after the current attempt's and fences it although the job names the current attempt. The
/// worker reads the job, takes the transactional id back with a new producer (fencing the late
/// one), sends the interrupted batch again, and the job succeeds with a gapless, unrepeated stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_the_job_does_not_back_is_taken_back_and_the_job_succeeds() -> Res<()> {
    fence_not_backed_by_the_job(Harness::start_fencing().await?).await
}

/// The same on a real Apache Kafka broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_the_job_does_not_back_is_taken_back_on_a_real_kafka_broker() -> Res<()> {
    fence_not_backed_by_the_job(Harness::start_real_kafka().await?).await
}

async fn fence_not_backed_by_the_job(h: Harness) -> Res<()> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    std::fs::write(h.dir.path().join("sources/late.bin"), test_file(13))?;
    let (_worker, base) = h.worker("s1", "s1", &["--throttle-bytes-per-sec", "524288"]).await?;
    let job = h
        .job("late", "s1", json!({"volume": {"path": "late.bin"}}), &["digest"])
        .await?;
    let uid = job.metadata.uid.clone().ok_or("uid")?;
    h.wait("late", "progressing", processed_at_least(256 << 10)).await?;
    // The late registration of an older attempt's producer: the job still names attempt 1 on s1.
    let bootstrap = h.bootstrap.clone();
    let txn = format!("streamscan-{uid}");
    let late = tokio::task::spawn_blocking(move || -> Res<BaseProducer> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("transactional.id", &txn)
            .create()?;
        producer.init_transactions(WAIT)?;
        Ok(producer)
    })
    .await??;
    let running = h.jobs.get("late").await?;
    assert_eq!(
        execution_state(&running),
        Some(ExecutionState::Running),
        "the fence came mid-job"
    );
    h.wait_state("late", ExecutionState::Succeeded).await?;
    let log = h.log("s1");
    assert!(
        log.contains("taking the transactional id back"),
        "the worker says what it did; log:\n{log}"
    );
    let events = h.events("late-e1").await?;
    // The batch the fence interrupted was aborted and sent again: a real broker hides the aborted
    // copy from a read_committed consumer; the mock cluster writes no abort markers, so there the
    // copy is dropped by (eventId, seq) as the gateway does.
    let events = if h.real().is_some() { events } else { dedupe(events) };
    check_stream(&events, EventStatus::Completed);
    let metrics = h.http.get(format!("{base}/metrics")).send().await?.text().await?;
    assert!(
        metrics.lines().any(|l| l == "streamscan_worker_jobs_stale_total 0"),
        "the attempt was not stopped as stale: {metrics}"
    );
    // The late producer is the one fenced now: its transaction cannot commit.
    let committed = tokio::task::spawn_blocking(move || -> Res<()> {
        late.begin_transaction()?;
        late.send(BaseRecord::to(TOPIC).key(uid.as_str()).payload("late"))
            .map_err(|(e, _)| e)?;
        late.commit_transaction(WAIT)?;
        Ok(())
    })
    .await?;
    assert!(committed.is_err(), "the late producer was fenced by the take-back");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_file_is_analysed_and_uploads_are_checked() -> Res<()> {
    let h = Harness::start().await?;
    let data = test_file(7);
    let sha = hex::encode(&Sha256::digest(&data));
    let (_worker, base) = h.worker("s1", "s1", &["--max-upload-bytes", "5000000"]).await?;
    // The job waits for its file.
    let job = h
        .job(
            "up",
            "s1",
            json!({"upload": {"sha256": sha, "fileName": "fw.img"}}),
            &["digest"],
        )
        .await?;
    let uid = job.metadata.uid.clone().ok_or("uid")?;
    let put = |id: String, body: Vec<u8>, digest: Option<String>| {
        let mut req = h.http.put(format!("{base}/uploads/{id}")).bearer_auth(TOKEN).body(body);
        if let Some(d) = digest {
            req = req.header("X-Streamscan-Sha256", d);
        }
        req.send()
    };
    assert_eq!(
        h.http
            .put(format!("{base}/uploads/{uid}"))
            .body("x")
            .send()
            .await?
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        put("other-1".into(), vec![0; 6_000_000], None).await?.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        put("other-2".into(), b"abc".to_vec(), Some("0".repeat(64)))
            .await?
            .status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let r = put(uid.clone(), data.clone(), Some(sha.clone())).await?;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: serde_json::Value = r.json().await?;
    assert_eq!(
        (body["bytes"].as_u64(), body["sha256"].as_str()),
        (Some(data.len() as u64), Some(sha.as_str()))
    );
    assert_eq!(
        put(uid.clone(), b"again".to_vec(), None).await?.status(),
        StatusCode::CONFLICT
    );
    let done = h.wait_state("up", ExecutionState::Succeeded).await?;
    assert_eq!(
        done.status.and_then(|s| s.result).and_then(|r| r.sha256),
        Some(sha.clone())
    );
    check_stream(&h.events("up-e1").await?, EventStatus::Completed);
    // Analysed: the upload is gone from the data directory, and cannot be sent again.
    let uploads = h.data_dir("s1").join("uploads");
    let left: Vec<_> = std::fs::read_dir(&uploads)?.collect::<Result<_, _>>()?;
    assert!(left.is_empty(), "uploads left behind: {left:?}");
    // (A small body: the refusal comes before the body is read, and the connection then closes.)
    assert_eq!(
        put(uid.clone(), b"again".to_vec(), None).await?.status(),
        StatusCode::CONFLICT,
        "a second upload after the analysis"
    );
    Ok(())
}

/// An upload that fails for good (its file is not the one the job names) is deleted with the
/// failure: the data directory keeps nothing of the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatally_failed_upload_leaves_nothing_behind() -> Res<()> {
    let h = Harness::start().await?;
    let data = test_file(8);
    let (_worker, base) = h.worker("s1", "s1", &[]).await?;
    let job = h
        .job(
            "bad-up",
            "s1",
            json!({"upload": {"sha256": "0".repeat(64)}}),
            &["digest"],
        )
        .await?;
    let uid = job.metadata.uid.clone().ok_or("uid")?;
    let r = h
        .http
        .put(format!("{base}/uploads/{uid}"))
        .bearer_auth(TOKEN)
        .body(data)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::CREATED);
    let failed = h.wait_state("bad-up", ExecutionState::Failed).await?;
    let execution = failed.status.and_then(|s| s.execution).ok_or("execution")?;
    assert_eq!(
        (execution.reason.as_deref(), execution.retriable),
        (Some("DigestMismatch"), Some(false))
    );
    let uploads = h.data_dir("s1").join("uploads");
    let left: Vec<_> = std::fs::read_dir(&uploads)?.collect::<Result<_, _>>()?;
    assert!(left.is_empty(), "uploads left behind: {left:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_the_checkpoint_flushes_and_exits_then_the_job_resumes() -> Res<()> {
    let h = Harness::start().await?;
    std::fs::write(h.dir.path().join("sources/t.bin"), test_file(8))?;
    let throttle = ["--throttle-bytes-per-sec", "1048576", "--shutdown-grace-seconds", "10"];
    let (mut first, _) = h.worker("s1", "t1", &throttle).await?;
    let job = h
        .job("t", "s1", json!({"volume": {"path": "t.bin"}}), &["digest"])
        .await?;
    let uid = job.metadata.uid.clone().ok_or("uid")?;
    h.wait("t", "checkpointed", |j| checkpoint_bytes(j) > 0).await?;
    let pid = first.id().ok_or("pid")?;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), first.wait()).await??;
    assert!(exit.success(), "{exit:?}\n{}", h.log("t1"));
    assert!(h.log("t1").contains("stopped for shutdown"), "{}", h.log("t1"));
    assert!(
        h.data_dir("s1")
            .join("jobs")
            .join(&uid)
            .join("checkpoint.json")
            .exists()
    );
    let now = h.jobs.get("t").await?;
    assert_eq!(
        execution_state(&now),
        Some(ExecutionState::Running),
        "shutdown is not a failure"
    );
    let (_second, _) = h.worker("s1", "t2", &[]).await?;
    h.wait_state("t", ExecutionState::Succeeded).await?;
    assert!(h.log("t2").contains("resuming from checkpoint"), "{}", h.log("t2"));
    // A graceful stop commits everything it sent: no repeat even on the mock cluster.
    check_stream(&h.events("t-e1").await?, EventStatus::Completed);
    Ok(())
}

/// A StatefulSet cannot label each pod with its ordinal: the worker labels its own pod with its
/// serverId (from `--pod-name`/`POD_NAME`) before it reports ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_labels_its_own_pod_with_its_server_id() -> Res<()> {
    use k8s_openapi::api::core::v1::Pod;
    use streamscan_kube_sim::kubelet::{Kubelet, PodTemplate};
    let h = Harness::start().await?;
    let client = Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(h.dir.path().join("kubeconfig"))?,
            &Default::default(),
        )
        .await?,
    )?;
    Kubelet::new(client.clone(), "default")
        .register(PodTemplate {
            name: "streamscan-worker-3".into(),
            statefulset: Some("streamscan-worker".into()),
            ..Default::default()
        })
        .await?;
    let (_worker, _base) = h
        .worker("3", "labeller", &["--pod-name", "streamscan-worker-3"])
        .await?;
    let pod = Api::<Pod>::namespaced(client, "default")
        .get("streamscan-worker-3")
        .await?;
    assert_eq!(
        pod.metadata
            .labels
            .unwrap_or_default()
            .get("streamscan.io/server-id")
            .map(String::as_str),
        Some("3"),
        "the worker was ready before its pod carried its serverId"
    );
    Ok(())
}

/// An upload job waiting for its body holds none of the worker's slots: with one slot, a url
/// job placed after it runs to the end while the upload has still not arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_job_waiting_for_its_body_holds_no_slot() -> Res<()> {
    let h = Harness::start().await?;
    h.files.add("u.bin", test_file(23));
    let (_worker, _) = h
        .worker("s1", "s1", &["--capacity", "1", "--upload-wait-seconds", "600"])
        .await?;
    h.job("waiting", "s1", json!({"upload": {"fileName": "fw.img"}}), &["digest"])
        .await?;
    h.job(
        "other",
        "s1",
        json!({"url": {"location": h.url("plain", "u.bin")}}),
        &["digest"],
    )
    .await?;
    h.wait_state("other", ExecutionState::Succeeded).await?;
    let waiting = h.jobs.get("waiting").await?;
    let state = waiting.status.and_then(|s| s.execution).map(|e| e.state);
    assert!(
        !matches!(state, Some(ExecutionState::Failed | ExecutionState::Succeeded)),
        "the upload job still waits: {state:?}"
    );
    Ok(())
}

/// A server that stays connected but sends a trickle (here 160 B/s) does not hold a slot forever:
/// each stall window without enough bytes counts as a dropped connection, resumed with Range,
/// and the job fails (retriable) once the retries are spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_source_is_given_up_as_stalled() -> Res<()> {
    let h = Harness::start().await?;
    h.files.add("slow.bin", test_file(22));
    let (_worker, _) = h
        .worker(
            "s1",
            "s1",
            &["--source-stall-seconds", "1", "--source-stall-min-bytes", "4096"],
        )
        .await?;
    h.job(
        "slow",
        "s1",
        json!({"url": {"location": h.url("trickle", "slow.bin")}}),
        &["digest"],
    )
    .await?;
    let job = h.wait_state("slow", ExecutionState::Failed).await?;
    let e = job.status.and_then(|s| s.execution).ok_or("execution")?;
    assert!(e.message.as_deref().is_some_and(|m| m.contains("stalled")), "{e:?}");
    assert_eq!(e.retriable, Some(true), "another server, or later, may do better");
    // Five Range resumes after the first stall, each of them stalled too.
    let ranges = h.files.ranges.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(ranges.len(), 6, "{ranges:?}");
    assert!(
        ranges[1..].iter().all(Option::is_some),
        "resumed with Range: {ranges:?}"
    );
    Ok(())
}

/// The egress policy: a url source may not reach loopback, link-local (cloud metadata) or private
/// addresses by IP literal, by a name resolving there, or through a redirect hop; credentials in
/// the URL never reach the CR or the events; the Secret's headers are not sent to another origin a
/// redirect leads to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_sources_reach_no_internal_address_even_through_redirects() -> Res<()> {
    use k8s_openapi::api::core::v1::Secret;
    let h = Harness::start().await?;
    h.files.add("e.bin", test_file(21));
    let port = h.files_addr.port();
    // The same files on 127.0.0.2: another origin.
    let other = h.files.start_on("127.0.0.2").await?;
    {
        let mut redirects = h.files.redirects.lock().unwrap_or_else(|e| e.into_inner());
        redirects.insert("loop".into(), format!("http://127.0.0.1:{port}/plain/e.bin"));
        redirects.insert("cross".into(), format!("http://{other}/auth/e.bin"));
        redirects.insert("same".into(), format!("http://localhost:{port}/auth/e.bin"));
    }
    let secrets: Api<Secret> = Api::namespaced(h.jobs.clone().into_client(), "default");
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "key", "labels": {"streamscan.io/url-headers": "true"}},
        "data": {"x-api-key": "azN5"},
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;

    // The default policy: nothing internal.
    let (_strict, _) = h.start_worker("strict", "strict", &[]).await?;
    let url = |location: String| json!({"url": {"location": location}});
    h.job(
        "lit",
        "strict",
        url(format!("http://127.0.0.1:{port}/plain/e.bin")),
        &["digest"],
    )
    .await?;
    h.job(
        "name",
        "strict",
        url(format!("http://localhost:{port}/plain/e.bin")),
        &["digest"],
    )
    .await?;
    h.job(
        "meta",
        "strict",
        url("http://169.254.169.254/latest/meta-data/".into()),
        &["digest"],
    )
    .await?;
    h.job(
        "v6",
        "strict",
        url(format!("http://[::ffff:127.0.0.1]:{port}/plain/e.bin")),
        &["digest"],
    )
    .await?;
    h.job(
        "creds",
        "strict",
        url(format!("http://user:s3cret@127.0.0.1:{port}/plain/e.bin")),
        &["digest"],
    )
    .await?;
    // localhost allowed by name, 127.0.0.2 by range; 127.0.0.1 as an IP literal is not.
    let (_open, _) = h
        .start_worker(
            "open",
            "open",
            &[
                "--egress-allow-host",
                "localhost",
                "--egress-allow-cidr",
                "127.0.0.2/32",
                "--url-headers-secrets",
                "true",
            ],
        )
        .await?;
    let keyed = |location: String| json!({"url": {"location": location, "headersSecretRef": {"name": "key"}}});
    h.job(
        "hop",
        "open",
        url(format!("http://localhost:{port}/to/loop")),
        &["digest"],
    )
    .await?;
    h.job(
        "cross",
        "open",
        keyed(format!("http://localhost:{port}/to/cross")),
        &["digest"],
    )
    .await?;
    h.job(
        "same",
        "open",
        keyed(format!("http://localhost:{port}/to/same")),
        &["digest"],
    )
    .await?;

    h.wait_state("same", ExecutionState::Succeeded).await?;
    for (name, reason, says) in [
        ("lit", "EgressDenied", "127.0.0.1 is a loopback address"),
        ("name", "EgressDenied", "is a loopback address"),
        ("meta", "EgressDenied", "169.254.169.254 is a link-local address"),
        ("v6", "EgressDenied", "127.0.0.1 is a loopback address"),
        ("creds", "EgressDenied", "http://***@127.0.0.1"),
        ("hop", "EgressDenied", "127.0.0.1 is a loopback address"),
        // The header stayed with its origin: 127.0.0.2 answered 401 without it.
        ("cross", "SourceNotFound", "401"),
    ] {
        let (job, events) = h.failed_fatally(name, reason, says).await?;
        let status = serde_json::to_string(&job.status)?;
        let events = format!("{:?}", events.iter().map(|(e, _)| e).collect::<Vec<_>>());
        for text in [&status, &events] {
            assert!(
                !text.contains("s3cret"),
                "{name}: a URL's password reached the CR or events: {text}"
            );
        }
    }
    // One file was served (same, with the header; cross was refused for want of it, and
    // redirects are not counted): nothing the policy denies was ever requested.
    let requests = h.files.ranges.lock().unwrap_or_else(|e| e.into_inner()).len();
    assert_eq!(
        requests, 1,
        "requests reached the file server that the policy should have stopped"
    );
    let log = h.log("strict");
    assert!(!log.contains("s3cret"), "a URL's password reached the log");
    Ok(())
}

/// `headersSecretRef`, allowed on the worker: a Secret labeled `streamscan.io/url-headers=true`
/// has its keys and values sent as request headers. Any other Secret (here one holding an
/// internal token) is treated as missing: the job fails fatally with the same reason and message
/// as for a Secret that does not exist, and nothing of the Secret (not its keys) reaches the CR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_headers_come_only_from_secrets_labeled_for_them() -> Res<()> {
    use k8s_openapi::api::core::v1::Secret;
    let h = Harness::start().await?;
    h.files.add("private.bin", test_file(7));
    let secrets: Api<Secret> = Api::namespaced(h.jobs.clone().into_client(), "default");
    for (name, labels) in [
        ("fw-headers", json!({"streamscan.io/url-headers": "true"})),
        ("internal", json!({})),
    ] {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "labels": labels},
            "data": {"x-api-key": "azN5", "x-internal-token-key": "c2VjcmV0"},
        }))?;
        secrets.create(&PostParams::default(), &secret).await?;
    }
    let (_worker, _base) = h.worker("s1", "s1", &["--url-headers-secrets", "true"]).await?;
    let source =
        |secret: &str| json!({"url": {"location": h.url("auth", "private.bin"), "headersSecretRef": {"name": secret}}});
    h.job("with-key", "s1", source("fw-headers"), &["digest"]).await?;
    h.job("no-secret", "s1", source("missing"), &["digest"]).await?;
    h.job("not-labeled", "s1", source("internal"), &["digest"]).await?;
    h.wait_state("with-key", ExecutionState::Succeeded).await?;
    let mut messages = Vec::new();
    for (name, secret) in [("no-secret", "missing"), ("not-labeled", "internal")] {
        let failed = h.wait_state(name, ExecutionState::Failed).await?;
        let execution = failed.status.and_then(|s| s.execution).ok_or("no execution")?;
        assert_eq!(execution.reason.as_deref(), Some("HeadersSecretNotFound"), "{name}");
        assert_eq!(execution.retriable, Some(false));
        let message = execution.message.unwrap_or_default();
        assert!(message.contains(&format!("default/{secret}")), "{message}");
        assert!(
            !message.contains("x-internal-token-key"),
            "a key of a Secret not allowed: {message}"
        );
        messages.push(message.replace(secret, "<name>"));
    }
    assert_eq!(messages[0], messages[1], "an unlabeled Secret looks missing");
    Ok(())
}

/// With the worker's default (`--url-headers-secrets false`), no Secret is read: the job fails
/// fatally and says how to allow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_headers_secrets_are_off_by_default() -> Res<()> {
    use k8s_openapi::api::core::v1::Secret;
    let h = Harness::start().await?;
    let secrets: Api<Secret> = Api::namespaced(h.jobs.clone().into_client(), "default");
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "fw-headers", "labels": {"streamscan.io/url-headers": "true"}},
        "data": {"x-api-key": "azN5"},
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    let (_worker, _base) = h.worker("s1", "s1", &[]).await?;
    let source = json!({"url": {"location": h.url("auth", "private.bin"), "headersSecretRef": {"name": "fw-headers"}}});
    h.job("off", "s1", source, &["digest"]).await?;
    let failed = h.wait_state("off", ExecutionState::Failed).await?;
    let execution = failed.status.and_then(|s| s.execution).ok_or("no execution")?;
    assert_eq!(execution.reason.as_deref(), Some("HeadersSecretNotAllowed"));
    assert_eq!(execution.retriable, Some(false));
    assert!(
        execution
            .message
            .unwrap_or_default()
            .contains("worker.urlHeadersSecrets=true")
    );
    Ok(())
}

/// Peak resident memory of a process so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> Res<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no VmHWM in /proc/<pid>/status")?;
    Ok(kb * 1024)
}

/// Benchmark (`cargo test --release -p streamscan-worker --test runtime -- --ignored --nocapture
/// bench`): the worker's memory with several large jobs at once. One `serve` process per row
/// (so its peak RSS is that row's), capacity 4, the default analyzer set, each job a 1 GiB file
/// (`STREAMSCAN_BENCH_MIB` to change). Asserts that memory grows by a bounded amount per running
/// job and not at all for jobs that wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_memory_with_several_jobs_at_once() -> Res<()> {
    const ANALYZERS: [&str; 6] = ["digest", "filetype", "entropy", "secrets", "iocs", "components"];
    let mib: usize = std::env::var("STREAMSCAN_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let h = Harness::start().await?;
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(h.dir.path().join("sources/big.bin"))?);
        for block in 0..mib.div_ceil(4) {
            f.write_all(&test_file(block as u64))?;
        }
        f.flush()?;
    }
    let bytes = std::fs::metadata(h.dir.path().join("sources/big.bin"))?.len();
    // (jobs submitted, idle peak, peak, seconds)
    let mut rows = Vec::new();
    for jobs in [1usize, 2, 4, 8] {
        let server = format!("m{jobs}");
        let (child, _) = h.start_worker(&server, &server, &["--capacity", "4"]).await?;
        let pid = child.id().ok_or("worker pid")?;
        let idle = peak_rss(pid)?;
        let started = std::time::Instant::now();
        for j in 0..jobs {
            h.job(
                &format!("{server}-{j}"),
                &server,
                json!({"volume": {"path": "big.bin"}}),
                &ANALYZERS,
            )
            .await?;
        }
        for j in 0..jobs {
            let name = format!("{server}-{j}");
            h.wait_within(Duration::from_secs(1800), &name, "Succeeded", |j| {
                execution_state(j) == Some(ExecutionState::Succeeded)
            })
            .await?;
        }
        let secs = started.elapsed().as_secs_f64();
        rows.push((jobs, idle, peak_rss(pid)?, secs));
        drop(child);
    }
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "\nworker memory, capacity 4, default analyzers, {:.0} MB per job:",
        mb(bytes)
    );
    println!(
        "| jobs submitted | running at once | wall s | MB/s (all jobs) | idle RSS MB | peak RSS MB | per running job MB |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &(jobs, idle, peak, secs) in &rows {
        let running = jobs.min(4);
        println!(
            "| {jobs} | {running} | {secs:.1} | {:.0} | {:.1} | {:.1} | {:.1} |",
            mb(bytes) * jobs as f64 / secs,
            mb(idle),
            mb(peak),
            mb(peak.saturating_sub(idle)) / running as f64
        );
    }
    let growth = |i: usize| rows[i].2.saturating_sub(rows[i].1);
    // Four jobs at once cost at most four times one job (plus a quarter for allocator slack) ...
    assert!(
        growth(2) <= growth(0) * 5,
        "4 jobs grew RSS by {} MB, one by {} MB",
        mb(growth(2)),
        mb(growth(0))
    );
    // ... and the four that wait behind them hold no memory: the peak stays within one job's
    // growth of four jobs' (a finishing job's report write overlaps the next one's start).
    assert!(
        rows[3].2 <= rows[2].2 + growth(0),
        "8 jobs on capacity 4 peaked at {} MB, 4 jobs at {} MB",
        mb(rows[3].2),
        mb(rows[2].2)
    );
    Ok(())
}

/// A worker's status writes are conditional on the job still being at its attempt: once the
/// controller has re-pinned the job (attempt 2 elsewhere), the old attempt's progress, result
/// and failure writes are refused and change nothing on the CR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_writes_of_a_superseded_attempt_change_nothing() -> Res<()> {
    use streamscan_api::{ResultSummary, SeverityCounts};
    use streamscan_worker::runtime::decide::AttemptId;
    use streamscan_worker::runtime::status::{Failure, Snapshot, StatusError, StatusWriter};
    let h = Harness::start().await?;
    h.job("st", "s1", json!({"volume": {"path": "st.bin"}}), &["digest"])
        .await?;
    let attempt = AttemptId {
        attempt: 1,
        event_id: "st-e1".into(),
    };
    let writer = StatusWriter::new(h.jobs.clone(), "st".into(), attempt);
    let snapshot = Snapshot {
        processed: 1 << 20,
        total: Some(4 << 20),
        rate: 1 << 20,
        checkpoint: Some(1 << 20),
    };
    // While the job is at attempt 1, its writer writes.
    writer.running(None).await?;
    writer.progress(&snapshot).await?;
    let written = h.jobs.get("st").await?.status.ok_or("status")?;
    assert_eq!(written.progress.map(|p| p.bytes_processed), Some(1 << 20));
    // The controller re-pins: attempt 2 on s2, execution and progress cleared.
    let repin = json!({"status": {"serverId": "s2", "attempt": 2, "eventId": "st-e2",
                                  "execution": null, "progress": null}});
    h.jobs
        .patch_status("st", &PatchParams::default(), &Patch::Merge(&repin))
        .await?;
    let before = serde_json::to_value(h.jobs.get("st").await?.status)?;
    let summary = ResultSummary {
        bytes: 4 << 20,
        sha256: None,
        findings: SeverityCounts::default(),
        report_digest: "0".repeat(64),
        report_size: 1,
        server_id: "s1".into(),
    };
    let failure = Failure {
        reason: "Interrupted".into(),
        message: "x".into(),
        retriable: true,
    };
    let stale = |r: Result<(), StatusError>| matches!(r, Err(StatusError::Stale { .. }));
    assert!(stale(writer.progress(&snapshot).await), "progress");
    assert!(stale(writer.running(Some(1)).await), "running");
    assert!(stale(writer.succeeded(&summary).await), "result");
    assert!(stale(writer.ended(ExecutionState::Failed, &failure).await), "failure");
    let after = serde_json::to_value(h.jobs.get("st").await?.status)?;
    assert_eq!(before, after, "the superseded attempt changed the CR");
    Ok(())
}
