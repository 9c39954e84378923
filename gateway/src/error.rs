//! API errors: a status and a message a person understands, as JSON.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    /// The same answer whether the job is missing or someone else's, so existence does not leak.
    pub fn job_not_found(namespace: &str, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("analysisjob {namespace}/{name} not found"),
        )
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, message)
    }
    pub fn kube(err: &kube::Error) -> Self {
        match err {
            kube::Error::Api(status) if status.code == 422 || status.code == 400 => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, status.message.clone())
            }
            kube::Error::Api(status) if status.code == 409 => Self::new(StatusCode::CONFLICT, status.message.clone()),
            _ => {
                tracing::warn!(%err, "Kubernetes API call failed");
                Self::unavailable("the Kubernetes API server is unavailable; retry later")
            }
        }
    }
    pub fn redis(err: &crate::history::HistoryError) -> Self {
        tracing::warn!(%err, "Redis read failed");
        Self::unavailable(
            "event history is unavailable (Redis is down or catching up); retry later — live streaming without resume still works",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let reason = self.status.canonical_reason().unwrap_or("Error");
        let body = json!({"code": self.status.as_u16(), "reason": reason, "message": self.message});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
