//! The operations endpoints every long-running binary serves: `/healthz`, `/readyz`, `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Whether the process is ready to do its work; flipped by the component that knows.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct OpsState {
    registry: Arc<Registry>,
    ready: Readiness,
}

/// The ops router, for embedding or serving.
pub fn router(registry: Arc<Registry>, ready: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(OpsState { registry, ready })
}

/// Serves the ops endpoints until `shutdown`; returns the bound address once listening.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    ready: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(registry, ready);
    let handle = tokio::spawn(crate::serve::serve(listener, app, shutdown));
    Ok((bound, handle))
}

/// Why the ops endpoints did not start.
#[derive(Debug, thiserror::Error)]
#[error("binding the ops endpoints on {addr}: {source}")]
pub struct OpsError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Serves /healthz, /readyz and /metrics on `addr` until `shutdown`, not ready yet; logs where.
pub async fn start(
    addr: SocketAddr,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(Readiness, tokio::task::JoinHandle<()>), OpsError> {
    let ready = Readiness::default();
    let (bound, task) = serve(addr, Arc::new(registry), ready.clone(), shutdown)
        .await
        .map_err(|source| OpsError { addr, source })?;
    tracing::info!(ops_addr = %bound, "serving /healthz, /readyz, /metrics");
    Ok((ready, task))
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    if state.ready.get() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode metrics: {err}"),
        ),
    }
}
