//! The CRD on a real kube-apiserver (with etcd and kube-controller-manager, built by
//! `scripts/real/build-k8s.sh`): what the simulator's tests prove, proven again by the server a
//! user meets. Every CEL rule refuses its fixture through `kubectl apply` with its message;
//! printer columns, the status subresource, server-side apply, finalizers and garbage collection
//! behave as the controller relies on; the API server restarted mid-watch loses nothing.

use streamscan_kube_sim::kubectl as common;

use common::{Kubectl, TestResult, WAIT, apply_samples, every_invalid_fixture_is_refused, sample_job};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use streamscan_api::AnalysisJob;
use streamscan_api::names::FINALIZER_RESULTS;
use streamscan_test_servers::real::ControlPlane;

/// The garbage collector picks a new CRD up at a discovery resync (every 30 s; seen: up to 70 s).
const GC_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

async fn with_crd() -> Result<(ControlPlane, kube::Client, Kubectl), Box<dyn std::error::Error>> {
    let plane = tokio::task::spawn_blocking(ControlPlane::start).await??;
    let client = plane.client().await?;
    let kubectl = Kubectl::new()?;
    std::fs::copy(&plane.kubeconfig, kubectl.kubeconfig())?;
    kubectl.install_crd().await?;
    Ok((plane, client, kubectl))
}

#[tokio::test]
async fn every_invalid_fixture_is_refused_by_the_real_apiserver_with_its_message() -> TestResult {
    let (_plane, _client, kubectl) = with_crd().await?;
    every_invalid_fixture_is_refused(&kubectl).await
}

#[tokio::test]
async fn samples_apply_and_print_their_columns_and_status_is_a_subresource() -> TestResult {
    let (_plane, client, kubectl) = with_crd().await?;
    apply_samples(&kubectl).await?;

    let jobs: Api<AnalysisJob> = Api::default_namespaced(client);
    // A status write cannot change the spec, and a spec write cannot change the status.
    jobs.patch_status(
        "firmware-from-url",
        &PatchParams::default(),
        &Patch::Merge(json!({
            "spec": {"userId": "mallory"},
            "status": {"phase": "Running", "serverId": "3", "attempt": 1, "progress": {"bytesProcessed": 5, "percent": 40}}
        })),
    )
    .await?;
    jobs.patch(
        "firmware-from-url",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
    )
    .await?;
    let job = jobs.get("firmware-from-url").await?;
    assert_eq!(job.spec.user_id, "alice");
    let status = serde_json::to_value(&job.status)?;
    assert_eq!(status["phase"], "Running");

    common::assert_printer_columns(&kubectl).await?;
    assert!(kubectl.ok(&["get", "streamscan"]).await?.contains("archive-upload"));
    Ok(())
}

#[tokio::test]
async fn server_side_apply_conflicts_between_managers_and_force_takes_over() -> TestResult {
    let (_plane, client, _kubectl) = with_crd().await?;
    let jobs: Api<AnalysisJob> = Api::default_namespaced(client);
    let status = |phase: &str| json!({"apiVersion": "streamscan.io/v1alpha1", "kind": "AnalysisJob", "status": {"phase": phase}});
    let job = sample_job("ssa")?;
    jobs.patch("ssa", &PatchParams::apply("kubectl"), &Patch::Apply(&job))
        .await?;
    jobs.patch_status(
        "ssa",
        &PatchParams::apply("controller"),
        &Patch::Apply(status("Pending")),
    )
    .await?;
    let conflict = jobs
        .patch_status("ssa", &PatchParams::apply("worker"), &Patch::Apply(status("Running")))
        .await;
    match conflict {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 409, "{e:?}"),
        other => return Err(format!("expected a conflict, got {other:?}").into()),
    }
    jobs.patch_status(
        "ssa",
        &PatchParams::apply("worker").force(),
        &Patch::Apply(status("Running")),
    )
    .await?;
    let now = serde_json::to_value(jobs.get_status("ssa").await?.status)?;
    assert_eq!(now["phase"], "Running");
    Ok(())
}

/// The finalizer holds a deleted job until it is removed; then the garbage collector (the real
/// kube-controller-manager) deletes what the job owned.
#[tokio::test]
async fn a_finalizer_holds_a_deleted_job_and_the_garbage_collector_removes_what_it_owned() -> TestResult {
    let (_plane, client, _kubectl) = with_crd().await?;
    let jobs: Api<AnalysisJob> = Api::default_namespaced(client.clone());
    let mut job = sample_job("held")?;
    job["metadata"]["finalizers"] = json!([FINALIZER_RESULTS]);
    let job: AnalysisJob = serde_json::from_value(job)?;
    let created = jobs.create(&PostParams::default(), &job).await?;
    let uid = created.metadata.uid.clone().ok_or("no uid")?;
    let maps: Api<ConfigMap> = Api::default_namespaced(client);
    let owned: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "held-owned", "ownerReferences": [{
            "apiVersion": "streamscan.io/v1alpha1", "kind": "AnalysisJob", "name": "held", "uid": uid,
            "controller": true, "blockOwnerDeletion": true
        }]},
        "data": {"k": "v"}
    }))?;
    maps.create(&PostParams::default(), &owned).await?;

    jobs.delete("held", &DeleteParams::default()).await?;
    let deleting = jobs.get("held").await?;
    assert!(
        deleting.metadata.deletion_timestamp.is_some(),
        "the job waits for its finalizer"
    );
    jobs.patch(
        "held",
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER_RESULTS},
            {"op": "remove", "path": "/metadata/finalizers/0"}
        ]))?),
    )
    .await?;
    tokio::time::timeout(WAIT, await_condition(jobs, "held", conditions::is_deleted(&uid))).await??;
    let map_uid = maps.get("held-owned").await?.metadata.uid.unwrap_or_default();
    // The garbage collector learns of a new CRD at its next discovery sync (every 30 s).
    tokio::time::timeout(
        GC_WAIT,
        await_condition(maps, "held-owned", conditions::is_deleted(&map_uid)),
    )
    .await
    .map_err(|_| "the garbage collector did not delete the owned ConfigMap")??;
    Ok(())
}

/// A watcher (as the controller runs one) sees every change made while the API server was down
/// and after it came back, once the server is restarted on the same etcd.
#[tokio::test]
async fn a_watch_resumes_across_an_apiserver_restart_and_sees_every_change() -> TestResult {
    let (plane, client, _kubectl) = with_crd().await?;
    let jobs: Api<AnalysisJob> = Api::default_namespaced(client.clone());
    let before: AnalysisJob = serde_json::from_value(sample_job("before")?)?;
    jobs.create(&PostParams::default(), &before).await?;

    let mut names = watcher(jobs.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .map_ok(|j: AnalysisJob| j.metadata.name.unwrap_or_default())
        .boxed();
    let first = tokio::time::timeout(WAIT, names.next()).await?.ok_or("watch ended")??;
    assert_eq!(first, "before");

    let pid_before = plane.apiserver_pid()?;
    let plane = tokio::task::spawn_blocking(move || plane.restart_apiserver().map(|()| plane)).await??;
    assert_ne!(plane.apiserver_pid()?, pid_before, "the API server was restarted");
    let after: AnalysisJob = serde_json::from_value(sample_job("after")?)?;
    jobs.create(&PostParams::default(), &after).await?;
    let next = tokio::time::timeout(WAIT, async {
        loop {
            match names.next().await {
                Some(Ok(name)) if name == "after" => return Ok(name),
                Some(Ok(_)) | Some(Err(_)) => continue,
                None => return Err("watch ended"),
            }
        }
    })
    .await??;
    assert_eq!(next, "after");
    Ok(())
}
