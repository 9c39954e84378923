//! The real `streamscan-gateway` binary against a real `redis-server` (started here on a
//! free port), librdkafka's mock Kafka cluster (real protocol on real TCP ports) and the
//! Kubernetes API simulator, with stub workers registered as pods by the simulator's kubelet.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, ResourceExt};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use streamscan_api::names::{LABEL_COMPONENT, LABEL_SERVER_ID};
use streamscan_api::{AnalysisJob, EventStatus, ProgressEvent};
use streamscan_kube_sim::Simulator;
use streamscan_kube_sim::kubelet::{Kubelet, PodTemplate};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

type Res<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const WAIT: Duration = Duration::from_secs(30);
const TOPIC: &str = "streamscan.progress";
const SECRET: &[u8] = b"test-secret-for-the-gateway-of-32-bytes-or-more";
const ISSUER: &str = "https://id.streamscan.test";
const AUDIENCE: &str = "streamscan";
const WORKER_TOKEN: &str = "internal-worker-token";

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Res<T> {
    tokio::time::timeout(WAIT, fut)
        .await
        .map_err(|_| format!("timed out after {WAIT:?} waiting for {what}").into())
}

// ---------------------------------------------------------------- redis-server

struct Redis {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl Redis {
    async fn start(dir: &Path) -> Res<Self> {
        let port = free_port()?;
        Self::start_on(dir, port).await
    }

    /// Starts on `port` with an always-fsynced append-only file in `dir`, so that a restart after
    /// SIGKILL keeps what was written (the outage test needs the data to survive).
    async fn start_on(dir: &Path, port: u16) -> Res<Self> {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!("cannot start redis-server ({e}): install it (Debian: apt-get install redis-server); scripts/test.sh does so as root")
            })?;
        let stdout = child.stdout.take().ok_or("no redis stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        within("redis-server to accept connections", async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("Ready to accept connections") {
                    // Keep draining so redis never blocks on a full pipe.
                    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                    return Ok(());
                }
            }
            Err::<(), Box<dyn std::error::Error + Send + Sync>>("redis-server exited before it was ready".into())
        })
        .await??;
        Ok(Redis {
            port,
            dir: dir.to_owned(),
            child,
        })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn kill(&mut self) -> Res {
        self.child.kill().await?;
        Ok(())
    }

    async fn restart(&mut self) -> Res {
        let fresh = Redis::start_on(&self.dir, self.port).await?;
        *self = fresh;
        Ok(())
    }

    async fn conn(&self) -> Res<redis::aio::MultiplexedConnection> {
        Ok(redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await?)
    }
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// ---------------------------------------------------------------- Kafka

/// The broker the gateway reads: librdkafka's mock cluster (default), or a real Apache Kafka with
/// `STREAMSCAN_TEST_KAFKA=real` (scripts/test.sh runs the suite on both).
enum Broker {
    Mock(MockCluster<'static, rdkafka::producer::DefaultProducerContext>),
    Real(streamscan_test_servers::real::Kafka),
}

struct Kafka {
    broker: Broker,
    producer: FutureProducer,
}

impl Kafka {
    async fn start() -> Res<Self> {
        match std::env::var("STREAMSCAN_TEST_KAFKA").as_deref() {
            Err(_) | Ok("" | "mock") => Self::mock(),
            Ok("real") => Self::real().await,
            Ok(other) => Err(format!("STREAMSCAN_TEST_KAFKA={other}: expected mock or real").into()),
        }
    }

    fn mock() -> Res<Self> {
        let cluster = MockCluster::new(1)?;
        cluster.create_topic(TOPIC, 3, 1)?;
        Self::with(Broker::Mock(cluster))
    }

    async fn real() -> Res<Self> {
        let kafka = tokio::task::spawn_blocking(streamscan_test_servers::real::Kafka::start).await??;
        kafka.create_topic(TOPIC, 3).await?;
        Self::with(Broker::Real(kafka))
    }

    fn with(broker: Broker) -> Res<Self> {
        let bootstrap = match &broker {
            Broker::Mock(cluster) => cluster.bootstrap_servers(),
            Broker::Real(kafka) => kafka.bootstrap.clone(),
        };
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "0")
            .create()?;
        Ok(Kafka { broker, producer })
    }

    fn bootstrap(&self) -> String {
        match &self.broker {
            Broker::Mock(cluster) => cluster.bootstrap_servers(),
            Broker::Real(kafka) => kafka.bootstrap.clone(),
        }
    }

    async fn send(&self, key: &str, payload: &[u8]) -> Res {
        self.producer
            .send(
                FutureRecord::to(TOPIC).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| format!("producing: {e}"))?;
        Ok(())
    }
}

// ---------------------------------------------------------------- the harness

struct Gateway {
    api: SocketAddr,
    ops: SocketAddr,
    child: Child,
}

impl Gateway {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    async fn metric(&self, name: &str) -> Res<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.ops))
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the gateway with SIGTERM, as Kubernetes does, and waits for it to exit.
    async fn terminate(mut self) -> Res<std::process::ExitStatus> {
        let pid = self.pid().ok_or("gateway already exited")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid)?),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(within("the gateway to exit on SIGTERM", self.child.wait()).await??)
    }
}

struct Harness {
    _sim: Simulator,
    dir: tempfile::TempDir,
    jobs: Api<AnalysisJob>,
    kubelet: Kubelet,
    kafka: Kafka,
    redis: Redis,
    http: reqwest::Client,
}

impl Harness {
    async fn start() -> Res<Self> {
        Self::start_on(Kafka::start().await?).await
    }

    async fn start_on(kafka: Kafka) -> Res<Self> {
        let sim = Simulator::start().await?;
        let client = sim.client()?;
        let dir = tempfile::tempdir()?;
        sim.write_kubeconfig(&dir.path().join("kubeconfig"))?;
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/analysisjob.yaml"))?;
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)?;
        let crd: CustomResourceDefinition =
            serde_json::from_value(docs.into_iter().find(|d| !d.is_null()).ok_or("empty CRD file")?)?;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.create(&PostParams::default(), &crd).await?;
        within(
            "the CRD to be established",
            await_condition(crds, "analysisjobs.streamscan.io", conditions::is_crd_established()),
        )
        .await??;
        std::fs::write(dir.path().join("jwt.key"), SECRET)?;
        std::fs::write(dir.path().join("worker.token"), WORKER_TOKEN)?;
        let redis_dir = dir.path().join("redis");
        std::fs::create_dir_all(&redis_dir)?;
        let redis = Redis::start(&redis_dir).await?;
        Ok(Harness {
            kubelet: Kubelet::new(client.clone(), "default"),
            jobs: Api::namespaced(client.clone(), "default"),
            kafka,
            http: reqwest::Client::builder().no_proxy().build()?,
            _sim: sim,
            dir,
            redis,
        })
    }

    /// Starts the gateway binary and waits until its API and ops endpoints listen.
    async fn gateway(&self, name: &str, extra: &[&str]) -> Res<Gateway> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_streamscan-gateway"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--ops-addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(["--kafka-bootstrap", &self.kafka.bootstrap(), "--kafka-topic", TOPIC])
            .args(["--redis-url", &self.redis.url(), "--redis-timeout-ms", "500"])
            .arg("--jwt-hs256-secret-file")
            .arg(self.dir.path().join("jwt.key"))
            .args(["--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE])
            .arg("--worker-token-file")
            .arg(self.dir.path().join("worker.token"))
            .args(["--heartbeat-seconds", "5", "--identity", name])
            .args(extra)
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env("RUST_LOG", "info,streamscan_gateway=debug,rdkafka=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let mut log = tokio::fs::File::create(self.dir.path().join(format!("{name}.log"))).await?;
        let (tx, mut rx) = watch::channel((None::<SocketAddr>, None::<SocketAddr>));
        // Tee the log to a file and pick the bound addresses out of it.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = log.write_all(format!("{line}\n").as_bytes()).await;
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let parse = |k: &str| v.get(k).and_then(Value::as_str).and_then(|s| s.parse().ok());
                    tx.send_modify(|(api, ops)| {
                        *api = api.or(parse("api_addr"));
                        *ops = ops.or(parse("ops_addr"));
                    });
                }
            }
        });
        let (api, ops) = within(&format!("gateway {name} to listen"), async {
            loop {
                if let (Some(api), Some(ops)) = *rx.borrow_and_update() {
                    return Ok((api, ops));
                }
                if rx.changed().await.is_err() {
                    return Err(format!(
                        "gateway {name} exited before listening; log: {}",
                        self.log(name)
                    ));
                }
            }
        })
        .await??;
        Ok(Gateway { api, ops, child })
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    async fn create_job(&self, name: &str, user: &str) -> Res<AnalysisJob> {
        let job: AnalysisJob = serde_json::from_value(json!({
            "apiVersion": "streamscan.io/v1alpha1",
            "kind": "AnalysisJob",
            "metadata": {"name": name},
            "spec": {"userId": user, "source": {"url": {"location": "https://example.com/a.bin"}}},
        }))?;
        Ok(self.jobs.create(&PostParams::default(), &job).await?)
    }

    /// Places the job's first attempt on server "0" as the controller would (the gateway
    /// accepts only events of a placed attempt), and returns that attempt's event stream.
    async fn placed(&self, job: &AnalysisJob, event_id: &str) -> Res<Stream> {
        self.set_attempt(job, 1, event_id, "0", json!([])).await?;
        Ok(Stream {
            job: job.clone(),
            event_id: event_id.to_owned(),
            attempt: 1,
            total: 1000,
        })
    }

    async fn set_attempt(&self, job: &AnalysisJob, attempt: u32, event_id: &str, server: &str, past: Value) -> Res {
        self.jobs
            .patch_status(
                &job.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "attempt": attempt, "eventId": event_id, "serverId": server, "pastAttempts": past,
                }})),
            )
            .await?;
        Ok(())
    }

    async fn send(&self, event: &ProgressEvent) -> Res {
        self.kafka.send(&event.analyze_id, &serde_json::to_vec(event)?).await
    }
}

fn token(user: &str, admin: bool) -> String {
    token_with(user, admin, SECRET)
}

fn token_with(user: &str, admin: bool, secret: &[u8]) -> String {
    let exp = jiff::Timestamp::now().as_second() + 3600;
    sign(
        &json!({"sub": user, "exp": exp, "admin": admin, "iss": ISSUER, "aud": AUDIENCE}),
        secret,
    )
}

fn sign(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(secret)).unwrap_or_default()
}

/// An attempt's event stream, as a worker would produce it.
struct Stream {
    job: AnalysisJob,
    event_id: String,
    attempt: u32,
    total: u64,
}

impl Stream {
    fn at(&self, seq: u64, last: u64) -> ProgressEvent {
        let status = if seq == 0 {
            EventStatus::Started
        } else if seq == last {
            EventStatus::Completed
        } else {
            EventStatus::Progress
        };
        ProgressEvent {
            user_id: self.job.spec.user_id.clone(),
            event_id: self.event_id.clone(),
            server_id: "0".into(),
            analyze_id: self.job.uid().unwrap_or_default(),
            namespace: "default".into(),
            name: self.job.name_any(),
            attempt: self.attempt,
            status,
            seq,
            bytes_processed: if seq == last { self.total } else { seq * 10 },
            total_bytes: Some(self.total),
            timestamp: jiff::Timestamp::now(),
            ..ProgressEvent::default()
        }
    }
}

// ---------------------------------------------------------------- clients

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(gw: &Gateway, job: &str, user_token: &str, after: Option<&str>) -> Res<Ws> {
    let mut url = format!("ws://{}/v1/jobs/default/{job}/events", gw.api);
    if let Some(a) = after {
        url.push_str(&format!("?after={a}"));
    }
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {user_token}").parse()?);
    let (ws, _) = within("the WebSocket handshake", tokio_tungstenite::connect_async(request)).await??;
    Ok(ws)
}

/// Next text message (skipping pings), parsed.
async fn ws_next(ws: &mut Ws) -> Res<Value> {
    within("a WebSocket message", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str::<Value>(&t)?),
                Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}").into()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Err("WebSocket ended".into()),
            }
        }
    })
    .await?
}

async fn ws_seqs(ws: &mut Ws, n: usize) -> Res<Vec<u64>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let v = ws_next(ws).await?;
        out.push(v["seq"].as_u64().ok_or_else(|| format!("no seq in {v}"))?);
    }
    Ok(out)
}

struct Sse {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Sse {
    async fn connect(h: &Harness, gw: &Gateway, job: &str, user_token: &str, last: Option<&str>) -> Res<Self> {
        let mut req = h
            .http
            .get(gw.url(&format!("/v1/jobs/default/{job}/events")))
            .bearer_auth(user_token)
            .header("accept", "text/event-stream");
        if let Some(l) = last {
            req = req.header("last-event-id", l);
        }
        let resp = within("the SSE response", req.send()).await??;
        if resp.status() != 200 {
            return Err(format!("SSE answered {}: {}", resp.status(), resp.text().await?).into());
        }
        Ok(Sse {
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        })
    }

    /// Next event as (id, data), skipping comments.
    async fn next(&mut self) -> Res<(String, String)> {
        within("an SSE event", async {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..end + 2).collect();
                    let (mut id, mut data) = (String::new(), Vec::new());
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("id:") {
                            id = v.trim_start().to_owned();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                        }
                    }
                    if !data.is_empty() {
                        return Ok((id, data.join("\n")));
                    }
                    continue;
                }
                match self.body.next().await {
                    Some(chunk) => self.buf.push_str(std::str::from_utf8(&chunk?)?),
                    None => return Err::<_, Box<dyn std::error::Error + Send + Sync>>("SSE stream ended".into()),
                }
            }
        })
        .await?
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn websocket_and_sse_receive_events_in_order_and_resume_without_gap_or_repeat() -> Res {
    let h = Harness::start().await?;
    let gw = h.gateway("gw", &[]).await?;
    let job = h.create_job("fw", "alice").await?;
    let alice = token("alice", false);
    let s = h.placed(&job, "ev-1").await?;

    let mut ws = ws_connect(&gw, "fw", &alice, None).await?;
    let mut sse = Sse::connect(&h, &gw, "fw", &alice, None).await?;
    // Malformed records first: refused, counted, and the stream goes on. A newline in an id would
    // split the SSE frame of every replay.
    h.kafka.send(&job.uid().unwrap_or_default(), b"{not json").await?;
    let mut forged = s.at(0, 9);
    forged.event_id = "ev-1\nid: forged".into();
    h.send(&forged).await?;
    let sent: Vec<ProgressEvent> = (0..6).map(|i| s.at(i, 9)).collect();
    for e in &sent {
        h.send(e).await?;
    }
    for e in &sent {
        let got = ws_next(&mut ws).await?;
        assert_eq!(got, serde_json::to_value(e)?, "WebSocket push must be the Kafka JSON");
        let (id, data) = sse.next().await?;
        assert_eq!(id, format!("ev-1:{}", e.seq));
        assert_eq!(data, serde_json::to_string(e)?, "SSE data must be the exact Kafka JSON");
    }
    assert!(gw.metric("streamscan_gateway_events_malformed_total").await? >= 2.0);

    // Reconnect after seq 2 (WebSocket) and after seq 4 (SSE Last-Event-ID): history, then live.
    drop(ws);
    drop(sse);
    let mut ws = ws_connect(&gw, "fw", &alice, Some("ev-1:2")).await?;
    let mut sse = Sse::connect(&h, &gw, "fw", &alice, Some("ev-1:4")).await?;
    for i in 6..10 {
        h.send(&s.at(i, 9)).await?;
    }
    assert_eq!(ws_seqs(&mut ws, 7).await?, (3..10).collect::<Vec<_>>());
    let mut ids = Vec::new();
    for _ in 5..10 {
        ids.push(sse.next().await?.0);
    }
    assert_eq!(ids, (5..10).map(|i| format!("ev-1:{i}")).collect::<Vec<_>>());

    // A client that connects after the end gets the whole history once, in order.
    let mut late = ws_connect(&gw, "fw", &alice, None).await?;
    assert_eq!(ws_seqs(&mut late, 10).await?, (0..10).collect::<Vec<_>>());
    // Nothing more is queued for it: a short wait shows no extra (repeated) event.
    let extra = tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            match late.next().await {
                Some(Ok(Message::Text(t))) => return Some(t),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await;
    assert!(extra.is_err() || extra == Ok(None), "repeated event: {extra:?}");
    Ok(())
}

/// Anyone who may write to the topic could push events into another user's stream. The gateway
/// believes an event only when it matches its job: the uid, the owner, and an attempt the
/// controller placed (the current one or a recorded past one) on the server it names.
#[tokio::test]
async fn forged_events_are_refused_and_every_placed_attempt_is_believed() -> Res {
    let h = Harness::start().await?;
    let gw = h.gateway("gw", &[]).await?;
    let job = h.create_job("victim", "alice").await?;
    let uid = job.uid().unwrap_or_default();
    let alice = token("alice", false);
    let s = h.placed(&job, "ev-1").await?;
    let mut ws = ws_connect(&gw, "victim", &alice, None).await?;
    let first = s.at(0, 9);
    h.send(&first).await?;
    assert_eq!(ws_next(&mut ws).await?, serde_json::to_value(&first)?);

    let forge = |change: &dyn Fn(&mut ProgressEvent)| {
        let mut e = s.at(1, 9);
        e.message = Some("forged".into());
        change(&mut e);
        e
    };
    let forged = [
        ("other_user", forge(&|e| e.user_id = "mallory".into())),
        ("unknown_attempt", forge(&|e| e.event_id = "ev-forged".into())),
        ("other_server", forge(&|e| e.server_id = "7".into())),
        ("other_job", forge(&|e| e.analyze_id = "uid-of-nothing".into())),
        ("no_such_job", forge(&|e| e.name = "nobody".into())),
        (
            "unknown_attempt",
            forge(&|e| {
                e.attempt = 2;
                e.event_id = "ev-2".into();
            }),
        ),
    ];
    // All on the job's key, so one partition holds them in order before the genuine event.
    for (_, e) in &forged {
        h.kafka.send(&uid, &serde_json::to_vec(e)?).await?;
    }
    let genuine = s.at(1, 9);
    h.send(&genuine).await?;
    assert_eq!(
        ws_next(&mut ws).await?,
        serde_json::to_value(&genuine)?,
        "the next push after the forged events is the genuine one"
    );
    for reason in ["other_user", "other_server", "other_job", "no_such_job"] {
        let name = format!("streamscan_gateway_events_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(gw.metric(&name).await?, 1.0, "{reason}");
    }
    let name = "streamscan_gateway_events_refused_total{reason=\"unknown_attempt\"}";
    assert_eq!(gw.metric(name).await?, 2.0);
    assert!(
        h.log("gw")
            .contains("does not match its job: userId is not the job's owner")
    );

    // The controller places attempt 2 on server 1; its first events come at once (the gateway's
    // cache may not have heard yet), and a late event of attempt 1 is still believed. An event of
    // attempt 1 claiming the new server is not.
    h.set_attempt(
        &job,
        2,
        "ev-2",
        "1",
        json!([{"attempt": 1, "eventId": "ev-1", "serverId": "0"}]),
    )
    .await?;
    let mut late = s.at(2, 9);
    late.status = EventStatus::Failed;
    late.reason = Some("NetworkError".into());
    let mut second = Stream {
        job: job.clone(),
        event_id: "ev-2".into(),
        attempt: 2,
        total: 1000,
    }
    .at(0, 9);
    second.server_id = "1".into();
    let mut wrong_server = s.at(3, 9);
    wrong_server.server_id = "1".into();
    for e in [&second, &late, &wrong_server] {
        h.send(e).await?;
    }
    assert_eq!(ws_next(&mut ws).await?, serde_json::to_value(&second)?);
    assert_eq!(ws_next(&mut ws).await?, serde_json::to_value(&late)?);
    let history: Vec<Value> = h
        .http
        .get(gw.url("/v1/jobs/default/victim/history"))
        .bearer_auth(&alice)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(history.len(), 4, "{history:?}");
    assert!(
        history
            .iter()
            .all(|e| e["userId"] == "alice" && e.get("message").is_none()),
        "a forged event reached the history: {history:?}"
    );
    within("the wrong-server event to be refused", async {
        loop {
            let name = "streamscan_gateway_events_refused_total{reason=\"other_server\"}";
            if gw.metric(name).await.ok() == Some(2.0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    Ok(())
}

/// A long history is replayed a page (256 events) at a time, in order, across page and attempt
/// boundaries, from a resume point in the middle of a page, and `GET .../history` streams it
/// whole.
#[tokio::test]
async fn a_long_history_replays_in_pages_without_gap_or_repeat() -> Res {
    const N: u64 = 600;
    let h = Harness::start().await?;
    let gw = h.gateway("gw", &[]).await?;
    let job = h.create_job("long", "alice").await?;
    let alice = token("alice", false);
    let mut first = h.placed(&job, "ev-1").await?;
    first.total = N * 10;
    // Attempt 1 fails after 300 events; attempt 2 runs the whole way.
    let mut failed = first.at(299, N - 1);
    failed.status = EventStatus::Failed;
    for seq in 0..299 {
        h.send(&first.at(seq, N - 1)).await?;
    }
    h.send(&failed).await?;
    h.set_attempt(
        &job,
        2,
        "ev-2",
        "0",
        json!([{"attempt": 1, "eventId": "ev-1", "serverId": "0"}]),
    )
    .await?;
    let second = Stream {
        job: job.clone(),
        event_id: "ev-2".into(),
        attempt: 2,
        total: N * 10,
    };
    for seq in 0..N {
        h.send(&second.at(seq, N - 1)).await?;
    }
    let expected: Vec<(String, u64)> = (0..300)
        .map(|s| ("ev-1".to_owned(), s))
        .chain((0..N).map(|s| ("ev-2".to_owned(), s)))
        .collect();
    history_seqs_once(&h, &gw, "long", &alice, expected.len()).await?;

    let mut ws = ws_connect(&gw, "long", &alice, None).await?;
    assert_eq!(
        ws_ids(&mut ws, expected.len()).await?,
        expected,
        "the whole history, in order"
    );
    let mut ws = ws_connect(&gw, "long", &alice, Some("ev-2:300")).await?;
    assert_eq!(
        ws_ids(&mut ws, 299).await?,
        expected[601..].to_vec(),
        "from mid-page on"
    );
    let mut ws = ws_connect(&gw, "long", &alice, Some("ev-1:255")).await?;
    assert_eq!(
        ws_ids(&mut ws, 644).await?,
        expected[256..].to_vec(),
        "across the attempt boundary"
    );

    let history: Vec<Value> = h
        .http
        .get(gw.url("/v1/jobs/default/long/history"))
        .bearer_auth(&alice)
        .send()
        .await?
        .json()
        .await?;
    let got: Vec<(String, u64)> = history
        .iter()
        .map(|v| {
            (
                v["eventId"].as_str().unwrap_or_default().to_owned(),
                v["seq"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    assert_eq!(got, expected);
    Ok(())
}

#[tokio::test]
async fn duplicates_and_out_of_order_are_stored_once_in_order_and_verdicts_recorded() -> Res {
    let h = Harness::start().await?;
    let gw = h.gateway("gw", &[]).await?;
    let alice = token("alice", false);

    // Clean stream, delivered out of order and with duplicates before its final event.
    let job = h.create_job("clean", "alice").await?;
    let s = h.placed(&job, "ev-clean").await?;
    let mut ws = ws_connect(&gw, "clean", &alice, None).await?;
    for seq in [0, 2, 1, 1, 0, 2, 3] {
        h.send(&s.at(seq, 3)).await?;
    }
    assert_eq!(ws_seqs(&mut ws, 4).await?, vec![0, 2, 1, 3], "each event pushed once");
    let history: Vec<Value> = h
        .http
        .get(gw.url("/v1/jobs/default/clean/history"))
        .bearer_auth(&alice)
        .send()
        .await?
        .json()
        .await?;
    let seqs: Vec<u64> = history.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, vec![0, 1, 2, 3], "stored once each, in seq order");
    let mut redis = h.redis.conn().await?;
    let key = format!("streamscan:{{{}}}:events:ev-clean", job.uid().unwrap_or_default());
    let card: u64 = redis::cmd("ZCARD").arg(&key).query_async(&mut redis).await?;
    assert_eq!(card, 4);
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut redis).await?;
    assert!(ttl > 0 && ttl <= 600, "history has the default 10 min TTL, got {ttl}");
    let verdict: Value = h
        .http
        .get(gw.url("/v1/jobs/default/clean/verdict"))
        .bearer_auth(&alice)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(verdict["verdicts"][0]["ok"], json!(true), "{verdict}");

    // A stream with a gap is flagged: logged, counted, visible through the API.
    let job = h.create_job("gappy", "alice").await?;
    let s = h.placed(&job, "ev-gap").await?;
    let mut ws = ws_connect(&gw, "gappy", &alice, None).await?;
    for seq in [0, 1, 3] {
        h.send(&s.at(seq, 3)).await?;
    }
    assert_eq!(ws_seqs(&mut ws, 3).await?, vec![0, 1, 3]);
    let verdict: Value = h
        .http
        .get(gw.url("/v1/jobs/default/gappy/verdict"))
        .bearer_auth(&alice)
        .send()
        .await?
        .json()
        .await?;
    let v = &verdict["verdicts"][0];
    assert_eq!(v["ok"], json!(false), "{verdict}");
    assert!(v["problems"].to_string().contains("seq gap"), "{verdict}");
    assert_eq!(gw.metric("streamscan_gateway_verdict_mismatches_total").await?, 1.0);
    assert!(h.log("gw").contains("does not match its history"));
    Ok(())
}

#[tokio::test]
async fn two_replicas_each_push_every_event_and_store_it_once() -> Res {
    let h = Harness::start().await?;
    let a = h.gateway("gw-a", &[]).await?;
    let b = h.gateway("gw-b", &[]).await?;
    let job = h.create_job("shared", "alice").await?;
    let alice = token("alice", false);
    let s = h.placed(&job, "ev-shared").await?;
    let mut wa = ws_connect(&a, "shared", &alice, None).await?;
    let mut wb = ws_connect(&b, "shared", &alice, None).await?;
    for seq in 0..20 {
        h.send(&s.at(seq, 19)).await?;
    }
    assert_eq!(ws_seqs(&mut wa, 20).await?, (0..20).collect::<Vec<_>>());
    assert_eq!(ws_seqs(&mut wb, 20).await?, (0..20).collect::<Vec<_>>());
    let mut redis = h.redis.conn().await?;
    let key = format!("streamscan:{{{}}}:events:ev-shared", job.uid().unwrap_or_default());
    let card: u64 = redis::cmd("ZCARD").arg(&key).query_async(&mut redis).await?;
    assert_eq!(card, 20, "each event stored exactly once");
    let stored = a.metric("streamscan_gateway_events_stored_total").await?
        + b.metric("streamscan_gateway_events_stored_total").await?;
    assert_eq!(stored, 20.0, "the replicas together wrote each event once");
    Ok(())
}

#[tokio::test]
async fn redis_outage_keeps_live_streaming_and_loses_nothing_from_history() -> Res {
    let mut h = Harness::start().await?;
    let gw = h.gateway("gw", &[]).await?;
    let job = h.create_job("outage", "alice").await?;
    let alice = token("alice", false);
    let s = h.placed(&job, "ev-o").await?;
    let mut ws = ws_connect(&gw, "outage", &alice, None).await?;
    for seq in 0..4 {
        h.send(&s.at(seq, 11)).await?;
    }
    assert_eq!(ws_seqs(&mut ws, 4).await?, vec![0, 1, 2, 3]);

    h.redis.kill().await?;
    for seq in 4..8 {
        h.send(&s.at(seq, 11)).await?;
    }
    assert_eq!(
        ws_seqs(&mut ws, 4).await?,
        vec![4, 5, 6, 7],
        "live streaming goes on without Redis"
    );
    let history = h
        .http
        .get(gw.url("/v1/jobs/default/outage/history"))
        .bearer_auth(&alice)
        .send()
        .await?;
    assert_eq!(history.status(), 503);
    assert!(history.text().await?.contains("unavailable"));
    let resume = h
        .http
        .get(gw.url("/v1/jobs/default/outage/events"))
        .bearer_auth(&alice)
        .header("accept", "text/event-stream")
        .header("last-event-id", "ev-o:3")
        .send()
        .await?;
    assert_eq!(resume.status(), 503, "resume needs the history");

    h.redis.restart().await?;
    for seq in 8..12 {
        h.send(&s.at(seq, 11)).await?;
    }
    assert_eq!(
        ws_seqs(&mut ws, 4).await?,
        vec![8, 9, 10, 11],
        "no repeat after the catch-up"
    );
    // History returns once the gateway has re-read what Redis missed.
    let seqs = history_seqs_once(&h, &gw, "outage", &alice, 12).await?;
    assert_eq!(seqs, (0..12).collect::<Vec<_>>());
    assert!(gw.metric("streamscan_gateway_redis_errors_total").await? >= 1.0);
    // And the resume that was refused now works, without gap or repeat.
    let mut ws2 = ws_connect(&gw, "outage", &alice, Some("ev-o:3")).await?;
    assert_eq!(ws_seqs(&mut ws2, 8).await?, (4..12).collect::<Vec<_>>());
    Ok(())
}

/// The job's history seqs once the gateway serves `n` of them (it answers 503 while it catches
/// up, and there is no event to await from outside: poll its API, bounded).
/// The next `n` pushes as (eventId, seq).
async fn ws_ids(ws: &mut Ws, n: usize) -> Res<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let v = ws_next(ws).await?;
        let id = v["eventId"].as_str().unwrap_or_default().to_owned();
        out.push((id, v["seq"].as_u64().unwrap_or(u64::MAX)));
    }
    Ok(out)
}

async fn history_seqs_once(h: &Harness, gw: &Gateway, name: &str, token: &str, n: usize) -> Res<Vec<u64>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = h
            .http
            .get(gw.url(&format!("/v1/jobs/default/{name}/history")))
            .bearer_auth(token)
            .send()
            .await?;
        if resp.status() == 200 {
            let events: Vec<Value> = resp.json().await?;
            let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
            if seqs.len() >= n {
                return Ok(seqs);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("history of {name} never reached {n} events; log: {}", h.log("gw")).into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn redis_emptied_history_is_rebuilt_from_kafka_without_live_repeats() -> Res {
    let h = Harness::start().await?;
    let gw = h.gateway("gw", &[]).await?;
    let alice = token("alice", false);
    // One finished job and one still running when Redis loses everything.
    let done = h.create_job("done", "alice").await?;
    let d = h.placed(&done, "ev-done").await?;
    for seq in 0..=3 {
        h.send(&d.at(seq, 3)).await?;
    }
    let running = h.create_job("running", "alice").await?;
    let r = h.placed(&running, "ev-run").await?;
    let mut ws = ws_connect(&gw, "running", &alice, None).await?;
    for seq in 0..4 {
        h.send(&r.at(seq, 11)).await?;
    }
    assert_eq!(ws_seqs(&mut ws, 4).await?, vec![0, 1, 2, 3]);
    assert_eq!(history_seqs_once(&h, &gw, "done", &alice, 4).await?, vec![0, 1, 2, 3]);
    let rewinds = gw.metric("streamscan_gateway_history_rewinds_total").await?;

    let mut redis = h.redis.conn().await?;
    let () = redis::cmd("FLUSHALL").query_async(&mut redis).await?;
    for seq in 4..12 {
        h.send(&r.at(seq, 11)).await?;
    }
    assert_eq!(
        ws_seqs(&mut ws, 8).await?,
        (4..12).collect::<Vec<_>>(),
        "the re-read is stored, not pushed again"
    );
    assert_eq!(
        history_seqs_once(&h, &gw, "running", &alice, 12).await?,
        (0..12).collect::<Vec<_>>(),
        "the running job's events from before the loss are back"
    );
    assert_eq!(
        history_seqs_once(&h, &gw, "done", &alice, 4).await?,
        vec![0, 1, 2, 3],
        "so are the finished job's, within the TTL"
    );
    assert!(gw.metric("streamscan_gateway_history_rewinds_total").await? > rewinds);
    let mismatches = gw.metric("streamscan_gateway_verdict_mismatches_total").await?;
    assert_eq!(mismatches, 0.0, "no attempt was judged on a partial history");
    Ok(())
}

/// Redis emptied while no gateway ran: the restarted gateway finds no history epoch, and re-reads
/// the last TTL from the offsets a real broker gives for that time (the mock cluster cannot look
/// up offsets by time, so this test always runs on Apache Kafka).
#[tokio::test]
async fn a_gateway_started_on_an_emptied_redis_rebuilds_the_last_ttl_from_a_real_broker() -> Res {
    let h = Harness::start_on(Kafka::real().await?).await?;
    let alice = token("alice", false);
    let gw = h.gateway("gw", &[]).await?;
    let done = h.create_job("before", "alice").await?;
    let d = h.placed(&done, "ev-before").await?;
    for seq in 0..=3 {
        h.send(&d.at(seq, 3)).await?;
    }
    assert_eq!(history_seqs_once(&h, &gw, "before", &alice, 4).await?, vec![0, 1, 2, 3]);
    let status = gw.terminate().await?;
    assert!(status.success(), "graceful exit: {status}");

    let mut redis = h.redis.conn().await?;
    let () = redis::cmd("FLUSHALL").query_async(&mut redis).await?;
    // Same identity, so the same consumer group: its committed offsets are past those events.
    let gw = h.gateway("gw", &[]).await?;
    assert_eq!(
        history_seqs_once(&h, &gw, "before", &alice, 4).await?,
        vec![0, 1, 2, 3],
        "re-read from the broker; log: {}",
        h.log("gw")
    );
    assert_eq!(gw.metric("streamscan_gateway_history_rewinds_total").await?, 1.0);
    Ok(())
}

#[tokio::test]
async fn cancel_over_websocket_and_rest_sets_spec_cancel_for_the_owner_only() -> Res {
    let h = Harness::start().await?;
    let gw = h.gateway("gw", &[]).await?;
    h.create_job("c1", "alice").await?;
    h.create_job("c2", "alice").await?;
    let alice = token("alice", false);
    let mut ws = ws_connect(&gw, "c1", &alice, None).await?;
    ws.send(Message::Text(r#"{"type":"cancel"}"#.into())).await?;
    assert_eq!(ws_next(&mut ws).await?["type"], json!("cancelAccepted"));
    assert_eq!(h.jobs.get("c1").await?.spec.cancel, Some(true));

    let bob = h
        .http
        .post(gw.url("/v1/jobs/default/c2/cancel"))
        .bearer_auth(token("bob", false))
        .send()
        .await?;
    assert_eq!(bob.status(), 404);
    assert_eq!(h.jobs.get("c2").await?.spec.cancel, None);
    let ok = h
        .http
        .post(gw.url("/v1/jobs/default/c2/cancel"))
        .bearer_auth(&alice)
        .send()
        .await?;
    assert_eq!(ok.status(), 202);
    assert_eq!(h.jobs.get("c2").await?.spec.cancel, Some(true));
    Ok(())
}

#[tokio::test]
async fn users_see_only_their_jobs_and_bad_tokens_are_refused() -> Res {
    let h = Harness::start().await?;
    let gw = h.gateway("gw", &[]).await?;
    h.create_job("alices", "alice").await?;
    let get = |path: &str, tok: Option<String>| {
        let mut r = h.http.get(gw.url(path));
        if let Some(t) = tok {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let foreign = get("/v1/jobs/default/alices", Some(token("bob", false))).await?;
    assert_eq!(foreign.status(), 404);
    let foreign_body = foreign.text().await?;
    let missing = get("/v1/jobs/default/nope", Some(token("bob", false))).await?;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        foreign_body.replace("alices", "X"),
        missing.text().await?.replace("nope", "X"),
        "a foreign job looks exactly like a missing one"
    );
    for path in ["events", "history", "verdict", "result"] {
        let r = get(&format!("/v1/jobs/default/alices/{path}"), Some(token("bob", false))).await?;
        assert_eq!(r.status(), 404, "{path}");
    }
    let list: Value = get("/v1/jobs", Some(token("bob", false))).await?.json().await?;
    assert_eq!(list["items"], json!([]));
    let list: Value = get("/v1/jobs", Some(token("alice", false))).await?.json().await?;
    assert_eq!(list["items"][0]["metadata"]["name"], json!("alices"));
    assert_eq!(
        get("/v1/jobs/default/alices", Some(token("root", true)))
            .await?
            .status(),
        200
    );
    assert_eq!(
        get("/v1/jobs/default/alices", Some(token("alice", false)))
            .await?
            .status(),
        200
    );

    let forged = token_with("alice", true, b"not-the-secret");
    assert_eq!(get("/v1/jobs/default/alices", Some(forged)).await?.status(), 401);
    assert_eq!(get("/v1/jobs/default/alices", None).await?.status(), 401);
    assert_eq!(
        get("/v1/jobs/default/alices", Some("garbage".into())).await?.status(),
        401
    );
    let ws = tokio_tungstenite::connect_async(format!("ws://{}/v1/jobs/default/alices/events", gw.api)).await;
    assert!(
        matches!(ws, Err(tungstenite::Error::Http(ref r)) if r.status() == 401),
        "{ws:?}"
    );
    // Oversized headers are refused.
    let big = h
        .http
        .get(gw.url("/v1/jobs"))
        .bearer_auth(token("alice", false))
        .header("x-padding", "a".repeat(20_000))
        .send()
        .await?;
    assert_eq!(big.status(), 431);
    Ok(())
}

/// A token must come from the configured issuer for this audience, be valid now, and travel in
/// the Authorization header except on the streaming route.
#[tokio::test]
async fn tokens_must_name_issuer_and_audience_and_use_the_header_outside_streaming() -> Res {
    let h = Harness::start().await?;
    let gw = h.gateway("gw", &[]).await?;
    h.create_job("alices", "alice").await?;
    let now = jiff::Timestamp::now().as_second();
    let base = json!({"sub": "alice", "exp": now + 600, "iss": ISSUER, "aud": AUDIENCE});
    let with = |key: &str, value: Value| {
        let mut claims = base.clone();
        claims[key] = value;
        sign(&claims, SECRET)
    };
    let without = |key: &str| {
        let mut claims = base.clone();
        claims.as_object_mut().map(|m| m.remove(key));
        sign(&claims, SECRET)
    };
    let status = |tok: String| {
        let r = h.http.get(gw.url("/v1/jobs/default/alices")).bearer_auth(tok).send();
        async move { Ok::<_, reqwest::Error>(r.await?.status().as_u16()) }
    };
    assert_eq!(status(sign(&base, SECRET)).await?, 200, "the well-formed token");
    for (what, tok) in [
        ("another issuer", with("iss", json!("https://evil.example"))),
        ("another audience", with("aud", json!("some-other-service"))),
        ("no issuer", without("iss")),
        ("no audience", without("aud")),
        ("no expiry", without("exp")),
        ("not valid before an hour from now", with("nbf", json!(now + 3600))),
        ("expired", with("exp", json!(now - 3600))),
    ] {
        assert_eq!(status(tok).await?, 401, "{what}");
    }

    // ?access_token= only on the streaming route.
    let good = sign(&base, SECRET);
    let r = h
        .http
        .get(gw.url(&format!("/v1/jobs/default/alices?access_token={good}")))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await?;
    assert!(
        body.to_string().contains("Authorization: Bearer"),
        "the refusal says what to do: {body}"
    );
    for path in ["history", "verdict", "result"] {
        let r = h
            .http
            .get(gw.url(&format!("/v1/jobs/default/alices/{path}?access_token={good}")))
            .send()
            .await?;
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = h
        .http
        .get(gw.url(&format!("/v1/jobs?access_token={good}")))
        .send()
        .await?;
    assert_eq!(r.status(), 401, "list");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/jobs/default/alices/events?access_token={good}",
        gw.api
    ))
    .await?;
    ws.close(None).await?;
    Ok(())
}

/// One user cannot take the installation: unfinished jobs and open streams are limited per user
/// (429 saying which limit), a retried create still answers, and the list is paged.
#[tokio::test]
async fn per_user_limits_and_a_paged_job_list() -> Res {
    let h = Harness::start().await?;
    let gw = h
        .gateway(
            "gw",
            &["--max-active-jobs-per-user", "2", "--max-streams-per-user", "1"],
        )
        .await?;
    let create = |user: &str, key: &str| {
        h.http
            .post(gw.url("/v1/jobs"))
            .bearer_auth(token(user, false))
            .header("idempotency-key", key)
            .json(&json!({"spec": {"source": {"url": {"location": "https://example.com/f.bin"}}}}))
            .send()
    };
    assert_eq!(create("alice", "a1").await?.status(), 201);
    let second: AnalysisJob = create("alice", "a2").await?.json().await?;
    let refused = create("alice", "a3").await?;
    assert_eq!(refused.status(), 429);
    let text = refused.text().await?;
    assert!(
        text.contains("2 unfinished jobs") && text.contains("--max-active-jobs-per-user"),
        "{text}"
    );
    assert_eq!(
        create("alice", "a1").await?.status(),
        200,
        "a retried create answers at the limit"
    );
    assert_eq!(
        create("bob", "b1").await?.status(),
        201,
        "another user has their own limit"
    );
    // A finished job no longer counts.
    h.jobs
        .patch_status(
            &second.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await?;
    assert_eq!(create("alice", "a3").await?.status(), 201);

    // Streams: one per user here.
    let first = ws_connect(&gw, &second.name_any(), &token("alice", false), None).await?;
    let url = format!("ws://{}/v1/jobs/default/{}/events", gw.api, second.name_any());
    let mut request = url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {}", token("alice", false)).parse()?);
    let over = tokio_tungstenite::connect_async(request.clone()).await;
    assert!(
        matches!(over, Err(tungstenite::Error::Http(ref r)) if r.status() == 429),
        "{over:?}"
    );
    let sse = h
        .http
        .get(gw.url(&format!("/v1/jobs/default/{}/events", second.name_any())))
        .bearer_auth(token("alice", false))
        .header("accept", "text/event-stream")
        .send()
        .await?;
    assert_eq!(sse.status(), 429, "SSE counts too");
    drop(first);
    // The slot is freed once the server sees the connection end.
    within("the stream slot to be freed", async {
        loop {
            if tokio_tungstenite::connect_async(request.clone()).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;

    // Paging: alice's three jobs and bob's one, two per page.
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = gw.url("/v1/jobs?limit=2");
        if let Some(token) = &next {
            url.push_str(&format!("&continue={token}"));
        }
        let page: Value = h
            .http
            .get(url)
            .bearer_auth(token("alice", false))
            .send()
            .await?
            .json()
            .await?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= 2, "{page}");
        seen.extend(
            items
                .iter()
                .map(|j| j["spec"]["userId"].as_str().unwrap_or_default().to_owned()),
        );
        pages += 1;
        next = page["metadata"]["continue"].as_str().map(str::to_owned);
        if next.is_none() || pages > 10 {
            break;
        }
    }
    assert_eq!(
        seen,
        ["alice", "alice", "alice"],
        "every one of alice's jobs, nobody else's"
    );
    assert_eq!(pages, 2);
    let bad = h
        .http
        .get(gw.url("/v1/jobs?limit=0"))
        .bearer_auth(token("alice", false))
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    Ok(())
}

/// The gateway refuses to start on an auth setup that would accept forged or foreign tokens, and
/// says which flag to set.
#[tokio::test]
async fn the_gateway_refuses_to_start_without_issuer_audience_or_with_a_weak_secret() -> Res {
    let dir = tempfile::tempdir()?;
    let strong = dir.path().join("strong.key");
    std::fs::write(&strong, SECRET)?;
    let empty = dir.path().join("empty.key");
    std::fs::write(&empty, "\n")?;
    let short = dir.path().join("short.key");
    std::fs::write(&short, "hunter2")?;
    let run = |key: &Path, claims: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamscan-gateway"));
        cmd.args(["--listen", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0"])
            .args(["--kafka-bootstrap", "127.0.0.1:1", "--redis-url", "redis://127.0.0.1:1"])
            .arg("--jwt-hs256-secret-file")
            .arg(key)
            .args(claims)
            .env_remove("STREAMSCAN_JWT_ISSUER")
            .env_remove("STREAMSCAN_JWT_AUDIENCE")
            .env("KUBECONFIG", dir.path().join("no-kubeconfig"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        async move {
            let out = within("the gateway to refuse", cmd.output()).await??;
            Res::Ok((out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned()))
        }
    };
    let both = ["--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE];
    for (what, key, claims, says) in [
        ("no issuer", &strong, &["--jwt-audience", AUDIENCE][..], "--jwt-issuer"),
        ("no audience", &strong, &["--jwt-issuer", ISSUER][..], "--jwt-audience"),
        (
            "an empty issuer",
            &strong,
            &["--jwt-issuer", " ", "--jwt-audience", AUDIENCE][..],
            "--jwt-issuer",
        ),
        ("an empty secret", &empty, &both[..], "0 bytes"),
        ("a short secret", &short, &both[..], "7 bytes"),
    ] {
        let (ok, stderr) = run(key, claims).await?;
        assert!(!ok, "{what}: the gateway started");
        assert!(
            stderr.contains(says),
            "{what}: the error does not say {says:?}: {stderr}"
        );
    }
    Ok(())
}

/// `headersSecretRef` would let any user have the worker send a Secret's values to a URL of
/// theirs: refused unless the installation allows it (`--allow-url-headers-secrets`).
#[tokio::test]
async fn headers_secret_ref_is_refused_unless_allowed() -> Res {
    let h = Harness::start().await?;
    let body = json!({"spec": {"source": {"url": {"location": "https://attacker.example/x",
                                                  "headersSecretRef": {"name": "streamscan-internal-token"}}}}});
    let post = |gw: &Gateway| {
        h.http
            .post(gw.url("/v1/jobs"))
            .bearer_auth(token("alice", false))
            .json(&body)
            .send()
    };
    let gw = h.gateway("gw", &[]).await?;
    let refused = post(&gw).await?;
    assert_eq!(refused.status(), 422);
    let text = refused.text().await?;
    assert!(
        text.contains("spec.source.url.headersSecretRef is not allowed"),
        "{text}"
    );
    assert!(
        h.jobs.list(&Default::default()).await?.items.is_empty(),
        "no job was created"
    );
    drop(gw);
    let allowed = h
        .gateway("gw-allowed", &["--allow-url-headers-secrets", "true"])
        .await?;
    assert_eq!(post(&allowed).await?.status(), 201);
    Ok(())
}

/// A create request's W3C `traceparent` is continued: the job's annotation (which the worker's
/// events continue) and the response's header carry its trace with the gateway's span; without
/// one, or with an invalid one, the job starts a trace of its own.
#[tokio::test]
async fn a_create_requests_trace_is_carried_to_the_job() -> Res {
    const INCOMING: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let h = Harness::start().await?;
    let gw = h.gateway("gw", &[]).await?;
    let body = json!({"spec": {"source": {"url": {"location": "https://example.com/f.bin"}}}});
    let mut traces = Vec::new();
    for incoming in [Some(INCOMING), None, Some("00-garbage")] {
        let mut req = h.http.post(gw.url("/v1/jobs")).bearer_auth(token("alice", false));
        if let Some(tp) = incoming {
            req = req.header("traceparent", tp);
        }
        let resp = req.json(&body).send().await?;
        assert_eq!(resp.status(), 201);
        let answered = resp
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or("no traceparent in the response")?;
        let job: AnalysisJob = resp.json().await?;
        let annotated = job.annotations().get("streamscan.io/traceparent").cloned();
        assert_eq!(
            annotated.as_deref(),
            Some(answered.as_str()),
            "the job continues the answered trace"
        );
        let parsed = streamscan_api::trace::TraceParent::parse(&answered).ok_or("invalid traceparent answered")?;
        traces.push(parsed);
    }
    assert_eq!(
        traces[0].trace_id_hex(),
        "0af7651916cd43dd8448eb211c80319c",
        "the caller's trace"
    );
    assert_ne!(
        traces[0].to_string(),
        INCOMING,
        "with the gateway's own span as the parent"
    );
    assert_ne!(traces[1].trace_id, traces[0].trace_id, "no header: a new trace");
    assert_ne!(traces[2].trace_id, traces[1].trace_id, "an invalid header: a new trace");
    Ok(())
}

#[tokio::test]
async fn create_is_idempotent_and_forces_the_owner() -> Res {
    let h = Harness::start().await?;
    let gw = h.gateway("gw", &[]).await?;
    let body = json!({"spec": {"userId": "mallory", "source": {"url": {"location": "https://example.com/f.bin"}}}});
    let post = || {
        h.http
            .post(gw.url("/v1/jobs"))
            .bearer_auth(token("alice", false))
            .header("idempotency-key", "req-1")
            .json(&body)
            .send()
    };
    let first = post().await?;
    assert_eq!(first.status(), 201);
    let first: AnalysisJob = first.json().await?;
    assert_eq!(
        first.spec.user_id, "alice",
        "the owner is the caller, whatever the body says"
    );
    let again = post().await?;
    assert_eq!(again.status(), 200, "a retried request returns the same job");
    let again: AnalysisJob = again.json().await?;
    assert_eq!(again.name_any(), first.name_any());
    assert_eq!(
        again
            .annotations()
            .get("streamscan.io/idempotency-key")
            .map(String::as_str),
        Some("req-1")
    );
    // The name cannot be computed from the user and the key alone (it is keyed by the
    // installation's secret), and no one can create it through the gateway first.
    let unkeyed = format!("aj-{}", &hex::encode(Sha256::digest(b"\nalice\nreq-1"))[..20]);
    assert_ne!(first.name_any(), unkeyed);
    let squat = h
        .http
        .post(gw.url("/v1/jobs"))
        .bearer_auth(token("bob", false))
        .json(&json!({"metadata": {"name": first.name_any()}, "spec": body["spec"]}))
        .send()
        .await?;
    assert_eq!(squat.status(), 422);
    assert!(squat.text().await?.contains("reserved"), "the refusal says why");
    let bobs = h
        .http
        .post(gw.url("/v1/jobs"))
        .bearer_auth(token("bob", false))
        .header("idempotency-key", "req-1")
        .json(&body)
        .send()
        .await?;
    assert_eq!(bobs.status(), 201, "the same key is another job for another user");
    let bobs: AnalysisJob = bobs.json().await?;
    assert_ne!(bobs.name_any(), first.name_any());
    assert_eq!(bobs.spec.user_id, "bob");
    let invalid = h
        .http
        .post(gw.url("/v1/jobs"))
        .bearer_auth(token("alice", false))
        .json(&json!({"spec": {"source": {}}}))
        .send()
        .await?;
    assert_eq!(invalid.status(), 422, "{}", invalid.text().await?);
    Ok(())
}

/// A stub worker: serves one report and records each call's method, path and Authorization.
type Calls = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

async fn stub_worker(report: &'static [u8]) -> Res<(u16, Calls)> {
    use axum::extract::Request;
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let digest = hex::encode(Sha256::digest(report));
    let app = axum::Router::new().fallback(move |req: Request| {
        let seen = seen.clone();
        let digest = digest.clone();
        async move {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let method = req.method().to_string();
            let path = req.uri().path().to_owned();
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((method.clone(), path.clone(), auth));
            use axum::response::IntoResponse;
            match method.as_str() {
                "GET" => (
                    [
                        ("content-type", "application/zstd".to_owned()),
                        ("x-streamscan-report-sha256", digest),
                    ],
                    report,
                )
                    .into_response(),
                "PUT" => {
                    let bytes = axum::body::to_bytes(req.into_body(), usize::MAX)
                        .await
                        .unwrap_or_default();
                    let answer = json!({"bytes": bytes.len(), "sha256": hex::encode(Sha256::digest(&bytes))});
                    (axum::http::StatusCode::CREATED, answer.to_string()).into_response()
                }
                _ => axum::http::StatusCode::NO_CONTENT.into_response(),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((port, calls))
}

async fn register_worker(h: &Harness, id: &str, port: u16) -> Res {
    register_pod(h, &format!("worker-{id}"), id, port, Some("worker")).await
}

async fn register_pod(h: &Harness, name: &str, id: &str, port: u16, statefulset: Option<&str>) -> Res {
    h.kubelet
        .register(PodTemplate {
            name: name.to_owned(),
            labels: BTreeMap::from([
                (LABEL_COMPONENT.to_owned(), "worker".to_owned()),
                (LABEL_SERVER_ID.to_owned(), id.to_owned()),
            ]),
            annotations: BTreeMap::new(),
            port: Some(port),
            statefulset: statefulset.map(str::to_owned),
        })
        .await?;
    Ok(())
}

/// Pods that copy a worker's labels (anyone who may create pods in the namespace) get neither the
/// download nor the internal token. One that is not a StatefulSet's pod named for its serverId is
/// no server at all: the real worker is served. One shaped like another StatefulSet's member is
/// refused with `--worker-statefulset`, and without that flag makes the serverId a duplicate,
/// which is routed nowhere.
#[tokio::test]
async fn impostor_pods_with_a_workers_server_id_get_no_traffic() -> Res {
    let h = Harness::start().await?;
    let strict = h.gateway("gw-strict", &["--worker-statefulset", "worker"]).await?;
    let loose = h.gateway("gw-loose", &[]).await?;
    let (port_real, calls_real) = stub_worker(b"report").await?;
    let (port_fake, calls_fake) = stub_worker(b"forged").await?;
    register_worker(&h, "b", port_real).await?;
    register_pod(&h, "impostor", "b", port_fake, None).await?;
    h.create_job("done", "alice").await?;
    let digest = hex::encode(Sha256::digest(b"report"));
    h.jobs
        .patch_status(
            "done",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded", "serverId": "b", "result": {
                "bytes": 6, "findings": {"critical": 0, "high": 0, "medium": 0, "low": 0, "info": 0},
                "reportDigest": digest, "reportSize": 6, "serverId": "b"}}})),
        )
        .await?;
    let download = |gw: &Gateway| {
        h.http
            .get(gw.url("/v1/jobs/default/done/result"))
            .bearer_auth(token("alice", false))
            .send()
    };
    for gw in [&strict, &loose] {
        let resp = download(gw).await?;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await?.as_ref(), b"report");
    }
    assert!(
        h.log("gw-loose")
            .contains("not routing to a pod that is not a worker: it is not controlled by a StatefulSet")
    );

    // A member of another StatefulSet, named and indexed for serverId b.
    register_pod(&h, "evil-b", "b", port_fake, Some("evil")).await?;
    let resp = download(&strict).await?;
    assert_eq!(resp.status(), 200, "the strict gateway ignores evil-b");
    assert_eq!(resp.bytes().await?.as_ref(), b"report");
    assert!(h.log("gw-strict").contains("its StatefulSet is evil, not worker"));
    let resp = download(&loose).await?;
    assert_eq!(resp.status(), 503);
    let text = resp.text().await?;
    assert!(text.contains("2 Ready pods") && text.contains("evil-b"), "{text}");
    assert!(
        calls_fake.lock().unwrap_or_else(|p| p.into_inner()).is_empty(),
        "an impostor was called"
    );
    let real_calls = calls_real.lock().unwrap_or_else(|p| p.into_inner()).len();
    assert_eq!(real_calls, 3, "the real worker served the three routed downloads");
    Ok(())
}

#[tokio::test]
async fn result_download_is_routed_by_server_id_and_delete_needs_a_verified_download() -> Res {
    const REPORT: &[u8] = b"(zstd bytes of the report)";
    let h = Harness::start().await?;
    let gw = h.gateway("gw", &[]).await?;
    let (port_a, calls_a) = stub_worker(b"wrong server").await?;
    let (port_b, calls_b) = stub_worker(REPORT).await?;
    register_worker(&h, "a", port_a).await?;
    register_worker(&h, "b", port_b).await?;
    let job = h.create_job("done", "alice").await?;
    let uid = job.uid().unwrap_or_default();
    let digest = hex::encode(Sha256::digest(REPORT));
    h.jobs
        .patch_status(
            "done",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded", "serverId": "b", "result": {
                "bytes": 1000, "findings": {"critical": 0, "high": 1, "medium": 0, "low": 0, "info": 2},
                "reportDigest": digest, "reportSize": REPORT.len(), "serverId": "b"}}})),
        )
        .await?;
    let alice = token("alice", false);
    let url = gw.url("/v1/jobs/default/done/result");

    let early = h
        .http
        .delete(&url)
        .bearer_auth(&alice)
        .header("x-streamscan-report-sha256", &digest)
        .send()
        .await?;
    assert_eq!(early.status(), 409, "no delete before a download");

    let resp = h.http.get(&url).bearer_auth(&alice).send().await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("x-streamscan-report-sha256")
            .and_then(|v| v.to_str().ok()),
        Some(digest.as_str())
    );
    assert_eq!(
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/zstd")
    );
    let body = resp.bytes().await?;
    assert_eq!(&body[..], REPORT);
    assert_eq!(hex::encode(Sha256::digest(&body)), digest);
    assert!(calls_a.lock().unwrap().is_empty(), "server a must not be called");
    assert_eq!(
        calls_b.lock().unwrap().clone(),
        vec![(
            "GET".into(),
            format!("/results/{uid}"),
            Some(format!("Bearer {WORKER_TOKEN}"))
        )]
    );
    within(
        "status.download.fetchedAt",
        await_condition(h.jobs.clone(), "done", |j: Option<&AnalysisJob>| {
            j.and_then(|j| j.status.as_ref()?.download.as_ref()?.fetched_at.as_ref())
                .is_some()
        }),
    )
    .await??;

    let missing = h.http.delete(&url).bearer_auth(&alice).send().await?;
    assert_eq!(missing.status(), 428);
    let wrong = h
        .http
        .delete(&url)
        .bearer_auth(&alice)
        .header("x-streamscan-report-sha256", "00".repeat(32))
        .send()
        .await?;
    assert_eq!(wrong.status(), 412);
    assert_eq!(calls_b.lock().unwrap().len(), 1, "no delete on a digest mismatch");
    let foreign = h
        .http
        .delete(&url)
        .bearer_auth(token("bob", false))
        .header("x-streamscan-report-sha256", &digest)
        .send()
        .await?;
    assert_eq!(foreign.status(), 404);

    let ok = h
        .http
        .delete(&url)
        .bearer_auth(&alice)
        .header("x-streamscan-report-sha256", &digest)
        .send()
        .await?;
    assert_eq!(ok.status(), 204);
    assert_eq!(
        calls_b.lock().unwrap().last().cloned(),
        Some((
            "DELETE".into(),
            format!("/results/{uid}"),
            Some(format!("Bearer {WORKER_TOKEN}"))
        ))
    );
    let download = h
        .jobs
        .get("done")
        .await?
        .status
        .and_then(|s| s.download)
        .ok_or("no download status")?;
    assert!(download.deleted && download.deleted_at.is_some() && download.fetched_at.is_some());
    assert!(calls_a.lock().unwrap().is_empty());
    assert_eq!(h.http.get(&url).bearer_auth(&alice).send().await?.status(), 410);
    Ok(())
}

#[tokio::test]
async fn upload_is_streamed_to_the_pinned_worker_once_placed() -> Res {
    let h = Harness::start().await?;
    let gw = h.gateway("gw", &["--max-upload-bytes", "4000000"]).await?;
    let (port, calls) = stub_worker(b"").await?;
    register_worker(&h, "7", port).await?;
    // Play the controller: pin the job to server 7 once it appears.
    let jobs = h.jobs.clone();
    let placer = tokio::spawn(async move {
        let created = within(
            "the upload job",
            await_condition(jobs.clone(), "up", |j: Option<&AnalysisJob>| j.is_some()),
        )
        .await;
        if created.is_ok() {
            let _ = jobs
                .patch_status(
                    "up",
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"status": {"phase": "Scheduled", "serverId": "7", "attempt": 1, "eventId": "e"}}),
                    ),
                )
                .await;
        }
    });
    let file: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let sha = hex::encode(Sha256::digest(&file));
    let resp = h
        .http
        .post(gw.url(&format!("/v1/jobs?upload=true&name=up&fileName=fw.bin&sha256={sha}")))
        .bearer_auth(token("alice", false))
        .header("idempotency-key", "up-1")
        .body(file.clone())
        .send()
        .await?;
    let status = resp.status();
    let answer: Value = resp.json().await?;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["upload"]["bytes"], json!(file.len()));
    assert_eq!(answer["upload"]["sha256"], json!(sha));
    placer.await?;
    let job = h.jobs.get("up").await?;
    assert_eq!(
        job.spec.source.upload.as_ref().and_then(|u| u.size_bytes),
        Some(3_000_000)
    );
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1, format!("/uploads/{}", job.uid().unwrap_or_default()));

    // Announce a body past the limit and send none: the answer must come from the headers alone.
    let mut tcp = tokio::net::TcpStream::connect(gw.api).await?;
    let head = format!(
        "POST /v1/jobs?upload=true&name=big HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 5000000\r\n\r\n",
        token("alice", false)
    );
    tcp.write_all(head.as_bytes()).await?;
    let mut answer = vec![0u8; 12];
    within(
        "the 413 answer",
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut answer),
    )
    .await??;
    let too_big = String::from_utf8_lossy(&answer).to_string();
    assert_eq!(too_big, "HTTP/1.1 413", "past --max-upload-bytes");
    assert!(
        h.jobs.get_opt("big").await?.is_none(),
        "refused before any job was created"
    );
    Ok(())
}

/// Resident memory of a process, from /proc (Linux).
fn rss_bytes(pid: u32) -> Res<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no VmRSS")?;
    Ok(kb * 1024)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Events per second from Kafka to many WebSocket clients, delivery latency and gateway memory per
/// connection. Run: `cargo test --release -p streamscan-gateway --test gateway -- --ignored --nocapture bench`
/// (`BENCH_CLIENTS`, `BENCH_EVENTS` override the defaults of 1000 clients and 2000 events;
/// `BENCH_RATE` paces production in events/s, default: one burst).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly in release mode"]
async fn bench_fanout_to_websocket_clients() -> Res {
    let clients: usize = std::env::var("BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let events: u64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let h = Harness::start().await?;
    let gw = h.gateway("gw", &["--client-queue", "8192"]).await?;
    let pid = gw.pid().ok_or("gateway has no pid")?;
    let job = h.create_job("bench", "alice").await?;
    let alice = token("alice", false);
    // Warm the path (job lookup, Redis, Kafka assignment) with one event seen by one client.
    let mut s = h.placed(&job, "ev-bench").await?;
    // Keep bytesProcessed (seq * 10) within totalBytes, or the events would be refused.
    s.total = (events + 2) * 10;
    let mut warm = ws_connect(&gw, "bench", &alice, None).await?;
    h.send(&s.at(0, events + 1)).await?;
    ws_seqs(&mut warm, 1).await?;
    drop(warm);
    let rss_before = rss_bytes(pid)?;

    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Vec<u64>>(clients);
    let mut connected = 0;
    for _ in 0..clients {
        let mut ws = ws_connect(&gw, "bench", &alice, Some("ev-bench:0")).await?;
        let done = done_tx.clone();
        tokio::spawn(async move {
            #[derive(serde::Deserialize)]
            struct Ts {
                timestamp: jiff::Timestamp,
                seq: u64,
            }
            let mut lat = Vec::with_capacity(usize::try_from(events).unwrap_or(0));
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = msg
                    && let Ok(ev) = serde_json::from_str::<Ts>(&t)
                {
                    let micros = jiff::Timestamp::now().duration_since(ev.timestamp).as_micros().max(0);
                    lat.push(u64::try_from(micros).unwrap_or(0));
                    if ev.seq >= events || lat.len() as u64 >= events {
                        break;
                    }
                }
            }
            let _ = done.send(lat).await;
        });
        connected += 1;
    }
    drop(done_tx);
    let rss_after = rss_bytes(pid)?;
    let per_conn = (rss_after.saturating_sub(rss_before)) / u64::try_from(connected)?;

    let start = Instant::now();
    // Enqueue in seq order (one partition keeps it) without waiting for each delivery report;
    // BENCH_RATE > 0 paces production to measure latency below saturation.
    let rate: u64 = std::env::var("BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut pending = Vec::new();
    for seq in 1..=events {
        if rate > 0 {
            let due = start + Duration::from_secs_f64((seq - 1) as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let e = s.at(seq, events + 1);
        let payload = serde_json::to_vec(&e)?;
        let delivery = h
            .kafka
            .producer
            .send_result(FutureRecord::to(TOPIC).key(&e.analyze_id).payload(&payload))
            .map_err(|(e, _)| e.to_string())?;
        pending.push(delivery);
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e.to_string())?;
    }
    let produced = start.elapsed();
    let mut all = Vec::new();
    let mut finished = 0;
    tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(lat) = done_rx.recv().await {
            all.extend(lat);
            finished += 1;
        }
    })
    .await
    .map_err(|_| format!("only {finished} of {clients} clients got every event within 300 s"))?;
    let elapsed = start.elapsed();
    all.sort_unstable();
    let delivered = all.len();
    #[allow(clippy::cast_precision_loss)]
    let (rate_in, rate_out) = (
        events as f64 / elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64(),
    );
    println!(
        "| clients | events | produce s | total s | events/s (Kafka→gateway) | pushes/s (to clients) | p50 ms | p99 ms | max ms | RSS before MiB | RSS after MiB | RSS per connection KiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    #[allow(clippy::cast_precision_loss)]
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "| {clients} | {events} | {:.2} | {:.2} | {rate_in:.0} | {rate_out:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        produced.as_secs_f64(),
        elapsed.as_secs_f64(),
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.99)),
        ms(all.last().copied().unwrap_or(0)),
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
        per_conn as f64 / 1024.0,
    );
    assert_eq!(finished, clients);
    assert_eq!(
        delivered,
        clients * usize::try_from(events)?,
        "every client got every event once"
    );
    Ok(())
}
