//! The Kubernetes client every component starts with.

/// Why no usable Kubernetes client could be made.
#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    #[error("configuring the Kubernetes client (in-cluster or KUBECONFIG): {0}")]
    Config(#[source] kube::Error),
    #[error("reaching the Kubernetes API server: {0}")]
    Reach(#[source] kube::Error),
}

/// A client for the in-cluster or kubeconfig configuration, checked by asking the API server its
/// version, so a wrong configuration fails at start-up with a clear message.
pub async fn client() -> Result<kube::Client, KubeClientError> {
    let client = kube::Client::try_default().await.map_err(KubeClientError::Config)?;
    client.apiserver_version().await.map_err(KubeClientError::Reach)?;
    Ok(client)
}
