//! The user-facing HTTP API: routes, shared state, size limits.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use streamscan_api::trace::TraceParent;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::history::History;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::{jobs, results, stream};

/// Settings of the HTTP side.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Only jobs in this namespace (None: any namespace).
    pub namespace: Option<String>,
    /// Namespace of created jobs when the request names none.
    pub default_namespace: String,
    pub worker_selector: String,
    pub worker_namespace: Option<String>,
    pub worker_statefulset: Option<String>,
    pub heartbeat: Duration,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_ws_message_bytes: usize,
    pub max_upload_bytes: u64,
    pub placement_timeout: Duration,
    /// Whether jobs may name a `headersSecretRef`.
    pub allow_url_headers_secrets: bool,
    /// Unfinished jobs a user may have at once (0: no limit).
    pub max_active_jobs_per_user: usize,
}

pub struct AppState {
    pub client: kube::Client,
    pub hub: Hub,
    pub history: History,
    pub history_ok: Arc<AtomicBool>,
    pub auth: Auth,
    pub metrics: Metrics,
    pub http: reqwest::Client,
    pub worker_token: Option<String>,
    pub settings: Settings,
    pub shutdown: CancellationToken,
    /// Open event streams per user.
    pub streams: crate::limits::StreamSlots,
}

pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.settings.max_body_bytes;
    Router::new()
        .route("/v1/jobs", get(jobs::list).post(jobs::create))
        .route("/v1/jobs/{namespace}/{name}", get(jobs::get))
        .route("/v1/jobs/{namespace}/{name}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{namespace}/{name}/events", get(stream::events))
        .route("/v1/jobs/{namespace}/{name}/history", get(stream::history))
        .route("/v1/jobs/{namespace}/{name}/verdict", get(jobs::verdict))
        .route(
            "/v1/jobs/{namespace}/{name}/result",
            get(results::download).delete(results::delete),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), limit_headers))
        .layer(middleware::from_fn(request_span))
        .with_state(state)
}

/// Each request in a span (method and route, not the raw path: it carries job names), its status
/// and duration logged at debug.
async fn request_span(request: Request, next: Next) -> Response {
    use tracing::Instrument;
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("(unmatched)", axum::extract::MatchedPath::as_str)
        .to_owned();
    let span = tracing::info_span!("request", method = %request.method(), route = %route);
    // An exported request span joins the caller's trace.
    if let Some(parent) = request
        .headers()
        .get(streamscan_api::event::headers::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
    {
        streamscan_runtime::telemetry::continue_trace(&span, &parent);
    }
    let started = std::time::Instant::now();
    async move {
        let response = next.run(request).await;
        tracing::debug!(
            status = response.status().as_u16(),
            millis = started.elapsed().as_millis(),
            "request served"
        );
        response
    }
    .instrument(span)
    .await
}

/// Refuses requests whose headers exceed the configured size (431).
async fn limit_headers(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let size: usize = request
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + request.uri().to_string().len();
    if size > state.settings.max_header_bytes {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "request line and headers take {size} bytes, more than the limit of {}",
                state.settings.max_header_bytes
            ),
        )
        .into_response();
    }
    next.run(request).await
}
