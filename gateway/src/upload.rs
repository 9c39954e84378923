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
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|l| l > limit) {
        return Err(too_large(limit));
    }
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
    let request = CreateRequest {
        metadata: CreateMeta {
            name: query.name.clone(),
            namespace: query.namespace.clone(),
            ..CreateMeta::default()
        },
        spec,
    };
    let (job, created) = create_job(&state, &caller, request, &origin).await?;
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();

    let api: Api<AnalysisJob> = Api::namespaced(state.client.clone(), &namespace);
    let placed = tokio::time::timeout(
        state.settings.placement_timeout,
        await_condition(api, &name, |job: Option<&AnalysisJob>| {
            job.is_some_and(|j| {
                j.status.as_ref().and_then(|s| s.server_id.as_ref()).is_some()
                    && matches!(j.phase(), Phase::Scheduled | Phase::Running)
                    || j.phase().is_finished()
            })
        }),
    )
    .await;
    let job = match placed {
        Ok(Ok(Some(job))) => job,
        Ok(Ok(None)) => return Err(ApiError::job_not_found(&namespace, &name)),
        Ok(Err(err)) => {
            tracing::warn!(%err, "watching the job for placement failed");
            return Err(ApiError::unavailable(
                "cannot watch the job's placement; retry the request with the same Idempotency-Key",
            ));
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "job {namespace}/{name} was not placed on a server within {} s; the upload was not sent — retry with the same Idempotency-Key",
                    state.settings.placement_timeout.as_secs()
                ),
            ));
        }
    };
    if job.phase().is_finished() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job {namespace}/{name} already ended ({}); nothing to upload",
                job.phase()
            ),
        ));
    }
    let server_id = job
        .status
        .as_ref()
        .and_then(|s| s.server_id.clone())
        .unwrap_or_default();
    let base = worker_base(&state, &server_id).await?;

    // Count bytes as they pass, so a body without Content-Length is still held to the limit.
    let mut seen = 0u64;
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen += chunk.len() as u64;
        if seen > limit {
            return Err(std::io::Error::other(format!("upload exceeds {limit} bytes")));
        }
        Ok::<_, std::io::Error>(chunk)
    });
    let mut request = state
        .http
        .put(format!("{base}/uploads/{uid}"))
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream));
    if let Some(l) = length {
        request = request.header(reqwest::header::CONTENT_LENGTH, l);
    }
    if let Some(s) = &query.sha256 {
        request = request.header(streamscan_api::names::HEADER_UPLOAD_SHA256, s);
    }
    if let Some(token) = &state.worker_token {
        request = request.bearer_auth(token);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(err) => {
            // reqwest's message names only the URL; the causes say what went wrong.
            let mut why = err.to_string();
            let mut cause = std::error::Error::source(&err);
            while let Some(c) = cause {
                why = format!("{why}: {c}");
                cause = c.source();
            }
            if why.contains("upload exceeds") {
                return Err(too_large(limit));
            }
            tracing::warn!(%server_id, error = %why, "streaming an upload to its server failed");
            return Err(ApiError::bad_gateway(format!(
                "streaming the upload to server {server_id} failed: {why}"
            )));
        }
    };
    let status = response.status();
    let answer: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    let out = |code: StatusCode| Ok((code, Json(json!({"job": job, "upload": answer}))).into_response());
    match status.as_u16() {
        201 | 200 => {
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
            "server {server_id} answered {status} to the upload"
        ))),
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the upload exceeds the limit of {limit} bytes"),
    )
}
