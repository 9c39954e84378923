//! The Kubernetes API server a test runs against: the real kube-apiserver (with etcd and
//! kube-controller-manager, `crate::real`) or the API simulator, behind one type.

use std::path::Path;

use streamscan_kube_sim::Simulator;

#[derive(Debug, thiserror::Error)]
pub enum ServersError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("simulator: {0}")]
    Sim(#[from] streamscan_kube_sim::SimError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

/// Which Kubernetes API server and Kafka broker the devstack runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// A real kube-apiserver, etcd, kube-controller-manager and Apache Kafka (`scripts/real/`).
    Real,
    /// The API simulator and librdkafka's mock cluster behind the fencing proxy.
    Sim,
}

impl Backend {
    /// `real` or `sim` from environment variable `var`; `default` when it is unset or empty.
    pub fn from_var(var: &str, default: Backend) -> Result<Backend, ServersError> {
        match std::env::var(var).ok().as_deref() {
            None | Some("") => Ok(default),
            Some("real") => Ok(Backend::Real),
            Some("sim") => Ok(Backend::Sim),
            Some(other) => Err(ServersError::Other(format!("{var}={other}: expected real or sim"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Real => "real",
            Backend::Sim => "sim",
        }
    }
}

/// The API server the devstack (or a test harness) runs against.
pub enum ApiServer {
    Sim(Simulator),
    Real(crate::real::ControlPlane),
}

impl ApiServer {
    /// Starts the API server of `backend`, writes a kubeconfig for it to `kubeconfig`, installs the
    /// AnalysisJob CRD, and returns it with a client (namespace `default`).
    pub async fn start(backend: Backend, kubeconfig: &Path) -> Result<(ApiServer, kube::Client), ServersError> {
        let (api, client) = match backend {
            Backend::Sim => {
                let sim = Simulator::start().await?;
                sim.write_kubeconfig(kubeconfig)?;
                let client = sim.client()?;
                (ApiServer::Sim(sim), client)
            }
            Backend::Real => {
                let real = |e: crate::real::RealError| ServersError::Other(e.to_string());
                let plane = tokio::task::spawn_blocking(crate::real::ControlPlane::start)
                    .await
                    .map_err(|e| ServersError::Other(e.to_string()))?
                    .map_err(real)?;
                std::fs::copy(&plane.kubeconfig, kubeconfig).map_err(|source| ServersError::Io {
                    what: "copying the kubeconfig".into(),
                    source,
                })?;
                let client = plane.client().await.map_err(real)?;
                (ApiServer::Real(plane), client)
            }
        };
        streamscan_kube_sim::install_analysisjob_crd(client.clone()).await?;
        Ok((api, client))
    }

    /// Takes the API server down, keeping its data (real: SIGTERM to kube-apiserver, etcd stays).
    pub async fn stop(&mut self) -> Result<(), ServersError> {
        match self {
            ApiServer::Sim(sim) => sim.stop_serving().await,
            ApiServer::Real(plane) => blocking_real(plane.apiserver_switch(), |s| s.stop()).await?,
        }
        Ok(())
    }

    /// Brings it back on the same address with the same data; returns once it serves.
    pub async fn start_again(&mut self) -> Result<(), ServersError> {
        match self {
            ApiServer::Sim(sim) => sim.serve_again().await?,
            ApiServer::Real(plane) => blocking_real(plane.apiserver_switch(), |s| s.start()).await?,
        }
        Ok(())
    }

    /// For the integration tests: `STREAMSCAN_TEST_KUBE` (`real` or `sim`), else `sim`, the
    /// fast default; `scripts/test.sh` runs them once more with `real`.
    pub fn test_backend() -> Result<Backend, ServersError> {
        Backend::from_var("STREAMSCAN_TEST_KUBE", Backend::Sim)
    }
}

/// Runs one of the control plane's blocking script calls off the async runtime.
async fn blocking_real(
    switch: crate::real::ApiServerSwitch,
    f: fn(&crate::real::ApiServerSwitch) -> Result<(), crate::real::RealError>,
) -> Result<(), ServersError> {
    tokio::task::spawn_blocking(move || f(&switch))
        .await
        .map_err(|e| ServersError::Other(e.to_string()))?
        .map_err(|e| ServersError::Other(e.to_string()))
}
