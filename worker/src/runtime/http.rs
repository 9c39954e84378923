//! The worker's HTTP service (see `docs/internal-contracts.md`): results download and delete,
//! streaming uploads, and the probes and metrics every binary serves (`streamscan_runtime::ops`).
//! Everything but the probes and metrics needs the internal bearer token.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use streamscan_runtime::ops::{self, Readiness};
use tokio::io::AsyncWriteExt;

use super::sources::UploadNotify;
use super::store::{Store, check_id};
use streamscan_api::names::{HEADER_REPORT_SHA256, HEADER_UPLOAD_SHA256};
use streamscan_engine::hex;

#[derive(Clone)]
pub struct HttpState {
    pub store: Store,
    pub token: Arc<String>,
    pub registry: Arc<Registry>,
    pub ready: Readiness,
    pub uploads: UploadNotify,
    pub max_upload: u64,
}

pub fn router(state: HttpState) -> Router {
    let protected = Router::new()
        .route("/results/{id}", get(get_result).delete(delete_result))
        .route("/uploads/{id}", axum::routing::put(put_upload))
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    let ops = ops::router(state.registry.clone(), state.ready.clone());
    protected.with_state(state).merge(ops)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.into(),
    )
        .into_response()
}

/// Compares in constant time, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if same(token.as_bytes(), state.token.as_bytes()) => next.run(request).await,
        _ => error(StatusCode::UNAUTHORIZED, "a valid internal bearer token is required"),
    }
}

async fn get_result(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    if check_id(&id).is_err() {
        return error(StatusCode::NOT_FOUND, "no such result");
    }
    let stored = match state.store.result(&id) {
        Ok(Some(s)) => s,
        Ok(None) => return error(StatusCode::NOT_FOUND, "no such result"),
        Err(err) => return error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    };
    let file = match tokio::fs::File::open(&stored.path).await {
        Ok(f) => f,
        // Deleted between the two calls.
        Err(_) => return error(StatusCode::NOT_FOUND, "no such result"),
    };
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    (
        [
            (header::CONTENT_TYPE, "application/zstd".to_owned()),
            (header::CONTENT_LENGTH, stored.size.to_string()),
            (header::HeaderName::from_static(HEADER_REPORT_SHA256), stored.digest),
        ],
        body,
    )
        .into_response()
}

async fn delete_result(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    if check_id(&id).is_err() {
        return error(StatusCode::NOT_FOUND, "no such result");
    }
    // Called when the job is deleted (the controller's cleanup): its upload, if any, goes too.
    match state.store.forget(&id) {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "no such result"),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

/// A refused upload may leave its body unread (an oversized one stops at the limit): the
/// response says `Connection: close`, so the client does not send its next request on a
/// connection the server is about to drop.
async fn put_upload(state: State<HttpState>, id: Path<String>, headers: HeaderMap, body: Body) -> Response {
    let mut response = receive_upload(state, id, headers, body).await;
    if !response.status().is_success() {
        response
            .headers_mut()
            .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    response
}

async fn receive_upload(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = match upload_target(&state.store, &id) {
        Ok(path) => path,
        Err((status, message)) => return error(status, message),
    };
    let expected = expected_sha256(&headers);
    let tmp = path.with_extension("part");
    let mut file = match create_part(&tmp).await {
        Ok(f) => f,
        Err(response) => return response,
    };
    match write_upload(&mut file, body, state.max_upload, expected).await {
        Ok((bytes, digest)) => {
            if let Err(err) = tokio::fs::rename(&tmp, &path).await {
                return error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string());
            }
            state.uploads.notify_waiters();
            (
                StatusCode::CREATED,
                axum::Json(serde_json::json!({"bytes": bytes, "sha256": digest})),
            )
                .into_response()
        }
        Err(response) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            response
        }
    }
}

/// Where job `id`'s upload goes, unless the id is invalid or the job needs no upload any more
/// (the refusal's status and message then).
fn upload_target(store: &Store, id: &str) -> Result<PathBuf, (StatusCode, &'static str)> {
    let Ok(path) = store.upload_path(id) else {
        return Err((StatusCode::BAD_REQUEST, "invalid analyzeId"));
    };
    if path.exists() {
        return Err((StatusCode::CONFLICT, "this job's file was already uploaded"));
    }
    // Its upload was analysed and deleted: another would only fill the disk.
    if store.has_result(id).unwrap_or(false) {
        return Err((StatusCode::CONFLICT, "this job was already analysed"));
    }
    Ok(path)
}

/// The SHA-256 the client says the upload has, if it says one.
fn expected_sha256(headers: &HeaderMap) -> Option<String> {
    headers
        .get(HEADER_UPLOAD_SHA256)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
}

/// Creates the file the upload is written to until complete; only one upload of a job at a time.
async fn create_part(tmp: &std::path::Path) -> Result<tokio::fs::File, Response> {
    match tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .await
    {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(error(
            StatusCode::CONFLICT,
            "an upload of this job's file is in progress",
        )),
        Err(err) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())),
    }
}

/// Writes the body to `file` and syncs it, checking its size against `max` as it comes and its
/// SHA-256 against `expected` at the end; returns its size and SHA-256.
async fn write_upload(
    file: &mut tokio::fs::File,
    body: Body,
    max: u64,
    expected: Option<String>,
) -> Result<(u64, String), Response> {
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| error(StatusCode::BAD_REQUEST, format!("reading the upload: {e}")))?;
        bytes += chunk.len() as u64;
        if bytes > max {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the upload exceeds the limit of {max} bytes"),
            ));
        }
        hash.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    }
    file.sync_all()
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let digest = hex::encode(&hash.finalize());
    if let Some(expected) = expected
        && expected != digest
    {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the upload's SHA-256 is {digest}, the request said {expected}"),
        ));
    }
    Ok((bytes, digest))
}
