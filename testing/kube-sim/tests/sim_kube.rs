//! The simulator through kube-rs: CRUD, CRDs, status subresource, optimistic concurrency,
//! validation, selectors, watches (through restarts and 410 Gone), patches, server-side apply,
//! finalizers and garbage collection.

use streamscan_kube_sim::kubectl as common;

use std::collections::BTreeMap;

use common::{TestResult, WAIT, documents, install_crd, start, workspace_root, yaml_files};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::{ApiResource, Discovery};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Error, ResourceExt};
use serde_json::{Value, json};
use streamscan_api::AnalysisJob;

fn code_of<T: std::fmt::Debug>(r: Result<T, Error>) -> Option<u16> {
    match r {
        Err(Error::Api(status)) => Some(status.code),
        _ => None,
    }
}

fn message_of<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    match r {
        Err(Error::Api(status)) => status.message.clone(),
        other => format!("not an API error: {other:?}"),
    }
}

fn job(name: &str, user: &str) -> Result<AnalysisJob, serde_json::Error> {
    serde_json::from_value(json!({
        "apiVersion": "streamscan.io/v1alpha1",
        "kind": "AnalysisJob",
        "metadata": {"name": name},
        "spec": {"userId": user, "source": {"volume": {"path": "images/a.bin"}}},
    }))
}

fn config_map(name: &str, data: Value) -> Result<ConfigMap, serde_json::Error> {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": data}))
}

#[tokio::test]
async fn discovery_serves_builtins_and_the_crd_once_created() -> TestResult {
    let (_sim, client) = start().await?;
    let version = client.apiserver_version().await?;
    assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "33"));
    install_crd(&client).await?;
    let discovery = Discovery::new(client.clone()).run().await?;
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("streamscan.io", "v1alpha1", "AnalysisJob"))
        .ok_or("AnalysisJob not discovered")?;
    assert_eq!(ar.plural, "analysisjobs");
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "status"));
    for (group, kind) in [
        ("apps", "StatefulSet"),
        ("coordination.k8s.io", "Lease"),
        ("policy", "PodDisruptionBudget"),
        ("rbac.authorization.k8s.io", "ClusterRole"),
        ("networking.k8s.io", "NetworkPolicy"),
        ("events.k8s.io", "Event"),
    ] {
        assert!(
            discovery
                .resolve_gvk(&GroupVersionKind::gvk(group, "v1", kind))
                .is_some(),
            "{group} {kind}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn crud_metadata_and_optimistic_concurrency() -> TestResult {
    let (_sim, client) = start().await?;
    install_crd(&client).await?;
    let jobs: Api<AnalysisJob> = Api::default_namespaced(client.clone());
    let created = jobs.create(&PostParams::default(), &job("a", "alice")?).await?;
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    let rv1: u64 = created.resource_version().ok_or("no rv")?.parse()?;

    assert_eq!(
        code_of(jobs.create(&PostParams::default(), &job("a", "alice")?).await),
        Some(409)
    );
    assert_eq!(code_of(jobs.get("missing").await), Some(404));
    let missing_ns: Api<AnalysisJob> = Api::namespaced(client.clone(), "nowhere");
    assert_eq!(
        code_of(missing_ns.create(&PostParams::default(), &job("a", "alice")?).await),
        Some(404)
    );

    // An update bumps resourceVersion and, as the spec changed, generation.
    let mut changed = created.clone();
    changed.spec.analyzers = Some(vec![serde_json::from_value(json!("digest"))?]);
    let updated = jobs.replace("a", &PostParams::default(), &changed).await?;
    let rv2: u64 = updated.resource_version().ok_or("no rv")?.parse()?;
    assert!(rv2 > rv1);
    assert_eq!(updated.metadata.generation, Some(2));
    // The old resourceVersion is stale now: 409 Conflict.
    let stale = jobs.replace("a", &PostParams::default(), &changed).await;
    assert_eq!(code_of(stale), Some(409));
    // A label change is not a spec change.
    let labelled = jobs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await?;
    assert_eq!(labelled.metadata.generation, Some(2));
    // A no-op write changes nothing, not even the resourceVersion.
    let same = jobs.replace("a", &PostParams::default(), &labelled).await?;
    assert_eq!(same.resource_version(), labelled.resource_version());

    let list = jobs.list(&ListParams::default()).await?;
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());
    jobs.delete("a", &DeleteParams::default()).await?;
    assert_eq!(code_of(jobs.get("a").await), Some(404));
    Ok(())
}

#[tokio::test]
async fn status_subresource_is_separate_from_the_main_endpoint() -> TestResult {
    let (_sim, client) = start().await?;
    install_crd(&client).await?;
    let jobs: Api<AnalysisJob> = Api::default_namespaced(client.clone());
    let mut with_status = serde_json::to_value(job("s", "alice")?)?;
    with_status["status"] = json!({"phase": "Running"});
    let created = jobs
        .create(&PostParams::default(), &serde_json::from_value(with_status.clone())?)
        .await?;
    assert!(created.status.is_none(), "create ignores status");

    let patched = jobs
        .patch_status(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "serverId": "3"}, "spec": {"userId": "mallory"}})),
        )
        .await?;
    let status = patched.status.clone().ok_or("no status")?;
    assert_eq!(status.server_id.as_deref(), Some("3"));
    assert_eq!(patched.spec.user_id, "alice", "/status ignores spec");
    assert_eq!(patched.metadata.generation, Some(1), "status does not bump generation");

    let main = jobs
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed"}})),
        )
        .await?;
    assert_eq!(
        main.status.and_then(|s| s.server_id),
        Some("3".into()),
        "the main endpoint ignores status"
    );
    let raw: Api<DynamicObject> = Api::default_namespaced_with(client.clone(), &ApiResource::erase::<AnalysisJob>(&()));
    assert_eq!(raw.get("s").await?.data["status"]["phase"], "Running");

    // Status is validated too.
    let bad = jobs
        .patch_status(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Exploded"}})),
        )
        .await;
    assert_eq!(code_of(bad), Some(422));
    Ok(())
}

#[tokio::test]
async fn samples_are_accepted_and_invalid_fixtures_refused_with_their_message() -> TestResult {
    let (_sim, client) = start().await?;
    install_crd(&client).await?;
    let ar = ApiResource::erase::<AnalysisJob>(&());
    let api: Api<DynamicObject> = Api::default_namespaced_with(client.clone(), &ar);
    for path in yaml_files(&workspace_root().join("manifests/samples"))? {
        for doc in documents(&path)? {
            let object: DynamicObject = serde_json::from_value(doc)?;
            api.create(&PostParams::default(), &object)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    // Without fieldValidation, unknown fields are pruned, and defaults are applied.
    let mut extra = serde_json::to_value(job("pruned", "alice")?)?;
    extra["spec"]["colour"] = json!("blue");
    let stored = api
        .create(&PostParams::default(), &serde_json::from_value(extra)?)
        .await?;
    assert!(stored.data["spec"].get("colour").is_none(), "{:?}", stored.data);
    for common::InvalidFixture { path, expected, docs } in common::invalid_fixtures()? {
        let expected = expected.as_str();
        let refused = match docs.as_slice() {
            [one] => {
                api.create(&PostParams::default(), &serde_json::from_value(one.clone())?)
                    .await
            }
            [first, second] => {
                api.create(&PostParams::default(), &serde_json::from_value(first.clone())?)
                    .await?;
                api.patch(
                    first["metadata"]["name"].as_str().unwrap_or_default(),
                    &PatchParams::default(),
                    &Patch::Merge(second.clone()),
                )
                .await
            }
            _ => return Err(format!("{} has an unexpected shape", path.display()).into()),
        };
        let message = message_of(refused);
        assert!(
            message.contains(expected),
            "{}: {message:?} lacks {expected:?}",
            path.display()
        );
        assert!(message.contains(" is invalid: "), "{message}");
    }
    Ok(())
}

#[tokio::test]
async fn invalid_status_objects_carry_causes() -> TestResult {
    let (_sim, client) = start().await?;
    install_crd(&client).await?;
    let response = client
        .request_text(
            axum::http::Request::post("/apis/streamscan.io/v1alpha1/namespaces/default/analysisjobs")
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&json!({
                    "apiVersion": "streamscan.io/v1alpha1", "kind": "AnalysisJob",
                    "metadata": {"name": "bad"}, "spec": {"source": {}},
                }))?)?,
        )
        .await;
    let status = match response {
        Err(Error::Api(s)) => s,
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "AnalysisJob.streamscan.io \"bad\" is invalid: spec.userId: Required value"
    );
    Ok(())
}

#[tokio::test]
async fn selectors_filter_lists() -> TestResult {
    let (_sim, client) = start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    for (name, tier) in [("a", Some("x")), ("b", Some("y")), ("c", None)] {
        let mut cm = config_map(name, json!({}))?;
        if let Some(tier) = tier {
            cm.metadata.labels = Some(BTreeMap::from([("tier".to_owned(), tier.to_owned())]));
        }
        cms.create(&PostParams::default(), &cm).await?;
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| l.items.iter().map(|c| c.name_any()).collect::<Vec<_>>();
    for (selector, want) in [
        ("tier=x", vec!["a"]),
        ("tier!=x", vec!["b", "c"]),
        ("tier in (x,y)", vec!["a", "b"]),
        ("tier notin (x)", vec!["b", "c"]),
        ("tier", vec!["a", "b"]),
        ("!tier", vec!["c"]),
    ] {
        assert_eq!(
            names(cms.list(&ListParams::default().labels(selector)).await?),
            want,
            "{selector}"
        );
    }
    assert_eq!(
        names(cms.list(&ListParams::default().fields("metadata.name=b")).await?),
        ["b"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.namespace=default,metadata.name!=b"))
                .await?
        ),
        ["a", "c"]
    );
    let all: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default().fields("metadata.namespace=kube-system"))
            .await?
            .items
            .len(),
        0
    );
    Ok(())
}

#[tokio::test]
async fn raw_watch_resumes_from_a_version_sends_bookmarks_and_times_out() -> TestResult {
    let (_sim, client) = start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let first = cms
        .create(&PostParams::default(), &config_map("w", json!({"k": "1"}))?)
        .await?;
    let rv = first.resource_version().ok_or("no rv")?;
    cms.patch("w", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "2"}})))
        .await?;
    cms.delete("w", &DeleteParams::default()).await?;
    // From the creation's version: the modification, then the deletion, then bookmarks, then the end.
    let params = WatchParams::default().timeout(3);
    let events: Vec<WatchEvent<ConfigMap>> =
        tokio::time::timeout(WAIT, cms.watch(&params, &rv).await?.try_collect()).await??;
    assert!(
        matches!(&events[0], WatchEvent::Modified(c) if c.data.as_ref().and_then(|d| d.get("k")).map(String::as_str) == Some("2"))
    );
    assert!(matches!(&events[1], WatchEvent::Deleted(_)));
    assert!(
        events[2..].iter().any(|e| matches!(e, WatchEvent::Bookmark(_))),
        "{events:?}"
    );
    Ok(())
}

#[tokio::test]
async fn watch_from_a_compacted_version_is_gone() -> TestResult {
    let (sim, client) = start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let old = cms.create(&PostParams::default(), &config_map("g", json!({}))?).await?;
    sim.expire_watches();
    let mut stream = cms
        .watch(&WatchParams::default(), &old.resource_version().ok_or("no rv")?)
        .await?
        .boxed();
    let first = tokio::time::timeout(WAIT, stream.try_next()).await??;
    assert!(
        matches!(first, Some(WatchEvent::Error(ref e)) if e.code == 410),
        "{first:?}"
    );
    Ok(())
}

#[tokio::test]
async fn watcher_survives_watch_restarts_and_410_gone() -> TestResult {
    let (sim, client) = start().await?;
    install_crd(&client).await?;
    let jobs: Api<AnalysisJob> = Api::default_namespaced(client.clone());
    jobs.create(&PostParams::default(), &job("one", "alice")?).await?;
    let mut names = watcher(jobs.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let mut gone = 0;
    // The watcher reports a 410 as an error item, then re-lists by itself.
    let mut next = async |s: &mut futures::stream::BoxStream<'_, Result<AnalysisJob, watcher::Error>>| -> Result<String, Box<dyn std::error::Error>> {
        loop {
            match tokio::time::timeout(WAIT, s.next()).await?.ok_or("watcher ended")? {
                Ok(job) => return Ok(job.name_any()),
                Err(watcher::Error::WatchError(status)) if status.code == 410 => gone += 1,
                Err(other) => return Err(other.into()),
            }
        }
    };
    assert_eq!(next(&mut names).await?, "one");
    // The watch ends (as when an API server restarts); the watcher resumes from its version.
    sim.close_watches();
    jobs.create(&PostParams::default(), &job("two", "alice")?).await?;
    assert_eq!(next(&mut names).await?, "two");
    // History is compacted while the watch is down: the resumed watch gets 410 and re-lists.
    sim.expire_watches();
    jobs.create(&PostParams::default(), &job("three", "alice")?).await?;
    let mut seen = Vec::new();
    while !seen.contains(&"three".to_owned()) {
        seen.push(next(&mut names).await?);
    }
    assert_eq!(gone, 1, "the resumed watch got 410 Gone once");
    Ok(())
}

#[tokio::test]
async fn label_filtered_watch_sees_objects_enter_and_leave() -> TestResult {
    let (_sim, client) = start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let created = cms.create(&PostParams::default(), &config_map("l", json!({}))?).await?;
    let mut stream = cms
        .watch(
            &WatchParams::default().labels("streamscan.io/server-id=3"),
            &created.resource_version().ok_or("no rv")?,
        )
        .await?
        .boxed();
    let label = |v: Option<&str>| json!({"metadata": {"labels": {"streamscan.io/server-id": v}}});
    cms.patch("l", &PatchParams::default(), &Patch::Merge(label(Some("3"))))
        .await?;
    cms.patch("l", &PatchParams::default(), &Patch::Merge(label(None)))
        .await?;
    let first = tokio::time::timeout(WAIT, stream.try_next()).await??;
    assert!(matches!(first, Some(WatchEvent::Added(_))), "{first:?}");
    let second = tokio::time::timeout(WAIT, stream.try_next()).await??;
    assert!(matches!(second, Some(WatchEvent::Deleted(_))), "{second:?}");
    Ok(())
}

#[tokio::test]
async fn merge_json_and_strategic_patches() -> TestResult {
    let (_sim, client) = start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    cms.create(&PostParams::default(), &config_map("p", json!({"a": "1", "b": "2"}))?)
        .await?;
    let merged = cms
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": null, "c": "3"}})),
        )
        .await?;
    assert_eq!(
        merged.data,
        Some(BTreeMap::from([("b".into(), "2".into()), ("c".into(), "3".into())]))
    );
    let json_patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/data/b", "value": "20"},
        {"op": "add", "path": "/metadata/labels", "value": {"k": "v"}},
    ]))?;
    let patched = cms
        .patch("p", &PatchParams::default(), &Patch::<()>::Json(json_patch))
        .await?;
    assert_eq!(
        patched.data.as_ref().and_then(|d| d.get("b")).map(String::as_str),
        Some("20")
    );
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/b", "value": "nope"}]))?;
    assert_eq!(
        code_of(
            cms.patch("p", &PatchParams::default(), &Patch::<()>::Json(failing))
                .await
        ),
        Some(422)
    );
    // A merge patch naming a stale resourceVersion is refused.
    let stale = cms
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": "1"}, "data": {"x": "y"}})),
        )
        .await;
    assert_eq!(code_of(stale), Some(409));

    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]},
        }))?,
    )
    .await?;
    let pod = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"containers": [{"name": "b", "image": "z"}]}})),
        )
        .await?;
    let images: Vec<_> = pod
        .spec
        .ok_or("no spec")?
        .containers
        .into_iter()
        .map(|c| c.image.unwrap_or_default())
        .collect();
    assert_eq!(images, ["x", "z"]);
    Ok(())
}

#[tokio::test]
async fn server_side_apply_with_field_managers() -> TestResult {
    let (_sim, client) = start().await?;
    install_crd(&client).await?;
    let jobs: Api<AnalysisJob> = Api::default_namespaced(client.clone());
    let applied = jobs
        .patch("ssa", &PatchParams::apply("first"), &Patch::Apply(job("ssa", "alice")?))
        .await?;
    assert_eq!(applied.metadata.generation, Some(1));
    let managers: Vec<_> = applied
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, ["first"]);

    // Another manager setting a field the first owns to another value conflicts...
    let mut other = job("ssa", "alice")?;
    other.spec.backoff_limit = Some(2);
    other.spec.source = serde_json::from_value(json!({"volume": {"path": "images/b.bin"}}))?;
    let conflict = jobs
        .patch("ssa", &PatchParams::apply("second"), &Patch::Apply(&other))
        .await;
    let message = message_of(conflict);
    assert!(message.contains("conflict with \"first\""), "{message}");
    // ...and with force takes the field over (here refused by the immutability rule instead).
    let forced = jobs
        .patch("ssa", &PatchParams::apply("second").force(), &Patch::Apply(&other))
        .await;
    assert!(message_of(forced).contains("spec.source is immutable"));

    other.spec.source = serde_json::from_value(json!({"volume": {"path": "images/a.bin"}}))?;
    let shared = jobs
        .patch("ssa", &PatchParams::apply("second"), &Patch::Apply(&other))
        .await?;
    assert_eq!(shared.spec.backoff_limit, Some(2));
    assert_eq!(shared.metadata.generation, Some(2));

    // Status through apply on the status subresource, as the controller writes it.
    let status = json!({"apiVersion": "streamscan.io/v1alpha1", "kind": "AnalysisJob", "status": {"phase": "Scheduled", "serverId": "3"}});
    let with_status = jobs
        .patch_status("ssa", &PatchParams::apply("controller").force(), &Patch::Apply(&status))
        .await?;
    assert_eq!(with_status.status.and_then(|s| s.server_id), Some("3".into()));
    assert_eq!(with_status.metadata.generation, Some(2));

    // A manager that stops applying a field it alone owns removes it.
    let mut fewer = job("ssa", "alice")?;
    fewer.spec.backoff_limit = None;
    jobs.patch("ssa", &PatchParams::apply("second"), &Patch::Apply(&fewer))
        .await?;
    assert_eq!(jobs.get("ssa").await?.spec.backoff_limit, None);
    Ok(())
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() -> TestResult {
    let (_sim, client) = start().await?;
    install_crd(&client).await?;
    let jobs: Api<AnalysisJob> = Api::default_namespaced(client.clone());
    let mut held = job("held", "alice")?;
    held.metadata.finalizers = Some(vec!["streamscan.io/results-cleanup".into()]);
    let created = jobs.create(&PostParams::default(), &held).await?;
    let mut events = jobs
        .watch(&WatchParams::default(), &created.resource_version().ok_or("no rv")?)
        .await?
        .boxed();
    jobs.delete("held", &DeleteParams::default()).await?;
    let marked = jobs.get("held").await?;
    assert!(marked.metadata.deletion_timestamp.is_some());
    let modified = tokio::time::timeout(WAIT, events.try_next()).await??;
    assert!(matches!(modified, Some(WatchEvent::Modified(_))), "{modified:?}");
    // No new finalizers once deleting.
    let add = jobs
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["a", "streamscan.io/results-cleanup"]}})),
        )
        .await;
    assert_eq!(code_of(add), Some(422));
    jobs.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    let deleted = tokio::time::timeout(WAIT, events.try_next()).await??;
    assert!(matches!(deleted, Some(WatchEvent::Deleted(_))), "{deleted:?}");
    assert_eq!(code_of(jobs.get("held").await), Some(404));
    Ok(())
}

fn owned_by(name: &str, owner: &ConfigMap, block: bool) -> Result<ConfigMap, Box<dyn std::error::Error>> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": owner.name_any(),
            "uid": owner.metadata.uid.clone().ok_or("no uid")?, "blockOwnerDeletion": block,
        }]},
    }))?)
}

#[tokio::test]
async fn garbage_collection_background_foreground_and_orphan() -> TestResult {
    let (_sim, client) = start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    // Background: the owner goes at once, then its dependents.
    let owner = cms
        .create(&PostParams::default(), &config_map("owner", json!({}))?)
        .await?;
    cms.create(&PostParams::default(), &owned_by("dep", &owner, false)?)
        .await?;
    cms.delete("owner", &DeleteParams::background()).await?;
    assert_eq!(code_of(cms.get("dep").await), Some(404));

    // Foreground: the owner waits (foregroundDeletion) for a dependent held by a finalizer.
    let owner = cms
        .create(&PostParams::default(), &config_map("owner2", json!({}))?)
        .await?;
    let mut dep = owned_by("dep2", &owner, true)?;
    dep.metadata.finalizers = Some(vec!["test/hold".into()]);
    cms.create(&PostParams::default(), &dep).await?;
    cms.delete("owner2", &DeleteParams::foreground()).await?;
    let waiting = cms.get("owner2").await?;
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert_eq!(waiting.metadata.finalizers, Some(vec!["foregroundDeletion".to_owned()]));
    assert!(cms.get("dep2").await?.metadata.deletion_timestamp.is_some());
    cms.patch(
        "dep2",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    assert_eq!(code_of(cms.get("dep2").await), Some(404));
    assert_eq!(code_of(cms.get("owner2").await), Some(404));

    // Orphan: the dependent stays, without its owner reference.
    let owner = cms
        .create(&PostParams::default(), &config_map("owner3", json!({}))?)
        .await?;
    cms.create(&PostParams::default(), &owned_by("dep3", &owner, false)?)
        .await?;
    cms.delete("owner3", &DeleteParams::orphan()).await?;
    assert_eq!(cms.get("dep3").await?.metadata.owner_references, Some(vec![]));

    // Deleting a namespace deletes what is in it.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "tmp"}}))?,
        )
        .await?;
    let in_tmp: Api<ConfigMap> = Api::namespaced(client.clone(), "tmp");
    in_tmp
        .create(&PostParams::default(), &config_map("x", json!({}))?)
        .await?;
    namespaces.delete("tmp", &DeleteParams::default()).await?;
    assert_eq!(code_of(in_tmp.get("x").await), Some(404));
    Ok(())
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_then_changes() -> TestResult {
    let (_sim, client) = start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    cms.create(&PostParams::default(), &config_map("before", json!({}))?)
        .await?;
    let mut events = watcher(cms.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut next = async || -> Result<watcher::Event<ConfigMap>, Box<dyn std::error::Error>> {
        Ok(tokio::time::timeout(WAIT, events.try_next())
            .await??
            .ok_or("watcher ended")?)
    };
    assert!(matches!(next().await?, watcher::Event::Init));
    assert!(matches!(next().await?, watcher::Event::InitApply(c) if c.name_any() == "before"));
    assert!(matches!(next().await?, watcher::Event::InitDone));
    cms.create(&PostParams::default(), &config_map("after", json!({}))?)
        .await?;
    assert!(matches!(next().await?, watcher::Event::Apply(c) if c.name_any() == "after"));
    Ok(())
}

#[tokio::test]
async fn event_recorder_creates_then_patches_a_series() -> TestResult {
    use kube::Resource;
    let (_sim, client) = start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let cm = cms
        .create(&PostParams::default(), &config_map("subject", json!({}))?)
        .await?;
    let (recorder, event) = common::placed_event(client.clone(), "on 3");
    let reference = cm.object_ref(&());
    recorder.publish(&event, &reference).await?;
    recorder.publish(&event, &reference).await?;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::default_namespaced(client);
    let list = events.list(&ListParams::default()).await?;
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].series.as_ref().map(|s| s.count), Some(2));
    Ok(())
}

#[tokio::test]
async fn a_kube_runtime_controller_reconciles_against_the_simulator() -> TestResult {
    use kube::runtime::controller::{Action, Controller};
    use kube::runtime::wait::await_condition;
    use std::sync::Arc;
    use std::time::Duration;

    #[derive(Debug, thiserror::Error)]
    #[error(transparent)]
    struct ReconcileError(#[from] kube::Error);

    async fn reconcile(job: Arc<AnalysisJob>, jobs: Arc<Api<AnalysisJob>>) -> Result<Action, ReconcileError> {
        let status = json!({"apiVersion": "streamscan.io/v1alpha1", "kind": "AnalysisJob", "status": {"phase": "Pending", "observedGeneration": job.metadata.generation}});
        jobs.patch_status(
            &job.name_any(),
            &PatchParams::apply("streamscan-controller").force(),
            &Patch::Apply(&status),
        )
        .await?;
        Ok(Action::await_change())
    }

    let (_sim, client) = start().await?;
    install_crd(&client).await?;
    let jobs: Api<AnalysisJob> = Api::default_namespaced(client.clone());
    let controller = Controller::new(jobs.clone(), watcher::Config::default())
        .run(
            reconcile,
            |_, _: &ReconcileError, _| Action::requeue(Duration::from_secs(1)),
            Arc::new(jobs.clone()),
        )
        .for_each(|_| async {});
    let running = tokio::spawn(controller);
    jobs.create(&PostParams::default(), &job("reconciled", "alice")?)
        .await?;
    let pending = |j: Option<&AnalysisJob>| {
        j.and_then(|j| j.status.as_ref())
            .and_then(|s| s.phase.as_ref())
            .map(|p| format!("{p:?}"))
            == Some("Pending".into())
    };
    tokio::time::timeout(WAIT, await_condition(jobs.clone(), "reconciled", pending)).await??;
    running.abort();
    Ok(())
}

#[tokio::test]
async fn metadata_only_lists_and_watches() -> TestResult {
    use kube::core::PartialObjectMeta;
    let (_sim, client) = start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    cms.create(&PostParams::default(), &config_map("m", json!({"big": "data"}))?)
        .await?;
    let list = cms.list_metadata(&ListParams::default()).await?;
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        list.items[0].types.as_ref().map(|t| t.kind.as_str()),
        Some("PartialObjectMetadata")
    );
    assert_eq!(cms.get_metadata("m").await?.metadata.name.as_deref(), Some("m"));
    let metas: Api<PartialObjectMeta<ConfigMap>> = Api::default_namespaced(client.clone());
    let mut names = watcher(metas, watcher::Config::default()).applied_objects().boxed();
    let first = tokio::time::timeout(WAIT, names.try_next()).await??.ok_or("ended")?;
    assert_eq!(first.metadata.name.as_deref(), Some("m"));
    cms.create(&PostParams::default(), &config_map("n", json!({}))?).await?;
    let second = tokio::time::timeout(WAIT, names.try_next()).await??.ok_or("ended")?;
    assert_eq!(second.metadata.name.as_deref(), Some("n"));
    Ok(())
}
