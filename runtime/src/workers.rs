//! How the controller and the gateway find and reach the worker pods: one set of flags.

use std::path::PathBuf;

use streamscan_api::names::DEFAULT_WORKER_SELECTOR;

#[derive(clap::Args, Debug, Clone)]
pub struct WorkerPodArgs {
    /// Label selector of the worker pods.
    #[arg(long, env = "STREAMSCAN_WORKER_SELECTOR", default_value = DEFAULT_WORKER_SELECTOR)]
    pub worker_selector: String,
    /// Namespace of the worker pods (default: all namespaces).
    #[arg(long, env = "STREAMSCAN_WORKER_NAMESPACE")]
    pub worker_namespace: Option<String>,
    /// Name of the worker StatefulSet: only its pods are servers, get jobs, traffic and the
    /// internal token (default: any StatefulSet's pods named `<statefulset>-<serverId>`).
    #[arg(long, env = "STREAMSCAN_WORKER_STATEFULSET")]
    pub worker_statefulset: Option<String>,
    /// File holding the workers' internal bearer token (mounted Secret).
    #[arg(long, env = "STREAMSCAN_WORKER_TOKEN_FILE")]
    pub worker_token_file: Option<PathBuf>,
}
