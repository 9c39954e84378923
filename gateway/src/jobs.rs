//! Jobs: create (idempotent), list and get the caller's own, cancel, and the verdicts.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use streamscan_api::names::{ANNOTATION_IDEMPOTENCY_KEY, ANNOTATION_TRACEPARENT, MANAGER_GATEWAY};
use streamscan_api::trace::{self, TraceParent};
use streamscan_api::{AnalysisJob, AnalysisJobSpec};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::http::AppState;
use crate::upload;

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// W3C trace context, read from a create request and answered with the job's.
const TRACEPARENT_HEADER: &str = streamscan_api::event::headers::TRACEPARENT;

/// The caller's job, or 404 whether it is missing or someone else's.
pub async fn owned_job(
    state: &AppState,
    caller: &Caller,
    namespace: &str,
    name: &str,
) -> Result<AnalysisJob, ApiError> {
    if state.settings.namespace.as_deref().is_some_and(|ns| ns != namespace) {
        return Err(ApiError::job_not_found(namespace, name));
    }
    let api: Api<AnalysisJob> = Api::namespaced(state.client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(job)) if caller.owns(&job.spec.user_id) => Ok(job),
        Ok(_) => Err(ApiError::job_not_found(namespace, name)),
        Err(err) => Err(ApiError::kube(&err)),
    }
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<AnalysisJob>, ApiError> {
    Ok(Json(owned_job(&state, &caller, &namespace, &name).await?))
}

/// `GET /v1/jobs?limit=&continue=`: one page of the namespace's jobs, the caller's among them.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<u32>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

/// Jobs per page unless `limit` says otherwise, and the most a page may hold.
const PAGE: u32 = 100;
const MAX_PAGE: u32 = 500;

/// A page reads `limit` jobs of the namespace and returns the caller's among them (a page may so
/// hold fewer, even none); `metadata.continue` is there while more remain.
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = query.limit.unwrap_or(PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_PAGE} (it is {limit})"
        )));
    }
    let api: Api<AnalysisJob> = match &state.settings.namespace {
        Some(ns) => Api::namespaced(state.client.clone(), ns),
        None => Api::all(state.client.clone()),
    };
    let mut params = ListParams::default().limit(limit);
    if let Some(token) = query.continue_token.as_deref().filter(|t| !t.is_empty()) {
        params = params.continue_token(token);
    }
    let jobs = api.list(&params).await.map_err(|e| match e {
        kube::Error::Api(ref status) if status.code == 410 || status.code == 400 => {
            ApiError::bad_request("the continue token is expired or invalid: list again from the start")
        }
        e => ApiError::kube(&e),
    })?;
    let next = jobs.metadata.continue_.clone().filter(|c| !c.is_empty());
    let items: Vec<AnalysisJob> = jobs
        .items
        .into_iter()
        .filter(|job| caller.owns(&job.spec.user_id))
        .collect();
    Ok(Json(match next {
        Some(token) => json!({ "items": items, "metadata": {"continue": token} }),
        None => json!({ "items": items, "metadata": {} }),
    }))
}

pub async fn cancel(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<(StatusCode, Json<AnalysisJob>), ApiError> {
    let job = request_cancel(&state, &caller, &namespace, &name).await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// Sets `spec.cancel: true` (merge patch, field manager streamscan-gateway).
pub async fn request_cancel(
    state: &AppState,
    caller: &Caller,
    namespace: &str,
    name: &str,
) -> Result<AnalysisJob, ApiError> {
    owned_job(state, caller, namespace, name).await?;
    let api: Api<AnalysisJob> = Api::namespaced(state.client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(MANAGER_GATEWAY.to_owned()),
        ..PatchParams::default()
    };
    let job = api
        .patch(name, &params, &Patch::Merge(json!({"spec": {"cancel": true}})))
        .await
        .map_err(|e| ApiError::kube(&e))?;
    tracing::info!(%namespace, %name, user = %caller.user, "cancel requested");
    Ok(job)
}

pub async fn verdict(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let job = owned_job(&state, &caller, &namespace, &name).await?;
    let uid = job.uid().unwrap_or_default();
    let verdicts = state.history.verdicts(&uid).await.map_err(|e| ApiError::redis(&e))?;
    Ok(Json(json!({ "analyzeId": uid, "verdicts": verdicts })))
}

/// Body of `POST /v1/jobs`: an AnalysisJob's metadata (name, namespace optional) and spec.
#[derive(Debug, Deserialize)]
pub struct CreateRequest {
    #[serde(default)]
    pub metadata: CreateMeta,
    pub spec: serde_json::Value,
}

#[derive(Debug, Default, Deserialize)]
pub struct CreateMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Query of `POST /v1/jobs`: `?upload=true` makes the body the file itself.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateQuery {
    #[serde(default)]
    pub upload: bool,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub file_name: Option<String>,
    pub sha256: Option<String>,
    /// Comma-separated analyzer names.
    pub analyzers: Option<String>,
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(query): Query<CreateQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let origin = RequestOrigin::of(&headers)?;
    let traceparent = origin.trace.to_string();
    let mut response = if query.upload {
        upload::create_with_upload(state, caller, query, origin, headers, body).await?
    } else {
        create_from_json(&state, &caller, &origin, body).await?
    };
    // The client learns the trace its job's events continue.
    if let Ok(value) = HeaderValue::from_str(&traceparent) {
        response.headers_mut().insert(TRACEPARENT_HEADER, value);
    }
    Ok(response)
}

/// What a create request's headers say: its Idempotency-Key, and the trace the job continues
/// (the request's W3C `traceparent` with the gateway's span as the parent, or a new trace).
pub struct RequestOrigin {
    pub key: Option<String>,
    pub trace: TraceParent,
}

impl RequestOrigin {
    pub fn of(headers: &HeaderMap) -> Result<Self, ApiError> {
        let key = idempotency_key(headers)?;
        // With trace export on, the request's exported span (which already continues the
        // caller's trace) is the job's parent span.
        if let Some(trace) = streamscan_runtime::telemetry::traceparent_of(&tracing::Span::current()) {
            return Ok(RequestOrigin { key, trace });
        }
        let random = uuid::Uuid::new_v4().into_bytes();
        let mut span = [0; 8];
        span.copy_from_slice(&random[..8]);
        let incoming = headers
            .get(TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        let trace = match incoming {
            Some(parent) => parent.with_parent(span),
            None => TraceParent {
                trace_id: uuid::Uuid::new_v4().into_bytes(),
                parent_id: span,
                flags: trace::SAMPLED,
            },
        };
        Ok(RequestOrigin { key, trace })
    }
}

async fn create_from_json(
    state: &AppState,
    caller: &Caller,
    origin: &RequestOrigin,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = axum::body::to_bytes(body, state.settings.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds {} bytes", state.settings.max_body_bytes),
            )
        })?;
    let request: CreateRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("invalid job request: {e}")))?;
    let (job, created) = create_job(state, caller, request, origin).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(job)).into_response())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(IDEMPOTENCY_HEADER) {
        None => Ok(None),
        Some(v) => {
            let key = v
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?;
            if key.is_empty() || key.len() > 255 {
                return Err(ApiError::bad_request("Idempotency-Key must be 1 to 255 characters"));
            }
            Ok(Some(key.to_owned()))
        }
    }
}

/// The prefix of the names the gateway generates; a request may not name a job with it, so no
/// user can take the name another user's retried request maps to.
pub const GENERATED_PREFIX: &str = "aj-";

/// The object name a retried request maps to: the same user and key give the same name. Keyed by
/// the installation's internal token when there is one, so nobody can compute another user's
/// name and create it first (by kubectl, say).
pub fn idempotent_name(secret: Option<&str>, user: &str, key: &str) -> String {
    let digest = Sha256::digest(format!("{}\n{user}\n{key}", secret.unwrap_or_default()).as_bytes());
    format!("{GENERATED_PREFIX}{}", &hex::encode(digest)[..20])
}

/// The namespace a create goes to: the request's, else the gateway's own or default one.
fn target_namespace(state: &AppState, requested: Option<&str>) -> Result<String, ApiError> {
    let namespace = requested
        .map(str::to_owned)
        .or_else(|| state.settings.namespace.clone())
        .unwrap_or_else(|| state.settings.default_namespace.clone());
    if state.settings.namespace.as_deref().is_some_and(|ns| ns != namespace) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this gateway creates jobs in namespace {:?} only",
                state.settings.namespace.as_deref().unwrap_or_default()
            ),
        ));
    }
    Ok(namespace)
}

/// The request's spec, owned by the caller whatever the body says, and allowed here.
fn owned_spec(state: &AppState, caller: &Caller, mut spec: serde_json::Value) -> Result<AnalysisJobSpec, ApiError> {
    let Some(fields) = spec.as_object_mut() else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "spec must be an object",
        ));
    };
    fields.insert("userId".into(), json!(caller.user));
    let spec: AnalysisJobSpec = serde_json::from_value(spec)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("invalid spec: {e}")))?;
    if !state.settings.allow_url_headers_secrets
        && spec.source.url.as_ref().is_some_and(|u| u.headers_secret_ref.is_some())
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "spec.source.url.headersSecretRef is not allowed on this gateway (Helm value \
             worker.urlHeadersSecrets=true allows Secrets labeled streamscan.io/url-headers=true)",
        ));
    }
    Ok(spec)
}

/// The job's name: the request's (not one of the reserved generated names), the one its
/// Idempotency-Key maps to, or a fresh one.
fn job_name(state: &AppState, caller: &Caller, requested: Option<&str>, key: Option<&str>) -> Result<String, ApiError> {
    match (requested, key) {
        (Some(name), _) if name.starts_with(GENERATED_PREFIX) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "metadata.name {name:?}: names starting with {GENERATED_PREFIX:?} are reserved for the names the \
                 gateway generates; choose another name, or send an Idempotency-Key instead"
            ),
        )),
        (Some(name), _) => Ok(name.to_owned()),
        (None, Some(key)) => Ok(idempotent_name(state.worker_token.as_deref(), &caller.user, key)),
        (None, None) => Ok(format!(
            "{GENERATED_PREFIX}{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )),
    }
}

/// Creates the job, or returns the one an earlier request with the same key created (`false`).
pub async fn create_job(
    state: &AppState,
    caller: &Caller,
    request: CreateRequest,
    origin: &RequestOrigin,
) -> Result<(AnalysisJob, bool), ApiError> {
    let key = origin.key.as_deref();
    let namespace = target_namespace(state, request.metadata.namespace.as_deref())?;
    let spec = owned_spec(state, caller, request.spec)?;
    let name = job_name(state, caller, request.metadata.name.as_deref(), key)?;
    let mut job = AnalysisJob::new(&name, spec);
    job.metadata.namespace = Some(namespace.clone());
    job.metadata.labels = Some(request.metadata.labels).filter(|l| !l.is_empty());
    let mut annotations = BTreeMap::from([(ANNOTATION_TRACEPARENT.to_owned(), origin.trace.to_string())]);
    if let Some(key) = key {
        annotations.insert(ANNOTATION_IDEMPOTENCY_KEY.to_owned(), key.to_owned());
    }
    job.metadata.annotations = Some(annotations);
    let api: Api<AnalysisJob> = Api::namespaced(state.client.clone(), &namespace);
    // A retried request returns its job even at the limit.
    if key.is_some()
        && let Some(existing) = api.get_opt(&name).await.map_err(|e| ApiError::kube(&e))?
        && same_request(&existing, caller, key)
    {
        return Ok((existing, false));
    }
    crate::limits::check_active_jobs(&api, &caller.user, state.settings.max_active_jobs_per_user).await?;
    let params = PostParams {
        field_manager: Some(MANAGER_GATEWAY.to_owned()),
        ..PostParams::default()
    };
    match api.create(&params, &job).await {
        Ok(job) => {
            tracing::info!(
                %namespace, %name, user = %caller.user, source = job.spec.source.kind(),
                trace_id = %origin.trace.trace_id_hex(), "job created"
            );
            Ok((job, true))
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let existing = api.get_opt(&name).await.map_err(|e| ApiError::kube(&e))?;
            match existing {
                Some(existing) if same_request(&existing, caller, key) => Ok((existing, false)),
                _ => Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("analysisjob {namespace}/{name} already exists; choose another name"),
                )),
            }
        }
        Err(err) => Err(ApiError::kube(&err)),
    }
}

/// Whether `existing` is the job an earlier request of this caller with this key created.
fn same_request(existing: &AnalysisJob, caller: &Caller, key: Option<&str>) -> bool {
    key.is_some()
        && existing.spec.user_id == caller.user
        && existing
            .annotations()
            .get(ANNOTATION_IDEMPOTENCY_KEY)
            .map(String::as_str)
            == key
}
