//! The built-in analyzers, one module each, and [`build`], which makes them by name.

mod anchored;
pub mod components;
pub mod digest;
pub mod entropy;
pub mod filetype;
pub mod iocs;
pub mod model;
pub mod secrets;
#[cfg(test)]
pub(crate) mod testutil;

use std::path::PathBuf;

use streamscan_api::AnalyzerName;

use super::{Analyzer, AnalyzerError};

/// Settings shared by the analyzers that need any.
#[derive(Clone, Debug, Default)]
pub struct AnalyzerConfig {
    /// OSV JSON files, or directories of them, for `components`; the curated built-in database
    /// when empty.
    pub vuln_db: Vec<PathBuf>,
    /// Endpoint of the external model for `model`; `model` is skipped by default, and refused
    /// when asked for explicitly, when this is unset.
    pub model: Option<model::ModelConfig>,
}

/// Makes one analyzer.
pub fn build(name: AnalyzerName, config: &AnalyzerConfig) -> Result<Box<dyn Analyzer>, AnalyzerError> {
    Ok(match name {
        AnalyzerName::Digest => Box::new(digest::DigestAnalyzer::new()),
        AnalyzerName::Filetype => Box::new(filetype::FiletypeAnalyzer::new()),
        AnalyzerName::Entropy => Box::new(entropy::EntropyAnalyzer::new()),
        AnalyzerName::Secrets => Box::new(secrets::SecretsAnalyzer::new()),
        AnalyzerName::Iocs => Box::new(iocs::IocsAnalyzer::new()),
        AnalyzerName::Components => Box::new(components::ComponentsAnalyzer::new(&config.vuln_db)?),
        AnalyzerName::Model => match &config.model {
            Some(model) => Box::new(model::ModelAnalyzer::new(model.clone())),
            None => {
                return Err(AnalyzerError::Fatal {
                    analyzer: AnalyzerName::Model,
                    message: "the model analyzer was requested but no model endpoint is configured".into(),
                });
            }
        },
    })
}
