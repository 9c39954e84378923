//! The test kubelet: a Pod for a process, Ready while it runs, NotReady or gone once it stops.

use streamscan_kube_sim::kubectl as common;

use std::collections::BTreeMap;

use common::{TestResult, WAIT, start};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use streamscan_api::names::{ANNOTATION_HTTP_PORT, LABEL_SERVER_ID};
use streamscan_kube_sim::kubelet::{Kubelet, OnExit, PodTemplate};
use tokio::process::Command;

fn ready(pod: &Pod) -> Option<String> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.status.clone())
}

fn template(name: &str, server_id: &str) -> PodTemplate {
    PodTemplate {
        name: name.into(),
        labels: BTreeMap::from([
            ("app.kubernetes.io/component".to_owned(), "worker".to_owned()),
            (LABEL_SERVER_ID.to_owned(), server_id.to_owned()),
        ]),
        annotations: BTreeMap::new(),
        port: Some(8080),
        statefulset: None,
    }
}

#[tokio::test]
async fn a_pod_follows_its_process() -> TestResult {
    let (_sim, client) = start().await?;
    let kubelet = Kubelet::new(client.clone(), "default");
    let pods: Api<Pod> = Api::default_namespaced(client);

    let sleeper = Command::new("sleep").arg("60").kill_on_drop(true).spawn()?;
    let running = kubelet
        .run(template("worker-0", "0"), sleeper, OnExit::NotReady)
        .await?;
    let pod = pods.get("worker-0").await?;
    let status = pod.status.clone().ok_or("no status")?;
    assert_eq!(
        (status.phase.as_deref(), status.pod_ip.as_deref()),
        (Some("Running"), Some("127.0.0.1"))
    );
    assert_eq!(ready(&pod).as_deref(), Some("True"));
    assert_eq!(
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_HTTP_PORT))
            .map(String::as_str),
        Some("8080")
    );
    let selected = pods
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/component=worker,{LABEL_SERVER_ID}=0")))
        .await?;
    assert_eq!(selected.items.len(), 1);

    tokio::time::timeout(WAIT, running.kill()).await??;
    assert_eq!(ready(&pods.get("worker-0").await?).as_deref(), Some("False"));

    // A process that ends by itself takes its Pod with it.
    let short = Command::new("true").spawn()?;
    let done = kubelet.run(template("worker-1", "1"), short, OnExit::Delete).await?;
    tokio::time::timeout(WAIT, done.exited()).await??;
    assert!(pods.get_opt("worker-1").await?.is_none());
    Ok(())
}
