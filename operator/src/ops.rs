//! What the operator's binaries need at start-up beyond `streamscan_runtime::ops` (re-exported
//! here): a checked Kubernetes client and the workers' token.

pub use streamscan_runtime::ops::{Readiness, router, serve};

/// Serves /healthz, /readyz and /metrics on `addr` until `shutdown`, not ready yet; says where.
pub async fn start(
    addr: std::net::SocketAddr,
    registry: prometheus_client::registry::Registry,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(Readiness, tokio::task::JoinHandle<()>)> {
    use anyhow::Context;
    let ready = Readiness::default();
    let (bound, task) = serve(addr, std::sync::Arc::new(registry), ready.clone(), shutdown)
        .await
        .with_context(|| format!("binding the ops endpoints on {addr}"))?;
    tracing::info!(ops_addr = %bound, "serving /healthz, /readyz, /metrics");
    Ok((ready, task))
}

/// A Kubernetes client for the in-cluster or kubeconfig configuration, checked by asking the API
/// server its version, so a wrong configuration fails at start-up with a clear message.
pub async fn kube_client() -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    let client = kube::Client::try_default()
        .await
        .context("configuring the Kubernetes client")?;
    client
        .apiserver_version()
        .await
        .context("reaching the Kubernetes API server")?;
    Ok(client)
}

/// The workers' internal bearer token from its file (a mounted Secret), when one is named.
pub fn read_token_file(
    path: Option<&std::path::Path>,
) -> Result<Option<String>, streamscan_runtime::token::TokenError> {
    path.map(streamscan_runtime::token::read).transpose()
}
