//! A Kubernetes API simulator: enough of kube-apiserver for Streamscan's components, kube-rs and
//! `kubectl` to run against it over HTTP. See `e2e/README.md` for what it does not model.

pub mod api;
pub mod apply;
pub mod delete;
pub mod discovery;
pub mod error;
pub mod events;
pub mod kubectl;
pub mod kubelet;
pub mod patch;
pub mod resources;
pub mod selectors;
pub mod server;
pub mod store;
pub mod table;
pub mod validation;
pub mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use self::store::{ObjKey, Store};

/// What can go wrong starting or using the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot write the kubeconfig to {path}: {source}")]
    WriteKubeconfig { path: String, source: std::io::Error },
    #[error("the simulator's URL is not a valid URI: {0}")]
    Uri(#[from] axum::http::uri::InvalidUri),
    #[error("cannot build a kube client: {0}")]
    Client(#[from] kube::Error),
    #[error("the server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
    #[error("the AnalysisJob CRD was not Established within {0:?}")]
    CrdNotEstablished(Duration),
    #[error("waiting for the AnalysisJob CRD: {0}")]
    CrdWait(String),
}

/// RFC 3339 in whole seconds, as metav1.Time serialises.
pub(crate) fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Options for [`Simulator::start_with`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen; port 0 picks a free one.
    pub addr: SocketAddr,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

/// A running simulator. Dropping it stops the server.
#[derive(Debug)]
pub struct Simulator {
    addr: SocketAddr,
    store: Arc<Store>,
    bookmark_interval: Duration,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), std::io::Error>>>,
}

impl Simulator {
    /// Starts on 127.0.0.1 with a random port.
    pub async fn start() -> Result<Self, SimError> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Result<Self, SimError> {
        let listener = bind(options.addr).await?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: options.addr,
            source,
        })?;
        let store = Arc::new(Store::new());
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            seed_namespace(&store, ns);
        }
        let mut sim = Self {
            addr,
            store,
            bookmark_interval: options.bookmark_interval,
            stop: None,
            task: None,
        };
        sim.serve(listener);
        tracing::info!(%addr, "kube-sim serving");
        Ok(sim)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let shared = Arc::new(server::Shared {
            store: self.store.clone(),
            address: self.addr.to_string(),
            bookmark_interval: self.bookmark_interval,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown_store = self.store.clone();
        let app = server::router(shared);
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                    // Open watches would hold graceful shutdown forever: end them first.
                    shutdown_store.close_watches();
                })
                .await
        }));
    }

    /// Stops serving, as an API server going down: watches end, connections close, new ones are
    /// refused. The objects stay, for [`Simulator::serve_again`].
    pub async fn stop_serving(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            // Graceful shutdown waits for open requests; a client that holds one open is cut off.
            if tokio::time::timeout(Duration::from_secs(10), &mut task).await.is_err() {
                task.abort();
            }
        }
    }

    /// Serves the same objects on the same address again (resource versions go on, so watches
    /// resume where they were).
    pub async fn serve_again(&mut self) -> Result<(), SimError> {
        if self.task.is_some() {
            return Ok(());
        }
        let listener = bind(self.addr).await?;
        self.serve(listener);
        tracing::info!(addr = %self.addr, "kube-sim serving again");
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig (as JSON, which every YAML reader accepts) with one context, `kube-sim`.
    pub fn kubeconfig(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kube-sim", "cluster": {"server": self.url()}}],
            "users": [{"name": "kube-sim", "user": {}}],
            "contexts": [{"name": "kube-sim", "context": {"cluster": "kube-sim", "user": "kube-sim", "namespace": "default"}}],
            "current-context": "kube-sim",
            "preferences": {},
        })
    }

    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), SimError> {
        let text = serde_json::to_string_pretty(&self.kubeconfig()).unwrap_or_default();
        std::fs::write(path, text).map_err(|source| SimError::WriteKubeconfig {
            path: path.display().to_string(),
            source,
        })
    }

    /// A kube client for this simulator, default namespace `default`.
    pub fn client(&self) -> Result<kube::Client, SimError> {
        let config = kube::Config::new(self.url().parse()?);
        Ok(kube::Client::try_from(config)?)
    }

    /// Creates the AnalysisJob CRD (as generated from `crds/`, which a test keeps equal to
    /// `crds/analysisjob.yaml`) and waits until it is Established.
    pub async fn install_analysisjob_crd(&self) -> Result<(), SimError> {
        install_analysisjob_crd(self.client()?).await
    }

    /// Ends every open watch; clients resume from their last resourceVersion.
    pub fn close_watches(&self) {
        self.store.close_watches();
    }

    /// Compacts history and ends every watch: resuming watches get 410 Gone and must re-list.
    pub fn expire_watches(&self) {
        self.store.compact();
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.store.lock().current_rv()
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(mut self) -> Result<(), SimError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await?.map_err(SimError::Serve),
            None => Ok(()),
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, SimError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind { addr, source })
}

fn seed_namespace(store: &Store, name: &str) {
    let mut inner = store.lock();
    let key = ObjKey {
        group: String::new(),
        resource: "namespaces".into(),
        namespace: String::new(),
        name: name.into(),
    };
    inner.put(key, json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now_rfc3339(), "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }));
}

/// Creates the AnalysisJob CRD (as generated from `crds/`) through `client`, on the simulator or a
/// real API server, and waits until it is Established.
pub async fn install_analysisjob_crd(client: kube::Client) -> Result<(), SimError> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::runtime::wait::{await_condition, conditions};
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client);
    api.create(&Default::default(), &streamscan_api::generate::crd())
        .await?;
    let wait = Duration::from_secs(20);
    tokio::time::timeout(
        wait,
        await_condition(api, "analysisjobs.streamscan.io", conditions::is_crd_established()),
    )
    .await
    .map_err(|_| SimError::CrdNotEstablished(wait))?
    .map_err(|e| SimError::CrdWait(e.to_string()))?;
    Ok(())
}
