//! The simulator through the real `kubectl` (v1.32): apply, get (Table output with the CRD's
//! printer columns), get -w, wait, patch, label, describe, delete, server-side apply, and every
//! invalid fixture refused with its message visible in `kubectl apply`'s output.

use streamscan_kube_sim::kubectl as common;

use std::process::Stdio;

use common::{
    Kubectl, TestResult, WAIT, apply_samples, documents, every_invalid_fixture_is_refused, path_str, start,
    workspace_root,
};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use streamscan_api::AnalysisJob;
use streamscan_kube_sim::Simulator;
use tokio::io::{AsyncBufReadExt, BufReader};

async fn with_crd() -> Result<(Simulator, kube::Client, Kubectl), Box<dyn std::error::Error>> {
    let (sim, client) = start().await?;
    let kubectl = Kubectl::new()?;
    sim.write_kubeconfig(&kubectl.kubeconfig())?;
    kubectl.install_crd().await?;
    Ok((sim, client, kubectl))
}

#[tokio::test]
async fn apply_crd_and_samples_then_get_shows_printer_columns() -> TestResult {
    let (_sim, client, kubectl) = with_crd().await?;
    apply_samples(&kubectl).await?;

    let jobs: Api<AnalysisJob> = Api::default_namespaced(client);
    jobs.patch_status(
        "firmware-from-url",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "serverId": "3", "attempt": 1, "progress": {"bytesProcessed": 5, "percent": 40}}})),
    )
    .await?;
    common::assert_printer_columns(&kubectl).await?;
    let wide = kubectl.ok(&["get", "aj", "-o", "wide"]).await?;
    assert!(
        wide.lines().next().unwrap_or_default().contains("USER") && wide.contains("alice"),
        "{wide}"
    );
    // Short name, category and -o json all resolve through discovery.
    assert!(kubectl.ok(&["get", "streamscan"]).await?.contains("archive-upload"));
    let json: serde_json::Value = serde_json::from_str(
        &kubectl
            .ok(&["get", "analysisjob", "archive-upload", "-o", "json"])
            .await?,
    )?;
    assert_eq!(json["spec"]["userId"], "bob@example.com");
    Ok(())
}

#[tokio::test]
async fn every_invalid_fixture_is_refused_by_kubectl_apply_with_its_message() -> TestResult {
    let (_sim, _client, kubectl) = with_crd().await?;
    every_invalid_fixture_is_refused(&kubectl).await
}

#[tokio::test]
async fn wait_returns_when_the_condition_is_set_through_status() -> TestResult {
    let (_sim, client, kubectl) = with_crd().await?;
    kubectl
        .ok(&[
            "apply",
            "-f",
            path_str(&workspace_root().join("manifests/samples/volume-job.yaml")),
        ])
        .await?;
    let wait = kubectl
        .command(&[
            "wait",
            "--for=condition=Scheduled",
            "aj/disk-image-from-volume",
            "--timeout=15s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let jobs: Api<AnalysisJob> = Api::default_namespaced(client);
    let condition = json!({"type": "Scheduled", "status": "True", "reason": "Placed", "message": "on 3", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    jobs.patch_status(
        "disk-image-from-volume",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [condition]}})),
    )
    .await?;
    let out = tokio::time::timeout(WAIT, wait.wait_with_output()).await??;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("condition met"));
    Ok(())
}

#[tokio::test]
async fn get_watch_prints_a_change() -> TestResult {
    let (_sim, client, kubectl) = with_crd().await?;
    kubectl
        .ok(&[
            "apply",
            "-f",
            path_str(&workspace_root().join("manifests/samples/url-job.yaml")),
        ])
        .await?;
    let mut watch = kubectl.command(&["get", "aj", "-w"]).stdout(Stdio::piped()).spawn()?;
    let mut lines = BufReader::new(watch.stdout.take().ok_or("no stdout")?).lines();
    // The listing comes first; the change follows on the watch.
    loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await??
            .ok_or("kubectl exited")?;
        if line.starts_with("firmware-from-url") {
            break;
        }
    }
    let jobs: Api<AnalysisJob> = Api::default_namespaced(client);
    jobs.patch_status(
        "firmware-from-url",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
    )
    .await?;
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await??
        .ok_or("kubectl exited")?;
    assert!(
        line.starts_with("firmware-from-url") && line.contains("Succeeded"),
        "{line}"
    );
    watch.kill().await?;
    Ok(())
}

#[tokio::test]
async fn patch_label_describe_and_delete() -> TestResult {
    let (_sim, _client, kubectl) = with_crd().await?;
    kubectl
        .ok(&[
            "apply",
            "-f",
            path_str(&workspace_root().join("manifests/samples/url-job.yaml")),
        ])
        .await?;
    let aj = "aj/firmware-from-url";
    kubectl
        .ok(&["patch", aj, "--type=merge", "-p", r#"{"spec":{"backoffLimit":5}}"#])
        .await?;
    kubectl
        .ok(&[
            "patch",
            aj,
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/ttlSecondsAfterFinished","value":60}]"#,
        ])
        .await?;
    let refused = kubectl
        .fails(&["patch", aj, "--type=merge", "-p", r#"{"spec":{"backoffLimit":-1}}"#])
        .await?;
    assert!(refused.contains("spec.backoffLimit must be zero or more"), "{refused}");
    // kubectl asks for strict field validation: unknown fields are refused, not pruned.
    let mut unknown = documents(&workspace_root().join("manifests/samples/url-job.yaml"))?.remove(0);
    unknown["spec"]["colour"] = json!("blue");
    let strict = kubectl
        .fails(&["apply", "-f", path_str(&kubectl.write("unknown.json", &unknown)?)])
        .await?;
    assert!(
        strict.contains("strict decoding error: unknown field \"spec.colour\""),
        "{strict}"
    );
    kubectl.ok(&["label", aj, "streamscan.io/server-id=3"]).await?;
    let selected = kubectl
        .ok(&["get", "aj", "-l", "streamscan.io/server-id=3", "-o", "name"])
        .await?;
    assert_eq!(selected.trim(), "analysisjob.streamscan.io/firmware-from-url");
    assert_eq!(
        kubectl
            .ok(&["get", "aj", "-l", "streamscan.io/server-id!=3", "-o", "name"])
            .await?
            .trim(),
        ""
    );
    let described = kubectl.ok(&["describe", aj]).await?;
    assert!(
        described.contains("Backoff Limit:  5") && described.contains("Ttl Seconds After Finished:  60"),
        "{described}"
    );
    assert!(described.contains("streamscan.io/server-id=3"), "{described}");
    let generation = kubectl
        .ok(&["get", aj, "-o", "jsonpath={.metadata.generation}"])
        .await?;
    assert_eq!(generation, "3");
    kubectl.ok(&["delete", aj]).await?;
    let gone = kubectl.fails(&["get", aj]).await?;
    assert!(gone.contains("NotFound") || gone.contains("not found"), "{gone}");
    Ok(())
}

#[tokio::test]
async fn server_side_apply_conflicts_and_force() -> TestResult {
    let (_sim, _client, kubectl) = with_crd().await?;
    let sample = workspace_root().join("manifests/samples/url-job.yaml");
    let out = kubectl.ok(&["apply", "--server-side", "-f", path_str(&sample)]).await?;
    assert!(out.contains("serverside-applied"), "{out}");
    let mut changed = documents(&sample)?.remove(0);
    changed["spec"]["backoffLimit"] = json!(1);
    let file = kubectl.write("changed.json", &changed)?;
    let conflict = kubectl
        .fails(&["apply", "--server-side", "--field-manager=other", "-f", path_str(&file)])
        .await?;
    assert!(
        conflict.contains("conflict") && conflict.contains(".spec.backoffLimit"),
        "{conflict}"
    );
    kubectl
        .ok(&[
            "apply",
            "--server-side",
            "--field-manager=other",
            "--force-conflicts",
            "-f",
            path_str(&file),
        ])
        .await?;
    let managers = kubectl
        .ok(&[
            "get",
            "aj/firmware-from-url",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ])
        .await?;
    assert!(managers.contains("kubectl") && managers.contains("other"), "{managers}");
    assert_eq!(
        kubectl
            .ok(&["get", "aj/firmware-from-url", "-o", "jsonpath={.spec.backoffLimit}"])
            .await?,
        "1"
    );
    Ok(())
}

#[tokio::test]
async fn built_in_kinds_apply_twice_with_strategic_merge() -> TestResult {
    let (sim, _client) = start().await?;
    let kubectl = Kubectl::new()?;
    sim.write_kubeconfig(&kubectl.kubeconfig())?;
    let mut deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "gateway", "labels": {"app": "gateway"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "gateway"}},
            "template": {"metadata": {"labels": {"app": "gateway"}}, "spec": {"containers": [{"name": "gateway", "image": "streamscan:1"}]}},
        },
    });
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"a": "1"}});
    let file = kubectl.write(
        "objects.json",
        &json!({"apiVersion": "v1", "kind": "List", "items": [deployment, cm]}),
    )?;
    let out = kubectl.ok(&["apply", "-f", path_str(&file)]).await?;
    assert!(
        out.contains("deployment.apps/gateway created") && out.contains("configmap/settings created"),
        "{out}"
    );
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = json!("streamscan:2");
    let file = kubectl.write("deployment.json", &deployment)?;
    let out = kubectl.ok(&["apply", "-f", path_str(&file)]).await?;
    assert!(out.contains("deployment.apps/gateway configured"), "{out}");
    let image = kubectl
        .ok(&[
            "get",
            "deploy/gateway",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .await?;
    assert_eq!(image, "streamscan:2");
    let out = kubectl.ok(&["get", "deploy,cm", "-o", "name"]).await?;
    assert!(
        out.contains("deployment.apps/gateway") && out.contains("configmap/settings"),
        "{out}"
    );
    Ok(())
}

#[tokio::test]
async fn describe_shows_events_a_recorder_published() -> TestResult {
    use kube::Resource;
    let (_sim, client, kubectl) = with_crd().await?;
    kubectl
        .ok(&[
            "apply",
            "-f",
            path_str(&workspace_root().join("manifests/samples/url-job.yaml")),
        ])
        .await?;
    let jobs: Api<AnalysisJob> = Api::default_namespaced(client.clone());
    let job = jobs.get("firmware-from-url").await?;
    let (recorder, event) = common::placed_event(client, "pinned to server 3");
    recorder.publish(&event, &job.object_ref(&())).await?;
    let described = kubectl.ok(&["describe", "aj/firmware-from-url"]).await?;
    assert!(
        described.contains("Placed") && described.contains("pinned to server 3"),
        "{described}"
    );
    let core = kubectl
        .ok(&["get", "events", "-o", "jsonpath={.items[0].involvedObject.name}"])
        .await?;
    assert_eq!(core, "firmware-from-url");
    Ok(())
}
