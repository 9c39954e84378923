//! The scenario suite of issue 8: the whole system, faults included, each scenario against a
//! fresh devstack (`streamscan_devstack`, in-process) or, with the `STREAMSCAN_E2E_*`
//! variables of e2e/README.md, against a real cluster where the chart is installed.
//!
//! Every scenario checks the AnalysisJob, the events read back from Kafka by a read_committed
//! consumer (repeated `(eventId, seq)` are dropped and counted as duplicated, gaps in `seq` as
//! lost), the gateway's Redis history and verdict, and what a WebSocket client received. Each
//! prints the closing table so far (also written to `$CARGO_TARGET_TMPDIR/scenarios-table.txt`);
//! zero lost and zero duplicated is asserted.
//!
//! Sets:
//! - **fast** (default, CI): `happy_paths`, `capacity_30_jobs`, `worker_killed_and_restarted`,
//!   `worker_lost_repins_or_fails_source_lost`, `controller_leader_killed`,
//!   `kafka_outage` (8 s outage), `redis_killed_and_restarted`, `apiserver_down_mid_job`,
//!   `gateway_restarted_ws_resumes`,
//!   `cancel_from_websocket`, `refusals`.
//! - **full** (`STREAMSCAN_SCENARIOS=full`): the same, with the Kafka outage at 30 s, plus
//!   `worker_pod_deleted_repins` (an evicted pod instead of a NotReady one).
//!
//! On a cluster (`STREAMSCAN_E2E_BACKEND=kind`), `happy_paths` (url and upload), `capacity_30_jobs`,
//! `cancel_from_websocket` and `refusals` (fixtures, forged token, foreign user) run; the fault
//! scenarios need the devstack's process control and are skipped with a printed reason.
//!
//! Scenarios run one at a time (a shared lock); `cargo test -p streamscan-e2e --test scenarios --
//! <name>` runs one. `STREAMSCAN_E2E_NO_BUILD=1` skips the `cargo build` of the binaries.

#[path = "scenarios/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::ResourceExt;
use kube::runtime::watcher;
use serde_json::json;
use streamscan_api::{Phase, ProgressEvent};
use streamscan_devstack::Options;
use support::*;

const MIB: usize = 1 << 20;

/// Job name to (phase, serverId), as the capacity watch last saw it.
type Placements = BTreeMap<String, (Phase, Option<String>)>;

/// Worker flags that make a job last: reads throttled, small chunks, frequent checkpoints and
/// progress.
fn slow(opts: &mut Options, bytes_per_sec: usize) {
    opts.worker_args.extend(
        [
            "--throttle-bytes-per-sec",
            &bytes_per_sec.to_string(),
            "--chunk-size",
            "65536",
            "--checkpoint-every-bytes",
            "262144",
            "--progress-interval-ms",
            "250",
        ]
        .map(String::from),
    );
}

/// Runs `body` as scenario `name`, alone, and records its row.
async fn scenario<F>(name: &str, needs_devstack: bool, configure: impl FnOnce(&mut Options), body: F) -> Res
where
    F: AsyncFnOnce(&mut Env, &mut Tally) -> Res,
{
    let _serial = SERIAL.lock().await;
    if needs_devstack && !matches!(backend()?, Backend::Devstack(_)) {
        eprintln!("scenario {name}: skipped on a cluster (it needs the devstack's process control)");
        return Ok(());
    }
    if matches!(backend()?, Backend::Devstack(_)) {
        // Built once per process, before the clock starts.
        tokio::task::spawn_blocking(ensure_binaries).await??;
    }
    let mut tally = Tally::new(name);
    let outcome = async {
        let mut env = Env::start(configure).await?;
        let result = body(&mut env, &mut tally).await;
        let finished = env.finish().await;
        result.and(finished)
    }
    .await;
    tally.close(outcome)
}

const ANALYZERS: &[&str] = &["digest", "filetype", "entropy", "secrets", "iocs"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_paths() -> Res {
    scenario(
        "happy_paths",
        false,
        |o| o.workers = 2,
        async |env, tally| {
            let data = test_file(1, MIB);
            // url
            let source = env.url_source("fw.bin", data.clone())?;
            env.create("happy-url", "alice", source, &[]).await?;
            let ws_url = WsClient::connect(env, "happy-url", "alice").await?;
            // volume (devstack only)
            let ws_volume = if env.is_devstack() {
                let source = env.volume_source("images/fw.bin", &data)?;
                env.create("happy-volume", "alice", source, &[]).await?;
                Some(WsClient::connect(env, "happy-volume", "alice").await?)
            } else {
                None
            };
            // upload through the gateway
            let (status, body) = env.upload("happy-upload", "alice", data.clone()).await?;
            if !status.is_success() {
                return Err(format!("upload answered {status}: {body}").into());
            }
            if body["upload"]["bytes"] != json!(data.len()) {
                return Err(format!("upload answer: {body}").into());
            }
            let ws_upload = WsClient::connect(env, "happy-upload", "alice").await?;

            let mut jobs = vec![("happy-url", ws_url), ("happy-upload", ws_upload)];
            if let Some(ws) = ws_volume {
                jobs.push(("happy-volume", ws));
            }
            for (name, ws) in &jobs {
                let job = check_job(env, tally, name, Expect::Succeeded, Some(ws)).await?;
                if *name == "happy-upload" {
                    // The request's trace, through the CR and Kafka, to the WebSocket push.
                    let traced = |e: &ProgressEvent| {
                        e.traceparent.as_deref().and_then(|t| t.get(3..35)) == Some(support::UPLOAD_TRACE_ID)
                    };
                    let events = ws.events();
                    if events.is_empty() || !events.iter().all(traced) {
                        return Err(format!("{name}: pushed events without the request's trace: {events:?}").into());
                    }
                }
                let result = job.status.and_then(|s| s.result).ok_or("no result")?;
                if env.is_devstack() && result.sha256.as_deref() != Some(sha256(&data).as_str()) {
                    return Err(format!("{name}: result sha256 {:?}", result.sha256).into());
                }
                let report = env.download_and_delete(name, "alice").await?;
                if env.is_devstack() && report["digests"]["sha256"] != json!(sha256(&data)) {
                    return Err(format!("{name}: report digests {}", report["digests"]).into());
                }
            }
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_30_jobs() -> Res {
    scenario(
        "capacity_30_jobs",
        false,
        |o| {
            o.workers = 3;
            o.capacity = 4;
            // 8 s per job: placing a job on the real API server takes a few hundred ms (status,
            // label, Event), and the servers must fill before the first jobs end.
            slow(o, 256 << 10);
        },
        async |env, tally| {
            // Watch every job: per server, Scheduled|Running never above 4.
            let placed: Arc<Mutex<Placements>> = Arc::default();
            let peak: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
            let watch = {
                let (placed, peak) = (placed.clone(), peak.clone());
                let stream = watcher(env.jobs.clone(), watcher::Config::default());
                tokio::spawn(async move {
                    let mut stream = std::pin::pin!(stream);
                    while let Some(Ok(event)) = stream.next().await {
                        let (watcher::Event::Apply(job) | watcher::Event::InitApply(job)) = event else {
                            continue;
                        };
                        let server = job.status.as_ref().and_then(|s| s.server_id.clone());
                        let mut p = placed.lock().unwrap_or_else(|e| e.into_inner());
                        p.insert(job.name_any(), (job.phase(), server));
                        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                        for (phase, server) in p.values() {
                            if matches!(phase, Phase::Scheduled | Phase::Running)
                                && let Some(s) = server
                            {
                                *counts.entry(s.clone()).or_default() += 1;
                            }
                        }
                        let mut peak = peak.lock().unwrap_or_else(|e| e.into_inner());
                        for (s, n) in counts {
                            let e = peak.entry(s).or_default();
                            *e = (*e).max(n);
                        }
                    }
                })
            };
            // All 30 first, so the servers fill however slowly clients connect on a loaded
            // machine; a client connecting late gets the history replayed, then the live events.
            let mut names = Vec::new();
            for i in 0..30u64 {
                let name = format!("load-{i:02}");
                let source = env.url_source(&format!("load-{i}.bin"), test_file(100 + i, 2 * MIB))?;
                env.create(&name, "alice", source, &["digest", "entropy"]).await?;
                names.push(name);
            }
            let mut clients = Vec::new();
            for name in names {
                let ws = WsClient::connect(env, &name, "alice").await?;
                clients.push((name, ws));
            }
            for (name, ws) in &clients {
                check_job(env, tally, name, Expect::Succeeded, Some(ws)).await?;
            }
            watch.abort();
            let peak = peak.lock().unwrap_or_else(|e| e.into_inner()).clone();
            eprintln!("capacity_30_jobs: peak Scheduled|Running per server: {peak:?}");
            if peak.values().any(|&n| n > 4) {
                return Err(format!("capacity exceeded: {peak:?}").into());
            }
            if !peak.values().any(|&n| n == 4) {
                return Err(format!("no server was ever full, so capacity was not tested: {peak:?}").into());
            }
            if peak.len() < 3 {
                return Err(format!("not every server was used: {peak:?}").into());
            }
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_and_restarted() -> Res {
    scenario(
        "worker_killed_and_restarted",
        true,
        |o| {
            o.workers = 2;
            slow(o, 512 << 10);
        },
        async |env, tally| {
            let source = env.volume_source("images/restart.bin", &test_file(2, 4 * MIB))?;
            env.create("restart", "alice", source, ANALYZERS).await?;
            let ws = WsClient::connect(env, "restart", "alice").await?;
            let job = env.wait_progress("restart").await?;
            let server = server_of(&job)?;
            let stack = env.stack()?;
            stack.kill_worker(server, false).await?;
            stack.start_worker(server).await?;
            let done = check_job(env, tally, "restart", Expect::Succeeded, Some(&ws)).await?;
            if server_of(&done)? != server {
                return Err("the job moved instead of resuming on its server".into());
            }
            Ok(())
        },
    )
    .await
}

async fn lost_worker(env: &mut Env, tally: &mut Tally, delete_pod: bool) -> Res {
    // url (and volume): re-pinned to another server, succeeds.
    let source = env.url_source("lost.bin", test_file(3, 3 * MIB))?;
    env.create("lost-url", "alice", source, ANALYZERS).await?;
    let ws = WsClient::connect(env, "lost-url", "alice").await?;
    let job = env.wait_progress("lost-url").await?;
    let first = server_of(&job)?;
    env.stack()?.kill_worker(first, delete_pod).await?;
    let done = check_job(env, tally, "lost-url", Expect::Succeeded, Some(&ws)).await?;
    let status = done.status.clone().unwrap_or_default();
    if server_of(&done)? == first || status.attempt.unwrap_or(1) < 2 {
        return Err(format!(
            "lost-url was not re-pinned: server {:?}, attempt {:?}",
            status.server_id, status.attempt
        )
        .into());
    }
    env.download_and_delete("lost-url", "alice").await?;

    let source = env.volume_source("images/lost.bin", &test_file(4, 3 * MIB))?;
    env.create("lost-volume", "alice", source, ANALYZERS).await?;
    let job = env.wait_progress("lost-volume").await?;
    let second = server_of(&job)?;
    // upload: the file lived on the lost server only, so the job fails SourceLost.
    let (status, body) = env.upload("lost-upload", "alice", test_file(5, 3 * MIB)).await?;
    if !status.is_success() {
        return Err(format!("upload answered {status}: {body}").into());
    }
    let ws_upload = WsClient::connect(env, "lost-upload", "alice").await?;
    let up = env.wait_progress("lost-upload").await?;
    let up_server = server_of(&up)?;
    env.stack()?.kill_worker(up_server, delete_pod).await?;
    let failed = check_job(
        env,
        tally,
        "lost-upload",
        Expect::FailedByController("SourceLost"),
        Some(&ws_upload),
    )
    .await?;
    eprintln!("lost-upload: {}", failure_message(&failed));
    let expect_volume_moves = second == up_server;
    let done = check_job(env, tally, "lost-volume", Expect::Succeeded, None).await?;
    if expect_volume_moves && server_of(&done)? == second {
        return Err("lost-volume was not re-pinned".into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_lost_repins_or_fails_source_lost() -> Res {
    scenario(
        "worker_lost_repins_or_fails",
        true,
        |o| {
            o.workers = 3;
            o.controller_args
                .extend(["--not-ready-grace-seconds", "3"].map(String::from));
            slow(o, MIB);
        },
        async |env, tally| lost_worker(env, tally, false).await,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_pod_deleted_repins() -> Res {
    if !full_set() {
        eprintln!("worker_pod_deleted_repins: full set only (STREAMSCAN_SCENARIOS=full)");
        return Ok(());
    }
    scenario(
        "worker_pod_deleted_repins",
        true,
        |o| {
            o.workers = 3;
            o.controller_args
                .extend(["--not-ready-grace-seconds", "3"].map(String::from));
            slow(o, MIB);
        },
        async |env, tally| lost_worker(env, tally, true).await,
    )
    .await
}

/// A worker frozen mid-job (SIGSTOP, its pod NotReady: a server cut off) while the controller
/// re-pins the job, then let go on where it was: a zombie. The new attempt's producer has taken
/// the job's transactional id over (Kafka fences the old one), the old attempt's status writes are
/// refused, and its watch says the job moved: it stops, reporting nothing. The job succeeds once,
/// on the new server, and the audit finds no gap or duplicate in either attempt's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_paused_comes_back_as_a_zombie() -> Res {
    scenario(
        "worker_paused_zombie",
        true,
        |o| {
            o.workers = 2;
            o.controller_args
                .extend(["--not-ready-grace-seconds", "3"].map(String::from));
            slow(o, MIB);
        },
        async |env, tally| {
            let source = env.url_source("zombie.bin", test_file(12, 6 * MIB))?;
            env.create("zombie", "alice", source, ANALYZERS).await?;
            let ws = WsClient::connect(env, "zombie", "alice").await?;
            let job = env.wait_progress("zombie").await?;
            let first = server_of(&job)?;
            let uid = job.uid().ok_or("no uid")?;
            env.stack()?.pause_worker(first).await?;
            // Re-pinned, and the new attempt under way: its producer holds the transactional id.
            env.wait("zombie", "re-pinned and progressing", |j| {
                let s = j.status.clone().unwrap_or_default();
                s.attempt.unwrap_or(0) >= 2
                    && server_of(j).is_ok_and(|s| s != first)
                    && s.progress.is_some_and(|p| p.bytes_processed > 0)
            })
            .await?;
            env.stack()?.resume_worker(first).await?;
            let done = check_job(env, tally, "zombie", Expect::Succeeded, Some(&ws)).await?;
            let status = done.status.clone().unwrap_or_default();
            let second = server_of(&done)?;
            let result_server = status.result.as_ref().map(|r| r.server_id.clone());
            if second == first || result_server.as_deref() != status.server_id.as_deref() {
                return Err(format!("result from {result_server:?}, job on {:?}", status.server_id).into());
            }
            // The zombie stopped its attempt as stale and kept nothing of it.
            let stack = env.stack()?;
            let port = stack.workers[first].port;
            let data_dir = stack.workers[first].data_dir.clone();
            let metrics = format!("http://127.0.0.1:{port}/metrics");
            within(Duration::from_secs(30), "the zombie to stop its attempt", async {
                loop {
                    let text = reqwest::get(&metrics).await?.text().await?;
                    if text
                        .lines()
                        .any(|l| l.starts_with("streamscan_worker_jobs_stale_total") && !l.ends_with(" 0"))
                    {
                        return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(());
                    }
                    // Nothing to await but the worker's counter: poll it at a short bounded interval.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
            .await??;
            let left = data_dir.join("results").join(format!("{uid}.json.zst"));
            if left.exists() {
                return Err(format!("the zombie kept a result: {}", left.display()).into());
            }
            let refused = stack.kafka.fence().map(|f| f.refused().len()).unwrap_or(0);
            eprintln!("worker_paused_zombie: the broker refused {refused} request(s) of the zombie");
            Ok(())
        },
    )
    .await
}

async fn lease_holder(env: &Env) -> Res<String> {
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(env.client.clone(), "default");
    let lease = leases.get("streamscan-controller").await?;
    Ok(lease.spec.and_then(|s| s.holder_identity).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_leader_killed() -> Res {
    scenario(
        "controller_leader_killed",
        true,
        |o| {
            o.workers = 2;
            slow(o, MIB);
        },
        async |env, tally| {
            let source = env.url_source("lead-a.bin", test_file(6, 3 * MIB))?;
            env.create("lead-a", "alice", source, ANALYZERS).await?;
            let ws = WsClient::connect(env, "lead-a", "alice").await?;
            env.wait_progress("lead-a").await?;
            let leader = lease_holder(env).await?;
            let index: usize = leader
                .strip_prefix("controller-")
                .and_then(|i| i.parse().ok())
                .ok_or(format!("lease held by {leader:?}"))?;
            env.stack()?.kill_controller(index).await;
            // A job created after the kill must be placed by the other replica.
            let source = env.url_source("lead-b.bin", test_file(7, MIB))?;
            env.create("lead-b", "alice", source, ANALYZERS).await?;
            let ws_b = WsClient::connect(env, "lead-b", "alice").await?;
            check_job(env, tally, "lead-a", Expect::Succeeded, Some(&ws)).await?;
            check_job(env, tally, "lead-b", Expect::Succeeded, Some(&ws_b)).await?;
            let now = lease_holder(env).await?;
            if now == leader {
                return Err(format!("the lease is still held by the killed {leader}").into());
            }
            env.stack()?.restart_controller(index)?;
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outage() -> Res {
    let outage = if full_set() { 30 } else { 8 };
    let rate = 256 << 10;
    scenario(
        &format!("kafka_outage_{outage}s"),
        true,
        |o| {
            o.workers = 2;
            slow(o, rate);
        },
        async |env, tally| {
            let size = rate * (outage + 6);
            let source = env.volume_source("images/kafka.bin", &test_file(8, size))?;
            env.create("kafka-out", "alice", source, ANALYZERS).await?;
            let ws = WsClient::connect(env, "kafka-out", "alice").await?;
            env.wait_progress("kafka-out").await?;
            // A real broker's kill and restart block for seconds: off the async workers.
            let stack = env.stack()?;
            tokio::task::block_in_place(|| stack.kafka.down())?;
            // The fault's duration, not a synchronisation.
            tokio::time::sleep(Duration::from_secs(outage as u64)).await;
            let stack = env.stack()?;
            tokio::task::block_in_place(|| stack.kafka.up())?;
            check_job(env, tally, "kafka-out", Expect::Succeeded, Some(&ws)).await?;
            Ok(())
        },
    )
    .await
}

/// Waits (bounded, polling: Redis offers nothing to await) until Redis holds `n` events of the
/// attempt.
async fn wait_redis(env: &Env, uid: &str, event_id: &str, n: usize) -> Res {
    let url = env.redis.clone().ok_or("no Redis URL")?;
    within(Duration::from_secs(60), "the Redis history to be complete", async {
        loop {
            if let Ok(h) = redis_history(&url, uid).await
                && h.get(event_id).is_some_and(|s| s.len() >= n)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted() -> Res {
    scenario(
        "redis_killed_and_restarted",
        true,
        |o| {
            o.workers = 2;
            slow(o, 512 << 10);
        },
        async |env, tally| {
            let source = env.volume_source("images/redis.bin", &test_file(9, 4 * MIB))?;
            env.create("redis-out", "alice", source, ANALYZERS).await?;
            let ws = WsClient::connect(env, "redis-out", "alice").await?;
            let job = env.wait_progress("redis-out").await?;
            let before = job
                .status
                .and_then(|s| s.progress)
                .map(|p| p.bytes_processed)
                .unwrap_or(0);
            env.stack()?.redis.kill().await;
            // Let the stream go on while Redis is away: two more progress writes.
            env.wait("redis-out", "progress while Redis is down", |j| {
                j.status
                    .as_ref()
                    .and_then(|s| s.progress.as_ref())
                    .is_some_and(|p| p.bytes_processed >= before + (256 << 10))
            })
            .await?;
            env.stack()?.redis.restart().await?;
            let done = env.wait_finished("redis-out").await?;
            let uid = done.uid().ok_or("uid")?;
            let event_id = done.status.and_then(|s| s.event_id).ok_or("eventId")?;
            let last = env.log.wait_final(&uid, &event_id).await?;
            wait_redis(env, &uid, &event_id, usize::try_from(last.seq)? + 1).await?;
            check_job(env, tally, "redis-out", Expect::Succeeded, Some(&ws)).await?;
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_down_mid_job() -> Res {
    scenario(
        "apiserver_down_mid_job",
        true,
        |o| {
            o.workers = 2;
            slow(o, 512 << 10);
        },
        async |env, tally| {
            let source = env.volume_source("images/api.bin", &test_file(13, 4 * MIB))?;
            env.create("api-down", "alice", source, ANALYZERS).await?;
            let ws = WsClient::connect(env, "api-down", "alice").await?;
            env.wait_progress("api-down").await?;
            let before = ws.events().len();
            env.stack()?.api.stop().await?;
            if env.jobs.get("api-down").await.is_ok() {
                return Err("the API server still answers after it was stopped".into());
            }
            // The job goes on without the API server: its events still reach the WebSocket
            // client through Kafka and the gateway (a second's worth at 250 ms per event).
            ws.wait("events while the API server is down", |e, _| e.len() >= before + 4)
                .await?;
            // The outage outlasts the controllers' 5 s lease, so the leader cannot renew it: the
            // fault's length, not a synchronisation.
            tokio::time::sleep(Duration::from_secs(7)).await;
            env.stack()?.api.start_again().await?;
            // Status writes that failed meanwhile are retried; the job ends once, on its server.
            check_job(env, tally, "api-down", Expect::Succeeded, Some(&ws)).await?;
            // A leader that could not renew its lease for longer than the lease lasts exits (to
            // stand by again after a restart), as client-go's controllers do; Kubernetes restarts
            // it. Restart those here; a controller that died of anything else stays dead and
            // fails the scenario.
            let restarted = env.stack()?.restart_exited_controllers("lost the leader lease")?;
            if !restarted.is_empty() {
                eprintln!("restarted after losing the lease during the outage: {restarted:?}");
            }
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_restarted_ws_resumes() -> Res {
    scenario(
        "gateway_restarted_ws_resumes",
        true,
        |o| {
            o.workers = 2;
            // librdkafka's mock cluster lacks static membership: the restarted gateway (same
            // group.instance.id) joins as a second member, and the group waits for the killed
            // one: session.timeout.ms - 1 s, then its session expiry, then again (89 s with the
            // 45 s default). A real broker hands the partitions back at once. The devstack runs
            // the gateway on the mock with 6 s sessions, which makes that about 11 s.
            slow(o, 512 << 10);
        },
        async |env, tally| {
            let source = env.volume_source("images/gw.bin", &test_file(10, 4 * MIB))?;
            env.create("gw-restart", "alice", source, ANALYZERS).await?;
            let ws = WsClient::connect(env, "gw-restart", "alice").await?;
            ws.wait("two events before the restart", |e, _| e.len() >= 2).await?;
            env.stack()?.restart_gateway().await?;
            check_job(env, tally, "gw-restart", Expect::Succeeded, Some(&ws)).await?;
            let n = ws.reconnects.load(std::sync::atomic::Ordering::SeqCst);
            if n == 0 {
                return Err("the WebSocket client never had to reconnect".into());
            }
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_websocket() -> Res {
    scenario(
        "cancel_from_websocket",
        false,
        |o| {
            o.workers = 2;
            slow(o, 256 << 10);
        },
        async |env, tally| {
            let source = env.url_source("cancel.bin", test_file(11, 4 * MIB))?;
            env.create("cancel-ws", "alice", source, ANALYZERS).await?;
            let ws = WsClient::connect(env, "cancel-ws", "alice").await?;
            let job = env.wait_progress("cancel-ws").await?;
            ws.send(r#"{"type":"cancel"}"#)?;
            ws.wait("cancelAccepted", |_, r| r.iter().any(|v| v["type"] == "cancelAccepted"))
                .await?;
            let done = check_job(env, tally, "cancel-ws", Expect::Cancelled, Some(&ws)).await?;
            let last = ws.events().last().map(|e| e.status);
            if last != Some(streamscan_api::EventStatus::Cancelled) {
                return Err(format!("last WebSocket event {last:?}").into());
            }
            if done.status.as_ref().and_then(|s| s.result.as_ref()).is_some() {
                return Err("a cancelled job has a result".into());
            }
            // Rollback: nothing of the job is left on its worker.
            if let Some(stack) = env.stack.as_ref() {
                let uid = job.uid().ok_or("uid")?;
                let data = &stack.workers[server_of(&job)?].data_dir;
                for left in [
                    data.join("jobs").join(&uid),
                    data.join("results").join(format!("{uid}.json.zst")),
                ] {
                    if left.exists() {
                        return Err(format!("rollback left {}", left.display()).into());
                    }
                }
            }
            let r = env
                .api(
                    reqwest::Method::GET,
                    &format!("/v1/jobs/{}/cancel-ws/result", env.ns),
                    "alice",
                )
                .await?;
            if r.status() != reqwest::StatusCode::NOT_FOUND {
                return Err(format!("result of a cancelled job: {}", r.status()).into());
            }
            Ok(())
        },
    )
    .await
}

/// Sends only the head of an upload request announcing `len` bytes; returns the status line.
async fn raw_upload_head(env: &Env, name: &str, len: usize) -> Res<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = env.gateway.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    let head = format!(
        "POST /v1/jobs?upload=true&name={name}&namespace={} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: {len}\r\n\r\n",
        env.ns,
        env.token("alice")?
    );
    stream.write_all(head.as_bytes()).await?;
    let mut buf = vec![0u8; 4096];
    let n = within(Duration::from_secs(30), "the gateway's answer", stream.read(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// The expected message of an invalid fixture (its `# expect:` line).
fn expected_message(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("# expect:"))
        .map(|m| m.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals() -> Res {
    scenario(
        "refusals",
        false,
        |o| {
            o.workers = 2;
            o.gateway_args
                .extend(["--max-upload-bytes", "1048576"].map(String::from));
        },
        async |env, tally| {
            // Every invalid fixture, refused at apply time with its message.
            let dir = workspace_root().join("e2e/fixtures/invalid");
            let mut files: Vec<_> = std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .collect();
            files.sort();
            for file in &files {
                let text = std::fs::read_to_string(file)?;
                let expect = expected_message(&text).ok_or(format!("{} has no # expect: line", file.display()))?;
                let docs: Vec<&str> = text.split("\n---\n").collect();
                let (setup, last) = docs.split_at(docs.len() - 1);
                let suffix = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
                let rename = |doc: &str| -> String {
                    // Fresh names, so a cluster run does not meet an earlier run's objects.
                    doc.lines()
                        .map(|l| match l.strip_prefix("  name: ") {
                            Some(n) => format!("  name: {n}-{suffix}"),
                            None => l.to_owned(),
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                for (i, doc) in setup.iter().enumerate() {
                    let path = env.dir.path().join(format!("setup-{i}.yaml"));
                    std::fs::write(&path, rename(doc))?;
                    let (ok, out) = env.kubectl_apply(&path).await?;
                    if !ok {
                        return Err(format!("{}: the first document was refused: {out}", file.display()).into());
                    }
                }
                let path = env.dir.path().join("invalid.yaml");
                std::fs::write(&path, rename(last.first().copied().unwrap_or_default()))?;
                let (ok, out) = env.kubectl_apply(&path).await?;
                if ok || !out.contains(&expect) {
                    return Err(format!(
                        "{}: expected refusal with {expect:?}, kubectl said ({ok}): {out}",
                        file.display()
                    )
                    .into());
                }
            }
            eprintln!("refusals: {} invalid fixtures refused with their messages", files.len());

            // A URL that 404s, a digest mismatch: failed by the worker with a clear reason.
            env.create(
                "bad-404",
                "alice",
                json!({"url": {"location": env.file_url("missing.bin")}}),
                &[],
            )
            .await?;
            let source = env.url_source("digest.bin", test_file(12, 256 << 10))?;
            let mut wrong = source.clone();
            wrong["url"]["sha256"] = json!("0".repeat(64));
            env.create("bad-digest", "alice", wrong, &[]).await?;
            let job = check_job(env, tally, "bad-404", Expect::FailedByWorker("SourceNotFound"), None).await?;
            if !failure_message(&job).contains("404") {
                return Err(format!("bad-404: message {:?}", failure_message(&job)).into());
            }
            check_job(env, tally, "bad-digest", Expect::FailedByWorker("DigestMismatch"), None).await?;

            if env.is_devstack() {
                // A symlink under the source root that points outside it.
                let outside = env.dir.path().join("outside-secret.bin");
                std::fs::write(&outside, b"not for the workers")?;
                let root = env.stack()?.source_root.clone();
                std::os::unix::fs::symlink(&outside, root.join("escape.bin"))?;
                env.create("bad-escape", "alice", json!({"volume": {"path": "escape.bin"}}), &[])
                    .await?;
                let job = check_job(
                    env,
                    tally,
                    "bad-escape",
                    Expect::FailedByWorker("PathEscapesRoot"),
                    None,
                )
                .await?;
                eprintln!("bad-escape: {}", failure_message(&job));

                // An oversized upload: 413, and no job left running.
                // Announced with its Content-Length; the gateway answers before reading the body
                // (so a client that insists on sending it sees the connection closed).
                let answer = raw_upload_head(env, "bad-big", 2 * MIB).await?;
                if !answer.starts_with("HTTP/1.1 413") {
                    return Err(format!("oversized upload answered {answer}").into());
                }
                if env.jobs.get_opt("bad-big").await?.is_some() {
                    return Err("an oversized upload created a job".into());
                }
            }

            // A forged token (signed with another key): 401 everywhere.
            let now = jiff::Timestamp::now().as_second();
            let forged = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &json!({
                    "sub": "alice", "iat": now, "exp": now + 600,
                    "iss": streamscan_devstack::JWT_ISSUER, "aud": streamscan_devstack::JWT_AUDIENCE,
                }),
                &jsonwebtoken::EncodingKey::from_secret(b"not-the-gateway-secret-of-32-bytes"),
            )?;
            let r = env
                .http
                .get(format!("{}/v1/jobs", env.gateway))
                .bearer_auth(&forged)
                .send()
                .await?;
            if r.status() != reqwest::StatusCode::UNAUTHORIZED {
                return Err(format!("forged token: {}", r.status()).into());
            }
            let r = env.http.get(format!("{}/v1/jobs", env.gateway)).send().await?;
            if r.status() != reqwest::StatusCode::UNAUTHORIZED {
                return Err(format!("no token: {}", r.status()).into());
            }

            // A foreign user's job: invisible and untouchable for bob.
            for (method, path) in [
                (reqwest::Method::GET, "bad-digest"),
                (reqwest::Method::POST, "bad-digest/cancel"),
                (reqwest::Method::GET, "bad-digest/result"),
                (reqwest::Method::GET, "bad-digest/history"),
            ] {
                let r = env
                    .api(method.clone(), &format!("/v1/jobs/{}/{path}", env.ns), "bob")
                    .await?;
                if r.status() != reqwest::StatusCode::NOT_FOUND {
                    return Err(format!("bob {method} {path}: {}", r.status()).into());
                }
            }
            let list: serde_json::Value = env.api(reqwest::Method::GET, "/v1/jobs", "bob").await?.json().await?;
            if list["items"].as_array().is_none_or(|a| !a.is_empty()) {
                return Err(format!("bob lists {list}").into());
            }
            if WsClient::connect(env, "bad-digest", "bob").await.is_ok() {
                return Err("bob opened alice's event stream".into());
            }
            let alice = env.get("bad-digest").await?;
            if alice.spec.cancel == Some(true) {
                return Err("bob's cancel reached alice's job".into());
            }
            Ok(())
        },
    )
    .await
}
