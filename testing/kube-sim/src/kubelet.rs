//! A stand-in for the kubelet, for tests: registers a Pod for a process the test started
//! (labels, `podIP` 127.0.0.1, the HTTP port annotation, Ready, phase Running) and, when the
//! process exits or the test kills it, flips the Pod NotReady or deletes it.
//! Works through the API (a `kube::Client`), so it serves the kube-sim binary as well.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use streamscan_api::names::{ANNOTATION_HTTP_PORT, LABEL_POD_INDEX};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const MANAGER: &str = "kube-sim-kubelet";

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("kube API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("process wait failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the supervising task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What to do with the Pod when its process is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExit {
    /// Keep the Pod, NotReady, phase Failed (a crashed container).
    NotReady,
    /// Delete the Pod (a pod that was evicted or scaled away).
    Delete,
}

/// The Pod to register.
#[derive(Debug, Clone, Default)]
pub struct PodTemplate {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The process's HTTP port, published as the `streamscan.io/http-port` annotation.
    pub port: Option<u16>,
    /// Register the Pod as this StatefulSet's member, as its controller would make it: a
    /// controller owner reference, and the `apps.kubernetes.io/pod-index` label taken from the
    /// name's `<statefulset>-<ordinal>` suffix.
    pub statefulset: Option<String>,
}

/// The fake kubelet of one namespace.
#[derive(Clone)]
pub struct Kubelet {
    pods: Api<Pod>,
    sets: Api<StatefulSet>,
}

/// A registered Pod.
#[derive(Clone)]
pub struct PodHandle {
    pods: Api<Pod>,
    name: String,
}

/// A Pod whose process is supervised.
pub struct Supervised {
    pub pod: PodHandle,
    kill: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), KubeletError>>,
}

impl Kubelet {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            pods: Api::namespaced(client.clone(), namespace),
            sets: Api::namespaced(client, namespace),
        }
    }

    /// Creates the Pod and reports it Running and Ready.
    pub async fn register(&self, template: PodTemplate) -> Result<PodHandle, KubeletError> {
        let mut annotations = template.annotations.clone();
        if let Some(port) = template.port {
            annotations.insert(ANNOTATION_HTTP_PORT.into(), port.to_string());
        }
        let mut labels = template.labels.clone();
        let mut owners = Vec::new();
        if let Some(sts) = &template.statefulset {
            if let Some(ordinal) = template.name.strip_prefix(&format!("{sts}-")) {
                labels.insert(LABEL_POD_INDEX.into(), ordinal.to_owned());
            }
            let uid = self.statefulset_uid(sts).await?;
            owners.push(json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts, "uid": uid,
                "controller": true, "blockOwnerDeletion": true,
            }));
        }
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": template.name, "labels": labels, "annotations": annotations, "ownerReferences": owners},
            "spec": {"containers": [{"name": "main", "image": "local-process"}], "nodeName": "kube-sim"},
        }))
        .map_err(|e| KubeletError::Kube(kube::Error::SerdeError(e)))?;
        self.pods.create(&PostParams::default(), &pod).await?;
        let handle = PodHandle {
            pods: self.pods.clone(),
            name: template.name,
        };
        handle.set_ready(true).await?;
        Ok(handle)
    }

    /// The uid of the StatefulSet `name`, created (with no replicas: no controller here makes
    /// pods) when missing. It must exist: a real control plane's garbage collector deletes pods
    /// whose owner does not.
    async fn statefulset_uid(&self, name: &str) -> Result<String, KubeletError> {
        if let Some(uid) = self.sets.get_opt(name).await?.and_then(|s| s.metadata.uid) {
            return Ok(uid);
        }
        let set: StatefulSet = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
            "spec": {
                "serviceName": name, "replicas": 0,
                "selector": {"matchLabels": {"streamscan.test/statefulset": name}},
                "template": {
                    "metadata": {"labels": {"streamscan.test/statefulset": name}},
                    "spec": {"containers": [{"name": "main", "image": "local-process"}]},
                },
            },
        }))
        .map_err(|e| KubeletError::Kube(kube::Error::SerdeError(e)))?;
        let created = match self.sets.create(&PostParams::default(), &set).await {
            Ok(created) => created,
            // Another registration created it first.
            Err(kube::Error::Api(e)) if e.code == 409 => self.sets.get(name).await?,
            Err(e) => return Err(e.into()),
        };
        Ok(created.metadata.uid.unwrap_or_default())
    }

    /// Registers the Pod and watches `child`: when it exits (or [`Supervised::kill`] kills it),
    /// the Pod goes NotReady or away, as `on_exit` says.
    pub async fn run(
        &self,
        template: PodTemplate,
        mut child: tokio::process::Child,
        on_exit: OnExit,
    ) -> Result<Supervised, KubeletError> {
        let pod = self.register(template).await?;
        let (kill, killed) = oneshot::channel::<()>();
        let watched = pod.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                status = child.wait() => { status?; }
                _ = killed => {
                    child.kill().await?;
                }
            }
            match on_exit {
                OnExit::NotReady => watched.set_ready(false).await,
                OnExit::Delete => watched.delete().await,
            }
        });
        Ok(Supervised {
            pod,
            kill: Some(kill),
            task,
        })
    }
}

impl PodHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reports the Pod Ready and Running, or NotReady and Failed.
    pub async fn set_ready(&self, ready: bool) -> Result<(), KubeletError> {
        let now = crate::now_rfc3339();
        let status = if ready { "True" } else { "False" };
        let condition = |ty: &str, status: &str| json!({"type": ty, "status": status, "lastTransitionTime": now});
        let patch = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "status": {
                "phase": if ready { "Running" } else { "Failed" },
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "hostIP": "127.0.0.1",
                "startTime": now,
                "conditions": [
                    condition("PodScheduled", "True"),
                    condition("Initialized", "True"),
                    condition("ContainersReady", status),
                    condition("Ready", status),
                ],
            }
        });
        self.pods
            .patch_status(&self.name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
            .await?;
        Ok(())
    }

    pub async fn delete(&self) -> Result<(), KubeletError> {
        // As a kubelet confirms a deletion: at once (a real API server otherwise keeps a Pod bound
        // to a node for its grace period, waiting for that node's kubelet).
        self.pods
            .delete(&self.name, &DeleteParams::default().grace_period(0))
            .await?;
        Ok(())
    }
}

impl Supervised {
    /// Kills the process and waits until the Pod reflects it.
    pub async fn kill(mut self) -> Result<(), KubeletError> {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        self.task.await?
    }

    /// Waits until the process exits by itself and the Pod reflects it.
    pub async fn exited(self) -> Result<(), KubeletError> {
        self.task.await?
    }
}
