//! `POST /v1/jobs?upload=true`: the request body is the file. The job is created, the gateway
//! waits (bounded) until the controller has pinned it, then streams the body to the pinned
//! worker's `PUT /uploads/{analyzeId}` chunk by chunk, never holding the whole file.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use kube::runtime::wait::await_condition;
use kube::{Api, ResourceExt};
use serde_json::json;
use streamscan_api::{AnalysisJob, Phase};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::http::AppState;
use crate::jobs::{CreateMeta, CreateQuery, CreateRequest, RequestOrigin, create_job};
use crate::results::worker_base;

pub async fn create_with_upload(
    state: Arc<AppState>,
    caller: Caller,
    query: CreateQuery,
    origin: RequestOrigin,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let limit = state.settings.max_upload_bytes;
    let length = content_length(&headers);
    if length.is_some_and(|l| l > limit) {
        return Err(too_large(limit));
    }
    let (job, created) = create_job(&state, &caller, create_request(&query, length), &origin).await?;
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();

    let job = await_placement(&state, &namespace, &name).await?;
    let server_id = pinned_server(&job, &namespace, &name)?;
    let base = worker_base(&state, &server_id).await?;

    let file = Declared {
        length,
        sha256: query.sha256.as_deref(),
        limit,
    };
    let response = send_to_worker(&state, format!("{base}/uploads/{uid}"), body, &file)
        .await
        .map_err(|err| send_failed(&err, limit, &server_id))?;
    let placed = PlacedJob {
        job,
        namespace,
        name,
        server_id,
    };
    let status = response.status();
    let upload: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    answer(&placed, created, limit, status, upload)
}

/// What the client declared about the file, and the limit it is held to.
struct Declared<'a> {
    /// Content-Length of the request, if it gave one.
    length: Option<u64>,
    sha256: Option<&'a str>,
    limit: u64,
}

/// The created job once the controller has pinned it to a server.
struct PlacedJob {
    job: AnalysisJob,
    namespace: String,
    name: String,
    server_id: String,
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The job to create: an upload source described by the query (and the declared length).
fn create_request(query: &CreateQuery, length: Option<u64>) -> CreateRequest {
    let mut upload = serde_json::Map::new();
    if let Some(l) = length {
        upload.insert("sizeBytes".into(), json!(l));
    }
    if let Some(s) = &query.sha256 {
        upload.insert("sha256".into(), json!(s));
    }
    if let Some(f) = &query.file_name {
        upload.insert("fileName".into(), json!(f));
    }
    let mut spec = json!({"source": {"upload": upload}});
    if let Some(list) = &query.analyzers {
        spec["analyzers"] = json!(
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        );
    }
    CreateRequest {
        metadata: CreateMeta {
            name: query.name.clone(),
            namespace: query.namespace.clone(),
            ..CreateMeta::default()
        },
        spec,
    }
}

/// Waits, at most the placement timeout, until the job is pinned to a server or has ended.
async fn await_placement(state: &AppState, namespace: &str, name: &str) -> Result<AnalysisJob, ApiError> {
    let api: Api<AnalysisJob> = Api::namespaced(state.client.clone(), namespace);
    let placed = tokio::time::timeout(
        state.settings.placement_timeout,
        await_condition(api, name, placed_or_finished),
    )
    .await;
    match placed {
        Ok(Ok(Some(job))) => Ok(job),
        Ok(Ok(None)) => Err(ApiError::job_not_found(namespace, name)),
        Ok(Err(err)) => {
            tracing::warn!(%err, "watching the job for placement failed");
            Err(ApiError::unavailable(
                "cannot watch the job's placement; retry the request with the same Idempotency-Key",
            ))
        }
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "job {namespace}/{name} was not placed on a server within {} s; the upload was not sent — retry with the same Idempotency-Key",
                state.settings.placement_timeout.as_secs()
            ),
        )),
    }
}

/// The server the placed job is pinned to; a job that ended instead has nothing to upload to.
fn pinned_server(job: &AnalysisJob, namespace: &str, name: &str) -> Result<String, ApiError> {
    if job.phase().is_finished() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job {namespace}/{name} already ended ({}); nothing to upload",
                job.phase()
            ),
        ));
    }
    Ok(job
        .status
        .as_ref()
        .and_then(|s| s.server_id.clone())
        .unwrap_or_default())
}

fn placed_or_finished(job: Option<&AnalysisJob>) -> bool {
    job.is_some_and(|j| {
        j.status.as_ref().and_then(|s| s.server_id.as_ref()).is_some()
            && matches!(j.phase(), Phase::Scheduled | Phase::Running)
            || j.phase().is_finished()
    })
}

/// `PUT`s the body to `url` as it arrives, with what the client declared about the file.
async fn send_to_worker(
    state: &AppState,
    url: String,
    body: Body,
    file: &Declared<'_>,
) -> Result<reqwest::Response, reqwest::Error> {
    let mut request = state
        .http
        .put(url)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(limited(body, file.limit));
    if let Some(l) = file.length {
        request = request.header(reqwest::header::CONTENT_LENGTH, l);
    }
    if let Some(s) = file.sha256 {
        request = request.header(streamscan_api::names::HEADER_UPLOAD_SHA256, s);
    }
    if let Some(token) = &state.worker_token {
        request = request.bearer_auth(token);
    }
    request.send().await
}

/// The body as a stream that fails once more than `limit` bytes have passed: counting as they
/// pass holds a body without Content-Length to the limit too.
fn limited(body: Body, limit: u64) -> reqwest::Body {
    let mut seen = 0u64;
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen += chunk.len() as u64;
        if seen > limit {
            return Err(std::io::Error::other(format!("upload exceeds {limit} bytes")));
        }
        Ok::<_, std::io::Error>(chunk)
    });
    reqwest::Body::wrap_stream(stream)
}

/// The answer when streaming to the worker failed, the limit's own error included.
fn send_failed(err: &reqwest::Error, limit: u64, server_id: &str) -> ApiError {
    let why = with_causes(err);
    // The limit is enforced inside the body stream, so going over it surfaces here.
    if why.contains("upload exceeds") {
        return too_large(limit);
    }
    tracing::warn!(%server_id, error = %why, "streaming an upload to its server failed");
    ApiError::bad_gateway(format!("streaming the upload to server {server_id} failed: {why}"))
}

/// The error and its causes: reqwest's message names only the URL; the causes say what went
/// wrong.
fn with_causes(err: &reqwest::Error) -> String {
    let mut why = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        why = format!("{why}: {c}");
        cause = c.source();
    }
    why
}

/// The gateway's answer, from the worker's answer (`status`, `upload`) to the upload.
fn answer(
    placed: &PlacedJob,
    created: bool,
    limit: u64,
    status: reqwest::StatusCode,
    upload: serde_json::Value,
) -> Result<Response, ApiError> {
    let out = |code: StatusCode| Ok((code, Json(json!({"job": placed.job, "upload": upload}))).into_response());
    match status.as_u16() {
        201 | 200 => {
            let PlacedJob {
                namespace,
                name,
                server_id,
                ..
            } = placed;
            tracing::info!(%namespace, %name, %server_id, "upload streamed to the pinned server");
            out(if created { StatusCode::CREATED } else { StatusCode::OK })
        }
        // A retried request whose file already arrived.
        409 => out(StatusCode::OK),
        413 => Err(too_large(limit)),
        422 => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the uploaded file does not match the given sha256",
        )),
        _ => Err(ApiError::bad_gateway(format!(
            "server {} answered {status} to the upload",
            placed.server_id
        ))),
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the upload exceeds the limit of {limit} bytes"),
    )
}
