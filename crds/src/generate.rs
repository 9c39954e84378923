//! The generated artefacts committed beside this crate: the CRD YAML and the event JSON Schema.
//! `streamscan-operator crd` prints them; a test fails when the committed copies drift.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{AnalysisJob, ProgressEvent};

/// Path of the committed CRD, relative to the workspace root.
pub const CRD_PATH: &str = "crds/analysisjob.yaml";
/// Path of the committed event schema, relative to the workspace root.
pub const EVENT_SCHEMA_PATH: &str = "crds/progress-event.schema.json";
/// The command that rewrites both committed files.
pub const REGENERATE_COMMAND: &str = "cargo run -p streamscan-operator -- crd --write";

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("cannot render the CRD as YAML: {0}")]
    Yaml(String),
    #[error("cannot render JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The AnalysisJob CustomResourceDefinition.
pub fn crd() -> CustomResourceDefinition {
    AnalysisJob::crd()
}

/// The CRD as the YAML document committed in [`CRD_PATH`].
pub fn crd_yaml() -> Result<String, GenerateError> {
    let body = serde_saphyr::to_string(&crd()).map_err(|e| GenerateError::Yaml(e.to_string()))?;
    Ok(format!(
        "# Generated from crds/src/job.rs by `{REGENERATE_COMMAND}`. Do not edit.\n---\n{body}"
    ))
}

/// The JSON Schema of [`ProgressEvent`], as committed in [`EVENT_SCHEMA_PATH`].
pub fn progress_event_schema_json() -> Result<String, GenerateError> {
    let schema = schemars::schema_for!(ProgressEvent);
    Ok(serde_json::to_string_pretty(&schema)? + "\n")
}
