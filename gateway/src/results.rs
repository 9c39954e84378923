//! Results: download routed to the Ready worker pod whose serverId label matches, and delete
//! after the caller proves it verified the digest.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use streamscan_api::names::{HEADER_REPORT_SHA256, LABEL_SERVER_ID, MANAGER_GATEWAY};
use streamscan_api::{AnalysisJob, ResultSummary};

use crate::auth::Caller;
use crate::deletion::{self, Deletion};
use crate::error::ApiError;
use crate::http::AppState;
use crate::jobs::owned_job;
use streamscan_api::servers::{PodRule, ServerSet};

/// Base URL (`http://ip:port`) of the Ready worker pod carrying `server_id`.
pub async fn worker_base(state: &AppState, server_id: &str) -> Result<String, ApiError> {
    if server_id.is_empty()
        || !server_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ApiError::bad_gateway(format!(
            "serverId {server_id:?} is not a valid label value"
        )));
    }
    let pods: Api<Pod> = match &state.settings.worker_namespace {
        Some(ns) => Api::namespaced(state.client.clone(), ns),
        None => Api::all(state.client.clone()),
    };
    let selector = format!("{},{LABEL_SERVER_ID}={server_id}", state.settings.worker_selector);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| ApiError::kube(&e))?;
    // The controller's rule: a serverId is served by exactly one Ready pod. A second Ready pod
    // with the same labels (an impostor, or a misconfiguration) gets no traffic, nor the token.
    let rule = PodRule {
        default_capacity: 1,
        statefulset: state.settings.worker_statefulset.clone(),
    };
    let servers = ServerSet::from_pods(&list.items, &rule);
    for stray in servers.strays() {
        tracing::warn!(pod = %stray.pod_name, server_id = %stray.server_id, "not routing to a pod that is not a worker: {}", stray.why);
    }
    if let Some((_, pods)) = servers.duplicates().into_iter().find(|(id, _)| *id == server_id) {
        return Err(ApiError::unavailable(format!(
            "serverId {server_id} is carried by {} Ready pods ({}); not routing until only one is",
            pods.len(),
            pods.join(", ")
        )));
    }
    servers
        .ready_unique(server_id)
        .and_then(|s| s.endpoint.clone())
        .ok_or_else(|| {
            let strays: Vec<String> = servers
                .strays()
                .iter()
                .map(|s| format!("pod {} carries it but {}", s.pod_name, s.why))
                .collect();
            let also = if strays.is_empty() {
                String::new()
            } else {
                format!(" ({})", strays.join("; "))
            };
            ApiError::unavailable(format!("no Ready worker holds serverId {server_id}{also}; retry later"))
        })
}

fn stored_result(job: &AnalysisJob) -> Result<&ResultSummary, ApiError> {
    let status = job.status.as_ref();
    status.and_then(|s| s.result.as_ref()).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("job {} has no stored result (phase {})", job.name_any(), job.phase()),
        )
    })
}

fn result_server(job: &AnalysisJob, result: &ResultSummary) -> String {
    if result.server_id.is_empty() {
        job.status
            .as_ref()
            .and_then(|s| s.server_id.clone())
            .unwrap_or_default()
    } else {
        result.server_id.clone()
    }
}

fn authorized(state: &AppState, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match &state.worker_token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

fn now() -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}

async fn patch_download(
    state: &AppState,
    namespace: &str,
    name: &str,
    download: serde_json::Value,
) -> Result<(), kube::Error> {
    let api: Api<AnalysisJob> = Api::namespaced(state.client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(MANAGER_GATEWAY.to_owned()),
        ..PatchParams::default()
    };
    api.patch_status(name, &params, &Patch::Merge(json!({"status": {"download": download}})))
        .await?;
    Ok(())
}

pub async fn download(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let job = owned_job(&state, &caller, &namespace, &name).await?;
    let result = stored_result(&job)?;
    refuse_if_deleted(&job)?;
    let uid = job.uid().unwrap_or_default();
    let base = worker_base(&state, &result_server(&job, result)).await?;
    let response = fetch_result(&state, &base, &uid).await?;
    let report = Report::of(&response, &result.report_digest);
    let recorder = FetchRecorder {
        fired: Arc::new(AtomicBool::new(false)),
        state: state.clone(),
        namespace,
        name: name.clone(),
    };
    let body = recording_body(response, report.length, recorder);
    Ok(attachment(body, &report, &name))
}

/// A result deleted after a verified download is gone for good.
fn refuse_if_deleted(job: &AnalysisJob) -> Result<(), ApiError> {
    if job
        .status
        .as_ref()
        .and_then(|s| s.download.as_ref())
        .is_some_and(|d| d.deleted)
    {
        return Err(ApiError::new(
            StatusCode::GONE,
            "the result was deleted after a verified download",
        ));
    }
    Ok(())
}

/// The worker's successful answer to `GET /results/{uid}`.
async fn fetch_result(state: &AppState, base: &str, uid: &str) -> Result<reqwest::Response, ApiError> {
    let response = authorized(state, state.http.get(format!("{base}/results/{uid}")))
        .send()
        .await
        .map_err(|e| ApiError::bad_gateway(format!("the worker holding the result did not answer: {e}")))?;
    match response.status() {
        s if s.is_success() => Ok(response),
        reqwest::StatusCode::NOT_FOUND => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "the worker no longer holds this result",
        )),
        s => Err(ApiError::bad_gateway(format!("the worker answered {s} for the result"))),
    }
}

/// What the download's headers say about the report, as the worker describes it.
struct Report {
    /// The worker's digest header, else the digest stored in the job's status.
    digest: String,
    content_type: String,
    length: Option<u64>,
}

impl Report {
    fn of(response: &reqwest::Response, stored_digest: &str) -> Self {
        let digest = response
            .headers()
            .get(HEADER_REPORT_SHA256)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| stored_digest.to_owned());
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/zstd")
            .to_owned();
        Self {
            digest,
            content_type,
            length: response.content_length(),
        }
    }
}

/// Records the job's `download.fetchedAt`, once however often it is fired.
#[derive(Clone)]
struct FetchRecorder {
    fired: Arc<AtomicBool>,
    state: Arc<AppState>,
    namespace: String,
    name: String,
}

impl FetchRecorder {
    fn fire(&self) {
        if self.fired.swap(true, Ordering::SeqCst) {
            return;
        }
        let (state, namespace, name) = (self.state.clone(), self.namespace.clone(), self.name.clone());
        tokio::spawn(async move {
            match patch_download(&state, &namespace, &name, json!({"fetchedAt": now()})).await {
                Ok(()) => tracing::info!(%namespace, %name, "result downloaded"),
                Err(err) => tracing::warn!(%err, %namespace, %name, "cannot record the download"),
            }
        });
    }
}

/// The worker's body, passed on as it arrives, firing `recorder` once the last byte has been
/// handed on rather than when the worker answers. With a Content-Length, hyper stops polling
/// after the last byte, so count bytes as well as watching for the end of the stream.
fn recording_body(response: reqwest::Response, length: Option<u64>, recorder: FetchRecorder) -> Body {
    let at_end = recorder.clone();
    let tail = futures::stream::once(async move {
        at_end.fire();
        None
    })
    .filter_map(|x: Option<Result<bytes::Bytes, std::io::Error>>| async move { x });
    let mut sent = 0u64;
    let body = response
        .bytes_stream()
        .map_err(std::io::Error::other)
        .inspect_ok(move |chunk| {
            sent += chunk.len() as u64;
            if length.is_some_and(|l| sent >= l) {
                recorder.fire();
            }
        })
        .chain(tail);
    Body::from_stream(body)
}

/// The download answer: the report as an attachment named after the job.
fn attachment(body: Body, report: &Report, name: &str) -> Response {
    let mut out = Response::new(body);
    let headers = out.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&report.content_type).unwrap_or(HeaderValue::from_static("application/zstd")),
    );
    if let Ok(v) = HeaderValue::from_str(&report.digest) {
        headers.insert(HEADER_REPORT_SHA256, v);
    }
    if let Some(len) = report.length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.json.zst\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    out
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let job = owned_job(&state, &caller, &namespace, &name).await?;
    let result = stored_result(&job)?;
    let download = job.status.as_ref().and_then(|s| s.download.clone()).unwrap_or_default();
    let sent = headers.get(HEADER_REPORT_SHA256).and_then(|v| v.to_str().ok());
    match deletion::judge(sent, &result.report_digest, &download) {
        Deletion::Delete => {}
        Deletion::AlreadyDone => return Ok(StatusCode::NO_CONTENT),
        Deletion::Refused(status, why) => return Err(ApiError::new(status, why)),
    }
    let uid = job.uid().unwrap_or_default();
    let base = worker_base(&state, &result_server(&job, result)).await?;
    let response = authorized(&state, state.http.delete(format!("{base}/results/{uid}")))
        .send()
        .await
        .map_err(|e| ApiError::bad_gateway(format!("the worker holding the result did not answer: {e}")))?;
    // 404: already gone on the worker (an earlier delete whose status write was lost).
    if !(response.status().is_success() || response.status() == reqwest::StatusCode::NOT_FOUND) {
        return Err(ApiError::bad_gateway(format!(
            "the worker answered {} to the delete",
            response.status()
        )));
    }
    patch_download(&state, &namespace, &name, json!({"deleted": true, "deletedAt": now()}))
        .await
        .map_err(|e| ApiError::kube(&e))?;
    tracing::info!(%namespace, %name, user = %caller.user, "result deleted after a verified download");
    Ok(StatusCode::NO_CONTENT)
}
