//! Shared helpers for the simulator's tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::wait::{await_condition, conditions};
use serde_json::Value;
use streamscan_e2e::Simulator;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The non-empty YAML documents of a file, as JSON.
pub fn documents(path: &Path) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path)?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

pub fn crd_path() -> PathBuf {
    workspace_root().join("crds/analysisjob.yaml")
}

/// Starts a simulator and returns it with a client.
pub async fn start() -> Result<(Simulator, kube::Client), Box<dyn std::error::Error>> {
    let sim = Simulator::start().await?;
    let client = sim.client()?;
    Ok((sim, client))
}

/// Creates the AnalysisJob CRD from crds/analysisjob.yaml and waits until it is Established.
pub async fn install_crd(client: &kube::Client) -> TestResult {
    let crd: CustomResourceDefinition = serde_json::from_value(documents(&crd_path())?.remove(0))?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.create(&PostParams::default(), &crd).await?;
    let name = crd.metadata.name.clone().unwrap_or_default();
    tokio::time::timeout(WAIT, await_condition(api, &name, conditions::is_crd_established())).await??;
    Ok(())
}
